"""The scheduler: many concurrent episodes under structured concurrency.

``async with Runtime(policy, strategy, ...) as rt: async for ep in rt.stream(tasks)``
runs ``strategy.run(ctx)`` for every (task, sample) and yields finished episodes in
completion order.

Design decisions:
- Bounded everywhere. At most ``concurrency`` episodes run; a finished episode goes to
  the store writer through a stream of ``buffer`` places and then to the consumer
  through another. A slow consumer fills the buffers, episodes wait to hand over
  their result while holding their slot, and admission stops: memory stays bounded.
- An episode is "produced" once the store has committed it: the writer commits a
  batch in a worker thread, then yields its episodes. A run restarted with the same
  run id skips what the store holds, so a SIGKILL loses only uncommitted work, which
  is redone, and duplicates nothing.
- Anything an episode raises (policy, verifier, task, strategy, timeout, budget)
  becomes a failed episode carrying the error class, message and boundary; siblings
  never notice. Cancellation is the only thing that ends an episode unrecorded.
- Shutdown (``shutdown()``, or SIGINT / SIGTERM with ``handle_signals``) stops
  admission; in-flight episodes finish within ``drain_timeout`` (``on_shutdown:
  finish``) or are abandoned at once (``abandon``); abandoned episodes are not stored
  and so run again on resume. A second signal abandons.
- Admission also stops when the policy's endpoint budget is spent; the reason is
  kept in ``stop_reason``.
- Run-level budgets are the run's, not the process's. ``budget_usd`` counts the
  episodes a resumed run already stored, and on Ray the spend of every rollout worker:
  a worker's runtime has a :class:`SharedSpend` (``shared_spend``) through which it
  reports its ledger and reads the rest of the run's spend before each admission (and
  reports again as each episode ends), so N workers stop together at one budget,
  in-flight spend included. A strategy that keeps a run-level budget of its own
  (compute_optimal's token budget) gets ``resume_run(summary)`` with the stored run's
  totals when the runtime opens its store, so it continues from them.
- Cheap per episode, because at 10,000 episodes the scheduler's own work competes
  with every step (``tests/bench/scheduler.py``): the in-flight episodes of a stream
  share one cancel scope (their task group's, which abandoning cancels) instead of one
  each; a timeout scope exists only when a timeout is set; slots and buffers are taken
  with the non-blocking call first and awaited only when full, and the consumer drains
  what is buffered without a checkpoint per episode.
- The cyclic garbage collector is kept off that path while a stream runs (``gc:
  auto``, :mod:`runtime.scheduling.loop`): the start-up heap is frozen and the young
  generation sized to the episodes in flight, and both are put back when the last
  stream ends. uvloop is a choice of loop (``event_loop``), not a requirement.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup
from pydantic import BaseModel, ConfigDict, Field

from runtime.core.concurrency import send_all
from runtime.core.errors import EpisodeTimeout, SearchlearnError
from runtime.core.log import get_logger
from runtime.core.secrets import mask_secrets, redact
from runtime.core.types import Episode, ErrorInfo, Stop, Task
from runtime.policy.admission import admitted_limiter
from runtime.policy.base import Policy
from runtime.policy.limits import EndpointLimiter
from runtime.scheduling.loop import EventLoop, GcMode, TunedCollector
from runtime.scheduling.store import STALE_AFTER, EpisodeStore
from runtime.scheduling.tasks import iterate_tasks
from runtime.search.context import Context, Ledger, Sampling, Verifiers
from runtime.search.strategy import Strategy

__all__ = ["RunStats", "Runtime", "SchedulerSettings", "SharedSpend", "watch_signals"]

log = get_logger("searchlearn.scheduler")

DEFAULT_EPISODE_TIMEOUT = 900.0  # an episode that runs 15 minutes is stuck, not thinking
DEFAULT_MAX_CONSECUTIVE_FAILURES = 200
DEFAULT_MAX_EPISODE_BYTES = 16 << 20
_OFF_PATH_CHARS = 1000  # what an oversized episode keeps of each step off its chosen path


class SchedulerSettings(BaseModel):
    """How the scheduler runs episodes (the ``scheduler:`` section of a run config)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)

    concurrency: int = Field(64, ge=1)
    """Episodes running at once."""
    buffer: int = Field(256, ge=1)
    """Finished episodes buffered for the consumer."""
    samples_per_task: int = Field(1, ge=1)
    """Episodes per task."""
    episode_timeout: float | None = Field(DEFAULT_EPISODE_TIMEOUT, gt=0)
    """Seconds before an episode fails with EpisodeTimeout (None: no deadline)."""
    token_budget: int | None = Field(None, ge=1)
    """Tokens one episode may use."""
    on_shutdown: Literal["finish", "abandon"] = "finish"
    """On SIGINT/SIGTERM: let in-flight episodes finish, or abandon them (they rerun on resume)."""
    drain_timeout: float = Field(30.0, ge=0)
    """Seconds in-flight episodes get to finish on shutdown."""
    retry_failed: bool = False
    """On resume, run failed episodes again."""
    store_batch: int = Field(512, ge=1)
    """Finished episodes the store writer commits in one transaction, at most."""
    budget_usd: float | None = Field(None, ge=0)
    """Stop admitting once the run has spent this much (policy, verifiers and judges,
    in-flight episodes, on Ray every rollout worker's, and, on resume, the stored ones
    included)."""
    max_consecutive_failures: int | None = Field(DEFAULT_MAX_CONSECUTIVE_FAILURES, ge=1)
    """Stop admitting after this many episodes in a row failed with the same error class
    (a dead server, a broken verifier); None: never."""
    max_episode_bytes: int = Field(DEFAULT_MAX_EPISODE_BYTES, ge=1024)
    """Approximate size cap of one stored episode; a larger tree keeps its chosen path
    whole and loses per-token data, then text, off it (counted in usage.capped)."""
    gc: GcMode = "auto"
    """The cyclic garbage collector while a stream runs: 'auto' freezes the heap that
    exists at its start (gc.freeze) and sizes the young generation to the episodes in
    flight (10 objects each), restoring both when the last stream ends; 'default': as
    the interpreter has it (at 10,000 episodes in flight, a third of the CPU)."""
    event_loop: EventLoop = "asyncio"
    """Event loop of `searchlearn run`: asyncio's, or 'uvloop' (pip install
    "searchlearn[fast]"; less CPU per step). A program that drives the Runtime itself
    picks its loop with runtime.scheduling.loop.run_async."""


class SharedSpend(Protocol):
    """The run's spend kept outside this process (a Ray driver's account of its workers)."""

    async def sync(self, own: float) -> float:
        """Report ``own`` (this runtime's ledger: everything it has spent, in flight
        included); return the run's spend outside it (stored episodes, other workers)."""
        ...

    def report(self, own: float) -> None:
        """Report ``own`` without waiting for an answer."""
        ...


@dataclass(slots=True)
class RunStats:
    """Live counters of a runtime, for progress bars and the final summary."""

    started: float = field(default_factory=time.monotonic)
    admitted: int = 0
    finished: int = 0
    failed: int = 0
    skipped: int = 0
    rewarded: int = 0
    reward_sum: float = 0.0
    solved: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    capped: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    def record(self, ep: Episode) -> None:
        self.finished += 1
        if ep.status == "failed":
            self.failed += 1
            self.failures[ep.errors[0].type if ep.errors else "unknown"] += 1
        if ep.reward is not None:
            self.rewarded += 1
            self.reward_sum += ep.reward
            self.solved += ep.reward >= 1.0
        self.prompt_tokens += ep.usage.prompt_tokens
        self.completion_tokens += ep.usage.completion_tokens
        self.cost += ep.usage.cost
        self.capped += ep.usage.capped

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def as_dict(self) -> dict[str, Any]:
        return {
            "episodes": self.finished,
            "failed": self.failed,
            "skipped": self.skipped,
            "accuracy": self.solved / self.rewarded if self.rewarded else None,
            "mean_reward": self.reward_sum / self.rewarded if self.rewarded else None,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost": self.cost,
            "capped": self.capped,
            "seconds": self.elapsed,
            "episodes_per_s": self.finished / self.elapsed if self.elapsed > 0 else 0.0,
            "failures": dict(self.failures),
        }


class Runtime:
    """Runs a strategy over tasks against a policy; see the module docstring."""

    def __init__(
        self,
        policy: Policy,
        strategy: Strategy,
        *,
        verifiers: Verifiers | None = None,
        sampling: Sampling | None = None,
        settings: SchedulerSettings | None = None,
        store: EpisodeStore | str | os.PathLike[str] | None = None,
        run_id: str = "default",
        config: dict[str, Any] | None = None,
        handle_signals: bool = False,
    ) -> None:
        self.policy = policy
        self.strategy = strategy
        self.verifiers = verifiers or Verifiers()
        self.sampling = sampling or Sampling()
        self.settings = settings or SchedulerSettings()
        # A path (str or Path) opens a store this runtime owns and closes; a store
        # object is shared and stays open.
        self._own_store = isinstance(store, str | os.PathLike)
        self.store = EpisodeStore(store) if isinstance(store, str | os.PathLike) else store
        self.run_id = run_id
        self.config = config or {}
        self.handle_signals = handle_signals
        self.stats = RunStats()
        self.ledger = Ledger()
        self.shared_spend: SharedSpend | None = None
        """Where the rest of the run's spend is kept (set on a rollout worker; see the module doc)."""
        self._spent_before = 0.0  # the run's spend outside self.ledger: stored episodes, other workers
        self._limiters = spending_limiters(policy, self.verifiers)
        self.stop: Stop | None = None
        """Why admission stopped early (None: it did not)."""
        self.stop_reason: str | None = None
        self._strategy_config = strategy.config()
        self._slots = anyio.Semaphore(self.settings.concurrency)
        self._admissions: set[anyio.CancelScope] = set()
        self._inflight: set[anyio.CancelScope] = set()  # one per stream: its episodes' task group
        self._stack = AsyncExitStack()
        self._tg: TaskGroup | None = None
        self._in_flight = 0
        self._streak = ("", 0)  # error class of the latest finished failures, how many in a row
        self.log = log.bind(run_id=run_id)

    async def __aenter__(self) -> Runtime:
        store = self.store
        if store is not None:
            # One process per run id: a second one is refused here, before it spends
            # (in a thread: a store another process holds locked is waited for).
            await anyio.to_thread.run_sync(store.acquire_run, self.run_id)
            try:
                store.register_run(self.run_id, redact_config(self.config))
                summary = store.summary(self.run_id)
                self._spent_before = float(summary["cost"] or 0.0)
                resume_run = getattr(self.strategy, "resume_run", None)
                if resume_run is not None:  # a strategy's own run-level budget continues too
                    resume_run(summary)
            except BaseException:
                store.release_run(self.run_id)
                raise
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        if store is not None:
            self._tg.start_soon(self._heartbeat, store)
        if self.handle_signals:
            self._tg.start_soon(self._watch_signals)
        self.log.info(
            "run started",
            strategy=self.strategy.name,
            concurrency=self.settings.concurrency,
            samples_per_task=self.settings.samples_per_task,
            store=str(self.store.path) if self.store is not None else None,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()  # only the signal watcher and the heartbeat can still be running
        try:
            await self._stack.aclose()
        finally:
            s = self.stats
            self.log.info(
                "run ended",
                episodes=s.finished,
                failed=s.failed,
                skipped=s.skipped,
                cost=round(s.cost, 6),
                seconds=round(s.elapsed, 3),
                stop_reason=self.stop_reason,
            )
            if self.store is not None:
                self.store.release_run(self.run_id)
                if self._own_store:
                    self.store.close()

    def statistics(self) -> dict[str, Any]:
        return {
            "in_flight": self._in_flight,
            "concurrency": self.settings.concurrency,
            "stopping": self.stop_reason is not None,
            **self.stats.as_dict(),
        }

    # -- shutdown -----------------------------------------------------------------------

    def shutdown(self, reason: str | Stop = "shutdown requested", abandon: bool | None = None) -> None:
        """Stop admitting; finish (within ``drain_timeout``) or abandon in-flight work.
        ``reason``: a :class:`Stop`, or text (a stop of kind ``requested``)."""
        stop = reason if isinstance(reason, Stop) else Stop("requested", reason)
        if self.stop is None:
            self.stop, self.stop_reason = stop, stop.reason
            self.log.info("stopping admission", reason=stop.reason, kind=stop.kind)
        for scope in self._admissions:
            scope.cancel()
        if abandon is None:
            abandon = self.settings.on_shutdown == "abandon"
        if abandon:
            for scope in self._inflight:
                scope.cancel()
        elif self._tg is not None:
            self._tg.start_soon(self._drain_deadline)

    async def _drain_deadline(self) -> None:
        await anyio.sleep(self.settings.drain_timeout)
        for scope in self._inflight:
            scope.cancel()

    async def _heartbeat(self, store: EpisodeStore) -> None:
        """Keep the run's lease fresh while it lives, episodes finishing or not."""
        while True:
            await anyio.sleep(STALE_AFTER / 4)
            await anyio.to_thread.run_sync(store.heartbeat, self.run_id)

    async def _watch_signals(self) -> None:
        await watch_signals(self.shutdown)

    # -- running ------------------------------------------------------------------------

    async def run(self, tasks: Iterable[Task] | AsyncIterable[Task]) -> RunStats:
        """Run every task to completion, discarding the stream; returns the stats."""
        async for _ in self.stream(tasks):
            pass
        return self.stats

    async def stream(self, tasks: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Episode]:
        """Finished episodes, in completion order, each already committed to the store."""
        async for episode in self._stream(self._pairs(tasks)):
            yield episode

    async def stream_pairs(
        self, pairs: Iterable[tuple[Task, int]] | AsyncIterable[tuple[Task, int]]
    ) -> AsyncIterator[Episode]:
        """Like :meth:`stream`, over given (task, sample) pairs instead of every sample of
        every task: what a rollout worker runs for the driver that hands it work."""

        async def each() -> AsyncIterator[tuple[Task, int]]:
            if isinstance(pairs, AsyncIterable):
                async for pair in pairs:
                    yield pair
            else:
                for pair in pairs:
                    yield pair

        async for episode in self._stream(each()):
            yield episode

    async def _pairs(self, tasks: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[tuple[Task, int]]:
        async for task in iterate_tasks(tasks):
            for sample in range(self.settings.samples_per_task):
                yield task, sample

    async def _stream(self, pairs: AsyncIterator[tuple[Task, int]]) -> AsyncIterator[Episode]:
        if self._tg is None:
            raise RuntimeError("use the Runtime as `async with Runtime(...) as rt:` before streaming")
        send, receive = anyio.create_memory_object_stream[Episode](self.settings.buffer)
        self._tg.start_soon(self._produce, pairs, send)
        async with receive:
            async for episode in receive:
                yield episode
                while True:  # what is already buffered, without a checkpoint each
                    try:
                        episode = receive.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                    yield episode

    async def _produce(self, pairs: AsyncIterator[tuple[Task, int]], out: Any) -> None:
        to_store, from_episodes = anyio.create_memory_object_stream[Episode](self.settings.buffer)
        done: set[tuple[str, int]] = set()
        if self.store is not None:
            done = self.store.done_keys(self.run_id, include_failed=not self.settings.retry_failed)
        # The collector is tuned while the stream runs and put back when it ends, however
        # it ends (its episodes done, abandoned, or the runtime closed under it).
        with TunedCollector(self.settings.gc, self.settings.concurrency):
            async with out, anyio.create_task_group() as tg:
                tg.start_soon(self._write, from_episodes, out, tg.cancel_scope)
                episodes = anyio.create_task_group()
                # Abandoning cancels the episodes' task group: every in-flight episode of the
                # stream at once (an abandoned episode ends unrecorded: it runs again on resume).
                self._inflight.add(episodes.cancel_scope)
                try:
                    async with to_store, episodes:
                        with anyio.CancelScope() as admission:
                            self._admissions.add(admission)
                            if self.stop_reason is not None:
                                admission.cancel()
                            try:
                                await self._admit(pairs, done, episodes, to_store)
                            finally:
                                self._admissions.discard(admission)
                finally:
                    self._inflight.discard(episodes.cancel_scope)

    def exhausted(self) -> str | None:
        """Why no more episodes may be admitted for spending, or None: an endpoint
        budget (the policy's, a judge's, a teacher's) or the run's own budget."""
        for owner, limiter in self._limiters:
            if reason := limiter.exhausted:
                return f"{owner}: {reason}"
        budget = self.settings.budget_usd
        if budget is not None and (spent := self._spent_before + self.ledger.cost) >= budget:
            return f"run budget spent: ${spent:.4f} of ${budget:.4f}"
        return None

    async def _admit(
        self, pairs: AsyncIterator[tuple[Task, int]], done: set[tuple[str, int]], episodes: TaskGroup, to_store: Any
    ) -> None:
        async for task, sample in pairs:
            if (task.id, sample) in done:
                self.stats.skipped += 1
                continue
            try:
                self._slots.acquire_nowait()
            except anyio.WouldBlock:
                await self._slots.acquire()
            else:
                # Let the episodes already admitted run (and spend) before the
                # budget check below; a bare checkpoint costs no cancel scope.
                await anyio.lowlevel.checkpoint()
            # Checked once the slot is ours: the budget may have run out while we
            # waited, and an episode admitted now would only fail with BudgetExhausted.
            if self.shared_spend is not None and self.settings.budget_usd is not None:
                try:
                    self._spent_before = await self.shared_spend.sync(self.ledger.cost)
                except BaseException:
                    self._slots.release()
                    raise
            if reason := self.exhausted():
                self._slots.release()
                self.shutdown(Stop("budget", reason), abandon=False)
                return
            self.stats.admitted += 1
            self._in_flight += 1
            episodes.start_soon(self._episode, task, sample, to_store)

    async def _episode(self, task: Task, sample: int, to_store: Any) -> None:
        try:
            episode = Episode(
                run_id=self.run_id,
                task=task,
                sample=sample,
                strategy=self.strategy.name,
                strategy_config=self._strategy_config,
            )
            # Cancellation (abandon) propagates out of here: the episode is not stored.
            await self._run_one(episode)
            self._failure_policy(episode)
            try:
                to_store.send_nowait(episode)
            except anyio.WouldBlock:
                # Finished work waits for the writer; abandoning no longer applies to it.
                with anyio.CancelScope(shield=True):
                    await to_store.send(episode)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return  # the writer is gone (the run is stopping): not stored, runs again on resume
        finally:
            self._in_flight -= 1
            self._slots.release()
            if self.shared_spend is not None:
                self.shared_spend.report(self.ledger.cost)

    def _failure_policy(self, episode: Episode) -> None:
        """Stop admitting after ``max_consecutive_failures`` episodes in a row failed
        with one error class (counted as they finish, not as they are stored)."""
        if episode.status != "failed":
            self._streak = ("", 0)
            return
        kind = episode.errors[0].type if episode.errors else "unknown"
        count = self._streak[1] + 1 if self._streak[0] == kind else 1
        self._streak = (kind, count)
        limit = self.settings.max_consecutive_failures
        if limit is not None and count >= limit and self.stop_reason is None:
            why = episode.errors[0].message[:200] if episode.errors else ""
            self.shutdown(Stop("failures", f"{count} episodes in a row failed with {kind}: {why}"), abandon=False)

    async def _run_one(self, episode: Episode) -> None:
        started = time.monotonic()
        ctx = Context(episode, self.policy, self.verifiers, self.sampling, self.settings.token_budget, self.ledger)
        timeout = self.settings.episode_timeout
        try:
            if timeout is None:
                await self.strategy.run(ctx)
            else:
                # fail_after's semantics with a bare scope: fail_after adds two
                # generator context managers per episode around the same CancelScope.
                with anyio.CancelScope(deadline=anyio.current_time() + timeout) as scope:
                    await self.strategy.run(ctx)
                if scope.cancelled_caught:
                    raise TimeoutError
        except TimeoutError:
            episode.status = "failed"
            episode.errors.append(ErrorInfo.from_exception(EpisodeTimeout(f"episode exceeded its {timeout}s timeout")))
        except Exception as exc:
            episode.status = "failed"
            episode.errors.append(ErrorInfo.from_exception(exc))
            if not isinstance(exc, SearchlearnError):
                self.log.warning("episode raised", task_id=episode.task.id, error=redact(repr(exc))[:500])
        if episode.status == "failed" and episode.errors:
            error = episode.errors[0]
            self.log.info(
                "episode failed",
                task_id=episode.task.id,
                sample=episode.sample,
                error=error.type,
                boundary=error.boundary,
                message=error.message[:300],
            )
        fit_episode(episode, self.settings.max_episode_bytes)
        episode.usage.wall_time = time.monotonic() - started
        episode.finished_at = time.time()

    def _commit(self, batch: list[Episode]) -> None:
        assert self.store is not None
        self.store.write_many(batch, self.settings.retry_failed)
        self.store.heartbeat(self.run_id)

    async def _write(self, from_episodes: Any, out: Any, scope: anyio.CancelScope) -> None:
        """Commit finished episodes in batches, then hand them to the consumer."""
        batch_max = self.settings.store_batch
        try:
            async with from_episodes:
                async for first in from_episodes:
                    batch = [first]
                    while len(batch) < batch_max:
                        try:
                            batch.append(from_episodes.receive_nowait())
                        except anyio.WouldBlock:
                            break
                        except anyio.EndOfStream:
                            break
                    if self.store is not None:
                        await anyio.to_thread.run_sync(self._commit, batch)
                    for ep in batch:
                        self.stats.record(ep)
                    await send_all(out, batch)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            # The consumer stopped listening: stop the run rather than block forever.
            self.shutdown("the consumer closed the stream", abandon=True)
            scope.cancel()


async def watch_signals(shutdown: Callable[[Stop, bool | None], None]) -> None:
    """SIGINT / SIGTERM call ``shutdown``: the first drains (as ``on_shutdown`` says), a
    second abandons what is in flight."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        count = 0
        async for signum in signals:
            count += 1
            stop = Stop("signal", f"received {signal.Signals(signum).name}", int(signum))
            shutdown(stop, True if count > 1 else None)


# -- spending and size --------------------------------------------------------------------

_SPENDERS = ("policy", "_policy", "check", "then", "outcome", "_outcome", "process", "potential")


def spending_limiters(policy: Any, verifiers: Verifiers) -> list[tuple[str, EndpointLimiter]]:
    """Every endpoint limiter the run can spend through, named by where it is: the
    policy's, and those of the verifiers' own policies (an LLM judge on its own
    endpoint, a composite's parts), each once. A limiter is an admitted policy's
    (:class:`~runtime.policy.admission.AdmittedPolicy`, the layer every API backend
    shares)."""
    found: list[tuple[str, EndpointLimiter]] = []
    seen: set[int] = set()

    def visit(obj: Any, where: str, depth: int) -> None:
        if obj is None or depth > 6 or id(obj) in seen:
            return
        seen.add(id(obj))
        limiter = admitted_limiter(obj)
        if limiter is not None:
            found.append((where, limiter))
        for name in _SPENDERS:
            child = getattr(obj, name, None)
            if child is not None and not isinstance(child, str | int | float | bool):
                visit(child, f"{where}.{name.lstrip('_')}", depth + 1)
        for i, part in enumerate(getattr(obj, "parts", None) or []):
            visit(part[0] if isinstance(part, tuple) else part, f"{where}.{i}", depth + 1)

    visit(policy, "policy", 0)
    visit(verifiers.outcome, "verifiers.outcome", 0)
    visit(verifiers.process, "verifiers.process", 0)
    return found


def redact_config(config: dict[str, Any]) -> dict[str, Any]:
    """The run's config with secrets masked, as it is stored in ``runs.config``: every
    registered key and key-shaped token, and keys by place (a URL's ``?api_key=``, a
    secret-named field of ``extra_body``; see :func:`~runtime.core.secrets.mask_secrets`)."""
    import json

    return dict(mask_secrets(json.loads(redact(json.dumps(config, default=str)))))


def _node_bytes(node: Any) -> int:
    # Run on every node of every episode: unrolled, and no generator for the common
    # case of no explanations.
    size = 200 + len(node.text)
    if node.explanations:
        size += sum(map(len, node.explanations.values()))
    if node.token_ids:
        size += 12 * len(node.token_ids)
    if node.logprobs:
        size += 12 * len(node.logprobs)
    if node.sample_logprobs:
        size += 12 * len(node.sample_logprobs)
    return size


def fit_episode(episode: Episode, limit: int) -> None:
    """Cap the stored size of ``episode`` at about ``limit`` bytes: nodes off the chosen
    path lose their per-token data, then their text past 1,000 characters. The chosen
    path stays whole (what learners train on); ``usage.capped`` counts a cut episode."""
    nodes = episode.nodes
    total = 500 + len(episode.final_answer or "") + sum(map(_node_bytes, nodes))
    if total <= limit:
        return
    keep = set(episode.chosen_path)
    off_path = [n for n in nodes if n.id not in keep]
    for node in off_path:
        if total <= limit:
            break
        before = _node_bytes(node)
        node.token_ids = node.logprobs = node.sample_logprobs = None
        total -= before - _node_bytes(node)
    for node in off_path:
        if total <= limit:
            break
        if len(node.text) > _OFF_PATH_CHARS:
            total -= len(node.text) - _OFF_PATH_CHARS
            node.text = node.text[:_OFF_PATH_CHARS]
            node.meta["cut"] = True
    episode.usage.capped += 1
