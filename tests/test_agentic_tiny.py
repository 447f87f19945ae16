"""The tiny domain with a calculator (issue 26 item 6): tool traces, the rule verifier's
check of a call, out-of-distribution tasks, and the shipped tool-using policy run by the
runtime."""

from __future__ import annotations

import random
from pathlib import Path

import anyio
import pytest

from runtime.app.build import build_runtime, build_tasks
from runtime.app.config import load_config
from runtime.core.types import Episode, Task
from runtime.policy.base import GenerationRequest
from runtime.policy.checkpoints import resolve_checkpoint
from runtime.policy.scripted import ScriptedPolicy
from runtime.search.context import Context, Sampling, Verifiers
from runtime.tiny.domain import (
    ArithProblem,
    generate_problem,
    mixed_operands,
    parse_expression,
    split_of,
    tool_trace,
)
from runtime.tiny.tasks import tiny_tasks
from runtime.tiny.verifier import TinyStepVerifier
from runtime.tools import CalculatorEnvironment
from strategies.verify_backtrack import VerifyAndBacktrack

ROOT = Path(__file__).resolve().parents[1]


def problem_of(task: Task) -> ArithProblem:
    numbers, ops = parse_expression(task.metadata["expression"])
    return ArithProblem(tuple(numbers), tuple(ops))


@pytest.mark.anyio
async def test_a_tool_trace_is_what_the_calculator_environment_answers() -> None:
    env = CalculatorEnvironment()
    for task in tiny_tasks(30, [1, 2, 3, 4], seed=7):
        lines = tool_trace(problem_of(task))
        calls = [k for k, (text, _) in enumerate(lines) if text.startswith("call: ")]
        assert len(calls) == task.metadata["steps"]
        for k in calls:
            observation, trained = lines[k + 1]
            assert not trained and lines[k][1] and lines[k + 2][1]  # the observation is never trained
            turn = await env.step(env.reset(task), env.parse(lines[k][0]))
            assert turn.observation == observation
        assert lines[-1] == (f"Answer: {task.answer}", True)


@pytest.mark.anyio
async def test_the_rule_verifier_accepts_only_the_call_due_next() -> None:
    task = Task(id="t", prompt="Evaluate: 3+4*5-6", answer="17", metadata={"expression": "3+4*5-6"})
    verifier = TinyStepVerifier()
    assert (await verifier.score_step(task, [], "call: calc(4*5)")).value == 1.0
    assert (await verifier.score_step(task, [], "call: calc( 4 * 5 )")).value == 1.0
    wrong = await verifier.score_step(task, [], "call: calc(3+4)")
    assert wrong.value == 0.0 and wrong.explanation == "the next operation is 4*5"
    path = ["call: calc(4*5)", "= 20", "4*5=20, leaving 3+20-6"]
    assert (await verifier.score_step(task, path, "call: calc(3+20)")).value == 1.0
    assert (await verifier.score_step(task, path, "call: calc(20-6)")).value == 0.0
    assert (await verifier.score_step(task, path, "call: python(3+20)")).value == 0.0


@pytest.mark.anyio
async def test_verify_backtrack_rejects_a_wrong_call_before_it_runs() -> None:
    task = next(tiny_tasks(1, [3], seed=3))
    lines = [text for text, _ in tool_trace(problem_of(task))]
    policy_lines = [text for text in lines if not text.startswith("= ")]
    wrong_first = "call: calc(1+1)"
    served = []

    def script(request: GenerationRequest, i: int) -> str:
        done = [ln for ln in request.assistant_prefix.rstrip("\n").split("\n") if ln and not ln.startswith("= ")]
        done = [ln for ln in done if ln != wrong_first]
        nxt = policy_lines[len(done)]
        text = wrong_first if nxt.startswith("call: ") and nxt not in served else nxt
        served.append(nxt if text == wrong_first else text)
        return text

    env = CalculatorEnvironment()
    ctx = Context(
        Episode(run_id="r", task=task),
        ScriptedPolicy(script),
        Verifiers(environment=env, process=TinyStepVerifier()),
        Sampling(temperature=0.0, max_steps=24),
    )
    episode = await VerifyAndBacktrack(step_retries=4).run(ctx)
    calls = [n for n in episode.nodes if n.kind == "call"]
    accepted = [c for c in calls if c.meta.get("accepted")]
    assert len(calls) == 2 * task.metadata["steps"] and len(accepted) == task.metadata["steps"]
    assert ctx.turns is not None and ctx.turns.executions == len(accepted)  # the wrong calls never ran
    assert episode.final_answer == task.answer


def test_out_of_distribution_operands_stay_in_their_split() -> None:
    rng = random.Random(0)
    problems = [generate_problem(rng, 4, "heldout", max_operand=999) for _ in range(200)]
    assert all(split_of(p.question) == "heldout" for p in problems)
    assert max(max(p.numbers) for p in problems) > 900 and min(min(p.numbers) for p in problems) >= 1
    assert any(n > 9 for p in problems for n, op in zip(p.numbers, p.ops, strict=False) if op == "*")


def test_a_mix_of_wide_operands_draws_its_share_and_nothing_at_zero() -> None:
    rng = random.Random(0)
    tops = [mixed_operands(rng, 0.4) for _ in range(2000)]
    assert set(tops) == {None, 999} and 0.35 < tops.count(999) / len(tops) < 0.45
    plain, mixed = random.Random(1), random.Random(1)
    assert mixed_operands(mixed, 0.0) is None
    assert generate_problem(mixed, 3) == generate_problem(plain, 3)  # share 0: the stream is untouched


def test_bundled_tool_calls_the_calculator_and_solves_held_out_problems(tmp_path: Path) -> None:
    """The shipped tool-using policy, run greedily by the runtime with the calculator
    environment: every path calls the tool before each operation and most are solved."""
    config = load_config(
        ROOT / "configs" / "agentic_calculator.yaml", ["tasks.size=24", f"store.path={tmp_path / 's.db'}"]
    )
    assert resolve_checkpoint("bundled-tool").name == "tool"

    async def run() -> list[Episode]:
        async with build_runtime(config) as runtime:
            return [ep async for ep in runtime.stream(build_tasks(config))]

    episodes = anyio.run(run)
    assert len(episodes) == 24 and all(ep.status == "ok" for ep in episodes)
    solved = [ep for ep in episodes if (ep.reward or 0.0) >= 1.0]
    assert len(solved) >= 18
    for ep in solved:
        kinds = [ep.nodes[i].kind for i in ep.chosen_path]
        assert kinds.count("call") == kinds.count("observation") == ep.task.metadata["steps"]
