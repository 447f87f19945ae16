"""Outcome verifiers: :class:`ExactMatch`, :class:`RegexMatch`, :class:`MathVerify`
(math-verify, run in a worker thread with its signal-based timeouts off and bounded by
our own), :class:`ReasoningGymVerifier` (the dataset's own ``score_answer``), and the
table-driven fake :class:`TableVerifier`."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any, Literal

import anyio
from pydantic import Field, PrivateAttr

from runtime.core.errors import VerifierError
from runtime.core.types import Task
from runtime.rewards.base import Score, Verifier

__all__ = ["ExactMatch", "MathVerify", "ReasoningGymVerifier", "RegexMatch", "TableVerifier"]


def _normalize(text: str) -> str:
    return " ".join(text.strip().strip(".").casefold().split())


class ExactMatch(Verifier):
    """1.0 when the extracted answer equals the reference (whitespace, case, a
    trailing period ignored)."""

    name: Literal["exact"] = "exact"

    async def score(self, task: Task, answer: str | None, text: str) -> Score:
        if answer is None:
            return Score(0.0, "no answer found")
        if task.answer is None:
            raise VerifierError(f"task {task.id} has no reference answer")
        ok = _normalize(answer) == _normalize(task.answer)
        return Score(float(ok), None if ok else f"expected {task.answer!r}, got {answer!r}")


class RegexMatch(Verifier):
    """1.0 when the extracted answer fully matches a regex: ``pattern`` if given, else
    the task's ``metadata['answer_regex']``, else the escaped reference answer."""

    name: Literal["regex"] = "regex"
    pattern: str | None = None
    """Regex the whole answer must match (None: the task's answer_regex, else its escaped answer)."""
    _compiled: re.Pattern[str] | None = PrivateAttr(None)

    def __init__(self, pattern: str | None = None, /, **data: Any) -> None:
        super().__init__(**({"pattern": pattern} if pattern is not None else {}), **data)

    def model_post_init(self, context: Any) -> None:
        try:
            self._compiled = re.compile(self.pattern) if self.pattern else None
        except re.error as exc:
            raise ValueError(f"pattern {self.pattern!r} is not a valid regex: {exc}") from None

    async def score(self, task: Task, answer: str | None, text: str) -> Score:
        if answer is None:
            return Score(0.0, "no answer found")
        pattern = self._compiled
        if pattern is None:
            source = task.metadata.get("answer_regex") or re.escape(task.answer or "")
            pattern = re.compile(source)
        ok = pattern.fullmatch(answer.strip()) is not None
        return Score(float(ok), None if ok else f"{answer!r} does not match {pattern.pattern!r}")


class MathVerify(Verifier):
    """math-verify's ``verify(parse(reference), parse(answer))`` in a worker thread."""

    name: Literal["math"] = "math"
    timeout: float = Field(5.0, gt=0, le=600)
    """Seconds one comparison may take."""

    async def score(self, task: Task, answer: str | None, text: str) -> Score:
        if answer is None:
            return Score(0.0, "no answer found")
        if task.answer is None:
            raise VerifierError(f"task {task.id} has no reference answer")
        with anyio.fail_after(self.timeout):
            ok = await anyio.to_thread.run_sync(_math_equal, task.answer, answer, abandon_on_cancel=True)
        return Score(float(ok), None if ok else f"{answer!r} is not equal to {task.answer!r}")


def _math_equal(reference: str, answer: str) -> bool:
    from math_verify import parse, verify

    def wrap(s: str) -> str:
        return s if "\\boxed" in s or s.startswith("$") else f"\\boxed{{{s}}}"

    gold = parse(wrap(reference), parsing_timeout=None)
    pred = parse(wrap(answer), parsing_timeout=None)
    return bool(verify(gold, pred, timeout_seconds=None))


@functools.lru_cache(maxsize=32)
def _rg_dataset(name: str, config_json: str) -> Any:
    import json

    import reasoning_gym

    return reasoning_gym.create_dataset(name, **json.loads(config_json))


class ReasoningGymVerifier(Verifier):
    """reasoning-gym's own ``score_answer`` for tasks from a reasoning-gym source.

    The task's metadata names the dataset, its config and the entry index; the entry
    is rebuilt from the (seeded, deterministic) dataset.
    """

    name: Literal["reasoning_gym"] = "reasoning_gym"

    async def score(self, task: Task, answer: str | None, text: str) -> Score:
        import json

        meta = task.metadata
        if meta.get("source") != "reasoning_gym":
            raise VerifierError(f"task {task.id} does not come from reasoning-gym")
        dataset = _rg_dataset(meta["dataset"], json.dumps(meta["config"], sort_keys=True))
        entry = dataset[meta["index"]]
        value = float(dataset.score_answer(answer=answer, entry=entry))
        return Score(value, None if value >= 1.0 else f"expected {entry['answer']!r}, got {answer!r}")


class TableVerifier(Verifier):
    """A table-driven fake: the score of an answer is ``table.get(answer, default)``;
    ``fail_on`` answers raise, to inject verifier faults."""

    name: Literal["table"] = "table"
    table: dict[str, float] = Field(default_factory=dict)
    """Score of each answer."""
    default: float = 0.0
    """Score of an answer not in the table."""
    fail_on: set[str] = Field(default_factory=set)
    """Answers that raise a VerifierError."""

    def __init__(self, table: Mapping[str, float] | None = None, /, **data: Any) -> None:
        super().__init__(**({"table": dict(table)} if table is not None else {}), **data)

    async def score(self, task: Task, answer: str | None, text: str) -> Score:
        if answer in self.fail_on:
            raise VerifierError(f"table verifier told to fail on {answer!r}")
        return Score(self.table.get(answer or "", self.default))
