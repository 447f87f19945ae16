"""Run-level budgets are the run's, not a process's: compute_optimal's global token
budget continues from what a resumed run's store holds and is one budget for every Ray
rollout worker, and the Ray driver's ``budget_usd`` counts the spend still in flight on
its workers, so admission stops before they overspend it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from runtime.app.build import build_runtime
from runtime.app.config import RunConfig
from runtime.core.types import Task
from runtime.policy.base import GenerationRequest
from runtime.policy.scripted import ScriptedPolicy
from runtime.scheduling.scheduler import Runtime, SchedulerSettings
from runtime.scheduling.store import EpisodeStore
from strategies.compute_optimal import ComputeOptimal

pytestmark = pytest.mark.timeout(300)

LIMIT = 100  # generated tokens of the whole run
DISAGREE = ["Answer: 1", "Answer: 2", "Answer: 3", "Answer: 4"]  # 2 tokens each: every probe differs


def disagree(request: GenerationRequest, i: int) -> str:
    return DISAGREE[i % 4]


def compute_optimal(limit: int, hard_budget: int = 8) -> ComputeOptimal:
    # hard tasks (four probes, four answers) get best-of-N; no verifier needed
    return ComputeOptimal(probes=4, hard_strategy="best_of_n", hard_budget=hard_budget, global_token_budget=limit)


def allocations(episodes: list[Any]) -> list[int]:
    return [ep.nodes[0].meta["allocation"]["budget"] for ep in episodes]


def test_a_resumed_run_continues_the_global_token_budget_from_the_store(tmp_path: Path) -> None:
    """Each episode: 4 probes (8 tokens), then 8 samples (16 tokens) while the budget
    holds them. The first run spends 96 of 100; the resumed run, a new strategy object
    in a new Runtime, has nothing left to allocate beyond its probes."""
    db = tmp_path / "store.db"
    tasks = [Task(id=f"t{i}", prompt="q") for i in range(6)]

    async def run(batch: list[Task]) -> tuple[list[Any], ComputeOptimal]:
        strategy = compute_optimal(LIMIT)
        settings = SchedulerSettings(concurrency=1)
        async with Runtime(ScriptedPolicy(disagree), strategy, settings=settings, store=db, run_id="co") as rt:
            return [ep async for ep in rt.stream(batch)], strategy

    first, strategy = anyio.run(run, tasks[:4])
    assert allocations(first) == [8, 8, 8, 8]
    assert strategy.pool.spent == sum(ep.usage.completion_tokens for ep in first) == 96  # type: ignore[union-attr]
    resumed, strategy = anyio.run(run, tasks[4:])
    assert [ep.task.id for ep in resumed] == ["t4", "t5"]
    assert allocations(resumed) == [0, 0], "the resumed run started its budget from zero"
    assert strategy.pool.spent == 96 + 16  # type: ignore[union-attr]  # the stored spend, then two probe rounds
    with EpisodeStore(db) as store:
        assert store.summary("co")["completion_tokens"] == 96 + 16


# -- on Ray rollout workers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray() -> Any:
    """A local Ray instance on loopback, started as tests/test_cluster.py starts its own."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'searchlearn[ray]')")
    from runtime.app.cluster import _loopback_only

    with _loopback_only():
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()


def cluster_config(tmp_path: Path, data: dict[str, Any]) -> RunConfig:
    base: dict[str, Any] = {
        "run_id": "budget",
        "tasks": {"source": "tiny", "size": 16, "steps": [1], "seed": 3},
        "store": {"path": str(tmp_path / "store.db")},
        "cluster": {"workers": 2, "cpus_per_worker": 0, "chunk": 2, "in_flight": 4, "concurrency": 2},
    }
    return RunConfig.model_validate(base | data)


async def run_all(config: RunConfig) -> tuple[list[Any], Any]:
    rt = build_runtime(config)
    async with rt:
        episodes = [ep async for ep in rt.stream(config.tasks.build())]
    return episodes, rt


def test_two_workers_share_one_global_token_budget_and_a_resume_continues_it(local_ray: Any, tmp_path: Path) -> None:
    """Every episode asks for 16 samples (32 tokens) after 8 tokens of probes; the run
    may generate 200. Two workers each holding the whole budget allocated ~320."""
    limit = 200
    strategy = {"name": "compute_optimal", "probes": 4, "hard_strategy": "best_of_n", "hard_budget": 16}
    data = {
        "policy": {"kind": "scripted", "script": DISAGREE, "latency": 0.01},
        "strategy": strategy | {"global_token_budget": limit},
    }
    config = cluster_config(tmp_path, data)
    episodes, rt = anyio.run(run_all, config)
    assert len(episodes) == 16 and all(ep.status == "ok" for ep in episodes), [ep.errors for ep in episodes]
    allocated = [ep.usage.completion_tokens - 8 for ep in episodes]
    assert allocated == [2 * b for b in allocations(episodes)]  # settled to what each allocation used
    assert sum(b > 0 for b in allocations(episodes)) >= 3, allocations(episodes)
    assert sum(allocated) <= limit, f"the workers allocated {sum(allocated)} tokens of a {limit}-token budget"
    spent = sum(ep.usage.completion_tokens for ep in episodes)
    assert spent >= limit - 2  # the budget was used up (to less than one sample)
    # Resumed with eight more tasks: the driver's account starts from the stored spend.
    more = cluster_config(tmp_path, data | {"tasks": {"source": "tiny", "size": 24, "steps": [1], "seed": 3}})
    rest, rt = anyio.run(run_all, more)
    assert len(rest) == 8 and rt.stats.skipped == 16
    assert allocations(rest) == [0] * 8, "the resumed run's budget started from zero"


def test_the_drivers_run_budget_counts_spend_in_flight_on_the_workers(local_ray: Any, tmp_path: Path) -> None:
    """$1 per episode (one priced call of 0.1 s), a $20 run budget, two workers running
    two episodes each with chunks of 8 handed out: counting only the episodes that came
    back, the driver handed out 32 before it saw $20; counting the workers' spend as it
    happens, at most the four episodes in flight run past the budget."""
    from fakeserver import serve

    with serve(latency=0.1, text="Answer: 42") as url:
        data = {
            "policy": {"kind": "openai", "model": "fake", "base_url": url, "price": {"input": 0, "output": 5e5}},
            "tasks": {"source": "tiny", "size": 60, "steps": [1], "seed": 3},
            "scheduler": {"budget_usd": 20.0},
            "cluster": {"workers": 2, "cpus_per_worker": 0, "chunk": 8, "in_flight": 8, "concurrency": 2},
        }
        config = cluster_config(tmp_path, data)
        episodes, rt = anyio.run(run_all, config)
    assert episodes and all(ep.status == "ok" for ep in episodes), [ep.errors for ep in episodes[:3]]
    assert all(ep.usage.cost == pytest.approx(1.0) for ep in episodes), {ep.usage.cost for ep in episodes}
    with EpisodeStore(config.store.path) as store:
        spent = store.summary(config.run_id)["cost"]
    assert rt.stop_reason is not None and rt.stop_reason.startswith("run budget spent")
    assert 20.0 <= spent <= 20.0 + 4 + 1, f"spent ${spent} of a $20 budget ({len(episodes)} episodes)"
