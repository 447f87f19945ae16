"""The Strategy protocol: ``async run(ctx) -> Episode``, plus a name and its config."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from runtime.context import Context
from runtime.types import Episode

__all__ = ["Strategy"]


@runtime_checkable
class Strategy(Protocol):
    """A search procedure. It talks to the policy and verifiers only through ``ctx``."""

    name: str

    def config(self) -> dict[str, Any]: ...

    async def run(self, ctx: Context) -> Episode: ...
