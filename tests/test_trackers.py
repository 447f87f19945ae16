"""The loop's metrics reach TensorBoard and wandb (offline): a few PPO updates through
the real loop, then the tracker's own files are read back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from test_learner_kinds import SAMPLING, Publish, solver_runtime, tasks
from test_policy_gradient import tiny_model
from transformers import AutoTokenizer

from learners import LoopSettings, OnlineLoop
from learners.ppo import PPO
from runtime.core.errors import ConfigError
from runtime.scheduling.store import EpisodeStore
from runtime.tiny.policy_format import BUNDLED_POLICY

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(BUNDLED_POLICY)


class FakeEvaluator:
    """Scores a version as version / 10 (the curve's points, without an engine)."""

    async def evaluate(self, weights: dict[str, Any], version: int) -> dict[str, float]:
        return {"greedy_pass@1": version / 10}

    async def aclose(self) -> None:
        return None


async def ppo_run(tokenizer: Any, store: EpisodeStore, report_to: list[str]) -> OnlineLoop:
    """8 episodes, 16 rollouts: two batches of two PPO mini-batch steps, a version each."""
    spec = PPO(batch_examples=8, mini_batches=2, lr=1e-2, kl_coef=0.1, entropy_coef=0.01, report_to=report_to)
    learner = spec.build_learner(tiny_model(tokenizer), tokenizer, SAMPLING)
    rt = solver_runtime(store, run_id="tracked")
    loop = OnlineLoop(
        rt, learner, spec.build_converter("\n"), publish=Publish(rt.policy), evaluator=FakeEvaluator(), settings=spec,  # type: ignore[arg-type]
    )  # fmt: skip
    async with rt:
        await loop.run(tasks(8))
    return loop


async def test_tensorboard_gets_every_steps_scalars_and_the_curve(tokenizer: Any, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = EpisodeStore(tmp_path / "s.db")
    loop = await ppo_run(tokenizer, store, ["tensorboard"])
    store.close()
    directory = tmp_path / "tracked" / "tb"  # the default: beside the store, under the run id
    assert loop.logging_dir == directory and list(directory.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(directory))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    loss = events.Scalars("learner/loss")
    # one point per learner update, at its optimizer step (two mini-batch steps an update)
    assert [e.step for e in loss] == [2, 4] and loop.stats.steps == 4
    assert loss[-1].value == pytest.approx(loop.stats.last_loss)
    learner_tags = ("kl", "entropy", "clip_fraction", "value_loss", "lr")
    run_tags = ("reward", "solved", "staleness", "examples_per_second", "learner_utilisation")
    assert {f"learner/{t}" for t in learner_tags} | {f"run/{t}" for t in run_tags} <= tags
    # the episodes' reward: best-of-2 by outcome keeps the right one of each episode's two
    assert [e.value for e in events.Scalars("run/reward")] == [1.0, 1.0]
    assert [e.value for e in events.Scalars("run/solved")] == [1.0, 1.0]
    assert max(e.value for e in events.Scalars("learner/clip_fraction")) > 0  # the second mini-batch clipped
    # the curve: the start (version 0, step 0) and the end (version 2, step 4)
    curve = events.Scalars("eval/greedy_pass@1")
    assert [(e.step, round(e.value, 3)) for e in curve] == [(0, 0.0), (4, 0.2)]


def wandb_history(run_file: Path) -> list[dict[str, str]]:
    """The history rows of an offline run's ``.wandb`` file (a log of 32 KiB blocks:
    records of checksum, length, type, then a serialised ``Record``)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pending, rows = run_file.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
    return rows


async def test_wandb_runs_offline_and_records_every_step(
    tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb", reason="wandb is not installed (pip install wandb)")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # unset: the tracker runs offline
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    store = EpisodeStore(tmp_path / "s.db")
    loop = await ppo_run(tokenizer, store, ["wandb"])
    store.close()
    (run_file,) = (tmp_path / "tracked" / "tb" / "wandb").glob("offline-run-*/run-*.wandb")
    rows = wandb_history(run_file)
    steps = [int(r["step"]) for r in rows if "learner/loss" in r]
    assert steps == [2, 4] and loop.stats.steps == 4
    assert all("learner/clip_fraction" in r and "run/reward" in r for r in rows if "learner/loss" in r)
    curve = [(int(r["step"]), r["eval/greedy_pass@1"]) for r in rows if "eval/greedy_pass@1" in r]
    assert curve == [(0, "0"), (4, "0.2")]


def test_a_tracker_whose_package_is_missing_is_refused_naming_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import learners.trackers as trackers

    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda n: None if n == "tensorboard" else real(n))
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        OnlineLoop(solver_runtime(), None, None, settings=LoopSettings(report_to=["tensorboard"]))  # type: ignore[arg-type]


def test_report_to_takes_names_all_or_none_and_refuses_an_unknown_tracker() -> None:
    assert LoopSettings().report_to == []
    assert LoopSettings(report_to="tensorboard").report_to == ["tensorboard"]  # type: ignore[arg-type]
    assert LoopSettings(report_to="all").report_to == ["tensorboard", "wandb"]  # type: ignore[arg-type]
    assert LoopSettings(report_to="none").report_to == []  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="unknown tracker 'mlflow'; allowed: tensorboard, wandb"):
        PPO(report_to=["mlflow"])


def test_the_cli_refuses_a_missing_tracker_package_before_loading_a_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import learners.trackers as trackers
    import runtime.app.learning as learning
    from runtime.app.config import load_config

    learner = ["learner.kind=grpo", "learner.report_to=[wandb]"]
    config = load_config(None, ["policy.kind=local", *learner, f"store.path={tmp_path / 's.db'}"])
    assert config.learner is not None and config.learner.report_to == ["wandb"]
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda n: None if n == "wandb" else real(n))

    def no_model(config: Any) -> Any:
        raise AssertionError("a model was loaded before the tracker check")

    monkeypatch.setattr(learning, "build_learner", no_model)
    with pytest.raises(ConfigError, match=r"learner.report_to: wandb needs the 'wandb' package.*pip install wandb"):
        learning.build_loop(config)


def test_a_tracker_that_fails_mid_run_is_closed_and_the_run_goes_on() -> None:
    from learners import UpdateResult
    from learners.loop import LoopStats
    from learners.trackers import Reporter

    class Broken:
        closed = False

        def log(self, metrics: Any, step: int) -> None:
            raise OSError("disk full")

        def close(self) -> None:
            self.closed = True

    class Kept:
        def __init__(self) -> None:
            self.rows: list[tuple[int, dict[str, float]]] = []

        def log(self, metrics: Any, step: int) -> None:
            self.rows.append((step, dict(metrics)))

        def close(self) -> None:
            return None

    broken, kept = Broken(), Kept()
    reporter = Reporter([broken, kept])
    stats = LoopStats(episodes=4, version=1)
    stats.staleness.update({0: 3, 2: 1})
    reporter.episode(1.0)
    reporter.episode(0.0)
    reporter.step(UpdateResult(1, 0.5, 4, 40, 0.1, 1.0, {"clipped_tokens": 10.0}), stats, step=1)
    reporter.step(UpdateResult(2, 0.4, 4, 40, 0.1, 1.0), stats, step=2)
    assert broken.closed and reporter.trackers == [kept]
    (s1, first), (s2, second) = kept.rows
    assert (s1, s2) == (1, 2) and first["learner/clip_fraction"] == 0.25
    assert first["run/reward"] == 0.5 and first["run/solved"] == 0.5 and first["run/staleness"] == 0.5
    assert "run/reward" not in second and "run/staleness" not in second  # nothing new since the first step
