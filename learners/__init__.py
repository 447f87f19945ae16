"""Part 4, learning: turn episodes into training signal and publish new policy versions.

The learner contract (:class:`Learner`): ``async update(examples) -> UpdateResult``
takes one optimizer step, ``weights()`` is what gets published to the policy.
:class:`OnlineLoop` runs a scheduler and a learner together, :class:`VerifiedPaths`
turns episodes into examples, :class:`Evaluator` scores policy versions on held-out
tasks, :mod:`learners.prm` trains process reward models. Policy gradient:
:class:`Rollouts` turns search trees into groups with per-step advantages and
:class:`PolicyGradientLearner` takes PPO-clip steps on them. Learner configs
(:class:`ExpertIteration`, :class:`Distill`, :class:`GRPO`, :class:`PPO`, :class:`DPO`, and the
reward models :class:`PRM` and :class:`ORM`) register under their ``kind``. Names are
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
    "LabelledPath": ".reward_models",
    "Learner": ".base",
    "LearnerSpec": ".base",
    "LoopSettings": ".loop_settings",
    "LoopStats": ".loop",
    "LoraSettings": ".sft",
    "ORM": ".reward_models",
    "OnlineLoop": ".loop",
    "OutcomeRMLearner": ".reward_models",
    "PGSettings": ".policy_gradient",
    "PPO": ".ppo",
    "PPOLearner": ".ppo",
    "PPOSettings": ".ppo",
    "PRM": ".reward_models",
    "PRMExample": ".prm",
    "PRMLearner": ".reward_models",
    "Pair": ".pairs",
    "PairSettings": ".pairs",
    "Pairs": ".pairs",
    "PathSettings": ".examples",
    "PolicyGradientLearner": ".policy_gradient",
    "ReflectionSettings": ".reflection",
    "ReflectionTraces": ".reflection",
    "Rollout": ".rollouts",
    "RolloutSettings": ".rollouts",
    "Rollouts": ".rollouts",
    "SFTLearner": ".sft",
    "SFTSettings": ".sft",
    "StepLabels": ".reward_models",
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
    "value_head_model": ".reward_models",
}

__all__ = [
    "DPO",
    "GRPO",
    "ORM",
    "PPO",
    "PRM",
    "DPOLearner",
    "DPOSettings",
    "Distill",
    "EvalSettings",
    "Evaluator",
    "Example",
    "ExampleSource",
    "ExpertIteration",
    "LabelledPath",
    "Learner",
    "LearnerSpec",
    "LoopSettings",
    "LoopStats",
    "LoraSettings",
    "OnlineLoop",
    "OutcomeRMLearner",
    "PGSettings",
    "PPOLearner",
    "PPOSettings",
    "PRMExample",
    "PRMLearner",
    "Pair",
    "PairSettings",
    "Pairs",
    "PathSettings",
    "PolicyGradientLearner",
    "ReflectionSettings",
    "ReflectionTraces",
    "Rollout",
    "RolloutSettings",
    "Rollouts",
    "SFTLearner",
    "SFTSettings",
    "StepLabels",
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
    "value_head_model",
]

__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
