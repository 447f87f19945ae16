"""The HTTP transports under the OpenAI-compatible backend's ``openai`` client.

Split from :mod:`runtime.policy.openai_compatible` so that module holds the request
protocol only. Design decisions:
- A response body is read up to a cap (``MAX_RESPONSE_BYTES``, 32 MiB): past it the
  attempt fails and is retried like a broken connection, so a server cannot make one
  reply cost the process more memory than that.
- openai's aiohttp adapter (``openai[aiohttp]``) reports every aiohttp connection error
  as ``ConnectTimeout``; the ones that are no timeout become connection errors again,
  so both transports fail alike (retries, messages).
- Readiness (:func:`probe`) is ``GET /models``, then the server root's ``/health``:
  ``transformers serve`` answers ``/health`` even where its ``/models`` fails (no hub
  cache), and a server that is still loading its model answers neither.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx2
import openai

__all__ = ["MAX_RESPONSE_BYTES", "CappedTransport", "aiohttp_transport", "probe", "untimed"]


MAX_RESPONSE_BYTES = 32 << 20  # one response body; 256 in flight stay within a few GB


def untimed(exc: httpx2.ConnectTimeout) -> httpx2.TransportError:
    """openai's aiohttp adapter maps every aiohttp connection error (a refused connect, a
    server hanging up) to ``ConnectTimeout``, "Request timed out": the ones that are no
    timeout become connection errors again, as httpx2's own transport reports them."""
    cause = exc.__cause__
    if cause is None or isinstance(cause, TimeoutError) or not type(cause).__module__.startswith("aiohttp"):
        return exc
    return (httpx2.ConnectError if isinstance(cause, OSError) else httpx2.RemoteProtocolError)(str(exc))


class CappedBody(httpx2.AsyncByteStream):
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
            raise untimed(exc) from exc.__cause__

    async def aclose(self) -> None:
        await self.inner.aclose()


class CappedTransport(httpx2.AsyncBaseTransport):
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
            raise untimed(exc) from exc.__cause__
        stream = response.stream
        assert isinstance(stream, httpx2.AsyncByteStream)
        response.stream = CappedBody(stream, self.limit)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@functools.cache
def aiohttp_transport() -> Callable[..., httpx2.AsyncBaseTransport] | None:
    """openai's aiohttp adapter (an httpx2 transport), or None without ``openai[aiohttp]``."""
    try:
        from openai._vendor.httpx_aiohttp import AiohttpTransport
    except ImportError:
        return None
    return AiohttpTransport


async def probe(client: Any, per_request: float) -> str:
    """Whether the server behind ``client`` (an ``openai.AsyncOpenAI``) answers: empty
    if it does, else why not, in one line."""
    root = str(client.base_url).rstrip("/")
    host = root.removesuffix("/v1")
    problem = ""
    for url in (f"{root}/models", f"{host}/health"):
        try:
            with anyio.fail_after(per_request):
                response = await client.get(url, cast_to=httpx2.Response)
            if response.status_code < 400:
                return ""
            problem = f"GET {url}: HTTP {response.status_code}"
        except openai.APIStatusError as exc:
            problem = f"GET {url}: HTTP {exc.status_code}: {str(exc.body)[:120]}"
        except (openai.APIConnectionError, httpx2.TransportError, TimeoutError) as exc:
            cause = exc.__cause__ if exc.__cause__ is not None and str(exc.__cause__) else exc
            return f"{type(exc).__name__}: {cause}"  # nothing answers there: /health would fail alike
    return problem
