"""Benchmark: search on a real chat model, ``configs/smollm2_search.yaml``.

Run: ``python tests/bench/smollm2_search.py [--tasks 60] [--config configs/smollm2_search.yaml]
[--set key=value ...]`` (the model first: ``searchlearn fetch smollm2-135m``). Prints a
Markdown table, configuration first.

The config samples 8 whole solutions a task (best-of-8) from SmolLM2-135M-Instruct on a
reasoning-gym family, scored by reasoning-gym against the reference answer. One run of
it, plus a greedy run of the same tasks, gives every row (the 8 samples are the same for
all selections):

- greedy pass@1 (temperature 0, one solution);
- sampled pass@1: the mean accuracy of the 8 samples;
- majority@8: the most frequent answer (self-consistency; the config's selection);
- best-of-8 picked by a verifier that does not know the answer:
  - the policy's own confidence: the highest mean token log-prob;
  - the policy as its own judge (LLM-as-judge, a one-line ``Score: N/10`` verdict per
    sample; the highest score wins, ties go to the majority answer);
- pass@8 (oracle): any of the 8 right, what a perfect verifier could pick.

Columns: accuracy, a 95 % Wilson interval (over tasks; over samples for sampled
pass@1), generated tokens per task (the judge's included in its row), wall time.
"""

# ruff: noqa: T201  (a benchmark script: it prints its table)

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import torch  # noqa: E402

from learners.examples import path_text  # noqa: E402
from runtime.app.build import build_runtime  # noqa: E402
from runtime.app.config import load_config  # noqa: E402
from runtime.app.parts import build_tasks, torch_consumers  # noqa: E402
from runtime.core.threads import thread_share  # noqa: E402
from runtime.rewards.judge import LLMJudge  # noqa: E402
from runtime.rewards.outcome import ReasoningGymVerifier  # noqa: E402

JUDGE_TEMPLATE = (
    "Problem:\n{question}\n\nProposed solution:\n{solution}\n\nIs the final answer {answer} correct? "
    "Reply with one line: Score: N/10 (10: certainly correct, 0: certainly wrong)."
)
JUDGE_TOKENS = 16


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % interval of a proportion k / n."""
    if n == 0:
        return 0.0, 0.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def leaves(episode: Any) -> list[Any]:
    """The finished samples of an episode."""
    return [n for n in episode.leaves if n.terminal]


def confidence(leaf: Any) -> float:
    lps = leaf.logprobs or []
    return sum(lps) / len(lps) if lps else -math.inf


async def stream(config: Any, after: Any = None) -> tuple[list[Any], float, Any]:
    """Episodes of a config's run, its wall time, and what ``after(episodes, policy)``
    returned (run while the run's policy is still open)."""
    started = time.perf_counter()
    async with build_runtime(config) as runtime:
        episodes = [ep async for ep in runtime.stream(build_tasks(config))]
        seconds = time.perf_counter() - started
        extra = await after(episodes, runtime.policy) if after is not None else None
    return episodes, seconds, extra


async def judged(episodes: list[Any], policy: Any, concurrency: int) -> tuple[list[list[Any]], int, int, float]:
    """The policy's own verdict on every finished sample: scores per episode (in leaf
    order), judge tokens, unparseable verdicts, wall time."""
    judge = LLMJudge(policy, outcome_template=JUDGE_TEMPLATE, max_tokens=JUDGE_TOKENS)
    scores: list[list[Any]] = [[None] * len(leaves(ep)) for ep in episodes]
    limiter = anyio.CapacityLimiter(concurrency)
    started = time.perf_counter()

    async def one(i: int, j: int, ep: Any, leaf: Any) -> None:
        async with limiter:
            scores[i][j] = await judge.score(ep.task, leaf.answer, path_text(ep, leaf, ""))

    async with anyio.create_task_group() as tg:
        for i, ep in enumerate(episodes):
            for j, leaf in enumerate(leaves(ep)):
                if leaf.answer is not None:
                    tg.start_soon(one, i, j, ep, leaf)
    flat = [s for row in scores for s in row if s is not None]
    tokens = sum(s.completion_tokens for s in flat)
    unread = sum((s.explanation or "").startswith("unparseable") for s in flat)
    return scores, tokens, unread, time.perf_counter() - started


async def main(args: argparse.Namespace) -> None:
    store = Path(tempfile.mkdtemp(prefix="smollm2-search-")) / "runs.db"
    overrides = [f"tasks.size={args.tasks}", f"store.path={store}", *args.set]
    config = load_config(args.config, overrides)
    n = config.strategy.n
    threads = config.policy.threads or thread_share(torch_consumers(config))
    print(
        "| setting | value |\n|---|---|\n"
        f"| config | {args.config}, overrides {overrides[2:] or 'none'} |\n"
        f"| model | {config.policy.path} (LocalPolicy, {threads} torch threads) |\n"
        f"| tasks | {args.tasks} reasoning-gym `{config.tasks.name}` {config.tasks.config} "
        f"(seed {config.tasks.seed}) |\n"
        f"| sampling | best-of-{n} at temperature {config.sampling.temperature}, max_tokens "
        f"{config.sampling.max_tokens}; greedy row at temperature 0 |\n"
        f"| judge | the same model, prompt {JUDGE_TEMPLATE!r}, {JUDGE_TOKENS} tokens |\n"
        f"| machine | {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"load average at start {os.getloadavg()[0]:.2f}; nothing else of this benchmark running |\n",
        flush=True,
    )
    greedy_config = load_config(args.config, [*overrides, "run_id=greedy", "strategy.n=1", "sampling.temperature=0"])
    greedy, greedy_s, _ = await stream(greedy_config)
    print(f"  greedy: {greedy_s:.0f} s", file=sys.stderr, flush=True)
    concurrency = config.scheduler.concurrency * n
    episodes, sampled_s, (scores, judge_tokens, unparseable, judge_s) = await stream(
        config, lambda eps, policy: judged(eps, policy, concurrency)
    )
    print(f"  best-of-{n}: {sampled_s:.0f} s, judge {judge_s:.0f} s", file=sys.stderr, flush=True)

    verifier = ReasoningGymVerifier()
    rows: dict[str, list[float]] = {k: [] for k in ("sampled", "majority", "confidence", "judge", "oracle")}
    for ep, verdicts in zip(episodes, scores, strict=True):
        samples = leaves(ep)
        right = [
            leaf.answer is not None and (await verifier.score(ep.task, leaf.answer, leaf.answer)).value >= 1.0
            for leaf in samples
        ]
        rows["sampled"].append(sum(right) / max(1, len(right)))
        rows["oracle"].append(any(right))
        done = [j for j, leaf in enumerate(samples) if leaf.answer is not None]
        if not done:
            for key in ("majority", "confidence", "judge"):
                rows[key].append(False)
            continue
        counts = Counter(samples[j].answer for j in done)
        top = counts.most_common(1)[0][0]
        rows["majority"].append(any(right[j] for j in done if samples[j].answer == top))
        rows["confidence"].append(right[max(done, key=lambda j: confidence(samples[j]))])
        rows["judge"].append(right[max(done, key=lambda j: (verdicts[j].value, counts[samples[j].answer]))])
    tasks = len(episodes)
    tokens = sum(ep.usage.completion_tokens for ep in episodes) / tasks
    greedy_right = [float((ep.reward or 0.0) >= 1.0) for ep in greedy]
    greedy_tokens = sum(ep.usage.completion_tokens for ep in greedy) / len(greedy)

    def row(values: list[float], per: int = 1) -> tuple[int, int]:  # right and trials
        return round(sum(values) * per), len(values) * per

    table = [
        ("greedy pass@1", row(greedy_right), greedy_tokens, greedy_s),
        (f"sampled pass@1 (mean of {n})", row(rows["sampled"], n), tokens / n, sampled_s / n),
        (f"majority@{n}", row(rows["majority"]), tokens, sampled_s),
        (f"best-of-{n}, own confidence (mean log-prob)", row(rows["confidence"]), tokens, sampled_s),
        (f"best-of-{n}, own judge", row(rows["judge"]), tokens + judge_tokens / tasks, sampled_s + judge_s),
        (f"pass@{n} (oracle)", row(rows["oracle"]), tokens, sampled_s),
    ]
    print("| selection | accuracy | 95 % interval | gen. tokens/task | wall s |")
    print("|---|---:|---:|---:|---:|")
    for label, (k, trials), toks, seconds in table:
        low, high = wilson(k, trials)
        print(
            f"| {label} | {100 * k / trials:.1f} % | {100 * low:.0f}-{100 * high:.0f} % | {toks:,.0f} | {seconds:.0f} |"
        )
    print(f"\njudge: {unparseable} of {sum(len(leaves(ep)) for ep in episodes)} verdicts unparseable (scored 0)")
    failed = sum(ep.status == "failed" for ep in episodes + greedy)
    print(f"failed episodes: {failed}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "smollm2_search.yaml"))
    parser.add_argument("--tasks", type=int, default=60)
    parser.add_argument("--set", action="append", default=[], help="override a config field: key=value")
    anyio.run(main, parser.parse_args())
