"""Verifiers that run foreign computation run in killable worker processes: a runaway
answer (``9^{9^{9}}``, which makes sympy compute a 370-million-digit power while it
holds the GIL) is killed at its deadline while the event loop keeps running, signals
still stop the runtime, cancellation kills the worker, and a dead worker fails only
its own call. On the former thread-based verifier the runaway tests freeze."""

from __future__ import annotations

import operator
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import psutil
import pytest

from runtime.core.errors import VerifierError
from runtime.core.types import Task
from runtime.rewards.outcome import MathVerify, ReasoningGymVerifier
from runtime.rewards.workers import WorkerCrashed, run_in_worker, worker_statistics
from runtime.scheduling.tasks import reasoning_gym_tasks

ROOT = Path(__file__).parents[1]
RUNAWAY = "9^{9^{9}}"
BACKENDS = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])


async def warm() -> None:
    """Start the pool (about a second and a half the first time) before timing anything."""
    assert await run_in_worker(operator.add, 1, 1, timeout=30) == 2


async def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll ``condition`` (process state: nothing to wait on) until it holds."""
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await anyio.sleep(0.05)
    raise AssertionError(f"not within {seconds}s")


@BACKENDS
@pytest.mark.anyio
async def test_a_runaway_answer_is_killed_at_the_deadline_while_the_loop_runs(anyio_backend: str) -> None:
    await warm()
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            await anyio.sleep(0.05)

    timeout = 2.0
    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        start = time.monotonic()
        with pytest.raises(VerifierError, match="ran past 2.0s"):
            await MathVerify(timeout=timeout).score(Task(id="m", answer="5"), RUNAWAY, "")
        elapsed = time.monotonic() - start
        tg.cancel_scope.cancel()
    assert timeout <= elapsed < timeout + 3
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert len(ticks) >= 0.7 * elapsed / 0.05 and max(gaps) < 0.5, f"the loop stalled: {max(gaps):.2f}s"


@BACKENDS
@pytest.mark.anyio
async def test_math_equivalences_are_judged_in_a_worker(anyio_backend: str) -> None:
    verifier = MathVerify()
    done = worker_statistics().completed
    assert (await verifier.score(Task(id="h", answer=r"\frac{1}{2}"), "0.5", "")).value == 1.0
    wrong = await verifier.score(Task(id="w", answer="2"), "3", "")
    assert wrong.value == 0.0 and wrong.explanation == "'3' is not equal to '2'"
    assert worker_statistics().completed == done + 2


@BACKENDS
@pytest.mark.anyio
async def test_reasoning_gym_scores_in_a_worker(anyio_backend: str) -> None:
    (task,) = reasoning_gym_tasks("basic_arithmetic", size=1, seed=3)
    assert task.answer is not None
    done = worker_statistics().completed
    assert (await ReasoningGymVerifier().score(task, task.answer, "")).value == 1.0
    wrong = await ReasoningGymVerifier().score(task, task.answer + "1", "")
    assert wrong.value < 1.0 and wrong.explanation is not None and repr(task.answer) in wrong.explanation
    assert worker_statistics().completed == done + 2


SCRIPT = """
    import signal

    import anyio

    from runtime.core.types import Task
    from runtime.rewards.outcome import MathVerify


    async def main() -> None:
        verifier = MathVerify(timeout=60)
        async with anyio.create_task_group() as tg:

            async def watch() -> None:  # as the runtime's handle_signals does
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        tg.cancel_scope.cancel()

            tg.start_soon(watch)
            await verifier.score(Task(id="w", answer="1"), "1", "")
            print("ready", flush=True)
            await verifier.score(Task(id="m", answer="5"), "9^{9^{9}}", "")
            print("scored", flush=True)


    if __name__ == "__main__":
        anyio.run(main)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_a_signal_stops_a_runtime_stuck_in_a_verifier_and_no_worker_outlives_it(
    sig: signal.Signals, tmp_path: Path
) -> None:
    script = tmp_path / "runaway.py"
    script.write_text(textwrap.dedent(SCRIPT), encoding="utf-8")
    with subprocess.Popen(
        [sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        descendants: list[psutil.Process] = []
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            time.sleep(1.0)  # the runaway comparison is running now
            descendants = psutil.Process(proc.pid).children(recursive=True)
            start = time.monotonic()
            proc.send_signal(sig)
            code = proc.wait(timeout=10)  # the thread-based verifier froze here
            elapsed = time.monotonic() - start
            assert len(descendants) >= 3  # the fork server and its workers at least
            _, alive = psutil.wait_procs(descendants, timeout=5)
            assert not alive, f"left behind: {alive}"
        finally:
            if proc.poll() is None:
                proc.kill()
            for p in descendants:
                if p.is_running():
                    p.kill()
        out, err = proc.communicate()
    assert elapsed < 3, f"took {elapsed:.1f}s to stop"
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 0), err[-2000:]
    assert "scored" not in out


@BACKENDS
@pytest.mark.anyio
async def test_cancelling_the_caller_kills_its_worker(anyio_backend: str) -> None:
    await warm()
    before = set(worker_statistics().workers)
    cancelled = worker_statistics().cancelled
    start = time.monotonic()
    with anyio.move_on_after(0.5):
        await run_in_worker(pow, 9, 9**9, timeout=60)  # a huge power in C, holding the GIL
    assert time.monotonic() - start < 1.0
    assert worker_statistics().cancelled == cancelled + 1

    def replaced() -> bool:
        after = set(worker_statistics().workers)
        return len(before - after) == 1 and len(after) == len(before)

    await wait_until(replaced)
    (killed,) = before - set(worker_statistics().workers)
    await wait_until(lambda: not psutil.pid_exists(killed))
    assert await run_in_worker(operator.add, 2, 3, timeout=10) == 5


@pytest.mark.anyio
async def test_a_worker_that_dies_fails_only_its_own_call() -> None:
    await warm()
    with pytest.raises(WorkerCrashed, match="exit code 3"):
        await run_in_worker(os._exit, 3, timeout=10)
    assert await run_in_worker(operator.mul, 6, 7, timeout=10) == 42

    # Killed from outside mid-call (as the OOM killer would) while another call runs.
    workers = [psutil.Process(pid) for pid in worker_statistics().workers]
    cpu = {p.pid: sum(p.cpu_times()[:2]) for p in workers}
    outcome: dict[str, object] = {}

    async def runaway() -> None:
        try:
            await run_in_worker(pow, 9, 9**9, timeout=30)
        except WorkerCrashed as exc:
            outcome["runaway"] = exc

    async def sibling() -> None:
        outcome["sibling"] = await run_in_worker(time.sleep, 1.5, timeout=10)

    async with anyio.create_task_group() as tg:
        tg.start_soon(runaway)
        tg.start_soon(sibling)
        await anyio.sleep(0.6)
        busy = max(workers, key=lambda p: sum(p.cpu_times()[:2]) - cpu[p.pid])
        busy.send_signal(signal.SIGKILL)
    assert isinstance(outcome["runaway"], WorkerCrashed)
    assert "sibling" in outcome and outcome["sibling"] is None
    assert await run_in_worker(operator.mul, 6, 7, timeout=10) == 42


@pytest.mark.anyio
async def test_a_giant_allocation_fails_in_the_worker() -> None:
    with pytest.raises(MemoryError):
        await run_in_worker(bytearray, 3 << 30, timeout=10)  # over the 2 GiB address-space limit
    assert await run_in_worker(len, "abc", timeout=10) == 3


def test_importing_the_verifiers_starts_nothing() -> None:
    heavy = "{'pebble', 'multiprocessing'}"
    code = f"import runtime, runtime.rewards.outcome, sys; print(sorted({heavy} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


POOL_CHILD = """
import multiprocessing, operator
from concurrent.futures import ProcessPoolExecutor

import anyio

from runtime.rewards.workers import run_in_worker


async def add() -> int:
    return await run_in_worker(operator.add, 1, 2, timeout=30)


def score() -> int:
    return anyio.run(add)


if __name__ == "__main__":
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        print("scored", pool.submit(score).result(), flush=True)
    print("exited", flush=True)
"""


def test_a_multiprocessing_child_that_used_the_workers_exits(tmp_path: Path) -> None:
    # A multiprocessing child skips atexit hooks and waits for its own children as it
    # exits: with the verifier pool left running there, the parent's shutdown hung.
    script = tmp_path / "pool_child.py"
    script.write_text(textwrap.dedent(POOL_CHILD), encoding="utf-8")
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["scored", "3", "exited"]
