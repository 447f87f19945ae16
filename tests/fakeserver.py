"""A tiny OpenAI-compatible HTTP server for loopback tests and benchmarks.

Run: ``python tests/fakeserver.py --port P --latency 0.1 [--text "Answer: 42"]``, or
from Python: ``with serve(latency=0.05) as base_url: ...`` (a subprocess; ``base_url``
ends in ``/v1``).

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (valid OpenAI
bodies: ``n`` choices, ``stop`` honoured, ``finish_reason`` "stop", usage counted in
whitespace-separated words), ``GET /v1/models``, and ``GET /stats`` (requests served
and the server's CPU seconds, so a benchmark can show the server was not the
bottleneck). vLLM's extras, where a request asks for them: ``return_token_ids`` gives
each choice ``token_ids`` (one id per character, ``ord``, then the end-of-sequence id 0
where no stop string ended it, as vLLM keeps that token), ``include_stop_str_in_output``
keeps the stop string in the text, and ``stop_reason`` names the string (null: it ended
on the end-of-sequence token).

For tests of what a client sends: ``--record`` keeps every completion request's JSON
body, read back with ``GET /requests`` (:func:`recorded`); ``--served-model NAME``
answers 404 "model does not exist" to requests for any other model, as vLLM does.

Design decisions:
- Raw ``asyncio.Protocol`` HTTP/1.1, no ASGI stack: uvicorn without ``httptools`` /
  ``uvloop`` (not installed here) parses with pure-Python ``h11`` and serves a few
  thousand requests/s per core; this server serves well over 10,000, so client-side
  benchmarks measure the client. It uses ``uvloop`` when importable.
- Keep-alive, ``Content-Length`` and chunked request bodies; one request at a time per
  connection (clients here never pipeline; pipelined requests queue and are answered
  in order).
- The latency is a ``loop.call_later`` timer per request (what ``asyncio.sleep``
  does underneath, without a task per request).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_TEXT",
    "FakeServer",
    "answering",
    "free_port",
    "loopback",
    "main",
    "recorded",
    "serve",
    "started",
    "stats",
]

DEFAULT_TEXT = "Answer: 42"
DEFAULT_MODEL = "fake"

_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}


class FakeServer:
    """What the server answers; shared by every connection."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        text: str = DEFAULT_TEXT,
        model: str = DEFAULT_MODEL,
        record: bool = False,
        served_model: str | None = None,
    ) -> None:
        self.latency = latency
        self.text = text
        self.model = model
        self.record = record
        self.served_model = served_model
        self.bodies: list[Any] = []
        self.requests = 0
        self.started = time.time()
        self._ids = 0

    def handle(self, method: bytes, path: bytes, body: bytes) -> tuple[int, bytes]:
        """Status and JSON body of one request."""
        self.requests += 1
        path = path.split(b"?", 1)[0].rstrip(b"/")
        if path in (b"/v1/chat/completions", b"/v1/completions"):
            if method != b"POST":
                return 405, _error("use POST")
            try:
                payload = json.loads(body)
                if not isinstance(payload, dict):
                    raise ValueError("the body is not a JSON object")
                if self.record:
                    self.bodies.append(payload)
                if self.served_model is not None and payload.get("model") != self.served_model:
                    return 404, _error(f"The model `{payload.get('model')}` does not exist.")
                return 200, self._complete(payload, chat=path == b"/v1/chat/completions")
            except (ValueError, TypeError, KeyError) as exc:
                return 400, _error(f"bad request: {exc}")
        if path == b"/v1/models" and method == b"GET":
            model = {"id": self.model, "object": "model", "created": int(self.started), "owned_by": "fakeserver"}
            return 200, json.dumps({"object": "list", "data": [model]}).encode()
        if path == b"/requests" and method == b"GET":
            return 200, json.dumps(self.bodies).encode()
        if path == b"/stats" and method == b"GET":
            return 200, json.dumps({"requests": self.requests, "cpu_seconds": time.process_time()}).encode()
        return 404, _error(f"no route {method.decode()} {path.decode()}")

    def _complete(self, payload: dict[str, Any], chat: bool) -> bytes:
        n = int(payload.get("n") or 1)
        if not 1 <= n <= 128:
            raise ValueError(f"n must be in [1, 128], got {n}")
        stop = payload.get("stop")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        text = self.text
        found = sorted((i, s) for s in stops if s and (i := text.find(s)) >= 0)
        stop_reason = found[0][1] if found else None
        if found:
            keep = payload.get("include_stop_str_in_output") is True
            text = text[: found[0][0] + (len(stop_reason or "") if keep else 0)]
        extra: dict[str, Any] = {}
        if payload.get("return_token_ids") is True:  # vLLM's: one id per character here,
            ids = [ord(ch) for ch in text] + ([] if found else [0])  # and the end-of-sequence id 0 kept
            extra = {"token_ids": ids, "stop_reason": stop_reason}
        if chat:
            prompt_words = sum(len(str(m.get("content") or "").split()) for m in payload["messages"])
            choices: list[dict[str, Any]] = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": "stop",
                    **extra,
                }
                for i in range(n)
            ]
        else:
            prompt = payload["prompt"]
            prompt_words = len((prompt if isinstance(prompt, str) else " ".join(map(str, prompt))).split())
            choices = [{"index": i, "text": text, "logprobs": None, "finish_reason": "stop", **extra} for i in range(n)]
        self._ids += 1
        completion_words = len(text.split()) * n
        return json.dumps(
            {
                "id": f"{'chatcmpl' if chat else 'cmpl'}-fake{self._ids}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": str(payload.get("model") or self.model),
                "choices": choices,
                "usage": {
                    "prompt_tokens": prompt_words,
                    "completion_tokens": completion_words,
                    "total_tokens": prompt_words + completion_words,
                },
            }
        ).encode()


def _error(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.busy = False  # a response is pending (its latency timer runs)
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport has asyncio.Transport's methods without subclassing it.
        assert hasattr(transport, "write"), type(transport)
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        """Parse one complete request off the buffer, if there is one, and answer it."""
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        lines = self.buffer[:head_end].split(b"\r\n")
        try:
            method, target, version = lines[0].split(b" ", 2)
        except ValueError:
            self._fail()
            return
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        start = head_end + 4
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            parsed = _dechunk(self.buffer, start)
            if parsed is None:
                return  # incomplete
            body, end = parsed
        else:
            try:
                length = int(headers.get(b"content-length", b"0"))
            except ValueError:
                self._fail()
                return
            end = start + length
            if len(self.buffer) < end:
                return  # incomplete
            body = self.buffer[start:end]
        self.buffer = self.buffer[end:]
        keep_alive = version == b"HTTP/1.1" and headers.get(b"connection", b"").lower() != b"close"
        status, payload = self.server.handle(method, target, body)
        response = _response(status, payload, keep_alive)
        self.busy = True
        if status == 200 and method == b"POST" and self.server.latency > 0:
            self.timer = self.loop.call_later(self.server.latency, self._send, response, keep_alive)
        else:
            self._send(response, keep_alive)

    def _send(self, response: bytes, keep_alive: bool) -> None:
        self.timer = None
        self.busy = False
        if self.transport is None:
            return
        self.transport.write(response)
        if not keep_alive:
            self.transport.close()
            return
        if self.buffer:
            self._next()

    def _fail(self) -> None:
        if self.transport is not None:
            self.transport.write(_response(400, _error("malformed HTTP request"), False))
            self.transport.close()


def _dechunk(buffer: bytes, pos: int) -> tuple[bytes, int] | None:
    """Body and end offset of a complete chunked body starting at ``pos``, else None."""
    parts: list[bytes] = []
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(buffer[pos:line_end].split(b";", 1)[0], 16)
        pos = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n", pos)
            while trailer_end > pos:  # skip trailer headers
                pos = trailer_end + 2
                trailer_end = buffer.find(b"\r\n", pos)
            if trailer_end < 0:
                return None
            return b"".join(parts), trailer_end + 2
        if len(buffer) < pos + size + 2:
            return None
        parts.append(buffer[pos : pos + size])
        pos += size + 2


def _response(status: int, body: bytes, keep_alive: bool) -> bytes:
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: %s\r\n\r\n" % (
        status,
        _REASONS.get(status, b"Error"),
        len(body),
        b"keep-alive" if keep_alive else b"close",
    )
    return head + body


async def run(host: str, port: int, server: FakeServer) -> None:
    """Serve until cancelled."""
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(lambda: _Connection(server), host, port, backlog=4096, reuse_address=True)
    async with listener:
        await listener.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each completion is sent")
    parser.add_argument("--text", default=DEFAULT_TEXT, help="the text of every choice")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the model id /v1/models lists")
    parser.add_argument("--record", action="store_true", help="keep request bodies for GET /requests")
    parser.add_argument("--served-model", default=None, help="answer 404 to requests for any other model")
    args = parser.parse_args(argv)
    server = FakeServer(
        latency=args.latency, text=args.text, model=args.model, record=args.record, served_model=args.served_model
    )
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(run(args.host, args.port, server))


# -- in tests ---------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answering(url: str) -> bool:
    """Whether ``url`` answers a GET with 200 right now."""
    try:
        with urllib.request.urlopen(url, timeout=2.0) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def started(
    proc: subprocess.Popen[Any], url: str, deadline_s: float, fail: Callable[[str], None], *, poll_s: float = 0.5
) -> Iterator[None]:
    """Wait until the server ``proc`` answers ``url``, then hold it; terminated on exit
    (killed after 15 s). ``fail(why)`` is called, and must raise, when it exits first or
    does not answer within ``deadline_s``."""
    try:
        deadline = time.monotonic() + deadline_s
        while not answering(url):
            if proc.poll() is not None:
                fail(f"exited with {proc.returncode}")
            if time.monotonic() > deadline:
                fail(f"did not come up in {deadline_s:g} s")
            time.sleep(poll_s)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def serve(
    latency: float = 0.0,
    port: int = 0,
    *,
    text: str = DEFAULT_TEXT,
    model: str = DEFAULT_MODEL,
    cpu: int | None = None,
    timeout: float = 15.0,
    record: bool = False,
    served_model: str | None = None,
) -> Iterator[str]:
    """Run the server in a subprocess; yields its base URL (``http://127.0.0.1:P/v1``).

    ``port=0`` picks a free port. ``cpu`` pins the subprocess to that core. ``record``
    keeps the request bodies (:func:`recorded`); ``served_model`` refuses other model
    names. The server is stopped on exit.
    """
    port = port or free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--port", str(port), "--latency", str(latency)]
    cmd += ["--text", text, "--model", model]
    cmd += ["--record"] if record else []
    cmd += ["--served-model", served_model] if served_model is not None else []

    def pin() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    proc = subprocess.Popen(cmd, preexec_fn=pin if cpu is not None else None)
    base_url = f"http://127.0.0.1:{port}/v1"

    def fail(why: str) -> None:
        raise RuntimeError(f"fake server on port {port} {why}")

    with started(proc, base_url + "/models", timeout, fail, poll_s=0.05):
        yield base_url


def stats(base_url: str) -> dict[str, Any]:
    """The server's request count and CPU seconds so far."""
    root = base_url.rsplit("/v1", 1)[0]
    with urllib.request.urlopen(root + "/stats", timeout=5.0) as r:
        data: dict[str, Any] = json.loads(r.read())
    return data


def recorded(base_url: str) -> list[dict[str, Any]]:
    """The completion request bodies a ``record=True`` server received, in order."""
    root = base_url.rsplit("/v1", 1)[0]
    with urllib.request.urlopen(root + "/requests", timeout=5.0) as r:
        data: list[dict[str, Any]] = json.loads(r.read())
    return data


if __name__ == "__main__":
    main()


@contextlib.asynccontextmanager
async def loopback(handler: Any) -> AsyncIterator[str]:
    """Serve ``handler(stream)`` (an anyio byte stream per connection) on a free loopback
    port in the caller's event loop, for small misbehaving servers in tests; yields the
    base URL (``http://127.0.0.1:PORT/v1``)."""
    import anyio
    import anyio.abc

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handler)
        yield f"http://127.0.0.1:{port}/v1"
        tg.cancel_scope.cancel()
