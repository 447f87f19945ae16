"""Verifiers (reward design): outcome verifiers score a finished solution, process
verifiers score one step given the steps before it. Scores lie in [0, 1].

Answer extraction is explicit: an :class:`AnswerExtractor` tries its patterns in order
(``boxed`` for ``\\boxed{...}``, ``answer_line`` for ``Answer: X``, ``last_number``, or
any regex with one group) and the first match is the answer.

Outcome verifiers here: :class:`ExactMatch`, :class:`RegexMatch`, :class:`MathVerify`
(math-verify, run in a worker thread with its signal-based timeouts off and bounded by
our own), :class:`ReasoningGymVerifier` (the dataset's own ``score_answer``), and the
table-driven fake :class:`TableVerifier`. Process verifier: :class:`TinyStepVerifier`,
the rule checker of the bundled tiny domain.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import anyio

from runtime.errors import VerifierError
from runtime.types import Task

__all__ = [
    "EXTRACTORS",
    "AnswerExtractor",
    "ExactMatch",
    "MathVerify",
    "OutcomeVerifier",
    "ProcessVerifier",
    "ReasoningGymVerifier",
    "RegexMatch",
    "Score",
    "TableVerifier",
    "TinyStepVerifier",
]


@dataclass(frozen=True, slots=True)
class Score:
    """A verifier's verdict in [0, 1], with why. A verifier that calls a model reports
    what it spent (``calls`` and tokens); the context adds it to the episode's usage."""

    value: float
    explanation: str | None = None
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@runtime_checkable
class OutcomeVerifier(Protocol):
    name: str

    async def score(self, task: Task, answer: str | None, text: str) -> Score: ...


@runtime_checkable
class ProcessVerifier(Protocol):
    name: str

    async def score_step(self, task: Task, previous: Sequence[str], step: str) -> Score: ...


def _balanced(depth: int) -> str:
    """Text whose braces balance, nested up to ``depth`` levels (``re`` cannot recurse).

    ``\\boxed{\\frac{\\sqrt{3}}{2}}`` already nests two levels; four covers real answers.
    """
    inner = r"[^{}]*"
    for _ in range(depth):
        inner = r"(?:[^{}]|\{" + inner + r"\})*"
    return inner


#: Named extraction patterns; each has one capture group.
EXTRACTORS: dict[str, str] = {
    "boxed": r"\\boxed\{(" + _balanced(4) + r")\}",
    "answer_line": r"(?im)^\s*(?:final\s+)?answer\s*[:=]\s*(.+?)\s*$",
    "last_number": r"(-?\d+(?:\.\d+)?(?:/\d+)?)(?!.*\d)",
}


class AnswerExtractor:
    """Pulls the final answer out of model text; the last match of the first pattern
    that matches wins. ``patterns`` are names from :data:`EXTRACTORS` or regexes."""

    def __init__(self, patterns: Sequence[str] = ("boxed", "answer_line")) -> None:
        self.patterns = list(patterns)
        self._compiled = []
        for p in self.patterns:
            regex = re.compile(EXTRACTORS.get(p, p), re.DOTALL if p == "last_number" else 0)
            if regex.groups != 1:
                raise ValueError(f"answer pattern {p!r} needs exactly one capture group")
            self._compiled.append(regex)

    def __call__(self, text: str) -> str | None:
        for regex in self._compiled:
            matches = regex.findall(text)
            if matches:
                return str(matches[-1]).strip()
        return None


def _normalize(text: str) -> str:
    return " ".join(text.strip().strip(".").casefold().split())


class ExactMatch:
    """1.0 when the extracted answer equals the reference (whitespace, case, a
    trailing period ignored)."""

    name = "exact"

    async def score(self, task: Task, answer: str | None, text: str) -> Score:
        if answer is None:
            return Score(0.0, "no answer found")
        if task.answer is None:
            raise VerifierError(f"task {task.id} has no reference answer")
        ok = _normalize(answer) == _normalize(task.answer)
        return Score(float(ok), None if ok else f"expected {task.answer!r}, got {answer!r}")


class RegexMatch:
    """1.0 when the extracted answer fully matches a regex: ``pattern`` if given, else
    the task's ``metadata['answer_regex']``, else the escaped reference answer."""

    name = "regex"

    def __init__(self, pattern: str | None = None) -> None:
        self.pattern = re.compile(pattern) if pattern else None

    async def score(self, task: Task, answer: str | None, text: str) -> Score:
        if answer is None:
            return Score(0.0, "no answer found")
        pattern = self.pattern
        if pattern is None:
            source = task.metadata.get("answer_regex") or re.escape(task.answer or "")
            pattern = re.compile(source)
        ok = pattern.fullmatch(answer.strip()) is not None
        return Score(float(ok), None if ok else f"{answer!r} does not match {pattern.pattern!r}")


class MathVerify:
    """math-verify's ``verify(parse(reference), parse(answer))`` in a worker thread."""

    name = "math"

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout

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


class ReasoningGymVerifier:
    """reasoning-gym's own ``score_answer`` for tasks from a reasoning-gym source.

    The task's metadata names the dataset, its config and the entry index; the entry
    is rebuilt from the (seeded, deterministic) dataset.
    """

    name = "reasoning_gym"

    async def score(self, task: Task, answer: str | None, text: str) -> Score:
        import json

        meta = task.metadata
        if meta.get("source") != "reasoning_gym":
            raise VerifierError(f"task {task.id} does not come from reasoning-gym")
        dataset = _rg_dataset(meta["dataset"], json.dumps(meta["config"], sort_keys=True))
        entry = dataset[meta["index"]]
        value = float(dataset.score_answer(answer=answer, entry=entry))
        return Score(value, None if value >= 1.0 else f"expected {entry['answer']!r}, got {answer!r}")


class TableVerifier:
    """A table-driven fake: the score of an answer is ``table.get(answer, default)``;
    ``fail_on`` answers raise, to inject verifier faults."""

    name = "table"

    def __init__(self, table: Mapping[str, float], default: float = 0.0, fail_on: Sequence[str] = ()) -> None:
        self.table = dict(table)
        self.default = default
        self.fail_on = set(fail_on)

    async def score(self, task: Task, answer: str | None, text: str) -> Score:
        if answer in self.fail_on:
            raise VerifierError(f"table verifier told to fail on {answer!r}")
        return Score(self.table.get(answer or "", self.default))


class TinyStepVerifier:
    """Rule-based process verifier of the tiny arithmetic domain: checks each step's
    arithmetic, that it performs the operation due next, and the restated remainder.

    With ``hints``, a rejected step's explanation is a correction in the form of the
    policy's own training traces (``7*8=54 is wrong, 7*8=56, leaving 3+56``), so a
    reflection or a revision built from it tells the policy the right step; a
    ``check: ...`` line of that form is itself accepted as the step it corrects."""

    name = "tiny_rule"

    def __init__(self, hints: bool = False) -> None:
        self.hints = hints

    async def score_step(self, task: Task, previous: Sequence[str], step: str) -> Score:
        from runtime.tiny.domain import check_step, remaining_after

        expression = task.metadata.get("expression")
        if expression is None:
            raise VerifierError(f"task {task.id} is not a tiny-domain task (no metadata.expression)")
        for line in previous:
            if check_step(expression, line)[0] == 1.0:
                expression = remaining_after(expression, line)
        value, why = check_step(expression, step)
        if value < 1.0 and self.hints and (correct := _tiny_next_line(expression)) is not None:
            why = f"{step.partition(',')[0].strip() or step} is wrong, {correct}"
        return Score(value, why)


def _tiny_next_line(expression: str) -> str | None:
    """The correct next line for what is left of a tiny-domain expression."""
    from runtime.tiny.domain import ArithProblem, parse_expression, solution_steps

    try:
        numbers, ops = parse_expression(expression)
    except ValueError:
        return None
    if not ops:
        return f"Answer: {numbers[0]}"
    return solution_steps(ArithProblem(tuple(numbers), tuple(ops)))[0]
