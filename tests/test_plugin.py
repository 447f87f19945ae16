"""The worked plug-in (examples/plugin): a strategy and a verifier from outside the
package, selected from YAML through entry points, with no file under runtime/ changed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runtime.app.config import load_config
from runtime.core.errors import ConfigError
from runtime.core.types import Task
from runtime.scheduling.store import EpisodeStore

ROOT = Path(__file__).parents[1]
PLUGIN = ROOT / "examples" / "plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plug-in installed (a real wheel build, its entry points in a dist-info) into a
    directory of its own, so the test venv is left as it was."""
    target = tmp_path_factory.mktemp("plugin-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target),
         str(PLUGIN)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert any(p.name.endswith(".dist-info") for p in target.iterdir())
    return target


def test_plugin_files_are_small() -> None:
    lines = {p.name: len(p.read_text().splitlines()) for p in (PLUGIN / "searchlearn_plugin_example").glob("*.py")}
    assert lines["early_consensus.py"] <= 50 and lines["numeric_tolerance.py"] <= 30, lines


def test_the_plugin_runs_from_yaml_through_its_entry_points(installed: Path, tmp_path: Path) -> None:
    store = tmp_path / "plugin.db"
    env = {**os.environ, "PYTHONPATH": str(installed)}
    cli = [sys.executable, "-c", "from runtime.app.cli import main; main()"]
    result = subprocess.run(
        [*cli, "run", str(PLUGIN / "config.yaml"), "--set", f"store.path={store}", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    with EpisodeStore(store) as st:
        episodes = list(st.episodes("plugin-example"))
    assert len(episodes) == 40 and all(ep.status == "ok" for ep in episodes)
    # The plug-in's verifier set the rewards, and the bundled policy mostly agrees with itself.
    assert all("outcome:numeric_tolerance" in ep.nodes[ep.chosen_path[-1]].scores for ep in episodes)
    assert sum(ep.reward == 1.0 for ep in episodes) >= 20
    # Early consensus stopped before its cap where two samples agreed at once.
    samples = [ep.nodes[0].meta["samples"] for ep in episodes]
    assert min(samples) == 2 and max(samples) <= 8


def test_the_plugin_by_module_reference_without_installing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(PLUGIN))
    data = yaml.safe_load((PLUGIN / "config.yaml").read_text())
    data["strategy"]["name"] = "searchlearn_plugin_example.early_consensus:EarlyConsensus"
    data["verifiers"]["outcome"]["name"] = "searchlearn_plugin_example.numeric_tolerance:NumericTolerance"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    assert config.strategy.name == "early_consensus" and config.verifiers.outcome is not None
    outcome = config.verifiers.outcome
    assert outcome.name == "numeric_tolerance" and outcome.absolute == 0.5  # type: ignore[attr-defined]
    data["strategy"]["k"] = 0
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="strategy.k"):
        load_config(path)


@pytest.mark.anyio
async def test_numeric_tolerance_scores() -> None:
    sys.path.insert(0, str(PLUGIN))
    try:
        from searchlearn_plugin_example import NumericTolerance
    finally:
        sys.path.remove(str(PLUGIN))
    task = Task(id="t", answer="2.5")
    assert (await NumericTolerance(absolute=0.1).score(task, "2.55", "")).value == 1.0
    assert (await NumericTolerance().score(task, "2.6", "")).value == 0.0
    assert (await NumericTolerance().score(task, "two", "")).value == 0.0
