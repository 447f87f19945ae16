"""A weight version handed over from the learner's side and applied on the policy's own
event loop: what the backends that cannot swap from another thread (vLLM's engine, a
server loading adapters) share.

``put`` is synchronous (``WeightedPolicy.swap_weights``): it only records the newest
version, replacing one not yet applied. ``apply_pending`` applies what is recorded, one
version at a time under a lock, shielded from cancellation so a version is never half
published; the policy calls it before its next request (or at once, ``load_weights``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio

__all__ = ["DeferredWeights"]


class DeferredWeights:
    def __init__(self, apply: Callable[[dict[str, Any], int], Awaitable[None]]) -> None:
        self._apply = apply
        self.pending: tuple[dict[str, Any], int] | None = None
        self._lock = anyio.Lock()

    @property
    def busy(self) -> bool:
        """A version is being applied right now."""
        return self._lock.locked()

    def put(self, state_dict: dict[str, Any], version: int) -> None:
        self.pending = (state_dict, version)

    def clear(self) -> None:
        self.pending = None

    async def apply_pending(self) -> None:
        async with self._lock:
            while self.pending is not None:
                state, version = self.pending
                self.pending = None
                with anyio.CancelScope(shield=True):
                    await self._apply(state, version)
