"""Thread placement: every torch consumer of a run gets an explicit share of the cores
the process may use, so together they never hold more OpenMP threads than cores."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from runtime.app.build import build_policy, torch_consumers
from runtime.app.config import load_config
from runtime.app.learning import build_learner
from runtime.core.threads import available_cpus, passive_openmp, thread_share

CONFIGS = Path(__file__).parent.parent / "configs"


def test_shares_never_exceed_the_cores_and_are_at_least_one() -> None:
    assert thread_share(1, cpus=2) == 2
    assert thread_share(2, cpus=2) == 1
    assert thread_share(3, cpus=2) == 1
    assert thread_share(2, cpus=16) == 8
    assert available_cpus() == len(os.sched_getaffinity(0))


def test_consumers_of_a_run_are_counted() -> None:
    assert torch_consumers(load_config(CONFIGS / "quickstart.yaml")) == 1
    assert torch_consumers(load_config(CONFIGS / "scripted.yaml")) == 1  # at least one
    # engine + learner + evaluator
    assert torch_consumers(load_config(CONFIGS / "expert_iteration.yaml")) == 3
    # in sync mode the engine and the learner take turns: one share between them
    sync = ["learner.mode=sync"]
    assert torch_consumers(load_config(CONFIGS / "expert_iteration.yaml", sync)) == 2
    assert torch_consumers(load_config(CONFIGS / "expert_iteration.yaml", [*sync, "learner.eval=null"])) == 1
    with_prm = load_config(CONFIGS / "quickstart.yaml", ["verifiers.process={name: prm, path: bundled}"])
    assert torch_consumers(with_prm) == 2


@pytest.mark.anyio
async def test_the_engine_and_the_learner_split_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    cfg = load_config(CONFIGS / "expert_iteration.yaml")
    policy = build_policy(cfg)
    try:
        assert policy.engine.threads == 2  # type: ignore[attr-defined]
    finally:
        await policy.aclose()
    learner = build_learner(cfg)
    assert learner.settings.threads == 2  # type: ignore[attr-defined]
    pinned = load_config(CONFIGS / "expert_iteration.yaml", ["policy.threads=5", "learner.threads=1"])
    policy = build_policy(pinned)
    try:
        assert policy.engine.threads == 5  # type: ignore[attr-defined]
    finally:
        await policy.aclose()
    assert build_learner(pinned).settings.threads == 1  # type: ignore[attr-defined]


def test_passive_waits_are_set_only_before_torch_and_never_over_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch  # noqa: F401  (imported: too late to change the policy)

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert passive_openmp() is False and "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.delitem(sys.modules, "torch")
    assert passive_openmp() is True and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")
    assert passive_openmp() is False and os.environ["OMP_WAIT_POLICY"] == "active"


@pytest.mark.anyio
async def test_the_engine_takes_the_cores_the_learner_does_not_hold() -> None:
    """The core share changes hands: while the learner holds its thread the engine runs on
    one, once it lets go the engine takes both (re-read between decode steps)."""
    from runtime.core.threads import CoreShare
    from runtime.policy.base import GenerationRequest
    from runtime.policy.local import LocalPolicy

    policy = LocalPolicy.from_path("bundled", threads=1)
    share = CoreShare(cpus=2)
    policy.engine.share = share
    request = GenerationRequest(prompt="Evaluate: 3+4*5", max_tokens=4, temperature=0.0)
    try:
        await policy.generate(request)
        assert policy.engine._threads_now == 2  # nobody else computes: both cores
        with share.hold(1):  # a learner step
            await policy.generate(request)
            assert policy.engine._threads_now == 1 and share.free() == 1
        await policy.generate(request)
        assert policy.engine._threads_now == 2 and share.handovers == 1
    finally:
        await policy.aclose()


def test_a_learning_run_hands_cores_between_engine_learner_and_evaluator(tmp_path: Path) -> None:
    from runtime.app.learning import build_loop

    store = f"store.path={tmp_path / 'runs.db'}"
    config = load_config(CONFIGS / "expert_iteration.yaml", [store])
    loop = build_loop(config)
    try:
        engine = loop.runtime.policy.engine  # type: ignore[attr-defined]
        assert engine.share is not None and loop.learner.share is engine.share  # type: ignore[attr-defined]
        assert loop.evaluator is not None and loop.evaluator.share is engine.share
    finally:
        engine.close()
        loop.evaluator.policy.engine.close()  # type: ignore[attr-defined]
    fixed = build_loop(load_config(CONFIGS / "expert_iteration.yaml", [store, "policy.threads=1"]))
    try:
        assert fixed.runtime.policy.engine.share is None  # type: ignore[attr-defined]
    finally:
        fixed.runtime.policy.engine.close()  # type: ignore[attr-defined]
        fixed.evaluator.policy.engine.close()  # type: ignore[attr-defined]
