"""The interpreter around the episodes: which event loop runs them, and how the cyclic
garbage collector behaves while they run.

``run_async(fn, *args, loop="asyncio" | "uvloop")`` is ``anyio.run`` on the asyncio
backend, with uvloop's loop when asked (``pip install "searchlearn[fast]"``).
``TunedCollector(mode, concurrency)`` is what :class:`~runtime.scheduling.Runtime`
holds while a stream runs (``scheduler.gc``).

Design decisions:
- Why the collector is tuned: at 10,000 episodes in flight each episode holds ~70
  GC-tracked objects (its tree, its coroutines, its anyio task) for its whole life. The
  interpreter's young collection, every 700 new objects, finds them alive and promotes
  them, and its full collections (one each time the old generation grew by a quarter)
  walk every live tree again: about a third of the process's CPU in
  ``tests/bench/scheduler.py`` part (a), measured with ``gc.callbacks``.
- ``auto`` does two things while any stream runs. (1) ``gc.freeze()``: the heap that
  exists when the stream starts (modules, a loaded model, the policy, the task list)
  moves to the permanent generation, so no collection walks it again (a full
  collection with torch and transformers imported: ~140 ms, then ~0). No collection
  runs first, so the first stream does not pay one; cyclic garbage frozen with the
  heap waits until the last stream ends. (2) The young generation grows with the
  stream: threshold 0 becomes ``YOUNG_OBJECTS_PER_EPISODE × concurrency`` (at least
  the interpreter's), so the ~15 objects a step keeps across its model call mostly die
  before a young collection sees them, and two young generations span ~100 objects per
  episode in flight, so most episodes end before they are promoted; threshold 2 becomes
  1, so the interpreter's own full-collection rule is checked after every middle
  collection.
- Memory stays bounded: collection stays automatic, never off. A garbage cycle waits
  for at most ``10 × concurrency`` new objects (the next young collection),
  ``100 × concurrency`` if it was promoted once, and once old until the old generation
  grew by a quarter (the interpreter's own rule); an episode in flight holds ~70
  objects, so what waits is a fraction of what the stream holds live anyway. The
  runtime's own episodes leave no cycles (measured: none per ChainOfThought episode,
  finished or failed); the bound is for strategies and policies that do, and
  ``tests/test_scheduler_gc.py`` runs a stream whose every episode leaves one. There is
  no ``off`` mode for that reason.
- A library does not leave global state changed: holds are counted process-wide (two
  runtimes, or two streams of one runtime, may run at once); the first hold saves the
  thresholds and the freeze it found, the last release puts them back. It never
  enables or disables the collector, and unfreezes only what it froze: if the
  application had frozen objects itself (``gc.get_freeze_count() > 0``), nothing is
  frozen and theirs stay as they were. Thresholds changed by someone else during a
  stream are overwritten by the restore.
"""

from __future__ import annotations

import gc
import importlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import anyio

from runtime.core.errors import ConfigError

__all__ = ["YOUNG_OBJECTS_PER_EPISODE", "EventLoop", "GcMode", "TunedCollector", "run_async"]

EventLoop = Literal["asyncio", "uvloop"]
"""The event loop of a run: asyncio's own, or uvloop's (the ``fast`` extra)."""
GcMode = Literal["auto", "default"]
"""How the cyclic garbage collector runs while a stream does (see the module docstring)."""
YOUNG_OBJECTS_PER_EPISODE = 10  # threshold 0 per episode in flight, in ``auto``

T = TypeVar("T")


def run_async(fn: Callable[..., Awaitable[T]], *args: Any, loop: EventLoop = "asyncio") -> T:
    """``anyio.run(fn, *args)`` on the asyncio backend, on asyncio's loop or uvloop's.

    Raises :class:`~runtime.core.errors.ConfigError` when uvloop is asked for and not
    installed (``pip install "searchlearn[fast]"``), or for an unknown loop."""
    if loop == "asyncio":
        return anyio.run(fn, *args, backend="asyncio")
    if loop == "uvloop":
        try:
            importlib.import_module("uvloop")
        except ImportError as exc:
            raise ConfigError(
                'event loop "uvloop" needs the uvloop package: pip install "searchlearn[fast]" (or choose "asyncio")'
            ) from exc
        return anyio.run(fn, *args, backend="asyncio", backend_options={"use_uvloop": True})
    raise ConfigError(f"unknown event loop {loop!r}: choose 'asyncio' or 'uvloop'")


class _Collector:
    """The process-wide state: how many holds, and what the first one found."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holds = 0
        self.saved: tuple[int, ...] = ()
        self.froze = False

    def acquire(self, concurrency: int) -> None:
        with self.lock:
            if self.holds == 0:
                self.saved = gc.get_threshold()
                self.froze = gc.get_freeze_count() == 0
                if self.froze:
                    gc.freeze()
            self.holds += 1
            young = max(self.saved[0], YOUNG_OBJECTS_PER_EPISODE * concurrency, gc.get_threshold()[0])
            if young > self.saved[0]:
                gc.set_threshold(young, self.saved[1], 1)

    def release(self) -> None:
        with self.lock:
            self.holds -= 1
            if self.holds == 0:
                gc.set_threshold(*self.saved)
                if self.froze:
                    gc.unfreeze()
                    self.froze = False


_COLLECTOR = _Collector()


class TunedCollector:
    """A hold on the tuned collector for one stream (``with TunedCollector(...):``);
    ``default`` holds nothing. See the module docstring."""

    __slots__ = ("_concurrency", "_held", "_mode")

    def __init__(self, mode: GcMode, concurrency: int) -> None:
        self._mode = mode
        self._concurrency = concurrency
        self._held = False

    def __enter__(self) -> TunedCollector:
        if self._mode == "auto" and not self._held:
            _COLLECTOR.acquire(self._concurrency)
            self._held = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._held:
            self._held = False
            _COLLECTOR.release()
