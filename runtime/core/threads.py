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
- Waiting threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``) when the
  process runs more than one torch consumer, or when asked: set before torch starts its
  OpenMP runtime (it cannot change afterwards), never over a value the user exported.
"""

from __future__ import annotations

import os
import sys

__all__ = ["available_cpus", "passive_openmp", "thread_share"]


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
