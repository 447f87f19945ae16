"""Outcome verifiers: :class:`ExactMatch`, :class:`RegexMatch`, :class:`MathVerify`
(math-verify), :class:`ReasoningGymVerifier` (the dataset's own ``score_answer``), and
the table-driven fake :class:`TableVerifier`.

Design decisions:
- Verifiers that run foreign computation on model text (math-verify's parser and sympy,
  reasoning-gym's dataset-specific answer parsing) run in a killable worker process
  (:mod:`runtime.rewards.workers`), never in a thread: an answer such as ``9^{9^{9}}``
  makes sympy compute inside one C call that holds the GIL, and a thread doing that
  freezes the event loop, every timeout and the signal handlers. Their ``timeout`` is a
  hard deadline, counted from when a worker takes the call: the worker is killed and
  the call raises :class:`~runtime.core.errors.VerifierError`, as does a worker that dies
  (memory limit, signal), so the episode fails with why and its siblings carry on.
- math-verify's own timeouts are off (they use SIGALRM); the worker's deadline replaces
  them. The reference and the answer are wrapped in ``\\boxed{}`` unless already boxed
  or in ``$...$``, so a bare ``1/2`` parses as math.
- reasoning-gym entries are rebuilt inside the worker from the task's metadata (dataset
  name, config, index; the datasets are seeded and deterministic), each dataset built
  once per worker; only the inputs, the score and the expected answer cross over.
- Exact, regex and table checks run inline: they run no foreign code.
- All or nothing by default, under every outcome verifier. reasoning-gym's own scorers
  give partial credit to an answer that merely contains the right one (``a-1, a, a+1``
  earns 0.30 on chain_sum, 0.25-0.57 on other families: the default ``score_answer``
  pays ``len(answer) / len(hedge)``), and a GRPO group then learns to hedge. So below
  full credit the ``reasoning_gym`` verifier scores 0 (as exact, math and regex do), and
  passes reasoning-gym's partial credit through only when ``partial_credit`` is set.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, PrivateAttr

from runtime.core.errors import VerifierError
from runtime.core.types import Task
from runtime.rewards.base import Score, Verifier
from runtime.rewards.workers import WorkerCrashed, run_in_worker

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
    """math-verify's ``verify(parse(reference), parse(answer))`` in a killable worker process."""

    name: Literal["math"] = "math"
    timeout: float = Field(default=5.0, gt=0, le=600)
    """Seconds one comparison may take; at the deadline its worker process is killed and
    the comparison fails with a VerifierError."""

    async def score(self, task: Task, answer: str | None, text: str) -> Score:
        if answer is None:
            return Score(0.0, "no answer found")
        if task.answer is None:
            raise VerifierError(f"task {task.id} has no reference answer")
        try:
            ok = await run_in_worker(_math_equal, task.answer, answer, timeout=self.timeout)
        except TimeoutError as exc:
            raise VerifierError(f"math-verify ran past {self.timeout}s on {_clip(answer)}; killed") from exc
        except WorkerCrashed as exc:
            raise VerifierError(f"math-verify's worker died on {_clip(answer)}: {exc}") from exc
        return Score(float(ok), None if ok else f"{answer!r} is not equal to {task.answer!r}")


def _clip(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _math_equal(reference: str, answer: str) -> bool:
    """Runs in a worker process."""
    from math_verify import grader, parse, parser, verify

    # The worker's deadline is the timeout: silence math-verify's once-per-process
    # warning that its own timeouts are off.
    parser.TIMEOUT_WARNING_SHOWN = grader.TIMEOUT_WARNING_SHOWN = True

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


def _rg_score(name: str, config_json: str, index: int, answer: str | None) -> tuple[float, Any]:
    """Runs in a worker process: the score of ``answer`` on the entry, and the entry's answer."""
    dataset = _rg_dataset(name, config_json)
    entry = dataset[index]
    return float(dataset.score_answer(answer=answer, entry=entry)), entry["answer"]


class ReasoningGymVerifier(Verifier):
    """reasoning-gym's own ``score_answer`` for tasks from a reasoning-gym source, in a
    killable worker process.

    The task's metadata names the dataset, its config and the entry index; the entry
    is rebuilt from the (seeded, deterministic) dataset.
    """

    name: Literal["reasoning_gym"] = "reasoning_gym"
    timeout: float = Field(default=10.0, gt=0, le=600)
    """Seconds one scoring may take (building the dataset in a fresh worker included); at
    the deadline its worker process is killed and the scoring fails with a VerifierError."""
    partial_credit: bool = False
    """Pay reasoning-gym's partial credit (a score between 0 and 1, e.g. 0.30 on
    chain_sum for a hedge such as ``a-1, a, a+1`` that contains the right answer); false:
    an answer short of full credit scores 0, as under exact, math and regex, so a
    learner is never paid for hedging."""

    async def score(self, task: Task, answer: str | None, text: str) -> Score:
        import json

        meta = task.metadata
        if meta.get("source") != "reasoning_gym":
            raise VerifierError(f"task {task.id} does not come from reasoning-gym")
        config = json.dumps(meta["config"], sort_keys=True)
        try:
            value, expected = await run_in_worker(
                _rg_score, meta["dataset"], config, int(meta["index"]), answer, timeout=self.timeout
            )
        except TimeoutError as exc:
            raise VerifierError(f"reasoning-gym ran past {self.timeout}s on {_clip(answer or '')}; killed") from exc
        except WorkerCrashed as exc:
            raise VerifierError(f"reasoning-gym's worker died on {_clip(answer or '')}: {exc}") from exc
        if value >= _FULL_CREDIT:
            return Score(1.0)
        explanation = f"expected {expected!r}, got {answer!r}"
        if value > 0.0 and not self.partial_credit:
            return Score(
                0.0, f"{explanation} (reasoning-gym's partial credit {value:.2f} not paid: partial_credit is off)"
            )
        return Score(value, explanation)


_FULL_CREDIT = 1.0 - 1e-9  # reasoning-gym's scores are floats; 1.0 is full credit


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
        fields: dict[str, Any] = {"table": dict(table)} if table is not None else {}
        super().__init__(**fields, **data)

    async def score(self, task: Task, answer: str | None, text: str) -> Score:
        if answer in self.fail_on:
            raise VerifierError(f"table verifier told to fail on {answer!r}")
        return Score(self.table.get(answer or "", self.default))
