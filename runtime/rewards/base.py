"""Verifiers (reward design): outcome verifiers score a finished solution, process
verifiers score one step given the steps before it. Scores lie in [0, 1].

Answer extraction is explicit: an :class:`AnswerExtractor` tries its patterns in order
(``boxed`` for ``\\boxed{...}``, ``answer_line`` for ``Answer: X``, ``last_number``, or
any regex with one group) and the first match is the answer.

Outcome verifiers here: :class:`ExactMatch`, :class:`RegexMatch`, :class:`MathVerify`
(math-verify, run in a killable worker process with a hard deadline, see
:mod:`runtime.rewards.workers`), :class:`ReasoningGymVerifier` (the dataset's own ``score_answer``), and the
table-driven fake :class:`TableVerifier`. The tiny domain's rule checker lives with
the domain (``runtime.tiny``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from runtime.core.registry import Component
from runtime.core.types import Task
from runtime.policy.base import Policy

__all__ = [
    "EXTRACTORS",
    "AnswerExtractor",
    "OutcomeVerifier",
    "ProcessVerifier",
    "Score",
    "Verifier",
    "VerifierEnv",
]


@dataclass(frozen=True, slots=True)
class Score:
    """A verifier's verdict in [0, 1], with why. A verifier that calls a model reports
    what it spent (``calls``, tokens and USD ``cost``); the context adds it to the
    episode's usage, so the episode, the run and the run's budget pay for it."""

    value: float
    explanation: str | None = None
    error_at: int | None = None
    """Where the step's first error is, as a character offset into the step's text, for
    a process verifier that can locate it (the tiny rule verifier does); None: not located."""
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0


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


@dataclass(frozen=True, slots=True)
class VerifierEnv:
    """What a verifier component may take from the run when it is built."""

    policy: Policy | None = None
    """The run's policy (Monte-Carlo rollouts, a judge without a policy of its own)."""
    delimiter: str = "\n"
    """The run's step delimiter."""
    extractor: AnswerExtractor = field(default_factory=AnswerExtractor)
    """The run's answer extraction."""
    make_policy: Callable[[dict[str, Any]], Policy] | None = None
    """Builds a policy from a ``policy:`` config mapping (a judge on its own endpoint)."""
    field: str = "verifiers"
    """Where the verifier sits in the run config, for error messages (verifiers.process)."""
    threads: int | None = None
    """torch threads a verifier that runs a model gets unless it sets its own."""
    environment: Any = None
    """The run's environment (:class:`runtime.tools.base.Environment`), for a verifier
    that checks tool calls; None when the run has none."""


class Verifier(Component):
    """Base of the verifiers a config can name (``verifiers.outcome`` / ``verifiers.process``:
    a name, or a mapping with ``name`` and the verifier's settings).

    A subclass implements ``score`` (outcome), ``score_step`` (process) or both; its
    fields are its settings. ``build`` returns the verifier a run uses: the component
    itself, or (for one that needs the run's policy or delimiter) a copy bound to them.
    """

    family: ClassVar[str] = "verifiers"
    needs_reference: ClassVar[bool] = True
    """Whether the outcome score needs the task's reference answer: a run judges the
    episodes of tasks without one only with verifiers that do not (code run against
    the task's tests)."""
    name: str
    """What configs call the verifier."""

    def build(self, env: VerifierEnv) -> Any:
        """The verifier to run with ``env``'s resources (default: this component)."""
        return self
