"""The ``tool_call`` process verifier: checks a tool call before it runs.

A step the run's environment reads as a tool call scores 1 when the call would run
(well-formed, a known tool, arguments the tool's schema accepts) and 0 otherwise, with
the environment's reason as the explanation; any other step scores ``plain_score``. A
strategy that scores steps (verify-and-backtrack, beam search) thus rejects a bad call
before it costs an execution, since the episode context runs a call only when its node
is expanded (:mod:`runtime.search.turns`).

Design decisions:
- The check is the environment's own (:meth:`Environment.check`), the one it applies
  before it runs a call, so the verifier and the execution never disagree.
- It combines with a domain verifier through ``verifiers.process`` as a list (a
  weighted sum) or a gate, like any process verifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, PrivateAttr

from runtime.core.errors import ConfigError
from runtime.core.types import Task
from runtime.rewards.base import Score, Verifier, VerifierEnv
from runtime.tools.base import Environment

__all__ = ["ToolCallVerifier"]


class ToolCallVerifier(Verifier):
    """Accepts a tool call the environment would run; rejects a malformed or invalid one."""

    name: Literal["tool_call"] = "tool_call"
    plain_score: float = Field(1.0, ge=0, le=1)
    """Score of a step that is not a tool call."""

    _environment: Environment | None = PrivateAttr(default=None)

    def build(self, env: VerifierEnv) -> ToolCallVerifier:
        if env.environment is None:
            raise ConfigError(
                f"{env.field}: the tool_call verifier checks tool calls; the run has no environment: section"
            )
        bound = self.model_copy()
        bound._environment = env.environment
        return bound

    async def score_step(self, task: Task, previous: Sequence[str], step: str) -> Score:
        environment = self._environment
        if environment is None:
            raise ConfigError("the tool_call verifier is used before it is built with the run's environment")
        call = environment.parse(step)
        if call is None:
            return Score(self.plain_score)
        problem = environment.check(call)
        return Score(1.0) if problem is None else Score(0.0, problem)
