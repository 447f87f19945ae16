"""The admission layer every API backend shares: what stands between an episode's call
and a remote endpoint, whatever the endpoint's wire format.

A backend subclasses :class:`AdmittedPolicy` and writes one method, :meth:`~AdmittedPolicy.send`:
one HTTP exchange (one request, its ``n`` choices) returning a :class:`Reply` with the
usage *as the server reported it*, and raising :class:`Transient`, :class:`Refused` or
:class:`Malformed` for what went wrong. Everything else is here, the same for every
backend (the OpenAI-compatible one, a plug-in for another API shape):

- **Limits**: the endpoint's process-wide :class:`~runtime.policy.limits.EndpointLimiter`
  (concurrency, requests/min, tokens/min, cost budget), one slot per attempt, held
  neither across backoff sleeps nor across a fan-out's siblings.
- **Retries**: :class:`Transient` and :class:`Malformed` are retried with jittered
  exponential backoff (``Retry-After`` honoured, capped at ``retry_max_wait``);
  :class:`Refused` never is.
- **Deadline**: ``timeout`` is a total deadline per attempt (first byte to last), so a
  server dripping one byte at a time cannot hold a call forever.
- **n fan-out**: ``n > 1`` is one request; a server that refuses ``n`` (its error names
  the parameter) or returns fewer choices is remembered and topped up with single calls
  run at once; the first of those to fail fails the whole with its own error.
- **Usage checks**: negative, non-numeric or absurd token counts (or none, for a model
  with a price) are replaced by an estimate from the text, so a broken server cannot
  undercut the cost budget; the cost is computed here from the price.
- **Error mapping**: every failure leaves as one of the runtime's policy errors
  (:class:`~runtime.core.errors.PolicyUnavailable` after the last retry,
  :class:`~runtime.core.errors.PolicyRequestError`,
  :class:`~runtime.core.errors.PolicyResponseError`,
  :class:`~runtime.core.errors.BudgetExhausted`), which the scheduler records on the
  episode.
- **Secrets**: the API key is registered with :mod:`runtime.core.secrets`, so an error
  body that echoes it is masked before it is stored or logged.
- **Readiness**: with ``wait_ready`` > 0 the first call waits (once, for every
  concurrent first call) for :meth:`~AdmittedPolicy.probe` to pass; a server still not
  ready then fails every call with one message saying so.

The scheduler finds an endpoint's limiter by type (:func:`admitted_limiter`), not by an
attribute's name.
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Self

import anyio
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential

from runtime.core.concurrency import gather
from runtime.core.errors import PolicyRequestError, PolicyResponseError, PolicyUnavailable
from runtime.core.log import get_logger
from runtime.core.secrets import register_secret
from runtime.policy.base import Completion, GenerationRequest, GenerationResult
from runtime.policy.limits import PRICES, EndpointLimiter, EndpointLimits, Price, limiter_for

__all__ = [
    "AdmittedPolicy",
    "Malformed",
    "Refused",
    "Reply",
    "Transient",
    "admitted_limiter",
    "checked_usage",
    "estimate_prompt_tokens",
]

log = get_logger("searchlearn.admission")

_N_PARAMETER = re.compile(r"(?<![A-Za-z0-9_])n(?![A-Za-z0-9_])")
"""The request's ``n`` named in an error message ("n must be 1", "'n' is not supported"),
not any word with the letter n in it ("model does not exist")."""
_MAX_USAGE = 100_000_000
"""Tokens one response may report; more is a broken server."""


class _Failure(Exception):
    """What went wrong, in words (``what``), and the server's own text (``detail``)."""

    def __init__(self, what: str, detail: str = "") -> None:
        super().__init__(f"{what}: {detail}" if detail else what)
        self.what = what
        self.detail = detail

    def after(self, attempts: int) -> str:
        tail = f": {self.detail}" if self.detail else ""
        return f"{self.what} after {attempts} attempts{tail}"


class Transient(_Failure):
    """Worth another attempt: rate-limited, a server error, a dropped connection.
    ``retry_after``: the server's own wait (seconds), where it named one."""

    def __init__(self, what: str, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(what, detail)
        self.retry_after = retry_after


class Refused(_Failure):
    """The request itself is wrong (a 4xx other than 429): never retried."""


class Malformed(_Failure):
    """A successful status whose body is not a completion: retried, then a
    :class:`~runtime.core.errors.PolicyResponseError`."""

    def __init__(self, what: str, detail: str = "") -> None:
        super().__init__(what, detail)


class _Deadline(_Failure):
    """One attempt ran past the request's total deadline."""


@dataclass(slots=True)
class Reply:
    """One exchange's result as the server gave it: the layer checks the usage and
    prices it."""

    completions: list[Completion]
    prompt_tokens: Any = None
    """As reported (None: not reported)."""
    completion_tokens: Any = None
    model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def estimate_prompt_tokens(request: GenerationRequest) -> int:
    """Prompt tokens of ``request`` estimated from its characters (4 a token)."""
    chars = len(request.prompt or "") + sum(len(str(m.get("content") or "")) for m in request.messages or [])
    return (chars + len(request.assistant_prefix)) // 4


def _count(value: Any, priced: bool) -> int | None:
    """A token count a server reported, or None if it is not a plausible one (or is
    missing where the model has a price)."""
    if value is None:
        return None if priced else 0
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    return int(value) if 0 <= value <= _MAX_USAGE else None


def checked_usage(reply: Reply, request: GenerationRequest, *, priced: bool, model: str = "") -> tuple[int, int]:
    """``reply``'s prompt and completion tokens, or an estimate from the text where
    what the server reported is unusable."""
    prompt = _count(reply.prompt_tokens, priced)
    completion = _count(reply.completion_tokens, priced)
    if prompt is not None and completion is not None:
        return prompt, completion
    log.warning(
        "unusable usage in a response; estimating it from the text",
        model=model,
        usage=repr((reply.prompt_tokens, reply.completion_tokens))[:200],
    )
    return estimate_prompt_tokens(request), sum(len(c.text) for c in reply.completions) // 4 + len(reply.completions)


class AdmittedPolicy(ABC):
    """A :class:`~runtime.policy.base.Policy` over a remote endpoint, admitted by the
    shared layer (see the module docstring). Subclasses implement :meth:`send`, and
    :meth:`probe` where the endpoint has a readiness check."""

    fans_out: bool | None = None
    """Whether ``n > 1`` must be sent as single calls (None: learnt from the first
    refusal or short reply; a backend whose API has no ``n`` sets True)."""

    def __init__(
        self,
        model: str,
        *,
        endpoint: str,
        api_key: str = "",
        limits: EndpointLimits | None = None,
        timeout: float = 60.0,
        retry_attempts: int = 6,
        retry_initial: float = 0.5,
        retry_max_wait: float = 30.0,
        price: Price | None = None,
        wait_ready: float = 0.0,
        version: int = 0,
    ) -> None:
        register_secret(api_key)
        self.model = model
        self.endpoint = endpoint
        self.limits = limits or EndpointLimits()
        self.limiter: EndpointLimiter = limiter_for(endpoint, model, self.limits)
        self.timeout = timeout
        self.retry_attempts = retry_attempts
        self.retry_initial = retry_initial
        self.retry_max_wait = retry_max_wait
        self.price = price or PRICES.get(model)
        self.version = version
        self.wait_ready = wait_ready
        self.supports_n: bool | None = None if self.fans_out is None else not self.fans_out
        self._ready: anyio.Lock | None = None
        self._not_ready: str | None = None
        self._checked = wait_ready <= 0

    # -- what a backend writes ------------------------------------------------------

    @abstractmethod
    async def send(self, request: GenerationRequest, n: int, seed_offset: int) -> Reply:
        """One exchange with the endpoint for ``n`` choices (``seed_offset`` is added to
        ``request.seed`` by a fan-out's single calls). Raises :class:`Transient`,
        :class:`Refused` or :class:`Malformed`; anything else is a bug in the backend
        and fails the episode as it is."""

    async def probe(self) -> str | None:
        """Why the endpoint is not ready, or None once it is (default: always ready)."""
        return None

    async def aclose(self) -> None:  # noqa: B027 (optional: a backend without connections keeps it)
        """Release the backend's connections."""

    # -- the layer ------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if not self._checked:
            await self._until_ready()
        if self._not_ready is not None:
            raise PolicyUnavailable(self._not_ready)
        return await self._generate(request)

    async def _generate(self, request: GenerationRequest) -> GenerationResult:
        if self.supports_n is False and request.n > 1:
            return await self._fan_out(request, request.n)
        try:
            result = await self._with_retries(request, request.n)
        except PolicyRequestError as exc:
            if request.n > 1 and self.supports_n is None and _N_PARAMETER.search(str(exc)):
                self.supports_n = False
                log.info("server refuses n > 1; falling back to single calls", model=self.model)
                return await self._fan_out(request, request.n)
            raise
        missing = request.n - len(result.completions)
        if missing > 0:
            if self.supports_n is None:
                log.info("server returned fewer choices than n; topping up with single calls", model=self.model)
            self.supports_n = False
            _merge(result, await self._fan_out(request, missing))
        elif request.n > 1:
            self.supports_n = True
        return result

    async def _fan_out(self, request: GenerationRequest, count: int) -> GenerationResult:
        """``count`` single calls at once; the first to fail fails the whole with its own
        error (the others are cancelled), so an episode stores the real cause."""
        results = await gather(self._with_retries(request, 1, seed_offset=i) for i in range(count))
        merged = GenerationResult(completions=[], model=self.model, policy_version=self.version)
        for r in results:
            _merge(merged, r)
        return merged

    async def _until_ready(self) -> None:
        """Wait once, for at most ``wait_ready`` seconds, for :meth:`probe` to pass;
        concurrent first calls wait for the same check."""
        if self._ready is None:
            self._ready = anyio.Lock()
        async with self._ready:
            if self._checked:
                return
            deadline = time.monotonic() + self.wait_ready
            delay = 0.25
            while problem := await self.probe():
                left = deadline - time.monotonic()
                if left <= 0:
                    self._not_ready = (
                        f"server {self.endpoint} not ready after waiting "
                        f"{self.wait_ready:g} s (policy.wait_ready): {problem}"
                    )
                    log.warning("server not ready", model=self.model, waited_s=self.wait_ready, error=problem)
                    break
                if delay == 0.25:
                    log.info("waiting for the server to be ready", model=self.model, error=problem)
                await anyio.sleep(min(delay, left))
                delay = min(delay * 2, 5.0)
            self._checked = True

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, Transient) and exc.retry_after is not None:
            return min(max(exc.retry_after, 0.0), self.retry_max_wait)
        backoff = wait_random_exponential(multiplier=self.retry_initial, max=self.retry_max_wait)
        return float(backoff(state))

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        error = exc.what if isinstance(exc, _Failure) else type(exc).__name__
        log.info("retrying request", model=self.model, attempt=state.attempt_number, wait_s=round(wait, 3), error=error)

    async def _with_retries(self, request: GenerationRequest, n: int, seed_offset: int = 0) -> GenerationResult:
        estimate = estimate_prompt_tokens(request) + request.max_tokens * n
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retry_attempts),
            wait=self._wait,
            retry=retry_if_exception(lambda e: isinstance(e, Transient | Malformed | _Deadline)),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self.limiter.acquire(estimate)
                    used, cost = 0, 0.0
                    try:
                        with anyio.move_on_after(self.timeout) as deadline:
                            reply = await self.send(request, n, seed_offset)
                        if deadline.cancelled_caught:
                            raise _Deadline(f"no complete response within {self.timeout:g} s")
                        result = self._result(reply, request)
                        used, cost = result.prompt_tokens + result.completion_tokens, result.cost
                    finally:
                        self.limiter.release(estimate, used, cost)
                    return result
        except (Transient, _Deadline) as exc:
            raise PolicyUnavailable(exc.after(self.retry_attempts)) from exc
        except Malformed as exc:
            raise PolicyResponseError(exc.after(self.retry_attempts)) from exc
        except Refused as exc:
            raise PolicyRequestError(str(exc)) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _result(self, reply: Reply, request: GenerationRequest) -> GenerationResult:
        prompt, completion = checked_usage(reply, request, priced=self.price is not None, model=self.model)
        return GenerationResult(
            completions=reply.completions,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost=self.price.cost(prompt, completion) if self.price else 0.0,
            policy_version=self.version,
            model=reply.model or self.model,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def admitted_limiter(obj: object) -> EndpointLimiter | None:
    """The endpoint limiter ``obj`` spends through, where it is an admitted policy."""
    return obj.limiter if isinstance(obj, AdmittedPolicy) else None


def _merge(into: GenerationResult, other: GenerationResult) -> None:
    into.completions.extend(other.completions)
    into.prompt_tokens += other.prompt_tokens
    into.completion_tokens += other.completion_tokens
    into.cost += other.cost
