"""Benchmark: the Ray path (``cluster:``) against the in-process runtime.

Run: ``python tests/bench/scale.py [--tasks 20000] [--seconds 60] [--no-learning]``.
Prints Markdown tables, configuration first.

1. **Simulated scale-out.** N rollout workers (N = 1, 2, 4, 8) over the scripted policy
   with a fake latency per call (no torch): how many stored, streamed episodes per second
   the driver sustains, and its own CPU (process time over wall time: the event loop,
   decoding, the store writer's thread). The in-process runtime on the same config is
   the reference row. Target (issue 13): the driver sustains >= 5,000 episodes/s.
2. **Cost per episode.** Driver CPU per episode in process and on one worker (latency
   0), and what the Ray path adds: an episode's JSON encode + decode, and the object-store
   publish of one policy version (``ray.put`` of the state dict plus the fan-out call to
   every worker).
3. **Learning.** ``configs/expert_iteration.yaml`` for ``--seconds`` each, in process and
   on 1 and 2 Ray workers (subprocesses, one after the other): episodes/s, optimizer
   steps, versions published and the mean publish time. On this 2-core machine the
   workers and the learner share the same two cores, so little gain is expected.
"""

# ruff: noqa: T201  (a benchmark script: it prints its tables)

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from runtime.app.build import build_runtime  # noqa: E402
from runtime.app.config import RunConfig  # noqa: E402
from runtime.core.types import episode_from_json, episode_to_json  # noqa: E402

LATENCY = 0.05


def scripted(tmp: str, run_id: str, tasks: int, latency: float, cluster: dict[str, Any] | None) -> RunConfig:
    data: dict[str, Any] = {
        "run_id": run_id,
        "policy": {"kind": "scripted", "script": ["2+2=4\nAnswer: 4"], "latency": latency},
        "tasks": {"source": "tiny", "size": tasks, "steps": [1], "seed": 1},
        "strategy": {"name": "best_of_n", "n": 1},
        "scheduler": {"concurrency": 1024, "buffer": 4096, "episode_timeout": None},
        "store": {"path": f"{tmp}/{run_id}.db"},
    }
    if cluster is not None:
        data["cluster"] = {"cpus_per_worker": 0, "chunk": 256, "in_flight": 2048, "concurrency": 1024, **cluster}
    return RunConfig.model_validate(data)


async def measure(config: RunConfig) -> dict[str, Any]:
    rt = build_runtime(config)
    tasks = list(config.tasks.build())
    async with rt:
        wall, cpu = time.perf_counter(), time.process_time()
        count = 0
        async for _ in rt.stream(tasks):
            count += 1
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await rt.policy.aclose()
    return {"episodes": count, "wall": wall, "cpu": cpu, "rate": count / wall, "stats": rt.statistics()}


def scale_out(tasks: int, counts: list[int]) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [0, *counts]:
            cluster = None if n == 0 else {"workers": n}
            row = anyio.run(measure, scripted(tmp, f"scale-{n}", tasks, LATENCY, cluster))
            row["workers"] = n
            rows.append(row)
            print(f"  measured {n or 'in-process'}: {row['rate']:,.0f} episodes/s", file=sys.stderr)
    return rows


def cost_per_episode(tasks: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        local = anyio.run(measure, scripted(tmp, "cost-local", tasks, 0.0, None))
        remote = anyio.run(measure, scripted(tmp, "cost-ray", tasks, 0.0, {"workers": 1}))
    return {"local": local, "ray": remote}


def serialization(repeat: int = 2000) -> dict[str, float]:
    """Encode + decode of one scripted episode, and of an expert-iteration episode of
    the tiny domain (a verify-and-backtrack tree with token ids and logprobs)."""
    from runtime.core.types import Episode, Node, Task

    small = Episode(run_id="r", task=Task(id="t", prompt="2+2?", answer="4"))
    small.nodes = [Node(id=0, parent=None, depth=0), Node(id=1, parent=0, depth=1, text="2+2=4\nAnswer: 4")]
    small.nodes[0].children = [1]
    tree = Episode(run_id="r", task=Task(id="t", prompt="(3+4)*2-5=?", answer="9"))
    tree.nodes = [Node(id=0, parent=None, depth=0)]
    for i in range(1, 25):  # ~24 steps explored, 12 tokens each, ids and logprobs
        tree.nodes.append(
            Node(id=i, parent=i - 1, depth=i, text="7*2=14 ok", token_ids=list(range(12)), logprobs=[-0.1] * 12)
        )
        tree.nodes[i - 1].children = [i]
    out = {}
    for name, episode in [("scripted", small), ("tree", tree)]:
        text = episode_to_json(episode)
        started = time.perf_counter()
        for _ in range(repeat):
            episode_from_json(episode_to_json(episode))
        out[name] = (time.perf_counter() - started) / repeat * 1e6
        out[f"{name}_bytes"] = len(text)
    return out


def publish_cost(workers: int = 2, repeat: int = 5) -> dict[str, float]:
    """ray.put of the bundled-weak policy's state dict and the swap call to every worker."""
    import ray
    import torch
    from transformers import AutoModelForCausalLM

    from runtime.policy.checkpoints import resolve_checkpoint

    model = AutoModelForCausalLM.from_pretrained(resolve_checkpoint("bundled-weak"), dtype=torch.float32)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    size = sum(v.numel() * v.element_size() for v in state.values())

    @ray.remote(num_cpus=0)
    class Sink:
        def swap(self, state: dict[str, Any], version: int) -> int:
            return version

    sinks = [Sink.remote() for _ in range(workers)]
    ray.get([s.swap.remote({}, 0) for s in sinks])
    put, fan = [], []
    for version in range(1, repeat + 1):
        started = time.perf_counter()
        ref = ray.put(state)
        put.append(time.perf_counter() - started)
        ray.get([s.swap.remote(ref, version) for s in sinks])
        fan.append(time.perf_counter() - started)
    for s in sinks:
        ray.kill(s)
    return {"bytes": size, "put_ms": 1e3 * min(put), "delivered_ms": 1e3 * min(fan), "workers": workers}


CHILD = r"""
import json, sys, tempfile, time
from runtime.core.threads import passive_openmp
passive_openmp()
import anyio
from runtime.app.config import load_config
from runtime.app.learning import build_loop

seconds, workers = float(sys.argv[1]), int(sys.argv[2])
with tempfile.TemporaryDirectory() as tmp:
    sets = [f"store.path={tmp}/s.db", "run_id=scale-learn", f"learner.max_minutes={seconds / 60}",
            "learner.eval=null", f"learner.checkpoint={tmp}/learner.pt"]
    if workers:
        sets += [f"cluster.workers={workers}", "cluster.cpus_per_worker=0"]
    cfg = load_config("configs/expert_iteration.yaml", sets)
    loop = build_loop(cfg)

    async def main():
        async with loop:
            started = time.monotonic()
            stats = await loop.run(cfg.tasks.build())
            wall = time.monotonic() - started
            publish = list(getattr(loop.runtime.policy, "publish_seconds", []))
        return stats, wall, publish

    stats, wall, publish = anyio.run(main)
    mean_ms = 1e3 * sum(publish) / len(publish) if publish else None
    print(json.dumps({"episodes": stats.episodes, "wall": wall, "steps": stats.steps, "version": stats.version,
                      "learner": stats.learner_seconds / wall, "publish_ms": mean_ms}))
"""


def learning(seconds: float) -> list[dict[str, Any]]:
    rows = []
    for workers in (0, 1, 2):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(seconds), str(workers)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=seconds + 300,
        )
        line = next((x for x in reversed(out.stdout.splitlines()) if x.startswith("{")), None)
        if line is None:
            raise SystemExit(f"learning row {workers} failed:\n{out.stderr[-3000:]}")
        row = json.loads(line)
        row["workers"] = workers
        rows.append(row)
        print(f"  learned {workers or 'in-process'}: {row['episodes'] / row['wall']:.2f} episodes/s", file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20000, help="episodes per scale-out row")
    parser.add_argument("--workers", default="1,2,4,8", help="worker counts of the scale-out rows")
    parser.add_argument("--seconds", type=float, default=60, help="wall time of each learning row")
    parser.add_argument("--no-learning", action="store_true", help="skip the learning rows")
    args = parser.parse_args()
    import ray

    load = os.getloadavg()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    scale = scale_out(args.tasks, [int(x) for x in args.workers.split(",")])
    cost = cost_per_episode(min(args.tasks, 5000))
    ser = serialization()
    pub = publish_cost()
    ray.shutdown()
    learn = [] if args.no_learning else learning(args.seconds)

    print("| setting | value |\n|---|---|")
    print(f"| machine | {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()} |")
    print(f"| ray | {ray.__version__}, local cluster on loopback, started by this script |")
    print(f"| load average at start | {', '.join(f'{x:.2f}' for x in load)} |")
    print(
        f"| scale-out config | scripted policy, {LATENCY * 1e3:.0f} ms per call, one call per episode, "
        f"{args.tasks:,} episodes per row, 1,024 in flight per worker, chunks of 256 |"
    )
    print("| else running | nothing else of this benchmark; each row after the other |\n")

    base = scale[0]["rate"]
    one = next((r["rate"] for r in scale if r["workers"] == 1), base)
    print("### Simulated scale-out (stored, streamed episodes)\n")
    print("| workers | episodes/s | vs in-process | vs 1 worker | driver CPU | reissued | duplicates |")
    print("|---|---|---|---|---|---|---|")
    for r in scale:
        s = r["stats"]
        name = "in-process" if r["workers"] == 0 else str(r["workers"])
        print(
            f"| {name} | {r['rate']:,.0f} | {r['rate'] / base:.2f}x | {r['rate'] / one:.2f}x "
            f"| {100 * r['cpu'] / r['wall']:.0f} % | {s.get('reissued', '-')} | {s.get('duplicates', '-')} |"
        )
    best = max(r["rate"] for r in scale if r["workers"])
    print(f"\nBest on Ray: {best:,.0f} episodes/s (target >= 5,000: {'met' if best >= 5000 else 'missed'}).\n")

    print("### Cost per episode (latency 0)\n")
    print("| path | episodes/s | driver CPU per episode |\n|---|---|---|")
    for name, r in [("in-process", cost["local"]), ("1 Ray worker", cost["ray"])]:
        print(f"| {name} | {r['rate']:,.0f} | {1e6 * r['cpu'] / r['episodes']:.0f} µs |")
    print("\n| Ray path cost | value |\n|---|---|")
    print(f"| encode + decode, scripted episode ({ser['scripted_bytes']:,} B) | {ser['scripted']:.0f} µs |")
    print(f"| encode + decode, 24-step tree with token ids ({ser['tree_bytes']:,} B) | {ser['tree']:.0f} µs |")
    print(f"| ray.put of one version (bundled-weak, {pub['bytes'] / 1e6:.1f} MB) | {pub['put_ms']:.1f} ms |")
    print(f"| put + delivered to {pub['workers']} workers | {pub['delivered_ms']:.1f} ms |")

    if learn:
        print(f"\n### Learning: configs/expert_iteration.yaml, {args.seconds:.0f} s per row\n")
        print(
            "| runtime | episodes/s | vs in-process | optimizer steps | versions | learner busy | publish per version |"
        )
        print("|---|---|---|---|---|---|---|")
        lbase = learn[0]["episodes"] / learn[0]["wall"]
        for r in learn:
            rate = r["episodes"] / r["wall"]
            name = "in-process" if r["workers"] == 0 else f"{r['workers']} Ray worker{'s' if r['workers'] > 1 else ''}"
            pub_ms = f"{r['publish_ms']:.1f} ms" if r["publish_ms"] is not None else "-"
            print(
                f"| {name} | {rate:.2f} | {rate / lbase:.2f}x | {r['steps']} | {r['version']} "
                f"| {100 * r['learner']:.0f} % | {pub_ms} |"
            )


if __name__ == "__main__":
    main()
