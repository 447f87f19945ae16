"""Forward passes shared by concurrent callers: what the reward models (``prm``,
``orm``) score with.

:class:`MicroBatcher` collects the items of every caller of the same moment, runs them
through one forward pass (in a worker thread, ``batch_size`` at a time), hands each
caller its result, and keeps the latest results by key (LRU), so a path scored twice
costs one pass.

Design decisions:
- A caller yields once before joining, so the callers of one scheduler tick share a
  batch; the first to take the lock runs batches until its own item is done, the others
  find theirs done when they get the lock.
- A failed forward pass fails every caller of that batch with the model's own error
  (raised as :class:`~runtime.core.errors.VerifierError` naming ``what``); the next
  batch is tried afresh.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from runtime.core.errors import VerifierError

__all__ = ["CACHE_SIZE", "MicroBatcher"]

CACHE_SIZE = 4096
"""Results kept by key."""

I = TypeVar("I")  # noqa: E741 (the item type)
R = TypeVar("R")


@dataclass(slots=True)
class _Entry(Generic[I, R]):
    item: I
    result: R | None = None
    error: BaseException | None = None
    done: bool = False


class MicroBatcher(Generic[I, R]):
    """Runs ``forward`` over the items of concurrent callers, ``batch_size`` at a time (see module doc)."""

    def __init__(self, forward: Callable[[list[I]], list[R]], batch_size: int, what: str) -> None:
        self.forward = forward
        self.batch_size = batch_size
        self.what = what
        self._queue: list[_Entry[I, R]] = []
        self._lock = anyio.Lock()
        self._cache: OrderedDict[str, R] = OrderedDict()

    async def __call__(self, key: str, item: I) -> R:
        """``forward``'s result for ``item`` (cached under ``key``)."""
        if (hit := self._cache.get(key)) is not None:
            self._cache.move_to_end(key)
            return hit
        entry: _Entry[I, R] = _Entry(item)
        self._queue.append(entry)
        await anyio.lowlevel.checkpoint()  # let callers of the same moment join the batch
        async with self._lock:
            while not entry.done:
                batch, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size :]
                try:
                    results = await anyio.to_thread.run_sync(self.forward, [e.item for e in batch])
                except Exception as exc:  # every caller of the batch sees the failure
                    for e in batch:
                        e.error, e.done = exc, True
                    continue
                for e, r in zip(batch, results, strict=True):
                    e.result, e.done = r, True
        if entry.error is not None:
            raise VerifierError(f"{self.what} failed: {entry.error!r}") from entry.error
        assert entry.result is not None
        self._cache[key] = entry.result
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return entry.result
