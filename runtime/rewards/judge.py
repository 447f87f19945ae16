"""LLM-as-judge through any Policy, for whole solutions (outcome) or single steps
(process) (Zheng et al. 2023, "Judging LLM-as-a-judge"; the generative verifiers of
Zhang et al. 2024).

The judge's prompt is a template (fields written ``{name}``: ``{question}``,
``{solution}``, ``{answer}``, ``{reference}`` for outcomes; ``{question}``,
``{previous}``, ``{step}`` for steps); the shipped ones are ``runtime/rewards/judges/*.txt`` (package data).

Design decisions:
- Parsing survives whatever the judge writes. The last ``Score: N`` (``N/M``, a
  fraction, a 0-10 or 0-100 scale) wins; else the last ``Verdict: correct / incorrect``
  (yes/no, pass/fail); else the judgement is **unparseable**: it scores
  ``unparseable_score`` (0 by default) with an explanation starting ``unparseable:``,
  and never raises. With ``samples > 1`` the parseable judgements are averaged.
- A failing model call is not a parse problem: it raises, and the context records a
  verifier error on the episode.
- The judge's tokens are reported on the Score, so the episode pays for its judge.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr

from runtime.core.errors import ConfigError
from runtime.core.types import Task
from runtime.policy.base import GenerationRequest, Policy
from runtime.rewards.base import Score, Verifier, VerifierEnv

__all__ = [
    "DEFAULT_OUTCOME_TEMPLATE",
    "DEFAULT_STEP_TEMPLATE",
    "UNPARSEABLE",
    "LLMJudge",
    "load_template",
    "parse_judgement",
]

UNPARSEABLE = "unparseable"
TEMPLATES = Path(__file__).resolve().parent / "judges"

DEFAULT_OUTCOME_TEMPLATE = (
    "You are grading a solution to a problem.\n\nProblem:\n{question}\n\nSolution:\n{solution}\n\n"
    "Final answer given: {answer}\n\nCheck the solution step by step. Then, on the last line, write exactly\n"
    '"Score: N/10", where 10 means certainly correct and 0 certainly wrong.\n'
)
DEFAULT_STEP_TEMPLATE = (
    "You are checking one step of a solution in progress.\n\nProblem:\n{question}\n\nSteps so far:\n{previous}\n\n"
    "Next step:\n{step}\n\nIs the next step correct and does it follow from the steps so far? Explain briefly,\n"
    'then on the last line write exactly "Score: N/10", where 10 means certainly correct\nand 0 certainly wrong.\n'
)

_SCORE = re.compile(r"score\s*[:=]?\s*\**\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*(\d+(?:\.\d+)?))?", re.IGNORECASE)
_VERDICT = re.compile(r"verdict\s*[:=]\s*\**\s*(correct|incorrect|yes|no|pass|fail|right|wrong)\b", re.IGNORECASE)
_POSITIVE = {"correct", "yes", "pass", "right"}
_FIELD = re.compile(r"\{(\w+)\}")


def load_template(name_or_path: str) -> str:
    """A template: its text itself (anything with a ``{field}`` or a line break), a file
    path, or the name of a shipped template (``outcome``, ``step``)."""
    if "{" in name_or_path or "\n" in name_or_path:
        return name_or_path
    path = Path(name_or_path)
    for candidate in (path, TEMPLATES / name_or_path, TEMPLATES / f"{name_or_path}.txt"):
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    raise FileNotFoundError(
        f"judge template {name_or_path!r} is not a file nor one of {sorted(p.stem for p in TEMPLATES.glob('*.txt'))}"
    )


def parse_judgement(text: str) -> float | None:
    """The score a judge's text gives, in [0, 1]; None when there is none to read."""
    scores = _SCORE.findall(text)
    if scores:
        raw, scale = scores[-1]
        value = float(raw)
        if scale:
            denominator = float(scale)
            return None if denominator <= 0 else min(1.0, max(0.0, value / denominator))
        for top in (1.0, 10.0, 100.0):
            if 0.0 <= value <= top:
                return value / top
        return None
    verdicts = _VERDICT.findall(text)
    if verdicts:
        return 1.0 if verdicts[-1].lower() in _POSITIVE else 0.0
    return None


class LLMJudge(Verifier):
    """Outcome and process verifier that asks a policy for a judgement (see module doc)."""

    name: Literal["judge"] = "judge"
    outcome_template: str = "outcome"
    """Prompt for judging a solution: the template text, a file path, or a name of the
    templates that ship with the package (outcome, step)."""
    step_template: str = "step"
    """Prompt for judging a step: text, a file path, or a shipped name."""
    samples: int = Field(1, ge=1, le=16)
    """Judgements averaged per verdict."""
    temperature: float = Field(0.0, ge=0, le=2)
    """Sampling temperature of the judge."""
    max_tokens: int = Field(256, ge=1)
    """Token cap of one judgement."""
    unparseable_score: float = Field(0.0, ge=0, le=1)
    """Score of a judgement with no readable verdict."""
    judge_policy: dict[str, Any] | None = None
    """The model that judges, as a policy config section; None: the run's own policy."""
    _policy: Any = PrivateAttr(None)

    def __init__(self, policy: Policy | None = None, /, **settings: Any) -> None:
        super().__init__(**settings)
        self._policy = policy

    def model_post_init(self, context: Any) -> None:
        try:
            self.outcome_template = load_template(self.outcome_template)
            self.step_template = load_template(self.step_template)
        except FileNotFoundError as exc:
            raise ValueError(str(exc)) from None

    @property
    def policy(self) -> Policy | None:
        """The policy that judges."""
        return self._policy  # type: ignore[no-any-return]

    def build(self, env: VerifierEnv) -> LLMJudge:
        if self.judge_policy is not None:
            if env.make_policy is None:
                raise ConfigError(f"{env.field}.policy: this run cannot build the judge's own policy")
            policy = env.make_policy(self.judge_policy)
        elif env.policy is not None:
            policy = env.policy
        else:
            raise ConfigError(
                f"{env.field}.policy: an LLM judge needs a policy (the run's, or its own policy: section)"
            )
        return LLMJudge(policy, **self.model_dump(exclude={"name"}))

    async def score(self, task: Task, answer: str | None, text: str) -> Score:
        fields = {"question": _question(task), "solution": text, "answer": answer or "(none)",
                  "reference": task.answer or "(not given)"}  # fmt: skip
        return await self._ask(task, _fill(self.outcome_template, fields))

    async def score_step(self, task: Task, previous: Sequence[str], step: str) -> Score:
        fields = {"question": _question(task), "previous": "\n".join(previous) or "(none)", "step": step}
        return await self._ask(task, _fill(self.step_template, fields))

    async def _ask(self, task: Task, prompt: str) -> Score:
        request = GenerationRequest(
            messages=[{"role": "user", "content": prompt}],
            n=self.samples,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            metadata={"task_id": task.id, "purpose": "judge"},
        )
        result = await self._policy.generate(request)
        usage: dict[str, Any] = {
            "calls": 1,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "cost": result.cost,
        }
        texts = [c.text for c in result.completions]
        values = [v for v in map(parse_judgement, texts) if v is not None]
        if not values:
            excerpt = " ".join((texts[0] if texts else "").split())[:200]
            return Score(self.unparseable_score, f"{UNPARSEABLE}: {excerpt!r}", **usage)
        unread = len(texts) - len(values)
        note = f" ({unread} of {len(texts)} judgements {UNPARSEABLE})" if unread else ""
        last = " ".join(texts[-1].split())[-200:]
        return Score(sum(values) / len(values), f"judge: {last}{note}", **usage)


def _fill(template: str, fields: dict[str, str]) -> str:
    """Replace ``{field}`` for the known fields only; any other brace is left as written."""
    return _FIELD.sub(lambda m: fields.get(m[1], m[0]), template)


def _question(task: Task) -> str:
    return (
        task.prompt
        if task.prompt is not None
        else "\n".join(m["content"] for m in task.as_messages() if m["role"] == "user")
    )
