"""The shared machinery of learners that train a local transformers model: the
optimizer and its learning-rate schedule, LoRA, publishing weights, checkpoints.

Design decisions:
- The learner owns its own copy of the model, in train mode, and never touches the
  serving engine's copy: it publishes a snapshot of its weights (``weights()``) that
  the engine swaps in between decode steps. Training and serving overlap.
- ``update`` runs the optimizer step in a worker thread, so the event loop keeps
  driving episodes while the learner computes (no stop-the-world).
- An optional linear warmup of the learning rate: a fresh AdamW's first updates move
  every weight by about ``lr`` whatever its gradient, which can knock a converged
  checkpoint off its optimum before the moment estimates settle. An optional linear
  decay after it (``decay_steps``): a checkpoint taken mid-schedule, at a high rate,
  gains most from its rate falling.
- LoRA through peft is optional; a LoRA learner publishes merged weights, so the
  engine always serves a plain model. With ``lora.publish: adapter`` the published
  mapping is still the merged weights (what the evaluator and any in-process engine
  load) and also carries the adapter itself in peft's save format
  (:class:`~runtime.policy.adapters.AdapterWeights`), which a vLLM server loads at
  run time as a new adapter (:class:`~runtime.policy.lora_server.LoraServerPolicy`).
- Checkpoints hold model, optimizer, version and step; they are written to a
  temporary file and renamed, so a kill mid-write leaves the previous one intact; one
  that cannot be read (truncated, corrupt) is a one-line StoreError naming the file.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import anyio
import torch
from pydantic import BaseModel, ConfigDict, Field

from learners.base import UpdateResult
from runtime.core.errors import StoreError
from runtime.core.registry import with_overrides
from runtime.core.threads import CoreShare

__all__ = ["LoraSettings", "TorchLearner", "TrainerSettings"]


_CHECKPOINT_KEYS = frozenset({"model", "optimizer", "version", "steps", "extra"})


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load`` of a learner checkpoint; any failure is one line naming the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError as exc:
        raise StoreError(f"learner checkpoint {path} does not exist") from exc
    except PermissionError as exc:
        raise StoreError(f"cannot read learner checkpoint {path}: permission denied") from exc
    except Exception as exc:  # torch raises OSError, RuntimeError, EOFError, UnpicklingError...
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:160]
        raise StoreError(
            f"learner checkpoint {path} is truncated or corrupt ({detail}); restore it, "
            "or delete it to start the learner over"
        ) from exc
    if not isinstance(state, dict) or not _CHECKPOINT_KEYS <= state.keys():
        raise StoreError(f"{path} is not a learner checkpoint (no model, optimizer and version in it)")
    return state


class LoraSettings(BaseModel):
    """LoRA adapters (peft) instead of all weights; published weights are merged (and,
    with ``publish: adapter``, carry the adapter for a server that loads adapters)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    r: int = Field(8, ge=1, le=256)
    """LoRA rank."""
    alpha: int = Field(16, ge=1)
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA input."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Modules that get adapters."""
    publish: Literal["merged", "adapter"] = "merged"
    """What a new version carries: the merged weights (merged), or the merged weights and
    the adapter in peft's format (adapter: for policy.lora, a vLLM server loading each
    version as a new adapter)."""


class TrainerSettings(BaseModel):
    """How a learner's optimizer steps (part of every learner config that trains a local model)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    lr: float = Field(1e-4, gt=0, le=1)
    """AdamW learning rate."""
    warmup_steps: int = Field(0, ge=0)
    """Optimizer steps of linear learning-rate warmup."""
    decay_steps: int | None = Field(None, ge=1)
    """After warmup the rate falls linearly over this many steps to min_lr_ratio x lr (null: flat)."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Where the decay ends, as a fraction of lr."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    micro_batch: int = Field(16, ge=1)
    """Examples per forward pass inside a step."""
    lora: LoraSettings | None = None
    """Train LoRA adapters (peft) instead of all weights; published weights are merged
    (with lora.publish: adapter, they also carry the adapter for a vLLM server)."""
    threads: int | None = Field(None, ge=1)
    """torch threads of the learner's steps; None: a share of the cores this process may
    use (``searchlearn run`` divides them among the run's torch consumers)."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient-norm clip of one step."""
    max_length: int = Field(512, ge=8)
    """Tokens of one example (prompt and completion) kept, at most."""


class TorchLearner:
    """Base of learners over a local causal LM: subclasses compute a loss and call
    :meth:`apply` to take the optimizer step."""

    name = "torch"
    settings_class: ClassVar[type[TrainerSettings]] = TrainerSettings

    def __init__(self, model: Any, tokenizer: Any, settings: TrainerSettings | None = None, **overrides: Any) -> None:
        """``settings`` (or the same fields as keywords) say how it steps."""
        self.settings = settings = with_overrides(settings or self.settings_class(), overrides)
        self.tokenizer = tokenizer
        self.lora = settings.lora
        if settings.lora is not None:
            with warnings.catch_warnings():  # peft reads a property transformers deprecated
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
                model = self._peft(model, settings.lora)
        self.model = model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=settings.lr, weight_decay=settings.weight_decay, betas=(0.9, 0.98)
        )
        self.steps = 0
        self.version = 0
        self.busy_seconds = 0.0
        self.share: CoreShare | None = None
        """Cores handed with the generation engine: a step holds the learner's threads."""
        self._eos = tokenizer.eos_token or ""

    @staticmethod
    def _peft(model: Any, lora: LoraSettings) -> Any:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, config)

    @classmethod
    def from_path(cls, path: str | Path, **kwargs: Any) -> Any:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from runtime.policy.checkpoints import resolve_checkpoint

        directory = resolve_checkpoint(path)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
        return cls(model, tokenizer, **kwargs)

    async def update(self, examples: Sequence[Any]) -> UpdateResult:
        """One update on ``examples``, computed in a worker thread (holding its threads of
        the core share, if there is one: the engine runs on the rest meanwhile)."""
        if self.share is None:
            return await anyio.to_thread.run_sync(self.step, list(examples))
        with self.share.hold(self.settings.threads or 1):
            return await anyio.to_thread.run_sync(self.step, list(examples))

    def step(self, examples: Sequence[Any]) -> UpdateResult:
        raise NotImplementedError

    def prepare(self) -> float:
        """Start of a step: the thread count, train mode; returns the start time."""
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        self.model.train()
        return time.monotonic()

    def apply(self, started: float, loss: float, examples: int, tokens: int) -> UpdateResult:
        """Clip the accumulated gradients, take the optimizer step at this step's rate."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.settings.max_grad_norm))
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.steps)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        seconds = time.monotonic() - started
        self.busy_seconds += seconds
        return UpdateResult(self.steps, loss, examples, tokens, seconds, grad_norm)

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based): linear warmup, then flat
        or, with ``decay_steps``, a linear fall to ``min_lr_ratio`` x lr (flat after it)."""
        if step < self.settings.warmup_steps:
            return self.settings.lr * (step + 1) / (self.settings.warmup_steps + 1)
        if not self.settings.decay_steps:
            return self.settings.lr
        done = min(1.0, (step - self.settings.warmup_steps) / self.settings.decay_steps)
        return self.settings.lr * (1.0 - (1.0 - self.settings.min_lr_ratio) * done)

    # -- publishing and checkpoints ----------------------------------------------------

    def weights(self) -> dict[str, torch.Tensor]:
        """A snapshot of the weights in the plain model's names (LoRA merged in); with
        ``lora.publish: adapter``, an :class:`~runtime.policy.adapters.AdapterWeights`
        that also carries the adapter."""
        if self.lora is None:
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.merge_adapter()
        try:
            out = {}
            for key, value in self.model.state_dict().items():
                if "lora_" in key:
                    continue
                name = key.removeprefix("base_model.model.").replace(".base_layer", "")
                out[name] = value.detach().clone()
        finally:
            self.model.unmerge_adapter()
        if self.lora.publish == "merged":
            return out
        return self._with_adapter(out)

    def _with_adapter(self, merged: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``merged`` carrying the adapter as peft saves it (adapter_model.safetensors's
        tensors, adapter_config.json's fields)."""
        from peft import get_peft_model_state_dict

        from runtime.policy.adapters import AdapterWeights

        adapter = {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()}
        config = self.model.peft_config["default"].to_dict()
        config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
        return AdapterWeights(merged, adapter=adapter, config=config)

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write model, optimizer, version, step and ``extra`` to ``path`` atomically."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "version": self.version,
            "steps": self.steps,
            "extra": extra or {},
            **self.extra_state(),
        }
        tmp = target.with_suffix(target.suffix + ".tmp")
        torch.save(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)

    def load(self, path: str | Path) -> dict[str, Any]:
        """Restore a checkpoint written by :meth:`save`; returns its ``extra``. A file
        that cannot be read as one is a StoreError naming it (the ``store`` boundary, as
        for a damaged episode store: the run's durable state is broken, not its config)."""
        state = _read_checkpoint(Path(path))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.version = int(state["version"])
        self.steps = int(state["steps"])
        self.load_extra_state(state)
        extra: dict[str, Any] = state["extra"]
        return extra

    def extra_state(self) -> dict[str, Any]:
        """What a subclass keeps in the checkpoint besides model and optimizer."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` kept."""
        return None

    def policy_config(self) -> Any:
        """The plain model's transformers config (LoRA unwrapped)."""
        return (self.model.get_base_model() if self.lora is not None else self.model).config

    def export(self, directory: str | Path) -> None:
        """Save the current policy as a plain transformers checkpoint directory (servable;
        LoRA merged in)."""
        from transformers import AutoModelForCausalLM

        plain = AutoModelForCausalLM.from_config(self.policy_config(), dtype=torch.float32)  # type: ignore[no-untyped-call]
        plain.load_state_dict(self.weights(), strict=False)
        plain.generation_config = getattr(self.model, "generation_config", plain.generation_config)
        plain.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
