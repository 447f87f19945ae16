"""Benchmark: the generation engine takes the cores the learner is not using.

Run: ``python tests/bench/core_share.py [--seconds 30]``. Prints a Markdown table,
configuration first, and exits non-zero if the engine on the share, with the learner
idle, does not reach ``--min-ratio`` of its own speed on a fixed two threads (the share
must hand it every core nobody holds).

One process, as in the online loop: a local engine serving ``bundled-weak`` to 64
concurrent tiny-domain requests (temperature 0.7, up to 96 tokens each, new requests as
old ones finish) and, in some rows, a supervised learner (``SFTLearner``, 1 thread,
batches of 64 ground-truth solutions) stepping back to back in a worker thread. Rows:

- engine on a fixed 1 thread, learner idle (what the loop did before the cores changed
  hands: the learner's core sat idle while it waited for data);
- engine on a fixed 2 threads, learner idle (the two-core figure);
- engine on the core share, learner idle (it takes both cores);
- engine on the core share, learner stepping (each holds one core);
- learner alone, 1 thread (its reference rate).

Each row runs ``--seconds`` after a short warm-up. Figures: engine tokens/s (sampled
tokens), learner steps/s, and model GFLOP/s of both together (2 x parameters per token
the engine prefilled or sampled, 6 x parameters per token a step processed), against
the ~195 GFLOP/s fp32 matmul peak of the two cores (FACTS.md).
"""

# ruff: noqa: T201  (a benchmark script: it prints its tables)

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from runtime.core.threads import passive_openmp  # noqa: E402

passive_openmp()  # as `searchlearn run` does before torch loads: two torch consumers in one process

import anyio  # noqa: E402
import torch  # noqa: E402

from learners import Example, SFTLearner, SFTSettings  # noqa: E402
from runtime.core.threads import CoreShare  # noqa: E402
from runtime.policy.base import GenerationRequest  # noqa: E402
from runtime.policy.local import LocalPolicy  # noqa: E402
from runtime.tiny.domain import generate_problem, solution_steps  # noqa: E402

PEAK_GFLOPS = 195.0


def learner() -> SFTLearner:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime.policy.checkpoints import resolve_checkpoint

    directory = resolve_checkpoint("bundled-weak")
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    return SFTLearner(model, AutoTokenizer.from_pretrained(directory), SFTSettings(threads=1, lr=1e-5))


def batch(rng: random.Random) -> list[Example]:
    out = []
    for _ in range(64):
        p = generate_problem(rng, rng.choice([3, 4]), "train")
        text = "\n".join([*solution_steps(p), f"Answer: {p.answer}"])
        out.append(Example([{"role": "user", "content": p.question}], text, ("gt", p.question, 0)))
    return out


async def generate_for(policy: LocalPolicy, seconds: float) -> tuple[int, int]:
    """Sampled tokens and prefilled tokens in ``seconds`` of 64 concurrent requests."""
    rng = random.Random(0)
    engine = policy.engine
    stop = time.monotonic() + seconds
    sampled = 0

    async def worker() -> None:
        nonlocal sampled
        while time.monotonic() < stop:
            p = generate_problem(rng, rng.choice([3, 4]), "train")
            request = GenerationRequest(
                messages=[{"role": "user", "content": p.question}], max_tokens=96, temperature=0.7
            )
            result = await policy.generate(request)
            sampled += result.completion_tokens

    prefill_before = engine.stats.prefill_computed
    async with anyio.create_task_group() as tg:
        for _ in range(64):
            tg.start_soon(worker)
    return sampled, engine.stats.prefill_computed - prefill_before


def run_row(policy: LocalPolicy | None, sft: SFTLearner | None, seconds: float) -> dict[str, Any]:
    """Generation for ``seconds`` (if ``policy``) beside back-to-back learner steps (if ``sft``)."""
    done = threading.Event()
    steps, processed = [0], [0]

    def learn() -> None:
        rng = random.Random(1)
        while not done.is_set():
            examples = batch(rng)
            if sft.share is not None:  # type: ignore[union-attr]
                with sft.share.hold(1):  # type: ignore[union-attr]
                    result = sft.step(examples)  # type: ignore[union-attr]
            else:
                result = sft.step(examples)  # type: ignore[union-attr]
            steps[0] += 1
            processed[0] += int(result.metrics["processed"])

    thread = threading.Thread(target=learn) if sft is not None else None
    started = time.monotonic()
    if thread is not None:
        thread.start()
    sampled = prefilled = 0
    if policy is not None:
        sampled, prefilled = anyio.run(generate_for, policy, seconds)
    else:
        time.sleep(seconds)
    wall = time.monotonic() - started
    done.set()
    if thread is not None:
        thread.join()
    return {"sampled": sampled, "prefilled": prefilled, "steps": steps[0], "processed": processed[0], "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per row")
    parser.add_argument("--min-ratio", type=float, default=0.9, help="engine on the share / on 2 fixed threads")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    policy = LocalPolicy.from_path("bundled-weak", threads=1, max_batch=64)
    sft = learner()
    params = sum(p.numel() for p in sft.model.parameters())
    anyio.run(generate_for, policy, 3.0)  # warm-up
    rows = []
    share = CoreShare(cpus=2)
    plan = [
        ("engine 1 thread (fixed), learner idle", None, False),
        ("engine 2 threads (fixed), learner idle", None, False),
        ("engine on the share, learner idle", share, False),
        ("engine on the share, learner stepping (1 thread)", share, True),
        ("learner alone (1 thread)", None, True),
    ]
    for label, engine_share, learning in plan:
        policy.engine.share = engine_share
        policy.engine.threads = 2 if label.startswith("engine 2") else 1
        if engine_share is None:  # a fixed count, set on the engine's thread between two steps
            policy.engine.share = CoreShare(cpus=policy.engine.threads)
        sft.share = engine_share
        row = run_row(policy if "alone" not in label else None, sft if learning else None, args.seconds)
        row["label"] = label
        rows.append(row)
        print(f"  {label}: {row['sampled'] / row['wall']:.0f} tok/s, {row['steps'] / row['wall']:.2f} steps/s",
              file=sys.stderr)  # fmt: skip
    policy.engine.close()
    print("## The engine takes the cores the learner is not using (tests/bench/core_share.py)\n")
    print(
        f"Configuration: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, Python "
        f"{platform.python_version()}; `bundled-weak` ({params / 1e6:.1f} M parameters); 64 concurrent requests, "
        f"temperature 0.7, <= 96 tokens; learner batches of 64, 1 thread; {args.seconds:.0f} s a row; "
        f"load average before the run {load:.2f}; nothing else of ours running.\n"
    )
    print("| row | engine tokens/s | learner steps/s | model GFLOP/s | share of the 2-core peak |")
    print("|---|---|---|---|---|")
    for r in rows:
        gflops = params * (2 * (r["sampled"] + r["prefilled"]) + 6 * r["processed"]) / r["wall"] / 1e9
        print(
            f"| {r['label']} | {r['sampled'] / r['wall']:.0f} | {r['steps'] / r['wall']:.2f} | {gflops:.1f} "
            f"| {gflops / PEAK_GFLOPS:.2f} |"
        )
    rate = [r["sampled"] / r["wall"] for r in rows]
    print(f"\nEngine with the learner idle: 2 fixed threads vs 1, {rate[1] / rate[0]:.2f}x; on the share vs 1 thread "
          f"{rate[2] / rate[0]:.2f}x; on the share vs 2 fixed threads {rate[2] / rate[1]:.2f}x "
          f"(required >= {args.min_ratio}x)")  # fmt: skip
    if rate[2] / rate[1] < args.min_ratio:
        sys.exit(1)


if __name__ == "__main__":
    main()
