"""How many threads each torch consumer of the process gets, so that together they
never hold more OpenMP threads than the process has cores.

On a small machine this decides throughput: an OpenMP team spins at its barriers, and
once the teams of a process (the engine's, the learner's, an evaluator's) outnumber the
free cores, every small op waits for a descheduled thread. Measured on 2 cores
(``docs/benchmarks.md``, ``tests/bench/contention.py``): the quickstart fell to 0.04x
of its quiet speed beside one busy process with torch's defaults.

Design decisions:
- The cores are the ones the process may run on (``os.sched_getaffinity``: a container's
  or ``taskset``'s limit), not the machine's.
- Each consumer that runs at the same time gets an equal share, at least one thread; a
  configured count (``policy.threads``, ``learner.threads``, ``verifiers.*.threads``)
  always wins.
- Cores change hands (:class:`CoreShare`): the engine of the online loop takes the cores
  the learner and the evaluator are not computing on, re-read between its decode steps,
  so generation runs on both cores while the learner waits for data and on one while it
  steps (``tests/bench/contention.py`` measures the engine both ways).
- Waiting threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``) when the
  process runs more than one torch consumer, or when asked: set before torch starts its
  OpenMP runtime (it cannot change afterwards), never over a value the user exported.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["CoreShare", "available_cpus", "passive_openmp", "thread_share"]


def available_cpus() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def thread_share(consumers: int, cpus: int | None = None) -> int:
    """Threads for each of ``consumers`` torch consumers running at once."""
    return max(1, (cpus or available_cpus()) // max(1, consumers))


def passive_openmp() -> bool:
    """Make OpenMP threads sleep while they wait, if torch has not started yet and the
    user set no policy; returns whether the policy is now passive."""
    if "OMP_WAIT_POLICY" in os.environ:
        return os.environ["OMP_WAIT_POLICY"].upper() == "PASSIVE"
    if "torch" in sys.modules:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


class CoreShare:
    """The cores of a process, handed between torch consumers that come and go.

    A consumer that computes in bursts (a learner step, an evaluation) holds its threads
    for the burst (:meth:`hold`); a consumer that runs all the time (the generation
    engine) asks :meth:`free` between its steps and takes what nobody holds, at least one.
    """

    def __init__(self, cpus: int | None = None) -> None:
        self.cpus = cpus or available_cpus()
        self._held = 0
        self._lock = threading.Lock()
        self.handovers = 0
        """Times :meth:`hold` took threads (for the loop's report and the tests)."""

    def free(self) -> int:
        """Threads nobody holds now (at least 1)."""
        return max(1, self.cpus - self._held)

    @contextmanager
    def hold(self, threads: int) -> Iterator[None]:
        """Hold ``threads`` for the body (a learner step, an evaluation)."""
        with self._lock:
            self._held += threads
            self.handovers += 1
        try:
            yield
        finally:
            with self._lock:
                self._held -= threads
