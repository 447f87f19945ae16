"""Part 4, learning: turn episodes into training signal and publish new policy versions.

The learner contract (:class:`Learner`): ``async update(examples) -> UpdateResult``
takes one optimizer step, ``weights()`` is what gets published to the policy.
:class:`OnlineLoop` runs a scheduler and a learner together, :class:`VerifiedPaths`
turns episodes into examples, :class:`Evaluator` scores policy versions on held-out
tasks, :mod:`learners.prm` trains process reward models. Learner configs
(:class:`ExpertIteration`, :class:`Distill`) register under their ``kind``. Names are
imported on first use (torch loads with the first learner).
"""

from __future__ import annotations

from runtime.core.lazy import lazy_exports as _lazy_exports

_EXPORTS = {
    "Distill": ".distill",
    "EvalSettings": ".loop_settings",
    "Evaluator": ".evaluate",
    "Example": ".examples",
    "ExpertIteration": ".expert_iteration",
    "Learner": ".base",
    "LearnerSpec": ".base",
    "LoopSettings": ".loop_settings",
    "LoopStats": ".loop",
    "LoraSettings": ".sft",
    "OnlineLoop": ".loop",
    "PRMExample": ".prm",
    "PathSettings": ".examples",
    "SFTLearner": ".sft",
    "SFTSettings": ".sft",
    "TrainReport": ".prm",
    "UpdateResult": ".base",
    "VerifiedPaths": ".examples",
    "build_tiny_prm": ".prm",
    "mc_examples": ".prm",
    "path_text": ".examples",
    "train_prm": ".prm",
}

__all__ = [
    "Distill",
    "EvalSettings",
    "Evaluator",
    "Example",
    "ExpertIteration",
    "Learner",
    "LearnerSpec",
    "LoopSettings",
    "LoopStats",
    "LoraSettings",
    "OnlineLoop",
    "PRMExample",
    "PathSettings",
    "SFTLearner",
    "SFTSettings",
    "TrainReport",
    "UpdateResult",
    "VerifiedPaths",
    "build_tiny_prm",
    "mc_examples",
    "path_text",
    "train_prm",
]

__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
