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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from learners.examples import Example
from learners.loop_settings import LoopSettings
from runtime.core.registry import Component

__all__ = ["Learner", "LearnerSpec", "UpdateResult"]


@dataclass(slots=True)
class UpdateResult:
    """What one optimizer step did."""

    step: int
    loss: float
    examples: int
    tokens: int
    seconds: float
    grad_norm: float


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

    def build_learner(self, model: Any, tokenizer: Any) -> Learner:
        raise NotImplementedError

    def build_converter(self, delimiter: str) -> Any:
        """What turns episodes into the learner's examples."""
        raise NotImplementedError
