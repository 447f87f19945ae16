"""The ``searchlearn`` command: run a config, show and export a stored run; bad input
exits 2 with one line and no traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runtime.app.cli import app
from runtime.core.errors import ConfigError
from runtime.core.types import episode_from_json
from runtime.scheduling.store import EpisodeStore

RUN_ID = "cli-test"  # tests/data/scripted.yaml


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "runs" / "store.db"


def test_run_prints_a_summary_and_stores_every_episode(runner: CliRunner, data_dir: Path, store: Path) -> None:
    result = runner.invoke(app, ["run", str(data_dir / "scripted.yaml"), "--set", f"store.path={store}"])
    assert result.exit_code == 0, result.output
    assert f"run {RUN_ID}" in result.stdout
    for row in ("episodes", "failed", "accuracy", "completion tokens"):
        assert row in result.stdout
    assert re.search(r"│ episodes\s+│\s+6 │", result.stdout)
    with EpisodeStore(store) as st:
        assert st.count(RUN_ID) == 6
        assert all(ep.final_answer == "42" and ep.status == "ok" for ep in st.episodes(RUN_ID))

    # Running again resumes: everything is skipped, nothing is added.
    again = runner.invoke(app, ["run", str(data_dir / "scripted.yaml"), "--set", f"store.path={store}"])
    assert again.exit_code == 0, again.output
    assert "skipped (already stored)" in again.stdout
    with EpisodeStore(store) as st:
        assert st.count(RUN_ID) == 6


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("policy: {kind: scripted}\nstrategy: {name: nope}\n", "strategy"),
        ("policy: {kind: scripted}\nscheduler: {concurrency: -1}\n", "scheduler.concurrency"),
        ("policy: {kind: scripted}\nmystery: 1\n", "mystery"),
        ("policy: {kind: scripted}\ntasks: {source: reasoning_gym, name: not_a_dataset}\n", "tasks.name"),
        ("policy: [kind\n", "not valid YAML"),
    ],
)
def test_bad_config_exits_2_with_one_line(
    runner: CliRunner, tmp_path: Path, store: Path, yaml_text: str, needle: str
) -> None:
    path = tmp_path / "[odd]" / "bad.yaml"  # brackets: the message is not rich markup
    path.parent.mkdir()
    path.write_text(yaml_text, encoding="utf-8")
    result = runner.invoke(app, ["run", str(path), "--set", f"store.path={store}"])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and needle in lines[0]
    assert not store.exists()  # nothing was started


def test_missing_api_key_exits_2(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    path = tmp_path / "hosted.yaml"
    path.write_text("policy: {kind: openai, model: gpt-4o-mini}\n", encoding="utf-8")
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert "OPENAI_API_KEY" in result.stderr and "Traceback" not in result.output


def test_missing_config_file_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_show_and_export(runner: CliRunner, data_dir: Path, store: Path, tmp_path: Path) -> None:
    assert runner.invoke(app, ["run", str(data_dir / "scripted.yaml"), "--set", f"store.path={store}"]).exit_code == 0

    shown = runner.invoke(app, ["show", RUN_ID, "--store", str(store)])
    assert shown.exit_code == 0, shown.output
    assert f"run {RUN_ID}" in shown.stdout and re.search(r"│ episodes\s+│\s+6 │", shown.stdout)

    out = tmp_path / "export.jsonl"
    exported = runner.invoke(app, ["export", RUN_ID, "--store", str(store), "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    assert f"wrote 6 episodes to {out}" in exported.stderr
    episodes = [episode_from_json(line) for line in out.read_text(encoding="utf-8").splitlines()]
    with EpisodeStore(store) as st:
        assert episodes == list(st.episodes(RUN_ID))
    assert sorted(ep.task.id for ep in episodes) == sorted(f"tiny-0-{i}" for i in range(6))
    assert all(ep.run_id == RUN_ID and ep.nodes[0].id == 0 and ep.chosen_path for ep in episodes)


def test_show_and_export_unknown_run_or_store(runner: CliRunner, data_dir: Path, store: Path, tmp_path: Path) -> None:
    missing = runner.invoke(app, ["show", "x", "--store", str(tmp_path / "none.db")])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    assert not (tmp_path / "none.db").exists()

    assert runner.invoke(app, ["run", str(data_dir / "scripted.yaml"), "--set", f"store.path={store}"]).exit_code == 0
    unknown = runner.invoke(app, ["show", "other-run", "--store", str(store)])
    assert unknown.exit_code == 2
    assert "other-run" in unknown.stderr and RUN_ID in unknown.stderr  # lists the runs that are there
    nothing = runner.invoke(app, ["export", "other-run", "--store", str(store), "--out", str(tmp_path / "o.jsonl")])
    assert nothing.exit_code == 2 and not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("command", [[], ["run"], ["show"], ["export"]])
def test_help(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout
    if command:
        assert command[0] in result.stdout


def test_no_arguments_shows_help(runner: CliRunner) -> None:
    result = runner.invoke(app, [])
    assert "Usage:" in result.output
    for command in ("run", "show", "export"):
        assert command in result.output


def test_console_script_help() -> None:
    script = Path(sys.executable).parent / "searchlearn"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    for command in ("run", "show", "export"):
        assert command in result.stdout


def test_a_config_error_inside_the_loops_task_group_is_reported_on_one_line() -> None:
    from runtime.app.cli import EXIT_CONFIG, _user_error

    error = ConfigError("learner checkpoint x does not belong to run 'r'")
    assert _user_error(ExceptionGroup("loop", [ExceptionGroup("inner", [error])])) == (error, EXIT_CONFIG)
    assert _user_error(ExceptionGroup("loop", [error, RuntimeError("boom")])) is None


def test_components_lists_every_family_and_refuses_an_unknown_one(runner: CliRunner) -> None:
    result = runner.invoke(app, ["components"])
    assert result.exit_code == 0, result.output
    for name in ("best_of_n", "verify_backtrack", "tiny_rule", "exact", "reasoning_gym", "expert_iteration", "distill"):
        assert name in result.stdout
    assert result.stdout.startswith("policies") and "scripted" in result.stdout  # policies are a family too
    only = runner.invoke(app, ["components", "strategies"])
    assert only.exit_code == 0 and "mcts" in only.stdout and "tiny_rule" not in only.stdout
    bad = runner.invoke(app, ["components", "models"])
    assert bad.exit_code == 2 and "allowed: policies, strategies" in bad.output


def test_a_learning_run_that_reaches_its_configured_limit_exits_0(tmp_path: Path, runner: CliRunner) -> None:
    """The learner's max_versions (or max_minutes) is what the config asked: exit 0, and
    the stop is said as a limit, not as a budget spent."""
    config = Path(__file__).parent.parent / "configs" / "expert_iteration.yaml"
    overrides = [
        f"store.path={tmp_path / 'runs.db'}", "learner.max_versions=1", "learner.eval=null", "tasks.size=400",
        "learner.batch_examples=4", "learner.idle_replay=false", "scheduler.concurrency=16",
        "policy.max_concurrency=16", "learner.threads=1", "policy.threads=1",
    ]  # fmt: skip
    args = ["run", str(config), "--no-progress"]
    for o in overrides:
        args += ["--set", o]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "stopped at its configured limit: learner.max_versions reached (1)" in result.output


def test_the_held_out_table_prints_optimizer_steps_as_a_count_and_accuracies_as_percentages() -> None:
    from rich.console import Console

    from runtime.app.cli import curve_table

    curve = [
        {"version": 0, "steps": 0, "episodes": 0, "wall_time": 2.0, "greedy_pass@1": 0.07},
        {"version": 2, "steps": 40, "episodes": 55, "wall_time": 263.0, "greedy_pass@1": 0.125},
        {"version": 3, "episodes": 60, "wall_time": 300.0, "greedy_pass@1": None},  # stored before steps existed
    ]
    console = Console(width=200, record=True)
    console.print(curve_table("held-out evaluation", curve))
    lines = console.export_text().splitlines()
    (header,) = [[c.strip() for c in line.strip("┃ ").split("┃")] for line in lines if "┃" in line]
    cells = [[c.strip() for c in line.strip("│ ").split("│")] for line in lines if "│" in line]
    assert header == ["version", "steps", "episodes", "wall time", "greedy_pass@1"]
    assert cells[1] == ["2", "40", "55", "263 s", "12.5 %"]
    assert cells[2] == ["3", "-", "60", "300 s", "-"]
