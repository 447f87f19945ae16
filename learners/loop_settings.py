"""The online loop's settings (every learner config inherits them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from learners.trackers import tracker_names
from runtime.core.registry import ComponentField
from runtime.policy.placement import DEVICE_PATTERN, DtypeName
from runtime.scheduling.tasks import TaskSource
from runtime.tiny.tasks import TinyTasks

__all__ = ["EvalSettings", "LoopSettings"]


class EvalSettings(BaseModel):
    """Held-out evaluation inside the loop."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    every: int = Field(5, ge=1)
    """Evaluate every this many policy versions (and at the start and the end)."""
    every_seconds: float | None = Field(None, gt=0)
    """Instead of every: evaluate at the first version published this many seconds after
    the last evaluation began (rows that step at different rates get comparable curves)."""
    tasks: ComponentField("tasks", TaskSource) = Field(default_factory=lambda: TinyTasks(size=100, seed=10_000))  # type: ignore[valid-type]
    """Held-out tasks; use a seed the training tasks do not use. Without a ``system`` of
    their own they take the run's ``tasks.system``, so they are asked in the same format."""
    strategy: bool = True
    """Also measure the run's strategy (besides greedy pass@1)."""
    device: str = Field("auto", pattern=DEVICE_PATTERN)
    """Where the evaluator's engine runs: auto (the first GPU when torch sees one, else
    the CPU), cpu, cuda or cuda:N; each evaluated version is copied onto it (GPU to GPU
    without passing through the CPU where the learner is on a GPU too)."""
    dtype: DtypeName = "float32"
    """The evaluator engine's weights: float32, or bfloat16 (half the memory; greedy text
    on the bundled policy as float32's)."""


class LoopSettings(BaseModel):
    """How the online loop runs (part of a learner config section)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    mode: Literal["online", "sync"] = "online"
    """online: generation and training overlap; sync: generate a batch, stop, train, repeat (baseline)."""
    batch_examples: int = Field(32, ge=1)
    """Examples per optimizer step (whole episodes: a step may take a few more)."""
    passes: int = Field(1, ge=1, le=100)
    """Optimizer steps each example is trained in (reuse of scarce examples): each round
    steps on the new batch and the previous passes-1 batches, shuffled together."""
    idle_replay: bool = False
    """Instead of waiting for a new batch, step on examples drawn from the replay pool
    (the last replay_pool examples trained, each at most max_reuse times): the learner's
    cores never idle while generation is slower than training."""
    replay_pool: int = Field(4096, ge=1)
    """Idle replay: the most recent examples kept to draw from."""
    replay_min_pool: int = Field(512, ge=1)
    """Idle replay: examples the pool must hold before the first replay step (replaying
    a pool of one or two batches overfits them)."""
    max_reuse: int = Field(8, ge=1, le=1000)
    """Idle replay: optimizer steps an example is trained in at most (its first included)."""
    retry_unsolved: int = Field(0, ge=0, le=16)
    """Online mode: run a task whose episode ended unsolved again, up to this many more
    times, once the policy has moved retry_after versions on (a new sample index each
    time, so the store keeps every attempt)."""
    retry_after: int = Field(20, ge=1)
    """Versions between an unsolved episode and the retry of its task."""
    steps_per_version: int = Field(1, ge=1)
    """Optimizer steps between published policy versions."""
    max_staleness: int = Field(4, ge=0)
    """k: examples sampled more than k versions ago are dropped or down-weighted."""
    stale: Literal["drop", "downweight"] = "drop"
    """What happens to a stale example (always counted)."""
    stale_decay: float = Field(0.5, gt=0, le=1)
    """Down-weighting: weight x decay ** (staleness - k)."""
    buffer_episodes: int = Field(64, ge=1)
    """Finished episodes waiting for the learner; a full buffer slows admission."""
    sync_episodes: int = Field(64, ge=1)
    """Sync mode: episodes generated per round."""
    max_minutes: float | None = Field(None, gt=0)
    """Stop after this much wall time (counted from the end of the start evaluation)."""
    max_versions: int | None = Field(None, ge=1)
    """Stop after this many published versions."""
    checkpoint: str | None = None
    """Learner checkpoint file; default runs/<run_id>/learner.pt next to the store."""
    checkpoint_every: int = Field(1, ge=1)
    """Checkpoint every this many versions."""
    eval: EvalSettings | None = Field(default_factory=EvalSettings)
    """Held-out evaluation inside the loop (null: none)."""
    report_to: list[str] = Field(default_factory=list)
    """Experiment trackers the loop's metrics go to, as TRL names them: tensorboard
    (needs the tensorboard package), wandb (offline unless WANDB_MODE says otherwise);
    a name, a list, "all" or "none". Loss, KL, entropy, clip fraction, reward,
    staleness, throughput after every learner update; the evaluation curve's points."""
    logging_dir: str | None = None
    """Folder the trackers write to; default runs/<run_id>/tb next to the store."""

    @field_validator("report_to", mode="before")
    @classmethod
    def _trackers(cls, value: object) -> object:
        if isinstance(value, str):
            value = {"all": tracker_names(), "none": []}.get(value, [value])
        if isinstance(value, list):
            unknown = [v for v in value if v not in tracker_names()]
            if unknown:
                raise ValueError(f"unknown tracker {unknown[0]!r}; allowed: {', '.join(tracker_names())}, all, none")
            return list(dict.fromkeys(value))
        return value

    @property
    def max_seconds(self) -> float | None:
        return self.max_minutes * 60 if self.max_minutes else None

    @property
    def eval_every(self) -> int:
        return self.eval.every if self.eval is not None else 1
