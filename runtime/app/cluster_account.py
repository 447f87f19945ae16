"""The run's account on a Ray cluster: one budget for every rollout worker.

The driver of :mod:`runtime.app.cluster` starts one :class:`RunAccount` actor when the
run has a run-level budget (``scheduler.budget_usd``, or a strategy's token pool such as
compute_optimal's ``global_token_budget``), seeded with what the store holds of the run.
A worker's runtime reports its ledger through :class:`SharedSpendProxy` and reads the
rest of the run's spend before each admission; a worker's strategy reserves tokens
through :class:`SharedPoolProxy`; the driver reads the total before it hands out work.

Design decisions:
- Ray's own primitive (an actor), no protocol of ours: the calls are ordered per caller
  and the actor's methods have no suspension point, so each runs alone.
- A worker's report is its cumulative ledger, kept as a maximum: a late or repeated
  message cannot lower it, and a replacement worker reports under a key of its own.
- Ray is not imported here: the caller hands it in (only a config with ``cluster:``
  imports Ray).
"""

from __future__ import annotations

from typing import Any

__all__ = ["RunAccount", "SharedPoolProxy", "SharedSpendProxy", "account_actor"]


class RunAccount:
    """The run's spend across workers (made a Ray actor the driver owns): each worker's
    ledger as it last reported it, what the store held when the run started, and the
    strategy's token pool, if it has one. Its methods have no suspension point: one at a
    time, whatever the actor's concurrency."""

    def __init__(self, before: float, pool: Any | None = None) -> None:
        self.before = before
        self.costs: dict[str, float] = {}
        self.pool = pool

    def report(self, worker: str, cost: float) -> float:
        """Take ``worker``'s ledger (cumulative: never lowered by a late message); the run's total."""
        self.costs[worker] = max(cost, self.costs.get(worker, 0.0))
        return self.total()

    def total(self) -> float:
        """The run's spend: stored before the run, plus every worker's reported ledger."""
        return self.before + sum(self.costs.values())

    async def reserve(self, most: int, unit: int) -> int:
        assert self.pool is not None
        granted: int = await self.pool.reserve(most, unit)
        return granted

    async def spend(self, tokens: int) -> int:
        assert self.pool is not None
        total: int = await self.pool.spend(tokens)
        return total


class SharedSpendProxy:
    """A worker runtime's :class:`~runtime.scheduling.scheduler.SharedSpend` over the account."""

    def __init__(self, account: Any, worker: str) -> None:
        self._account = account
        self._worker = worker

    async def sync(self, own: float) -> float:
        return float(await self._account.report.remote(self._worker, own)) - own

    def report(self, own: float) -> None:
        self._account.report.remote(self._worker, own)


class SharedPoolProxy:
    """A worker strategy's token pool: the one in the account."""

    def __init__(self, account: Any) -> None:
        self._account = account

    async def reserve(self, most: int, unit: int) -> int:
        return int(await self._account.reserve.remote(most, unit))

    async def spend(self, tokens: int) -> int:
        return int(await self._account.spend.remote(tokens))


_ACCOUNT: Any = None


def account_actor(ray: Any) -> Any:
    """:class:`RunAccount` as a Ray actor class that reserves no CPU (it must be placed
    even when the workers hold every CPU)."""
    global _ACCOUNT
    if _ACCOUNT is None:
        _ACCOUNT = ray.remote(num_cpus=0, max_restarts=0)(RunAccount)
    return _ACCOUNT
