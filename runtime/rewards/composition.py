"""Composing verifiers: weighted sums and gates (reward design, Lightman et al. 2023;
the outcome-gated-by-process rewards of Uesato et al. 2022).

- :class:`WeightedSum` mixes verifiers of one kind (all outcome, or all process):
  ``sum_i w_i s_i / sum_i w_i``, explanations joined.
- :class:`Gate` lets ``then`` count only once ``check`` passes: as an outcome
  verifier with a process ``check``, every step of the solution (the text split at the
  step delimiter) must score at least ``threshold`` before the outcome score counts
  (a right answer reached through a wrong step earns 0); with an outcome ``check``,
  the check's score must reach it. As a process verifier, the step must pass
  ``check`` before ``then`` scores it.

Both are verifiers themselves, so they nest; model costs of their parts add up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from runtime.core.errors import VerifierError
from runtime.core.types import Task
from runtime.rewards.base import OutcomeVerifier, Score

__all__ = ["Gate", "WeightedSum"]


def _usage(scores: Sequence[Score]) -> dict[str, Any]:
    return {
        "calls": sum(s.calls for s in scores),
        "prompt_tokens": sum(s.prompt_tokens for s in scores),
        "completion_tokens": sum(s.completion_tokens for s in scores),
        "cost": sum(s.cost for s in scores),
    }


class WeightedSum:
    """Weighted mean of verifiers' scores (outcome or process, whichever is called)."""

    def __init__(self, parts: Sequence[tuple[Any, float]], name: str | None = None) -> None:
        if not parts or any(w < 0 for _, w in parts) or sum(w for _, w in parts) <= 0:
            raise ValueError("WeightedSum needs at least one verifier and non-negative weights with a positive sum")
        self.parts = list(parts)
        self.name = name or "+".join(f"{w:g}*{v.name}" for v, w in self.parts)

    def _combine(self, scores: Sequence[Score]) -> Score:
        total = sum(w for _, w in self.parts)
        value = sum(w * s.value for (_, w), s in zip(self.parts, scores, strict=True)) / total
        why = "; ".join(f"{v.name}={s.value:.3g}" + (f" ({s.explanation})" if s.explanation else "")
                        for (v, _), s in zip(self.parts, scores, strict=True))  # fmt: skip
        return Score(min(1.0, max(0.0, value)), why, **_usage(scores))

    async def score(self, task: Task, answer: str | None, text: str) -> Score:
        return self._combine([await v.score(task, answer, text) for v, _ in self.parts])

    async def score_step(self, task: Task, previous: Sequence[str], step: str) -> Score:
        return self._combine([await v.score_step(task, previous, step) for v, _ in self.parts])


class Gate:
    """``then``'s score, or 0 unless ``check`` passes (see module doc)."""

    def __init__(
        self,
        check: Any,
        then: Any,
        *,
        threshold: float = 1.0,
        delimiter: str = "\n",
        per_step: bool | None = None,
        name: str | None = None,
    ) -> None:
        self.check = check
        # A check with both methods (a WeightedSum, an LLM judge) is read as an outcome
        # check unless told otherwise.
        self.per_step = per_step if per_step is not None else not hasattr(check, "score")
        self.then = then
        self.threshold = threshold
        self.delimiter = delimiter
        self.name = name or f"{then.name}|{check.name}"
        self.needs_reference = bool(getattr(then, "needs_reference", True))

    async def score(self, task: Task, answer: str | None, text: str) -> Score:
        if self.per_step:
            steps = [s.strip() for s in text.split(self.delimiter) if s.strip()]
            spent = []
            for k, step in enumerate(steps):
                verdict = await self.check.score_step(task, steps[:k], step)
                spent.append(verdict)
                if verdict.value < self.threshold:
                    why = f"gate {self.check.name}: step {k + 1} ({step!r}) fails" + (
                        f": {verdict.explanation}" if verdict.explanation else ""
                    )
                    return Score(0.0, why, **_usage(spent))
        elif isinstance(self.check, OutcomeVerifier):
            verdict = await self.check.score(task, answer, text)
            spent = [verdict]
            if verdict.value < self.threshold:
                return Score(
                    0.0, f"gate {self.check.name} fails: {verdict.explanation or verdict.value}", **_usage(spent)
                )
        else:
            raise VerifierError(f"gate check {self.check!r} is not a verifier")
        result = await self.then.score(task, answer, text)
        return Score(result.value, result.explanation, **_usage([*spent, result]))

    async def score_step(self, task: Task, previous: Sequence[str], step: str) -> Score:
        verdict = await self.check.score_step(task, previous, step)
        if verdict.value < self.threshold:
            return Score(
                0.0, f"gate {self.check.name} fails: {verdict.explanation or verdict.value}", **_usage([verdict])
            )
        result = await self.then.score_step(task, previous, step)
        return Score(result.value, result.explanation, **_usage([verdict, result]))
