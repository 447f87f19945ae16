"""OpenAI-compatible backend: OpenAI, vLLM, SGLang, ``transformers serve``, llama.cpp.

Built on the official ``openai`` async client with its own retries switched off:
retries are ours (tenacity), so they share the endpoint's rate limiter and budget.

Design decisions:
- Retry 429 (honouring ``Retry-After``, capped), 5xx, connection errors, timeouts and
  unreadable bodies with jittered exponential backoff; never other 4xx. The limiter
  slot is held per attempt, not across backoff sleeps.
- ``n > 1``: one request with ``n``; a server that refuses ``n`` (400) or silently
  returns fewer choices (``transformers serve``, llama.cpp) is remembered and topped
  up with single calls, run concurrently.
- Continuing an episode (``assistant_prefix``): completion mode appends it to the
  prompt; chat mode sends it as a final assistant message, with
  ``continue_final_message`` on servers that support it (vLLM, SGLang).
- ``server`` names known quirks: ``transformers`` samples only through a
  ``generation_config`` extra body; ``vllm`` returns token ids on request.
- The HTTP connection pool is sized to the endpoint's configured concurrency.
- ``timeout`` is a total deadline per attempt (connect to last byte), not httpx's
  per-read timeout, which a server sending a byte at a time renews forever.
- A response body is read up to ``max_response_bytes`` (32 MiB); a larger one fails
  the attempt, so a server cannot exhaust the process's memory.
- Reported usage is checked: negative, non-numeric or absurd token counts are replaced
  by an estimate from the text, so a broken server cannot undercut the cost budget.
- The API key is registered with :mod:`runtime.core.secrets`, so an error body that
  echoes it is masked before it is stored or logged.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import httpx2
import openai
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential

from runtime.core.errors import PolicyRequestError, PolicyResponseError, PolicyUnavailable
from runtime.core.secrets import register_secret
from runtime.policy.base import Completion, GenerationRequest, GenerationResult, Mode, Server
from runtime.policy.limits import PRICES, EndpointLimits, Price, limiter_for

__all__ = ["OpenAIPolicy", "render_prompt"]

log = structlog.get_logger("searchlearn.openai")

_CONTINUE_FINAL = {"vllm", "sglang"}
_NO_N = {"transformers", "llamacpp"}


class _Malformed(Exception):
    """A 2xx response whose body is not a completion (retried, then PolicyResponseError)."""


class _Deadline(Exception):
    """One attempt ran past the request's total deadline (retried, then PolicyUnavailable)."""


def render_prompt(messages: Sequence[dict[str, str]], template: str) -> str:
    """Render chat messages to a raw prompt for completion mode.

    ``chatml`` renders ``<|im_start|>role ... <|im_end|>`` turns and opens the assistant
    turn (the bundled policy's format); ``plain`` joins the contents with blank lines.
    """
    if template == "chatml":
        turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return turns + "<|im_start|>assistant\n"
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


MAX_RESPONSE_BYTES = 32 << 20  # one response body; 256 in flight stay within a few GB


class _CappedBody(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, limit: int) -> None:
        self.inner = inner
        self.limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self.inner:
            seen += len(chunk)
            if seen > self.limit:
                raise httpx2.ReadError(f"response body larger than {self.limit:,} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class _CappedTransport(httpx2.AsyncBaseTransport):
    """Reads at most ``limit`` bytes of a response body: a server cannot make one
    reply cost the process more memory than that (past it, the attempt fails and is
    retried like a broken connection)."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, limit: int) -> None:
        self.inner = inner
        self.limit = limit

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self.inner.handle_async_request(request)
        stream = response.stream
        assert isinstance(stream, httpx2.AsyncByteStream)
        response.stream = _CappedBody(stream, self.limit)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return isinstance(exc, openai.APIConnectionError | _Malformed | _Deadline)


class OpenAIPolicy:
    """A :class:`~runtime.policy.base.Policy` over an OpenAI-compatible HTTP endpoint."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str = "EMPTY",
        mode: Mode = "chat",
        server: Server = "openai",
        limits: EndpointLimits | None = None,
        timeout: float = 60.0,
        retry_attempts: int = 6,
        retry_initial: float = 0.5,
        retry_max_wait: float = 30.0,
        price: Price | None = None,
        prompt_template: str = "chatml",
        extra_body: dict[str, Any] | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
        version: int = 0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        register_secret(api_key)
        self.model = model
        self.timeout = timeout
        self.mode = mode
        self.server = server
        self.limits = limits or EndpointLimits()
        self.retry_attempts = retry_attempts
        self.retry_initial = retry_initial
        self.retry_max_wait = retry_max_wait
        self.price = price or PRICES.get(model)
        self.prompt_template = prompt_template
        self.extra_body = dict(extra_body or {})
        # transformers serve replaces the model's generation config with the request's
        # (in its continuous-batching mode that drops eos_token_id): configured fields
        # are parsed once here and sent under every request's own settings.
        base = self.extra_body.pop("generation_config", None) if server == "transformers" else None
        self._generation_config: dict[str, Any] = dict(json.loads(base) if isinstance(base, str) else base or {})
        self.version = version
        self.supports_n: bool | None = False if server in _NO_N else None
        endpoint = base_url or "https://api.openai.com/v1"
        self.limiter = limiter_for(endpoint, model, self.limits)
        pool = httpx2.Limits(
            max_connections=self.limits.max_concurrency, max_keepalive_connections=self.limits.max_concurrency
        )
        capped = _CappedTransport(transport or httpx2.AsyncHTTPTransport(limits=pool), max_response_bytes)
        self._http = httpx2.AsyncClient(limits=pool, timeout=httpx2.Timeout(timeout), transport=capped)
        self.client = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout, http_client=self._http
        )

    async def aclose(self) -> None:
        await self.client.close()

    async def __aenter__(self) -> OpenAIPolicy:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- one call -------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if self.supports_n is False and request.n > 1:
            return await self._fan_out(request, request.n)
        try:
            result = await self._with_retries(request, request.n)
        except PolicyRequestError as exc:
            if request.n > 1 and "n" in str(exc).lower() and self.supports_n is None:
                self.supports_n = False
                log.info("server refuses n > 1; falling back to single calls", model=self.model)
                return await self._fan_out(request, request.n)
            raise
        missing = request.n - len(result.completions)
        if missing > 0:
            if self.supports_n is None:
                log.info("server returned fewer choices than n; topping up with single calls", model=self.model)
            self.supports_n = False
            extra = await self._fan_out(request, missing)
            _merge(result, extra)
        elif request.n > 1:
            self.supports_n = True
        return result

    async def _fan_out(self, request: GenerationRequest, count: int) -> GenerationResult:
        results: list[GenerationResult | None] = [None] * count

        async def one(i: int) -> None:
            results[i] = await self._with_retries(request, 1, seed_offset=i)

        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(one, i)
        merged = GenerationResult(completions=[], model=self.model, policy_version=self.version)
        for r in results:
            assert r is not None
            _merge(merged, r)
        return merged

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, openai.APIStatusError):
            header = exc.response.headers.get("retry-after")
            if header is not None:
                try:
                    return min(max(float(header), 0.0), self.retry_max_wait)
                except ValueError:
                    pass
        backoff = wait_random_exponential(multiplier=self.retry_initial, max=self.retry_max_wait)
        return float(backoff(state))

    async def _with_retries(self, request: GenerationRequest, n: int, seed_offset: int = 0) -> GenerationResult:
        estimate = len(request.prompt or "") // 4 + sum(len(m["content"]) for m in request.messages or []) // 4
        estimate += len(request.assistant_prefix) // 4 + request.max_tokens * n
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retry_attempts),
            wait=self._wait,
            retry=retry_if_exception(_transient),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self.limiter.acquire(estimate)
                    used, cost = 0, 0.0
                    try:
                        # Total, not per read: httpx's timeout restarts with every byte, so
                        # a server dripping one byte a second would hold the call forever.
                        with anyio.move_on_after(self.timeout) as deadline:
                            result = await self._call(request, n, seed_offset)
                        if deadline.cancelled_caught:
                            raise _Deadline(f"no complete response within {self.timeout:g} s")
                        used = result.prompt_tokens + result.completion_tokens
                        cost = result.cost
                    finally:
                        self.limiter.release(estimate, used, cost)
                    return result
        except openai.APIStatusError as exc:
            body = _excerpt(exc.body)
            if _transient(exc):
                raise PolicyUnavailable(f"HTTP {exc.status_code} after {self.retry_attempts} attempts: {body}") from exc
            raise PolicyRequestError(f"HTTP {exc.status_code}: {body}") from exc
        except openai.APIConnectionError as exc:
            cause = f" ({exc.__cause__})" if exc.__cause__ is not None and str(exc.__cause__) else ""
            raise PolicyUnavailable(f"{type(exc).__name__} after {self.retry_attempts} attempts: {exc}{cause}") from exc
        except _Malformed as exc:
            raise PolicyResponseError(f"unreadable response after {self.retry_attempts} attempts: {exc}") from exc
        except _Deadline as exc:
            raise PolicyUnavailable(f"{exc} after {self.retry_attempts} attempts") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        error = f"HTTP {exc.status_code}" if isinstance(exc, openai.APIStatusError) else type(exc).__name__
        log.info("retrying request", model=self.model, attempt=state.attempt_number, wait_s=round(wait, 3), error=error)

    def _sampling(self, request: GenerationRequest, n: int, seed_offset: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if n > 1:
            kwargs["n"] = n
        if request.stop:
            kwargs["stop"] = request.stop
        if request.seed is not None:
            kwargs["seed"] = request.seed + seed_offset
        extra = dict(self.extra_body)
        if self.server == "transformers":
            config = self._generation_config | {
                "do_sample": request.temperature > 0,
                "max_new_tokens": request.max_tokens,
            }
            if request.temperature > 0:
                config |= {"temperature": request.temperature, "top_p": request.top_p}
            extra["generation_config"] = json.dumps(config)
        if self.server == "vllm":
            extra.setdefault("return_token_ids", True)
        if extra:
            kwargs["extra_body"] = extra
        return kwargs

    async def _call(self, request: GenerationRequest, n: int, seed_offset: int) -> GenerationResult:
        try:
            response = await self._create(request, n, seed_offset)
        except (json.JSONDecodeError, openai.APIResponseValidationError) as exc:
            raise _Malformed(f"{type(exc).__name__}: {exc}") from exc
        return self._parse(response, request)

    async def _create(self, request: GenerationRequest, n: int, seed_offset: int) -> Any:
        kwargs = self._sampling(request, n, seed_offset)
        if self.mode == "completion":
            prompt = request.prompt
            if prompt is None:
                prompt = render_prompt(request.messages or [], self.prompt_template)
            if request.logprobs:
                kwargs["logprobs"] = 1
            return await self.client.completions.create(prompt=prompt + request.assistant_prefix, **kwargs)
        else:
            messages = list(request.messages or [{"role": "user", "content": request.prompt or ""}])
            if request.assistant_prefix:
                messages.append({"role": "assistant", "content": request.assistant_prefix})
                if self.server in _CONTINUE_FINAL:
                    body = kwargs.setdefault("extra_body", {})
                    body |= {"continue_final_message": True, "add_generation_prompt": False}
                else:
                    messages.append({"role": "user", "content": "Continue."})
            if request.logprobs:
                kwargs["logprobs"] = True
            return await self.client.chat.completions.create(messages=messages, **kwargs)  # type: ignore[arg-type]

    def _parse(self, response: Any, request: GenerationRequest) -> GenerationResult:
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise _Malformed(f"no choices in {_excerpt(response)}")
        completions = []
        for choice in sorted(choices, key=lambda c: getattr(c, "index", 0) or 0):
            if self.mode == "completion":
                text = getattr(choice, "text", None)
                lp = getattr(choice, "logprobs", None)
                logprobs = list(lp.token_logprobs) if lp is not None and lp.token_logprobs else None
            else:
                message = getattr(choice, "message", None)
                text = getattr(message, "content", None)
                lp = getattr(choice, "logprobs", None)
                logprobs = [t.logprob for t in lp.content] if lp is not None and lp.content else None
            if not isinstance(text, str):
                raise _Malformed(f"choice without text: {_excerpt(choice)}")
            token_ids = (getattr(choice, "model_extra", None) or {}).get("token_ids")
            finish = getattr(choice, "finish_reason", None)
            text, cut = _cut_at_stop(text, request.stop)
            if cut:  # the server ignored ``stop``: per-token data no longer lines up
                token_ids, logprobs, finish = None, None, "stop"
            completions.append(Completion(text=text, token_ids=token_ids, logprobs=logprobs, finish_reason=finish))
        usage = getattr(response, "usage", None)
        prompt_tokens = _count(getattr(usage, "prompt_tokens", None), priced=self.price is not None)
        completion_tokens = _count(getattr(usage, "completion_tokens", None), priced=self.price is not None)
        if prompt_tokens is None or completion_tokens is None:
            # Negative or absurd usage (or none, on a priced model) must not undercut the
            # budget: estimate from the text (4 characters a token), as the limiter does.
            log.warning(
                "unusable usage in a response; estimating it from the text", model=self.model, usage=repr(usage)[:200]
            )
            prompt_tokens = len(request.prompt or "") // 4 + sum(len(m["content"]) for m in request.messages or []) // 4
            prompt_tokens += len(request.assistant_prefix) // 4
            completion_tokens = sum(len(c.text) for c in completions) // 4 + len(completions)
        cost = self.price.cost(prompt_tokens, completion_tokens) if self.price else 0.0
        return GenerationResult(
            completions=completions,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost=cost,
            policy_version=self.version,
            model=str(getattr(response, "model", self.model)),
        )


_MAX_USAGE = 100_000_000  # tokens one response may report; more is a broken server


def _count(value: Any, priced: bool) -> int | None:
    """A token count a server reported, or None if it is not a plausible one (or is
    missing where it sets a price)."""
    if value is None:
        return None if priced else 0
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    return int(value) if 0 <= value <= _MAX_USAGE else None


def _cut_at_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    if not stop:
        return text, False
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def _merge(into: GenerationResult, other: GenerationResult) -> None:
    into.completions.extend(other.completions)
    into.prompt_tokens += other.prompt_tokens
    into.completion_tokens += other.completion_tokens
    into.cost += other.cost


def _excerpt(value: object, limit: int = 300) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
