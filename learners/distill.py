"""Distillation from any policy (typically a hosted teacher behind an OpenAI-compatible
endpoint, no logprobs needed) into a local student: the teacher's verified traces are
behaviour-cloned into the student, which never samples training episodes (only the
evaluator serves it), so nothing the teacher produced goes stale.
"""

from __future__ import annotations

from typing import Literal

from learners.expert_iteration import ExpertIteration
from runtime.core.errors import ConfigError

__all__ = ["Distill"]


class Distill(ExpertIteration):
    """Episodes come from the run's policy (any backend, e.g. a hosted teacher) and train the student."""

    kind: Literal["distill"] = "distill"  # type: ignore[assignment]
    trains_policy = False
    student: str | None = None
    """The student's checkpoint directory ('bundled' or a path)."""
    student_init: Literal["pretrained", "scratch", "scratch_small"] = "pretrained"
    """Start from the student's weights, or a fresh model of its architecture
    (scratch_small: with half its layers)."""

    def start_checkpoint(self, policy_path: str | None) -> tuple[str, str]:
        if not self.student:
            raise ConfigError(
                "learner.student: distillation needs a student checkpoint directory ('bundled' or a path)"
            )
        return self.student, "learner.student"
