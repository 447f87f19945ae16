"""A policy backend for a second API shape, added from outside the package: Anthropic's
Messages API, in this one file and nothing under ``runtime/``.

The backend is two classes: its settings (:class:`AnthropicBackend`, a
:class:`~runtime.policy.backends.HostedBackend`, so model, URL, key, limits, price,
timeout and retries are already there) and one exchange with the server
(:class:`AnthropicPolicy.send` on the shared admission layer, which brings the rate and
token limits, retries with backoff, the deadline, ``n`` fan-out, usage checks, error
mapping and secret masking). It is found by name once defined, as ``module:Class``, and
through an entry point in ``searchlearn.policies``. A loopback fake of the Messages API
answers it (aiohttp's web server, in the test's event loop).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import httpx2
import pytest
from aiohttp import web

from runtime.app.build import build_runtime
from runtime.app.config import RunConfig, load_config
from runtime.core.registry import lookup
from runtime.policy.admission import AdmittedPolicy, Malformed, Refused, Reply, Transient
from runtime.policy.backends import HostedBackend
from runtime.policy.base import Completion, GenerationRequest, Policy
from runtime.rewards.outcome import ExactMatch
from runtime.scheduling.scheduler import Runtime
from runtime.search.context import Verifiers
from strategies import BestOfN, ChainOfThought

pytestmark = pytest.mark.anyio

KEY = "sk-ant-test-0123456789abcdef0123"

# -- the plug-in: settings and one exchange ---------------------------------------------


class AnthropicBackend(HostedBackend):
    """Anthropic's Messages API (``POST /v1/messages``)."""

    kind: Literal["anthropic"] = "anthropic"
    api_key_env: str = "ANTHROPIC_API_KEY"
    version_header: str = "2023-06-01"
    """The ``anthropic-version`` header."""

    def build(self, threads: int | None = None) -> Policy:
        return AnthropicPolicy(
            self.model, version_header=self.version_header, **self.admission("https://api.anthropic.com/v1")
        )


class AnthropicPolicy(AdmittedPolicy):
    fans_out = True  # the Messages API has no n

    def __init__(self, model: str, *, version_header: str, api_key: str, **admission: Any) -> None:
        super().__init__(model, api_key=api_key, **admission)
        self.client = httpx2.AsyncClient(
            base_url=self.endpoint, headers={"x-api-key": api_key, "anthropic-version": version_header}
        )

    async def send(self, request: GenerationRequest, n: int, seed_offset: int) -> Reply:
        messages = list(request.messages or [{"role": "user", "content": request.prompt or ""}])
        if request.assistant_prefix:  # the API continues a final assistant message (no trailing space allowed)
            messages.append({"role": "assistant", "content": request.assistant_prefix.rstrip()})
        body: dict[str, Any] = {"model": self.model, "max_tokens": request.max_tokens, "messages": messages}
        body |= {"temperature": min(request.temperature, 1.0), "top_p": request.top_p}
        if request.stop:
            body["stop_sequences"] = request.stop
        try:
            response = await self.client.post("/messages", json=body)
        except httpx2.TransportError as exc:
            raise Transient(type(exc).__name__, str(exc)) from exc
        if response.status_code == 429 or response.status_code >= 500:
            retry_after = response.headers.get("retry-after")
            wait = float(retry_after) if retry_after is not None else None
            raise Transient(f"HTTP {response.status_code}", response.text[:300], wait)
        if response.status_code != 200:
            raise Refused(f"HTTP {response.status_code}", response.text[:300])
        try:
            data = response.json()
            text = "".join(block["text"] for block in data["content"] if block["type"] == "text")
        except (ValueError, KeyError, TypeError) as exc:
            raise Malformed("unreadable response", f"{type(exc).__name__}: {response.text[:300]}") from exc
        finish = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}.get(data.get("stop_reason"))
        usage = data.get("usage") or {}
        return Reply(
            [Completion(text=text, finish_reason=finish)],
            prompt_tokens=usage.get("input_tokens"),
            completion_tokens=usage.get("output_tokens"),
            model=data.get("model", ""),
        )

    async def aclose(self) -> None:
        await self.client.aclose()


# -- a loopback fake of the Messages API -------------------------------------------------


class FakeMessages:
    """Answers ``Answer: N`` to "question N"; fails where asked to (``fail``: question
    number -> status), once per question for a 429 or 529, always for a 400 (whose error
    echoes the key, as a careless server might)."""

    def __init__(self, fail: dict[int, int] | None = None, usage: Any = None) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail = dict(fail or {})
        self.usage = usage

    async def messages(self, request: web.Request) -> web.Response:
        if request.headers.get("x-api-key") != KEY:
            return web.json_response({"type": "error", "error": {"type": "authentication_error"}}, status=401)
        body = await request.json()
        self.bodies.append(body)
        number = int(re.findall(r"\d+", body["messages"][0]["content"])[0])
        status = self.fail.get(number)
        if status in (429, 529):
            del self.fail[number]
            return web.json_response({"type": "error"}, status=status, headers={"retry-after": "0"})
        if status is not None:
            message = f"invalid request (x-api-key: {request.headers['x-api-key']})"
            return web.json_response({"type": "error", "error": {"message": message}}, status=status)
        usage = self.usage if self.usage is not None else {"input_tokens": 10, "output_tokens": 3}
        return web.json_response(
            {
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": [{"type": "text", "text": f"Answer: {number}"}],
                "stop_reason": "end_turn",
                "usage": usage,
            }
        )


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeMessages, str]]:
    server = FakeMessages()
    app = web.Application()
    app.router.add_post("/v1/messages", server.messages)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield server, f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


def _config(url: str, store: Path | None = None, **policy: Any) -> RunConfig:
    section = {"kind": "anthropic", "model": "claude-test", "base_url": url, "api_key": KEY, **policy}
    run = {"scheduler": {"concurrency": 1}, "store": {"path": str(store)}} if store is not None else {}
    return RunConfig.model_validate({"policy": section, **run})


# -- tests ----------------------------------------------------------------------------


async def test_the_plugin_backend_runs_episodes_with_the_shared_admission(
    fake: tuple[FakeMessages, str], make_tasks: Any
) -> None:
    server, url = fake
    server.fail = {1: 429, 2: 529}  # retried by the layer (Retry-After: 0)
    policy = _config(url, price={"input": 1.0, "output": 2.0}).policy.build()
    assert isinstance(policy, AnthropicPolicy)
    async with Runtime(policy, ChainOfThought(), verifiers=Verifiers(outcome=ExactMatch())) as rt:
        episodes = [ep async for ep in rt.stream(make_tasks(6))]
    assert sorted(ep.reward for ep in episodes) == [1.0] * 6
    assert len(server.bodies) == 6 + 2  # two retried
    assert all("n" not in b and b["model"] == "claude-test" for b in server.bodies)
    # usage as the server reported it, priced by the layer: 10 in + 3 out per call
    assert policy.limiter.spent_usd == pytest.approx(6 * (10 * 1.0 + 3 * 2.0) / 1e6)
    await policy.aclose()


async def test_n_fans_out_and_a_refusal_fails_the_episode_with_the_key_masked(
    fake: tuple[FakeMessages, str], make_tasks: Any
) -> None:
    server, url = fake
    server.fail = {3: 400}
    policy = _config(url).policy.build()
    async with Runtime(policy, BestOfN(n=4), verifiers=Verifiers(outcome=ExactMatch())) as rt:
        episodes = {ep.task.id: ep async for ep in rt.stream(make_tasks(4))}
    assert [episodes[f"t{i}"].status for i in range(4)] == ["ok", "ok", "ok", "failed"]
    assert len([b for b in server.bodies if "question 0" in b["messages"][0]["content"]]) == 4  # n=4: four calls
    error = episodes["t3"].errors[0]
    assert error.type == "PolicyRequestError" and "HTTP 400" in error.message
    assert KEY not in error.message and "invalid request" in error.message
    await policy.aclose()


async def test_the_budget_of_a_plugin_endpoint_stops_admission(
    fake: tuple[FakeMessages, str], make_tasks: Any, tmp_path: Path
) -> None:
    server, url = fake
    server.usage = {"input_tokens": 0, "output_tokens": 250_000}  # $0.25 a call at $1 / M output tokens
    config = _config(url, tmp_path / "runs.db", price={"input": 0.0, "output": 1.0}, budget_usd=1.0)
    async with build_runtime(config) as rt:
        episodes = [ep async for ep in rt.stream(make_tasks(20))]
    await rt.policy.aclose()  # build_runtime's policy is the caller's to close
    assert rt.stop_reason == "policy: cost budget spent: $1.0000 of $1.0000"
    assert len(episodes) == 4


async def test_unusable_usage_is_estimated_not_trusted(fake: tuple[FakeMessages, str]) -> None:
    server, url = fake
    server.usage = {"input_tokens": -5, "output_tokens": "lots"}
    policy = _config(url, price={"input": 1.0, "output": 1.0}).policy.build()
    result = await policy.generate(GenerationRequest(messages=[{"role": "user", "content": "question 7 " * 40}]))
    assert result.completions[0].text == "Answer: 7"
    assert result.prompt_tokens > 50 and result.completion_tokens > 0 and result.cost > 0
    await policy.aclose()


def test_found_by_name_by_module_and_by_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert lookup("policies", "anthropic") is AnthropicBackend
    assert lookup("policies", f"{__name__}:AnthropicBackend") is AnthropicBackend
    # an installed distribution's entry point (a dist-info directory on sys.path)
    dist = tmp_path / "searchlearn_anthropic-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: searchlearn-anthropic\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[searchlearn.policies]\nclaude = {__name__}:AnthropicBackend\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert lookup("policies", "claude") is AnthropicBackend
    config = load_config(None, ["policy.kind=claude", "policy.base_url=http://127.0.0.1:9/v1", "policy.model=m"])
    assert isinstance(config.policy, AnthropicBackend) and config.policy.kind == "anthropic"
    # its settings are checked like any backend's
    with pytest.raises(Exception, match="policy.timeout"):
        load_config(None, ["policy.kind=anthropic", "policy.timeout=-1"])
