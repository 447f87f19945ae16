"""OpenAIPolicy error paths and quirks, with faults injected through an httpx2 transport.

The happy path against real servers lives in tests/test_openai_server.py.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx2
import pytest

from runtime.core.errors import BudgetExhausted, PolicyRequestError, PolicyResponseError, PolicyUnavailable
from runtime.policy.base import GenerationRequest
from runtime.policy.limits import EndpointLimits, Price
from runtime.policy.openai_compatible import OpenAIPolicy
from runtime.rewards.outcome import ExactMatch
from runtime.scheduling.scheduler import Runtime
from runtime.search.context import Sampling, Verifiers
from strategies import ChainOfThought

pytestmark = pytest.mark.anyio

Q = [{"role": "user", "content": "What is 6*7?"}]
_port = iter(range(1, 10**6))


def chat_body(
    texts: list[str], prompt_tokens: int = 3, completion_tokens: int = 2, **choice_extra: Any
) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": i, "finish_reason": "stop", "message": {"role": "assistant", "content": t}, **choice_extra}
            for i, t in enumerate(texts)
        ],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": 5},
    }


class Server:
    """A scripted transport: ``respond(request, call_index)`` returns a response or raises."""

    def __init__(self, respond: Callable[[httpx2.Request, int], httpx2.Response]) -> None:
        self.respond = respond
        self.requests: list[dict[str, Any]] = []
        self.times: list[float] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(json.loads(request.content))
        self.times.append(time.monotonic())
        return self.respond(request, len(self.requests) - 1)


def policy(fake: Any, **kwargs: Any) -> OpenAIPolicy:
    kwargs.setdefault("retry_initial", 0.01)
    kwargs.setdefault("retry_max_wait", 0.05)
    # a distinct endpoint per policy: limiters are shared per endpoint
    base = f"http://test-{next(_port)}/v1"
    return OpenAIPolicy("m", base_url=base, transport=httpx2.MockTransport(fake), **kwargs)


async def test_429_honours_retry_after_then_succeeds() -> None:
    def respond(req: httpx2.Request, i: int) -> httpx2.Response:
        if i == 0:
            return httpx2.Response(429, json={"error": {"message": "slow down"}}, headers={"retry-after": "0.3"})
        return httpx2.Response(200, json=chat_body(["42"]))

    server = Server(respond)
    p = policy(server, retry_max_wait=5.0)
    result = await p.generate(GenerationRequest(messages=Q))
    assert [c.text for c in result.completions] == ["42"]
    assert len(server.requests) == 2
    assert server.times[1] - server.times[0] >= 0.29


async def test_5xx_timeout_and_malformed_bodies_are_retried() -> None:
    def respond(req: httpx2.Request, i: int) -> httpx2.Response:
        if i == 0:
            return httpx2.Response(503, json={"error": {"message": "overloaded"}})
        if i == 1:
            raise httpx2.ReadTimeout("read timed out", request=req)
        if i == 2:
            return httpx2.Response(200, content=b"{not json", headers={"content-type": "application/json"})
        if i == 3:
            return httpx2.Response(200, json={"unexpected": True})
        return httpx2.Response(200, json=chat_body(["ok"]))

    server = Server(respond)
    result = await policy(server).generate(GenerationRequest(messages=Q))
    assert result.completions[0].text == "ok"
    assert len(server.requests) == 5


async def test_retries_are_capped_and_errors_classified() -> None:
    always_500 = Server(lambda req, i: httpx2.Response(500, json={"error": {"message": "boom"}}))
    with pytest.raises(PolicyUnavailable, match="HTTP 500 after 3 attempts"):
        await policy(always_500, retry_attempts=3).generate(GenerationRequest(messages=Q))
    assert len(always_500.requests) == 3

    garbage = Server(
        lambda req, i: httpx2.Response(200, content=b"<html>", headers={"content-type": "application/json"})
    )
    with pytest.raises(PolicyResponseError, match="unreadable response"):
        await policy(garbage, retry_attempts=2).generate(GenerationRequest(messages=Q))


async def test_other_4xx_is_not_retried() -> None:
    server = Server(lambda req, i: httpx2.Response(401, json={"error": {"message": "bad key"}}))
    with pytest.raises(PolicyRequestError, match="HTTP 401"):
        await policy(server).generate(GenerationRequest(messages=Q))
    assert len(server.requests) == 1


async def test_connection_refused_is_retried_then_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens there
    p = OpenAIPolicy(
        "m", base_url=f"http://127.0.0.1:{port}/v1", retry_attempts=3, retry_initial=0.01, retry_max_wait=0.02
    )
    with pytest.raises(PolicyUnavailable, match="APIConnectionError after 3 attempts"):
        await p.generate(GenerationRequest(messages=Q))
    await p.aclose()


async def test_n_falls_back_to_single_calls_when_server_ignores_it() -> None:
    server = Server(lambda req, i: httpx2.Response(200, json=chat_body([f"a{i}"])))
    p = policy(server, server="other")
    result = await p.generate(GenerationRequest(messages=Q, n=3))
    assert len(result.completions) == 3
    assert len(server.requests) == 3 and server.requests[0]["n"] == 3
    assert "n" not in server.requests[1]
    assert p.supports_n is False
    result = await p.generate(GenerationRequest(messages=Q, n=2))  # now straight to single calls
    assert len(result.completions) == 2 and len(server.requests) == 5
    assert result.prompt_tokens == 6


async def test_n_refused_with_400_falls_back() -> None:
    def respond(req: httpx2.Request, i: int) -> httpx2.Response:
        if json.loads(req.content).get("n", 1) > 1:
            return httpx2.Response(400, json={"error": {"message": "n must be 1"}})
        return httpx2.Response(200, json=chat_body(["x"]))

    server = Server(respond)
    result = await policy(server).generate(GenerationRequest(messages=Q, n=4))
    assert len(result.completions) == 4 and len(server.requests) == 5


async def test_concurrency_limit_is_shared_by_every_policy_on_an_endpoint() -> None:
    active = 0
    peak = 0

    async def respond(request: httpx2.Request) -> httpx2.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await anyio.sleep(0.02)
        active -= 1
        return httpx2.Response(200, json=chat_body(["x"]))

    limits = EndpointLimits(max_concurrency=3)
    a = OpenAIPolicy("m", base_url="http://shared/v1", limits=limits, transport=httpx2.MockTransport(respond))
    b = OpenAIPolicy("m", base_url="http://shared/v1", limits=limits, transport=httpx2.MockTransport(respond))
    assert a.limiter is b.limiter
    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon((a if i % 2 else b).generate, GenerationRequest(messages=Q))
    assert peak == 3


async def test_requests_per_minute_throttles() -> None:
    server = Server(lambda req, i: httpx2.Response(200, json=chat_body(["x"])))
    p = policy(server, limits=EndpointLimits(requests_per_minute=600, burst_seconds=0.1))  # 10/s, burst 1
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(p.generate, GenerationRequest(messages=Q))
    assert time.monotonic() - started >= 0.45  # 5 waits of 0.1 s after the first


async def test_tokens_per_minute_reserves_then_settles() -> None:
    server = Server(lambda req, i: httpx2.Response(200, json=chat_body(["x"], 10, 10)))
    p = policy(server, limits=EndpointLimits(tokens_per_minute=60_000, burst_seconds=1))  # 1000 tok/s
    await p.generate(GenerationRequest(messages=Q, max_tokens=900))
    stats = p.limiter.statistics()
    assert stats["tokens_available"] is not None and stats["tokens_available"] > 900  # refunded down to 20 used


async def test_cost_budget_stops_calls_and_the_run_says_so(tmp_path: Any) -> None:
    server = Server(lambda req, i: httpx2.Response(200, json=chat_body(["Answer: 42"], 3, 2)))
    p = policy(server, limits=EndpointLimits(budget_usd=12.0, max_concurrency=1), price=Price(1e6, 1e6))  # $1/token
    await p.generate(GenerationRequest(messages=Q))
    assert p.limiter.spent_usd == pytest.approx(5.0)
    tasks = [{"id": str(i), "prompt": "q", "answer": "42"} for i in range(10)]
    async with Runtime(
        p,
        ChainOfThought(),
        verifiers=Verifiers(outcome=ExactMatch()),
        sampling=Sampling(),
        store=str(tmp_path / "s.db"),
        run_id="budget",
    ) as rt:
        with anyio.fail_after(10):
            episodes = [ep async for ep in rt.stream(tasks)]
    assert rt.stop_reason is not None and "budget" in rt.stop_reason
    assert 1 <= len(episodes) < 10
    with pytest.raises(BudgetExhausted):
        await p.generate(GenerationRequest(messages=Q))


async def test_logprobs_token_ids_and_server_quirks() -> None:
    def respond(req: httpx2.Request, i: int) -> httpx2.Response:
        body = chat_body(
            ["4 2"],
            logprobs={
                "content": [
                    {"token": "4", "logprob": -0.1, "bytes": None, "top_logprobs": []},
                    {"token": " 2", "logprob": -0.2, "bytes": None, "top_logprobs": []},
                ]
            },
            token_ids=[19, 17],
        )
        return httpx2.Response(200, json=body)

    server = Server(respond)
    p = policy(server, server="vllm")
    result = await p.generate(GenerationRequest(messages=Q, logprobs=True))
    c = result.completions[0]
    assert c.logprobs == [-0.1, -0.2] and c.token_ids == [19, 17]
    sent = server.requests[0]
    assert sent["logprobs"] is True and sent["return_token_ids"] is True
    # a continuation in chat mode: the server re-encodes the prefix text, so ids are not the record
    result = await p.generate(GenerationRequest(messages=Q, logprobs=True, assistant_prefix="Step 1.\n"))
    c = result.completions[0]
    assert c.logprobs == [-0.1, -0.2] and c.token_ids is None
    sent = server.requests[1]
    assert sent["continue_final_message"] is True and sent["messages"][-1] == {
        "role": "assistant",
        "content": "Step 1.\n",
    }

    hf = Server(lambda req, i: httpx2.Response(200, json=chat_body(["line one\nline two"])))
    p = policy(hf, server="transformers")
    result = await p.generate(GenerationRequest(messages=Q, temperature=0.7, stop=["\n"]))
    assert result.completions[0].text == "line one"  # a server that ignores stop is cut client-side
    config = json.loads(hf.requests[0]["generation_config"])
    assert config["do_sample"] is True and config["temperature"] == 0.7
    # configured generation_config fields (the server drops the model's own) are kept
    p = policy(hf, server="transformers", extra_body={"generation_config": {"eos_token_id": 2, "temperature": 9.0}})
    await p.generate(GenerationRequest(messages=Q, temperature=0.5))
    config = json.loads(hf.requests[-1]["generation_config"])
    assert config["eos_token_id"] == 2 and config["temperature"] == 0.5


async def test_completion_mode_renders_prompt_and_reads_logprobs() -> None:
    def respond(req: httpx2.Request, i: int) -> httpx2.Response:
        return httpx2.Response(
            200,
            json={
                "id": "c",
                "object": "text_completion",
                "created": 1,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "text": "7",
                        "finish_reason": "stop",
                        "logprobs": {
                            "tokens": ["7"],
                            "token_logprobs": [-0.5],
                            "top_logprobs": None,
                            "text_offset": [0],
                        },
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            },
        )

    server = Server(respond)
    p = policy(server, mode="completion", tokenizer="bundled")  # the bundled policy's own chat template
    result = await p.generate(GenerationRequest(messages=Q, assistant_prefix="6*7=", logprobs=True))
    assert result.completions[0].logprobs == [-0.5]
    assert server.requests[0]["prompt"] == "<|im_start|>user\nWhat is 6*7?<|im_end|>\n<|im_start|>assistant\n6*7="
