"""GRPO-family policy gradient on the online loop (``learner: {kind: grpo, ...}``): the
run's local policy samples groups under the configured strategy (best-of-N's samples,
a tree search's leaves or sibling steps), their outcome and process rewards become
per-step advantages (:mod:`learners.rollouts`), and a PPO-clip learner against the
behaviour log-probs recorded at sampling time (:mod:`learners.policy_gradient`)
publishes every new version back into the engine.

The config combines, by inheritance, the loop's settings (every learner config's
base), the optimizer's and the PPO loss's (:class:`PGSettings`) and the groups' and
advantages' (:class:`RolloutSettings`). Its algorithms are names in registries
(:mod:`learners.algorithms`): ``estimator``, ``advantage``, ``policy_loss``,
``loss_norm`` and ``kl_estimator`` each name a registered function, so a new estimator
or loss is one function, never a new branch here.
"""

from __future__ import annotations

from typing import Any, Literal

from learners.base import LearnerSpec
from learners.policy_gradient import PGSettings, PolicyGradientLearner
from learners.rollouts import Rollouts, RolloutSettings
from runtime.core.errors import ConfigError
from runtime.search.context import Sampling

__all__ = ["GRPO"]


class GRPO(LearnerSpec, PGSettings, RolloutSettings):
    """Policy gradient with group baselines (GRPO, Dr. GRPO, RLOO) and process rewards, on the run's policy."""

    kind: Literal["grpo"] = "grpo"

    def build_learner(self, model: Any, tokenizer: Any, sampling: Sampling) -> PolicyGradientLearner:
        if sampling.temperature <= 0:
            raise ConfigError("sampling.temperature: policy gradient needs sampled rollouts (a temperature > 0)")
        if not sampling.logprobs:
            raise ConfigError(
                "sampling.logprobs: grpo corrects against the behaviour log-probs the engine records; "
                "set sampling.logprobs: true"
            )
        drawn = {"temperature": self.temperature or sampling.temperature, "top_p": self.top_p or sampling.top_p}
        return PolicyGradientLearner(model, tokenizer, self.model_copy(update=drawn), delimiter=sampling.step_delimiter)

    def build_converter(self, delimiter: str) -> Rollouts:
        return Rollouts(self, delimiter=delimiter)
