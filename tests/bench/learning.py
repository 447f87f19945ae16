"""Benchmark of the learners: the same start, the same wall-clock budget, the same held-out sets.

Run: ``python tests/bench/learning.py [--minutes 15] [--rows control,expert_iteration,grpo,...]``.
Prints Markdown tables (configuration first) and writes ``docs/learning_curves.png``.

Every row starts from ``bundled-weak`` and trains for ``--minutes`` of wall time on 3-4-step
tiny-domain problems, one row after the other in this process (nothing else of this
benchmark runs beside a row):

- ``control``: supervised fine-tuning on the domain's own ground-truth solutions (no
  search, no model samples): the imitation baseline, at the rate and batch of the
  expert-iteration config;
- ``expert_iteration``: ``configs/expert_iteration.yaml`` (verify-and-backtrack as the
  expert, verified paths behaviour-cloned online);
- ``grpo``: ``configs/grpo.yaml`` (best-of-8 groups, outcome advantages, PPO-clip against
  the engine's behaviour log-probs);
- ``grpo_process``: ``configs/grpo_process.yaml`` (the same with the rule verifier's step
  scores in the advantages);
- ``grpo_first_token``: ``configs/grpo_first_token.yaml`` (first-error credit placed on
  the first wrong token the rule verifier locates, ``locate_errors``);
- ``ppo``: ``configs/ppo.yaml`` (a value head, outcome and step rewards on tokens, GAE);
- ``step_dpo``: ``configs/step_dpo.yaml`` (verify-and-backtrack's accepted and rejected
  sibling steps, and verified vs failed solutions, trained by DPO against the start);
- ``NAME+key=value+...``: a config row with overrides (``grpo+learner.lr=5e-5``), so a
  variant is measured in the same invocation as the rows it is compared with;
- ``trl_grpo``: TRL's ``GRPOTrainer`` on the same start, rewards (exact match of the
  ``Answer:`` line, plus the share of step lines the rule verifier accepts: the outcome
  and process rewards of ``grpo_process``, summed), group size and sampling temperature,
  generation by ``model.generate`` (TRL's path without vLLM).

- ``on_policy_distill``: ``configs/on_policy_distill.yaml`` (the student samples, the
  ``bundled`` checkpoint scores its tokens; a *teacher* row, apart from the rows that
  learn from nothing but a verifier).

A name given twice in ``--rows`` is run twice, and quoted with the spread of its 4-step
accuracy.

Held-out: every training set is drawn from the tiny domain's ``train`` split and every
held-out set from its ``heldout`` split (a fixed tenth of the problem space), and the
benchmark counts, per row, the held-out problems it trained on (0 expected). Final
figures: greedy pass@1 of the weights a row publishes (its EMA where the learner keeps
one, the weights its curve evaluates) on 300 fresh 3-step and 300 fresh 4-step held-out problems
(seed 4242), at the start and at the end of every row with the same function. Curves:
greedy pass@1 on 300 mixed 3-4-step held-out problems (seed 10000, with the 4-step share
reported too) every ``EVAL_SECONDS`` of the row's own time (the loop evaluates in the
background on its own engine; the control and TRL pause for it). Each row's budget
starts once its start is measured, as the loop's does.

Columns: 3-/4-step accuracy, the time to reach ``START_SEARCH`` (what the start reaches
only with verify-and-backtrack@16) on the mixed curve, the time to 80 % on the 4-step
share of the curve, optimizer steps (of which idle replay), machine use (model FLOP/s
from counted tokens: 2 per parameter for every token the engine prefilled or sampled, 6
for every token a learner step processed) and its ratio to the control's, generated
tokens per training example, new examples per second, learner utilisation, staleness.
The rows are also written, merged with the rows of invocations at other budgets, to
``docs/results/learning.json``; the curves against wall time and against optimizer steps
to ``--plot``.

Targets (issue): greedy on the mixed held-out set >= 63.7 % within 15 minutes without
ground truth; 4-step >= 80 % within 30 minutes without ground truth; the loop's machine
use >= 0.8x the control's; a search-based row beats TRL's GRPOTrainer given the same
rewards at equal wall time.
"""

# ruff: noqa: T201  (a benchmark script: it prints its tables)
from __future__ import annotations

import argparse
import json
import os
import platform
import random
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
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from learners import Evaluator, Example, SFTLearner  # noqa: E402
from runtime.app.build import build_verifiers  # noqa: E402
from runtime.app.config import load_config  # noqa: E402
from runtime.app.learning import build_loop  # noqa: E402
from runtime.policy.checkpoints import resolve_checkpoint  # noqa: E402
from runtime.policy.local import LocalPolicy  # noqa: E402
from runtime.tiny.domain import generate_problem, solution_steps  # noqa: E402
from runtime.tiny.policy_format import evaluate_greedy  # noqa: E402
from runtime.tiny.tasks import TinyTasks  # noqa: E402

CONFIGS = {
    "expert_iteration": "expert_iteration.yaml",
    "on_policy_distill": "on_policy_distill.yaml",
    "grpo": "grpo.yaml",
    "grpo_process": "grpo_process.yaml",
    "grpo_first_token": "grpo_first_token.yaml",
    "ppo": "ppo.yaml",
    "step_dpo": "step_dpo.yaml",
}
HELD_OUT = TinyTasks(size=300, steps=[3, 4], seed=10_000, split="heldout")
TRAIN_SPLIT = ["tasks.split=train", "learner.eval.tasks.split=heldout"]  # every loop row, whatever its config
START_SEARCH = 0.637  # bundled-weak's own verify-and-backtrack@16 accuracy on 3-4-step problems (800 tasks)
EVAL_SECONDS = 60.0  # every row evaluates this often (the loop in the background, control and TRL in their own time)


def final_accuracy(model: Any, tokenizer: Any) -> dict[str, float]:
    torch.set_num_threads(2)
    acc = evaluate_greedy(model.eval(), tokenizer, per_steps=300, seed=4242, min_steps=3, max_steps=4, split="heldout")
    return {"3": acc["3"], "4": acc["4"]}


def published(learner: Any) -> Any:
    """The model a learner publishes (its EMA, where it keeps one): what its curve evaluated."""
    model = AutoModelForCausalLM.from_config(learner.policy_config(), dtype=torch.float32)
    model.load_state_dict(learner.weights(), strict=False)
    return model


def start_model() -> tuple[Any, Any]:
    directory = resolve_checkpoint("bundled-weak")
    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32), AutoTokenizer.from_pretrained(
        directory
    )


def evaluator(tokenizer: Any, model: Any) -> Evaluator:
    config = load_config(ROOT / "configs" / "grpo.yaml")
    return Evaluator(
        LocalPolicy(AutoModelForCausalLM.from_config(model.config, dtype=torch.float32), tokenizer, name="eval"),
        HELD_OUT.build(),
        build_verifiers(config),
        config.sampling,
        None,
    )


def run_loop(name: str, minutes: float, store: Path) -> dict[str, Any]:
    """Row ``name``: a config's name, optionally with overrides (``grpo+learner.lr=5e-5``)."""
    base, *overrides = name.split("+")
    slug = store.stem  # one per row of the invocation: a row run twice gets its own run id and checkpoint
    config = load_config(
        ROOT / "configs" / CONFIGS[base],
        [f"run_id=bench-{slug}", f"store.path={store}", f"learner.max_minutes={minutes}",
         f"learner.eval.every_seconds={EVAL_SECONDS}", "learner.eval.strategy=false",
         f"learner.checkpoint={store.parent / (slug + '.pt')}", *TRAIN_SPLIT, *overrides],
    )  # fmt: skip
    assert config.learner is not None and config.learner.eval is not None

    async def main() -> Any:
        async with build_loop(config) as loop:
            stats = await loop.run(config.tasks.build())
            return loop, stats

    started = time.monotonic()
    loop, stats = anyio.run(main)
    wall = time.monotonic() - started
    learner = loop.learner
    s = stats.as_dict()
    per_version = config.learner.steps_per_version
    return {
        "row": name,
        "final": final_accuracy(published(learner), learner.tokenizer),
        "curve": [point(p["wall_time"], p, p.get("steps", p["version"] * per_version)) for p in stats.curve],
        "episodes": stats.episodes,
        "steps": stats.steps,
        "utilisation": s["learner utilisation"],
        "staleness": dict(sorted(stats.staleness.items())),
        "truncated": int(stats.learner_counts.get("truncated_tokens", 0)),
        "examples": stats.examples,
        "replay_steps": stats.replay_steps,
        "flops": stats.model_flops,
        "tokens_per_example": stats.generated_tokens / max(1, stats.examples),
        "train_questions": {t.prompt for t in config.tasks.build()},
        "ground_truth": False,
        "teacher": "teacher" in type(config.learner).model_fields,
        "wall": wall,
    }


def point(wall: float, metrics: dict[str, Any], steps: int) -> dict[str, Any]:
    """A curve point: wall time, mixed and 4-step greedy pass@1, optimizer steps."""
    return {"t": wall, "acc": metrics["greedy_pass@1"], "acc4": metrics.get("greedy_pass@1/4"), "steps": steps}


def ground_truth_examples(rng: random.Random, n: int, seen: set[str] | None = None) -> list[Example]:
    out = []
    for _ in range(n):
        p = generate_problem(rng, rng.choice([3, 4]), "train")
        if seen is not None:
            seen.add(p.question)
        text = "\n".join([*solution_steps(p), f"Answer: {p.answer}"])
        out.append(Example([{"role": "user", "content": p.question}], text, ("gt", p.question, 0)))
    return out


def run_control(minutes: float) -> dict[str, Any]:
    """SFT on ground-truth solutions at expert iteration's rate and batch, for the same time."""
    spec = load_config(ROOT / "configs" / "expert_iteration.yaml").learner
    assert spec is not None
    model, tokenizer = start_model()
    learner = SFTLearner(model, tokenizer, spec)
    ev = evaluator(tokenizer, model)
    rng = random.Random(0)
    curve: list[dict[str, Any]] = []
    seen: set[str] = set()
    processed = 0
    started = time.monotonic()

    async def evaluate() -> None:
        metrics = await ev.evaluate(learner.weights(), learner.steps)
        curve.append(point(time.monotonic() - started, metrics, learner.steps))

    async def main() -> None:
        nonlocal started, processed
        await evaluate()
        # As in the loop, the budget starts once the start is measured.
        started, curve[0]["t"] = time.monotonic(), 0.0
        last = time.monotonic()
        while time.monotonic() - started < minutes * 60:
            result = await learner.update(ground_truth_examples(rng, spec.batch_examples, seen))
            processed += int(result.metrics.get("processed", result.tokens))
            if time.monotonic() - last >= EVAL_SECONDS:
                await evaluate()
                last = time.monotonic()
        await evaluate()
        await ev.aclose()

    anyio.run(main)
    wall = time.monotonic() - started
    return {
        "row": "control", "final": final_accuracy(published(learner), tokenizer), "curve": curve,
        "episodes": 0, "steps": learner.steps, "utilisation": learner.busy_seconds / wall, "staleness": {},
        "truncated": 0, "examples": learner.steps * spec.batch_examples, "wall": wall, "replay_steps": 0,
        "flops": 6 * sum(p.numel() for p in learner.model.parameters()) * processed / wall,
        "tokens_per_example": 0.0, "train_questions": seen, "ground_truth": True, "teacher": False,
    }  # fmt: skip


def run_trl_grpo(minutes: float) -> dict[str, Any]:
    """TRL's GRPOTrainer on the same start, reward, group size and temperature."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    config = load_config(ROOT / "configs" / "grpo.yaml")
    spec = config.learner
    assert spec is not None
    model, tokenizer = start_model()
    tasks = TinyTasks(size=20_000, steps=[3, 4], seed=1, split="train").build()
    data = Dataset.from_list([
        {"prompt": [{"role": "user", "content": t.prompt or ""}], "answer": t.answer,
         "expression": t.metadata["expression"]}
        for t in tasks
    ])  # fmt: skip

    def reward(completions: list[Any], answer: list[str], **_: Any) -> list[float]:
        out = []
        for completion, want in zip(completions, answer, strict=True):
            text = completion[0]["content"] if isinstance(completion, list) else str(completion)
            lines = [ln for ln in text.splitlines() if ln.strip().startswith("Answer:")]
            out.append(float(bool(lines) and lines[-1].split(":", 1)[1].strip() == want))
        return out

    def process(completions: list[Any], expression: list[str], **_: Any) -> list[float]:
        """The share of a completion's step lines the rule verifier accepts (the process
        reward of the GRPO rows: ``tiny_rule`` over each step given the ones before)."""
        from runtime.tiny.domain import check_step, remaining_after

        out = []
        for completion, start in zip(completions, expression, strict=True):
            text = completion[0]["content"] if isinstance(completion, list) else str(completion)
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            left, accepted = start, 0
            for line in lines:
                if check_step(left, line)[0] == 1.0:
                    accepted += 1
                    left = remaining_after(left, line)
            out.append(accepted / len(lines) if lines else 0.0)
        return out

    ev = evaluator(tokenizer, model)
    curve: list[dict[str, Any]] = []
    started = [time.monotonic()]
    trainer: Any = None

    def evaluate() -> None:
        metrics = anyio.run(ev.evaluate, {k: v.detach().clone() for k, v in model.state_dict().items()}, 0)
        steps = trainer.state.global_step if trainer is not None else 0
        curve.append(point(time.monotonic() - started[0], metrics, steps))

    last = [time.monotonic()]

    class Budget(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            if time.monotonic() - last[0] >= EVAL_SECONDS:
                evaluate()
                last[0] = time.monotonic()
            if time.monotonic() - started[0] >= minutes * 60:
                control.should_training_stop = True
            return control

    n = load_config(ROOT / "configs" / "grpo.yaml").strategy.n  # type: ignore[attr-defined]
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=2 * n, num_generations=n,
        max_completion_length=config.sampling.max_tokens, temperature=config.sampling.temperature,
        learning_rate=spec.lr, max_steps=100_000, logging_steps=10_000, save_strategy="no", report_to=[],
        use_cpu=True, bf16=False, beta=0.0, seed=0, gradient_checkpointing=False, disable_tqdm=True,
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=model, reward_funcs=[reward, process], args=args, train_dataset=data, processing_class=tokenizer,
        callbacks=[Budget()],
    )  # fmt: skip
    evaluate()
    started[0], curve[0]["t"], last[0] = time.monotonic(), 0.0, time.monotonic()
    trainer.train()
    evaluate()
    anyio.run(ev.aclose)
    wall = time.monotonic() - started[0]
    return {
        "row": "trl_grpo", "final": final_accuracy(model, tokenizer), "curve": curve,
        "episodes": trainer.state.global_step * 2, "steps": trainer.state.global_step, "utilisation": 1.0,
        "staleness": {}, "truncated": 0, "examples": trainer.state.global_step * 2 * n, "wall": wall,
        "replay_steps": 0, "flops": None, "tokens_per_example": None, "train_questions": {t.prompt for t in tasks},
        "ground_truth": False, "teacher": False,
    }  # fmt: skip


def reached(curve: list[dict[str, Any]], target: float, key: str = "acc") -> float | None:
    """Wall time at which ``curve`` first reached ``target`` on ``key`` (None: never)."""
    return next((p["t"] for p in curve if p[key] is not None and p[key] >= target), None)


def overlap(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Held-out problems (the curve's set and the final 3-/4-step sets) that a row trained on."""
    import random as _random

    from runtime.tiny.domain import generate_problem as draw

    rng = _random.Random(4242)
    final = {draw(rng, steps, "heldout").question for steps in (3, 4) for _ in range(300)}
    held = final | {t.prompt for t in HELD_OUT.build()}
    return {r["row"]: len(held & r["train_questions"]) for r in rows}


def summarise(results: list[dict[str, Any]], minutes: float) -> list[dict[str, Any]]:
    """One JSON row per row name (repeated rows averaged, with the 4-step spread)."""
    control = next((r for r in results if r["row"] == "control"), None)
    base = control["flops"] if control else None
    out = []
    for name in dict.fromkeys(r["row"] for r in results):
        runs = [r for r in results if r["row"] == name]
        acc4 = [r["final"]["4"] for r in runs]
        times = [reached(r["curve"], START_SEARCH) for r in runs]
        t80 = [reached(r["curve"], 0.8, "acc4") for r in runs]
        flops = [r["flops"] for r in runs if r["flops"] is not None]
        out.append({
            "name": name, "minutes": int(round(minutes)), "ground_truth": runs[0]["ground_truth"],
            "teacher": runs[0]["teacher"], "acc3": sum(r["final"]["3"] for r in runs) / len(runs),
            "acc4": sum(acc4) / len(runs), "runs": len(runs), "spread4": max(acc4) - min(acc4),
            "seconds_to_start_search": None if None in times else sum(times) / len(times),  # type: ignore[arg-type]
            "seconds_to_80": None if None in t80 else sum(t80) / len(t80),  # type: ignore[arg-type]
            "optimizer_steps": round(sum(r["steps"] for r in runs) / len(runs)),
            "machine_use_vs_control": (sum(flops) / len(flops) / base) if flops and base else None,
        })  # fmt: skip
    return out


def write_json(rows: list[dict[str, Any]], path: Path) -> None:
    """Merge ``rows`` into ``path``: a row of the same name and budget is replaced, every
    other row (other budgets, other rows of this budget) is kept."""
    data: dict[str, Any] = {"rows": [], "smollm2": None}
    if path.exists():
        data = json.loads(path.read_text())
    new = {(r["name"], r["minutes"]) for r in rows}
    data["rows"] = [r for r in data.get("rows", []) if (r["name"], r["minutes"]) not in new] + rows
    data.setdefault("smollm2", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget of each row")
    parser.add_argument(
        "--rows", default="control,expert_iteration,grpo_process,step_dpo,on_policy_distill,trl_grpo",
        help="comma-separated; a name given twice is run twice and quoted with its spread",
    )  # fmt: skip
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "learning_curves.png", help="PNG of all curves")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "results" / "learning.json", help="rows as JSON")
    parser.add_argument(
        "--raw", type=Path, default=None,
        help="append each finished row's full result (curve included) to this JSON-lines file as it ends",
    )  # fmt: skip
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    rows = args.rows.split(",")
    print("| setting | value |\n|---|---|")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    print(f"| machine | {machine}, python {platform.python_version()} |")
    print(f"| budget | {args.minutes} min per row, rows one after the other, nothing else of this benchmark running |")
    print(f"| load average at start | {', '.join(f'{x:.2f}' for x in os.getloadavg())} |")
    model, tokenizer = start_model()
    start = final_accuracy(model, tokenizer)
    print(
        f"| start (bundled-weak), greedy pass@1 3 / 4 steps | {100 * start['3']:.1f} % / {100 * start['4']:.1f} % |\n"
    )
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, row in enumerate(rows):
            t0 = time.monotonic()
            try:
                if row == "control":
                    result = run_control(args.minutes)
                elif row == "trl_grpo":
                    result = run_trl_grpo(args.minutes)
                else:
                    result = run_loop(row, args.minutes, Path(tmp) / f"row{k}.db")
            except Exception as exc:  # one row failing does not lose the others
                print(f"<!-- {row} failed: {type(exc).__name__}: {exc} -->", flush=True)
                continue
            results.append(result)
            if args.raw is not None:
                with args.raw.open("a") as raw:
                    raw.write(json.dumps(result, default=str) + "\n")
            final = result["final"]
            print(
                f"<!-- {row}: {time.monotonic() - t0:.0f} s, 3-step {100 * final['3']:.1f} %, "
                f"4-step {100 * final['4']:.1f} %, load average {os.getloadavg()[0]:.2f} -->",
                flush=True,
            )
    seen = overlap(results)
    print("| row | held-out problems it trained on |\n|---|---|")
    for name, n in seen.items():
        print(f"| {name} | {n} |")
    summary = summarise(results, args.minutes)
    control = next((r for r in results if r["row"] == "control"), None)
    print(
        f"\n| row | 3-step | 4-step | runs (4-step spread) | to {100 * START_SEARCH:.1f} % mixed | to 80 % 4-step "
        "| optimizer steps (replayed) | machine use (GFLOP/s, vs control) | generated tokens / example "
        "| new examples / s | learner utilisation | staleness |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in summary:
        runs = [r for r in results if r["row"] == row["name"]]
        r = runs[-1]

        def secs(x: float | None) -> str:
            return "-" if x is None else f"{x:.0f} s"

        flops = [x["flops"] for x in runs if x["flops"] is not None]
        use = "-" if not flops else f"{sum(flops) / len(flops) / 1e9:.0f}"
        if row["machine_use_vs_control"] is not None:
            use += f" ({row['machine_use_vs_control']:.2f}x)"
        tpe = "-" if r["tokens_per_example"] is None else f"{r['tokens_per_example']:.0f}"
        print(
            f"| {row['name']} | {100 * row['acc3']:.1f} % | {100 * row['acc4']:.1f} % "
            f"| {row['runs']} ({100 * row['spread4']:.1f}) | {secs(row['seconds_to_start_search'])} "
            f"| {secs(row['seconds_to_80'])} | {row['optimizer_steps']} ({r['replay_steps']}) | {use} | {tpe} "
            f"| {r['examples'] / r['wall']:.1f} | {100 * r['utilisation']:.0f} % | {r['staleness']} |"
        )
    trl = next((r for r in results if r["row"] == "trl_grpo" and r["curve"]), None)
    if trl is not None:
        goal, trl_time = trl["curve"][-1]["acc"], trl["wall"]
        print(f"\nTRL GRPOTrainer's final held-out accuracy: {100 * goal:.1f} % after {trl_time:.0f} s")
        for r in results:
            if r is not trl:
                when = reached(r["curve"], goal)
                ratio = "-" if when is None else f"{when:.0f} s ({when / trl_time:.2f}x)"
                print(f"- {r['row']}: reached it at {ratio}")
    if control is not None and control["curve"]:
        print(f"\ncontrol's final mixed held-out accuracy: {100 * control['curve'][-1]['acc']:.1f} %")
    print("\n| curve (mixed held-out greedy pass@1, 4-step, at wall time / optimizer step) | points |\n|---|---|")
    for r in results:
        pts = ", ".join(
            f"{100 * p['acc']:.1f} % / {100 * (p['acc4'] or 0):.1f} % ({p['t']:.0f} s, {p['steps']})"
            for p in r["curve"]
        )
        print(f"| {r['row']} | {pts} |")
    write_json(summary, args.json)
    print(f"\nrows written to {args.json}; curves to {args.plot}")
    plot(results, args.plot)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_time, by_step) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for r in results:
        if r["curve"]:
            acc = [100 * p["acc"] for p in r["curve"]]
            (line,) = by_time.plot([p["t"] / 60 for p in r["curve"]], acc, marker="o", label=r["row"])
            by_step.plot([p["steps"] for p in r["curve"]], acc, marker="o", color=line.get_color())
    by_time.axhline(100 * START_SEARCH, color="grey", ls="--", lw=1, label="start's verify-and-backtrack@16")
    by_step.axhline(100 * START_SEARCH, color="grey", ls="--", lw=1)
    by_time.set_xlabel("wall time (min)")
    by_step.set_xlabel("optimizer steps")
    by_time.set_ylabel("held-out greedy pass@1, 3-4 steps (%)")
    by_time.legend(fontsize=8)
    for ax in (by_time, by_step):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
