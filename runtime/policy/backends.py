"""Policy backends by name: the ``policy:`` section of a run config (and a judge's own
policy) names one with ``kind`` and holds that backend's settings, nothing else.

The family is ``policies`` (:mod:`runtime.core.registry`): a backend is a subclass of
:class:`PolicyBackend` with a ``Literal`` ``kind`` and a :meth:`~PolicyBackend.build`
that returns the :class:`~runtime.policy.base.Policy`. Built in: ``openai`` (any
OpenAI-compatible server), ``local`` (the transformers engine in this process),
``vllm`` (vLLM's in-process engine) and ``scripted`` (the package's fake). A package
adds one with an entry point in the group ``searchlearn.policies``, or a config names
it as ``module:Class``; defining the subclass registers it.

A backend for a remote API derives from :class:`HostedBackend`, which owns what every
endpoint has (model, URL, key, rate and token limits, cost budget and price, timeout,
retries, readiness) and hands them to the shared admission layer
(:class:`~runtime.policy.admission.AdmittedPolicy`) through
:meth:`HostedBackend.admission`: such a backend writes its own settings and one
exchange with the server, nothing else (``docs/extending.md``, "A policy backend").

Design decisions:
- The settings classes are light (pydantic only): a backend's client, engine or
  framework is imported by ``build``, so validating a config never imports torch,
  vLLM or openai.
- A key given in the config (``api_key``), or placed in the URL or an extra body, is
  registered with :mod:`runtime.core.secrets` as the config is validated, so it is
  masked in the stored config, in messages and in logs from then on.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from runtime.core.errors import ConfigError
from runtime.core.registry import Component, component_name, lookup
from runtime.core.secrets import find_secrets, looks_like_secret, register_secret
from runtime.policy.adapters import LoraPublishing
from runtime.policy.base import Mode, Server
from runtime.policy.limits import EndpointLimits, Price
from runtime.policy.placement import DEVICE_PATTERN, DtypeName

if TYPE_CHECKING:
    from runtime.policy.base import Policy
    from runtime.policy.vllm_engine import VllmSettings
else:  # pydantic resolves the annotation at class creation; vllm_engine imports vLLM lazily
    from runtime.policy.vllm_engine import VllmSettings

__all__ = [
    "DEFAULT_CONCURRENCY",
    "STORED_CONFIG",
    "USER_CONFIG",
    "USER_CONFIG_KEY",
    "CheckpointBackend",
    "HostedBackend",
    "LocalBackend",
    "OpenAIBackend",
    "PolicyBackend",
    "PriceConfig",
    "ScriptedBackend",
    "VllmBackend",
    "validate_backend",
]

DEFAULT_CONCURRENCY = 64
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
USER_CONFIG_KEY = "user_config"
USER_CONFIG = {USER_CONFIG_KEY: True}
"""Validation context of a config a user wrote (load_config, a judge's own policy
section), as opposed to one read back from the store: removed keys are refused only here."""
STORED_CONFIG_KEY = "stored_config"
STORED_CONFIG = {STORED_CONFIG_KEY: True}
"""Validation context of a run config read back from the store: a run stored before
backends owned their settings holds every backend's keys, and the named backend's are
kept (anywhere else an unknown key is an error)."""


class PriceConfig(BaseModel):
    """What a hosted model costs (``policy.price``)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    input: float = Field(ge=0)
    """USD per million prompt tokens."""
    output: float = Field(ge=0)
    """USD per million completion tokens."""


class PolicyBackend(Component):
    """The model that samples (``policy:``): which backend (``kind``) and its settings."""

    family: ClassVar[str] = "policies"
    key: ClassVar[str] = "kind"
    default_component: ClassVar[str | None] = "openai"
    torch_engine: ClassVar[bool] = False
    """It computes with torch in this process (counted among the run's torch consumers)."""

    kind: str
    max_concurrency: int = Field(DEFAULT_CONCURRENCY, ge=1)
    """Most requests in flight to this backend at once."""

    def build(self, threads: int | None = None) -> Policy:
        """The policy these settings describe (``threads``: this process's torch threads
        for a backend that computes here)."""
        raise NotImplementedError(f"policy kind {self.kind!r} does not build a policy")

    def check(self, episode_timeout: float | None) -> None:
        """Checks that need the environment or another section (ConfigError naming the field)."""

    def takes_weights(self) -> bool:
        """Whether a learner that trains the policy it samples from can publish its
        versions to it."""
        return False

    @property
    def weights_path(self) -> str | None:
        """The local checkpoint whose weights this backend samples with (where a learner
        starts), or None."""
        return None


class HostedBackend(PolicyBackend):
    """A remote endpoint behind the shared admission layer: what every such backend has."""

    kind: str
    model: str = "gpt-4o-mini"
    """Model name sent to the server (and used for the price table)."""
    base_url: str | None = None
    """Server URL, e.g. http://127.0.0.1:8000/v1; None means the provider's own. A key in
    its query string (``?api_key=...``, ``?key=...``) or its password is masked in the
    stored config, in messages and in logs."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key (required when base_url is None)."""
    api_key: SecretStr | None = None
    """The key itself, instead of api_key_env (discouraged: a config file is easily
    shared); masked in the stored config, in messages and in logs."""
    requests_per_minute: float | None = Field(None, gt=0)
    """Request rate limit of the endpoint."""
    tokens_per_minute: float | None = Field(None, gt=0)
    """Token rate limit of the endpoint (prompt + completion)."""
    budget_usd: float | None = Field(None, ge=0)
    """Stop admitting episodes once this much has been spent."""
    price: PriceConfig | None = None
    """Price of the model; defaults to the built-in table."""
    timeout: float = Field(60.0, gt=0)
    """Seconds one request may take, first byte to last (a total deadline per attempt)."""
    retry_attempts: int = Field(6, ge=1)
    """Attempts per request on 429 / 5xx / timeouts / connection errors."""
    retry_max_wait: float = Field(30.0, gt=0)
    """Cap on one backoff wait, Retry-After included."""
    wait_ready: float = Field(0.0, ge=0)
    """Seconds to wait, before the first request, for the server to be ready (a loopback
    server still loading its model is waited for instead of failing the first
    episodes). A server still not ready then fails every call with one message saying
    so. 0: no check."""

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

    @field_validator("base_url")
    @classmethod
    def _remember_placed(cls, value: Any, info: ValidationInfo) -> Any:
        for secret in find_secrets({info.field_name: value}):
            register_secret(secret)
        return value

    def check(self, episode_timeout: float | None) -> None:
        if self.base_url is None and self.api_key is None and not os.environ.get(self.api_key_env):
            raise ConfigError(
                f"policy.api_key_env: environment variable {self.api_key_env} is not set; "
                "set it, or point policy.base_url at a local server (an OpenAI-compatible one for kind openai)"
            )
        if self.wait_ready > 0 and episode_timeout is not None and self.wait_ready >= episode_timeout:
            raise ConfigError(
                f"policy.wait_ready: the first episodes wait for the server inside their deadline, "
                f"scheduler.episode_timeout ({episode_timeout:g} s); set wait_ready below it (got {self.wait_ready:g})"
            )

    def api_key_value(self) -> str:
        """The key: ``api_key``, else the environment variable ``api_key_env``, else "EMPTY"."""
        return (self.api_key.get_secret_value() if self.api_key else os.environ.get(self.api_key_env)) or "EMPTY"

    def admission(self, default_url: str) -> dict[str, Any]:
        """The keyword arguments of :class:`~runtime.policy.admission.AdmittedPolicy`
        these settings give (``default_url``: the provider's own, where base_url is None)."""
        return {
            "endpoint": self.base_url or default_url,
            "api_key": self.api_key_value(),
            "limits": EndpointLimits(
                self.max_concurrency, self.requests_per_minute, self.tokens_per_minute, self.budget_usd
            ),
            "timeout": self.timeout,
            "retry_attempts": self.retry_attempts,
            "retry_max_wait": self.retry_max_wait,
            "price": Price(self.price.input, self.price.output) if self.price else None,
            "wait_ready": self.wait_ready,
        }


class OpenAIBackend(HostedBackend):
    """Any OpenAI-compatible server: OpenAI, vLLM, SGLang, ``transformers serve``,
    llama.cpp (:class:`~runtime.policy.openai_compatible.OpenAIPolicy`)."""

    kind: Literal["openai"] = "openai"
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
    blank_line_retry: bool = False
    """Where the prefix goes as text (re-encoded by the server), ask a step that stopped at
    once on its delimiter again with the delimiter accepted into the prefix. Off by
    default: on SmolLM2 behind ``transformers serve`` it kept paths going after the model
    had ended (9.9 calls a task instead of ~3, docs/benchmarks.md); an immediate stop then
    ends the path, as on the local engine and on vLLM."""
    http: Literal["auto", "httpx", "aiohttp"] = "auto"
    """HTTP transport: 'aiohttp' (openai's aiohttp transport, about half the client CPU
    per request; needs the searchlearn[http] extra and the asyncio event loop), 'httpx'
    (httpx2's own), or 'auto': aiohttp when it is installed and the loop is asyncio,
    else httpx."""
    extra_body: dict[str, Any] = Field(default_factory=dict)
    """Extra JSON fields sent with every request; a value under a key-like name (api_key,
    token, secret, password, auth...) is masked in the stored config, messages and logs."""
    path: str = "bundled"
    """With policy.lora: the checkpoint the server serves, which the learner trains
    adapters on (and whose tokenizer renders completion-mode prompts)."""
    lora: LoraPublishing | None = None
    """Publish a LoRA learner's versions to the server as runtime-loaded adapters (server
    vllm; the learner needs lora.publish: adapter); None: off."""

    @field_validator("extra_body")
    @classmethod
    def _remember_extra(cls, value: Any, info: ValidationInfo) -> Any:
        for secret in find_secrets({info.field_name: value}):
            register_secret(secret)
        return value

    def takes_weights(self) -> bool:
        return self.lora is not None

    @property
    def weights_path(self) -> str | None:
        return self.path if self.lora is not None else None

    def check(self, episode_timeout: float | None) -> None:
        super().check(episode_timeout)
        if self.lora is not None and self.server != "vllm":
            raise ConfigError(
                f"policy.lora: adapters are published to a vLLM server: set policy.server: vllm (got {self.server!r})"
            )
        if self.mode == "completion" and self.tokenizer is None and self.lora is None and not Path(self.model).is_dir():
            raise ConfigError(
                "policy.tokenizer: completion mode renders the prompt with the model's own chat template; "
                f"set it to the tokenizer directory of {self.model!r} or a checkpoint name (e.g. bundled), "
                "or use policy.mode: chat"
            )

    def build(self, threads: int | None = None) -> Policy:
        from runtime.policy.openai_compatible import OpenAIPolicy

        cls: type[OpenAIPolicy] = OpenAIPolicy
        extra: dict[str, Any] = {}
        if self.lora is not None:
            from runtime.policy.lora_server import LoraServerPolicy

            cls, extra = LoraServerPolicy, {"lora": self.lora}
        admission = self.admission("https://api.openai.com/v1")
        del admission["endpoint"]  # OpenAIPolicy takes the URL itself (None: OpenAI's, as its client knows it)
        return cls(
            self.model,
            base_url=self.base_url,
            mode=self.mode,
            server=self.server,
            **admission,
            # with policy.lora the server serves policy.path: its tokenizer renders the prompts
            tokenizer=self.tokenizer if self.tokenizer is not None or self.lora is None else self.path,
            blank_line_retry=self.blank_line_retry,
            extra_body=self.extra_body,
            http=self.http,
            **extra,
        )


class CheckpointBackend(PolicyBackend):
    """A backend that samples a local checkpoint in this process: a learner that trains
    the policy publishes its versions to it, starting from ``path``."""

    kind: str
    path: str = "bundled"
    """Local checkpoint directory, or a checkpoint name ('bundled' is the shipped tiny
    policy, 'bundled-weak' a weaker start, 'smollm2-135m' once fetched)."""

    @property
    def weights_path(self) -> str | None:
        return self.path

    def takes_weights(self) -> bool:
        return True

    def _check_path(self) -> None:
        from runtime.policy.checkpoints import resolve_checkpoint

        try:
            resolve_checkpoint(self.path)
        except FileNotFoundError as exc:
            raise ConfigError(f"policy.path: {exc}") from None


class LocalBackend(CheckpointBackend):
    """A local transformers checkpoint sampled by the package's own batched engine
    (:class:`~runtime.policy.local.LocalPolicy`); a learner publishes its versions to it."""

    kind: Literal["local"] = "local"
    torch_engine: ClassVar[bool] = True
    threads: int | None = Field(None, ge=1)
    """torch threads of the engine; None: the cores this process may use, shared equally
    among the run's torch consumers (engine, learner, evaluator, PRM)."""
    device: str = Field("auto", pattern=DEVICE_PATTERN)
    """Where the engine runs: auto (the first GPU when torch sees one, else the CPU), cpu,
    cuda or cuda:N. The learner (learner.device) and the evaluator (learner.eval.device)
    are placed by their own settings; published weights are copied onto the engine's
    device and dtype (GPU to GPU without passing through the CPU)."""
    dtype: DtypeName = "float32"
    """The engine's weights and KV cache: float32, or bfloat16 (half the memory, and a
    GPU's fast path). Logits are
    read in float32 either way; on the bundled tiny policy greedy text in bfloat16 was
    the float32 text on 100 of 100 tiny tasks (CPU; tests/test_gpu_ready.py checks 24)."""

    def build(self, threads: int | None = None) -> Policy:
        from runtime.policy.local import LocalPolicy

        self._check_path()
        try:
            return LocalPolicy.from_path(
                self.path,
                device=self.device,
                dtype=self.dtype,
                max_batch=self.max_concurrency,
                threads=self.threads or threads,
            )
        except ValueError as exc:  # a GPU asked for where there is none
            if "device" not in str(exc):
                raise
            raise ConfigError(f"policy.device: {exc}") from None


class VllmBackend(CheckpointBackend):
    """A local checkpoint served by vLLM's in-process engine (the searchlearn[vllm]
    extra; :class:`~runtime.policy.vllm_engine.VllmPolicy`); max_concurrency is its
    max_num_seqs."""

    kind: Literal["vllm"] = "vllm"
    vllm: VllmSettings = Field(default_factory=VllmSettings)
    """vLLM's engine: memory, context, prefix caching, dtype, logprobs mode."""

    def build(self, threads: int | None = None) -> Policy:
        from runtime.policy.vllm_engine import VllmPolicy

        self._check_path()
        return VllmPolicy.from_path(self.path, self.vllm, max_num_seqs=self.max_concurrency)


class ScriptedBackend(PolicyBackend):
    """The package's fake (:class:`~runtime.policy.scripted.ScriptedPolicy`): texts
    returned in turn, for trying a config without a model."""

    kind: Literal["scripted"] = "scripted"
    script: list[str] = Field(default_factory=lambda: ["Answer: 42"], min_length=1)
    """Texts returned in turn."""
    latency: float = Field(0.0, ge=0)
    """Seconds per call."""

    def build(self, threads: int | None = None) -> Policy:
        from runtime.policy.scripted import ScriptedPolicy

        return ScriptedPolicy(self.script, latency=self.latency)


def validate_backend(value: Any, context: dict[str, Any] | None = None) -> PolicyBackend:
    """The backend a ``policy:`` section names (a kind, or a mapping with ``kind`` and its
    settings; no kind: openai), validated with ``context``: a config a user wrote
    (:data:`USER_CONFIG`) is refused removed keys; one read back from the store keeps only
    the named backend's keys (a run stored before backends owned their settings holds
    every backend's)."""
    if isinstance(value, PolicyBackend):
        return value
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, dict):
        raise ValueError("expected a policy backend: a kind, or a mapping with 'kind' and its settings")
    kind = value.get("kind", "openai")
    if not isinstance(kind, str):
        raise ValueError("expected a backend's name in 'kind' (openai, local, vllm, scripted, or a plug-in's)")
    try:
        backend = lookup("policies", kind)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    if (context or {}).get(STORED_CONFIG_KEY):
        value = {k: v for k, v in value.items() if k in backend.model_fields}
    validated = backend.model_validate({**value, "kind": component_name(backend)}, context=context)
    assert isinstance(validated, PolicyBackend)
    return validated
