"""LocalPolicy: the Policy protocol over :class:`~runtime.policy.local.engine.LocalEngine`.

Any local transformers checkpoint directory (``path='bundled'`` is the shipped tiny
policy). Prompts are rendered with the tokenizer's chat template and the episode's path
appended as the ids its steps were sampled as (``assistant_parts``; text only where a
step has no ids: :class:`~runtime.policy.prompts.PromptEncoder`), so branches of one
episode share a token prefix that the engine's prefix cache reuses, and generated text
is never re-encoded. The async side waits on an event the engine thread sets
without blocking (asyncio's ``call_soon_threadsafe`` or trio's ``run_sync_soon``, so
the policy works under either anyio backend); at most ``max_pending`` requests wait in the engine's queue, so
memory stays bounded however many episodes call at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import sniffio

from runtime.core.errors import PolicyRequestError
from runtime.core.log import get_logger
from runtime.policy.base import Completion, GenerationRequest, GenerationResult
from runtime.policy.checkpoints import resolve_checkpoint
from runtime.policy.local.engine import EngineRequest, EngineResult, LocalEngine
from runtime.policy.placement import resolve_device, resolve_dtype
from runtime.policy.prompts import PromptEncoder

__all__ = ["LocalPolicy", "resolve_device", "resolve_dtype"]

log = get_logger("searchlearn.local")


class LocalPolicy:
    """A Policy served in process by a continuous-batching engine."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch: int = 64,
        max_pending: int | None = None,
        version: int = 0,
        name: str = "local",
        threads: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.name = name
        self._encoder = PromptEncoder(tokenizer, name)
        self.engine = LocalEngine(model, tokenizer, max_batch=max_batch, version=version, threads=threads)
        self._pending = anyio.Semaphore(max_pending or 4 * max_batch)

    @classmethod
    def from_path(cls, path: str | Path, *, device: str = "cpu", dtype: str = "float32", **kwargs: Any) -> LocalPolicy:
        """Load a checkpoint directory (or a named one) onto ``device`` (``auto``: the
        first GPU when torch sees one, else the CPU), its weights in ``dtype``
        (``float32`` or ``bfloat16``: the engine's KV cache takes the weights' dtype;
        logits are read in float32 either way)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        place, kind = resolve_device(device), resolve_dtype(dtype)
        directory = resolve_checkpoint(path)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model: Any = AutoModelForCausalLM.from_pretrained(directory, dtype=kind)
        return cls(model.to(place), tokenizer, name=str(directory), **kwargs)

    @property
    def version(self) -> int:
        return self.engine.version

    def encode(self, request: GenerationRequest) -> list[int]:
        """Token ids of the prompt (:class:`~runtime.policy.prompts.PromptEncoder`)."""
        return self._encoder(request)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        ids = self.encode(request)
        finished = anyio.Event()
        box: list[EngineResult] = []
        wake = _waker(finished)

        def done(result: EngineResult) -> None:
            box.append(result)
            wake()

        req = EngineRequest(
            prompt_ids=ids,
            n=request.n,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=list(request.stop or []),
            seed=request.seed,
            done=done,
        )
        async with self._pending:
            try:
                self.engine.submit(req)
            except ValueError as exc:
                raise PolicyRequestError(str(exc)) from None
            try:
                await finished.wait()
            finally:
                req.cancelled = not box
        result = box[0]
        if result.error is not None:
            raise result.error
        return GenerationResult(
            completions=[
                Completion(
                    text=s.text,
                    token_ids=s.token_ids,
                    logprobs=s.logprobs if request.logprobs else None,
                    finish_reason=s.finish_reason,
                    sample_logprobs=s.sample_logprobs if request.logprobs else None,
                    token_versions=s.token_versions if len(set(s.token_versions)) > 1 else None,
                    stop_reason=s.stop_reason,
                )
                for s in result.sequences
            ],
            prompt_tokens=result.prompt_tokens,
            completion_tokens=sum(len(s.token_ids) for s in result.sequences),
            policy_version=result.version,
            model=self.name,
        )

    def swap_weights(self, state_dict: dict[str, Any], version: int) -> None:
        """Serve ``version`` from the next decode step on; requests in flight continue
        under it, each token tagged with the version it was sampled under."""
        self.engine.swap_weights(state_dict, version)

    async def load_weights(self, state_dict: dict[str, Any], version: int) -> None:
        """Serve ``version`` from ``state_dict``; returns once the engine serves it."""
        swapped = threading.Event()
        self.engine.swap_weights(state_dict, version, swapped.set)
        await anyio.to_thread.run_sync(swapped.wait)

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.engine.close)

    async def __aenter__(self) -> LocalPolicy:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _waker(event: anyio.Event) -> Callable[[], None]:
    """A function any thread may call to set ``event`` in the current event loop,
    without waiting for the loop (the engine thread must never block on it)."""
    if sniffio.current_async_library() == "trio":
        import trio

        token = trio.lowlevel.current_trio_token()
        return lambda: token.run_sync_soon(event.set)
    loop = asyncio.get_running_loop()

    def wake() -> None:
        loop.call_soon_threadsafe(event.set)

    return wake
