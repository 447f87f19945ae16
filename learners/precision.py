"""Where a learner computes and in what precision (``learner.device``, ``learner.dtype``,
``learner.gradient_checkpointing``, and ``learner.eval.device``).

Design decisions:
- A device is named as ``policy.device`` is: ``auto`` (the first GPU torch sees, else
  the CPU), ``cpu``, ``cuda`` or ``cuda:N``; a GPU named where torch sees none is a
  one-line ConfigError naming the field (:func:`placement`, over
  :func:`~runtime.policy.placement.resolve_device`), raised before any model loads.
- ``bfloat16`` is mixed precision by autocast, not bf16 weights: the weights, their
  gradients and AdamW's moments stay float32 (master weights) and the forward and
  backward passes run their matrix products in bf16 (``torch.autocast``); losses are
  computed from float32 logits. Why: a bf16 weight holds 8 significant bits, so an
  update smaller than ~1/256 of the weight rounds away, and at the learning rates
  fine-tuning uses (1e-6 to 1e-4, Adam steps about that size) most updates would be
  lost: at lr 1e-5 on weights drawn from N(0, 0.02), 84 % of them
  (``tests/test_gpu_ready.py``). Optimizer state in fp32 beside bf16 weights does not
  save the weight itself.
- It is what the RL trainers do: verl's FSDP workers create the model in fp32
  ("otherwise the optimizer is in bf16, which is incorrect") and compute in bf16
  through FSDP's mixed precision; TRL's ``bf16=True`` is Accelerate's autocast over the
  model's own fp32 weights; OpenRLHF's DeepSpeed bf16 mode keeps fp32 master weights in
  the optimizer.
- The price is memory: 16 bytes a trained parameter (weight, gradient, two moments),
  against 12 with bf16 weights and fp32 moments; activations, the larger part at long
  sequences, are bf16 either way, and gradient checkpointing is the lever for them.
- Frozen copies (DPO's reference, the KL's reference) stay what the policy is, so a
  reference equals the policy exactly at the start; an on-policy distillation teacher,
  which never trains, is held in bf16 (half its memory).
- Gradient checkpointing is transformers' non-reentrant checkpointing of every decoder
  layer: its activations are recomputed in the backward pass instead of kept, one more
  forward pass of the layers a step for the memory (``tests/gpu/check.py`` measures both).
"""

from __future__ import annotations

from typing import Any

import torch

from runtime.core.errors import ConfigError
from runtime.policy.placement import DEVICE_PATTERN, resolve_device

__all__ = ["DEVICE_PATTERN", "autocast", "checkpoint_layers", "placement"]


def placement(device: str, field: str) -> torch.device:
    """The torch device that the setting ``{field}.device`` names; a GPU named where torch
    sees none (or a name it does not know) is a one-line ConfigError naming the field."""
    try:
        return torch.device(resolve_device(device))
    except ValueError as exc:
        raise ConfigError(f"{field}.device: {exc}") from None


def autocast(device: torch.device, mixed: bool) -> Any:
    """The precision context of a learner's forward pass on ``device``: bf16 autocast when
    ``mixed``, nothing otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed)


def checkpoint_layers(model: Any) -> None:
    """Turn on transformers' non-reentrant checkpointing of every decoder layer
    (``activation_checkpointing_enable`` from transformers 5.25 on, where
    ``gradient_checkpointing_enable`` is deprecated; the older name before)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
