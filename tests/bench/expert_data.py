"""Benchmark: what expert iteration's data costs and teaches, apart from the loop (issue 22).

Run: ``python tests/bench/expert_data.py [--rate SETTINGS ...] [--per-step ARMS] [--steps 120]``.
Prints Markdown tables, configuration first.

Two questions the learning benchmark (``tests/bench/learning.py``) cannot separate, because
there generation and learning share the two cores and the policy moves under the search:

- ``--rate``: how fast the expert makes training examples. ``configs/expert_iteration.yaml``'s
  runtime (verify-and-backtrack on ``bundled-weak``, the rule verifier) runs 512 fresh
  train-split problems with nothing else running, once per setting (``""`` is the config as
  shipped, else ``key=value+key=value`` overrides); its converter turns each episode into
  examples exactly as the loop does. Columns: episodes/s, share solved, examples/s (of
  which verified prefixes of unsolved episodes), generated and prefilled tokens per
  example (the engine's own counts).
- ``--per-step``: how much an example teaches, per optimizer step, with the policy held
  still. The shipped expert's examples on ``--tasks`` train problems are collected once from
  the start; then each arm trains ``SFTLearner`` (the config's learner settings; an arm may
  override them, ``arm:lr=1e-3:warmup_steps=60``) for ``--steps`` steps of 64 examples from
  ``bundled-weak`` and is evaluated (greedy pass@1 on the learning benchmark's 300 mixed
  held-out problems) every ``--every`` steps. Arms: ``gt_fresh`` (64 fresh ground-truth
  solutions a step: the control), ``gt_fixed`` (as many ground-truth solutions as the
  expert gave examples, drawn 64 a step), ``ei`` (the expert's examples, 64 a step),
  ``ei_solved`` (the solved ones only), ``ei_window`` (the expert's examples in the order they
  came, reused as the online loop reuses them with the config's ``learner.passes``: each in
  ``passes`` consecutive rounds of a window of ``passes`` x 64).
"""

# ruff: noqa: T201  (a benchmark script: it prints its tables)
from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import anyio  # noqa: E402
import structlog  # noqa: E402
import torch  # noqa: E402
from learning import evaluator, ground_truth_examples, start_model  # noqa: E402

from learners import Example, SFTLearner  # noqa: E402
from runtime.app.build import build_runtime  # noqa: E402
from runtime.app.config import RunConfig, load_config  # noqa: E402

CONFIG = ROOT / "configs" / "expert_iteration.yaml"
RATE_TASKS = 512


def expert_config(store: Path, tasks: int, overrides: list[str]) -> RunConfig:
    return load_config(
        CONFIG, ["run_id=expert-data", f"store.path={store}", f"tasks.size={tasks}", "tasks.seed=7", *overrides]
    )


def collect(config: RunConfig) -> tuple[Counter[str], list[Example]]:
    """Run the config's runtime over its tasks; the loop's converter's examples and counts."""
    assert config.learner is not None
    converter = config.learner.build_converter(config.sampling.step_delimiter)
    counts: Counter[str] = Counter()
    examples: list[Example] = []

    async def main() -> None:
        runtime = build_runtime(config)
        started = time.monotonic()
        async with runtime:
            async for episode in runtime.stream(config.tasks.build()):
                got = await converter.examples(episode, runtime.verifiers)
                counts["episodes"] += 1
                counts["solved"] += bool(episode.reward is not None and episode.reward >= 1.0)
                counts["prefixes"] += sum(not ex.ends for ex in got)
                examples.extend(got)
        counts["wall_ms"] = int(1000 * (time.monotonic() - started))
        stats = runtime.policy.engine.stats  # type: ignore[attr-defined]
        counts["generated"], counts["prefilled"] = stats.generated_tokens, stats.prefill_computed
        await runtime.policy.aclose()

    anyio.run(main)
    counts["examples"] = len(examples)
    return counts, examples


def rate(settings: list[str]) -> None:
    print(f"\n**The expert's data rate** ({RATE_TASKS} train problems a row, nothing else running)\n")
    print(
        "| setting | episodes/s | solved | examples/s | of which prefixes | generated tokens / example "
        "| prefilled tokens / example |\n|---|---|---|---|---|---|---|"
    )
    base = None
    for setting in settings:
        with tempfile.TemporaryDirectory() as tmp:
            c, _ = collect(expert_config(Path(tmp) / "rate.db", RATE_TASKS, [s for s in setting.split("+") if s]))
        wall, n = c["wall_ms"] / 1000, max(1, c["examples"])
        per_s = c["examples"] / wall
        base = base or per_s
        print(
            f"| {setting or 'as shipped'} | {c['episodes'] / wall:.2f} | {100 * c['solved'] / c['episodes']:.1f} % "
            f"| {per_s:.2f} ({per_s / base:.2f}x) | {c['prefixes']} | {c['generated'] / n:.0f} "
            f"| {c['prefilled'] / n:.0f} |",
            flush=True,
        )


def per_step(arms: list[str], tasks: int, steps: int, every: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        counts, expert = collect(expert_config(Path(tmp) / "expert.db", tasks, []))
    print(
        f"\n**Per optimizer step, the policy held still**: {counts['examples']} expert examples from {tasks} "
        f"train problems ({counts['prefixes']} of them verified prefixes), {steps} steps of 64 an arm\n"
    )
    print("| arm | " + " | ".join(f"step {s}" for s in range(0, steps + 1, every)) + " |")
    print("|---|" + "---|" * (steps // every + 1))
    for arm in arms:
        print(f"| {arm} | " + " | ".join(train_arm(arm, expert, steps, every)) + " |", flush=True)
    print("\n(cells: held-out greedy pass@1, mixed 3-4 steps / 4-step share, in %; 300 problems)")


def train_arm(arm: str, expert: list[Example], steps: int, every: int) -> list[str]:
    """One ``--per-step`` arm from the start: its held-out cells every ``every`` steps."""
    spec = load_config(CONFIG).learner
    assert spec is not None
    name, *pairs = arm.split(":")
    update: dict[str, Any] = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        update[key] = type(getattr(spec, key))(value) if getattr(spec, key) is not None else float(value)
    model, tokenizer = start_model()
    learner = SFTLearner(model, tokenizer, spec.model_copy(update=update))
    ev = evaluator(tokenizer, model)
    rng = random.Random(0)
    data: list[Example] | None = {
        "gt_fresh": None,
        "gt_fixed": ground_truth_examples(random.Random(1), len(expert)),
        "ei": list(expert),
        "ei_window": None,
        "ei_solved": [ex for ex in expert if ex.ends],
    }[name]
    cells: list[str] = []
    window = window_batches(expert, spec.passes) if name == "ei_window" else None

    async def run() -> None:
        for step in range(steps + 1):
            if step % every == 0:
                m = await ev.evaluate(learner.weights(), step)
                cells.append(f"{100 * m['greedy_pass@1']:.1f} / {100 * m.get('greedy_pass@1/4', 0.0):.1f}")
            if step == steps:
                break
            if window is not None:
                batch = next(window)
            elif data is None:
                batch = ground_truth_examples(rng, 64)
            else:
                batch = rng.sample(data, 64)
            await learner.update(batch)
        await ev.aclose()

    anyio.run(run)
    return cells


def window_batches(expert: list[Example], passes: int) -> Iterator[list[Example]]:
    """The online loop's reuse rule (``learner.passes``) on the examples in the order they
    came: each round of 64 new examples steps on them and the previous ``passes - 1``
    rounds' examples, shuffled together, one batch of 64 per round in the window."""
    rounds: list[list[Example]] = []
    for start in range(0, len(expert) - 63, 64):
        rounds = [*rounds, expert[start : start + 64]][-passes:]
        pool = [ex for r in rounds for ex in r]
        random.Random(start).shuffle(pool)
        n = len(rounds)
        for j in range(n):
            yield pool[j * len(pool) // n : (j + 1) * len(pool) // n]
    raise RuntimeError("the expert's examples ran out: collect more (--tasks)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", nargs="*", default=None, help='settings ("" = as shipped; key=v+key=v)')
    arms = "comma-separated arms: gt_fresh,gt_fixed,ei,ei_solved,ei_window"
    parser.add_argument("--per-step", default="", help=arms)
    parser.add_argument("--tasks", type=int, default=1024, help="train problems the expert solves for --per-step")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--every", type=int, default=30)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    torch.set_num_threads(2)
    print("| setting | value |\n|---|---|")
    print(f"| machine | {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} |")
    print(f"| config | {CONFIG.relative_to(ROOT)} |")
    print(f"| load average at start | {', '.join(f'{x:.2f}' for x in os.getloadavg())} |")
    if args.rate is not None:
        rate(args.rate or [""])
    if args.per_step:
        per_step(args.per_step.split(","), args.tasks, args.steps, args.every)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
