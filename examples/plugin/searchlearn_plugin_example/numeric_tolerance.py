"""Numeric tolerance: an answer is right when it is within a tolerance of the reference."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from runtime.core.types import Task
from runtime.rewards import Score, Verifier


class NumericTolerance(Verifier):
    """1.0 when the answer is a number within ``relative`` (or ``absolute``) of the reference."""

    name: Literal["numeric_tolerance"] = "numeric_tolerance"
    relative: float = Field(1e-6, ge=0)
    """Allowed relative error."""
    absolute: float = Field(0.0, ge=0)
    """Allowed absolute error."""

    async def score(self, task: Task, answer: str | None, text: str) -> Score:
        try:
            got, want = float(answer or ""), float(task.answer or "")
        except ValueError:
            return Score(0.0, f"not a number: {answer!r} (reference {task.answer!r})")
        ok = abs(got - want) <= max(self.absolute, self.relative * abs(want))
        return Score(float(ok), None if ok else f"{got} is not within tolerance of {want}")
