"""Benchmark of the online loop against the synchronous loop, same budget, one run.

Run: ``python tests/bench/loop.py [--minutes 6] [--quick]``. Prints Markdown tables,
configuration first, and writes ``docs/loop_curve.png``.

Both modes run ``configs/expert_iteration.yaml`` (expert iteration on the tiny domain
from the ``bundled-weak`` checkpoint: verify-and-backtrack under the rule verifier,
every verified-correct solution behaviour-cloned, each version hot-swapped into the engine)
for the same wall-clock budget, one after the other in this process:

(a) ``sync``: generate ``sync_episodes`` episodes, stop, train on them, publish, repeat
    (the generate-then-train loop of most RL libraries);
(b) ``online``: generation never stops; the learner steps in a worker thread and each
    version is swapped in between decode steps.

Reported per mode: episodes/s, optimizer steps, learner utilisation (time in optimizer
steps / wall time), the staleness histogram (versions between sampling and training),
examples dropped as stale, held-out greedy pass@1 at start and end (300 3-4-step tasks,
evaluated every few versions by a separate engine). Target: the online loop reaches
the synchronous loop's final accuracy in <= 0.6x the synchronous loop's wall time
(the first evaluation at or above it).

Reference learner: TRL's ``SFTTrainer`` (batch 32, fp32, CPU) trained for a few steps on
the examples the synchronous run produced, against ``SFTLearner`` steps on the same
batches: optimizer steps/s of both.
"""

# ruff: noqa: T201  (a benchmark script: it prints its tables)
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import structlog  # noqa: E402
import torch  # noqa: E402

from learners import Example, SFTLearner, VerifiedPaths  # noqa: E402
from runtime.app.build import build_tasks  # noqa: E402
from runtime.app.config import load_config  # noqa: E402
from runtime.app.learning import build_loop  # noqa: E402
from runtime.scheduling.store import EpisodeStore  # noqa: E402


def run_mode(mode: str, minutes: float, store: Path, overrides: list[str]) -> dict[str, Any]:
    config = load_config(
        ROOT / "configs" / "expert_iteration.yaml",
        [
            f"run_id=bench-{mode}",
            f"store.path={store}",
            f"learner.mode={mode}",
            f"learner.max_minutes={minutes}",
            "learner.eval.strategy=false",
            *overrides,
        ],
    )
    tasks = list(build_tasks(config))
    loop = build_loop(config)

    async def go() -> Any:
        async with loop:
            return await loop.run(tasks)

    started = time.monotonic()
    stats = anyio.run(go)
    wall = time.monotonic() - started
    curve = stats.curve
    return {
        "mode": mode,
        "wall": wall,
        "episodes": loop.runtime.stats.finished,
        "episodes_per_s": loop.runtime.stats.finished / stats.elapsed,
        "steps": stats.steps,
        "versions": stats.version,
        "utilisation": stats.learner_seconds / stats.elapsed,
        "staleness": dict(sorted(stats.staleness.items())),
        "dropped": stats.dropped_stale,
        "examples": stats.examples,
        "curve": curve,
        "start_acc": curve[0]["greedy_pass@1"],
        "final_acc": curve[-1]["greedy_pass@1"],
        "elapsed": stats.elapsed,
    }


def trl_reference(store: Path, run_id: str, steps: int) -> dict[str, float]:
    """Optimizer steps/s of TRL's SFTTrainer and of SFTLearner on the same examples."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from runtime.policy.checkpoints import resolve_checkpoint

    source = VerifiedPaths(keep="all_correct")
    examples: list[Example] = []
    with EpisodeStore(store) as st:
        for ep in st.episodes(run_id):
            examples.extend(anyio.run(source.examples, ep))
    batch = 32
    need = batch * (steps + 2)
    examples = (examples * (need // max(len(examples), 1) + 1))[:need]
    directory = resolve_checkpoint("bundled-weak")
    tok = AutoTokenizer.from_pretrained(directory)

    learner = SFTLearner.from_path(directory, lr=3e-4, micro_batch=batch)
    learner.step(examples[:batch])  # warm-up
    started = time.monotonic()
    for k in range(1, steps + 1):
        learner.step(examples[k * batch : (k + 1) * batch])
    ours = steps / (time.monotonic() - started)

    data = Dataset.from_list(
        [{"prompt": e.messages, "completion": [{"role": "assistant", "content": e.completion}]} for e in examples]
    )
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out,
            per_device_train_batch_size=batch,
            max_steps=steps + 1,
            learning_rate=3e-4,
            logging_steps=1000,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            dataloader_num_workers=0,
            bf16=False,
            fp16=False,
            completion_only_loss=True,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
        times: list[float] = []
        from transformers import TrainerCallback

        class Clock(TrainerCallback):
            def on_step_begin(self, *a: Any, **k: Any) -> None:
                times.append(time.monotonic())

        trainer.add_callback(Clock())
        trainer.train()
        trl = steps / (time.monotonic() - times[1]) if len(times) > 1 else float("nan")
    return {"examples": len(examples), "ours": ours, "trl": trl}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=6.0, help="wall-clock budget of each mode")
    parser.add_argument("--quick", action="store_true", help="1.5-minute budget, small eval: a smoke run")
    parser.add_argument("--trl-steps", type=int, default=10)
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "loop_curve.png")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    minutes = 1.5 if args.quick else args.minutes
    overrides = ["learner.eval.tasks.size=40", "learner.eval.every=3"] if args.quick else ["learner.eval.every=10"]
    print("## Online vs synchronous expert iteration\n")
    print(
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, python {platform.python_version()}"
    )
    print(f"- config: configs/expert_iteration.yaml, budget {minutes} min per mode, overrides {overrides}\n")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "bench.db"
        for mode in ("sync", "online"):
            results.append(run_mode(mode, minutes, store, overrides))
        trl = trl_reference(store, "bench-sync", args.trl_steps)
    sync, online = results
    target_acc = sync["final_acc"]
    reached = next((p["wall_time"] for p in online["curve"] if p["greedy_pass@1"] >= target_acc), None)
    print(
        "| mode | episodes | episodes/s | optimizer steps | versions | learner utilisation "
        "| staleness histogram | dropped stale | greedy pass@1 start → end |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['mode']} | {r['episodes']} | {r['episodes_per_s']:.2f} | {r['steps']} | {r['versions']} | "
            f"{100 * r['utilisation']:.0f} % | {r['staleness']} | {r['dropped']} | "
            f"{100 * r['start_acc']:.1f} % → {100 * r['final_acc']:.1f} % |"
        )
    print()
    print(f"- episodes/s, online / sync: {online['episodes_per_s'] / sync['episodes_per_s']:.2f}x")
    if reached is None:
        print(f"- the online loop did not reach the sync loop's final {100 * target_acc:.1f} % within its budget")
    else:
        print(
            f"- online reached the sync loop's final {100 * target_acc:.1f} % after {reached:.0f} s: "
            f"{reached / sync['elapsed']:.2f}x the sync loop's {sync['elapsed']:.0f} s (target <= 0.60x)"
        )
    width = max(len(r["curve"]) for r in results)
    print("\n| curve (greedy pass@1, version, wall time) |" + " |" * width)
    print("|---|" + "---|" * width)
    for r in results:
        print(
            f"| {r['mode']} | "
            + " | ".join(
                f"{100 * p['greedy_pass@1']:.1f} % (v{p['version']}, {p['wall_time']:.0f}s)" for p in r["curve"]
            )
            + " |"
        )
    print("\n### Learner steps/s on the same filtered data (batch 32)\n")
    print("| learner | examples | optimizer steps/s | ratio |")
    print("|---|---|---|---|")
    print(f"| TRL SFTTrainer | {trl['examples']} | {trl['trl']:.2f} | 1.00 |")
    print(f"| searchlearn SFTLearner | {trl['examples']} | {trl['ours']:.2f} | {trl['ours'] / trl['trl']:.2f} |")
    _plot(results, args.plot)
    print(f"\nplot: {args.plot.relative_to(ROOT) if args.plot.is_relative_to(ROOT) else args.plot}")


def _plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        ax.plot(
            [p["wall_time"] / 60 for p in r["curve"]],
            [100 * p["greedy_pass@1"] for p in r["curve"]],
            marker="o",
            label=r["mode"],
        )
    ax.set_xlabel("wall time (min)")
    ax.set_ylabel("held-out greedy pass@1, 3-4 steps (%)")
    ax.set_title("expert iteration: online vs synchronous")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
