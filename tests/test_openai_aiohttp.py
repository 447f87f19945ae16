"""OpenAIPolicy over openai's aiohttp transport and over httpx2's, against real sockets.

The same behaviour is asserted on both paths: completions, retries of 429 / 5xx, a
refused connection, the per-attempt deadline, the body cap, the pool size; and that
``http="auto"`` falls back to httpx2 under trio, which cannot run aiohttp.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import httpx2
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from fakeserver import loopback, serve

from runtime.core.errors import ConfigError, PolicyUnavailable
from runtime.policy.base import GenerationRequest
from runtime.policy.limits import EndpointLimits
from runtime.policy.openai_compatible import OpenAIPolicy

pytest.importorskip("aiohttp")

Q = [{"role": "user", "content": "What is 6*7?"}]
BOTH = pytest.mark.parametrize("http", ["httpx", "aiohttp"])


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    with serve(latency=0.01) as base_url:
        yield base_url


def chat(text: str) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


Reply = Callable[[int], "bytes | None"]  # call index -> raw HTTP response; None: hang up


@asynccontextmanager
async def scripted(reply: Reply) -> AsyncIterator[tuple[str, list[float]]]:
    """A one-request-per-connection HTTP server on loopback answering ``reply(i)``;
    yields its base URL and the arrival time of each request."""
    times: list[float] = []

    async def handle(stream: anyio.abc.ByteStream) -> None:
        async with stream:
            buffered = BufferedByteReceiveStream(stream)
            try:
                head = await buffered.receive_until(b"\r\n\r\n", 65536)
                length = next(
                    (
                        int(v)
                        for k, _, v in (h.partition(b":") for h in head.split(b"\r\n"))
                        if k.lower() == b"content-length"
                    ),
                    0,
                )
                await buffered.receive_exactly(length)
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                return
            times.append(time.monotonic())
            response = reply(len(times) - 1)
            if response is not None:
                try:
                    await stream.send(response)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass

    async with loopback(handle) as base_url:
        yield base_url, times


def response(status: int, body: dict[str, Any], **headers: str) -> bytes:
    data = json.dumps(body).encode()
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n"
    return (head + extra + "connection: close\r\n\r\n").encode() + data


def make(base_url: str, http: str, **kwargs: Any) -> OpenAIPolicy:
    kwargs.setdefault("retry_initial", 0.01)
    kwargs.setdefault("retry_max_wait", 0.05)
    return OpenAIPolicy("m", base_url=base_url, http=http, **kwargs)  # type: ignore[arg-type]


def inner_transport(policy: OpenAIPolicy) -> httpx2.AsyncBaseTransport:
    """The transport under the body cap (private attributes: a test may look)."""
    transport: Any = policy.client._client._transport
    return transport.inner  # type: ignore[no-any-return]


# -- the same answers ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_auto_picks_aiohttp_on_asyncio_and_answers_as_httpx_does(fake_url: str) -> None:
    requests = [
        GenerationRequest(messages=Q, max_tokens=8),
        GenerationRequest(messages=Q, n=3, max_tokens=8),
        GenerationRequest(messages=Q, stop=[":"], max_tokens=8),
        GenerationRequest(prompt="6*7=", max_tokens=8),
    ]
    answers: dict[str, list[Any]] = {}
    for http in ("auto", "httpx"):
        async with make(fake_url, http) as chat_policy, make(fake_url, http, mode="completion") as completion:
            kinds = {chat_policy.transport_kind(), completion.transport_kind()}
            assert kinds == {"aiohttp" if http == "auto" else "httpx"}
            results = [await chat_policy.generate(r) for r in requests[:3]]
            results.append(await completion.generate(requests[3]))
            if http == "auto":
                assert type(inner_transport(chat_policy)).__name__ == "AiohttpTransport"
            answers[http] = [
                ([(c.text, c.finish_reason) for c in r.completions], r.prompt_tokens, r.completion_tokens, r.model)
                for r in results
            ]
    assert answers["auto"] == answers["httpx"]
    assert answers["auto"][0][0] == [("Answer: 42", "stop")]
    assert len(answers["auto"][1][0]) == 3
    assert answers["auto"][2][0] == [("Answer", "stop")]


@pytest.mark.anyio
async def test_an_injected_transport_means_httpx_and_aiohttp_with_one_is_refused() -> None:
    mock = httpx2.MockTransport(lambda r: httpx2.Response(200, json=chat("7")))
    policy = OpenAIPolicy("m", base_url="http://mock-aio/v1", transport=mock)
    assert policy.transport_kind() == "httpx"
    assert (await policy.generate(GenerationRequest(messages=Q))).completions[0].text == "7"
    await policy.aclose()
    with pytest.raises(ConfigError, match="policy.http"):
        OpenAIPolicy("m", base_url="http://mock-aio/v1", transport=mock, http="aiohttp")
    with pytest.raises(ConfigError, match="policy.http"):
        OpenAIPolicy("m", http="curl")  # type: ignore[arg-type]


@BOTH
@pytest.mark.anyio
async def test_the_pool_is_sized_to_the_endpoint_concurrency(fake_url: str, http: str) -> None:
    async with make(fake_url, http, limits=EndpointLimits(max_concurrency=7)) as policy:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(policy.generate, GenerationRequest(messages=Q))
        transport: Any = inner_transport(policy)
        if http == "aiohttp":
            assert transport.client.connector.limit == 7
        else:
            assert transport._pool._max_connections == 7


# -- faults, on both paths ---------------------------------------------------------------


@BOTH
@pytest.mark.anyio
async def test_429_and_5xx_are_retried(http: str) -> None:
    script = [
        response(429, {"error": {"message": "slow down"}}, retry_after="0.2"),
        response(503, {"error": {"message": "overloaded"}}),
        None,  # the server hangs up without a word
        response(200, chat("Answer: 9")),
    ]
    async with scripted(lambda i: script[i]) as (base_url, times), make(base_url, http, retry_max_wait=5) as policy:
        with anyio.fail_after(10):
            result = await policy.generate(GenerationRequest(messages=Q))
    assert result.completions[0].text == "Answer: 9"
    assert len(times) == 4
    assert times[1] - times[0] >= 0.18  # Retry-After honoured


@BOTH
@pytest.mark.anyio
async def test_a_4xx_is_not_retried_and_5xx_runs_out(http: str) -> None:
    from runtime.core.errors import PolicyRequestError

    async with scripted(lambda i: response(400, {"error": {"message": "bad"}})) as (url, times):
        async with make(url, http) as policy:
            with pytest.raises(PolicyRequestError, match="HTTP 400"):
                await policy.generate(GenerationRequest(messages=Q))
    assert len(times) == 1
    async with scripted(lambda i: response(500, {"error": {"message": "boom"}})) as (url, times):
        async with make(url, http, retry_attempts=3) as policy:
            with pytest.raises(PolicyUnavailable, match="HTTP 500 after 3 attempts"):
                await policy.generate(GenerationRequest(messages=Q))
    assert len(times) == 3


@BOTH
@pytest.mark.anyio
async def test_a_refused_connection_is_a_connection_error_not_a_timeout(http: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once the socket is closed
    async with make(f"http://127.0.0.1:{port}/v1", http, retry_attempts=2) as policy:
        with pytest.raises(PolicyUnavailable, match="^APIConnectionError after 2 attempts: Connection error"):
            await policy.generate(GenerationRequest(messages=Q))


@BOTH
@pytest.mark.anyio
async def test_the_deadline_is_total_per_attempt(http: str) -> None:
    body = json.dumps(chat("Answer: 1")).encode()

    async def drip(stream: anyio.abc.ByteStream) -> None:
        async with stream:
            await stream.receive(65536)
            try:
                await stream.send(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
                await stream.send(b"content-length: %d\r\n\r\n" % len(body))
                for byte in body:  # each read completes in time; the whole never does
                    await stream.send(bytes([byte]))
                    await anyio.sleep(0.1)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    async with loopback(drip) as base_url:
        async with make(base_url, http, timeout=0.5, retry_attempts=2) as policy:
            started = time.monotonic()
            with pytest.raises(PolicyUnavailable, match="no complete response within 0.5 s after 2 attempts"):
                await policy.generate(GenerationRequest(messages=Q))
            assert time.monotonic() - started < 3


@BOTH
@pytest.mark.anyio
async def test_the_body_cap_holds_and_the_pool_survives_it(http: str) -> None:
    big = response(200, chat("Answer: 1 " + "w" * 400_000))
    small = response(200, chat("Answer: 2"))
    async with scripted(lambda i: small if i == 2 else big) as (url, times):
        async with make(url, http, max_response_bytes=100_000, retry_attempts=2) as policy:
            with pytest.raises(PolicyUnavailable, match="larger than 100,000 bytes"):
                await policy.generate(GenerationRequest(messages=Q))
            assert (await policy.generate(GenerationRequest(messages=Q))).completions[0].text == "Answer: 2"
        async with make(url, http, max_response_bytes=1_000_000) as roomy:
            result = await roomy.generate(GenerationRequest(messages=Q))
    assert len(result.completions[0].text) > 400_000
    assert len(times) == 4


# -- trio --------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_under_trio_auto_falls_back_to_httpx_and_aiohttp_is_refused() -> None:
    # a server of its own: an endpoint's limiter is shared, and belongs to the event loop
    # that first used it (the module's server is used from asyncio)
    with serve() as base_url:
        async with make(base_url, "auto") as policy:
            assert policy.transport_kind() == "httpx"
            result = await policy.generate(GenerationRequest(messages=Q, n=2))
            assert [c.text for c in result.completions] == ["Answer: 42", "Answer: 42"]
        async with make(base_url, "aiohttp") as forced:
            with pytest.raises(ConfigError, match="asyncio only"):
                await forced.generate(GenerationRequest(messages=Q))


# -- the raw route: openai's client.post, JSON read here -----------------------------------


def mock_policy(body: bytes, content_type: str = "application/json", **kwargs: Any) -> OpenAIPolicy:
    def respond(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=body, headers={"content-type": content_type})

    kwargs.setdefault("retry_attempts", 2)
    kwargs.setdefault("retry_initial", 0.01)
    return OpenAIPolicy("m", base_url=f"http://raw-{id(body)}/v1", transport=httpx2.MockTransport(respond), **kwargs)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        b"[1, 2]",
        b'{"choices": "none"}',
        b'{"choices": []}',
        b'{"choices": ["text"]}',
        b'{"choices": [{"message": "hi"}]}',
        b'{"choices": [{"message": {"content": 7}}]}',
        b"\xff\xfe{",
        b'{"choices": [{"message": {"content": "a"}}',
    ],
)
async def test_a_body_that_is_no_completion_is_a_response_error(body: bytes) -> None:
    from runtime.core.errors import PolicyResponseError

    async with mock_policy(body) as policy:
        with pytest.raises(PolicyResponseError, match="unreadable response after 2 attempts"):
            await policy.generate(GenerationRequest(messages=Q))


@pytest.mark.anyio
async def test_odd_but_readable_bodies_are_read() -> None:
    odd = {
        "choices": [
            {"index": "x", "message": {"content": "b"}, "logprobs": {"content": ["junk"]}},
            {"index": 0, "message": {"content": "a"}, "logprobs": "junk", "finish_reason": "length"},
        ],
        "usage": {"prompt_tokens": "3", "completion_tokens": -1},
        "model": None,
    }
    async with mock_policy(json.dumps(odd).encode(), content_type="text/plain") as policy:
        result = await policy.generate(GenerationRequest(messages=Q))
    assert [(c.text, c.logprobs, c.finish_reason) for c in result.completions] == [
        ("b", None, None),
        ("a", None, "length"),
    ]  # a non-integer index sorts as 0; the order is otherwise kept
    assert result.model == "m" and result.prompt_tokens >= 0 and result.completion_tokens > 0
