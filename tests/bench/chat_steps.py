"""Benchmark: step-level search on a real chat model (SmolLM2-135M-Instruct).

Run: ``python tests/bench/chat_steps.py [--family basic_arithmetic] [--config JSON]
[--tasks 60] [--model smollm2-135m] [--only LABEL ...]`` (the model: ``searchlearn fetch smollm2-135m``).
Prints a Markdown table, configuration first.

A chat model asked a question writes one paragraph. With the step delimiter ``"\\n"``
that paragraph is one step, cut at ``step_max_tokens``, and a step-level strategy has
nothing to search over. ``tasks.system`` gives every task a system message that asks
for one short step per line and a last line ``Answer: <value>``
(:data:`STEP_PROMPT`, the one in ``configs/smollm2_steps.yaml``). This benchmark runs the
same reasoning-gym tasks, in process (``LocalPolicy``, 2 torch threads), through:

- whole solutions: greedy (temperature 0), and best-of-4 at temperature 0.7 scored two
  ways: the majority answer (self-consistency, deployable) and pass@4 (any of the 4
  right: what a perfect verifier could pick, an oracle bound);
- ``chain_of_thought`` (one step per call) without and with the step prompt;
- ``beam`` 2 x 2 and ``verify_backtrack`` with a process signal for tasks without a
  rule verifier: the Monte-Carlo value of a step (2 rollouts to the end from it, scored
  by reasoning-gym against the reference answer: a training-time signal, and an
  oracle-assisted baseline at test time; its rollout tokens are counted).

Columns: accuracy, generated tokens per task (verifier rollouts included), steps per
solution (nodes on the chosen path), episodes that ended within one step, wall time.
Answers: whole solutions are read with ``answer_line``, ``boxed``, then the last number;
steps with ``answer_line`` and ``boxed`` only (with ``last_number`` every step holding a
number would end its path), and a finished path none of whose steps wrote an answer is
read whole with the whole-solution patterns (``verifiers.final_answer_patterns``).
"""

# ruff: noqa: T201  (a benchmark script: it prints its table)

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import torch  # noqa: E402

from runtime.policy.local import LocalPolicy  # noqa: E402
from runtime.rewards.base import AnswerExtractor  # noqa: E402
from runtime.rewards.mc_value import MonteCarloValue  # noqa: E402
from runtime.rewards.outcome import ReasoningGymVerifier  # noqa: E402
from runtime.scheduling.scheduler import Runtime, SchedulerSettings  # noqa: E402
from runtime.scheduling.tasks import ReasoningGymTasks  # noqa: E402
from runtime.search.context import Sampling, Verifiers  # noqa: E402
from strategies import BeamSearch, BestOfN, ChainOfThought, VerifyAndBacktrack  # noqa: E402

STEP_PROMPT = (
    "Solve the problem step by step. Write each step on its own line: one short calculation "
    "per line, nothing else on it. When you are done, write the last line as 'Answer: <value>'."
)
FAMILY_CONFIG = {
    "min_terms": 3,
    "max_terms": 3,
    "min_digits": 1,
    "max_digits": 1,
    "allow_parentheses": False,
    "operators": ["+", "-"],
}
THREADS = 2
TEMPERATURE = 0.7
MAX_TOKENS = 256
STEP_MAX_TOKENS = 48
WHOLE = ["answer_line", "boxed", "last_number"]
STEPS = ["answer_line", "boxed"]


@dataclass
class Row:
    label: str
    accuracy: float
    tokens: float
    steps: float
    one_step: float
    seconds: float
    failed: int


@dataclass
class Config:
    label: str
    make: Any
    system: bool
    temperature: float = TEMPERATURE
    process: bool = False
    step_level: bool = True


def configs() -> list[Config]:
    return [
        Config("whole, greedy", lambda: BestOfN(n=1), False, 0.0, step_level=False),
        Config("whole, greedy, step prompt", lambda: BestOfN(n=1), True, 0.0, step_level=False),
        Config("best-of-4", lambda: BestOfN(n=4, selection="outcome"), False, step_level=False),
        Config("best-of-4, step prompt", lambda: BestOfN(n=4, selection="outcome"), True, step_level=False),
        Config("chain_of_thought", ChainOfThought, False),
        Config("chain_of_thought, step prompt", ChainOfThought, True),
        Config(
            "verify_backtrack (MC value), step prompt",
            lambda: VerifyAndBacktrack(step_retries=2, episode_retries=4, threshold=0.5),
            True,
            process=True,
        ),  # fmt: skip
        Config(
            "beam 2x2 (MC value), step prompt",
            lambda: BeamSearch(width=2, expansions=2, aggregate="last"),
            True,
            process=True,
        ),  # fmt: skip
    ]


async def majority(episodes: list[Any], verifier: ReasoningGymVerifier) -> float:
    """Self-consistency on best-of-4's own samples: the most frequent answer, scored."""
    right = 0
    for ep in episodes:
        answers = [n.answer for n in ep.nodes if n.terminal and not n.children and n.answer is not None]
        if answers:
            top = Counter(answers).most_common(1)[0][0]
            right += (await verifier.score(ep.task, top, top)).value >= 1.0
    return right / len(episodes)


async def run(policy: LocalPolicy, config: Config, tasks: list[Any], concurrency: int) -> tuple[Row, list[Any]]:
    outcome = ReasoningGymVerifier()
    extractor = AnswerExtractor(STEPS if config.step_level else WHOLE)
    process = None
    if config.process:
        process = MonteCarloValue(
            policy, rollouts=2, temperature=TEMPERATURE, max_tokens=MAX_TOKENS, outcome=outcome,
            extractor=AnswerExtractor(WHOLE),
        )  # fmt: skip
    final = AnswerExtractor(WHOLE) if config.step_level else None
    verifiers = Verifiers(outcome=outcome, process=process, extractor=extractor, timeout=600, final=final)
    sampling = Sampling(
        temperature=config.temperature, max_tokens=MAX_TOKENS, step_max_tokens=STEP_MAX_TOKENS, max_steps=12
    )
    started = time.perf_counter()
    async with Runtime(
        policy, config.make(), verifiers=verifiers, sampling=sampling,
        settings=SchedulerSettings(concurrency=concurrency), run_id=config.label,
    ) as rt:  # fmt: skip
        episodes = [ep async for ep in rt.stream(tasks)]
    seconds = time.perf_counter() - started
    n = len(episodes)
    paths = [ep.chosen_path for ep in episodes]
    return Row(
        label=config.label,
        accuracy=sum((ep.reward or 0.0) >= 1.0 for ep in episodes) / n,
        tokens=sum(ep.usage.completion_tokens for ep in episodes) / n,
        steps=sum(len(p) for p in paths) / n,
        one_step=sum(len(p) <= 1 for p in paths) / n,
        seconds=seconds,
        failed=sum(ep.status == "failed" for ep in episodes),
    ), episodes


async def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(THREADS)
    source = ReasoningGymTasks(name=args.family, size=args.tasks, seed=args.seed, config=json.loads(args.config))
    bare = list(source.tasks())
    prompted = list(source.model_copy(update={"system": STEP_PROMPT}).tasks())
    print(
        "| setting | value |\n|---|---|\n"
        f"| model | {args.model} via LocalPolicy, {THREADS} torch threads, concurrency {args.concurrency} |\n"
        f"| tasks | {len(bare)} reasoning-gym `{args.family}` {args.config} (seed {args.seed}), "
        "scored by reasoning-gym |\n"
        f"| sampling | temperature {TEMPERATURE} (greedy rows 0), max_tokens {MAX_TOKENS}, "
        f"step_max_tokens {STEP_MAX_TOKENS}, step delimiter a newline, at most 12 steps |\n"
        f"| step prompt | {STEP_PROMPT} |\n"
        f"| machine | {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"load average at start {os.getloadavg()[0]:.2f}; nothing else of this benchmark running |\n",
        flush=True,
    )
    rows: list[Row] = []
    async with LocalPolicy.from_path(args.model, max_batch=64, threads=THREADS) as policy:
        for config in configs():
            if args.only and not any(o in config.label for o in args.only):
                continue
            row, episodes = await run(policy, config, prompted if config.system else bare, args.concurrency)
            if config.label.startswith("best-of-4"):
                agree = await majority(episodes, ReasoningGymVerifier())
                rows.append(Row(f"{row.label}: majority", agree, row.tokens, row.steps, row.one_step, 0.0, row.failed))
                row.label = f"{row.label}: pass@4 (oracle)"
            rows.append(row)
            print(f"  {row.label:44s} acc {row.accuracy:6.1%} tokens {row.tokens:7,.0f} {row.seconds:5.0f}s",
                  file=sys.stderr, flush=True)  # fmt: skip
    print("| config | accuracy | gen. tokens/task | steps/solution | one-step episodes | failed | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r.label} | {100 * r.accuracy:.1f} % | {r.tokens:,.0f} | {r.steps:.1f} | {100 * r.one_step:.0f} % "
            f"| {r.failed} | {r.seconds:.0f} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="basic_arithmetic", help="reasoning-gym dataset")
    parser.add_argument("--config", default=json.dumps(FAMILY_CONFIG), help="the dataset's config (JSON)")
    parser.add_argument("--tasks", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--model", default="smollm2-135m", help="checkpoint directory or a fetched model's name")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--only", nargs="*", help="run only configs whose label contains one of these")
    anyio.run(main, parser.parse_args())
