"""The rule-based process verifier of the bundled tiny arithmetic domain."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from runtime.core.errors import VerifierError
from runtime.core.types import Task
from runtime.rewards.base import Score, Verifier
from runtime.tiny.domain import (
    ArithProblem,
    check_call,
    check_step,
    parse_expression,
    remaining_after,
    solution_steps,
)

__all__ = ["TinyStepVerifier"]


class TinyStepVerifier(Verifier):
    """Rule-based process verifier of the tiny arithmetic domain: checks each step's
    arithmetic, that it performs the operation due next, and the restated remainder.

    With ``hints``, a rejected step's explanation is a correction in the form of the
    policy's own training traces (``7*8=54 is wrong, 7*8=56, leaving 3+56``), so a
    reflection or a revision built from it tells the policy the right step; a
    ``check: ...`` line of that form is itself accepted as the step it corrects.

    A calculator call (``call: calc(4*5)``, the tool traces of ``bundled-tool``) is
    accepted when it computes the operation due next, so a search rejects a wrong
    call before it runs; calls and observations on the path are skipped when the
    verifier follows the expression."""

    name: Literal["tiny_rule"] = "tiny_rule"
    hints: bool = False
    """Explain a rejected step with the correct one (feeds reflections and revisions)."""

    async def score_step(self, task: Task, previous: Sequence[str], step: str) -> Score:
        expression = task.metadata.get("expression")
        if expression is None:
            raise VerifierError(f"task {task.id} is not a tiny-domain task (no metadata.expression)")
        for line in previous:
            if check_step(expression, line)[0] == 1.0:
                expression = remaining_after(expression, line)
        correct = _tiny_next_line(expression)
        if step.strip().startswith("call:"):
            value, why = check_call(expression, step)
            due = (
                None if correct is None or correct.startswith("Answer") else f"call: calc({correct.partition('=')[0]})"
            )
            return Score(value, why, error_at=_first_difference(step, due) if value < 1.0 else None)
        value, why = check_step(expression, step)
        if value < 1.0 and self.hints and correct is not None:
            why = f"{step.partition(',')[0].strip() or step} is wrong, {correct}"
        return Score(value, why, error_at=_first_difference(step, correct) if value < 1.0 else None)


def _first_difference(step: str, correct: str | None) -> int | None:
    """The offset in ``step`` of its first character that differs from the correct line
    (None: no correct line to compare with, or a reflection, which restates a wrong step
    on purpose)."""
    if correct is None or step.lstrip().startswith("check:"):
        return None
    lead = len(step) - len(step.lstrip())
    text = step.strip()
    for i, (a, b) in enumerate(zip(text, correct, strict=False)):
        if a != b:
            return lead + i
    return lead + min(len(text), len(correct)) if len(text) != len(correct) else None


def _tiny_next_line(expression: str) -> str | None:
    """The correct next line for what is left of a tiny-domain expression."""
    try:
        numbers, ops = parse_expression(expression)
    except ValueError:
        return None
    if not ops:
        return f"Answer: {numbers[0]}"
    return solution_steps(ArithProblem(tuple(numbers), tuple(ops)))[0]
