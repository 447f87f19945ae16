"""The layers are checked, and importing the packages stays cheap."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
HEAVY = ("openai", "torch", "transformers")


def test_layer_contracts_hold() -> None:
    """import-linter's contracts (.importlinter): layers, no cycles, cheap lower layers."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint is not None, "import-linter is a test dependency"
    result = subprocess.run([lint, "--config", str(ROOT / ".importlinter")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def imported_modules(statement: str) -> set[str]:
    """Top-level modules that ``python -X importtime -c statement`` imports."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement], cwd=ROOT, capture_output=True, text=True, check=True
    )
    names = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


@pytest.mark.parametrize(
    "statement",
    [
        "import runtime",
        "import strategies",
        "import learners",
        "from runtime import Runtime, ScriptedPolicy, Context, ExactMatch, tiny_tasks",
        "import runtime.app.config",
    ],
)
def test_importing_loads_no_heavy_library(statement: str) -> None:
    loaded = imported_modules(statement)
    assert "runtime" in loaded or "strategies" in loaded or "learners" in loaded
    assert not loaded & set(HEAVY), f"{statement} imports {sorted(loaded & set(HEAVY))}"


def test_a_backend_loads_its_library_when_used() -> None:
    assert "openai" in imported_modules("from runtime import OpenAIPolicy")
    assert "torch" in imported_modules("from runtime.policy import LocalPolicy")
