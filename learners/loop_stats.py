"""The online loop's counters (:class:`LoopStats`): what the run's summary shows, what
the learner checkpoint keeps, and what the trackers report (:mod:`learners.trackers`).

Machine use is counted, not guessed: every generated and prompt token, and every token a
learner step processed, times the model's parameters (2 FLOP a parameter a token forward,
6 forward and backward), over wall time.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LoopStats"]


@dataclass(slots=True)
class LoopStats:
    episodes: int = 0
    replayed: int = 0
    examples: int = 0
    no_examples: int = 0
    rejected_by_process: int = 0
    dropped_stale: int = 0
    downweighted: int = 0
    steps: int = 0
    version: int = 0
    last_loss: float | None = None
    learner_seconds: float = 0.0
    elapsed_before: float = 0.0
    started: float = field(default_factory=time.monotonic)
    staleness: Counter[int] = field(default_factory=Counter)
    curve: list[dict[str, Any]] = field(default_factory=list)
    learner_counts: Counter[str] = field(default_factory=Counter)
    """Summed counters the learner reports per step (clipped / truncated tokens)."""
    skipped_groups: int = 0
    reencoded_paths: int = 0
    """Examples with text of the policy's that the learner encoded (no sampled ids)."""
    replay_steps: int = 0
    retries: int = 0
    """Unsolved tasks queued to run again (retry_unsolved)."""
    """Optimizer steps on replayed examples taken while no new batch was ready."""
    generated_tokens: int = 0
    """Prompt and completion tokens of the episodes consumed (what the policy computed)."""
    trained_tokens: int = 0
    """Tokens of every example in every learner step (the learner's forward and backward)."""
    parameters: int = 0
    """Parameters of the trained model, for the FLOP count."""

    @property
    def model_flops(self) -> float:
        """Model FLOP/s of generation and training together (2 per parameter per token of
        the policy's calls, 6 per token trained), over the elapsed time."""
        flops = self.parameters * (2 * self.generated_tokens + 6 * self.trained_tokens)
        return flops / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def as_dict(self) -> dict[str, Any]:
        return {
            "episodes consumed": self.episodes,
            "replayed after restart": self.replayed,
            "examples trained": self.examples,
            "episodes without an example": self.no_examples,
            "correct paths with a rejected step": self.rejected_by_process,
            "dropped (stale)": self.dropped_stale,
            "down-weighted (stale)": self.downweighted,
            "optimizer steps": self.steps,
            "policy version": self.version,
            "last loss": self.last_loss,
            "learner utilisation": self.learner_seconds / self.elapsed if self.elapsed > 0 else 0.0,
            "staleness histogram": dict(sorted(self.staleness.items())),
            **({"groups skipped (equal rewards)": self.skipped_groups} if self.skipped_groups else {}),
            **({"paths re-encoded (no sampled ids)": self.reencoded_paths} if self.reencoded_paths else {}),
            **({"replay steps (learner otherwise idle)": self.replay_steps} if self.replay_steps else {}),
            **({"unsolved tasks queued again": self.retries} if self.retries else {}),
            **({"model GFLOP/s": round(self.model_flops / 1e9, 1)} if self.parameters else {}),
            **{f"{k.replace('_', ' ')} (all steps)": int(v) for k, v in sorted(self.learner_counts.items())},
        }
