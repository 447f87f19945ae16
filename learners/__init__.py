"""Part 4, learning: turn episodes into training signal and publish new policy versions.

The learner contract (:class:`Learner`): ``async update(examples) -> UpdateResult``
takes one optimizer step, ``weights()`` is what gets published to the policy.
:class:`OnlineLoop` runs a scheduler and a learner together, :class:`VerifiedPaths`
turns episodes into examples, :class:`Evaluator` scores policy versions on held-out
tasks, :mod:`learners.prm` trains process reward models. Policy gradient:
:class:`Rollouts` turns search trees into groups with per-step advantages and
:class:`PolicyGradientLearner` takes PPO-clip steps on them. Learner configs
(:class:`ExpertIteration`, :class:`Distill`, :class:`GRPO`, :class:`PPO`, :class:`DPO`)
register under their ``kind``. Names are
imported on first use (torch loads with the first learner).
"""

from __future__ import annotations

from runtime.core.lazy import lazy_exports as _lazy_exports

_EXPORTS = {
    "DPO": ".dpo",
    "DPOLearner": ".dpo",
    "DPOSettings": ".dpo",
    "Distill": ".distill",
    "EvalSettings": ".loop_settings",
    "Evaluator": ".evaluate",
    "Example": ".examples",
    "ExampleSource": ".base",
    "ExpertIteration": ".expert_iteration",
    "GRPO": ".grpo",
    "Learner": ".base",
    "LearnerSpec": ".base",
    "LoopSettings": ".loop_settings",
    "LoopStats": ".loop",
    "LoraSettings": ".sft",
    "OnlineLoop": ".loop",
    "PGSettings": ".policy_gradient",
    "PPO": ".ppo",
    "PPOLearner": ".ppo",
    "PPOSettings": ".ppo",
    "PRMExample": ".prm",
    "Pair": ".pairs",
    "PairSettings": ".pairs",
    "Pairs": ".pairs",
    "PathSettings": ".examples",
    "PolicyGradientLearner": ".policy_gradient",
    "Rollout": ".rollouts",
    "RolloutSettings": ".rollouts",
    "Rollouts": ".rollouts",
    "SFTLearner": ".sft",
    "SFTSettings": ".sft",
    "TorchLearner": ".trainer",
    "TrainReport": ".prm",
    "TrainerSettings": ".trainer",
    "UpdateResult": ".base",
    "VerifiedPaths": ".examples",
    "build_tiny_prm": ".prm",
    "gae": ".ppo",
    "group_advantages": ".rollouts",
    "mc_examples": ".prm",
    "path_text": ".examples",
    "token_logprobs": ".policy_gradient",
    "train_prm": ".prm",
}

__all__ = [
    "DPO",
    "GRPO",
    "PPO",
    "DPOLearner",
    "DPOSettings",
    "Distill",
    "EvalSettings",
    "Evaluator",
    "Example",
    "ExampleSource",
    "ExpertIteration",
    "Learner",
    "LearnerSpec",
    "LoopSettings",
    "LoopStats",
    "LoraSettings",
    "OnlineLoop",
    "PGSettings",
    "PPOLearner",
    "PPOSettings",
    "PRMExample",
    "Pair",
    "PairSettings",
    "Pairs",
    "PathSettings",
    "PolicyGradientLearner",
    "Rollout",
    "RolloutSettings",
    "Rollouts",
    "SFTLearner",
    "SFTSettings",
    "TorchLearner",
    "TrainReport",
    "TrainerSettings",
    "UpdateResult",
    "VerifiedPaths",
    "build_tiny_prm",
    "gae",
    "group_advantages",
    "mc_examples",
    "path_text",
    "token_logprobs",
    "train_prm",
]

__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
