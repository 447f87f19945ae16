"""The Policy protocol: one async call from a generation request to n completions.

Backends: :class:`~runtime.openai_policy.OpenAIPolicy` (any OpenAI-compatible server),
the local transformers engine, and :class:`ScriptedPolicy`, the package's own fake,
which answers from a script with a fixed latency (tests, examples, benchmarks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import anyio

__all__ = [
    "Completion",
    "GenerationRequest",
    "GenerationResult",
    "Policy",
    "ScriptedPolicy",
]


@dataclass(slots=True)
class GenerationRequest:
    """What to generate. Exactly one of ``messages`` (chat) or ``prompt`` (raw text).

    ``assistant_prefix`` is text the assistant has already written (earlier steps of
    the same episode); backends continue it rather than starting a new turn.
    """

    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    assistant_prefix: str = ""
    n: int = 1
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] | None = None
    logprobs: bool = False
    seed: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Completion:
    text: str
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    finish_reason: str | None = None


@dataclass(slots=True)
class GenerationResult:
    completions: list[Completion]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    policy_version: int | None = None
    model: str = ""


@runtime_checkable
class Policy(Protocol):
    """Anything that turns a :class:`GenerationRequest` into n completions."""

    async def generate(self, request: GenerationRequest) -> GenerationResult: ...

    async def aclose(self) -> None: ...


Script = Callable[[GenerationRequest, int], str] | Sequence[str]


class ScriptedPolicy:
    """A fake policy: completion ``i`` of a call is ``script(request, i)``.

    ``script`` is a function of the request and the completion's index, or a list of
    texts handed out in turn (one per completion, cycling). ``latency`` seconds pass
    per call; tokens are counted as whitespace-separated words. ``fail`` may raise for
    a request, to inject faults.
    """

    def __init__(
        self,
        script: Script,
        *,
        latency: float = 0.0,
        version: int = 0,
        fail: Callable[[GenerationRequest], None] | None = None,
    ) -> None:
        self._script = script
        self._cursor = 0
        self.latency = latency
        self.version = version
        self.fail = fail
        self.calls = 0

    def _text(self, request: GenerationRequest, i: int) -> str:
        if callable(self._script):
            return self._script(request, i)
        text = self._script[self._cursor % len(self._script)]
        self._cursor += 1
        return text

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        self.calls += 1
        if self.latency:
            await anyio.sleep(self.latency)
        if self.fail is not None:
            self.fail(request)
        texts = [self._text(request, i) for i in range(request.n)]
        completions = []
        for text in texts:
            if request.stop:
                for s in request.stop:
                    text = text.split(s, 1)[0]
            completions.append(Completion(text=text, finish_reason="stop"))
        prompt = request.prompt or " ".join(m["content"] for m in request.messages or [])
        return GenerationResult(
            completions=completions,
            prompt_tokens=len((prompt + request.assistant_prefix).split()),
            completion_tokens=sum(len(c.text.split()) for c in completions),
            policy_version=self.version,
            model="scripted",
        )

    async def aclose(self) -> None:
        return None

    async def __aenter__(self) -> ScriptedPolicy:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
