"""ScriptedPolicy: the package's own fake policy, which answers from a script with a
fixed latency (tests, examples, benchmarks)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import anyio

from runtime.policy.base import Completion, GenerationRequest, GenerationResult

__all__ = ["ScriptedPolicy"]


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
        if not callable(script) and not script:
            raise ValueError("a scripted policy needs at least one text (script is empty)")
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
