"""Rollout workers on Ray: the run's episodes on N actors, the store and learner here.

::

    driver (this process)                                   Ray actors
    ─────────────────────                                   ──────────
    tasks ─► queue ─► feeder per worker ─► run(chunk) ─────► RolloutWorker: Runtime over
                 ▲     (≤ in_flight out)                      its own policy copy
                 │                          ◄── episode batches (streaming generator)
       reissue ──┘ (a dead worker's unreturned tasks)
    writer: store (the single record, exactly once) ─► stream ─► consumer / learner
    learner ─► swap_weights ─► ray.put once ─► every worker swaps between decode steps

Design decisions:
- The driver's :class:`ClusterRuntime` has the surface of
  :class:`~runtime.scheduling.scheduler.Runtime` (``async with``, ``stream``, ``stats``,
  ``store``, ``shutdown``, ``policy``), so the CLI and the online loop run on it
  unchanged; its ``policy`` is a :class:`ClusterPolicy` that publishes weights to the
  workers instead of generating.
- Backpressure holds across the cluster: each worker holds at most ``in_flight`` tasks
  that have not come back; the task queue is bounded; a slow store or learner fills the
  consumer's buffer and the writer stops taking batches, so the feeders stop handing out
  work.
- Exactly once: the store stays the single record. A task handed to a worker is
  pending until its episode is committed here; when a worker dies (its process killed,
  its node gone) every task it had not returned goes back into the queue for another
  worker, and a replacement starts with the latest weights. An episode that arrives for
  a key already stored is dropped and counted (``duplicates``), never stored twice.
- A new policy version is put into the object store once and every worker gets the
  reference; each episode still carries the versions it saw, so the loop's staleness
  bound applies as in one process.
- Run-level budgets are the run's, not each worker's. When the run has one
  (``scheduler.budget_usd``, or a strategy's own ``pool`` such as compute_optimal's
  ``global_token_budget``), the driver starts one account actor
  (:mod:`runtime.app.cluster_account`), seeded with what the store holds of the run.
  Each worker's runtime reports its ledger to it (in flight included) and reads the
  rest of the run's spend before every admission
  (:class:`~runtime.scheduling.scheduler.SharedSpend`); the driver reads the total
  before it hands out each chunk, and stops there. A strategy's pool lives in the same
  actor and every worker's copy of the strategy reserves from it (``use_pool``). The
  actor reserves no CPU (it must be placed even when the workers hold every CPU).
- Ray is imported here only, and this module only when a config has ``cluster:``.
- A local cluster that cannot hold its workers is refused before Ray starts, in one
  line naming ``cluster.workers`` / ``cluster.cpus_per_worker`` and the CPUs there are:
  Ray would otherwise wait forever for the resources of the actors it cannot place,
  deaf to Ctrl-C (SIGTERM ends it in a C++ stack dump). A joined cluster (``address``)
  may still grow (autoscaling): a shortfall there is a warning.
- GPUs: each worker actor reserves ``cluster.gpus_per_worker`` (``num_gpus``; a fraction
  shares one GPU). Ray shows an actor the GPUs it reserved (CUDA_VISIBLE_DEVICES), so the
  worker's engine finds its own as ``cuda`` (policy.device auto) and a vLLM engine
  starts on it. Ray 2.60 leaves an actor that reserved none every GPU of its node (it
  no longer empties CUDA_VISIBLE_DEVICES at zero), so such a worker is started with it
  empty: its engine runs on the CPU rather than on a GPU Ray does not account for.
  ``ready()`` reports the GPU ids Ray gave, CUDA_VISIBLE_DEVICES and the engine's
  device. What Ray could never place is refused before it starts, naming the field: a
  local cluster with fewer GPUs than the workers reserve, and a vLLM engine whose
  gpu_memory_utilization exceeds its share of a shared GPU. A version published from a
  GPU learner is copied to host memory once, for the object store.
- A local cluster listens on loopback only. ``ray.init(_node_ip_address="127.0.0.1")``
  alone does not do it: Ray turns a loopback node address into the host's own address
  (``resolve_ip_for_localhost``), and its GCS, raylet, object manager and workers then
  listen on every interface (``::``) and its runtime-env agent on the host's address.
  Ray keeps loopback only where it believes clusters are off (its
  ``ENABLE_RAY_CLUSTER`` constant, which ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` sets
  at import); :func:`_loopback_only` turns it off for the length of ``ray.init`` (a
  private name: if a Ray release drops it, nothing is patched and
  ``tests/test_hardening_inputs.py`` says so). Measured on Ray 2.60: every listening
  socket of the driver's Ray processes is then on 127.0.0.1. The dashboard is off
  (``include_dashboard=False``). What cannot be bound, because it is no network socket:
  the raylet's and object store's Unix sockets and the object store's shared memory,
  under the session directory (``/tmp/ray``) and ``/dev/shm``, reachable by whoever may
  read them on this machine; Ray's token authentication guards the ports. Not checked
  here (not installed): with ``ray[default]`` the dashboard agent and its metrics
  export port bind the node address too, which is then loopback.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from contextlib import AsyncExitStack, contextmanager
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel

from runtime.app.cluster_account import SharedPoolProxy, SharedSpendProxy, account_actor
from runtime.app.cluster_devices import check_gpus, on_host, placement
from runtime.app.config import ClusterConfig, RunConfig
from runtime.app.parts import build_policy, build_strategy, build_verifiers, torch_consumers
from runtime.core.concurrency import send_all
from runtime.core.errors import ConfigError
from runtime.core.log import get_logger
from runtime.core.threads import available_cpus, thread_share
from runtime.core.types import Episode, Stop, Task, episode_from_json, episode_to_json
from runtime.policy.backends import LocalBackend
from runtime.policy.base import GenerationRequest, GenerationResult
from runtime.scheduling.scheduler import RunStats, Runtime, redact_config, watch_signals
from runtime.scheduling.store import STALE_AFTER, EpisodeStore
from runtime.scheduling.tasks import iterate_tasks

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["ClusterPolicy", "ClusterRuntime", "RolloutWorker", "build_cluster_runtime"]

log = get_logger("searchlearn.cluster")

_BATCH = 256  # episodes a worker sends back in one message, at most
Pair = tuple[Task, int]
Returned = list[tuple[Episode, str]]  # episodes back from a worker, each with its JSON


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError('cluster: Ray is not installed; pip install "searchlearn[ray]"') from None
    return ray


def _running_ray() -> Any | None:
    """Ray, if this process has already started or joined an instance (then a local
    cluster joins it); None otherwise, without importing Ray."""
    ray = sys.modules.get("ray")
    return ray if ray is not None and ray.is_initialized() else None


def _check_local_cpus(cluster: ClusterConfig) -> None:
    """Refuse a local cluster whose workers reserve more CPUs than it has (see the module
    doc): ConfigError naming the fields and the CPUs there are."""
    needed = cluster.workers * cluster.cpus_per_worker
    running = _running_ray()
    if running is not None:
        have, where = float(running.cluster_resources().get("CPU", 0)), "the Ray instance this process runs"
    elif cluster.local_cpus is not None:
        have, where = float(cluster.local_cpus), "cluster.local_cpus"
    else:
        have, where = float(available_cpus()), "the cores this process may use on this machine"
    if needed > have + 1e-6:
        raise ConfigError(
            f"cluster.workers: {cluster.workers} workers x cluster.cpus_per_worker {cluster.cpus_per_worker:g} "
            f"need {needed:g} CPUs, but the local Ray cluster has {have:g} ({where}); lower cluster.workers or "
            "cluster.cpus_per_worker (0 for workers that only wait on a server), or raise cluster.local_cpus"
        )


@contextmanager
def _loopback_only() -> Iterator[None]:
    """Keep Ray's node address 127.0.0.1 while ``ray.init`` starts a local cluster (see
    the module doc); put Ray's setting back afterwards, so that joining a real cluster
    later from this process resolves addresses as usual."""
    from ray._private import ray_constants

    if not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        yield
        return
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


# -- the worker -------------------------------------------------------------------------


class RolloutWorker:
    """One rollout worker: a Runtime over its own copy of the run's policy, no store.

    Made a Ray actor by :func:`_actor_class`; plain Python otherwise (the tests of the
    episode path run it in process). ``account``: the run's account actor
    (:mod:`runtime.app.cluster_account`), through which the runtime shares the run's
    ``budget_usd`` and, with ``shared_pool``, the strategy reserves from the run's pool."""

    def __init__(
        self,
        config: RunConfig,
        index: int,
        threads: int,
        weights: tuple[Any, int] | None = None,
        account: Any | None = None,
        shared_pool: bool = False,
    ) -> None:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        cluster = config.cluster
        assert cluster is not None
        if isinstance(config.policy, LocalBackend):
            policy_config = config.policy.model_copy(update={"threads": config.policy.threads or threads})
            config = config.model_copy(update={"policy": policy_config})
        self.index = index
        self.policy = build_policy(config)
        concurrency = cluster.concurrency or config.scheduler.concurrency
        settings = config.scheduler.model_copy(update={"concurrency": concurrency})
        strategy = build_strategy(config)
        if account is not None and shared_pool:
            strategy.use_pool(SharedPoolProxy(account))  # type: ignore[attr-defined]
        self.runtime = Runtime(
            self.policy,
            strategy,
            verifiers=build_verifiers(config, self.policy),
            sampling=config.sampling,
            settings=settings,
            store=None,
            run_id=config.run_id,
        )
        if account is not None and settings.budget_usd is not None:
            self.runtime.shared_spend = SharedSpendProxy(account, f"{index}-{uuid.uuid4().hex[:12]}")
        self._pending_weights = weights
        self._batch_wait = cluster.batch_wait
        self._stop: Any = None  # set by ready(): ends the task the runtime lives in

    async def ready(self) -> dict[str, Any]:
        """Enter the runtime (in a task that lives as long as the worker); the worker's pid."""
        import asyncio

        if self._stop is None:
            started = asyncio.Event()
            self._stop = asyncio.Event()

            async def serve() -> None:
                async with self.runtime:
                    started.set()
                    await self._stop.wait()

            self._serving = asyncio.ensure_future(serve())
            await started.wait()
            if self._pending_weights is not None:
                state, version = self._pending_weights
                self._pending_weights = None
                self.swap_weights(state, version)
        return {
            "index": self.index,
            "pid": os.getpid(),
            "version": getattr(self.policy, "version", None),
            **placement(self.policy),
        }

    async def run(self, items: list[tuple[dict[str, Any], int]]) -> AsyncIterator[list[str]]:
        """Run (task, sample) pairs; yield finished episodes, as JSON, in batches as they finish."""
        await self.ready()
        pairs = [(Task(**task), sample) for task, sample in items]
        send, receive = anyio.create_memory_object_stream[Episode](len(pairs) or 1)

        async def collect() -> None:
            async with send:
                async for episode in self.runtime.stream_pairs(pairs):
                    await send.send(episode)

        async with anyio.create_task_group() as tg:
            tg.start_soon(collect)
            async with receive:
                async for first in receive:
                    # One message per batch, not per episode (a Ray message costs the
                    # driver more than storing the episode): wait up to `batch_wait`
                    # for more to finish before sending.
                    batch = [episode_to_json(first)]
                    with anyio.move_on_after(self._batch_wait):
                        while len(batch) < _BATCH:
                            try:
                                batch.append(episode_to_json(await receive.receive()))
                            except anyio.EndOfStream:
                                break
                    yield batch

    def swap_weights(self, state_dict: dict[str, Any], version: int) -> int:
        """Take a new policy version; the engine swaps it in between decode steps."""
        swap = getattr(self.policy, "swap_weights", None)
        if swap is None:
            kind = type(self.policy).__name__
            raise ConfigError(f"cluster: worker {self.index}'s policy ({kind}) cannot take weights")
        swap(state_dict, version)
        return version

    def shutdown(self, reason: str, abandon: bool) -> None:
        self.runtime.shutdown(reason, abandon=abandon)

    def statistics(self) -> dict[str, Any]:
        version = getattr(self.policy, "version", None)
        return {"index": self.index, "pid": os.getpid(), "policy_version": version, **self.runtime.statistics()}

    async def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
            await self._serving
        await self.policy.aclose()


_ACTOR: Any = None


def _actor_class() -> Any:
    global _ACTOR
    if _ACTOR is None:
        ray = _ray()
        _ACTOR = ray.remote(max_restarts=0, max_task_retries=0, max_concurrency=1000)(RolloutWorker)
    return _ACTOR


# -- the driver -------------------------------------------------------------------------


class ClusterPolicy:
    """The driver's face of the workers' policies: publishing a version sends it to all.

    It never generates (the workers do); the online loop publishes to it as it would to
    a local engine."""

    name = "cluster"

    def __init__(self, cluster: ClusterRuntime) -> None:
        self._cluster = cluster
        self.version = 0
        self.latest: tuple[Any, int] | None = None
        self.publish_seconds: list[float] = []
        """Seconds each version took to put into the object store and send to the workers."""

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        raise NotImplementedError("the cluster's policies run on its workers; the driver does not generate")

    def swap_weights(self, state_dict: dict[str, Any], version: int) -> None:
        started = time.perf_counter()
        ray = _ray()
        ref = ray.put(on_host(state_dict))
        self.latest = (ref, version)
        self.version = version
        for worker in self._cluster.live_workers():
            worker.swap_weights.remote(ref, version)
        self.publish_seconds.append(time.perf_counter() - started)

    async def load_weights(self, state_dict: dict[str, Any], version: int) -> None:
        self.swap_weights(state_dict, version)

    async def aclose(self) -> None:
        await self._cluster.close_workers()


class ClusterRuntime:
    """Runs a config's episodes on Ray rollout workers; see the module docstring."""

    def __init__(self, config: RunConfig, *, handle_signals: bool = False) -> None:
        if config.cluster is None:
            raise ConfigError("cluster: this config has no cluster section")
        if isinstance(config.policy, LocalBackend):  # checked here: the workers would only fail one by one
            from runtime.policy.checkpoints import resolve_checkpoint

            try:
                resolve_checkpoint(config.policy.path)
            except FileNotFoundError as exc:
                raise ConfigError(f"policy.path: {exc}") from None
        if config.cluster.address is None:
            _check_local_cpus(config.cluster)
        check_gpus(config)
        self.config = config
        self.cluster: ClusterConfig = config.cluster
        self.run_id = config.run_id
        self.settings = config.scheduler.model_copy()
        self.verifiers = build_verifiers(config)
        self.store = EpisodeStore(config.store.path)
        self.handle_signals = handle_signals
        self.stats = RunStats()
        self.policy = ClusterPolicy(self)
        self.stop: Stop | None = None
        self.stop_reason: str | None = None
        self.duplicates = 0
        self.reissued = 0
        self.replaced = 0
        self.worker_deaths: list[str] = []
        self.started_workers: list[dict[str, Any]] = []
        """What each first worker said once started (:meth:`RolloutWorker.ready`): its pid,
        the GPU ids Ray gave it and its engine's device."""
        concurrency = self.cluster.concurrency or config.scheduler.concurrency
        self.in_flight = self.cluster.in_flight or 2 * concurrency
        self._workers: list[Any | None] = []
        self._outstanding: list[int] = []
        self._room: list[anyio.Event] = []
        self._pending = 0
        self._settled = anyio.Event()
        self._stored: set[tuple[str, int]] = set()
        self._cost = 0.0  # of the episodes stored in this session
        self._spent_before = 0.0  # of the episodes the store held when the run started
        self._run_total = 0.0  # the account's total as last read: in-flight spend included
        self._account: Any = None
        self._shared_pool = False
        self._started_ray = False
        self._stack = AsyncExitStack()
        self._tg: anyio.abc.TaskGroup | None = None
        self._calls: anyio.CancelScope | None = None
        self._queue_send: MemoryObjectSendStream[Pair] | None = None
        self.log = log.bind(run_id=self.run_id)

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> ClusterRuntime:
        await anyio.to_thread.run_sync(self.store.acquire_run, self.run_id)
        try:
            self.store.register_run(self.run_id, redact_config(self.config.model_dump(mode="json")))
            summary = self.store.summary(self.run_id)
            self._spent_before = float(summary["cost"] or 0.0)
            self._start_ray()
            self._open_account(summary)
            self._workers = [self._new_worker(i) for i in range(self.cluster.workers)]
            self._outstanding = [0] * len(self._workers)
            self._room = [anyio.Event() for _ in self._workers]
            ray = _ray()
            try:
                ready = [w.ready.remote() for w in self._workers if w is not None]
                self.started_workers = await anyio.to_thread.run_sync(ray.get, ready)
            except ray.exceptions.RayError as exc:
                raise ConfigError(f"cluster: a rollout worker failed to start: {_cause(exc)}") from None
        except BaseException:
            await self.close_workers()
            self.store.release_run(self.run_id)
            self.store.close()
            raise
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        self._tg.start_soon(self._heartbeat)
        if self.handle_signals:
            self._tg.start_soon(self._watch_signals)
        gpus = sorted({str(g) for w in self.started_workers for g in w.get("gpu_ids", [])})
        self.log.info("cluster started", workers=self.cluster.workers, in_flight=self.in_flight, gpus=gpus)
        self.stats = RunStats()  # the rates count from here, not from Ray's start-up
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()  # only the heartbeat and the signal watcher can still run
        try:
            await self._stack.aclose()
        finally:
            self._tg = None
            try:
                await self.close_workers()
            finally:
                self.store.release_run(self.run_id)
                self.store.close()
                self.log.info(
                    "run ended",
                    episodes=self.stats.finished,
                    failed=self.stats.failed,
                    reissued=self.reissued,
                    replaced=self.replaced,
                    duplicates=self.duplicates,
                    stop_reason=self.stop_reason,
                )

    def _start_ray(self) -> None:
        ray = _ray()
        if ray.is_initialized():
            return
        if self.cluster.address is None:
            with _loopback_only():
                ray.init(
                    num_cpus=self.cluster.local_cpus or available_cpus(),
                    include_dashboard=False,
                    _node_ip_address="127.0.0.1",
                    logging_level=logging.WARNING,
                    log_to_driver=False,
                    configure_logging=False,
                )
        else:
            ray.init(address=self.cluster.address, logging_level=logging.WARNING, log_to_driver=False)
            have = float(ray.cluster_resources().get("CPU", 0))
            needed = self.cluster.workers * self.cluster.cpus_per_worker
            if needed > have + 1e-6:
                self.log.warning(
                    "the cluster has fewer CPUs than the workers reserve; they wait for it to grow",
                    address=self.cluster.address,
                    cpus=have,
                    needed=needed,
                    fields="cluster.workers x cluster.cpus_per_worker",
                )
        self._started_ray = True

    def _open_account(self, summary: Any) -> None:
        """Start the run's account (:mod:`runtime.app.cluster_account`) where the run has
        a run-level budget: the scheduler's ``budget_usd``, or a strategy's token pool
        (resumed from ``summary``, the stored run's totals)."""
        strategy = build_strategy(self.config)
        resume_run = getattr(strategy, "resume_run", None)
        if resume_run is not None:
            resume_run(summary)
        pool = getattr(strategy, "pool", None)
        self._shared_pool = pool is not None and hasattr(strategy, "use_pool")
        if self._shared_pool or self.settings.budget_usd is not None:
            self._account = account_actor(_ray()).remote(self._spent_before, pool if self._shared_pool else None)

    def _threads(self) -> int:
        """Torch threads of each worker's engine: a share of this machine's cores beside
        the driver's own consumers when the cluster is local, else the worker's CPUs."""
        if self.cluster.address is not None:
            return max(1, int(self.cluster.cpus_per_worker))
        return thread_share(torch_consumers(self.config))

    def worker_options(self) -> dict[str, Any]:
        """The Ray options every worker actor starts with: its CPUs and GPUs, no name, a
        passive OpenMP. A worker that reserves no GPU sees none (CUDA_VISIBLE_DEVICES
        empty): Ray 2.60 leaves such an actor the driver's GPUs, which its engine would
        then use unaccounted (policy.device auto)."""
        env = {"OMP_WAIT_POLICY": "PASSIVE"}
        if self.cluster.gpus_per_worker <= 0:
            env["CUDA_VISIBLE_DEVICES"] = ""
        return {
            "num_cpus": self.cluster.cpus_per_worker,
            "num_gpus": self.cluster.gpus_per_worker,
            "name": None,
            "runtime_env": {"env_vars": env},
        }

    def _new_worker(self, index: int) -> Any:
        actor = _actor_class().options(**self.worker_options())
        return actor.remote(self.config, index, self._threads(), self.policy.latest, self._account, self._shared_pool)

    def live_workers(self) -> list[Any]:
        return [w for w in self._workers if w is not None]

    async def close_workers(self) -> None:
        ray = _ray()
        workers, self._workers = self.live_workers(), [None] * len(self._workers)
        if workers:
            refs = [w.close.remote() for w in workers]
            with anyio.move_on_after(10):
                await anyio.to_thread.run_sync(lambda: ray.wait(refs, num_returns=len(refs), timeout=10))
            for w in workers:
                ray.kill(w)
        if self._account is not None:
            ray.kill(self._account)
            self._account = None
        if self._started_ray:
            self._started_ray = False
            await anyio.to_thread.run_sync(ray.shutdown)

    async def _heartbeat(self) -> None:
        while True:
            await anyio.sleep(STALE_AFTER / 4)
            await anyio.to_thread.run_sync(self.store.heartbeat, self.run_id)

    async def _watch_signals(self) -> None:
        await watch_signals(self.shutdown)

    def statistics(self) -> dict[str, Any]:
        return {
            "in_flight": sum(self._outstanding),
            "workers": len(self.live_workers()),
            "reissued": self.reissued,
            "replaced": self.replaced,
            "duplicates": self.duplicates,
            "stopping": self.stop_reason is not None,
            **self.stats.as_dict(),
        }

    # -- shutdown -----------------------------------------------------------------------

    def shutdown(self, reason: str | Stop = "shutdown requested", abandon: bool | None = None) -> None:
        """Stop handing out tasks; let what the workers hold finish (within
        ``drain_timeout``) or abandon it (it runs again on resume). ``reason``: a
        :class:`Stop`, or text (a stop of kind ``requested``)."""
        stop = reason if isinstance(reason, Stop) else Stop("requested", reason)
        if self.stop is None:
            self.stop, self.stop_reason = stop, stop.reason
            self.log.info("stopping admission", reason=stop.reason, kind=stop.kind)
        if self._queue_send is not None:
            self._queue_send.close()
        for event in self._room:
            event.set()
        self._settle()
        if abandon is None:
            abandon = self.settings.on_shutdown == "abandon"
        for worker in self.live_workers():
            worker.shutdown.remote(reason, abandon)
        if abandon:
            if self._calls is not None:
                self._calls.cancel()
        elif self._tg is not None:
            self._tg.start_soon(self._drain_deadline)

    async def _drain_deadline(self) -> None:
        await anyio.sleep(self.settings.drain_timeout)
        if self._calls is not None:
            self._calls.cancel()

    def _settle(self) -> None:
        if self._pending <= 0 or self.stop_reason is not None:
            self._settled.set()

    def exhausted(self) -> str | None:
        """Why no more work may be handed out for spending: the run's budget, counting the
        stored episodes and what the workers have spent, in flight included (as the
        account last said; never less than what this session stored)."""
        budget = self.settings.budget_usd
        spent = max(self._spent_before + self._cost, self._run_total)
        if budget is not None and spent >= budget:
            return f"run budget spent: ${spent:.4f} of ${budget:.4f}"
        return None

    async def _read_account(self) -> None:
        """The run's spend, in flight included, from the account (when it counts a budget)."""
        if self._account is None or self.settings.budget_usd is None:
            return
        try:
            self._run_total = float(await self._account.total.remote())
        except _ray().exceptions.RayError as exc:  # the committed spend still counts
            self.log.warning("the run's account did not answer", error=_cause(exc))

    # -- running ------------------------------------------------------------------------

    async def run(self, tasks: Iterable[Task] | AsyncIterable[Task]) -> RunStats:
        async for _ in self.stream(tasks):
            pass
        return self.stats

    async def stream(self, tasks: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Episode]:
        """Finished episodes, in the order they come back, each committed to the store."""
        if self._tg is None:
            raise RuntimeError("use the ClusterRuntime as `async with` before streaming")
        done = self.store.done_keys(self.run_id, include_failed=not self.settings.retry_failed)
        self._stored = set(done)
        queue_send, queue_receive = anyio.create_memory_object_stream[Pair](max(1, self.in_flight))
        to_store, from_workers = anyio.create_memory_object_stream[Returned](len(self._workers) * 4)
        out_send, out_receive = anyio.create_memory_object_stream[Episode](self.settings.buffer)
        self._queue_send = queue_send
        self._settled = anyio.Event()
        self._pending = 0

        async def run_all() -> None:
            async with out_send, anyio.create_task_group() as tg:
                tg.start_soon(self._write, from_workers, out_send)
                with anyio.CancelScope() as calls:
                    self._calls = calls
                    async with to_store, anyio.create_task_group() as feeders:
                        feeders.start_soon(self._pump, tasks, done, queue_send)
                        for slot in range(len(self._workers)):
                            feeders.start_soon(self._feed, slot, queue_receive.clone(), to_store.clone(), feeders)
                        queue_receive.close()
                self._calls = None

        self._tg.start_soon(run_all)
        async with out_receive:
            async for episode in out_receive:
                yield episode

    async def _pump(self, tasks: Any, done: set[tuple[str, int]], queue: MemoryObjectSendStream[Pair]) -> None:
        """Task pairs into the queue, skipping what is stored; closes it once every pair
        handed out has come back (a dead worker's pairs come back through it)."""
        samples = self.settings.samples_per_task
        try:
            async with queue:
                async for task in iterate_tasks(tasks):
                    for sample in range(samples):
                        if (task.id, sample) in done:
                            self.stats.skipped += 1
                            continue
                        if reason := self.exhausted():
                            self.shutdown(Stop("budget", reason), abandon=False)
                        if self.stop_reason is not None:
                            return
                        self._pending += 1
                        try:  # without a checkpoint per pair: the queue fills in one go
                            queue.send_nowait((task, sample))
                        except anyio.WouldBlock:
                            await queue.send((task, sample))
                self._settle()
                await self._settled.wait()
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return

    async def _feed(
        self,
        slot: int,
        queue: MemoryObjectReceiveStream[Pair],
        to_store: MemoryObjectSendStream[Returned],
        tg: anyio.abc.TaskGroup,
    ) -> None:
        """Hand one worker chunks of pairs while it holds fewer than ``in_flight``."""
        chunk = self.cluster.chunk
        async with queue, to_store:
            while self.stop_reason is None and self._workers[slot] is not None:
                room = self.in_flight - self._outstanding[slot]
                # Wait for room for a whole chunk: refilling every returned episode at once
                # would send chunks of a few tasks, a Ray call each.
                if room < min(chunk, self.in_flight):
                    self._room[slot] = anyio.Event()
                    await self._room[slot].wait()
                    continue
                try:
                    try:
                        batch = [queue.receive_nowait()]
                    except anyio.WouldBlock:
                        batch = [await queue.receive()]
                        await anyio.lowlevel.checkpoint()  # let the pump fill the chunk
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    return
                while len(batch) < min(chunk, room):
                    try:
                        batch.append(queue.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                        break
                await self._read_account()
                if self.stop_reason is None and (reason := self.exhausted()):
                    self.shutdown(Stop("budget", reason), abandon=False)
                if self.stop_reason is not None:
                    return  # taken, not handed out: not stored, runs again on resume
                self._outstanding[slot] += len(batch)
                self.stats.admitted += len(batch)
                tg.start_soon(self._call, slot, batch, to_store.clone())

    async def _call(self, slot: int, batch: list[Pair], to_store: MemoryObjectSendStream[Returned]) -> None:
        ray = _ray()
        worker = self._workers[slot]
        left = {(task.id, sample): (task, sample) for task, sample in batch}
        try:
            async with to_store:
                if worker is None:
                    raise _WorkerGone(f"worker {slot} is gone")
                items = [(_task_dict(task), sample) for task, sample in batch]
                generator = worker.run.options(num_returns="streaming").remote(items)
                async for ref in generator:
                    texts = await ref
                    episodes = [(episode_from_json(text), text) for text in texts]
                    for episode, _ in episodes:
                        left.pop((episode.task.id, episode.sample), None)
                    self._returned(slot, len(episodes))
                    await to_store.send(episodes)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, _WorkerGone) as exc:
            if left:
                await self._reissue(slot, worker, list(left.values()), exc)
            left = {}
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the writer stopped (the consumer closed the stream): `left` is settled below
        finally:
            if left:  # cancelled (abandoned) or ended early: never stored, runs on resume
                self._returned(slot, len(left))
                self._pending -= len(left)
                self._settle()

    def _returned(self, slot: int, count: int) -> None:
        self._outstanding[slot] -= count
        self._room[slot].set()

    async def _reissue(self, slot: int, worker: Any, pairs: list[Pair], exc: BaseException) -> None:
        """Put a dead worker's unreturned pairs back into the queue; replace the worker."""
        if self._workers[slot] is worker and worker is not None:
            self.worker_deaths.append(f"worker {slot}: {type(exc).__name__}")
            self.log.warning("worker died", slot=slot, error=type(exc).__name__, unfinished=len(pairs))
            if self.cluster.replace_dead and self.replaced < self.cluster.max_replacements and self.stop_reason is None:
                self.replaced += 1
                self._workers[slot] = self._new_worker(slot)
            else:
                self._workers[slot] = None
                self._room[slot].set()
        self._returned(slot, len(pairs))
        if not self.live_workers():
            self._pending -= len(pairs)
            self.shutdown(Stop("failures", f"every rollout worker died (last: {type(exc).__name__})"), abandon=True)
            return
        if self.stop_reason is not None or self._queue_send is None:
            self._pending -= len(pairs)
            self._settle()
            return
        self.reissued += len(pairs)
        for pair in pairs:
            try:
                await self._queue_send.send(pair)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._pending -= 1
                self._settle()

    async def _write(self, from_workers: MemoryObjectReceiveStream[Returned], out: Any) -> None:
        """Commit episode batches (dropping any already stored), then hand them on."""
        async with from_workers:
            async for first in from_workers:
                batch = list(first)
                while len(batch) < self.settings.store_batch:
                    try:
                        batch.extend(from_workers.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                fresh, texts = [], []
                for episode, text in batch:
                    key = (episode.task.id, episode.sample)
                    if key in self._stored:
                        self.duplicates += 1
                        continue
                    self._stored.add(key)
                    fresh.append(episode)
                    texts.append(text)  # stored as the worker encoded it: not encoded twice
                if fresh:
                    retry = self.settings.retry_failed
                    await anyio.to_thread.run_sync(self.store.write_many, fresh, retry, texts)
                for episode in fresh:
                    self.stats.record(episode)
                    self._cost += episode.usage.cost
                self._pending -= len(fresh)  # a duplicate's pair was settled when first stored
                self._settle()
                try:
                    await send_all(out, fresh)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    # The consumer stopped listening (a learner whose budget is spent): stop
                    # the run, as Runtime does, rather than fail it. What was stored stays.
                    self.shutdown("the consumer closed the stream", abandon=True)
                    return


class _WorkerGone(Exception):
    pass


def _cause(exc: BaseException) -> str:
    """The worker's own error in one line (Ray's message is its whole traceback)."""
    cause = getattr(exc, "cause", None) or getattr(exc, "error", None)
    text = str(cause if isinstance(cause, BaseException) else exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else type(exc).__name__


def _task_dict(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "prompt": task.prompt,
        "messages": task.messages,
        "answer": task.answer,
        "metadata": task.metadata,
    }


def build_cluster_runtime(config: RunConfig, *, handle_signals: bool = False) -> ClusterRuntime:
    _ray()  # a missing extra is a config error before anything starts
    return ClusterRuntime(config, handle_signals=handle_signals)
