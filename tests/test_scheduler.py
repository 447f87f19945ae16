"""The scheduler: exactly-once, streaming, failures as data, budgets, resume,
backpressure, shutdown, endpoint budgets and ten thousand concurrent episodes."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from runtime.core.errors import PolicyUnavailable
from runtime.core.types import Episode, Task
from runtime.policy.admission import AdmittedPolicy, Reply
from runtime.policy.base import Completion, GenerationRequest, GenerationResult
from runtime.policy.limits import EndpointLimits, Price
from runtime.policy.scripted import ScriptedPolicy
from runtime.rewards.outcome import ExactMatch, TableVerifier
from runtime.scheduling.scheduler import Runtime, SchedulerSettings
from runtime.scheduling.store import EpisodeStore
from runtime.search.context import Context, Sampling, Verifiers
from strategies import ChainOfThought

pytestmark = pytest.mark.anyio

MakeTasks = Callable[..., list[Task]]


def echo_answer(request: GenerationRequest, i: int) -> str:
    """One thinking step, then the task's reference answer (its index, see make_tasks)."""
    if request.assistant_prefix.count("\n") == 0:
        return "Let me think."
    return f"Answer: {request.metadata['task_id'].lstrip('t')}"


def settings(**kw: Any) -> SchedulerSettings:
    return SchedulerSettings(**{"concurrency": 8, "buffer": 4, **kw})


def exact() -> Verifiers:
    return Verifiers(outcome=ExactMatch())


async def collect(rt: Runtime, tasks: Any) -> list[Episode]:
    return [ep async for ep in rt.stream(tasks)]


class DelayPolicy:
    """Answers ``Answer: <index>`` after a delay that depends on the task."""

    def __init__(self, delay: Callable[[str], float]) -> None:
        self.delay = delay
        self.calls = 0

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        self.calls += 1
        task_id = request.metadata["task_id"]
        await anyio.sleep(self.delay(task_id))
        text = f"Answer: {task_id.lstrip('t')}"
        return GenerationResult([Completion(text, finish_reason="stop") for _ in range(request.n)], 1, 2, 0.0, 0)

    async def aclose(self) -> None:
        return None


# -- exactly once, streaming -------------------------------------------------------


async def test_every_task_and_sample_exactly_once(make_tasks: MakeTasks) -> None:
    policy = ScriptedPolicy(echo_answer, latency=0.001)
    async with Runtime(policy, ChainOfThought(), verifiers=exact(), settings=settings(samples_per_task=3)) as rt:
        episodes = await collect(rt, make_tasks(40))
    keys = Counter((ep.task.id, ep.sample) for ep in episodes)
    assert set(keys) == {(f"t{i}", s) for i in range(40) for s in range(3)}
    assert max(keys.values()) == 1
    assert all(ep.status == "ok" and ep.reward == 1.0 and ep.final_answer == ep.task.answer for ep in episodes)
    assert all(ep.usage.calls == 2 and len(ep.chosen_path) == 2 for ep in episodes)
    assert rt.stats.finished == rt.stats.admitted == 120 and rt.stats.solved == 120
    assert policy.calls == 240
    assert rt.statistics()["in_flight"] == 0


async def test_episodes_stream_in_completion_order(make_tasks: MakeTasks) -> None:
    """The slow first task comes out last; the others do not wait for it."""
    delays = {"t0": 0.4, "t1": 0.2}
    policy = DelayPolicy(lambda task_id: delays.get(task_id, 0.0))
    seen_at: dict[str, float] = {}
    async with Runtime(policy, ChainOfThought(), verifiers=exact(), settings=settings()) as rt:
        start = time.monotonic()
        async for ep in rt.stream(make_tasks(6)):
            seen_at[ep.task.id] = time.monotonic() - start
    order = sorted(seen_at, key=seen_at.__getitem__)
    assert order[-2:] == ["t1", "t0"]  # the fast four arrived before the slow two finished
    assert seen_at["t0"] >= 0.4


async def test_accepts_dicts_strings_and_async_generators() -> None:
    async def source() -> Any:
        yield {"id": "d", "prompt": "q", "answer": "7"}
        yield "just a prompt"

    policy = ScriptedPolicy(["Answer: 7"])
    async with Runtime(policy, ChainOfThought(), verifiers=exact(), settings=settings()) as rt:
        episodes = await collect(rt, source())
    by_id = {ep.task.id: ep for ep in episodes}
    assert set(by_id) == {"d", "1"}
    assert by_id["d"].reward == 1.0
    assert by_id["1"].reward is None  # no reference answer, no outcome reward


async def test_stream_needs_the_context_manager(make_tasks: MakeTasks) -> None:
    rt = Runtime(ScriptedPolicy(["Answer: 1"]), ChainOfThought())
    with pytest.raises(RuntimeError, match="async with"):
        await collect(rt, make_tasks(1))


async def test_shutdown_before_streaming_admits_nothing(make_tasks: MakeTasks) -> None:
    policy = ScriptedPolicy(["Answer: 1"])
    async with Runtime(policy, ChainOfThought(), settings=settings()) as rt:
        rt.shutdown("not today")
        stats = await rt.run(make_tasks(10))
    assert stats is rt.stats
    assert (stats.admitted, stats.finished, policy.calls) == (0, 0, 0)
    assert rt.stop_reason == "not today"


async def test_run_returns_the_stats(make_tasks: MakeTasks) -> None:
    policy = ScriptedPolicy(echo_answer)
    async with Runtime(policy, ChainOfThought(), verifiers=exact(), settings=settings()) as rt:
        stats = await rt.run(make_tasks(7))
    summary = stats.as_dict()
    assert (summary["episodes"], summary["failed"], summary["accuracy"], summary["mean_reward"]) == (7, 0, 1.0, 1.0)
    assert summary["completion_tokens"] == stats.completion_tokens > 0
    assert rt.statistics()["episodes"] == 7 and rt.statistics()["stopping"] is False


# -- failures are data ---------------------------------------------------------------


async def test_policy_error_fails_only_its_episode(make_tasks: MakeTasks) -> None:
    def fail(request: GenerationRequest) -> None:
        task_id = request.metadata["task_id"]
        if task_id == "t3":
            raise PolicyUnavailable("503 after 6 attempts")
        if task_id == "t5":
            raise ConnectionResetError("peer went away")

    policy = ScriptedPolicy(echo_answer, fail=fail)
    async with Runtime(policy, ChainOfThought(), verifiers=exact(), settings=settings()) as rt:
        episodes = {ep.task.id: ep for ep in await collect(rt, make_tasks(10))}
    assert len(episodes) == 10
    assert [e.status for e in (episodes["t3"], episodes["t5"])] == ["failed", "failed"]
    (err3,) = episodes["t3"].errors
    assert (err3.type, err3.boundary, err3.message) == ("PolicyUnavailable", "policy", "503 after 6 attempts")
    (err5,) = episodes["t5"].errors
    assert (err5.type, err5.boundary) == ("PolicyError", "policy")  # wrapped at the policy boundary
    assert "ConnectionResetError" in err5.message
    siblings = [ep for tid, ep in episodes.items() if tid not in {"t3", "t5"}]
    assert all(ep.status == "ok" and ep.reward == 1.0 for ep in siblings)
    assert rt.stats.failed == 2
    assert rt.stats.failures == Counter({"PolicyUnavailable": 1, "PolicyError": 1})


async def test_verifier_error_fails_only_its_episode(make_tasks: MakeTasks) -> None:
    verifier = TableVerifier({str(i): 1.0 for i in range(10)}, fail_on=["4"])
    policy = ScriptedPolicy(echo_answer)
    async with Runtime(policy, ChainOfThought(), verifiers=Verifiers(outcome=verifier), settings=settings()) as rt:
        episodes = {ep.task.id: ep for ep in await collect(rt, make_tasks(8))}
    (err,) = episodes["t4"].errors
    assert episodes["t4"].status == "failed"
    assert (err.type, err.boundary) == ("VerifierError", "verifier")
    assert "'4'" in err.message
    assert all(ep.status == "ok" and ep.reward == 1.0 for tid, ep in episodes.items() if tid != "t4")


async def test_verifier_out_of_range_is_a_verifier_error(make_tasks: MakeTasks) -> None:
    verifier = TableVerifier({}, default=1.5)
    policy = ScriptedPolicy(["Answer: 1"])
    async with Runtime(policy, ChainOfThought(), verifiers=Verifiers(outcome=verifier), settings=settings()) as rt:
        (ep,) = await collect(rt, make_tasks(1))
    assert ep.status == "failed" and ep.errors[0].boundary == "verifier" and "outside [0, 1]" in ep.errors[0].message


async def test_strategy_bug_is_attributed_to_the_strategy(make_tasks: MakeTasks) -> None:
    class Broken:
        name = "broken"

        def config(self) -> dict[str, Any]:
            return {}

        async def run(self, ctx: Context) -> Episode:
            (node,) = await ctx.expand(ctx.root)
            if ctx.task.id == "t1":
                raise KeyError("missing")
            return await ctx.finish(node)

    async with Runtime(ScriptedPolicy(["Answer: 0"]), Broken(), settings=settings()) as rt:
        episodes = {ep.task.id: ep for ep in await collect(rt, make_tasks(3))}
    (err,) = episodes["t1"].errors
    assert (err.type, err.boundary) == ("KeyError", "strategy")
    assert episodes["t1"].usage.calls == 1  # the work done before the error is kept
    assert len(episodes["t1"].nodes) == 2
    assert episodes["t0"].status == episodes["t2"].status == "ok"


async def test_episode_timeout(make_tasks: MakeTasks) -> None:
    policy = DelayPolicy(lambda task_id: 5.0 if task_id == "t0" else 0.0)
    started = time.monotonic()
    async with Runtime(policy, ChainOfThought(), verifiers=exact(), settings=settings(episode_timeout=0.2)) as rt:
        episodes = {ep.task.id: ep for ep in await collect(rt, make_tasks(4))}
    assert time.monotonic() - started < 3.0
    (err,) = episodes["t0"].errors
    assert (err.type, err.boundary) == ("EpisodeTimeout", "budget")
    assert "0.2" in err.message
    assert episodes["t0"].usage.wall_time == pytest.approx(0.2, abs=0.15)
    assert all(episodes[t].status == "ok" for t in ("t1", "t2", "t3"))


async def test_token_budget(make_tasks: MakeTasks) -> None:
    """A policy that never answers runs into the episode's token budget; calls near the
    end have their max_tokens clamped to what is left."""
    budget, step_max = 160, 16
    requests: list[GenerationRequest] = []
    used_before: list[int] = []

    class Rambler(ScriptedPolicy):
        used = 0

        async def generate(self, request: GenerationRequest) -> GenerationResult:
            requests.append(request)
            used_before.append(self.used)
            result = await super().generate(request)
            self.used += result.prompt_tokens + result.completion_tokens
            return result

    policy = Rambler(["I should think about this some more."])
    sampling = Sampling(max_steps=1000, step_max_tokens=step_max)
    async with Runtime(
        policy, ChainOfThought(), sampling=sampling, settings=settings(token_budget=budget), verifiers=exact()
    ) as rt:
        (ep,) = await collect(rt, make_tasks(1))
    (err,) = ep.errors
    assert ep.status == "failed" and (err.type, err.boundary) == ("TokenBudgetExceeded", "budget")
    assert ep.usage.tokens == policy.used >= budget
    assert f"of {budget} tokens" in err.message
    assert ep.usage.calls == len(requests) < 20
    assert [r.max_tokens for r in requests] == [max(1, min(step_max, budget - u)) for u in used_before]
    assert requests[0].max_tokens == step_max and requests[-1].max_tokens < step_max


# -- resume ------------------------------------------------------------------------


async def test_resume_skips_everything_already_stored(tmp_path: Path, make_tasks: MakeTasks) -> None:
    db = str(tmp_path / "episodes.db")
    first_policy = ScriptedPolicy(echo_answer)
    async with Runtime(
        first_policy, ChainOfThought(), verifiers=exact(), settings=settings(samples_per_task=2), store=db, run_id="r"
    ) as rt:
        first = await collect(rt, make_tasks(10))
    assert len(first) == 20

    again = ScriptedPolicy(echo_answer)
    async with Runtime(
        again, ChainOfThought(), verifiers=exact(), settings=settings(samples_per_task=2), store=db, run_id="r"
    ) as rt:
        second = await collect(rt, make_tasks(10))
    assert second == []
    assert rt.stats.skipped == 20 and rt.stats.admitted == 0
    assert again.calls == 0
    with EpisodeStore(db) as st:
        assert st.count("r") == 20
        assert {ep.key for ep in st.episodes("r")} == {ep.key for ep in first}


async def test_partial_resume_produces_only_the_missing(tmp_path: Path, make_tasks: MakeTasks) -> None:
    db = tmp_path / "episodes.db"
    with EpisodeStore(db) as store:
        async with Runtime(
            ScriptedPolicy(echo_answer), ChainOfThought(), settings=settings(), store=store, run_id="r"
        ) as rt:
            await collect(rt, make_tasks(10)[:4])
        # Another run id in the same store is independent.
        async with Runtime(
            ScriptedPolicy(echo_answer), ChainOfThought(), settings=settings(), store=store, run_id="x"
        ) as rt:
            await collect(rt, make_tasks(2))
        async with Runtime(
            ScriptedPolicy(echo_answer), ChainOfThought(), settings=settings(), store=store, run_id="r"
        ) as rt:
            resumed = await collect(rt, make_tasks(10))
        assert sorted(ep.task.id for ep in resumed) == [f"t{i}" for i in range(4, 10)]
        assert rt.stats.skipped == 4
        assert store.count("r") == 10 and store.count("x") == 2
        assert store.done_keys("r") == {(f"t{i}", 0) for i in range(10)}


async def test_resume_with_retry_failed_reruns_failed_episodes(tmp_path: Path, make_tasks: MakeTasks) -> None:
    db = str(tmp_path / "episodes.db")

    def fail(request: GenerationRequest) -> None:
        if request.metadata["task_id"] in {"t1", "t2"}:
            raise PolicyUnavailable("down")

    flaky = ScriptedPolicy(echo_answer, fail=fail)
    async with Runtime(flaky, ChainOfThought(), verifiers=exact(), settings=settings(), store=db, run_id="r") as rt:
        await collect(rt, make_tasks(5))
    # Without retry_failed, failed episodes count as done.
    async with Runtime(ScriptedPolicy(echo_answer), ChainOfThought(), settings=settings(), store=db, run_id="r") as rt:
        assert await collect(rt, make_tasks(5)) == []
    healthy = ScriptedPolicy(echo_answer)
    async with Runtime(
        healthy, ChainOfThought(), verifiers=exact(), settings=settings(retry_failed=True), store=db, run_id="r"
    ) as rt:
        rerun = await collect(rt, make_tasks(5))
    assert sorted(ep.task.id for ep in rerun) == ["t1", "t2"]
    assert all(ep.status == "ok" for ep in rerun)
    with EpisodeStore(db) as st:
        assert st.count("r") == 5
        assert st.summary("r")["failed"] == 0 and st.summary("r")["failures"] == {}


async def test_streamed_episodes_are_already_committed(tmp_path: Path, make_tasks: MakeTasks) -> None:
    with EpisodeStore(tmp_path / "e.db") as store:
        async with Runtime(
            ScriptedPolicy(echo_answer), ChainOfThought(), settings=settings(), store=store, run_id="r"
        ) as rt:
            async for ep in rt.stream(make_tasks(12)):
                assert (ep.task.id, ep.sample) in store.done_keys("r")


# -- backpressure and shutdown -------------------------------------------------------


async def test_slow_consumer_bounds_admission(make_tasks: MakeTasks) -> None:
    concurrency, buffer, batch = 4, 2, 3
    policy = ScriptedPolicy(["Answer: 1"])
    s = settings(concurrency=concurrency, buffer=buffer, store_batch=batch)
    async with Runtime(policy, ChainOfThought(), settings=s) as rt:
        async with aclosing(rt.stream(make_tasks(1000))) as stream:
            await stream.__anext__()  # start, take one, then stop reading
            await anyio.sleep(0.3)
            admitted = rt.stats.admitted
            stats = rt.statistics()
            await anyio.sleep(0.3)
            assert rt.stats.admitted == admitted  # nothing more gets in while we do not read
            # running + waiting to hand over, the writer's two buffers, one batch, the one we took
            assert admitted <= concurrency + 2 * buffer + batch + 1
            assert stats["in_flight"] <= concurrency
            assert admitted < 1000
            # Reading again resumes admission.
            for _ in range(50):
                await stream.__anext__()
            assert rt.stats.admitted > admitted


async def test_shutdown_abandon_stops_admission_and_stores_nothing_abandoned(
    tmp_path: Path, make_tasks: MakeTasks
) -> None:
    policy = DelayPolicy(lambda task_id: 0.05 if int(task_id[1:]) < 10 else 2.0)
    with EpisodeStore(tmp_path / "e.db") as store:
        async with Runtime(policy, ChainOfThought(), settings=settings(concurrency=20), store=store, run_id="r") as rt:
            received = []
            started = time.monotonic()
            async for ep in rt.stream(make_tasks(200)):
                received.append(ep)
                if len(received) == 10:  # the fast ten are done; ten slow ones are in flight
                    rt.shutdown("test says stop", abandon=True)
            elapsed = time.monotonic() - started
        assert rt.stop_reason == "test says stop"
        assert elapsed < 1.5  # the slow episodes were not waited for
        assert sorted(ep.task.id for ep in received) == sorted(f"t{i}" for i in range(10))
        assert rt.stats.admitted < 200
        assert rt.stats.admitted > rt.stats.finished == 10
        assert store.count("r") == 10  # abandoned episodes are not stored: they run again on resume
        assert rt.statistics()["in_flight"] == 0 and rt.statistics()["stopping"] is True

        # Resume picks up exactly the rest.
        async with Runtime(
            ScriptedPolicy(echo_answer), ChainOfThought(), settings=settings(), store=store, run_id="r"
        ) as rt2:
            rest = await collect(rt2, make_tasks(200))
        assert len(rest) == 190 and rt2.stats.skipped == 10
        assert store.count("r") == 200


async def test_shutdown_finish_lets_in_flight_episodes_finish(tmp_path: Path, make_tasks: MakeTasks) -> None:
    policy = DelayPolicy(lambda task_id: 0.6)
    with EpisodeStore(tmp_path / "e.db") as store:
        async with Runtime(policy, ChainOfThought(), settings=settings(concurrency=5), store=store, run_id="r") as rt:
            async with anyio.create_task_group() as tg:

                async def stop_soon() -> None:
                    await anyio.sleep(0.1)
                    rt.shutdown("drain")

                tg.start_soon(stop_soon)
                received = await collect(rt, make_tasks(100))
        assert len(received) == rt.stats.admitted == 5  # the five in flight, and no more
        assert all(ep.status == "ok" for ep in received)
        assert store.count("r") == 5


async def test_shutdown_finish_abandons_what_outlives_the_drain_timeout(tmp_path: Path, make_tasks: MakeTasks) -> None:
    policy = DelayPolicy(lambda task_id: 0.05 if task_id in {"t0", "t1"} else 5.0)
    db = tmp_path / "e.db"
    started = time.monotonic()
    async with Runtime(
        policy, ChainOfThought(), settings=settings(concurrency=4, drain_timeout=0.2), store=db, run_id="r"
    ) as rt:
        received = []
        async for ep in rt.stream(make_tasks(50)):
            received.append(ep)
            if len(received) == 2:
                rt.shutdown()  # on_shutdown "finish": wait up to drain_timeout
    assert time.monotonic() - started < 2.5
    assert sorted(ep.task.id for ep in received) == ["t0", "t1"]
    assert rt.stats.admitted >= 4
    with EpisodeStore(db) as st:
        assert st.done_keys("r") == {("t0", 0), ("t1", 0)}


@pytest.mark.parametrize("signals", [1, 2])
async def test_sigterm_stops_admission_and_a_second_one_abandons(
    tmp_path: Path, make_tasks: MakeTasks, signals: int
) -> None:
    policy = DelayPolicy(lambda task_id: 1.0)
    db = tmp_path / "e.db"
    async with Runtime(
        policy, ChainOfThought(), settings=settings(concurrency=3), store=db, run_id="r", handle_signals=True
    ) as rt:
        async with anyio.create_task_group() as tg:

            async def send() -> None:
                await anyio.sleep(0.2)
                for _ in range(signals):
                    os.kill(os.getpid(), signal.SIGTERM)
                    await anyio.sleep(0.05)

            tg.start_soon(send)
            received = await collect(rt, make_tasks(100))
    assert rt.stop_reason == "received SIGTERM"
    assert rt.stats.admitted == 3
    if signals == 1:  # the three in flight finish
        assert len(received) == 3
    else:  # the second signal abandons them
        assert received == []
    with EpisodeStore(db) as st:
        assert st.count("r") == len(received)


async def test_consumer_breaking_off_stops_the_run(make_tasks: MakeTasks) -> None:
    policy = ScriptedPolicy(["Answer: 1"], latency=0.001)
    async with Runtime(policy, ChainOfThought(), settings=settings(buffer=1)) as rt:
        async with aclosing(rt.stream(make_tasks(10_000))) as stream:
            async for _ in stream:
                break
        with anyio.fail_after(5):  # the writer notices the closed stream and stops the run
            while rt.stop_reason is None or rt.statistics()["in_flight"]:  # noqa: ASYNC110 (polls the runtime's counters)
                await anyio.sleep(0.01)
    assert rt.stop_reason == "the consumer closed the stream"
    assert rt.stats.admitted < 100


async def test_spent_endpoint_budget_stops_admission(make_tasks: MakeTasks) -> None:
    """A backend on the admission layer whose cost budget is spent stops admission: the
    scheduler finds the endpoint's limiter by type."""

    class Priced(AdmittedPolicy):
        calls = 0

        async def send(self, request: GenerationRequest, n: int, seed_offset: int) -> Reply:
            self.calls += 1
            return Reply([Completion("Answer: 1") for _ in range(n)], prompt_tokens=0, completion_tokens=200_000)

    policy = Priced(
        "m", endpoint="test://budget", limits=EndpointLimits(max_concurrency=1, budget_usd=1.0), price=Price(0.0, 1.0)
    )
    async with Runtime(policy, ChainOfThought(), settings=settings(concurrency=1, buffer=1)) as rt:
        episodes = await collect(rt, make_tasks(50))
    assert rt.stop_reason == "policy: cost budget spent: $1.0000 of $1.0000"
    # One at a time: the sixth episode waits for the fifth's slot, and by then the
    # budget is spent, so it is never admitted (it would only fail with BudgetExhausted).
    assert len(episodes) == rt.stats.admitted == policy.calls == 5
    assert all(ep.status == "ok" for ep in episodes)
    assert rt.statistics()["stopping"] is True


# -- scale -------------------------------------------------------------------------


async def test_ten_thousand_concurrent_episodes(tmp_path: Path) -> None:
    """10,000 episodes at once, three calls each, 50 ms per call: all complete, each
    once, in a few seconds (they overlap), with bounded memory."""
    count = 10_000
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = baseline

    def three_steps(request: GenerationRequest, i: int) -> str:
        done = request.assistant_prefix.count("\n")
        return "Answer: 7" if done >= 2 else f"Step {done}."

    policy = ScriptedPolicy(three_steps, latency=0.05)
    tasks = (Task(id=f"big{i}", prompt="q", answer="7") for i in range(count))
    keys: set[tuple[str, str, int]] = set()
    with EpisodeStore(tmp_path / "big.db") as store:
        started = time.monotonic()
        async with Runtime(
            policy,
            ChainOfThought(),
            verifiers=exact(),
            settings=SchedulerSettings(concurrency=count),
            store=store,
            run_id="big",
        ) as rt:
            async with anyio.create_task_group() as tg:

                async def sample_memory() -> None:
                    nonlocal peak
                    while True:
                        peak = max(peak, process.memory_info().rss)
                        await anyio.sleep(0.05)

                tg.start_soon(sample_memory)
                async for ep in rt.stream(tasks):
                    assert ep.status == "ok", ep.errors
                    keys.add(ep.key)
                tg.cancel_scope.cancel()
        elapsed = time.monotonic() - started
        assert len(keys) == count
        assert rt.stats.finished == count and rt.stats.solved == count
        assert policy.calls == 3 * count
        assert store.count("big") == count
    # Serially this would take 10,000 x 3 x 50 ms = 25 minutes.
    assert elapsed < 60
    assert peak - baseline < 1.5e9
