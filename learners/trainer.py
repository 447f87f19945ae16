"""The shared machinery of learners that train a local transformers model: the
optimizer and its learning-rate schedule, LoRA, publishing weights, checkpoints.

Design decisions:
- The learner owns its own copy of the model, in train mode, and never touches the
  serving engine's copy: it publishes a snapshot of its weights (``weights()``) that
  the engine swaps in between decode steps. Training and serving overlap.
- ``update`` runs the optimizer step in a worker thread, so the event loop keeps
  driving episodes while the learner computes (no stop-the-world).
- Placement and precision (``learner.device``, ``learner.dtype``,
  ``learner.gradient_checkpointing``; :mod:`learners.precision` says why): the model is
  moved to the learner's device as float32 master weights, and every forward pass goes
  through :meth:`TorchLearner.forward`, which places the inputs there and runs under
  bf16 autocast with ``dtype: bfloat16``. ``weights()`` clones on that device, so an
  engine of this process on a GPU takes a version device to device.
- An optional linear warmup of the learning rate: a fresh AdamW's first updates move
  every weight by about ``lr`` whatever its gradient, which can knock a converged
  checkpoint off its optimum before the moment estimates settle. An optional linear
  decay after it (``decay_steps``): a checkpoint taken mid-schedule, at a high rate,
  gains most from its rate falling.
- An optional exponential moving average of the weights as the policy (``ema``): after
  every optimizer step ``ema = d x ema + (1 - d) x weights``, and the average, not the raw
  weights, is what is published to the engine, evaluated and exported (the raw weights
  keep training). A fine-tune restarted at a higher rate than its checkpoint was annealed
  to first knocks the policy off (measured from ``bundled-weak``: held-out greedy 28.7 ->
  17 % after 30 steps on ground truth, docs/benchmarks.md); a learner that samples its
  own data may then go on learning from the knocked policy. Averaging the weights damps
  what the raw iterates do at a high rate, as a falling rate would (an average of the
  iterates stands in for annealing). It starts from the start's weights; it is checkpointed with the rest.
  Not with LoRA (the adapters' average is not the merged weights' average).
- LoRA through peft is optional; a LoRA learner publishes merged weights, so the
  engine always serves a plain model. With ``lora.publish: adapter`` the published
  mapping is still the merged weights (what the evaluator and any in-process engine
  load) and also carries the adapter itself in peft's save format
  (:class:`~runtime.policy.adapters.AdapterWeights`), which a vLLM server loads at
  run time as a new adapter (:class:`~runtime.policy.lora_server.LoraServerPolicy`).
- Checkpoints hold model, optimizer, version and step; they are written whole
  (:func:`~runtime.scheduling.files.written_whole`: a temporary file renamed over the
  old one), so a kill, a full disk or a read-only folder mid-write leaves the previous
  one intact and no partial file, and the failure is a one-line StoreError naming the
  file; the exported policy folder is swapped in the same way. One that cannot be read
  (truncated, corrupt) is a one-line StoreError naming the file.
- A checkpoint loads as data only (``torch.load(weights_only=True)``): a file that
  holds anything but tensors and plain values (a pickled callable) is refused naming
  the file, and nothing in it runs. The loop's ``extra`` holds dataclasses (the replay
  window's examples): they are saved as plain fields under their class's name and
  rebuilt on load only if that class is a dataclass of the ``learners`` package.
- A checkpoint written with LoRA does not resume a learner without it, or the other way
  round: one line says which it was written with.
- Nothing non-finite leaves the learner. A step whose loss or gradient norm is NaN or
  infinite is refused in :meth:`TorchLearner.apply`, the one place every learner's
  optimizer step passes through: no optimizer step, gradients zeroed, counted
  (``nonfinite_steps``, which the run's summary shows, and the step's ``metrics``);
  ``NONFINITE_STEPS_IN_A_ROW`` of them in a row stop the run with a LearnerError
  naming the settings that likely caused it. ``weights()`` (what is published),
  ``save`` and ``export`` check every tensor first and raise the same error rather
  than hand on a NaN (one cheap pass over the weights).
- Token ids are the record: an example or rollout made of a path's sampled ids trains
  on those ids (:func:`part_ids`), never on its text encoded again, which a BPE may
  tokenise otherwise than the policy sampled; text is encoded only where a path holds
  some (a fork, a text-only backend's step), and each learner step reports those tokens
  (``reencoded_tokens`` in its metrics, summed in the run's summary).
- Agent episodes: a sample's pieces carry a loss mask (the policy's tokens 1, an
  observation's 0); masked tokens are fed but put nothing in a loss, and each step
  counts them (``masked_tokens``). A sample whose sampled ids are not what the engine
  was fed and sampled (:func:`~learners.examples.fed_mismatch`: ids outside this tokenizer's vocabulary,
  ids that do not decode to the step the tree holds, behaviour log-probs not one per
  sampled id) is never trained: it is dropped, counted (``mismatched_samples`` on the
  learner and in the step's metrics, its tokens as ``mismatched_tokens``).
- A step with no token to train on (every completion cut off by ``max_length``: a
  prompt as long as it) is refused the same way, counted (``empty_steps``) and warned
  about once per learner, naming ``learner.max_length``; an optimizer step on zero
  gradients would still move the weights (momentum, weight decay).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pickle
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, ClassVar, Literal

import anyio
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from learners.base import UpdateResult
from learners.precision import DEVICE_PATTERN, autocast, checkpoint_layers, placement
from runtime.core.errors import LearnerError, StoreError
from runtime.core.log import get_logger
from runtime.core.registry import with_overrides
from runtime.core.threads import CoreShare
from runtime.policy.placement import DtypeName
from runtime.scheduling.files import written_whole
from runtime.scheduling.store_faults import one_line

__all__ = [
    "NONFINITE_STEPS_IN_A_ROW",
    "LoraSettings",
    "TorchLearner",
    "TrainerSettings",
    "part_ids",
]

log = get_logger("searchlearn.learner")

NONFINITE_STEPS_IN_A_ROW = 3
"""Steps in a row refused for a non-finite loss or gradient norm before the learner gives
up (one can be a freak batch; three in a row are the settings)."""

_CHECKPOINT_KEYS = frozenset({"model", "optimizer", "version", "steps", "extra"})
_DATACLASS = "__dataclass__"  # the key under which a saved dataclass names its class


def _plain(value: Any) -> Any:
    """``value`` as what a weights-only load reads back: a dataclass becomes a dict of its
    fields plus its class's name; containers are converted throughout."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        fields = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {_DATACLASS: f"{cls.__module__}:{cls.__qualname__}", **fields}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def _rebuilt(value: Any, path: Path) -> Any:
    """The inverse of :func:`_plain`; a class outside the ``learners`` package, or not a
    dataclass, is refused (a checkpoint names no code to run)."""
    if isinstance(value, dict):
        items = {k: _rebuilt(v, path) for k, v in value.items() if k != _DATACLASS}
        if _DATACLASS not in value:
            return items
        module, _, name = str(value[_DATACLASS]).partition(":")
        cls: Any = None
        if module.split(".")[0] == "learners" and name.isidentifier():
            with suppress(ImportError):
                cls = getattr(importlib.import_module(module), name, None)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise StoreError(f"learner checkpoint {path} holds an object of {value[_DATACLASS]!r}, which it may not")
        try:
            return cls(**items)
        except TypeError as exc:  # written by a version whose class had other fields
            raise StoreError(f"learner checkpoint {path} holds a {name} this version cannot rebuild ({exc})") from None
    if isinstance(value, list):
        return [_rebuilt(v, path) for v in value]
    if isinstance(value, tuple):
        return tuple(_rebuilt(v, path) for v in value)
    return value


def part_ids(tokenizer: Any, parts: Sequence[str | Sequence[int]]) -> list[tuple[list[int], bool]]:
    """Each piece's token ids and whether the policy sampled them: an id piece as it is,
    a text piece encoded on its own (as :func:`~runtime.policy.prompts.encode_parts`
    does for the engine, so the learner's sequence is the one the policy saw)."""
    out: list[tuple[list[int], bool]] = []
    for part in parts:
        if isinstance(part, str):
            out.append((tokenizer(part, add_special_tokens=False)["input_ids"] if part else [], False))
        else:
            out.append((list(part), True))
    return out


def _first_nonfinite(tensors: Mapping[str, Any]) -> str | None:
    """The name of the first floating tensor of ``tensors`` holding a NaN or an inf."""
    for name, value in tensors.items():
        if isinstance(value, Mapping):
            inner = _first_nonfinite(value)
            if inner is not None:
                return f"{name}.{inner}"
        elif isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(value.isfinite().all()):
            return name
    return None


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load`` of a learner checkpoint, as data only; any failure is one line
    naming the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise StoreError(f"learner checkpoint {path} does not exist") from exc
    except PermissionError as exc:
        raise StoreError(f"cannot read learner checkpoint {path}: permission denied") from exc
    except Exception as exc:  # torch raises OSError, RuntimeError, EOFError, UnpicklingError...
        found = re.search(r"GLOBAL ([\w.]+)", str(exc)) if isinstance(exc, pickle.UnpicklingError) else None
        if found is not None:  # the weights-only unpickler met a callable: nothing of it ran
            raise StoreError(
                f"learner checkpoint {path} holds code, not only tensors and plain values ({found.group(1)}); "
                "it was not written by this searchlearn (or was tampered with) and is not loaded: delete it "
                "to start the learner over"
            ) from None
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:160]
        raise StoreError(
            f"learner checkpoint {path} is truncated or corrupt ({detail}); restore it, "
            "or delete it to start the learner over"
        ) from exc
    if not isinstance(state, dict) or not _CHECKPOINT_KEYS <= state.keys() or not isinstance(state["model"], dict):
        raise StoreError(f"{path} is not a learner checkpoint (no model, optimizer and version in it)")
    state["extra"] = _rebuilt(state["extra"], path)
    return state


class LoraSettings(BaseModel):
    """LoRA adapters (peft) instead of all weights; published weights are merged (and,
    with ``publish: adapter``, carry the adapter for a server that loads adapters)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    r: int = Field(8, ge=1, le=256)
    """LoRA rank."""
    alpha: int = Field(16, ge=1, le=4096)
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
    warmup_steps: int = Field(0, ge=0, le=1_000_000)
    """Optimizer steps of linear learning-rate warmup."""
    decay_steps: int | None = Field(None, ge=1, le=100_000_000)
    """After warmup the rate falls linearly over this many steps to min_lr_ratio x lr (null: flat)."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Where the decay ends, as a fraction of lr."""
    weight_decay: float = Field(0.0, ge=0, le=1)
    """AdamW weight decay (decoupled: each step scales the weights by 1 - lr x weight_decay)."""
    micro_batch: int = Field(16, ge=1, le=4096)
    """Examples per forward pass inside a step."""
    lora: LoraSettings | None = None
    """Train LoRA adapters (peft) instead of all weights; published weights are merged
    (with lora.publish: adapter, they also carry the adapter for a vLLM server)."""
    threads: int | None = Field(None, ge=1, le=1024)
    """torch threads of the learner's steps; None: a share of the cores this process may
    use (``searchlearn run`` divides them among the run's torch consumers)."""
    max_grad_norm: float = Field(1.0, gt=0, le=1000)
    """Gradient-norm clip of one step."""
    max_length: int = Field(512, ge=8, le=1_048_576)
    """Tokens of one example (prompt and completion) kept, at most; a prompt this long
    leaves nothing to train on."""
    device: str = Field("auto", pattern=DEVICE_PATTERN)
    """Where the learner trains: auto (the first GPU when torch sees one, else the CPU),
    cpu, cuda or cuda:N. A GPU named where torch sees none is a one-line error naming
    this field."""
    dtype: DtypeName = "float32"
    """float32, or bfloat16 mixed precision: matrix products in bf16 under autocast while
    the weights, gradients and AdamW's state stay float32 (bf16 weights would round most
    fine-tuning updates away; see learners.precision). Meant for a GPU; it runs on the
    CPU too (docs/gpu.md)."""
    ema: float | None = Field(None, ge=0, lt=1)
    """Publish (to the engine, the evaluator and the export) an exponential moving average
    of the weights, with this decay per optimizer step (0.9: about the last 10 steps),
    instead of the raw weights, which keep training; null: the raw weights. Not with
    lora."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass instead of keeping them
    (transformers' non-reentrant gradient checkpointing): less memory for long sequences
    and large micro-batches, for one more forward pass of the layers a step
    (tests/gpu/check.py measures both)."""

    @model_validator(mode="after")
    def _ema_without_lora(self) -> TrainerSettings:
        if self.ema is not None and self.lora is not None:
            raise ValueError("ema: an average of the weights is not kept for LoRA adapters; set ema or lora to null")
        return self


class TorchLearner:
    """Base of learners over a local causal LM: subclasses compute a loss and call
    :meth:`apply` to take the optimizer step."""

    name = "torch"
    settings_class: ClassVar[type[TrainerSettings]] = TrainerSettings

    def __init__(self, model: Any, tokenizer: Any, settings: TrainerSettings | None = None, **overrides: Any) -> None:
        """``settings`` (or the same fields as keywords) say how it steps."""
        self.settings = settings = with_overrides(settings or self.settings_class(), overrides)
        self.device = placement(settings.device, "learner")
        self.mixed = settings.dtype == "bfloat16"
        """Forward and backward passes under bf16 autocast (weights and optimizer state float32)."""
        self.tokenizer = tokenizer
        self.lora = settings.lora
        model = model.to(device=self.device, dtype=torch.float32)  # master weights (see module doc)
        if settings.gradient_checkpointing:
            checkpoint_layers(model)
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
        self.nonfinite_steps = 0
        """Steps refused because their loss or gradient norm was NaN or infinite."""
        self.empty_steps = 0
        """Steps refused because no example had a token left to train on."""
        self.mismatched_samples = 0
        """Samples dropped because their ids are not what the engine was fed (see module doc)."""
        self._refused_in_a_row = 0
        self.share: CoreShare | None = None
        """Cores handed with the generation engine: a step holds the learner's threads."""
        self._eos = tokenizer.eos_token or ""
        self._ema: dict[str, torch.Tensor] | None = None
        if settings.ema is not None:
            self._ema = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

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

    def autocast(self) -> Any:
        """The precision context of a forward pass (:func:`~learners.precision.autocast`)."""
        return autocast(self.device, self.mixed)

    def forward(self, model: Any, ids: torch.Tensor, mask: torch.Tensor | None = None, **extra: Any) -> Any:
        """``model`` (the learner's, or a frozen copy) run on ``ids`` and ``mask`` placed on
        the learner's device, under :meth:`autocast`, without a KV cache."""
        inputs: dict[str, Any] = {"input_ids": ids.to(self.device), "use_cache": False, **extra}
        if mask is not None:
            inputs["attention_mask"] = mask.to(self.device)
        with self.autocast():
            return model(**inputs)

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
        """Clip the accumulated gradients, take the optimizer step at this step's rate; a
        step with a non-finite loss or gradient norm, or no token trained, is refused
        (see module doc)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.settings.max_grad_norm))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)) or tokens == 0:
            return self._refuse(started, loss, examples, tokens, grad_norm)
        self._refused_in_a_row = 0
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.steps)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._average()
        self.steps += 1
        seconds = time.monotonic() - started
        self.busy_seconds += seconds
        return UpdateResult(self.steps, loss, examples, tokens, seconds, grad_norm)

    @torch.no_grad()
    def _average(self) -> None:
        """Move the published average ``1 - ema`` of the way to the weights just stepped."""
        if self._ema is None or self.settings.ema is None:
            return
        for key, value in self.model.state_dict().items():
            if value.is_floating_point():
                self._ema[key].lerp_(value.detach(), 1.0 - self.settings.ema)

    def _refuse(self, started: float, loss: float, examples: int, tokens: int, grad_norm: float) -> UpdateResult:
        """No optimizer step: the gradients are dropped and the refusal counted."""
        self.optimizer.zero_grad(set_to_none=True)
        seconds = time.monotonic() - started
        self.busy_seconds += seconds
        if tokens == 0:
            self.empty_steps += 1
            if self.empty_steps == 1:
                log.warning(
                    "learner step skipped: no token to train on",
                    examples=examples,
                    hint=f"learner.max_length ({self.settings.max_length}) leaves no completion token after "
                    "these examples' prompts; raise it (every such step is skipped and counted)",
                )
            return UpdateResult(self.steps, loss, examples, tokens, seconds, grad_norm, {"empty_steps": 1.0})
        self.nonfinite_steps += 1
        self._refused_in_a_row += 1
        log.info("learner step refused: non-finite loss or gradient", loss=loss, grad_norm=grad_norm)
        if self._refused_in_a_row >= NONFINITE_STEPS_IN_A_ROW:
            raise LearnerError(
                self._diverged(
                    f"{self._refused_in_a_row} steps in a row had a non-finite loss or gradient norm "
                    f"(last: loss {loss:g}, gradient norm {grad_norm:g})"
                )
            )
        return UpdateResult(self.steps, loss, examples, tokens, seconds, grad_norm, {"nonfinite_steps": 1.0})

    def _diverged(self, what: str) -> str:
        s = self.settings
        return (
            f"the learner diverged after {self.steps} optimizer steps: {what}; nothing non-finite was published "
            f"or saved. Likely cause: learner.lr ({s.lr:g}), learner.weight_decay ({s.weight_decay:g}) or "
            f"learner.max_grad_norm ({s.max_grad_norm:g}) too high for this model: lower them, or add "
            "learner.warmup_steps"
        )

    def _check_finite(self, tensors: Mapping[str, Any], doing: str) -> None:
        """Raise a LearnerError (before ``doing``) if any tensor of ``tensors`` is not finite."""
        name = _first_nonfinite(tensors)
        if name is not None:
            raise LearnerError(self._diverged(f"weight {name} holds NaN or inf, so it is not {doing}"))

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
            source = self._ema if self._ema is not None else self.model.state_dict()
            plain = {k: v.detach().clone() for k, v in source.items()}
            self._check_finite(plain, "published")
            return plain
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
        self._check_finite(out, "published")
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
        """Write model, optimizer, version, step and ``extra`` to ``path`` whole (a failed
        write is a StoreError naming it, and leaves the previous checkpoint as it was)."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "version": self.version,
            "steps": self.steps,
            "extra": _plain(extra or {}),
            **({"ema": self._ema} if self._ema is not None else {}),
            **self.extra_state(),
        }
        self._check_finite({k: v for k, v in state.items() if k not in ("optimizer", "extra")}, "saved")
        with written_whole(path, "learner checkpoint", also=(RuntimeError,)) as tmp:
            torch.save(state, tmp)  # torch says a failed write with a RuntimeError

    def load(self, path: str | Path) -> dict[str, Any]:
        """Restore a checkpoint written by :meth:`save`; returns its ``extra``. A file
        that cannot be read as one is a StoreError naming it (the ``store`` boundary, as
        for a damaged episode store: the run's durable state is broken, not its config),
        and so is one written for another model, with or without LoRA unlike this learner."""
        path = Path(path)
        state = _read_checkpoint(path)
        with_lora = any("lora_" in key for key in state["model"])
        if with_lora != (self.lora is not None):
            written, now = ("with", "off") if with_lora else ("without", "on")
            raise StoreError(
                f"learner checkpoint {path} was written {written} LoRA and learner.lora is {now}: resume with "
                "the setting it was written with, or delete it (or set learner.checkpoint) to start over"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self._ema is not None:  # written without one: the average starts at the checkpoint's weights
                ema = state.get("ema") or self.model.state_dict()
                self._ema = {k: ema[k].detach().clone().to(self.device) for k in self._ema}
            self.load_extra_state(state)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise StoreError(
                f"learner checkpoint {path} does not fit this learner ({one_line(exc, 120)}): it was written for "
                "another model or learner kind; delete it (or set learner.checkpoint) to start over"
            ) from None
        self.version = int(state["version"])
        self.steps = int(state["steps"])
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
        LoRA merged in), swapped in whole over an earlier export (see module doc)."""
        from safetensors import SafetensorError

        self._check_finite(self.model.state_dict() if self._ema is None else self._ema, "exported")
        failed_write = (RuntimeError, SafetensorError)  # what torch and safetensors raise for one
        with written_whole(directory, "policy export", folder=True, also=failed_write) as tmp:
            self.write_export(tmp)

    def write_export(self, directory: Path) -> None:
        """Write what :meth:`export` saves into the fresh folder ``directory``."""
        from transformers import AutoModelForCausalLM

        plain = AutoModelForCausalLM.from_config(self.policy_config(), dtype=torch.float32)  # type: ignore[no-untyped-call]
        plain.load_state_dict(self.weights(), strict=False)
        plain.generation_config = getattr(self.model, "generation_config", plain.generation_config)
        plain.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
