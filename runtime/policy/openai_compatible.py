"""OpenAI-compatible backend: OpenAI, vLLM, SGLang, ``transformers serve``, llama.cpp.

Built on the official ``openai`` async client with its own retries switched off:
retries are ours (tenacity), so they share the endpoint's rate limiter and budget.
Requests go through ``client.post(path, cast_to=httpx2.Response, body=...)`` (openai's
route for raw calls: its auth, headers and status errors, without its params transform
and response models, a quarter of its CPU per request) and the JSON is read here.

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
- ``http="auto"`` sends over openai's aiohttp transport (``openai[aiohttp]``, the
  ``searchlearn[http]`` extra) when it is installed, the event loop is asyncio and no
  ``transport`` was injected; otherwise over httpx2's own. The client is still
  ``openai.AsyncOpenAI`` on an ``httpx2.AsyncClient`` (the aiohttp adapter is an httpx2
  transport), so errors, retries, deadline and body cap are the same on both paths;
  aiohttp costs about half the CPU per request (tests/bench/scheduler.py). aiohttp
  runs on asyncio only: under trio, ``auto`` picks httpx2, chosen per event loop at
  first use (``sniffio``), not at construction.
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

import functools
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Literal

import anyio
import httpx2
import openai
import sniffio
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential

from runtime.core.errors import ConfigError, PolicyRequestError, PolicyResponseError, PolicyUnavailable
from runtime.core.log import get_logger
from runtime.core.secrets import register_secret
from runtime.policy.base import Completion, GenerationRequest, GenerationResult, Mode, Server
from runtime.policy.limits import PRICES, EndpointLimits, Price, limiter_for

__all__ = ["Http", "OpenAIPolicy", "render_prompt"]

Http = Literal["auto", "httpx", "aiohttp"]
"""Which HTTP transport carries the openai client's requests (see the module docstring)."""

log = get_logger("searchlearn.openai")

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


def _untimed(exc: httpx2.ConnectTimeout) -> httpx2.TransportError:
    """openai's aiohttp adapter maps every aiohttp connection error (a refused connect, a
    server hanging up) to ``ConnectTimeout``, "Request timed out": the ones that are no
    timeout become connection errors again, as httpx2's own transport reports them."""
    cause = exc.__cause__
    if cause is None or isinstance(cause, TimeoutError) or not type(cause).__module__.startswith("aiohttp"):
        return exc
    return (httpx2.ConnectError if isinstance(cause, OSError) else httpx2.RemoteProtocolError)(str(exc))


class _CappedBody(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, limit: int) -> None:
        self.inner = inner
        self.limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        try:
            async for chunk in self.inner:
                seen += len(chunk)
                if seen > self.limit:
                    raise httpx2.ReadError(f"response body larger than {self.limit:,} bytes")
                yield chunk
        except httpx2.ConnectTimeout as exc:
            raise _untimed(exc) from exc.__cause__

    async def aclose(self) -> None:
        await self.inner.aclose()


class _CappedTransport(httpx2.AsyncBaseTransport):
    """Reads at most ``limit`` bytes of a response body: a server cannot make one
    reply cost the process more memory than that (past it, the attempt fails and is
    retried like a broken connection). Wraps either transport, httpx2's or aiohttp's."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, limit: int) -> None:
        self.inner = inner
        self.limit = limit

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            response = await self.inner.handle_async_request(request)
        except httpx2.ConnectTimeout as exc:
            raise _untimed(exc) from exc.__cause__
        stream = response.stream
        assert isinstance(stream, httpx2.AsyncByteStream)
        response.stream = _CappedBody(stream, self.limit)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@functools.cache
def _aiohttp_transport() -> Callable[..., httpx2.AsyncBaseTransport] | None:
    """openai's aiohttp adapter (an httpx2 transport), or None without ``openai[aiohttp]``."""
    try:
        from openai._vendor.httpx_aiohttp import AiohttpTransport
    except ImportError:
        return None
    return AiohttpTransport


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
        http: Http = "auto",
    ) -> None:
        if http not in ("auto", "httpx", "aiohttp"):
            raise ConfigError(f"policy.http: {http!r} is not one of 'auto', 'httpx', 'aiohttp'")
        if http == "aiohttp":
            if transport is not None:
                raise ConfigError("policy.http: 'aiohttp' builds its own transport; pass http='httpx' with transport=")
            if _aiohttp_transport() is None:
                raise ConfigError("policy.http: 'aiohttp' needs the aiohttp extra: pip install 'searchlearn[http]'")
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
        self.http: Http = http
        self.max_response_bytes = max_response_bytes
        self._api_key = api_key
        self._base_url = base_url
        self._transport = transport
        # One openai client per transport kind, built at first use on an event loop (an
        # aiohttp session belongs to the loop that opened it; trio cannot run one).
        self._clients: dict[str, openai.AsyncOpenAI] = {}

    def transport_kind(self) -> Literal["httpx", "aiohttp"]:
        """The transport this policy sends over on the running event loop."""
        if self.http == "httpx" or self._transport is not None:
            return "httpx"
        on_asyncio = sniffio.current_async_library() == "asyncio"
        if self.http == "aiohttp":
            if not on_asyncio:
                raise ConfigError("policy.http: 'aiohttp' runs on asyncio only; use 'auto' or 'httpx' under trio")
            return "aiohttp"
        return "aiohttp" if on_asyncio and _aiohttp_transport() is not None else "httpx"

    @property
    def client(self) -> openai.AsyncOpenAI:
        """The openai client for the running event loop's transport (built on first use)."""
        kind = self.transport_kind()
        client = self._clients.get(kind)
        if client is None:
            client = self._clients[kind] = self._build_client(kind)
        return client

    def _build_client(self, kind: str) -> openai.AsyncOpenAI:
        size = self.limits.max_concurrency
        pool = httpx2.Limits(max_connections=size, max_keepalive_connections=size)
        inner: httpx2.AsyncBaseTransport
        if self._transport is not None:
            inner = self._transport
        elif kind == "aiohttp":
            aiohttp_transport = _aiohttp_transport()
            assert aiohttp_transport is not None
            inner = aiohttp_transport(limits=pool)  # its TCPConnector's limit is max_connections
        else:
            inner = httpx2.AsyncHTTPTransport(limits=pool)
        capped = _CappedTransport(inner, self.max_response_bytes)
        http = httpx2.AsyncClient(limits=pool, timeout=httpx2.Timeout(self.timeout), transport=capped)
        return openai.AsyncOpenAI(
            api_key=self._api_key, base_url=self._base_url, max_retries=0, timeout=self.timeout, http_client=http
        )

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

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
        return kwargs | extra

    async def _call(self, request: GenerationRequest, n: int, seed_offset: int) -> GenerationResult:
        path, body = self._body(request, n, seed_offset)
        # openai's documented route for a raw call: its client still builds, authenticates
        # and sends the request and raises its status errors, but neither walks the
        # params' TypedDicts (``_transform``) nor builds pydantic models of the reply:
        # about a quarter of its CPU per request (tests/bench/scheduler.py, its profile).
        response = await self.client.post(path, cast_to=httpx2.Response, body=body)
        try:
            data = json.loads(response.content)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise _Malformed(f"{type(exc).__name__}: {exc}: {_excerpt(response.text)}") from exc
        return self._parse(data, request)

    def _body(self, request: GenerationRequest, n: int, seed_offset: int) -> tuple[str, dict[str, Any]]:
        body = self._sampling(request, n, seed_offset)
        if self.mode == "completion":
            prompt = request.prompt
            if prompt is None:
                prompt = render_prompt(request.messages or [], self.prompt_template)
            if request.logprobs:
                body["logprobs"] = 1
            return "/completions", {"prompt": prompt + request.assistant_prefix} | body
        messages = list(request.messages or [{"role": "user", "content": request.prompt or ""}])
        if request.assistant_prefix:
            messages.append({"role": "assistant", "content": request.assistant_prefix})
            if self.server in _CONTINUE_FINAL:
                body |= {"continue_final_message": True, "add_generation_prompt": False}
            else:
                messages.append({"role": "user", "content": "Continue."})
        if request.logprobs:
            body["logprobs"] = True
        return "/chat/completions", {"messages": messages} | body

    def _parse(self, data: Any, request: GenerationRequest) -> GenerationResult:
        """A completion body as JSON gave it (dicts and lists, nothing validated yet)."""
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices:
            raise _Malformed(f"no choices in {_excerpt(data)}")
        completions = []
        for choice in sorted(choices, key=_index):
            if not isinstance(choice, dict):
                raise _Malformed(f"choice without text: {_excerpt(choice)}")
            lp = choice.get("logprobs")
            logprobs: list[float] | None = None
            if self.mode == "completion":
                text = choice.get("text")
                values = lp.get("token_logprobs") if isinstance(lp, dict) else None
                logprobs = list(values) if isinstance(values, list) and values else None
            else:
                message = choice.get("message")
                text = message.get("content") if isinstance(message, dict) else None
                tokens = lp.get("content") if isinstance(lp, dict) else None
                if isinstance(tokens, list) and tokens and all(isinstance(t, dict) for t in tokens):
                    logprobs = [t.get("logprob") for t in tokens]
            if not isinstance(text, str):
                raise _Malformed(f"choice without text: {_excerpt(choice)}")
            token_ids = choice.get("token_ids")
            finish = choice.get("finish_reason")
            text, cut = _cut_at_stop(text, request.stop)
            if cut:  # the server ignored ``stop``: per-token data no longer lines up
                token_ids, logprobs, finish = None, None, "stop"
            completions.append(Completion(text=text, token_ids=token_ids, logprobs=logprobs, finish_reason=finish))
        usage = data.get("usage")
        if not isinstance(usage, dict):
            usage = {}
        prompt_tokens = _count(usage.get("prompt_tokens"), priced=self.price is not None)
        completion_tokens = _count(usage.get("completion_tokens"), priced=self.price is not None)
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
            model=str(data.get("model") or self.model),
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


def _index(choice: Any) -> int:
    index = choice.get("index") if isinstance(choice, dict) else None
    return index if isinstance(index, int) else 0


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
