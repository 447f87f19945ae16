"""Expert iteration (STaR, Zelikman et al. 2022; ReST-EM, Singh et al. 2023) with search
as the expert: the run's local policy solves tasks under the configured strategy, its
verified-correct paths are behaviour-cloned while generation goes on, and each new
version is published back into the engine that serves the next episodes.

The config (``learner: {kind: expert_iteration, ...}``) combines, by inheritance, the
settings of the three parts that use them: the loop (every learner config's base), the
supervised learner (:class:`SFTSettings`) and the path filter with its optional reflection
traces (:class:`ReflectionSettings`).
"""

from __future__ import annotations

from typing import Any, Literal

from learners.base import LearnerSpec
from learners.examples import VerifiedPaths
from learners.reflection import ReflectionSettings, ReflectionTraces
from learners.sft import SFTLearner, SFTSettings
from runtime.search.context import Sampling

__all__ = ["ExpertIteration"]


class ExpertIteration(LearnerSpec, SFTSettings, ReflectionSettings):
    """The policy learns from its own verified episodes (policy.kind local)."""

    kind: Literal["expert_iteration"] = "expert_iteration"

    def build_learner(self, model: Any, tokenizer: Any, sampling: Sampling) -> SFTLearner:
        return SFTLearner(model, tokenizer, self)

    def build_converter(self, delimiter: str) -> VerifiedPaths:
        if self.traces == "reflection":
            return ReflectionTraces(self, delimiter=delimiter)
        return VerifiedPaths(self, delimiter=delimiter)
