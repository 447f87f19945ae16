"""Defects users reproduced (issue 25): the CLI's version, flags, verbosity and component
list, quiet embedded use, the composition root's docstring, the embedded example's run
ids and the shipped configs' verifier keys."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import structlog
import yaml
from typer.testing import CliRunner

from runtime.app.cli import FAMILIES, app
from runtime.app.config import _LEGACY, load_config
from runtime.core.registry import components

ROOT = Path(__file__).parents[1]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _python(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter (structlog and transformers unconfigured),
    with no TRANSFORMERS_VERBOSITY of the caller's."""
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    return subprocess.run(
        [sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )


# 1. --version


def test_version_prints_the_installed_version(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"searchlearn {metadata.version('searchlearn')}"


# 2. boolean options are flags, and the help says so


@pytest.mark.parametrize("command", [[], ["run"], ["show"], ["plot"], ["export"], ["fetch"], ["components"]])
def test_help_shows_no_bool_placeholder(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.stdout
    if command == ["run"]:
        for flag in ("--log-json", "--verbose", "--progress", "--no-progress"):
            assert flag in result.stdout


def test_run_takes_its_flags_without_a_value(runner: CliRunner, data_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    config = str(data_dir / "scripted.yaml")
    flags = ["--log-json", "--verbose", "--no-progress"]
    result = runner.invoke(app, ["run", config, *flags, "--set", f"store.path={store}"])
    assert result.exit_code == 0, result.output
    assert '"event": "run started"' in result.stderr  # JSON lines: --log-json alone turned them on
    again = runner.invoke(app, ["run", config, "-v", "--progress", "--set", f"store.path={store}"])
    assert again.exit_code == 0, again.output


# 3. --verbose is searchlearn's info, not transformers'

VERBOSITY = """
import logging, sys
import structlog
from runtime.app.cli import configure_logging
if sys.argv[1] == "before":
    import transformers
configure_logging(verbose=True, json_logs=False)
if sys.argv[1] == "after":
    import transformers
ours = structlog.get_logger("searchlearn.scheduler").bind().get_effective_level()
print(logging.getLogger("transformers").getEffectiveLevel(), ours)
"""


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers is not installed")
@pytest.mark.parametrize("imported", ["before", "after"])
def test_verbose_keeps_transformers_at_warning(imported: str) -> None:
    """transformers imported before the CLI's logging setup or after it (when it reads
    TRANSFORMERS_VERBOSITY): its logger stays at warning, searchlearn's logs info."""
    result = _python(VERBOSITY, imported)
    assert result.returncode == 0, result.stderr[-3000:]
    theirs, ours = map(int, result.stdout.split()[-2:])
    assert theirs >= logging.WARNING
    assert ours == logging.INFO


# 4. embedded use prints no info lines


def test_library_loggers_drop_info_until_structlog_is_configured(capsys: pytest.CaptureFixture[str]) -> None:
    from runtime.core.log import get_logger

    structlog.reset_defaults()
    log = get_logger("searchlearn.test")
    log.info("quiet info")
    log.bind(task_id="t1").info("quiet bound info")
    log.warning("loud warning")
    quiet = capsys.readouterr().out
    assert "quiet" not in quiet and "loud warning" in quiet

    structlog.configure(processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer(colors=False)])
    log.info("configured info")
    assert "configured info" in capsys.readouterr().out  # the application's choice wins, after import too


EMBEDDED = """
import anyio
from runtime import Runtime, ScriptedPolicy, Task
from strategies import ChainOfThought

async def main():
    tasks = [Task(id=f"t{i}", prompt=f"question {i}", answer="42") for i in range(2)]
    async with Runtime(ScriptedPolicy(["Answer: 42"]), ChainOfThought()) as rt:
        async for ep in rt.stream(tasks):
            print("episode", ep.task.id, ep.final_answer)

anyio.run(main)
"""


def test_an_embedded_runtime_prints_no_info_logs() -> None:
    result = _python(EMBEDDED)
    assert result.returncode == 0, result.stderr[-3000:]
    out = ANSI.sub("", result.stdout)
    assert "episode t0 42" in out and "episode t1 42" in out
    assert not re.search(r"\[\s*info", out), out


# 5. components shows whole descriptions


def _descriptions(table: str) -> dict[str, str]:
    """Name -> the 'what it is' cell of a rich table, its wrapped lines joined."""
    rows: list[list[str]] = []
    for line in table.splitlines():
        cells = line.split("│")
        if len(cells) != 5:
            continue
        name, what = cells[1].strip(), cells[3].strip()
        if name:
            rows.append([name, what])
        elif rows:
            rows[-1][1] += " " + what
    return {name: what for name, what in rows}


@pytest.mark.parametrize("family", FAMILIES)
def test_components_shows_each_whole_description(runner: CliRunner, family: str) -> None:
    result = runner.invoke(app, ["components", family])
    assert result.exit_code == 0, result.output
    shown = _descriptions(result.stdout)
    found = components(family)
    assert set(shown) == set(found)
    for name, cls in found.items():
        whole = "".join((cls.__doc__ or "").split())  # wrapping only moves the spaces
        assert "".join(shown[name].split()) == whole, f"{name}: {shown[name]!r}"


# 6. the composition root's docstring


def test_the_composition_root_says_what_it_is() -> None:
    import runtime.app

    doc = runtime.app.__doc__ or ""
    assert doc.strip() != "TODO"
    assert "runtime.app.cli" in doc and "CLI" in doc
    assert "strategies" in doc and "learners" in doc


# 7. the embedded example's run ids


def test_the_embedded_example_gives_each_mode_its_own_run_id() -> None:
    spec = importlib.util.spec_from_file_location("embedded_example", ROOT / "examples" / "embedded.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert set(example.RUN_IDS) == {"scripted", "bundled"}
    assert example.RUN_IDS["scripted"] != example.RUN_IDS["bundled"]


# 8. shipped configs use the current verifier keys


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_use_no_legacy_verifier_keys(path: Path) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    verifiers = data.get("verifiers") or {}
    assert not set(verifiers) & {*_LEGACY, "process_weights"}, f"{path.name}: legacy verifier keys"


def test_verify_backtrack_config_keeps_its_hints_setting() -> None:
    config = load_config(ROOT / "configs" / "search_verify_backtrack.yaml")
    assert config.verifiers.process is not None
    assert config.verifiers.process.name == "tiny_rule" and config.verifiers.process.hints is False
