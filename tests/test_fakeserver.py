"""The loopback fake server (tests/fakeserver.py) speaks OpenAI to the real openai client."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import openai
import pytest
from fakeserver import FakeServer, serve


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve(latency=0.01, text="Step one.\nAnswer: 42") as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=base_url, api_key="x", max_retries=0) as c:
        yield c


def test_chat_honours_n_and_counts_usage(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "two words"}], n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert {c.message.content for c in r.choices} == {"Step one.\nAnswer: 42"}
    assert {c.finish_reason for c in r.choices} == {"stop"}
    assert r.object == "chat.completion" and r.model == "m" and r.id
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (2, 12, 14)


def test_stop_cuts_at_the_earliest_stop_string(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}], stop=["42", "\n"])
    assert r.choices[0].message.content == "Step one."
    r2 = client.completions.create(model="m", prompt="q", stop=": ", n=2)
    assert [c.text for c in r2.choices] == ["Step one.\nAnswer", "Step one.\nAnswer"]
    assert r2.object == "text_completion"


def test_models_and_errors(client: openai.OpenAI, base_url: str) -> None:
    assert [m.id for m in client.models.list()] == ["fake"]
    bad = httpx2.post(base_url + "/chat/completions", content=b"not json")
    assert bad.status_code == 400 and "bad request" in bad.json()["error"]["message"]
    assert httpx2.get(base_url + "/nowhere").status_code == 404


@pytest.mark.anyio
async def test_async_client(base_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0) as c:
        r = await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}], max_tokens=4)
    assert r.choices[0].message.content == "Step one.\nAnswer: 42"


def test_handler_in_process() -> None:
    server = FakeServer(text="a b c")
    status, body = server.handle(b"POST", b"/v1/completions", b'{"prompt": ["x y"], "n": 2}')
    assert status == 200 and b'"prompt_tokens": 2' in body and b'"completion_tokens": 6' in body
    assert server.handle(b"POST", b"/v1/completions", b'{"prompt": "x", "n": 500}')[0] == 400
    assert server.handle(b"GET", b"/v1/chat/completions", b"")[0] == 405
