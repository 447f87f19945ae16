"""Every package and module keeps an honest ``__all__`` (after httpx's
``tests/test_exported_members.py``)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest

PACKAGES = ["runtime", "strategies", "learners"]


def modules() -> list[str]:
    """Every module of the packages that has a public surface (an empty sub-package
    ``__init__`` has none and needs no ``__all__``)."""
    names = []
    for package in PACKAGES:
        names.append(package)
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}."):
            try:
                sub = importlib.import_module(info.name)
            except ImportError:  # needs an optional extra (vllm, ...) that is not installed
                continue
            public = [
                a
                for a, v in vars(sub).items()
                if not a.startswith("_") and a != "annotations" and not isinstance(v, ModuleType)
            ]  # `annotations`: what `from __future__ import annotations` leaves behind
            if hasattr(sub, "__all__") or public:
                names.append(info.name)
    return sorted(names)


def isort_key(name: str) -> tuple[int, str]:
    """isort-style order (ruff RUF022): CONSTANTS, then Classes, then functions."""
    category = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return category, name


def public_all(name: str) -> list[str]:
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    names = module.__all__
    assert isinstance(names, list) and all(isinstance(n, str) for n in names)
    return names


@pytest.mark.parametrize("name", PACKAGES)
def test_package_all_names_exist_and_are_unique(name: str) -> None:
    module = importlib.import_module(name)
    names = public_all(name)
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names missing attributes: {missing}"
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"{name}.__all__ lists twice: {duplicates}"
    assert not [n for n in names if n.startswith("_")]


@pytest.mark.parametrize("name", PACKAGES)
def test_package_all_is_sorted(name: str) -> None:
    names = public_all(name)
    assert names == sorted(names, key=isort_key)


def _defined_in(module: ModuleType, package: str) -> list[str]:
    """Public classes and functions the package namespace holds that its own modules define."""
    out = []
    for attr, value in vars(module).items():
        if attr.startswith("_") or not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        if (getattr(value, "__module__", "") or "").split(".")[0] == package:
            out.append(attr)
    return out


@pytest.mark.parametrize("name", PACKAGES)
def test_package_all_covers_what_it_imports(name: str) -> None:
    """A public name imported into the package is exported (or it should not be there)."""
    module = importlib.import_module(name)
    assert sorted(set(_defined_in(module, name)) - set(public_all(name))) == []


@pytest.mark.parametrize("name", modules())
def test_module_all_names_exist_and_are_unique(name: str) -> None:
    module = importlib.import_module(name)
    if not hasattr(module, "__all__"):
        pytest.fail(f"{name} has no __all__")
    names = public_all(name)
    assert [n for n in names if not hasattr(module, n)] == []
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", [n for n in modules() if n not in PACKAGES])
def test_module_all_is_sorted(name: str) -> None:
    names = public_all(name)
    assert names == sorted(names, key=isort_key)


@pytest.mark.parametrize("name", PACKAGES)
def test_packages_are_typed(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__file__ is not None
    from pathlib import Path

    assert (Path(module.__file__).parent / "py.typed").is_file()


def test_lazy_package_names_are_real_types_to_a_type_checker(tmp_path: Path) -> None:
    """``from runtime import Runtime`` is the class to mypy, not ``Any``: the packages'
    ``__init__.pyi`` stubs list the names their lazy ``__getattr__`` imports."""
    import subprocess
    import sys

    probe = tmp_path / "probe.py"
    probe.write_text(
        "from runtime import Runtime, Sampling\nfrom learners import GRPO\n"
        "reveal_type(Runtime)\nreveal_type(GRPO)\nx: int = Sampling()\n"
    )
    # in a subprocess: mypy's in-process state is a heap of millions of objects that would
    # stay alive for the rest of the suite (and slow every test that walks the heap)
    cmd = [sys.executable, "-m", "mypy", str(probe), "--no-incremental", "--follow-imports=silent"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False).stdout
    assert "runtime.scheduling.scheduler.Runtime" in out, out
    assert "learners.grpo.GRPO" in out, out
    assert 'expression has type "Sampling", variable has type "int"' in out, out
