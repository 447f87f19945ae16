"""Ray rollout workers (``cluster:``) on a local Ray cluster started inside the test, on
loopback: the same config with and without the cluster section, a worker killed mid-run
(nothing lost, nothing stored twice), learning runs publishing versions to every worker,
and no Ray import without the section."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'searchlearn[ray]')")

from runtime.app.build import build_runtime  # noqa: E402
from runtime.app.cluster import ClusterRuntime  # noqa: E402
from runtime.app.config import RunConfig  # noqa: E402
from runtime.policy.backends import LocalBackend  # noqa: E402
from runtime.scheduling.store import EpisodeStore  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Any:
    """One local Ray instance for the module (a ClusterRuntime joins a running one and
    leaves it running); loopback only, no dashboard."""
    from runtime.app.cluster import _loopback_only

    with _loopback_only():  # Ray otherwise swaps 127.0.0.1 for the host's address
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


def scripted_config(
    tmp_path: Path, *, cluster: dict[str, Any] | None, tasks: int = 120, latency: float = 0.01, script: Any = None
) -> RunConfig:
    data: dict[str, Any] = {
        "run_id": "cluster",
        "policy": {"kind": "scripted", "script": script or ["2+2=4", "Answer: 4"], "latency": latency},
        "tasks": {"source": "tiny", "size": tasks, "steps": [1], "seed": 3},
        "strategy": {"name": "chain_of_thought"},
        "scheduler": {"concurrency": 8, "samples_per_task": 2},
        "store": {"path": str(tmp_path / "store.db")},
    }
    if cluster is not None:
        data["cluster"] = cluster
    return RunConfig.model_validate(data)


async def run_all(config: RunConfig, on_episode: Any = None) -> tuple[list[Any], Any]:
    rt = build_runtime(config)
    episodes = []
    async with rt:
        async for episode in rt.stream(config.tasks.build()):
            episodes.append(episode)
            if on_episode is not None:
                await on_episode(rt, len(episodes))
    return episodes, rt


def stored_keys(config: RunConfig) -> Counter[tuple[str, int]]:
    with EpisodeStore(config.store.path) as store:
        return Counter((ep.task.id, ep.sample) for ep in store.episodes(config.run_id))


def test_same_config_with_and_without_the_cluster_section(tmp_path: Path) -> None:
    one_call = ["2+2=4\nAnswer: 4"]  # one text per episode: the same episode whatever the order
    plain = scripted_config(tmp_path / "plain", cluster=None, script=one_call)
    (tmp_path / "plain").mkdir()
    two_workers = {"workers": 2, "cpus_per_worker": 0, "chunk": 4}
    on_ray = scripted_config(tmp_path / "ray", cluster=two_workers, script=one_call)
    (tmp_path / "ray").mkdir()
    plain_episodes, _ = anyio.run(run_all, plain)
    ray_episodes, rt = anyio.run(run_all, on_ray)
    assert isinstance(rt, ClusterRuntime)
    expected = {(t.id, s) for t in plain.tasks.build() for s in range(2)}
    assert {(e.task.id, e.sample) for e in plain_episodes} == expected
    assert sorted((e.task.id, e.sample) for e in ray_episodes) == sorted(expected)
    keys = stored_keys(on_ray)
    assert set(keys) == expected and set(keys.values()) == {1}
    # The same work: the same steps and rewards, episode by episode.
    by_key = {(e.task.id, e.sample): (e.steps, e.reward, e.status) for e in plain_episodes}
    assert all(by_key[(e.task.id, e.sample)] == (e.steps, e.reward, e.status) for e in ray_episodes)
    assert rt.stats.finished == len(expected) and rt.duplicates == 0
    # A rerun of the finished run skips everything: exactly once across runs too.
    again, rt2 = anyio.run(run_all, on_ray)
    assert again == [] and rt2.stats.skipped == len(expected)


def test_a_killed_worker_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    config = scripted_config(
        tmp_path,
        cluster={"workers": 2, "cpus_per_worker": 0, "chunk": 4, "in_flight": 16},
        tasks=200,
        latency=0.02,
    )
    killed: list[int] = []

    async def kill_one(rt: ClusterRuntime, seen: int) -> None:
        if seen == 60 and not killed:
            worker = rt.live_workers()[0]
            pid = (await worker.statistics.remote())["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    episodes, rt = anyio.run(run_all, config, kill_one)
    expected = {(t.id, s) for t in config.tasks.build() for s in range(2)}
    assert killed, "the worker was never killed"
    keys = stored_keys(config)
    assert set(keys) == expected, f"lost {len(expected - set(keys))}"
    assert max(keys.values()) == 1
    assert Counter((e.task.id, e.sample) for e in episodes) == Counter(dict.fromkeys(expected, 1))
    assert rt.reissued > 0 and rt.replaced == 1 and rt.worker_deaths
    assert all(e.status == "ok" for e in episodes)


def test_every_worker_dead_stops_the_run_and_keeps_what_was_stored(tmp_path: Path) -> None:
    config = scripted_config(
        tmp_path,
        cluster={"workers": 1, "cpus_per_worker": 0, "chunk": 4, "replace_dead": False},
        tasks=200,
        latency=0.02,
    )

    async def kill(rt: ClusterRuntime, seen: int) -> None:
        if seen == 20:
            pid = (await rt.live_workers()[0].statistics.remote())["pid"]
            os.kill(pid, signal.SIGKILL)

    episodes, rt = anyio.run(run_all, config, kill)
    assert rt.stop_reason is not None and "every rollout worker died" in rt.stop_reason
    keys = stored_keys(config)
    assert len(keys) == len(episodes) and max(keys.values()) == 1
    assert 20 <= len(episodes) < 400
    # Resuming without the kill finishes the rest, each pair once.
    rest, _ = anyio.run(run_all, config)
    keys = stored_keys(config)
    assert len(keys) == 400 and max(keys.values()) == 1 and len(rest) == 400 - len(episodes)


def learning_config(tmp_path: Path, kind: str) -> RunConfig:
    learner: dict[str, Any] = {
        "kind": kind,
        "mode": "online",
        "batch_examples": 16,
        "buffer_episodes": 8,
        "max_versions": 3,
        "max_staleness": 4,
        "checkpoint": str(tmp_path / "learner.pt"),
    }
    strategy: dict[str, Any] = {"name": "chain_of_thought"}
    sampling: dict[str, Any] = {"temperature": 1.0, "max_tokens": 64}
    if kind == "grpo":  # groups: the leaves of one best-of-4 episode
        learner |= {"groups": "leaves", "lr": 1e-5}
        strategy = {"name": "best_of_n", "n": 4}
        sampling["logprobs"] = True
    return RunConfig.model_validate(
        {
            "run_id": f"learn-{kind}",
            "policy": {"kind": "local", "path": "bundled-weak", "max_concurrency": 16},
            "tasks": {"source": "tiny", "size": 2000, "steps": [1, 2], "seed": 7},
            "strategy": strategy,
            "sampling": sampling,
            "verifiers": {"outcome": "exact", "answer_patterns": ["answer_line"]},
            "scheduler": {"concurrency": 16},
            "store": {"path": str(tmp_path / "store.db")},
            "cluster": {"workers": 2, "cpus_per_worker": 0, "chunk": 4},
            "learner": learner,
        }
    )


@pytest.mark.parametrize("kind", ["expert_iteration", "grpo"])
def test_learning_on_two_workers_publishes_every_version_to_both(tmp_path: Path, kind: str) -> None:
    from runtime.app.learning import build_loop

    config = learning_config(tmp_path, kind)

    async def main() -> tuple[Any, list[dict[str, Any]]]:
        loop = build_loop(config)
        async with loop:
            stats = await loop.run(config.tasks.build())
            workers = loop.runtime.live_workers()  # type: ignore[attr-defined]
            seen = [await w.statistics.remote() for w in workers]
            return stats, seen

    stats, workers = anyio.run(main)
    assert stats.version >= 3 and stats.steps >= 3
    assert len(workers) == 2 and len({w["pid"] for w in workers}) == 2
    assert all(w["policy_version"] == stats.version for w in workers), workers
    with EpisodeStore(config.store.path) as store:
        episodes = list(store.episodes(config.run_id))
    keys = Counter((e.task.id, e.sample) for e in episodes)
    assert max(keys.values()) == 1
    # Every episode records the versions it was sampled under (which ones depends on how
    # many finished between two steps), and the staleness bound saw them.
    assert episodes and all(e.policy_versions for e in episodes)
    assert all(0 <= v <= stats.version for e in episodes for v in e.policy_versions)
    assert sum(stats.staleness.values()) > 0


def test_without_a_cluster_section_nothing_imports_ray(tmp_path: Path) -> None:
    code = (
        "import sys, anyio\n"
        "from runtime.app.config import RunConfig\n"
        "from runtime.app.build import build_runtime\n"
        f"cfg = RunConfig.model_validate({{'policy': {{'kind': 'scripted'}}, 'tasks': {{'size': 5}},"
        f" 'store': {{'path': {str(tmp_path / 's.db')!r}}}}})\n"
        "async def main():\n"
        "    async with build_runtime(cfg) as rt:\n"
        "        await rt.run(cfg.tasks.build())\n"
        "anyio.run(main)\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_a_worker_that_cannot_start_is_one_clear_error(tmp_path: Path) -> None:
    from runtime.core.errors import ConfigError

    # A checkpoint directory whose config.json is not JSON: the driver's up-front check
    # passes (the file is there), the worker dies loading it in its constructor.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    config = scripted_config(tmp_path, cluster={"workers": 1, "cpus_per_worker": 0})
    config.policy = LocalBackend(path=str(broken))

    async def main() -> None:
        async with ClusterRuntime(config):
            pass

    with pytest.raises(ConfigError, match="rollout worker failed to start"):
        anyio.run(main)
    with EpisodeStore(config.store.path) as store:  # the lease was released
        store.acquire_run(config.run_id)
