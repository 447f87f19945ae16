"""Killable worker processes for verifiers that run foreign computation.

A verifier that hands model text to a parser or a computer algebra system (math-verify
and sympy, a reasoning-gym scorer) can start a computation that does not end:
``9^{9^{9}}`` makes sympy raise a 370-million-digit power inside one C call that holds
the GIL. In a thread that freezes the whole runtime (event loop, every timeout, signal
handlers); a process can be killed. ``await run_in_worker(fn, *args, timeout=...)``
runs a picklable top-level function in a worker process; at the deadline the worker is
killed and replaced, and the call raises ``TimeoutError``.

Design decisions:

- pebble's ``ProcessPool``, not the standard ``ProcessPoolExecutor``: pebble kills the
  worker that runs a call on its deadline or on cancellation and starts a replacement;
  the standard pool can neither stop a running call nor survive a worker's death.
- The deadline is pebble's per-call ``timeout``, counted from when a worker takes the
  call: time spent queued behind other calls is not charged to it (the caller's own
  deadline, such as the context's verifier timeout, bounds the total). Workers reset
  SIGTERM to its default action, so the kill lands at once even mid C call (pebble's
  own handler is Python code that cannot run there; pebble would SIGKILL after 3 s).
- Waiting polls the future with anyio sleeps (1 ms, doubling to 20 ms): the same code
  under asyncio and trio, no thread held per call, and cancellation is the sleep's
  checkpoint. A done-callback runs on pebble's thread, and anyio's one way to wake a
  task from there (``from_thread.run_sync``) blocks that thread on the event loop and
  fails once the loop has closed. The price: at most 50 wake-ups a second per pending
  call and up to 20 ms of latency on a slow one.
- Cancelling the awaiting task cancels the future: a queued call is dropped, a running
  one has its worker killed (at pebble's next 0.1 s manager tick) and replaced.
- One pool per process, started on first use, in a worker thread (starting waits for
  the fork server): ``import runtime`` loads neither pebble nor multiprocessing.
  :func:`configure_workers` sets the pool's :class:`WorkerSettings` before it starts.
- Start method ``forkserver``: the runtime, which may run torch or other threads, is
  never forked. The fork server is a fresh interpreter that imports ``preload`` once
  (the verifiers' heavy imports: math-verify, reasoning-gym) and forks every worker from
  there, so a worker starts in milliseconds with them loaded; ``spawn`` would import
  them again in each new worker, charged to its first call's deadline. The preload list
  is the process's (multiprocessing keeps one fork server); a fork server started
  earlier by other code keeps its own, and workers then import on first use.
- Each worker: an address-space rlimit (a giant allocation raises ``MemoryError`` in the
  worker, not a swapping host) and no core files, SIGINT ignored (Ctrl-C reaches the
  runtime, which stops the pool), replaced after ``max_tasks`` calls to bound leaks, and
  killed by the kernel when its fork server dies (``PR_SET_PDEATHSIG``, Linux). The
  fork server exits when no process holds its "alive" pipe; a worker closes the end it
  inherits, so the server lives exactly as long as the runtime and a runtime killed with
  SIGKILL leaves no worker behind, even one stuck in a C call.
- Failures stay per call: the deadline raises ``TimeoutError``, a worker that dies
  mid-call (the OOM killer, a signal, ``os._exit``) raises :class:`WorkerCrashed` for that
  call only, and a pool that pebble declares broken (it does when an idle worker dies
  abnormally) is replaced at the next call. Errors the function raises come back as
  themselves.
- :func:`shutdown_workers` (registered to run at interpreter exit) stops the pool, kills
  its workers and fails the calls still waiting; the next call starts a fresh pool.

Functions must be importable by the worker (defined at module top level, not in
``__main__`` or a closure), as must their arguments and results. As with any
forkserver or spawn pool, a worker imports the main script as ``__mp_main__``: a script
that uses these verifiers keeps its work under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple

import anyio
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from concurrent.futures import Future

    from pebble import ProcessPool

__all__ = [
    "WorkerCrashed",
    "WorkerSettings",
    "WorkerStatistics",
    "configure_workers",
    "run_in_worker",
    "shutdown_workers",
    "worker_statistics",
]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

DEFAULT_MEMORY_MB = 2048
DEFAULT_MAX_TASKS = 200
DEFAULT_PRELOAD = ("runtime.rewards.outcome", "math_verify", "reasoning_gym")
_FIRST_POLL = 0.001
_MAX_POLL = 0.02
_PR_SET_PDEATHSIG = 1


def _default_size() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(2, cpus)


class WorkerCrashed(RuntimeError):
    """A worker process died while it ran the call (killed by a memory limit or a
    signal, or it exited), or the pool was shut down under it. Only that call fails."""


class WorkerSettings(BaseModel):
    """The verifier worker pool of this process (see :func:`configure_workers`)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    size: int = Field(default_factory=_default_size, ge=1, le=256)
    """Worker processes (default: two, or one on a single-CPU machine)."""
    max_tasks: int = Field(default=DEFAULT_MAX_TASKS, ge=0)
    """Calls a worker serves before it is replaced, to bound leaks (0: never replaced)."""
    memory_mb: int | None = Field(default=DEFAULT_MEMORY_MB, ge=64)
    """Address-space limit of each worker in MiB; beyond it allocations raise MemoryError
    in the worker (None: no limit)."""
    preload: tuple[str, ...] = DEFAULT_PRELOAD
    """Modules the fork server imports once before it forks workers, so every worker
    starts with them loaded (one that fails to import is skipped)."""


@dataclass(frozen=True, slots=True)
class WorkerStatistics:
    """What the pool holds and has done in this process."""

    started: bool
    """Whether a pool is running."""
    workers: tuple[int, ...]
    """Process ids of the live workers."""
    pending: int
    """Calls queued or running."""
    completed: int
    """Calls that returned or raised their own error."""
    timed_out: int
    """Calls killed at their deadline."""
    cancelled: int
    """Calls whose awaiting task was cancelled."""
    crashed: int
    """Calls whose worker died under them."""


_LOCK = threading.Lock()  # starting and stopping the pool (held while workers start)
_PENDING_LOCK = threading.Lock()  # the set of waiting calls (held for a moment only)
_SETTINGS = WorkerSettings()
_POOL: ProcessPool | None = None
_PENDING: set[Future[Any]] = set()
_COUNTS = {"completed": 0, "timed_out": 0, "cancelled": 0, "crashed": 0}
_ATEXIT_REGISTERED = False


def configure_workers(settings: WorkerSettings | None = None, /, **fields: Any) -> WorkerSettings:
    """Set the pool's settings (a :class:`WorkerSettings`, and/or fields by name) for its
    next start; raises ``RuntimeError`` while a pool runs (``shutdown_workers()`` first)."""
    global _SETTINGS
    base = settings.model_dump() if settings is not None else {}
    new = WorkerSettings.model_validate({**base, **fields})
    with _LOCK:
        if _POOL is not None:
            raise RuntimeError("the worker pool is running; call shutdown_workers() before configure_workers()")
        _SETTINGS = new
    return new


# ``timeout`` is the worker's kill deadline, which no cancel scope on this side can enforce.
async def run_in_worker(fn: Callable[[*Ts], T], *args: *Ts, timeout: float | None) -> T:  # noqa: ASYNC109
    """``fn(*args)`` in a worker process. At ``timeout`` seconds after a worker takes the
    call (None: no deadline) the worker is killed and ``TimeoutError`` raised; a worker
    that dies raises :class:`WorkerCrashed`; cancelling the caller kills the call."""
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be > 0 or None, got {timeout!r}")
    pool, future = await _schedule(fn, args, timeout)
    try:
        delay = _FIRST_POLL
        while not future.done() and pool.active:
            await anyio.sleep(delay)
            delay = min(delay * 2, _MAX_POLL)
    except BaseException:
        if future.cancel():  # queued: dropped; running: pebble kills its worker
            _COUNTS["cancelled"] += 1
        raise
    finally:
        with _PENDING_LOCK:
            _PENDING.discard(future)
    if not future.done():  # the pool was stopped under the call
        future.cancel()
        _COUNTS["crashed"] += 1
        raise WorkerCrashed(f"the worker pool was shut down while running {_name(fn)}")
    return _outcome(future, fn, timeout)


async def _schedule(
    fn: Callable[..., T], args: tuple[Any, ...], deadline: float | None
) -> tuple[ProcessPool, Future[T]]:
    for attempt in range(2):
        pool = _POOL
        if pool is None or not pool.active:
            pool = await anyio.to_thread.run_sync(_running_pool)
        try:
            future = pool.schedule(fn, args=args, timeout=deadline)
        except RuntimeError as exc:  # the pool broke or was shut down since we looked
            if attempt:
                raise WorkerCrashed(f"the worker pool refused {_name(fn)}: {exc}") from exc
            continue
        with _PENDING_LOCK:
            _PENDING.add(future)
        return pool, future
    raise AssertionError("unreachable")


def _name(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__qualname__", repr(fn)))


def _outcome(future: Future[T], fn: Callable[..., Any], timeout: float | None) -> T:
    from concurrent.futures import CancelledError
    from concurrent.futures.process import BrokenProcessPool

    from pebble import ProcessExpired

    name = _name(fn)
    try:
        result = future.result()
    except TimeoutError as exc:
        if exc.args[:1] != ("Task timeout",):  # the function's own TimeoutError
            _COUNTS["completed"] += 1
            raise
        _COUNTS["timed_out"] += 1
        raise TimeoutError(f"{name} ran past its {timeout}s deadline; its worker was killed") from None
    except ProcessExpired as exc:
        _COUNTS["crashed"] += 1
        raise WorkerCrashed(f"the worker running {name} died (pid {exc.pid}, exit code {exc.exitcode})") from None
    except (BrokenProcessPool, CancelledError) as exc:
        _COUNTS["crashed"] += 1
        raise WorkerCrashed(f"the worker pool failed or stopped while running {name}: {exc!r}") from None
    except BaseException:
        _COUNTS["completed"] += 1
        raise
    _COUNTS["completed"] += 1
    return result


def _running_pool() -> ProcessPool:
    """The process's pool, started (or replaced, if pebble declared it broken); blocks
    while workers start, so async code calls it in a thread."""
    global _POOL, _ATEXIT_REGISTERED
    with _LOCK:
        if _POOL is not None and _POOL.active:
            return _POOL
        if _POOL is not None:
            broken, _POOL = _POOL, None
            _stop(broken)
        pool = _new_pool(_SETTINGS)
        if not pool.active:  # starts the pool: its threads and workers
            raise WorkerCrashed("the worker pool failed to start")
        _POOL = pool
        if not _ATEXIT_REGISTERED:
            atexit.register(shutdown_workers)  # after pebble's own hook, so it runs first
            # A multiprocessing child skips atexit hooks and, exiting, waits for its own
            # children (these workers): a finalizer stops them before that wait.
            from multiprocessing import util

            util.Finalize(None, shutdown_workers, exitpriority=10)
            _ATEXIT_REGISTERED = True
        return pool


def _new_pool(settings: WorkerSettings) -> ProcessPool:
    import multiprocessing

    from pebble import ProcessPool

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(settings.preload))
    memory = settings.memory_mb * 1024 * 1024 if settings.memory_mb is not None else None
    return ProcessPool(
        max_workers=settings.size,
        max_tasks=settings.max_tasks,
        initializer=_init_worker,
        initargs=(memory,),
        context=context,
    )


def _init_worker(memory_bytes: int | None) -> None:
    """Runs in each new worker before its first call: signals, lifetime, limits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the runtime's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a kill lands even mid C call
    # Close the end of the fork server's "alive" pipe that every child inherits, so the
    # server's life is the runtime's, and die with the server (module docstring).
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    alive = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(alive, int):
        try:
            os.close(alive)
        except OSError:
            pass
        server._forkserver_alive_fd = None  # type: ignore[union-attr]
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the fork server is already gone
            os._exit(1)
    if sys.platform == "win32":
        return
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))  # a crashing verifier leaves no core file
    if memory_bytes is not None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = memory_bytes if hard == resource.RLIM_INFINITY else min(memory_bytes, hard)
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        except (ValueError, OSError):
            pass  # a stricter limit is already in place


def _stop(pool: ProcessPool) -> None:
    pool.stop()  # type: ignore[no-untyped-call]
    pool.join()


def shutdown_workers() -> None:
    """Stop the pool: kill its workers and fail the calls still waiting with
    :class:`WorkerCrashed`. Blocks until the workers are gone (from async code, call it
    in a thread); also runs at interpreter exit. The next call starts a fresh pool."""
    global _POOL
    with _LOCK:
        pool, _POOL = _POOL, None
        if pool is None:
            return
        _stop(pool)
        with _PENDING_LOCK:
            waiting = list(_PENDING)
        for future in waiting:
            if not future.done():
                try:
                    future.set_exception(WorkerCrashed("the worker pool was shut down"))
                except Exception:  # finished meanwhile
                    pass


def worker_statistics() -> WorkerStatistics:
    """A snapshot of the pool: its workers' pids and the fate of the calls so far."""
    pool = _POOL
    workers: tuple[int, ...] = ()
    if pool is not None:
        live = getattr(getattr(getattr(pool, "_pool_manager", None), "worker_manager", None), "workers", {})
        for _ in range(10):  # pebble's threads may change the dict while we read it
            try:
                workers = tuple(sorted(live))
                break
            except RuntimeError:
                time.sleep(0)
    return WorkerStatistics(started=pool is not None, workers=workers, pending=len(_PENDING), **_COUNTS)
