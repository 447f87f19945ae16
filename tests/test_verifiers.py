"""Verifiers: answer extraction, the outcome verifiers (exact, regex, math-verify,
reasoning-gym) and the tiny domain's process verifier."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest

from runtime.core.errors import VerifierError
from runtime.core.types import Task
from runtime.rewards.base import AnswerExtractor, OutcomeVerifier, ProcessVerifier
from runtime.rewards.outcome import ExactMatch, MathVerify, ReasoningGymVerifier, RegexMatch, TableVerifier
from runtime.scheduling.tasks import reasoning_gym_tasks
from runtime.tiny.domain import ArithProblem, generate_problem, parse_expression, solution_steps
from runtime.tiny.tasks import tiny_tasks
from runtime.tiny.verifier import TinyStepVerifier

pytestmark = pytest.mark.anyio


# -- answer extraction ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so the answer is \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),  # braces two deep
        (r"\boxed{2^{\frac{1}{x_{1}}}}", r"2^{\frac{1}{x_{1}}}"),  # three deep
        (r"first \boxed{1}, then \boxed{ 2 }", "2"),  # the last match wins, stripped
        ("Step one.\nAnswer: 17\n", "17"),
        ("final answer = -3 ", "-3"),
        ("no answer here", None),
    ],
)
def test_default_extractor_boxed_then_answer_line(text: str, expected: str | None) -> None:
    assert AnswerExtractor()(text) == expected


def test_boxed_wins_over_answer_line_whatever_the_order_in_the_text() -> None:
    assert AnswerExtractor()("\\boxed{5}\nAnswer: 6") == "5"
    assert AnswerExtractor(["answer_line", "boxed"])("\\boxed{5}\nAnswer: 6") == "6"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3 apples and 4 pears make 7", "7"),
        ("it is -2.5\nor maybe\n12 in the end.", "12"),
        ("ratio 3/4", "3/4"),
        ("none", None),
    ],
)
def test_last_number(text: str, expected: str | None) -> None:
    assert AnswerExtractor(["last_number"])(text) == expected


def test_custom_regex_pattern() -> None:
    extract = AnswerExtractor([r"RESULT<(\w+)>", "last_number"])
    assert extract("RESULT<abc> RESULT<xyz> 99") == "xyz"
    assert extract("no tag, 99 only") == "99"


@pytest.mark.parametrize("pattern", [r"Answer: \d+", r"(a)(b)"])
def test_pattern_needs_exactly_one_group(pattern: str) -> None:
    with pytest.raises(ValueError, match="exactly one capture group"):
        AnswerExtractor([pattern])


# -- outcome verifiers ---------------------------------------------------------------


def test_fakes_and_verifiers_satisfy_the_protocols() -> None:
    for v in (ExactMatch(), RegexMatch(), MathVerify(), ReasoningGymVerifier(), TableVerifier({})):
        assert isinstance(v, OutcomeVerifier)
    assert isinstance(TinyStepVerifier(), ProcessVerifier)


@pytest.mark.parametrize(
    ("reference", "answer", "value"),
    [("Paris", " paris. ", 1.0), ("42", "42", 1.0), ("42", "43", 0.0), ("a b", "a   B", 1.0)],
)
async def test_exact_match(reference: str, answer: str, value: float) -> None:
    score = await ExactMatch().score(Task(id="t", answer=reference), answer, "")
    assert score.value == value
    assert (score.explanation is None) == (value == 1.0)


async def test_exact_match_without_answer_or_reference() -> None:
    assert (await ExactMatch().score(Task(id="t", answer="1"), None, "")).value == 0.0
    with pytest.raises(VerifierError, match="no reference answer"):
        await ExactMatch().score(Task(id="t"), "1", "")


async def test_regex_match_pattern_metadata_and_reference() -> None:
    task = Task(id="t", answer="3.5", metadata={"answer_regex": r"7/2|3\.50*"})
    assert (await RegexMatch(r"\d+").score(task, " 12 ", "")).value == 1.0
    assert (await RegexMatch(r"\d+").score(task, "12a", "")).value == 0.0  # full match only
    assert (await RegexMatch().score(task, "7/2", "")).value == 1.0  # from metadata
    assert (await RegexMatch().score(task, "3.500", "")).value == 1.0
    assert (await RegexMatch().score(Task(id="u", answer="1+1"), "1+1", "")).value == 1.0  # escaped reference
    assert (await RegexMatch().score(Task(id="u", answer="1+1"), "11", "")).value == 0.0
    assert (await RegexMatch(r"\d").score(task, None, "")).value == 0.0


@pytest.mark.parametrize(
    ("reference", "answer", "value"),
    [
        (r"\frac{1}{2}", "0.5", 1.0),
        ("0.5", r"\frac{1}{2}", 1.0),
        ("3", "4", 0.0),
        ("(x+1)^2", "x^2+2x+1", 1.0),
        (r"\sqrt{4}", "2", 1.0),
    ],
)
async def test_math_verify(reference: str, answer: str, value: float) -> None:
    score = await MathVerify().score(Task(id="m", answer=reference), answer, "")
    assert score.value == value


async def test_math_verify_runs_in_a_worker_process() -> None:
    """math-verify runs in a killable worker process, never in the runtime's own process
    (a thread there can freeze the event loop; tests/test_verifier_workers.py has the rest)."""
    from runtime.rewards.workers import worker_statistics

    done = worker_statistics().completed
    assert (await MathVerify().score(Task(id="m", answer="1/4"), "0.25", "")).value == 1.0
    stats = worker_statistics()
    assert stats.completed == done + 1 and os.getpid() not in stats.workers and stats.workers


async def test_math_verify_without_answer_or_reference() -> None:
    assert (await MathVerify().score(Task(id="m", answer="1"), None, "")).value == 0.0
    with pytest.raises(VerifierError):
        await MathVerify().score(Task(id="m"), "1", "")


async def test_reasoning_gym_verifier_uses_the_dataset_scorer() -> None:
    verifier = ReasoningGymVerifier()
    tasks = list(reasoning_gym_tasks("basic_arithmetic", size=4, seed=7))
    assert len(tasks) == 4
    for task in tasks:
        assert task.answer is not None
        right = await verifier.score(task, task.answer, "")
        assert right.value == 1.0
        wrong_answer = str(int(task.answer) + 1)
        wrong = await verifier.score(task, wrong_answer, "")
        assert wrong.value < 1.0
        assert wrong.explanation is not None and task.answer in wrong.explanation
        assert (await verifier.score(task, None, "")).value < 1.0


async def test_reasoning_gym_verifier_refuses_other_tasks() -> None:
    with pytest.raises(VerifierError, match="does not come from reasoning-gym"):
        await ReasoningGymVerifier().score(Task(id="x", answer="1"), "1", "")


async def test_table_verifier() -> None:
    v = TableVerifier({"a": 1.0, "b": 0.5}, default=0.25, fail_on=["boom"])
    task = Task(id="t")
    assert [(await v.score(task, a, "")).value for a in ("a", "b", "c", None)] == [1.0, 0.5, 0.25, 0.25]
    with pytest.raises(VerifierError, match="boom"):
        await v.score(task, "boom", "")


# -- process verifier ----------------------------------------------------------------


async def score_solution(task: Task, lines: list[str]) -> list[float]:
    verifier = TinyStepVerifier()
    return [(await verifier.score_step(task, lines[:k], line)).value for k, line in enumerate(lines)]


async def test_tiny_step_verifier_accepts_correct_solutions() -> None:
    tasks = list(tiny_tasks(count=12, steps=(1, 2, 3, 4), seed=3))
    for task in tasks:
        numbers, ops = parse_expression(task.metadata["expression"])
        problem = ArithProblem(tuple(numbers), tuple(ops))
        lines = ["Plan: whatever.", *solution_steps(problem), f"Answer: {task.answer}"]
        assert await score_solution(task, lines) == [1.0] * len(lines), lines


async def test_tiny_step_verifier_rejects_a_wrong_step_with_an_explanation(
    tiny_solution: Callable[..., tuple[Task, list[str]]],
) -> None:
    task, lines = tiny_solution(seed=11, steps=3)
    verifier = TinyStepVerifier()
    first = lines[0]
    fact, _, rest = first.partition(",")
    lhs, _, value = fact.partition("=")
    wrong = f"{lhs}={int(value) + 1}{',' + rest if rest else ''}"
    score = await verifier.score_step(task, [], wrong)
    assert score.value == 0.0
    assert score.explanation and "is wrong" in score.explanation
    # Right arithmetic, wrong order: skipping the operation due next is rejected too.
    skipped = await verifier.score_step(task, [], lines[1])
    assert skipped.value == 0.0 and skipped.explanation
    # A wrong final answer after correct steps.
    bad_answer = await verifier.score_step(task, lines[:-1], f"Answer: {int(task.answer or 0) + 1}")
    assert bad_answer.value == 0.0 and "the value is" in (bad_answer.explanation or "")
    # Answering before the expression is reduced.
    early = await verifier.score_step(task, [], lines[-1])
    assert early.value == 0.0 and "before finishing" in (early.explanation or "")


async def test_tiny_step_verifier_needs_a_tiny_task() -> None:
    with pytest.raises(VerifierError, match="not a tiny-domain task"):
        await TinyStepVerifier().score_step(Task(id="x"), [], "1+1=2")


def test_generated_problems_have_solutions_that_end_at_the_answer() -> None:
    rng = random.Random(0)
    for steps in (1, 2, 3, 4):
        problem = generate_problem(rng, steps)
        lines = solution_steps(problem)
        assert len(lines) == steps
        assert lines[-1].endswith(f"={problem.answer}")


async def test_tiny_step_verifier_hints_are_corrections_it_then_accepts(
    tiny_solution: Callable[..., tuple[Task, list[str]]],
) -> None:
    from runtime.tiny.domain import check_step

    task, lines = tiny_solution(seed=11, steps=3)
    fact, _, rest = lines[0].partition(",")
    lhs, _, value = fact.partition("=")
    wrong = f"{lhs}={int(value) + 1},{rest}"
    hint = await TinyStepVerifier(hints=True).score_step(task, [], wrong)
    assert hint.value == 0.0 and hint.explanation == f"{lhs}={int(value) + 1} is wrong, {lines[0]}"
    reflection = f"check: {hint.explanation}"
    assert check_step(task.metadata["expression"], reflection)[0] == 1.0
    # The corrected line counts as the step: the next step is checked against its remainder.
    assert (await TinyStepVerifier().score_step(task, [wrong, reflection], lines[1])).value == 1.0
    early = await TinyStepVerifier(hints=True).score_step(task, lines[:-1], "Answer: 0")
    assert early.explanation == f"Answer: 0 is wrong, {lines[-1]}" or task.answer == "0"
