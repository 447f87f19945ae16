"""Learners: turn episodes into training signal and publish new policy versions.

The learner contract (:class:`Learner`): ``async update(examples) -> UpdateResult``
takes one optimizer step, ``weights()`` is what gets published to the policy.
:class:`OnlineLoop` runs a scheduler and a learner together (expert iteration,
distillation), :class:`VerifiedPaths` turns episodes into examples, and
:class:`Evaluator` scores policy versions on held-out tasks.
"""

from __future__ import annotations

from learners.base import Learner
from learners.evaluate import Evaluator
from learners.examples import Example, VerifiedPaths, path_text
from learners.loop import LoopSettings, LoopStats, OnlineLoop
from learners.sft import LoraSettings, SFTLearner, UpdateResult

__all__ = [
    "Evaluator",
    "Example",
    "Learner",
    "LoopSettings",
    "LoopStats",
    "LoraSettings",
    "OnlineLoop",
    "SFTLearner",
    "UpdateResult",
    "VerifiedPaths",
    "path_text",
]
