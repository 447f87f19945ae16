"""The ``verifiers_rubric`` outcome verifier: a finished episode scored by the Rubric of
the run's PrimeIntellect verifiers environment (``environment: {name: verifiers}``).

The rubric gets what it gets from the library's own rollout: the prompt, the completion
messages (the policy's turns, its tool calls and the environment's answers), the
answer, the info and the other columns of the task's row, a ``State`` with the
trajectory of the turns; its weighted reward, mapped from ``[min_reward, max_reward]``
onto [0, 1], is the episode's reward.

Design decisions:
- Scored from the episode alone (:func:`~runtime.tools.verifiers_load.conversation`
  reads the calls and the environment's recorded answers off the path's nodes): a
  stored episode, or a leaf a learner rescores after the run, gets the same reward
  and no tool runs again. The context hands the nodes to a verifier that has
  ``score_turns``; text alone cannot be scored (inside a gate or a weighted sum the
  verifier says so).
- The State is rebuilt (``init_state`` on the task's row, the completion and the
  trajectory set), not the live one: ``setup_state`` is not run again (it may start a
  sandbox), so a reward function that reads keys an ``env_response`` wrote into the
  state does not see them. Group reward functions (``states``, ``completions``, ...)
  need a group the context does not give one verifier call: refused, naming them.
- The library logs a reward function that raises and counts it 0; so does this.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import PrivateAttr, model_validator

from runtime.core.errors import ConfigError, VerifierError
from runtime.core.types import Node, Task
from runtime.rewards.base import Score, Verifier, VerifierEnv
from runtime.tools.verifiers_env import VerifiersEnvironment
from runtime.tools.verifiers_load import MODEL, assistant_turn, conversation, no_model_client, rollout_input

__all__ = ["VerifiersRubric"]


class VerifiersRubric(Verifier):
    """The Rubric of the run's verifiers environment, on the episode's turns."""

    name: Literal["verifiers_rubric"] = "verifiers_rubric"
    needs_reference: ClassVar[bool] = False  # the rubric decides what it needs (a row may have no answer)
    min_reward: float = 0.0
    """The rubric's lowest reward (its weighted sum of reward functions); it scores 0."""
    max_reward: float = 1.0
    """The rubric's highest reward; it scores 1. Rewards between map linearly, and one
    outside the range is clipped (the explanation keeps the rubric's own value)."""

    _environment: VerifiersEnvironment | None = PrivateAttr(default=None)
    _delimiter: str = PrivateAttr(default="\n")

    @model_validator(mode="after")
    def _range(self) -> VerifiersRubric:
        if not self.max_reward > self.min_reward:
            raise ValueError(f"max_reward ({self.max_reward}) must be above min_reward ({self.min_reward})")
        return self

    def build(self, env: VerifierEnv) -> VerifiersRubric:
        if not isinstance(env.environment, VerifiersEnvironment):
            got = "none" if env.environment is None else repr(getattr(env.environment, "name", env.environment))
            raise ConfigError(
                f"{env.field}: verifiers_rubric scores with the rubric of the run's verifiers environment; "
                f"the run needs environment: {{name: verifiers, env: ...}} (got {got})"
            )
        bound = self.model_copy()
        bound._environment = env.environment
        bound._delimiter = env.delimiter
        return bound

    async def score(self, task: Task, answer: str | None, text: str) -> Score:
        raise VerifierError(
            "verifiers_rubric scores an episode's turns, not its text: use it as verifiers.outcome itself "
            "(not inside a gate or a weighted sum)"
        )

    async def score_turns(self, task: Task, answer: str | None, path: Sequence[Node], nodes: Sequence[Node]) -> Score:
        """The rubric's reward of the completion ``path`` (root excluded) holds."""
        if self._environment is None:
            raise ConfigError("verifiers_rubric is used before it is built with the run's environment")
        env = self._environment.environment()
        rubric = env.rubric
        if rubric.has_group_rewards:
            names = [getattr(f, "__name__", repr(f)) for f in rubric._get_reward_funcs() if rubric._is_group_func(f)]
            raise VerifierError(
                f"verifiers_rubric scores one episode at a time; the rubric's group reward functions "
                f"({', '.join(names) or 'of a sub-rubric'}) need the whole group"
            )
        from verifiers.utils.message_utils import normalize_messages

        messages, stop = conversation(path, nodes, self._delimiter)
        state = await env.init_state(rollout_input(task), no_model_client(), MODEL, {})
        completion = normalize_messages(messages, field_name="completion")
        before = list(state["prompt"])
        for message in completion:
            if message.role == "assistant":
                number = len(state["trajectory"])
                await env.add_trajectory_step(
                    state, assistant_turn(list(before), message, number, state["trajectory_id"])
                )
            before.append(message)
        state["completion"] = completion
        state["is_completed"] = True
        state["stop_condition"] = stop
        await rubric.score_rollout(state)
        await rubric.cleanup(state)
        raw = float(state["reward"])
        metrics = {k: round(float(v), 6) for k, v in (state.get("metrics") or {}).items()}
        value = min(1.0, max(0.0, (raw - self.min_reward) / (self.max_reward - self.min_reward)))
        shown = ", ".join(f"{k}={v:g}" for k, v in metrics.items())
        return Score(value, f"verifiers reward {raw:g}" + (f" ({shown})" if shown else ""))
