"""The online loop: episodes stream into a learner whose weights flow back into the policy.

::

    Runtime.stream(tasks) ──► episodes (bounded) ──► examples ──► learner.update ──► version N+1
          ▲                                                                           │
          └──────────────────── policy.swap_weights(weights, N+1) ◄───────────────────┘

Design decisions (after AReaL's asynchronous RL, Fu et al. 2025, on one machine):
- No stop-the-world: the scheduler keeps running episodes while the learner takes an
  optimizer step in a worker thread; the engine swaps weights between decode steps.
  ``mode="sync"`` (generate a batch, stop, train, repeat) exists as the baseline.
- Backpressure both ways: finished episodes wait in a bounded buffer; when the learner
  falls behind, the buffer and then the scheduler's own buffers fill and admission
  stops, so memory stays bounded. The learner only waits for data between steps.
- Staleness bound k: an example sampled under a version more than k versions older
  than the learner's is dropped or down-weighted (``decay ** (staleness - k)``), and
  counted either way; the staleness of everything consumed is kept as a histogram.
  Without a policy to publish to (distillation: the teacher samples and never
  changes) nothing is stale.
- Durable and resumable: the learner checkpoints (model, optimizer, version, the set
  of episodes consumed, the dedupe state) right after a step, when no example is
  pending. A restarted loop first replays the stored episodes it had not consumed,
  then continues the stream (which skips what is stored): no episode of the training
  stream is lost or used twice.
- ``passes`` > 1 reuses scarce examples without overfitting one batch: each round's
  steps take the new batch and the previous ``passes - 1`` batches, shuffled together,
  so every example is trained on ``passes`` times, each time among other examples.
- ``idle_replay``: the learner never waits. When no new batch is ready it steps on a
  batch drawn from the replay pool (the latest examples, each trained in at most
  ``max_reuse`` steps, none staler than ``max_staleness``). Measured from
  ``bundled-weak``: per optimizer step verified search paths teach about as much as
  ground truth, but the learner idled 65 % of the time waiting for them; replay turns
  that idle core into steps (``docs/benchmarks.md``).
- ``retry_unsolved``: a task the search failed is queued and run again once the policy
  has moved ``retry_after`` versions on; the hard tasks are where the next verified
  solutions are scarcest. Each attempt is its own sample index, so the store keeps all
  of them and a resumed run neither repeats nor loses one (the queue itself is not
  checkpointed: a restart forgets the retries not yet started).
- Machine use is counted, not guessed: every generated and prompt token, and every
  token a learner step processed, times the model's parameters (2 FLOP a parameter a
  token forward, 6 forward and backward), over wall time.
- Every ``eval_every`` versions the evaluator scores a snapshot of the weights in the
  background; the curve (version, episodes consumed, wall time, metrics) goes to the
  run's store.
- ``report_to``: every step's and every curve point's metrics also go to experiment
  trackers (TensorBoard, wandb), assembled in one place (:mod:`learners.trackers`).
"""

from __future__ import annotations

import random
import time
from collections import Counter, deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from learners.base import ExampleSource, Learner
from learners.evaluate import Evaluator
from learners.examples import Example
from learners.loop_settings import LoopSettings
from learners.loop_stats import LoopStats
from learners.trackers import Reporter, open_trackers, require_trackers
from runtime.core.errors import ConfigError
from runtime.core.log import get_logger
from runtime.core.types import Episode, Stop, Task
from runtime.policy.base import WeightedPolicy
from runtime.scheduling.scheduler import Runtime
from runtime.scheduling.tasks import iterate_tasks

__all__ = ["LoopStats", "OnlineLoop"]

log = get_logger("searchlearn.loop")


class OnlineLoop:
    """Runs ``runtime`` over tasks and trains ``learner`` on what it produces."""

    def __init__(
        self,
        runtime: Runtime,
        learner: Learner,
        source: ExampleSource,
        *,
        publish: WeightedPolicy | None = None,
        evaluator: Evaluator | None = None,
        checkpoint: str | Path | None = None,
        settings: LoopSettings | None = None,
        logging_dir: str | Path | None = None,
    ) -> None:
        """``logging_dir``: where ``settings.report_to``'s trackers write (default: the
        settings' ``logging_dir``, else ``<run_id>/tb`` beside the store)."""
        self.runtime = runtime
        self.learner = learner
        self.source = source
        self.publish_to = publish
        self.evaluator = evaluator
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.settings = settings or LoopSettings()
        require_trackers(self.settings.report_to)  # a missing package is refused before the run
        self.logging_dir = Path(logging_dir or self.settings.logging_dir or self._default_logging_dir())
        self._reporter = Reporter([])
        # Episodes queued anywhere between the scheduler and the learner age by one
        # version per step: keep the scheduler's own buffer no deeper than the loop's.
        runtime.settings.buffer = min(runtime.settings.buffer, self.settings.buffer_episodes)
        self.stats = LoopStats()
        self._consumed: set[tuple[str, int]] = set()
        self._pending: list[Example] = []
        self._eval_lock = anyio.Lock()
        self._last_eval = 0.0  # elapsed seconds when the last evaluation began
        self._evaluated: set[int] = set()
        self._tg: anyio.abc.TaskGroup | None = None
        self._pending_keys: set[tuple[str, int]] = set()
        self._window: list[list[Example]] = []  # the last `passes` batches, for replay
        self._pool: list[Example] = []  # idle replay: the latest examples trained
        self._uses: dict[int, int] = {}  # id(example) -> optimizer steps it was in
        self._retries: deque[tuple[Task, int, int]] = deque(maxlen=100_000)  # task, sample, version failed at
        model = getattr(learner, "model", None)
        if model is not None:
            self.stats.parameters = sum(p.numel() for p in model.parameters())
        self.log = log.bind(run_id=runtime.run_id)

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> OnlineLoop:
        """Enter the runtime; on exit close it, its policy and the evaluator's engine."""
        await self.runtime.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await self.runtime.__aexit__(*exc_info)
        finally:
            await self.aclose()

    def _default_logging_dir(self) -> Path:
        store = self.runtime.store
        return (Path(store.path).parent if store is not None else Path("runs")) / self.runtime.run_id / "tb"

    async def aclose(self) -> None:
        await self.runtime.policy.aclose()
        if self.evaluator is not None:
            await self.evaluator.aclose()

    # -- the loop -----------------------------------------------------------------------

    async def run(
        self,
        tasks: Iterable[Task] | AsyncIterable[Task],
        *,
        on_episode: Callable[[Episode], object] | None = None,
    ) -> LoopStats:
        """Run to the end of ``tasks`` (or of the time / version budget); returns the stats.

        Online mode streams ``tasks`` (any iterable or async iterable, unbounded ones
        included: a followed file runs until it ends or a signal). Sync mode lists them
        first, so it takes a bounded source only. ``on_episode`` is called with every
        episode the run produces, once the store has committed it (the CLI's continuous
        export), before the learner takes it; replayed episodes are not passed again.
        """
        # A stream says whether it ends by itself; another async iterable cannot be listed.
        bounded = getattr(tasks, "bounded", None)
        unbounded = isinstance(tasks, AsyncIterable) if bounded is None else not bounded
        if self.settings.mode == "sync" and unbounded:
            raise ConfigError(
                "learner.mode: sync lists every task before it starts, and this task source is unbounded "
                "(it follows its input); use mode: online"
            )
        replay = self._restore()
        if self.settings.report_to:
            settings = self.settings.model_dump(mode="json")
            trackers = open_trackers(self.settings.report_to, self.logging_dir, self.runtime.run_id, settings)
            self._reporter = Reporter(trackers, self.stats.staleness)
            self.log.info("tracking", report_to=self.settings.report_to, logging_dir=str(self.logging_dir))
        try:
            return await self._run(replay, tasks, on_episode)
        finally:
            self._reporter.close()

    async def _run(
        self,
        replay: list[Episode],
        tasks: Iterable[Task] | AsyncIterable[Task],
        on_episode: Callable[[Episode], object] | None,
    ) -> LoopStats:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            if self.evaluator is not None and self.learner.version not in self._evaluated:
                await self._evaluate(self.learner.weights(), self.learner.version)
                # The time budget is training time: it starts once the start is measured
                # (that evaluation blocks, and would otherwise eat a short budget).
                self.stats.started = time.monotonic()
            if self.settings.mode == "sync":
                await self._sync(list(replay), list(tasks), on_episode)  # type: ignore[arg-type]
            else:
                await self._online(replay, tasks, on_episode)
            if self._pending:
                await self._train()
            self._save()
            if self.evaluator is not None and self.learner.version not in self._evaluated:
                self._tg = None
                await self._evaluate(self.learner.weights(), self.learner.version)
        return self.stats

    async def _online(
        self,
        replay: list[Episode],
        tasks: Iterable[Task] | AsyncIterable[Task],
        on_episode: Callable[[Episode], object] | None = None,
    ) -> None:
        send, receive = anyio.create_memory_object_stream[Episode](self.settings.buffer_episodes)

        async def produce() -> None:
            async with send:
                try:
                    for ep in replay:
                        self.stats.replayed += 1
                        await send.send(ep)
                    if self.settings.retry_unsolved:
                        source = self.runtime.stream_pairs(self._with_retries(tasks))
                    else:
                        source = self.runtime.stream(tasks)
                    async with aclosing(source) as stream:  # type: ignore[type-var]
                        async for ep in stream:
                            if on_episode is not None:
                                on_episode(ep)
                            await send.send(ep)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    self.runtime.shutdown("the learner stopped", abandon=True)

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            async with receive:
                while True:
                    try:
                        episode = receive.receive_nowait()
                    except anyio.WouldBlock:
                        if await self._replay():  # a step instead of waiting
                            if self._budget_spent():
                                self.runtime.shutdown(self._limit_reached(), abandon=True)
                                break
                            continue
                        try:
                            episode = await receive.receive()
                        except anyio.EndOfStream:
                            break
                    except anyio.EndOfStream:
                        break
                    await self._take(episode)
                    if len(self._pending) >= self.settings.batch_examples:
                        await self._train()
                    if self._budget_spent():
                        self.runtime.shutdown(self._limit_reached(), abandon=True)
                        break

    async def _sync(
        self, replay: list[Episode], tasks: list[Task], on_episode: Callable[[Episode], object] | None = None
    ) -> None:
        """The baseline: generate ``sync_episodes`` episodes, stop, train on them, repeat.
        It lists the tasks first (a bounded source only; :meth:`run` refuses another)."""
        for episode in replay:
            self.stats.replayed += 1
            await self._take(episode)
        done = self.runtime.store.done_keys(self.runtime.run_id) if self.runtime.store is not None else set()
        todo = [t for t in tasks if (t.id, 0) not in done]
        chunk = self.settings.sync_episodes
        for start in range(0, len(todo), chunk):
            if self._budget_spent():
                break
            async with aclosing(self.runtime.stream(todo[start : start + chunk])) as stream:  # type: ignore[type-var]
                async for episode in stream:
                    if on_episode is not None:
                        on_episode(episode)
                    await self._take(episode)
            while len(self._pending) >= self.settings.batch_examples and not self._budget_spent():
                await self._train(self.settings.batch_examples)

    def _limit_reached(self) -> Stop:
        """The stop of a run that reached the learner's own limit (what its config asked)."""
        s = self.settings
        if s.max_versions is not None and self.learner.version >= s.max_versions:
            return Stop("limit", f"learner.max_versions reached ({s.max_versions})")
        return Stop("limit", f"learner.max_minutes reached ({s.max_minutes:g} min)")

    def _budget_spent(self) -> bool:
        s = self.settings
        if s.max_seconds is not None and self.stats.elapsed >= s.max_seconds:
            return True
        return s.max_versions is not None and self.learner.version >= s.max_versions

    # -- from episodes to steps ---------------------------------------------------------

    async def _with_retries(self, tasks: Iterable[Task] | AsyncIterable[Task]) -> AsyncIterator[tuple[Task, int]]:
        """Every (task, sample) of ``tasks``, with the unsolved tasks that are due again
        slipped in between them."""
        per = self.runtime.settings.samples_per_task
        async for task in iterate_tasks(tasks):
            for sample in range(per):
                yield task, sample
            while self._retries and self.learner.version - self._retries[0][2] >= self.settings.retry_after:
                again, sample, _ = self._retries.popleft()
                yield again, sample
        while self._retries:  # the source is spent: what is queued runs now, due or not
            again, sample, _ = self._retries.popleft()
            yield again, sample

    def _queue_retry(self, episode: Episode) -> None:
        per = self.runtime.settings.samples_per_task
        attempt = max(0, episode.sample - per + 1)  # retries done so far for this task
        solved = episode.reward is not None and episode.reward >= 1.0
        if episode.status != "ok" or solved or attempt >= self.settings.retry_unsolved:
            return
        self._retries.append((episode.task, per + attempt, self.learner.version))
        self.stats.retries += 1

    async def _take(self, episode: Episode) -> None:
        self.stats.episodes += 1
        self._reporter.episode(episode.reward)
        self._count_generation(episode)
        if self.settings.retry_unsolved:
            self._queue_retry(episode)
        key = (episode.task.id, episode.sample)
        rejected = self.source.rejected_by_process
        examples = await self.source.examples(episode, self.runtime.verifiers)
        self.stats.rejected_by_process += self.source.rejected_by_process - rejected
        self.stats.skipped_groups = getattr(self.source, "skipped_groups", 0)
        self.stats.reencoded_paths = getattr(self.source, "reencoded_paths", 0)
        k = self.settings.max_staleness
        kept = []
        for ex in examples:
            staleness = self._staleness(ex)
            self.stats.staleness[staleness] += 1
            if staleness > k:
                if self.settings.stale == "drop":
                    self.stats.dropped_stale += 1
                    continue
                ex.weight *= self.settings.stale_decay ** (staleness - k)
                self.stats.downweighted += 1
            kept.append(ex)
        if not kept:
            self.stats.no_examples += 1
            self._consumed.add(key)
            return
        self._pending.extend(kept)
        self._pending_keys.add(key)

    async def _train(self, limit: int | None = None) -> None:
        """Optimizer step(s) on pending examples; then maybe publish, checkpoint, evaluate."""
        if limit is None or limit >= len(self._pending):
            batch, self._pending = self._pending, []
            keys, self._pending_keys = self._pending_keys, set()
        else:  # sync mode: a fixed batch, whole episodes only for the consumed set
            batch, self._pending = self._pending[:limit], self._pending[limit:]
            left = {ex.key[1:] for ex in self._pending}
            keys = {ex.key[1:] for ex in batch} - left
            self._pending_keys -= keys
        steps_before = self.learner.steps
        for chunk in self._replay_chunks(batch):
            await self._step(chunk)
        self.stats.examples += len(batch)
        self._consumed |= keys
        if self.settings.idle_replay:
            self._pool.extend(batch)
            for ex in self._pool[: -self.settings.replay_pool]:
                self._uses.pop(id(ex), None)
            del self._pool[: -self.settings.replay_pool]
        if self._stepped_to_a_version(steps_before):
            await self._publish()

    def _stepped_to_a_version(self, steps_before: int) -> bool:
        """Whether the steps since ``steps_before`` crossed a version boundary (a refused,
        non-finite or empty step moves nothing and publishes nothing)."""
        per = self.settings.steps_per_version
        return self.learner.steps // per > steps_before // per

    async def _step(self, chunk: list[Example]) -> None:
        result = await self.learner.update(chunk)
        for ex in chunk:
            self._uses[id(ex)] = self._uses.get(id(ex), 0) + 1
        s = self.stats
        s.steps, s.last_loss = self.learner.steps, result.loss
        s.learner_seconds += result.seconds
        s.trained_tokens += int(result.metrics.get("processed", result.tokens))
        s.learner_counts.update({k: v for k, v in result.metrics.items() if k.endswith(("_tokens", "_samples"))})
        optimizer = getattr(self.learner, "optimizer", None)
        lr = optimizer.param_groups[0]["lr"] if optimizer is not None else None
        self._reporter.step(result, s, self.learner.steps, lr)

    def _count_generation(self, episode: Episode) -> None:
        """Tokens the policy computed: a local engine's own count (the prefill it really
        ran, cached prefixes excluded, and the sampled tokens), else the episodes' usage
        (prompts counted whole)."""
        stats = getattr(getattr(self.runtime.policy, "engine", None), "stats", None)
        if stats is not None and hasattr(stats, "prefill_computed"):
            self.stats.generated_tokens = stats.prefill_computed + stats.generated_tokens
        else:
            self.stats.generated_tokens += episode.usage.tokens

    async def _replay(self) -> bool:
        """With ``idle_replay``: one optimizer step on a batch drawn from the pool (the
        examples still under ``max_reuse`` steps and within the staleness bound), then
        publish as after any step. False when idle replay is off, the pool is still
        smaller than ``replay_min_pool``, or too little is left to fill half a batch."""
        s = self.settings
        if not s.idle_replay or len(self._pool) < s.replay_min_pool:
            return False
        fresh = [
            ex for ex in self._pool
            if self._uses.get(id(ex), 0) < s.max_reuse and self._staleness(ex) <= s.max_staleness
        ]  # fmt: skip
        if len(fresh) < max(1, s.batch_examples // 2):
            return False
        rng = random.Random(self.learner.steps)
        steps_before = self.learner.steps
        await self._step(rng.sample(fresh, min(len(fresh), s.batch_examples)))
        self.stats.replay_steps += 1
        if self._stepped_to_a_version(steps_before):
            await self._publish()
        return True

    def _replay_chunks(self, batch: list[Example]) -> list[list[Example]]:
        """The batches of this round's optimizer steps: ``batch`` and the last ``passes - 1``
        batches, shuffled together and cut into one batch per batch in the window. Every
        example is trained on in ``passes`` steps, each time among other examples: the same
        batch stepped on twice in a row overfits it (measured: accuracy fell where the same
        examples, reshuffled, left it flat). A replayed example whose version fell more than
        ``max_staleness`` behind the learner's is retired from the window."""
        self._window.append(batch)
        del self._window[: -self.settings.passes]
        if len(self._window) == 1:
            return [batch]
        k = self.settings.max_staleness
        pool = list(batch)
        for old in self._window[:-1]:
            pool.extend(ex for ex in old if self._staleness(ex) <= k)
        random.Random(self.learner.steps).shuffle(pool)
        n = len(self._window)
        return [chunk for j in range(n) if (chunk := pool[j * len(pool) // n : (j + 1) * len(pool) // n])]

    def _staleness(self, example: Example) -> int:
        """Versions between the one ``example`` was sampled under and the learner's. It only
        means something when the learner's versions are what samples (expert iteration);
        a distillation teacher never changes, so nothing it wrote is stale."""
        if self.publish_to is None or example.policy_version is None:
            return 0
        return self.learner.version - example.policy_version

    async def _publish(self) -> None:
        self.learner.version += 1
        version = self.stats.version = self.learner.version
        weights = self.learner.weights()
        if self.publish_to is not None:
            self.publish_to.swap_weights(weights, version)
        self.log.info("published", version=version, loss=self.stats.last_loss, episodes=self.stats.episodes)
        if not self._pending and version % self.settings.checkpoint_every == 0:
            self._save()
        every_seconds = self.settings.eval.every_seconds if self.settings.eval is not None else None
        if every_seconds is not None:
            due = self.evaluator is not None and self.stats.elapsed - self._last_eval >= every_seconds
        else:
            due = self.evaluator is not None and version % self.settings.eval_every == 0
        if due and self._tg is not None and not self._eval_lock.locked():  # one evaluation at a time
            self._evaluated.add(version)  # now, not when the task first runs: the end checks it
            self._last_eval = self.stats.elapsed
            self._tg.start_soon(self._evaluate, weights, version)

    async def _evaluate(self, weights: dict[str, Any], version: int) -> None:
        assert self.evaluator is not None
        episodes, wall, step = self.stats.episodes, self.stats.elapsed, self.learner.steps
        self._evaluated.add(version)
        async with self._eval_lock:
            metrics = await self.evaluator.evaluate(weights, version)
        point = {"version": version, "steps": step, "episodes": episodes, "wall_time": wall, **metrics}
        self.stats.curve.append(point)
        self._reporter.curve_point(point, step)
        self.log.info("evaluated", **point)
        if self.runtime.store is not None:
            self.runtime.store.add_curve_point(self.runtime.run_id, version, episodes, wall, metrics)

    # -- durability ---------------------------------------------------------------------

    def _save(self) -> None:
        if self.checkpoint is None or self._pending:
            return
        s = self.stats
        self.learner.save(
            self.checkpoint,
            {
                "consumed": sorted(self._consumed),
                "seen": self.source.state(),
                "window": self._window,
                "stats": {
                    "episodes": s.episodes,
                    "examples": s.examples,
                    "no_examples": s.no_examples,
                    "rejected_by_process": s.rejected_by_process,
                    "dropped_stale": s.dropped_stale,
                    "downweighted": s.downweighted,
                    "learner_seconds": s.learner_seconds,
                    "elapsed": s.elapsed,
                    "staleness": dict(s.staleness),
                },
            },
        )

    def _check_store_has(self, consumed: set[tuple[str, int]], stored: list[Episode]) -> None:
        """A checkpoint only resumes the run whose episodes it trained on: every episode it
        consumed was committed to the store before the learner saw it. A checkpoint left
        over from another store (same directory and run id) would otherwise be resumed
        silently, with a budget, a version and weights that are not this run's."""
        store = self.runtime.store
        if store is None:
            return
        missing = len(consumed - {(ep.task.id, ep.sample) for ep in stored})
        if missing:
            raise ConfigError(
                f"learner checkpoint {self.checkpoint} does not belong to run {self.runtime.run_id!r} of "
                f"store {store.path}: {missing} of the {len(consumed)} episodes it trained on are not in "
                "the store; delete the checkpoint to start over, or point learner.checkpoint elsewhere"
            )

    def _restore(self) -> list[Episode]:
        """Load the checkpoint if there is one; the stored episodes not yet consumed."""
        store, run_id = self.runtime.store, self.runtime.run_id
        stored = list(store.episodes(run_id)) if store is not None else []
        if store is not None:
            self.stats.curve = store.curve(run_id)
            self._evaluated = {p["version"] for p in self.stats.curve}
        if self.checkpoint is not None and self.checkpoint.is_file():
            extra = self.learner.load(self.checkpoint)
            self._consumed = {(t, int(n)) for t, n in extra["consumed"]}
            self._check_store_has(self._consumed, stored)
            self.source.load_state(extra["seen"])
            self._window = extra.get("window", [])
            saved = extra["stats"]
            s = self.stats
            s.episodes, s.examples, s.no_examples = saved["episodes"], saved["examples"], saved["no_examples"]
            s.dropped_stale, s.downweighted = saved["dropped_stale"], saved["downweighted"]
            s.rejected_by_process = saved.get("rejected_by_process", 0)
            s.learner_seconds, s.elapsed_before = saved["learner_seconds"], saved["elapsed"]
            s.staleness = Counter({int(k): v for k, v in saved["staleness"].items()})
            s.steps, s.version = self.learner.steps, self.learner.version
            if self.publish_to is not None:
                self.publish_to.swap_weights(self.learner.weights(), self.learner.version)
            self.log.info("resumed", version=s.version, consumed=len(self._consumed))
        return [ep for ep in stored if (ep.task.id, ep.sample) not in self._consumed]
