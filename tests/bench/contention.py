"""Benchmark: the quickstart beside a busy neighbour process, as a ratio to the quiet run.

Run: ``python tests/bench/contention.py [--tasks 40]``. Prints a Markdown table,
configuration first.

Each row runs the quickstart's config (``configs/quickstart.yaml``: the bundled policy
in the local engine, best-of-4 with the rule verifier) on ``--tasks`` tasks in a fresh
subprocess, so each gets its own OpenMP runtime and environment, and reports episodes/s
from the run itself (episodes over the runtime's wall time, model loading excluded).
The neighbour is one process spinning on one core (``while True: pass``), started
before the run and killed after it: half of this 2-core machine, what a second job, a
build or a browser tab takes. Rows:

- quiet, the defaults (the reference of every ratio);
- the neighbour, torch's own defaults (2 threads, OpenMP's spinning wait: what
  searchlearn did before it placed threads);
- the neighbour, the defaults (thread share of the cores and passive OpenMP waits, as
  ``searchlearn run`` sets them);
- the neighbour, ``policy.threads: 1``; and quiet with one thread, its cost when nothing
  competes.

Target (issue 14): >= 0.4x of quiet with the neighbour, at the defaults.
"""

# ruff: noqa: T201  (a benchmark script: it prints its tables)

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys, tempfile, time
from runtime.core.threads import passive_openmp
passive_openmp()  # what `searchlearn run` does before torch loads (an exported policy wins)
import anyio
from runtime.app.build import build_runtime, build_tasks
from runtime.app.config import load_config

overrides = json.loads(sys.argv[1])
with tempfile.TemporaryDirectory() as tmp:
    cfg = load_config("configs/quickstart.yaml", [*overrides, f"store.path={tmp}/s.db", "run_id=contention"])
    tasks = list(build_tasks(cfg))
    rt = build_runtime(cfg)
    threads = getattr(getattr(rt.policy, "engine", None), "threads", None)

    async def main():
        async with rt:
            started = time.monotonic()
            await rt.run(tasks)
            elapsed = time.monotonic() - started
        await rt.policy.aclose()
        return elapsed

    elapsed = anyio.run(main)
    s = rt.stats
    import os
    wait = os.environ.get("OMP_WAIT_POLICY", "unset")
    row = {"episodes": s.finished, "seconds": elapsed, "solved": s.solved, "threads": threads, "wait": wait}
    print(json.dumps(row))
"""


def neighbour() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def run(tasks: int, env: dict[str, str], overrides: list[str], busy: bool) -> dict[str, Any]:
    args = [f"tasks.size={tasks}", *overrides]
    spinner = neighbour() if busy else None
    try:
        if spinner is not None:
            time.sleep(0.5)
        out = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(args)],
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            check=True,
            timeout=3600,
        )
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=40, help="quickstart tasks per row")
    args = parser.parse_args()
    legacy = {"OMP_WAIT_POLICY": "ACTIVE"}
    rows = [
        ("quiet, defaults", {}, [], False),
        ("quiet, torch defaults (2 threads, spinning waits)", legacy, ["policy.threads=2"], False),
        ("neighbour, torch defaults (2 threads, spinning waits)", legacy, ["policy.threads=2"], True),
        ("neighbour, defaults", {}, [], True),
        ("neighbour, policy.threads=1", {}, ["policy.threads=1"], True),
        ("quiet, policy.threads=1", {}, ["policy.threads=1"], False),
    ]
    load = os.getloadavg()[0]
    print("## Contention: the quickstart beside a busy neighbour (tests/bench/contention.py)\n")
    print(
        f"Configuration: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; quickstart config, {args.tasks} tasks x best-of-4 each row, "
        f"a fresh process per row; neighbour: one process spinning on one core; "
        f"load average before the run {load:.2f} (nothing else of ours running).\n"
    )
    results = []
    for label, env, overrides, busy in rows:
        r = run(args.tasks, env, overrides, busy)
        results.append((label, env, r))
        print(f"  {label}: {r['episodes'] / r['seconds']:.2f} episodes/s", file=sys.stderr)
    quiet = results[0][2]["episodes"] / results[0][2]["seconds"]
    print("| run | engine threads | OMP_WAIT_POLICY | episodes | seconds | episodes/s | vs quiet defaults |")
    print("|---|---|---|---|---|---|---|")
    for label, _env, r in results:
        rate = r["episodes"] / r["seconds"]
        policy = r["wait"]
        print(
            f"| {label} | {r['threads']} | {policy} | {r['episodes']:.0f} | {r['seconds']:.1f} | "
            f"{rate:.2f} | {rate / quiet:.2f}x |"
        )
    print("\nTarget: neighbour, defaults >= 0.40x of quiet, defaults.")


if __name__ == "__main__":
    main()
