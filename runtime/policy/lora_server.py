"""LoraServerPolicy: a learning run that samples from a vLLM server, publishing LoRA adapters.

``policy: {kind: openai, server: vllm, lora: {...}}``. The learner trains LoRA adapters
(``lora: {publish: adapter}`` in its settings); each version it publishes is written as
a peft adapter directory and loaded into the running server with vLLM's runtime LoRA
endpoint; requests then name that adapter as their model. The server must run with
``--enable-lora --max-lora-rank R`` (R >= the learner's rank) and
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``, and read the same file system (loopback, or
a shared directory).

Design decisions:
- ``swap_weights(weights, version)`` (sync, from the learner) only records the version;
  the next ``generate`` (or ``load_weights``) publishes it: writes ``v{version}/``
  (``adapter_config.json`` + ``adapter_model.safetensors``, peft's save format), POSTs
  ``/v1/load_lora_adapter`` with name ``{model}-v{version}``, and from then on requests
  use that name. Requests arriving meanwhile keep using the previous adapter: a server
  serves several adapters at once, so nothing waits (unlike the in-process engine,
  which pauses). The publish is shielded from cancellation.
- A load that fails (HTTP error, timeout, unreadable adapter, weights without an
  adapter) is logged and counted (``failed_loads``); the previous version keeps
  serving and the run goes on. Its directory is removed.
- The last ``keep`` adapters stay loaded; an older one is unloaded
  (``/v1/unload_lora_adapter``) and its directory removed once no request in flight
  uses it (checked at each publish and at close), so no request ever names an
  adapter that is gone.
- Every completion records the version of the adapter its request named (0: the base
  model), fixed when the request starts, retries included.
"""

from __future__ import annotations

import contextvars
import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import httpx2

from runtime.core.log import get_logger
from runtime.policy.adapters import LoraPublishing
from runtime.policy.base import GenerationRequest, GenerationResult
from runtime.policy.deferred import DeferredWeights
from runtime.policy.openai_compatible import OpenAIPolicy

__all__ = ["LoraServerPolicy"]

log = get_logger("searchlearn.lora_server")

#: The model name (adapter or base) the request running in this context sends.
_MODEL: contextvars.ContextVar[str | None] = contextvars.ContextVar("searchlearn_lora_model", default=None)


class LoraServerPolicy(OpenAIPolicy):
    """An :class:`OpenAIPolicy` on a vLLM server whose weights a LoRA learner replaces
    (a :class:`~runtime.policy.base.WeightedPolicy`): each version is a runtime-loaded adapter."""

    def __init__(self, model: str, *, lora: LoraPublishing | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("server", "vllm")
        super().__init__(model, **kwargs)
        self.publishing = lora or LoraPublishing()
        self.base_model = model
        self.serving = model
        """The model name requests send now: the base model, or the newest loaded adapter."""
        self.loads = 0
        self.failed_loads = 0
        self.load_seconds: list[float] = []
        self._own_dir = self.publishing.directory is None
        self._dir = Path(self.publishing.directory or tempfile.mkdtemp(prefix="searchlearn-lora-")).resolve()
        self._loaded: list[tuple[str, Path]] = []  # oldest first
        self._in_flight: Counter[str] = Counter()
        self._weights = DeferredWeights(self._publish)

    # -- sampling --------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if self._weights.pending is not None and not self._weights.busy:
            await self._weights.apply_pending()
        name, version = self.serving, self.version
        token = _MODEL.set(name)
        self._in_flight[name] += 1
        try:
            result = await super().generate(request)
        finally:
            self._in_flight[name] -= 1
            _MODEL.reset(token)
        result.policy_version = version
        return result

    def _sampling(self, request: GenerationRequest, n: int, seed_offset: int) -> dict[str, Any]:
        kwargs = super()._sampling(request, n, seed_offset)
        kwargs["model"] = _MODEL.get() or self.serving
        return kwargs

    # -- publishing ------------------------------------------------------------------

    def swap_weights(self, state_dict: dict[str, Any], version: int) -> None:
        """Serve ``version`` (an :class:`AdapterWeights`) once its adapter is loaded; the
        next request publishes it."""
        self._weights.put(state_dict, version)

    async def load_weights(self, state_dict: dict[str, Any], version: int) -> None:
        """Publish ``version`` now; returns once the server serves it (or the load failed)."""
        self._weights.put(state_dict, version)
        await self._weights.apply_pending()

    async def _publish(self, weights: dict[str, Any], version: int) -> None:
        adapter, config = getattr(weights, "adapter", None), getattr(weights, "config", None)
        if adapter is None or config is None:
            self.failed_loads += 1
            log.error(
                "published weights carry no LoRA adapter (set the learner's lora.publish: adapter); "
                "the previous version keeps serving",
                version=version,
                serving=self.serving,
            )
            return
        name = f"{self.base_model}-v{version}"
        path = self._dir / f"v{version}"
        started = anyio.current_time()
        try:
            await anyio.to_thread.run_sync(_write_adapter, path, adapter, config)
            with anyio.fail_after(self.publishing.timeout):
                await self._admin("/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        except Exception as exc:
            self.failed_loads += 1
            shutil.rmtree(path, ignore_errors=True)
            detail = f"no answer within {self.publishing.timeout:g} s" if isinstance(exc, TimeoutError) else str(exc)
            log.error(
                "adapter load failed; the previous version keeps serving",
                version=version,
                adapter=name,
                serving=self.serving,
                error=f"{type(exc).__name__}: {detail}"[:500],
            )
            return
        seconds = anyio.current_time() - started
        self.serving, self.version = name, version
        self.loads += 1
        self.load_seconds.append(seconds)
        self._loaded.append((name, path))
        log.info("adapter loaded", version=version, adapter=name, seconds=round(seconds, 3))
        await self._unload_old(self.publishing.keep)

    async def _unload_old(self, keep: int) -> None:
        """Unload adapters older than the newest ``keep`` that no request in flight uses."""
        cut = max(0, len(self._loaded) - keep)
        old, newest = self._loaded[:cut], self._loaded[cut:]
        still = []
        for name, path in old:
            if self._in_flight[name] > 0:
                still.append((name, path))
                continue
            try:
                with anyio.fail_after(self.publishing.timeout):
                    await self._admin("/unload_lora_adapter", {"lora_name": name})
            except Exception as exc:
                log.warning("adapter unload failed", adapter=name, error=f"{type(exc).__name__}: {exc}"[:300])
            shutil.rmtree(path, ignore_errors=True)
            self._in_flight.pop(name, None)
        self._loaded = still + newest

    async def _admin(self, path: str, body: dict[str, Any]) -> None:
        """POST to one of vLLM's adapter endpoints (beside the OpenAI routes, under /v1)."""
        await self.client.post(path, cast_to=httpx2.Response, body=body)

    async def aclose(self) -> None:
        """Unload this run's adapters, remove their directory (if temporary), close the client."""
        with anyio.CancelScope(shield=True):
            self._weights.clear()
            if self._loaded:
                await self._unload_old(0)
            await super().aclose()
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    async def __aenter__(self) -> LoraServerPolicy:
        return self


def _write_adapter(path: Path, adapter: dict[str, Any], config: dict[str, Any]) -> None:
    """``path`` as peft's ``save_pretrained`` leaves it, written beside and renamed into place."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in adapter.items()}
    save_file(tensors, tmp / "adapter_model.safetensors", metadata={"format": "pt"})
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
