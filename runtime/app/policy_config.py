"""The ``policy:`` section of a run config (also a judge's ``judge_policy``): which
backend samples, where, with which limits.

Split from :mod:`runtime.app.config` (the run config imports it); a removed key that
configs may still set (``prompt_template``) gets a message naming what replaced it.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from runtime.core.secrets import find_secrets, looks_like_secret, register_secret
from runtime.policy.adapters import LoraPublishing
from runtime.policy.base import Mode, Server
from runtime.policy.vllm_engine import VllmSettings

__all__ = ["USER_CONFIG", "PolicyConfig", "PriceConfig"]

DEFAULT_CONCURRENCY = 64
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
USER_CONFIG_KEY = "user_config"
USER_CONFIG = {USER_CONFIG_KEY: True}
"""Validation context of a config a user wrote (load_config, a judge's own policy
section), as opposed to one read back from the store: removed keys are refused only here."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class PriceConfig(_Section):
    """What a hosted model costs (``policy.price``)."""

    input: float = Field(ge=0)
    """USD per million prompt tokens."""
    output: float = Field(ge=0)
    """USD per million completion tokens."""


class PolicyConfig(_Section):
    """The model that samples (``policy:``): which backend, where, and its limits."""

    kind: Literal["openai", "local", "vllm", "scripted"] = "openai"
    """Backend: an OpenAI-compatible server, a local transformers checkpoint (local: the
    transformers engine; vllm: vLLM's in-process engine, the searchlearn[vllm] extra), or
    the scripted fake."""
    model: str = "gpt-4o-mini"
    """Model name sent to the server (openai) or used for the price table."""
    base_url: str | None = None
    """Server URL, e.g. http://127.0.0.1:8000/v1; None means OpenAI itself. A key in its
    query string (``?api_key=...``, ``?key=...``) or its password is masked in the stored
    config, in messages and in logs."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key (required when base_url is None)."""
    api_key: SecretStr | None = None
    """The key itself, instead of api_key_env (discouraged: a config file is easily
    shared); masked in the stored config, in messages and in logs."""

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if looks_like_secret(value) or not _ENV_NAME.fullmatch(value):
            register_secret(value)
            raise ValueError(
                "must be the name of an environment variable (letters, digits, _), not a key; "
                "put the key in that variable, or in policy.api_key"
            )
        return value

    @field_validator("api_key")
    @classmethod
    def _remember(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            register_secret(value.get_secret_value())
        return value

    mode: Mode = "chat"
    """Chat completions or plain completions."""
    server: Server = "openai"
    """Which server software, for its known quirks (n, sampling, continuation)."""
    prompt_template: None = Field(None, exclude=True)
    """Removed: completion mode renders the prompt with the model's own chat template
    (policy.tokenizer); a config that sets it is refused with that message (a stored
    run's config, read back, has it dropped)."""

    @field_validator("prompt_template", mode="before")
    @classmethod
    def _removed(cls, value: Any, info: ValidationInfo) -> None:
        # A run stored before the removal holds its old default ("chatml"): re-read from
        # the store (export, report), it is dropped; only a config a user wrote is refused.
        if value is not None and (info.context or {}).get(USER_CONFIG_KEY):
            raise ValueError(
                "was removed: completion mode renders the prompt with the model's own chat template; set "
                "policy.tokenizer to the model's tokenizer directory or a checkpoint name (e.g. bundled)"
            )

    tokenizer: str | None = None
    """Completion mode: the model's tokenizer, whose chat template renders the prompt (a
    local directory, or a checkpoint name such as bundled, bundled-weak, smollm2-135m,
    resolved as policy.path is). With server vllm the prompt is sent as token ids
    (template ids, then the assistant's parts: sampled ids as they are, text encoded
    alone), and the completions carry every sampled id; on other servers as text, and
    continued steps are text-only. None: the model name where it is a local directory
    (transformers serve DIR), policy.path with policy.lora, else an error. Chat mode
    does not use it: there the server applies the template, continuing the assistant
    message on vllm / sglang (continue_final_message) and llamacpp; on openai, other
    and transformers the accepted steps are shown in the user message and the first new
    step of the reply is taken (docs/backends.md)."""
    max_concurrency: int = Field(DEFAULT_CONCURRENCY, ge=1)
    """Most requests in flight to this endpoint at once."""
    threads: int | None = Field(None, ge=1)
    """torch threads of the local engine (kind local); None: the cores this process may
    use, shared equally among the run's torch consumers (engine, learner, evaluator, PRM)."""
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    """Where the local engine runs (kind local): auto (the first GPU when torch sees one,
    else the CPU), cpu, cuda or cuda:N. The learner and the evaluator stay on the CPU;
    published weights are copied onto the engine's device."""
    requests_per_minute: float | None = Field(None, gt=0)
    """Request rate limit of the endpoint."""
    tokens_per_minute: float | None = Field(None, gt=0)
    """Token rate limit of the endpoint (prompt + completion)."""
    budget_usd: float | None = Field(None, ge=0)
    """Stop admitting episodes once this much has been spent."""
    price: PriceConfig | None = None
    """Price of the model; defaults to the built-in table."""
    timeout: float = Field(60.0, gt=0)
    """Seconds before one HTTP request times out."""
    retry_attempts: int = Field(6, ge=1)
    """Attempts per request on 429 / 5xx / timeouts / connection errors."""
    retry_max_wait: float = Field(30.0, gt=0)
    """Cap on one backoff wait, Retry-After included."""
    wait_ready: float = Field(0.0, ge=0)
    """Seconds to wait, before the first request, for the server to answer GET /models
    (or /health): a loopback server still loading its model is waited for instead of
    failing the first episodes. A server still not ready then fails every call with one
    message saying so. 0: no check."""
    blank_line_retry: bool = False
    """Where the prefix goes as text (re-encoded by the server), ask a step that stopped at
    once on its delimiter again with the delimiter accepted into the prefix. Off by
    default: on SmolLM2 behind ``transformers serve`` it kept paths going after the model
    had ended (9.9 calls a task instead of ~3, docs/benchmarks.md); an immediate stop then
    ends the path, as on the local engine and on vLLM."""
    http: Literal["auto", "httpx", "aiohttp"] = "auto"
    """HTTP transport of the openai backend: 'aiohttp' (openai's aiohttp transport, about
    half the client CPU per request; needs the searchlearn[http] extra and the asyncio
    event loop), 'httpx' (httpx2's own), or 'auto': aiohttp when it is installed and the
    loop is asyncio, else httpx."""
    extra_body: dict[str, Any] = Field(default_factory=dict)
    """Extra JSON fields sent with every request; a value under a key-like name (api_key,
    token, secret, password, auth...) is masked in the stored config, messages and logs."""

    @field_validator("base_url", "extra_body")
    @classmethod
    def _remember_placed(cls, value: Any, info: ValidationInfo) -> Any:
        for secret in find_secrets({info.field_name: value}):
            register_secret(secret)
        return value

    path: str = "bundled"
    """Local checkpoint directory (kind local or vllm; with policy.lora, the checkpoint the
    server serves, which the learner trains adapters on); 'bundled' is the shipped tiny policy."""
    vllm: VllmSettings = Field(default_factory=VllmSettings)
    """vLLM's in-process engine (kind vllm): memory, context, prefix caching, dtype,
    logprobs mode; max_concurrency is its max_num_seqs."""
    lora: LoraPublishing | None = None
    """Publish a LoRA learner's versions to the server as runtime-loaded adapters (kind
    openai, server vllm; the learner needs lora.publish: adapter); None: off."""
    script: list[str] = Field(default_factory=lambda: ["Answer: 42"], min_length=1)
    """Texts the scripted policy returns in turn (kind scripted)."""
    latency: float = Field(0.0, ge=0)
    """Seconds per call of the scripted policy."""
