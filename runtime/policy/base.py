"""The Policy protocol: one async call from a generation request to n completions.

Backends, named in a config by :mod:`runtime.policy.backends`:
:class:`~runtime.policy.openai_compatible.OpenAIPolicy` (any OpenAI-compatible server),
the local transformers engine, vLLM's in-process engine, and
:class:`~runtime.policy.scripted.ScriptedPolicy`, the package's own fake. A remote API's
backend is built on the shared admission layer, :mod:`runtime.policy.admission`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "Completion",
    "GenerationRequest",
    "GenerationResult",
    "Mode",
    "Policy",
    "Server",
    "WeightedPolicy",
]


Mode = Literal["chat", "completion"]
"""How an OpenAI-compatible backend is called: chat completions or plain completions."""
Server = Literal["openai", "vllm", "sglang", "transformers", "llamacpp", "other"]
"""Which server software sits behind an OpenAI-compatible endpoint, for its known quirks."""


@dataclass(slots=True)
class GenerationRequest:
    """What to generate. Exactly one of ``messages`` (chat) or ``prompt`` (raw text).

    ``assistant_prefix`` is text the assistant has already written (earlier steps of
    the same episode); backends continue it rather than starting a new turn.
    """

    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    assistant_prefix: str = ""
    assistant_parts: list[str | list[int]] | None = None
    """``assistant_prefix`` as pieces, in order: token ids exactly as the policy sampled
    them (a step's stop-string tokens included), or text (a strategy's fork, a step a
    text-only backend returned, a delimiter after a step that ended otherwise). Token
    ids are the record: a backend that takes ids sends ``encode(prompt) + parts``, each
    text piece encoded on its own and each id piece as it is, so generated text is
    never re-encoded and a learner rebuilds the very sequence the policy saw. The
    pieces hold the same steps as ``assistant_prefix`` (not always the same characters:
    a node's text is stripped, its ids are not); a text-only backend sends the prefix.
    None: text only (``assistant_prefix``, encoded with the prompt as one string)."""
    tools: list[dict[str, Any]] | None = None
    """The tools the prompt offers, as the ``{"type": "function", "function": {...}}``
    schemas chat templates take: rendered into the prompt by the model's own template
    (``apply_chat_template(tools=...)``), or sent as the OpenAI ``tools`` field. None:
    none (the environment's call format decides)."""
    assistant_messages: list[dict[str, Any]] | None = None
    """``assistant_prefix`` as OpenAI chat messages, where the environment's call format
    speaks the OpenAI tool protocol (``openai``): per tool call an ``assistant`` message
    (the text written before it and its ``tool_calls``) and the ``tool`` message that
    answers it (``tool_call_id``), then an ``assistant`` message without ``tool_calls``
    holding the text written since the last answer, if any. A chat backend sends them
    after ``messages`` and continues that last text; other backends ignore them. None:
    the prefix is text only."""
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
    """One sampled continuation.

    ``text`` is cut before the stop string it ended on (what verifiers and displays
    read), but ``token_ids`` and the per-token lists keep every token the model
    sampled, the tokens that spelled the stop string included: they are the record a
    continuation sends on and a learner trains on. Decoded, they give ``text``, the stop
    string, and whatever else the last token held (a token is never split).
    An end-of-sequence token is not kept (a learner trains the end of turn itself after
    a finished answer); ``stop_reason`` says which way a completion ended.
    """

    text: str
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    """Per token, the model's log-probability (raw distribution), where the backend gives it."""
    finish_reason: str | None = None
    sample_logprobs: list[float] | None = None
    """Per token, the log-probability under the distribution it was sampled from
    (temperature and top-p applied): the behaviour policy. The local engine gives it."""
    token_versions: list[int] | None = None
    """Per token, the policy version it was sampled under, where a weight swap landed
    mid-sequence (partial rollouts); None: every token under the result's version."""
    stop_reason: str | None = None
    """The stop string the completion ended on, whose tokens end ``token_ids`` (vLLM's
    ``stop_reason``); None: it ended on the end-of-sequence token or its token cap (its
    ids hold no stop string), or the backend gives no ids. A backend whose ids include a
    stop string must say so here, or a continuation would repeat the delimiter."""
    end_of_turn: bool | None = None
    """Whether the completion ended on the model's end of turn, where a text-only backend
    can tell (``transformers serve`` writes the stop string it stopped on into the text);
    None: read from the ids (finish reason ``stop`` with no ``stop_reason``), or unknown."""


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


@runtime_checkable
class WeightedPolicy(Policy, Protocol):
    """A policy whose weights a learner can replace (the local engine): the online loop
    publishes to it, the evaluator loads a version into it."""

    @property
    def version(self) -> int:
        """The version of the weights it now samples with."""
        ...

    def swap_weights(self, state_dict: dict[str, Any], version: int) -> None: ...

    async def load_weights(self, state_dict: dict[str, Any], version: int) -> None: ...
