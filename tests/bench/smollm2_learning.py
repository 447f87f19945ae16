"""Benchmark: rejection-sampling fine-tuning of SmolLM2-135M-Instruct from its own
verified samples, ``configs/smollm2_rft.yaml`` (the learning issue's item 7).

Run: ``python tests/bench/smollm2_learning.py [--minutes 25] [--runs 2] [--tasks 300]
[--json docs/results/learning.json]`` (the model first: ``searchlearn fetch smollm2-135m``).
Prints Markdown tables, configuration first.

- **Held-out set:** ``--tasks`` distinct questions of the config's reasoning-gym family
  from its held-out split (``tasks.split: heldout``, ``tasks.unique: true``); the
  training source is the config's own (``tasks.split: train``), and a check counts the
  held-out questions among all its tasks (0 expected).
- **Before and after:** the start checkpoint, then each run's final weights (LoRA merged),
  sample 8 solutions a held-out task at the config's temperature (0.7), scored by
  reasoning-gym: pass@1 is the mean accuracy of the 8 samples (the unbiased pass@1
  estimate from 8 samples), majority@8 the most frequent answer, pass@8 any of the 8
  right. ``--greedy`` adds greedy pass@1 (temperature 0).
- **Runs:** the config ``--runs`` times from the same start, ``learner.max_minutes``
  ``--minutes`` each, in-loop evaluation off (it would take the cores). CPU minutes are
  the process's user and system time during the run (all threads), from
  ``resource.getrusage``.
- **Isolation:** every training run and every evaluation runs in a fresh process (spawned),
  so each model load's memory goes back to the system when it ends; five loads in one
  process once grew it to 22.9 GB.
- ``--json`` merges ``{"smollm2": {...}}`` into the learning benchmark's file (the rows of
  ``tests/bench/learning.py`` are kept): held-out tasks, overlap, before and after (mean
  over runs), the runs' own figures and spread, CPU minutes (mean over runs).
"""

# ruff: noqa: T201  (a benchmark script: it prints its tables)
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "bench"))

import anyio  # noqa: E402
import torch  # noqa: E402
from smollm2_search import leaves, stream, wilson  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from runtime.app.config import load_config  # noqa: E402
from runtime.app.learning import build_loop  # noqa: E402
from runtime.policy.checkpoints import resolve_checkpoint  # noqa: E402
from runtime.rewards.outcome import ReasoningGymVerifier  # noqa: E402

HELD_OUT_SEED = 1000
SAMPLES = 8
T = TypeVar("T")


def isolated(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a fresh spawned process: what its models held is freed when it returns."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def evaluate_in_process(config: Any, path: str, label: str, tasks: int, greedy: bool, store: Path) -> dict[str, Any]:
    return anyio.run(evaluate, config, path, label, tasks, greedy, store)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def eval_config(config: Any, path: str, label: str, tasks: int, greedy: bool, store: Path) -> Any:
    """The run's config turned into an evaluation of checkpoint ``path`` on the held-out set:
    no learner, best-of-8 samples (or one greedy sample), the run's prompt and verifier."""
    held_out = config.tasks.model_copy(
        update={"size": tasks, "seed": HELD_OUT_SEED, "split": "heldout", "unique": True}
    )
    return config.model_copy(
        update={
            "run_id": f"eval-{label}{'-greedy' if greedy else ''}",
            "learner": None,
            "tasks": held_out,
            "policy": config.policy.model_copy(update={"path": path}),
            "strategy": config.strategy.model_copy(update={"n": 1 if greedy else SAMPLES}),
            "sampling": config.sampling.model_copy(update={"temperature": 0.0} if greedy else {}),
            "store": config.store.model_copy(update={"path": str(store / f"eval-{label}.db")}),
            "scheduler": config.scheduler.model_copy(update={"concurrency": 32}),  # 256 sequences at once
        }
    )


async def evaluate(config: Any, path: str, label: str, tasks: int, greedy: bool, store: Path) -> dict[str, Any]:
    verifier = ReasoningGymVerifier()
    episodes, seconds, _ = await stream(eval_config(config, path, label, tasks, False, store))
    sampled, majority, oracle = [], [], []
    for ep in episodes:
        samples = leaves(ep)
        right = [
            leaf.answer is not None and (await verifier.score(ep.task, leaf.answer, leaf.answer)).value >= 1.0
            for leaf in samples
        ]
        sampled.append(sum(right) / SAMPLES)  # a sample that never finished counts as wrong
        oracle.append(any(right))
        answered = [leaf.answer for leaf in samples if leaf.answer is not None]
        top = Counter(answered).most_common(1)[0][0] if answered else None
        majority.append(
            any(r for leaf, r in zip(samples, right, strict=True) if top is not None and leaf.answer == top)
        )
    out: dict[str, Any] = {
        "pass1": statistics.fmean(sampled),
        "maj8": statistics.fmean(majority),
        "pass8": statistics.fmean(oracle),
        "tasks": len(episodes),
        "failed": sum(ep.status == "failed" for ep in episodes),
        "tokens_per_sample": sum(ep.usage.completion_tokens for ep in episodes) / max(1, len(episodes) * SAMPLES),
        "seconds": seconds,
    }
    if greedy:
        greedy_eps, greedy_s, _ = await stream(eval_config(config, path, label, tasks, True, store))
        out["greedy"] = statistics.fmean(float((ep.reward or 0.0) >= 1.0) for ep in greedy_eps)
        out["seconds"] += greedy_s
    return out


def train(config: Any, run: int, minutes: float, store: Path) -> tuple[Path, dict[str, Any]]:
    """One run of the config; its final weights (LoRA merged) saved as a checkpoint directory."""
    run_config = config.model_copy(
        update={
            "run_id": f"bench-smollm2-rft-{run}",
            "store": config.store.model_copy(update={"path": str(store / f"run{run}.db")}),
            "learner": config.learner.model_copy(
                update={"max_minutes": minutes, "eval": None, "checkpoint": str(store / f"run{run}.pt")}
            ),
        }
    )

    async def main() -> Any:
        async with build_loop(run_config) as loop:
            return loop, await loop.run(run_config.tasks.build())

    cpu, started = cpu_seconds(), time.monotonic()
    loop, stats = anyio.run(main)
    wall, cpu = time.monotonic() - started, cpu_seconds() - cpu
    learner = loop.learner
    model = AutoModelForCausalLM.from_config(learner.policy_config(), dtype=torch.float32)
    model.load_state_dict(learner.weights(), strict=False)
    directory = store / f"run{run}-final"
    model.save_pretrained(directory)
    learner.tokenizer.save_pretrained(directory)
    s = stats.as_dict()
    return directory, {
        "wall_s": wall,
        "cpu_minutes": cpu / 60,
        "episodes": stats.episodes,
        "examples": stats.examples,
        "steps": stats.steps,
        "utilisation": s["learner utilisation"],
        "tokens_per_example": stats.generated_tokens / max(1, stats.examples),
    }


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def write_json(smollm2: dict[str, Any], path: Path) -> None:
    """Merge the SmolLM2 result into the learning benchmark's file, keeping its rows."""
    data: dict[str, Any] = {"rows": [], "smollm2": None}
    if path.exists():
        data = json.loads(path.read_text())
    data["smollm2"] = smollm2
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "smollm2_rft.yaml"))
    parser.add_argument("--minutes", type=float, default=25.0, help="wall-clock budget of each run")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=300, help="held-out tasks (distinct questions)")
    parser.add_argument("--greedy", action="store_true", help="also greedy pass@1 (temperature 0)")
    parser.add_argument("--set", action="append", default=[], help="override a config field: key=value")
    parser.add_argument("--json", type=Path, default=None, help="merge the result into this JSON file")
    args = parser.parse_args()

    store = Path(tempfile.mkdtemp(prefix="smollm2-rft-"))
    config = load_config(args.config, args.set)
    assert config.learner is not None
    threads = torch.get_num_threads()
    print(
        "| setting | value |\n|---|---|\n"
        f"| config | {Path(args.config).name}, overrides {args.set or 'none'} |\n"
        f"| model | {config.policy.path}; LoRA {config.learner.lora}; lr {config.learner.lr} |\n"
        f"| tasks | reasoning-gym `{config.tasks.name}` {config.tasks.config}; training: split "
        f"{config.tasks.split}, seed {config.tasks.seed}; held-out: {args.tasks} distinct questions of "
        f"the heldout split, seed {HELD_OUT_SEED} |\n"
        f"| evaluation | {SAMPLES} samples a task at temperature {config.sampling.temperature}, max_tokens "
        f"{config.sampling.max_tokens}{'; greedy too' if args.greedy else ''} |\n"
        f"| runs | {args.runs} x {args.minutes:g} minutes from the same start, in-loop evaluation off |\n"
        f"| machine | {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({threads} threads), "
        f"load average at start {os.getloadavg()[0]:.2f}; nothing else of this benchmark running |\n",
        flush=True,
    )
    held_out = {t.prompt for t in eval_config(config, "", "x", args.tasks, False, store).tasks.build()}
    overlap = len(held_out & {t.prompt for t in config.tasks.build()})
    print(f"held-out questions: {len(held_out)}; among the {config.tasks.size} training tasks: {overlap}\n", flush=True)

    start = str(resolve_checkpoint(config.policy.path))
    before = isolated(evaluate_in_process, config, start, "start", args.tasks, args.greedy, store)
    print(f"  start evaluated in {before['seconds']:.0f} s", file=sys.stderr, flush=True)
    runs: list[dict[str, Any]] = []
    for run in range(1, args.runs + 1):
        directory, figures = isolated(train, config, run, args.minutes, store)
        print(f"  run {run}: {figures}", file=sys.stderr, flush=True)
        after = isolated(evaluate_in_process, config, str(directory), f"run{run}", args.tasks, args.greedy, store)
        runs.append({**figures, "after": after})

    keys = ["pass1", "maj8", "pass8"] + (["greedy"] if args.greedy else [])
    print("| checkpoint | " + " | ".join(keys) + " | tokens/sample | failed | eval s |")
    print("|---|" + "---:|" * (len(keys) + 3))
    for label, result in [("start", before)] + [(f"run {i + 1}", r["after"]) for i, r in enumerate(runs)]:
        n = result["tasks"]
        cells = []
        for key in keys:
            trials = n * SAMPLES if key == "pass1" else n
            low, high = wilson(round(result[key] * trials), trials)
            cells.append(f"{pct(result[key])} ({100 * low:.0f}-{100 * high:.0f})")
        print(
            f"| {label} | " + " | ".join(cells) + f" | {result['tokens_per_sample']:.1f} | {result['failed']} | "
            f"{result['seconds']:.0f} |"
        )
    print("\n| run | wall s | CPU min | episodes | examples | optimizer steps | learner busy | gen. tokens/example |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for i, r in enumerate(runs, 1):
        print(
            f"| {i} | {r['wall_s']:.0f} | {r['cpu_minutes']:.1f} | {r['episodes']} | {r['examples']} | {r['steps']} | "
            f"{100 * r['utilisation']:.0f} % | {r['tokens_per_example']:.0f} |"
        )
    after = {key: statistics.fmean(r["after"][key] for r in runs) for key in keys}
    spread = {key: max(r["after"][key] for r in runs) - min(r["after"][key] for r in runs) for key in keys}
    print(
        "\nafter (mean of runs) - before: "
        + ", ".join(f"{k} {100 * (after[k] - before[k]):+.1f} points (spread {100 * spread[k]:.1f})" for k in keys)
    )
    if args.json:
        write_json(
            {
                "heldout_tasks": len(held_out),
                "overlap_with_training": overlap,
                "before": {k: before[k] for k in keys},
                "after": after,
                "spread": spread,
                "cpu_minutes": statistics.fmean(r["cpu_minutes"] for r in runs),
                "runs": [
                    {**{k: v for k, v in r.items() if k != "after"}, **{k: r["after"][k] for k in keys}} for r in runs
                ],
                "config": f"configs/{Path(args.config).name}",
                "minutes": args.minutes,
            },
            args.json,
        )
        print(f"\nwritten: {args.json}")


if __name__ == "__main__":
    main()
