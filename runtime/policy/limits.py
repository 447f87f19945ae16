"""Per-endpoint admission: concurrency, requests/min, tokens/min and a cost budget.

One :class:`EndpointLimiter` exists per endpoint (base URL + model) in a process and is
shared by every policy object that calls it (:func:`limiter_for`), so two strategies or
two policies on one server never add up to more than the server's limits.

Design decisions:
- Requests/min and tokens/min are token buckets refilled continuously (burst = one
  minute's allowance); waiters queue FIFO behind one lock, so a large request cannot
  starve behind a stream of small ones.
- Tokens are reserved before a call from an estimate (prompt characters / 4 + max
  tokens x n) and settled afterwards against the usage the server reports.
- The cost budget is checked before each call and charged after it from a per-model
  price table (USD per million tokens); once spent, calls raise
  :class:`~runtime.core.errors.BudgetExhausted` and the scheduler stops admitting episodes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio

from runtime.core.errors import BudgetExhausted
from runtime.core.log import get_logger

__all__ = ["PRICES", "EndpointLimiter", "EndpointLimits", "Price", "limiter_for"]

log = get_logger("searchlearn.limits")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1e6


#: List prices (USD / 1M tokens) of common hosted models; override per config.
PRICES: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "o3-mini": Price(1.10, 4.40),
    "o4-mini": Price(1.10, 4.40),
}


@dataclass(frozen=True, slots=True)
class EndpointLimits:
    max_concurrency: int = 64
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    budget_usd: float | None = None
    burst_seconds: float = 60.0
    """Rate buckets hold this many seconds' allowance (60: a full minute may burst)."""


class _Bucket:
    def __init__(self, per_minute: float, burst_seconds: float, kind: str) -> None:
        self.kind = kind
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.level = self.capacity
        self.stamp = time.monotonic()
        self.lock = anyio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    async def take(self, amount: float) -> None:
        amount = min(amount, self.capacity)
        async with self.lock:
            self._refill()
            if self.level < amount:
                log.info("rate limit wait", limit=self.kind, wait_s=round((amount - self.level) / self.rate, 3))
            while self.level < amount:
                await anyio.sleep((amount - self.level) / self.rate)
                self._refill()
            self.level -= amount

    def give_back(self, amount: float) -> None:
        self._refill()
        self.level = min(self.capacity, self.level + amount)


class EndpointLimiter:
    """Shared limits of one endpoint. Use ``async with limiter.slot(estimate)``."""

    def __init__(self, limits: EndpointLimits) -> None:
        self.limits = limits
        self._concurrency = anyio.Semaphore(limits.max_concurrency)
        self._requests = (
            _Bucket(limits.requests_per_minute, limits.burst_seconds, "requests_per_minute")
            if limits.requests_per_minute
            else None
        )
        self._tokens = (
            _Bucket(limits.tokens_per_minute, limits.burst_seconds, "tokens_per_minute")
            if limits.tokens_per_minute
            else None
        )
        self.spent_usd = 0.0
        self.in_flight = 0

    @property
    def exhausted(self) -> str | None:
        """Why no more calls are admitted, or None."""
        budget = self.limits.budget_usd
        if budget is not None and self.spent_usd >= budget:
            return f"cost budget spent: ${self.spent_usd:.4f} of ${budget:.4f}"
        return None

    async def acquire(self, estimated_tokens: int) -> None:
        reason = self.exhausted
        if reason:
            raise BudgetExhausted(reason)
        await self._concurrency.acquire()
        try:
            if self._requests is not None:
                await self._requests.take(1)
            if self._tokens is not None:
                await self._tokens.take(estimated_tokens)
        except BaseException:
            self._concurrency.release()
            raise
        self.in_flight += 1

    def release(self, estimated_tokens: int, used_tokens: int, cost: float) -> None:
        self.in_flight -= 1
        self._concurrency.release()
        self.spent_usd += cost
        if self._tokens is not None and used_tokens < estimated_tokens:
            self._tokens.give_back(estimated_tokens - used_tokens)

    def statistics(self) -> dict[str, float | int | None]:
        return {
            "in_flight": self.in_flight,
            "max_concurrency": self.limits.max_concurrency,
            "spent_usd": self.spent_usd,
            "budget_usd": self.limits.budget_usd,
            "requests_available": self._requests.level if self._requests else None,
            "tokens_available": self._tokens.level if self._tokens else None,
        }


_LIMITERS: dict[tuple[str, str, EndpointLimits], EndpointLimiter] = {}


def limiter_for(endpoint: str, model: str, limits: EndpointLimits) -> EndpointLimiter:
    """The process-wide limiter of ``(endpoint, model, limits)``, created on first use.

    Every policy configured with the same endpoint, model and limits shares it.
    """
    key = (endpoint, model, limits)
    if key not in _LIMITERS:
        _LIMITERS[key] = EndpointLimiter(limits)
    return _LIMITERS[key]
