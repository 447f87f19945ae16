"""The Strategy protocol that search is written against, and the base of configurable
strategies.

A strategy is ``async run(ctx) -> Episode``: it talks to the policy and verifiers only
through the episode context. :class:`BaseStrategy` is the family base of the
``strategies`` registry: a subclass is a pydantic model whose fields are its settings
(documented, range-checked) and whose ``name`` field is what configs call it; defining
the subclass registers it (see :mod:`runtime.core.registry`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

from runtime.core.registry import Component
from runtime.core.types import Episode
from runtime.search.context import Context

__all__ = ["BaseStrategy", "Strategy"]


@runtime_checkable
class Strategy(Protocol):
    """A search procedure. It talks to the policy and verifiers only through ``ctx``."""

    @property
    def name(self) -> str: ...

    def config(self) -> dict[str, Any]: ...

    async def run(self, ctx: Context) -> Episode: ...


class BaseStrategy(Component):
    """Base of the strategies a config can name (``strategy: {name: ..., ...}``)."""

    family: ClassVar[str] = "strategies"
    name: str
    """What configs call the strategy."""

    def config(self) -> dict[str, Any]:
        """The strategy's settings (stored with the run)."""
        return self.model_dump(exclude={"name"})

    def needs(self) -> dict[str, str]:
        """Verifiers the strategy needs as configured ("process", "outcome"), each with
        the setting that needs it (checked against the run's verifiers up front)."""
        return {}

    async def run(self, ctx: Context) -> Episode:
        raise NotImplementedError
