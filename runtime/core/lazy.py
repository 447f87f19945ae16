"""Lazy re-exports for package ``__init__`` modules (PEP 562).

A package lists its public names and the submodule that defines each; a name is
imported on first access, so ``import runtime`` loads neither openai nor torch until a
backend that needs them is used.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["lazy_exports", "stub_exports"]


def lazy_exports(package: str, names: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``names`` maps a public name to the
    module (relative to ``package`` when it starts with a dot) that defines it."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        vars(sys.modules[package])[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__


def stub_exports(package: str, init_file: str) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` for ``package`` from its ``__init__.pyi``.

    The stub lists the package's public names once, as ``from module import Name as
    Name`` lines: a type checker reads them as real re-exports (``from runtime import
    Runtime`` is the class, not ``Any``), and this reads the same lines to import each
    name on first access (the pattern of scientific-python's ``lazy_loader``)."""
    tree = ast.parse(Path(init_file).with_suffix(".pyi").read_text(encoding="utf-8"))
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            for alias in node.names:
                names[alias.asname or alias.name] = "." * node.level + node.module
    getattr_, dir_ = lazy_exports(package, names)
    return getattr_, dir_, sorted(names, key=_isort_key)


def _isort_key(name: str) -> tuple[int, str]:
    """``__all__``'s order (ruff RUF022): CONSTANTS, then Classes, then functions."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2), name
