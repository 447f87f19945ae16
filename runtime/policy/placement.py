"""Device and dtype names, shared by every setting that places a model: ``policy.device``
and ``policy.dtype`` (the local engine), ``learner.device``, ``learner.eval.device`` and
``.dtype``, a PRM or ORM verifier's ``device`` and ``dtype``.

Light on purpose (torch is imported by the functions, not by this module), so config
classes validate names without loading torch.
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = ["DEVICE_PATTERN", "DTYPES", "DtypeName", "resolve_device", "resolve_dtype"]

DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"
"""The device names a setting takes: auto (the first GPU torch sees, else the CPU), cpu,
cuda, cuda:N."""

DtypeName = Literal["float32", "bfloat16"]
"""The weight dtypes a setting takes by name."""

DTYPES: tuple[str, ...] = ("float32", "bfloat16")


def resolve_device(device: str) -> str:
    """The torch device ``device`` names: ``auto`` is ``cuda`` when torch sees a GPU, else
    ``cpu``; a GPU asked for where there is none is a ValueError saying so."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: torch sees no CUDA GPU here (torch {torch.__version__})")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) visible")
    elif device != "cpu":
        raise ValueError(f"device {device!r}: allowed: auto, cpu, cuda, cuda:N")
    return device


def resolve_dtype(dtype: str) -> Any:
    """The ``torch.dtype`` named ``dtype`` (one of :data:`DTYPES`); another name is a
    ValueError saying what is allowed."""
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: allowed: {', '.join(DTYPES)}")
    return getattr(torch, dtype)
