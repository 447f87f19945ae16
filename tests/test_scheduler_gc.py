"""The scheduler and the interpreter: the cyclic garbage collector is tuned while a
stream runs and put back after (however the stream ends, with two at once, around an
application's own freeze), episodes are still stored and returned exactly once,
cyclic garbage stays bounded over a long stream, and uvloop is a choice of loop that
fails clearly when it is not installed."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from pydantic import ValidationError

from runtime.core.errors import ConfigError
from runtime.core.types import Episode, Task
from runtime.policy.base import GenerationRequest
from runtime.policy.scripted import ScriptedPolicy
from runtime.scheduling.loop import YOUNG_OBJECTS_PER_EPISODE, run_async
from runtime.scheduling.scheduler import Runtime, SchedulerSettings
from runtime.scheduling.store import EpisodeStore
from runtime.search.context import Context
from strategies import ChainOfThought

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


def state() -> tuple[tuple[int, ...], int, bool]:
    """What a stream may change and must put back."""
    return gc.get_threshold(), gc.get_freeze_count(), gc.isenabled()


@pytest.fixture(autouse=True)
def _collector_as_found() -> Iterator[None]:
    """Each test starts from the interpreter's defaults and leaves them so, even failing."""
    before = state()
    yield
    gc.set_threshold(*before[0])
    if before[1] == 0:
        gc.unfreeze()
    if before[2]:
        gc.enable()


def three_steps(request: GenerationRequest, i: int) -> str:
    done = request.assistant_prefix.count("\n")
    return f"step {done + 1}" if done < 2 else "Answer: 1"


def tasks(n: int, prefix: str = "t") -> list[Task]:
    return [Task(id=f"{prefix}{i}", prompt=f"question {i}") for i in range(n)]


def runtime(concurrency: int, gc_mode: Any = "auto", latency: float = 0.0, **kw: Any) -> Runtime:
    settings = SchedulerSettings(concurrency=concurrency, buffer=64, gc=gc_mode)
    return Runtime(ScriptedPolicy(three_steps, latency=latency), ChainOfThought(), settings=settings, **kw)


# -- the collector while a stream runs ------------------------------------------------------


def test_auto_tunes_the_collector_during_a_stream_and_restores_it_after() -> None:
    before = state()
    seen: list[tuple[tuple[int, ...], int, bool]] = []

    async def main() -> int:
        async with runtime(500) as rt:
            assert state() == before  # nothing changes until a stream starts
            n = 0
            async for _ in rt.stream(tasks(1200)):
                seen.append(state())
                n += 1
            assert state() == before  # the stream ended: everything is back
            return n

    assert anyio.run(main) == 1200
    assert state() == before
    thresholds, frozen, enabled = seen[0]
    assert thresholds == (max(before[0][0], YOUNG_OBJECTS_PER_EPISODE * 500), before[0][1], 1)
    assert frozen > 1000  # the start-up heap: modules, the policy, the task list
    assert enabled
    # Held for the whole stream (the freeze count only falls, as frozen objects are freed).
    assert all(s[0] == thresholds and 0 < s[1] <= frozen and s[2] for s in seen)


def test_default_leaves_the_collector_as_the_interpreter_has_it() -> None:
    before = state()
    seen: list[tuple[tuple[int, ...], int, bool]] = []

    async def main() -> None:
        async with runtime(500, gc_mode="default") as rt:
            async for _ in rt.stream(tasks(600)):
                seen.append(state())

    anyio.run(main)
    assert set(seen) == {before}
    assert state() == before


def test_restored_when_the_consumer_stops_early_and_the_runtime_closes() -> None:
    before = state()

    async def main() -> None:
        async with runtime(200, latency=0.01) as rt:
            stream = rt.stream(tasks(5000))
            async for _ in stream:
                assert state() != before
                break  # the stream is left unclosed: the runtime's exit ends it

    anyio.run(main)
    assert state() == before


def test_two_streams_at_once_restore_only_when_both_have_ended() -> None:
    before = state()
    after_short: list[tuple[tuple[int, ...], int, bool]] = []

    async def main() -> None:
        async with runtime(100, latency=0.001) as short, runtime(3000, latency=0.01) as long:
            done = anyio.Event()

            async def run_short() -> None:
                await short.run(tasks(50, "s"))
                after_short.append(state())
                done.set()

            async def run_long() -> None:
                async for _ in long.stream(tasks(6000, "l")):
                    pass
                assert done.is_set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(run_long)
                await anyio.sleep(0.05)
                tg.start_soon(run_short)

    anyio.run(main)
    # The larger stream raised the young threshold for both; the first to end put nothing back.
    assert after_short and after_short[0][0][0] == YOUNG_OBJECTS_PER_EPISODE * 3000
    assert after_short[0][1] > 0
    assert state() == before


def test_an_application_freeze_and_a_disabled_collector_are_left_alone() -> None:
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.disable()
    frozen = gc.get_freeze_count()
    seen: list[tuple[tuple[int, ...], int, bool]] = []

    async def main() -> None:
        async with runtime(500) as rt:
            async for _ in rt.stream(tasks(600)):
                seen.append(state())

    anyio.run(main)
    # Not frozen again (the count would grow), never unfrozen (it would drop to 0); it
    # falls by the few frozen objects that were freed meanwhile.
    assert frozen - 100 < seen[0][1] <= frozen
    assert not seen[0][2]  # never enabled
    assert frozen - 100 < gc.get_freeze_count() <= frozen
    assert not gc.isenabled()
    assert gc.get_threshold() == thresholds


def test_settings_refuse_unknown_modes() -> None:
    with pytest.raises(ValidationError, match="gc"):
        SchedulerSettings(gc="off")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="event_loop"):
        SchedulerSettings(event_loop="trio")  # type: ignore[arg-type]


# -- correctness with the collector tuned ---------------------------------------------------


@pytest.mark.parametrize("gc_mode", ["auto", "default"])
def test_every_episode_is_stored_and_returned_exactly_once(tmp_path: Path, gc_mode: str) -> None:
    path = tmp_path / "episodes.db"

    async def main() -> list[Episode]:
        settings = SchedulerSettings(concurrency=300, buffer=32, samples_per_task=2, store_batch=64, gc=gc_mode)
        policy = ScriptedPolicy(three_steps, latency=0.002)
        async with Runtime(policy, ChainOfThought(), settings=settings, store=path, run_id="r") as rt:
            return [ep async for ep in rt.stream(tasks(800))]

    episodes = anyio.run(main)
    keys = Counter((ep.task.id, ep.sample) for ep in episodes)
    assert len(keys) == 1600 and set(keys.values()) == {1}
    assert all(ep.status == "ok" and ep.final_answer == "1" and len(ep.chosen_path) == 3 for ep in episodes)
    store = EpisodeStore(path)
    try:
        assert store.count("r") == 1600
        assert store.done_keys("r", include_failed=True) == set(keys)
    finally:
        store.close()


class Payload:
    """A marker that counts its live instances; each holds 16 KiB and a cycle to itself."""

    live = 0
    peak = 0

    def __init__(self) -> None:
        self.me = self
        self.data = bytearray(16 << 10)
        Payload.live += 1
        Payload.peak = max(Payload.peak, Payload.live)

    def __del__(self) -> None:
        Payload.live -= 1


class LeavesACycle:
    """ChainOfThought whose episode keeps a reference cycle until the consumer drops it,
    so the cycle is old (promoted) by the time it is garbage: only a full collection
    frees it."""

    name = "leaves_a_cycle"

    def config(self) -> dict[str, Any]:
        return {}

    async def run(self, ctx: Context) -> Episode:
        ctx.root.meta["payload"] = Payload()
        return await ChainOfThought().run(ctx)


def test_cyclic_garbage_stays_bounded_over_a_long_stream() -> None:
    n, concurrency = 20_000, 200
    Payload.live = Payload.peak = 0
    process = psutil.Process()
    gc.collect()
    rss0 = process.memory_info().rss

    async def main() -> int:
        settings = SchedulerSettings(concurrency=concurrency, buffer=64, gc="auto")
        async with Runtime(ScriptedPolicy(three_steps), LeavesACycle(), settings=settings) as rt:
            count = 0
            async for _ in rt.stream(tasks(n)):
                count += 1
            return count

    assert anyio.run(main) == n
    grown = process.memory_info().rss - rss0
    # Leaked (the collector off), `peak` would be n and the payloads alone 320 MiB. Tuned,
    # a cycle waits for at most a young collection's worth of new objects (loop.py).
    assert Payload.peak <= 2 * YOUNG_OBJECTS_PER_EPISODE * concurrency, Payload.peak
    assert grown < 120 << 20, grown
    gc.collect()
    assert Payload.live == 0


# -- the event loop ---------------------------------------------------------------------


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_run_async_on_asyncio() -> None:
    assert run_async(loop_module, loop="asyncio").startswith("asyncio")


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed (the fast extra)")
def test_run_async_on_uvloop_runs_a_stream() -> None:
    async def main() -> tuple[str, int]:
        async with runtime(200) as rt:
            count = 0
            async for _ in rt.stream(tasks(500)):
                count += 1
        return await loop_module(), count

    module, count = run_async(main, loop="uvloop")
    assert module.startswith("uvloop")
    assert count == 500


def test_uvloop_not_installed_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    with pytest.raises(ConfigError, match=r'uvloop.*pip install "searchlearn\[fast\]"'):
        run_async(loop_module, loop="uvloop")


def test_an_unknown_loop_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown event loop 'trio'"):
        run_async(loop_module, loop="trio")  # type: ignore[arg-type]
