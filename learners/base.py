"""The Learner protocol the online loop trains through, and the base of learner configs.

A learner owns a model, an optimizer and a version: ``update(examples)`` takes one
optimizer step, ``weights()`` is what gets published to the sampling policy, ``save`` /
``load`` checkpoint it, ``export`` writes a servable checkpoint directory.

:class:`LearnerSpec` is the family base of the ``learners`` registry: a config's
``learner:`` section names one by ``kind``; its fields are the settings of the learner,
of the example converter and of the loop it runs in (each declared once, by the part
that owns it, and combined by inheritance).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from learners.examples import Example
from learners.loop_settings import LoopSettings
from runtime.core.registry import Component
from runtime.core.types import Episode
from runtime.search.context import Sampling, Verifiers

__all__ = ["ExampleSource", "Learner", "LearnerSpec", "UpdateResult"]


@dataclass(slots=True)
class UpdateResult:
    """What one optimizer step did."""

    step: int
    loss: float
    examples: int
    tokens: int
    seconds: float
    grad_norm: float
    metrics: dict[str, float] = field(default_factory=dict)
    """Learner-specific figures of the step (a policy-gradient learner's clipped and
    truncated tokens, mean ratio, KL, entropy)."""


@runtime_checkable
class Learner(Protocol):
    """Anything the online loop can train: it owns a model, an optimizer and a version."""

    name: str
    version: int
    steps: int
    busy_seconds: float
    tokenizer: Any

    async def update(self, examples: Sequence[Example]) -> UpdateResult: ...

    def weights(self) -> dict[str, Any]: ...

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None: ...

    def load(self, path: str | Path) -> dict[str, Any]: ...

    def export(self, directory: str | Path) -> None: ...

    def policy_config(self) -> Any:
        """The transformers config of the policy it trains (what an evaluator serves)."""
        ...


@runtime_checkable
class ExampleSource(Protocol):
    """What turns finished episodes into a learner's examples (verified paths, rollouts,
    preference pairs); it keeps counters the loop reports and state it checkpoints."""

    rejected_by_process: int

    async def examples(self, episode: Episode, verifiers: Verifiers | None = None) -> Sequence[Any]: ...

    def state(self) -> list[bytes]: ...

    def load_state(self, seen: Sequence[bytes]) -> None: ...


class LearnerSpec(Component, LoopSettings):
    """Base of the learner configs a run config can name (``learner: {kind: ..., ...}``)."""

    family: ClassVar[str] = "learners"
    key: ClassVar[str] = "kind"
    kind: str
    """Which learner."""
    trains_policy: ClassVar[bool] = True
    """True: the learner trains the run's own (local) policy and publishes to it;
    False: it trains a separate student (distillation)."""

    def start_checkpoint(self, policy_path: str | None) -> tuple[str, str]:
        """The checkpoint the learner starts from and the config field that names it."""
        return policy_path or "", "policy.path"

    def build_learner(self, model: Any, tokenizer: Any, sampling: Sampling) -> Learner:
        """The learner over ``model`` (``sampling``: how the run samples, for learners
        whose loss depends on it)."""
        raise NotImplementedError

    def build_converter(self, delimiter: str) -> ExampleSource:
        """What turns episodes into the learner's examples."""
        raise NotImplementedError
