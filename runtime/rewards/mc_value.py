"""Monte-Carlo rollout value of a step (Math-Shepherd, Wang et al. 2024; OmegaPRM,
Luo et al. 2024): the fraction of k completions from the step's prefix whose final
answer an outcome verifier accepts.

Usable two ways: as a process verifier (``score_step``; a step from which the policy
still reaches the right answer is a good step), and as labels for training a process
reward model (``label_steps``: one value per step of a solution, in one batch of calls).

Design decisions:
- It needs the reference answer (the outcome verifier scores against it), so it is a
  training-time signal, or a test-time oracle in benchmarks; say so where it is used.
- The k rollouts are one call with ``n = k`` on the same prefix, so a prefix-caching
  backend prefills the prefix once. Rollouts are reported on the Score
  (``calls``/tokens) so the episode is charged for them.
- Soft labels (the fraction), not Math-Shepherd's hard "any rollout correct" label;
  ``hard=True`` gives the latter.
- The rollouts are sampled under the prompt the episode's own calls were sent
  (:func:`~runtime.tools.base.task_prompt` with the run's environment: the call
  format's system message describing the tools, or ``GenerationRequest.tools``), so a
  step's value is the policy's value of the state it really was in.
- One call samples up to ``rollouts`` x ``max_tokens`` tokens (``tokens_per_call``);
  on a CPU model that takes minutes, so the run's verifier timeout, when not set,
  scales with it (``verifiers.timeout`` in :mod:`runtime.app.config`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, PrivateAttr

from runtime.core.concurrency import gather
from runtime.core.errors import ConfigError
from runtime.core.types import Task
from runtime.policy.base import GenerationRequest, Policy
from runtime.rewards.base import AnswerExtractor, OutcomeVerifier, Score, Verifier, VerifierEnv
from runtime.rewards.outcome import ExactMatch
from runtime.tools.base import Environment, task_prompt

__all__ = ["MonteCarloValue"]


class MonteCarloValue(Verifier):
    """Process verifier: value of a step = share of ``rollouts`` completions from it that
    the ``outcome`` verifier (default exact match) accepts. Needs the reference answer."""

    name: Literal["mc_value"] = "mc_value"
    rollouts: int = Field(4, ge=1, le=256)
    """Completions sampled from each step's prefix."""
    temperature: float = Field(0.8, ge=0, le=2)
    """Sampling temperature of the rollouts."""
    max_tokens: int = Field(256, ge=1)
    """Token cap of one rollout."""
    hard: bool = False
    """Math-Shepherd's hard label (1 if any rollout is right) instead of the share."""
    threshold: float = Field(1.0, ge=0, le=1)
    """Outcome score a rollout needs to count as right."""
    _policy: Any = PrivateAttr(None)
    _delimiter: str = PrivateAttr("\n")
    _outcome: Any = PrivateAttr(None)
    _extractor: Any = PrivateAttr(None)
    _environment: Any = PrivateAttr(None)

    def __init__(
        self,
        policy: Policy | None = None,
        /,
        *,
        delimiter: str = "\n",
        outcome: OutcomeVerifier | None = None,
        extractor: AnswerExtractor | None = None,
        environment: Environment | None = None,
        **settings: Any,
    ) -> None:
        """``environment``: the run's (its call format shapes the prompt); None: none."""
        super().__init__(**settings)
        self._policy = policy
        self._environment = environment
        self._delimiter = delimiter
        self._outcome = outcome or ExactMatch()
        self._extractor = extractor or AnswerExtractor()

    @property
    def tokens_per_call(self) -> int:
        """Most tokens one call samples (``rollouts`` x ``max_tokens``): the run's default
        ``verifiers.timeout`` scales with it."""
        return self.rollouts * self.max_tokens

    @property
    def policy(self) -> Policy | None:
        """The policy the rollouts sample from."""
        return self._policy  # type: ignore[no-any-return]

    def build(self, env: VerifierEnv) -> MonteCarloValue:
        if env.policy is None:
            raise ConfigError(f"{env.field}: mc_value rolls out with the run's policy, and needs the run's policy")
        return MonteCarloValue(
            env.policy,
            delimiter=env.delimiter,
            extractor=env.extractor,
            environment=env.environment,
            **self.model_dump(exclude={"name"}),
        )

    async def score_step(self, task: Task, previous: Sequence[str], step: str) -> Score:
        return await self.value(task, [*previous, step])

    async def value(self, task: Task, steps: Sequence[str]) -> Score:
        """Value of the state after ``steps``. A prefix that already ends in an answer is
        scored by that answer, without rollouts."""
        d = self._delimiter
        prefix = "".join(s + d for s in steps)
        if steps and self._extractor(steps[-1]) is not None:
            verdict = await self._outcome.score(task, self._extractor(steps[-1]), prefix)
            return Score(verdict.value, "the step gives the answer")
        messages, tools = task_prompt(task, self._environment)  # the episode's own prompt
        request = GenerationRequest(
            messages=messages,
            tools=tools,
            assistant_prefix=prefix,
            n=self.rollouts,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            metadata={"task_id": task.id, "purpose": "mc_value"},
        )
        result = await self._policy.generate(request)
        good = 0
        for c in result.completions:
            text = prefix + c.text
            verdict = await self._outcome.score(task, self._extractor(text), text)
            good += verdict.value >= self.threshold
        n = len(result.completions)
        value = (float(good > 0) if self.hard else good / n) if n else 0.0
        return Score(
            value,
            f"{good} of {n} rollouts reach a correct answer",
            calls=1,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            cost=result.cost,
        )

    async def label_steps(self, task: Task, steps: Sequence[str]) -> list[float]:
        """Monte-Carlo labels for every step of a solution (PRM training data)."""
        scores = await gather(self.value(task, steps[: k + 1]) for k in range(len(steps)))
        return [s.value for s in scores]
