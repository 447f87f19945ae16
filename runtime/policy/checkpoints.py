"""Checkpoint directories, by path or by name.

A local policy, a learner or a PRM loads a plain transformers checkpoint directory.
Names stand for directories that packages ship: each is an entry point in the group
``searchlearn.checkpoints`` whose object is the directory's path (this package
registers ``bundled`` and ``bundled-weak``, the tiny domain's policies; a plug-in can
ship its own the same way).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

__all__ = ["named_checkpoints", "resolve_checkpoint"]

GROUP = "searchlearn.checkpoints"


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
    if not (p / "config.json").is_file():
        known = ", ".join(sorted(named_checkpoints()))
        raise FileNotFoundError(f"{p} is not a transformers checkpoint directory (no config.json; names: {known})")
    return p
