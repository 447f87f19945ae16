"""OpenAI-compatible backend: OpenAI, vLLM, SGLang, ``transformers serve``, llama.cpp.

One exchange with the server (:meth:`OpenAIPolicy.send`) on the official ``openai``
async client with its own retries switched off; everything around it (rate and token
limits, retries with backoff, the total deadline, ``n`` fan-out, usage checks, error
mapping, secret masking, readiness) is the shared admission layer,
:mod:`runtime.policy.admission`. Requests go through ``client.post(path,
cast_to=httpx2.Response, body=...)`` (openai's route for raw calls: its auth, headers
and status errors, without its params transform and response models, a quarter of its
CPU per request) and the JSON is read by :mod:`runtime.policy.openai_reply`; the
transports and the readiness probe are in :mod:`runtime.policy.openai_http`, the
continuation protocols in :mod:`runtime.policy.continuation`.

Design decisions:
- 429 (with its ``Retry-After``), 5xx and connection errors are
  :class:`~runtime.policy.admission.Transient` (retried); other 4xx are
  :class:`~runtime.policy.admission.Refused`; a 2xx body that is no completion is
  :class:`~runtime.policy.admission.Malformed`.
- ``transformers serve`` and llama.cpp return one choice whatever ``n`` says: they are
  fanned out from the start (the layer learns it of any other server that refuses).
- Continuing an episode (``assistant_prefix`` / ``assistant_parts``) follows the
  model's own chat template, by one of three protocols (:mod:`runtime.policy.continuation`):
  completion mode renders the template with the model's tokenizer (``tokenizer``) and
  sends token ids where the server takes them (vLLM); chat mode sends the text so far
  as a final assistant message where the server continues one (vLLM and SGLang with
  ``continue_final_message``, llama.cpp); elsewhere (OpenAI, other hosted APIs,
  ``transformers serve``) the accepted text is shown in the user message and the first
  new step of the reply is taken. No extra user turn is ever invented. In chat mode a
  request's ``tools`` go as the OpenAI ``tools`` field, a reply's ``tool_calls`` come
  back as a call node's text and the path's tool turns go as ``assistant`` /
  ``tool`` messages (:mod:`runtime.policy.openai_tools`). A step
  continued from text that stops at once on its delimiter (a blank line the
  re-encoded prefix lost) is asked again past it when ``blank_line_retry`` is set (off
  by default: measured to keep SmolLM2 going after its end on ``transformers serve``).
- ``server`` names known quirks: ``transformers`` samples only through a
  ``generation_config`` extra body; ``vllm`` takes token-id prompts and returns token
  ids (with the stop string, so a step's ids hold every token it sampled).
- Readiness (``wait_ready``) probes ``GET /models``, then ``/health``.
- The HTTP connection pool is sized to the endpoint's configured concurrency.
- ``http="auto"`` sends over openai's aiohttp transport (``openai[aiohttp]``, the
  ``searchlearn[http]`` extra) when it is installed, the event loop is asyncio and no
  ``transport`` was injected; otherwise over httpx2's own. The client is still
  ``openai.AsyncOpenAI`` on an ``httpx2.AsyncClient`` (the aiohttp adapter is an httpx2
  transport), so errors, retries, deadline and body cap are the same on both paths;
  aiohttp costs about half the CPU per request (tests/bench/scheduler.py). aiohttp
  runs on asyncio only: under trio, ``auto`` picks httpx2, chosen per event loop at
  first use (``sniffio``), not at construction.
- A response body is read up to ``max_response_bytes`` (32 MiB); a larger one fails
  the attempt, so a server cannot exhaust the process's memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import httpx2
import openai
import sniffio

from runtime.core.errors import ConfigError
from runtime.policy.admission import AdmittedPolicy, Malformed, Refused, Reply, Transient
from runtime.policy.base import GenerationRequest, GenerationResult, Mode, Server
from runtime.policy.continuation import ChatTemplate, past_blank_lines, show_solution_so_far
from runtime.policy.limits import EndpointLimits, Price
from runtime.policy.openai_http import MAX_RESPONSE_BYTES, CappedTransport, aiohttp_transport, probe
from runtime.policy.openai_reply import Sent, excerpt, parse_reply
from runtime.policy.openai_tools import chat_turns

__all__ = ["Http", "OpenAIPolicy"]

Http = Literal["auto", "httpx", "aiohttp"]
"""Which HTTP transport carries the openai client's requests (see the module docstring)."""

_CONTINUE_FINAL = {"vllm", "sglang"}
"""Chat servers that continue a final assistant message when the body asks them to."""
_PREFILL = {"llamacpp"}
"""Chat servers that continue a final assistant message by default (llama.cpp's prefill)."""
_TOKEN_PROMPTS = {"vllm"}
"""Servers whose completions endpoint takes a prompt of token ids and returns token ids."""
_NO_N = {"transformers", "llamacpp"}


class OpenAIPolicy(AdmittedPolicy):
    """A :class:`~runtime.policy.base.Policy` over an OpenAI-compatible HTTP endpoint,
    admitted by the shared layer (:mod:`runtime.policy.admission`: limits, retries,
    deadline, n fan-out, usage checks, error mapping)."""

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
        tokenizer: str | Path | Any | None = None,
        extra_body: dict[str, Any] | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
        version: int = 0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        http: Http = "auto",
        wait_ready: float = 0.0,
        blank_line_retry: bool = False,
    ) -> None:
        if http not in ("auto", "httpx", "aiohttp"):
            raise ConfigError(f"policy.http: {http!r} is not one of 'auto', 'httpx', 'aiohttp'")
        if http == "aiohttp":
            if transport is not None:
                raise ConfigError("policy.http: 'aiohttp' builds its own transport; pass http='httpx' with transport=")
            if aiohttp_transport() is None:
                raise ConfigError("policy.http: 'aiohttp' needs the aiohttp extra: pip install 'searchlearn[http]'")
        super().__init__(
            model,
            endpoint=base_url or "https://api.openai.com/v1",
            api_key=api_key,
            limits=limits,
            timeout=timeout,
            retry_attempts=retry_attempts,
            retry_initial=retry_initial,
            retry_max_wait=retry_max_wait,
            price=price,
            wait_ready=wait_ready,
            version=version,
        )
        self.mode = mode
        self.server = server
        self.template = _template(tokenizer, model if mode == "completion" else None)
        self.extra_body = dict(extra_body or {})
        # transformers serve replaces the model's generation config with the request's
        # (in its continuous-batching mode that drops eos_token_id): configured fields
        # are parsed once here and sent under every request's own settings.
        base = self.extra_body.pop("generation_config", None) if server == "transformers" else None
        self._generation_config: dict[str, Any] = dict(json.loads(base) if isinstance(base, str) else base or {})
        if server in _NO_N:
            self.supports_n = False
        self.http: Http = http
        self.max_response_bytes = max_response_bytes
        self._api_key = api_key
        self._base_url = base_url
        self._transport = transport
        # One openai client per transport kind, built at first use on an event loop (an
        # aiohttp session belongs to the loop that opened it; trio cannot run one).
        self._clients: dict[str, openai.AsyncOpenAI] = {}
        self.blank_line_retry = blank_line_retry

    def transport_kind(self) -> Literal["httpx", "aiohttp"]:
        """The transport this policy sends over on the running event loop."""
        if self.http == "httpx" or self._transport is not None:
            return "httpx"
        on_asyncio = sniffio.current_async_library() == "asyncio"
        if self.http == "aiohttp":
            if not on_asyncio:
                raise ConfigError("policy.http: 'aiohttp' runs on asyncio only; use 'auto' or 'httpx' under trio")
            return "aiohttp"
        return "aiohttp" if on_asyncio and aiohttp_transport() is not None else "httpx"

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
            make = aiohttp_transport()
            assert make is not None
            inner = make(limits=pool)  # its TCPConnector's limit is max_connections
        else:
            inner = httpx2.AsyncHTTPTransport(limits=pool)
        capped = CappedTransport(inner, self.max_response_bytes)
        http = httpx2.AsyncClient(limits=pool, timeout=httpx2.Timeout(self.timeout), transport=capped)
        return openai.AsyncOpenAI(
            api_key=self._api_key, base_url=self._base_url, max_retries=0, timeout=self.timeout, http_client=http
        )

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    async def probe(self) -> str | None:
        """``GET /models``, then ``/health`` (which ``transformers serve`` answers even
        where its ``/models`` fails)."""
        return await probe(self.client, min(self.timeout, 10.0))

    # -- one call -------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        result = await super().generate(request)
        if self.blank_line_retry and self._prefix_as_text(request):
            await past_blank_lines(self._generate, request, result)
        return result

    def _prefix_as_text(self, request: GenerationRequest) -> bool:
        """A step continued from the prefix's text (re-encoded by the server), cut at one
        step delimiter: where an immediate stop means a blank line, not an empty step."""
        if not request.assistant_prefix or not request.stop or len(request.stop) != 1:
            return False
        if self.mode == "completion":
            return not (request.messages and self.template is not None and self.server in _TOKEN_PROMPTS)
        return self.server in _CONTINUE_FINAL or self.server in _PREFILL

    async def send(self, request: GenerationRequest, n: int, seed_offset: int) -> Reply:
        path, body, sent = self._body(request, n, seed_offset)
        try:
            # openai's documented route for a raw call: its client still builds,
            # authenticates and sends the request and raises its status errors, but
            # neither walks the params' TypedDicts (``_transform``) nor builds pydantic
            # models of the reply: about a quarter of its CPU per request
            # (tests/bench/scheduler.py, its profile).
            response = await self.client.post(path, cast_to=httpx2.Response, body=body)
        except openai.APIStatusError as exc:
            what, detail = f"HTTP {exc.status_code}", excerpt(exc.body)
            if exc.status_code == 429 or exc.status_code >= 500:
                raise Transient(what, detail, retry_after=_retry_after(exc.response)) from exc
            raise Refused(what, detail) from exc
        except openai.APIConnectionError as exc:
            cause = f" ({exc.__cause__})" if exc.__cause__ is not None and str(exc.__cause__) else ""
            raise Transient(type(exc).__name__, f"{exc}{cause}") from exc
        try:
            data = json.loads(response.content)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise Malformed("unreadable response", f"{type(exc).__name__}: {exc}: {excerpt(response.text)}") from exc
        return parse_reply(data, request, sent, mode=self.mode)

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

    def _body(self, request: GenerationRequest, n: int, seed_offset: int) -> tuple[str, dict[str, Any], Sent]:
        """The route, the JSON body and how it was sent (see runtime.policy.continuation)."""
        body = self._sampling(request, n, seed_offset)
        prefix = request.assistant_prefix
        ids_server = self.server in _TOKEN_PROMPTS
        if ids_server:
            body.setdefault("return_tokens_as_token_ids", True)  # ids also from logprobs' tokens
            if request.stop:
                body.setdefault("include_stop_str_in_output", True)  # a step's ids end with its stop
        stop_included = ids_server and bool(body.get("include_stop_str_in_output"))
        if self.mode == "completion":
            prompt, ids_kept = self._prompt(request)
            if request.logprobs:
                body["logprobs"] = 1
            elif ids_server:
                body["logprobs"] = 0  # the sampled token's only: its "token_id:N" names it
            return (
                "/completions",
                {"prompt": prompt} | body,
                Sent(
                    ids_kept,
                    stop_included=stop_included,
                    end_token_kept=ids_server,
                    stop_in_text=self.server == "transformers",
                ),
            )
        messages, prefix = chat_turns(request)  # the path's tool turns as messages, where it has them
        if request.tools:  # the OpenAI tool protocol (runtime.policy.openai_tools): stops applied here
            body["tools"] = list(request.tools)
            body.pop("stop", None)
            body.pop("include_stop_str_in_output", None)
            stop_included = False
        if request.logprobs:
            body["logprobs"] = True
        if not prefix:
            return (
                "/chat/completions",
                {"messages": messages} | body,
                Sent(True, stop_included=stop_included, end_token_kept=ids_server),
            )
        if self.server in _CONTINUE_FINAL or self.server in _PREFILL:
            messages.append({"role": "assistant", "content": prefix})
            if self.server in _CONTINUE_FINAL:
                body |= {"continue_final_message": True, "add_generation_prompt": False}
            return (
                "/chat/completions",
                {"messages": messages} | body,
                Sent(False, stop_included=stop_included, end_token_kept=ids_server),
            )
        # A server that cannot continue an assistant message: the accepted text is shown in
        # the user message, the whole rest asked for, its first new step taken (_parse).
        body.pop("stop", None)
        body.pop("include_stop_str_in_output", None)
        messages = show_solution_so_far(messages, prefix)
        return "/chat/completions", {"messages": messages} | body, Sent(False, shown_prefix=prefix)

    def _prompt(self, request: GenerationRequest) -> tuple[str | list[int], bool]:
        """Completion mode's prompt (token ids where the server takes them and a template
        or raw prompt gives them) and whether the completions' ids stay the record."""
        prefix = request.assistant_prefix
        template = self.template
        if not request.messages:  # a raw prompt is the caller's own format: sent as text
            return (request.prompt or "") + prefix, not prefix
        if template is None:
            raise ConfigError(
                f"policy.tokenizer: completion mode renders chat messages with the model's own chat template; "
                f"name the tokenizer of {self.model!r} (a local directory or a checkpoint name such as 'bundled')"
            )
        if self.server in _TOKEN_PROMPTS:
            parts = request.assistant_parts if request.assistant_parts is not None else [prefix]
            return template.prompt_ids(request.messages, [p for p in parts if p], request.tools), True
        return template.text(request.messages, request.tools) + prefix, not prefix


def _template(tokenizer: str | Path | Any | None, model: str | None) -> ChatTemplate | None:
    """Completion mode's chat template: ``tokenizer`` (a directory, a checkpoint name, a
    loaded tokenizer or a ChatTemplate), else the model name where it is a local
    directory (``transformers serve DIR`` serves its model under that name), else None."""
    if model is None:
        return None
    if tokenizer is None:
        if not Path(model).is_dir():
            return None
        try:
            return ChatTemplate.load(model)
        except ConfigError:
            return None
    if isinstance(tokenizer, ChatTemplate):
        return tokenizer
    if isinstance(tokenizer, str | Path):
        return ChatTemplate.load(tokenizer)
    return ChatTemplate(tokenizer)


def _retry_after(response: httpx2.Response) -> float | None:
    """The seconds a 429 / 503 response's ``Retry-After`` header names, if it names any."""
    header = response.headers.get("retry-after")
    try:
        return float(header) if header is not None else None
    except ValueError:
        return None
