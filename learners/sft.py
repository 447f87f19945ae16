"""Supervised fine-tuning of a local causal LM on examples: the learner of expert
iteration and of distillation.

Design decisions:
- The learner owns its own copy of the model, in train mode, and never touches the
  serving engine's copy: it publishes a snapshot of its weights (``weights()``) that
  the engine swaps in between decode steps. Training and serving overlap.
- ``update`` runs the optimizer step in a worker thread, so the event loop keeps
  driving episodes while the learner computes (no stop-the-world).
- Loss on the completion tokens only (and the end-of-turn token), each example
  weighted (stale examples may be down-weighted), normalised by the weighted token
  count of the whole batch; micro-batches sorted by length keep padding small.
- An optional linear warmup of the learning rate: a fresh AdamW's first updates move
  every weight by about ``lr`` whatever its gradient, which can knock a converged
  checkpoint off its optimum before the moment estimates settle. An optional linear
  decay after it (``decay_steps``): a checkpoint taken mid-schedule, at a high rate,
  gains most from its rate falling.
- LoRA through peft is optional; a LoRA learner publishes merged weights, so the
  engine always serves a plain model.
- Checkpoints hold model, optimizer, version and step; they are written to a
  temporary file and renamed, so a kill mid-write leaves the previous one intact.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import torch
from pydantic import BaseModel, ConfigDict, Field

from learners.base import UpdateResult
from learners.examples import Example

__all__ = ["LoraSettings", "SFTLearner", "SFTSettings"]


class LoraSettings(BaseModel):
    """LoRA adapters (peft) instead of all weights; published weights are merged."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    r: int = Field(8, ge=1, le=256)
    """LoRA rank."""
    alpha: int = Field(16, ge=1)
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA input."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Modules that get adapters."""


class SFTSettings(BaseModel):
    """How the supervised learner steps (part of a learner config section)."""

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
    """Train LoRA adapters (peft) instead of all weights; published weights are merged."""
    threads: int | None = Field(None, ge=1)
    """torch threads of the learner's steps."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient-norm clip of one step."""
    max_length: int = Field(512, ge=8)
    """Tokens of one example (prompt and completion) kept, at most."""


class SFTLearner:
    """Behaviour cloning of examples into a local transformers model (see module doc)."""

    name = "sft"

    def __init__(self, model: Any, tokenizer: Any, settings: SFTSettings | None = None, **overrides: Any) -> None:
        """``settings`` (or the same fields as keywords) say how it steps."""
        base = settings or SFTSettings()
        self.settings = settings = type(base).model_validate(base.model_dump() | overrides) if overrides else base
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
    def from_path(cls, path: str | Path, **kwargs: Any) -> SFTLearner:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from runtime.policy.checkpoints import resolve_checkpoint

        directory = resolve_checkpoint(path)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
        return cls(model, tokenizer, **kwargs)

    # -- examples to tensors -----------------------------------------------------------

    def encode(self, example: Example) -> tuple[list[int], list[int]]:
        """Token ids of prompt + completion + end of turn, and labels (-100 on the prompt)."""
        prompt = self.tokenizer.apply_chat_template(example.messages, tokenize=False, add_generation_prompt=True)
        prompt_ids: list[int] = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        completion_ids: list[int] = self.tokenizer(example.completion + self._eos, add_special_tokens=False)[
            "input_ids"
        ]
        ids = (prompt_ids + completion_ids)[: self.settings.max_length]
        labels = ([-100] * len(prompt_ids) + completion_ids)[: self.settings.max_length]
        return ids, labels

    # -- one optimizer step ------------------------------------------------------------

    async def update(self, examples: Sequence[Example]) -> UpdateResult:
        """One optimizer step on ``examples``, computed in a worker thread."""
        return await anyio.to_thread.run_sync(self.step, list(examples))

    def step(self, examples: Sequence[Example]) -> UpdateResult:
        if not examples:
            raise ValueError("a learner step needs at least one example")
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        started = time.monotonic()
        encoded = sorted(((*self.encode(ex), ex.weight) for ex in examples if ex.weight > 0), key=lambda e: len(e[0]))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        total_weight = sum(w * sum(t != -100 for t in y[1:]) for _, y, w in encoded) or 1.0
        loss_sum = 0.0
        tokens = 0
        self.model.train()
        for start in range(0, len(encoded), self.settings.micro_batch):
            micro = encoded[start : start + self.settings.micro_batch]
            width = max(len(ids) for ids, _, _ in micro)
            ids = torch.full((len(micro), width), pad, dtype=torch.long)
            labels = torch.full((len(micro), width), -100, dtype=torch.long)
            mask = torch.zeros((len(micro), width), dtype=torch.long)
            weights = torch.zeros(len(micro))
            for i, (x, y, w) in enumerate(micro):
                ids[i, : len(x)] = torch.tensor(x)
                labels[i, : len(y)] = torch.tensor(y)
                mask[i, : len(x)] = 1
                weights[i] = w
            logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            per_token = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="none"
            ).view(target.shape)
            loss = (per_token * weights[:, None]).sum() / total_weight
            loss.backward()  # type: ignore[no-untyped-call]
            loss_sum += float(loss.detach())
            tokens += int((target != -100).sum())
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.settings.max_grad_norm))
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.steps)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        seconds = time.monotonic() - started
        self.busy_seconds += seconds
        return UpdateResult(self.steps, loss_sum, len(encoded), tokens, seconds, grad_norm)

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based): linear warmup, then flat
        or, with ``decay_steps``, a linear fall to ``min_lr_ratio`` x lr (flat after it)."""
        if step < self.settings.warmup_steps:
            return self.settings.lr * (step + 1) / (self.settings.warmup_steps + 1)
        if not self.settings.decay_steps:
            return self.settings.lr
        done = min(1.0, (step - self.settings.warmup_steps) / self.settings.decay_steps)
        return self.settings.lr * (1.0 - (1.0 - self.settings.min_lr_ratio) * done)

    @torch.no_grad()
    def loss(self, examples: Sequence[Example]) -> float:
        """Mean completion-token loss on ``examples`` (no update); for tests and logs."""
        self.model.eval()
        total, count = 0.0, 0
        for ex in examples:
            ids, labels = self.encode(ex)
            out = self.model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
            n = sum(t != -100 for t in labels[1:])
            total += float(out.loss) * n
            count += n
        self.model.train()
        return total / max(count, 1)

    # -- publishing and checkpoints ----------------------------------------------------

    def weights(self) -> dict[str, torch.Tensor]:
        """A snapshot of the weights in the plain model's names (LoRA merged in)."""
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
            return out
        finally:
            self.model.unmerge_adapter()

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
        }
        tmp = target.with_suffix(target.suffix + ".tmp")
        torch.save(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)

    def load(self, path: str | Path) -> dict[str, Any]:
        """Restore a checkpoint written by :meth:`save`; returns its ``extra``."""
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.version = int(state["version"])
        self.steps = int(state["steps"])
        extra: dict[str, Any] = state["extra"]
        return extra

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
