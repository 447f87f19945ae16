"""LLM-as-judge through any Policy, for whole solutions (outcome) or single steps
(process) (Zheng et al. 2023, "Judging LLM-as-a-judge"; the generative verifiers of
Zhang et al. 2024).

The judge's prompt is a template (fields written ``{name}``: ``{question}``,
``{solution}``, ``{answer}``, ``{reference}`` for outcomes; ``{question}``,
``{previous}``, ``{step}`` for steps); the shipped ones are ``runtime/rewards/judges/*.txt`` (package data).

Design decisions:
- The candidate cannot talk to its judge. What the graded model wrote (``{solution}``,
  ``{answer}``, ``{previous}``, ``{step}``) is filled in between ``<candidate>`` and
  ``</candidate>``, whatever the template (a custom one included), and any tag naming
  ``candidate`` inside a field's text (the task's too) is removed first, so the candidate can neither close
  its block early nor open a fake one; the shipped templates tell the judge that the
  block is material to grade, never instructions. (The OWASP LLM01 "prompt injection"
  advice: delimit untrusted input.)
- Only the judge's own verdict counts, read where the template asks for it: the
  **last non-empty line** of the reply, after dropping anything the judge quoted between
  the candidate markers. On that line the last ``Score: N`` (``N/M``, a fraction, a
  0-10 or 0-100 scale) wins, else the last ``Verdict: correct / incorrect`` (yes/no,
  pass/fail). A ``Score: 10/10`` the candidate wrote, echoed back or quoted earlier in
  the reply, is not a verdict. A reply cut off at ``max_tokens`` (finish reason
  ``length``) is no verdict either: it may end inside a quotation or before the judge
  made up its mind.
- No verdict is a score, not an error: an **unparseable** judgement (no verdict on the
  last line, or a reply cut off) scores ``unparseable_score`` (0 by default) with an
  explanation starting ``unparseable:``, and never raises. With ``samples > 1`` the
  parseable judgements are averaged.
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

DEFAULT_OUTCOME_TEMPLATE = (TEMPLATES / "outcome.txt").read_text(encoding="utf-8")
DEFAULT_STEP_TEMPLATE = (TEMPLATES / "step.txt").read_text(encoding="utf-8")

_BEGIN, _END = "<candidate>", "</candidate>"
"""The markers around the graded model's text in a judge's prompt."""
_CANDIDATE_FIELDS = frozenset({"solution", "answer", "previous", "step"})
"""Template fields the graded model wrote: filled in between the markers."""
_MARKER = re.compile(r"<\s*/?\s*candidate\b[^<>]*>", re.IGNORECASE)
_QUOTED = re.compile(r"<candidate>.*?(?:</candidate>|\Z)", re.IGNORECASE | re.DOTALL)

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
    """The score a judge's reply gives, in [0, 1], read on its last non-empty line (what
    it quoted between the candidate markers left out); None when there is none to read."""
    lines = [line for line in _QUOTED.sub("\n", text).splitlines() if line.strip()]
    if not lines:
        return None
    text = lines[-1]
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
        whole = [c.text for c in result.completions if c.finish_reason != "length"]  # a cut reply: no verdict
        values = [v for v in map(parse_judgement, whole) if v is not None]
        if not values:
            excerpt = " ".join((texts[0] if texts else "").split())[:200]
            why = "" if whole else f"cut off at max_tokens={self.max_tokens}: "
            return Score(self.unparseable_score, f"{UNPARSEABLE}: {why}{excerpt!r}", **usage)
        unread = len(texts) - len(values)
        note = f" ({unread} of {len(texts)} judgements {UNPARSEABLE})" if unread else ""
        last = " ".join(texts[-1].split())[-200:]
        return Score(sum(values) / len(values), f"judge: {last}{note}", **usage)


def _fill(template: str, fields: dict[str, str]) -> str:
    """Replace ``{field}`` for the known fields only; any other brace is left as written.
    What the graded model wrote goes between the candidate markers, its own markers removed."""

    def value(name: str) -> str:
        text = _MARKER.sub("", fields[name])
        return f"{_BEGIN}{text}{_END}" if name in _CANDIDATE_FIELDS else text

    return _FIELD.sub(lambda m: value(m[1]) if m[1] in fields else m[0], template)


def _question(task: Task) -> str:
    return (
        task.prompt
        if task.prompt is not None
        else "\n".join(m["content"] for m in task.as_messages() if m["role"] == "user")
    )
