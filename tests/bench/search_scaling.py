"""Benchmark: the scaling of search. Accuracy against generated tokens per task for
solution-level and step-level strategies on the tiny domain.

Run: ``python tests/bench/search_scaling.py [--tasks N] [--quick] [--model DIR]``.
Prints a Markdown table, configuration first, writes it to
``/tmp/bench/search_scaling.txt`` and draws ``docs/search_scaling.png`` (accuracy vs
generated tokens, log x).

Workload: a fixed held-out set of 3- and 4-step problems of the tiny arithmetic
domain (``tiny_tasks(N, steps=[3, 4], seed=HELD_OUT_SEED)``, half each; the training
data of the bundled policy comes from other seeds), the bundled policy served in
process by ``LocalPolicy`` (continuous batching, prefix KV cache), temperature 0.8,
every config run through the real ``Runtime`` with all tasks in flight at once.

Configs (budget in samples-equivalent: about one full solution's worth of sampling):
- ``chain_of_thought``: one step per call (budget 1);
- ``best_of_n``: N full solutions, the one the rule verifier scores best (min over its
  steps); ``self_consistency``: the majority vote of the same N solutions (scored on
  the best-of-N run's samples, so its tokens are best-of-N's: sampling is identical,
  only the selection differs, and the benchmark does not pay for it twice); N = 4, 16, 64;
- ``beam (rule)``: width x expansions = 2x2, 4x4, 8x8 with the rule verifier;
- ``beam (MC value)``: 2x2 and 4x4 scored by the Monte-Carlo value of each candidate
  (2 rollouts; rollout tokens are counted as generated tokens; it uses the reference
  answer, so it is an oracle-assisted baseline, not a deployable test-time method);
- ``dvts``: N/4 subtrees x 4 expansions, N = 4, 16, 64;
- ``mcts``: PUCT, process value (rule verifier), N simulations x 3 expansions, N = 8, 16
  (a solution is 5-6 steps deep, so fewer simulations rarely reach an answer and the
  last stretch is completed unsearched);
- ``verify_backtrack``: rule verifier, 3 retries per step, N retries per episode,
  N = 4, 16, 64; plus N = 16 with reflections (the verifier's explanation written
  into the prefix before resampling);
- ``self_refine``: process feedback from the rule verifier, 1 and 3 rounds (budget =
  attempts);
- ``(hints)`` rows: the rule verifier explains a rejected step with the correct one,
  in the ``check: ... is wrong, ...`` form of the policy's training traces
  (``TinyStepVerifier(hints=True)``), so reflections and revisions carry a correction.

Columns: accuracy (exact match of the final answer), generated tokens per task
(policy completion tokens, verifier rollouts included), their ratio to
best-of-N@64's, prompt tokens per task, prefill tokens per task that the engine's
prefix cache saved (``engine.stats.prefill_requested - prefill_computed``), wall
time. Targets (checked and printed at the end): some step-level strategy matches
best-of-N@64's accuracy with <= 1/4 of its generated tokens; verify-and-backtrack
with the rule verifier >= 95 % on 3-4-step tasks.
"""

# ruff: noqa: T201, ASYNC240  (a benchmark script: it prints its tables and writes its files)

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import torch  # noqa: E402

from runtime.policy.local import LocalPolicy  # noqa: E402
from runtime.rewards.base import AnswerExtractor, ProcessVerifier  # noqa: E402
from runtime.rewards.mc_value import MonteCarloValue  # noqa: E402
from runtime.rewards.outcome import ExactMatch  # noqa: E402
from runtime.scheduling.scheduler import Runtime, SchedulerSettings  # noqa: E402
from runtime.search.context import Sampling, Verifiers  # noqa: E402
from runtime.tiny.tasks import tiny_tasks  # noqa: E402
from runtime.tiny.verifier import TinyStepVerifier  # noqa: E402
from strategies import (  # noqa: E402
    DVTS,
    MCTS,
    BeamSearch,
    BestOfN,
    ChainOfThought,
    SelfRefine,
    VerifyAndBacktrack,
)

HELD_OUT_SEED = 424242
TEMPERATURE = 0.8
MAX_TOKENS = 160
STEP_MAX_TOKENS = 48
THREADS = 2
OUT_TABLE = Path("/tmp/bench/search_scaling.txt")
OUT_PLOT = ROOT / "docs" / "search_scaling.png"
STEP_LEVEL = {
    "beam (rule)",
    "beam (MC value)",
    "dvts",
    "mcts",
    "verify_backtrack",
    "verify_backtrack+reflect",
    "verify_backtrack+reflect (hints)",
}


@dataclass
class Config:
    family: str
    budget: int
    make: Callable[[], Any]
    process: str | None = "rule"  # rule, mc, or None

    @property
    def label(self) -> str:
        return f"{self.family} @{self.budget}"


async def majority_row(row: Row, episodes: list[Any]) -> Row:
    """Self-consistency on a best-of-N run's samples: the most common answer of its
    leaves (ties to the earliest sample, as ``BestOfN(selection='majority')``)."""
    correct: dict[str, bool] = {}
    by_steps: dict[int, list[bool]] = {}
    for ep in episodes:
        answers = [_answer_on_path(ep, leaf) for leaf in ep.leaves]
        tally = Counter(a for a in answers if a is not None)
        best = max(range(len(answers)), key=lambda i: (tally[answers[i]] if answers[i] else 0, -i), default=None)
        answer = answers[best] if best is not None else None
        ok = (await ExactMatch().score(ep.task, answer, "")).value >= 1.0
        correct[ep.task.id] = ok
        by_steps.setdefault(ep.task.metadata["steps"], []).append(ok)
    return Row(
        config=Config("self_consistency", row.config.budget, lambda: None, None),
        accuracy=sum(correct.values()) / len(correct),
        accuracy_by_steps={k: sum(v) / len(v) for k, v in sorted(by_steps.items())},
        tokens=row.tokens,
        prompt_tokens=row.prompt_tokens,
        prefill_saved=row.prefill_saved,
        failed=row.failed,
        seconds=0.0,
    )


def _answer_on_path(ep: Any, node: Any) -> str | None:
    while node.parent is not None:
        if node.answer is not None:
            return str(node.answer)
        node = ep.nodes[node.parent]
    return None


@dataclass
class Row:
    config: Config
    accuracy: float
    accuracy_by_steps: dict[int, float]
    tokens: float
    prompt_tokens: float
    prefill_saved: float
    failed: int
    seconds: float


def configs(quick: bool) -> list[Config]:
    budgets = [4, 16] if quick else [4, 16, 64]
    out = [Config("chain_of_thought", 1, ChainOfThought, None)]
    for n in budgets:
        out.append(Config("best_of_n", n, lambda n=n: BestOfN(n=n, selection="process", aggregate="min")))
    for w in [2, 4] if quick else [2, 4, 8]:
        out.append(Config("beam (rule)", w * w, lambda w=w: BeamSearch(width=w, expansions=w)))
    for w in [2] if quick else [2, 4]:
        out.append(
            Config("beam (MC value)", w * w, lambda w=w: BeamSearch(width=w, expansions=w, aggregate="last"), "mc")
        )
    for n in budgets:
        out.append(Config("dvts", n, lambda n=n: DVTS(subtrees=max(1, n // 4), expansions=4)))
    for n in [8] if quick else [8, 16]:
        out.append(Config("mcts", n, lambda n=n: MCTS(simulations=n, expansions=3, seed=0)))
    for n in budgets:
        out.append(Config("verify_backtrack", n, lambda n=n: VerifyAndBacktrack(step_retries=3, episode_retries=n)))
    reflect = Config("verify_backtrack+reflect", 16, lambda: VerifyAndBacktrack(episode_retries=16, reflect=True))
    out.append(reflect)
    out.append(Config("verify_backtrack+reflect (hints)", 16, reflect.make, "rule_hints"))
    for rounds in [1] if quick else [1, 3]:
        make = lambda r=rounds: SelfRefine(rounds=r, feedback="process")  # noqa: E731
        out.append(Config("self_refine", rounds + 1, make))
        out.append(Config("self_refine (hints)", rounds + 1, make, "rule_hints"))
    return out


async def run_config(policy: LocalPolicy, config: Config, tasks: list[Any], concurrency: int) -> tuple[Row, list[Any]]:
    process: ProcessVerifier | None = None
    extractor = AnswerExtractor(["answer_line"])
    if config.process == "rule":
        process = TinyStepVerifier()
    elif config.process == "rule_hints":
        process = TinyStepVerifier(hints=True)
    elif config.process == "mc":
        process = MonteCarloValue(
            policy, rollouts=2, temperature=TEMPERATURE, max_tokens=MAX_TOKENS, extractor=extractor
        )
    verifiers = Verifiers(outcome=ExactMatch(), process=process, extractor=extractor, timeout=600)
    sampling = Sampling(temperature=TEMPERATURE, max_tokens=MAX_TOKENS, step_max_tokens=STEP_MAX_TOKENS, max_steps=12)
    stats = policy.engine.stats
    saved_before = stats.prefill_requested - stats.prefill_computed
    started = time.perf_counter()
    async with Runtime(
        policy,
        config.make(),
        verifiers=verifiers,
        sampling=sampling,
        settings=SchedulerSettings(concurrency=concurrency),
        run_id=config.label,
    ) as rt:
        episodes = [ep async for ep in rt.stream(tasks)]
    seconds = time.perf_counter() - started
    n = len(episodes)
    correct = {ep.task.id: (ep.reward or 0.0) >= 1.0 for ep in episodes}
    by_steps: dict[int, list[bool]] = {}
    for ep in episodes:
        by_steps.setdefault(ep.task.metadata["steps"], []).append(correct[ep.task.id])
    return Row(
        config=config,
        accuracy=sum(correct.values()) / n,
        accuracy_by_steps={k: sum(v) / len(v) for k, v in sorted(by_steps.items())},
        tokens=sum(ep.usage.completion_tokens for ep in episodes) / n,
        prompt_tokens=sum(ep.usage.prompt_tokens for ep in episodes) / n,
        prefill_saved=(stats.prefill_requested - stats.prefill_computed - saved_before) / n,
        failed=sum(ep.status == "failed" for ep in episodes),
        seconds=seconds,
    ), episodes


def margin(accuracy: float, n: int, z: float = 1.96) -> float:
    """Half-width of the 95 % normal interval of an accuracy over n tasks."""
    return z * math.sqrt(max(accuracy * (1 - accuracy), 0.25 / max(n, 1)) / max(n, 1))


def table(rows: list[Row], reference: Row | None, tasks: int) -> str:
    ref = f"vs BoN@{reference.config.budget}" if reference else "vs BoN"
    lines = [
        f"| config | budget | accuracy | ± 95 % | 3-step | 4-step | gen. tokens/task | {ref} | prompt tokens/task "
        "| prefill saved/task | failed | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{r.tokens / reference.tokens:.3f}" if reference else "-"
        by = r.accuracy_by_steps
        lines.append(
            f"| {r.config.family} | {r.config.budget} | {r.accuracy:.1%} | {100 * margin(r.accuracy, tasks):.1f} "
            f"| {by.get(3, 0):.0%} | {by.get(4, 0):.0%} "
            f"| {r.tokens:,.0f} | {ratio} | {r.prompt_tokens:,.0f} | {r.prefill_saved:,.0f} | {r.failed} "
            f"| {r.seconds:.0f} |"
        )
    return "\n".join(lines)


def verdicts(rows: list[Row], reference: Row | None) -> list[str]:
    out = []
    if reference is not None:
        cheap = [r for r in rows if r.config.family in STEP_LEVEL and r.tokens <= reference.tokens / 4]
        matching = [r for r in cheap if r.accuracy >= reference.accuracy]
        best = max(matching, key=lambda r: (r.accuracy, -r.tokens), default=None)
        if best is not None:
            out.append(
                f"Target 1 MET: {best.config.label} reaches {best.accuracy:.1%} ({reference.config.label}: "
                f"{reference.accuracy:.1%}) with {best.tokens / reference.tokens:.3f}x its generated tokens "
                f"({len(matching)} step-level configs qualify)."
            )
        else:
            top = max(cheap, key=lambda r: r.accuracy, default=None)
            detail = f"; best within 1/4 of its tokens: {top.config.label} {top.accuracy:.1%}" if top else ""
            out.append(f"Target 1 NOT MET: {reference.config.label} {reference.accuracy:.1%}{detail}.")
    vb = [r for r in rows if r.config.family == "verify_backtrack"]
    if vb:
        best = max(vb, key=lambda r: r.accuracy)
        status = "MET" if best.accuracy >= 0.95 else "NOT MET"
        every = ", ".join(f"@{r.config.budget}: {r.accuracy:.1%}" for r in vb)
        out.append(f"Target 2 {status}: verify-and-backtrack (rule verifier) {every} (target >= 95%).")
    return out


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.5))
    families: dict[str, list[Row]] = {}
    for r in rows:
        families.setdefault(r.config.family, []).append(r)
    markers = "osD^v<>ph*X"
    for i, (family, group) in enumerate(families.items()):
        group = sorted(group, key=lambda r: r.tokens)
        ax.plot(
            [r.tokens for r in group],
            [100 * r.accuracy for r in group],
            marker=markers[i % len(markers)],
            linestyle="--" if family not in STEP_LEVEL else "-",
            label=family,
        )
        for r in group:
            ax.annotate(str(r.config.budget), (r.tokens, 100 * r.accuracy), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens per task (log)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    low = min(100 * r.accuracy for r in rows)
    ax.set_ylim(max(0.0, low - 5), 101)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


async def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(THREADS)
    tasks = list(tiny_tasks(args.tasks, steps=[3, 4], seed=HELD_OUT_SEED))
    header = [
        "# Search scaling on the tiny domain",
        "",
        f"- tasks: {len(tasks)} held-out tiny-domain problems (3 and 4 steps, half each; seed {HELD_OUT_SEED})",
        f"- policy: {args.model} via LocalPolicy (max_batch {args.max_batch}, {THREADS} torch threads), "
        f"temperature {TEMPERATURE}, max_tokens {MAX_TOKENS}, step_max_tokens {STEP_MAX_TOKENS}",
        f"- all tasks of a config in flight at once (Runtime concurrency {args.concurrency}); outcome: exact match",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}",
        "",
    ]
    print("\n".join(header), flush=True)
    rows: list[Row] = []
    async with LocalPolicy.from_path(args.model, max_batch=args.max_batch, threads=THREADS) as policy:
        for config in configs(args.quick):
            if args.only and not any(o in config.label for o in args.only):
                continue
            row, episodes = await run_config(policy, config, tasks, args.concurrency)
            rows.append(row)
            if config.family == "best_of_n":
                rows.append(await majority_row(row, episodes))
            for r in rows[-2 if config.family == "best_of_n" else -1 :]:
                print(
                    f"  {r.config.label:32s} acc {r.accuracy:6.1%}  tokens {r.tokens:8,.0f}  {r.seconds:5.0f}s",
                    file=sys.stderr,
                    flush=True,
                )
    reference = next((r for r in rows if r.config.family == "best_of_n" and r.config.budget == 64), None)
    if reference is None:
        reference = max(
            (r for r in rows if r.config.family == "best_of_n"), key=lambda r: r.config.budget, default=None
        )
    order = ["chain_of_thought", "best_of_n", "self_consistency"]
    rows.sort(key=lambda r: order.index(r.config.family) if r.config.family in order else len(order))
    body = table(rows, reference, len(tasks))
    total = sum(r.seconds for r in rows)
    notes = [
        "",
        f"Reference for the ratio column: best-of-N@{reference.config.budget if reference else '-'} "
        "(rule-verifier selection). Step-level configs: " + ", ".join(sorted(STEP_LEVEL)) + ".",
        "beam (MC value) uses the reference answer in its rollouts (an oracle-assisted baseline).",
        f"Total wall time of the configs: {total:.0f} s.",
        "",
        *verdicts(rows, reference),
    ]
    text = "\n".join([*header, body, *notes]) + "\n"
    print(body)
    print("\n".join(notes))
    OUT_TABLE.parent.mkdir(parents=True, exist_ok=True)
    OUT_TABLE.write_text(text)
    if not args.no_plot:
        title = f"tiny domain, {len(tasks)} held-out 3-4-step tasks, {Path(args.model).name} policy"
        plot(rows, Path(args.plot), title)
        print(f"\nTable written to {OUT_TABLE}; plot to {args.plot}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20, help="held-out tasks, half 3-step, half 4-step (default 20)")
    parser.add_argument("--quick", action="store_true", help="smaller budgets, fewer configs")
    parser.add_argument("--model", default="bundled", help="policy checkpoint directory")
    parser.add_argument("--max-batch", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--only", nargs="*", help="run only configs whose label contains one of these")
    parser.add_argument("--plot", default=str(OUT_PLOT))
    parser.add_argument("--no-plot", action="store_true")
    anyio.run(main, parser.parse_args())
