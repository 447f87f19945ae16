"""The Learner protocol: one optimizer step on a batch of examples, and the weights to publish."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from learners.examples import Example
from learners.sft import UpdateResult

__all__ = ["Learner"]


@runtime_checkable
class Learner(Protocol):
    """Anything the online loop can train: it owns a model, an optimizer and a version."""

    name: str
    version: int
    steps: int

    async def update(self, examples: Sequence[Example]) -> UpdateResult: ...

    def weights(self) -> dict[str, Any]: ...
