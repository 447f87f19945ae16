"""How the OpenAI-compatible backend continues the assistant's text on each kind of
server: a step is continued with the model's own chat template, never with an invented
extra turn (DESIGN: "A step is continued with the model's own chat template").

Three protocols, chosen by ``mode`` and ``server`` (:class:`~runtime.policy.openai_compatible.OpenAIPolicy`):

- **Completion mode** (open models: vLLM, SGLang, ``transformers serve``, llama.cpp).
  The prompt is the model's chat template rendered by its own tokenizer
  (``apply_chat_template(messages, add_generation_prompt=True)``; the tokenizer is
  loaded from a local directory or a named checkpoint, ``policy.tokenizer``), followed
  by the assistant's text so far. A server that takes token-id prompts (vLLM) gets ids:
  the template's ids, then each of ``GenerationRequest.assistant_parts`` (id parts as
  the policy sampled them, text parts encoded on their own), so sampled text is never
  re-encoded. Other servers get the text, and the completions they return are
  text-only (no token ids: the server re-encoded the prefix, so ids would not be the
  record of what it conditioned on).
- **Chat mode on a server that continues a final assistant message**: vLLM and SGLang
  (``continue_final_message: true, add_generation_prompt: false`` in the body: the
  server renders the template without closing that message), llama.cpp (prefills a
  trailing assistant message by default). The text so far is that final message.
- **Chat mode on a server that cannot** (OpenAI and other hosted APIs; ``transformers
  serve``, whose chat route always opens a new assistant turn): the accepted text is
  shown inside the user message (:data:`SOLUTION_SO_FAR`) and the model is asked for
  the rest of the solution from the next step; the first new step of its reply is
  taken (:func:`first_new_step`: leading blank lines and steps that restate accepted
  ones are skipped, then the reply is cut at the first stop string). The stop strings
  are applied here rather than sent, so a reply that opens with a newline or restates
  a step does not end the step empty; a step call therefore generates up to its token
  cap. This replaces an earlier protocol that appended a "Continue." user turn after
  the assistant message, after which chat models restarted the solution and rarely
  answered (measured 5 % on SmolLM2-135M-Instruct's chain of thought).

Where the prefix goes as text (completion mode on a text server, chat mode continuing
the assistant message), the server re-encodes it: a step the model ended with a blank
line ("...\n\n", often one token) comes back as "...\n", and the model's next token is
the missing newline, so the next step stops at once, empty, which ends an episode (a
likely cause of the empty next steps reported for SmolLM2-135M-Instruct in completion
mode; not measured here). Such a completion is asked again with the delimiter accepted
into the prefix (:func:`past_blank_lines`, once) where ``policy.blank_line_retry`` asks for
it; off by default, since on ``transformers serve`` the same immediate stop also follows a
step the model ended with its end-of-turn, and retrying then kept paths going to
``max_steps`` (measured, docs/benchmarks.md). With ids the prompt ends on
the very token the model sampled, so this does not arise there.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from runtime.core.errors import ConfigError
from runtime.core.log import get_logger
from runtime.policy.base import GenerationRequest, GenerationResult

__all__ = [
    "SOLUTION_SO_FAR",
    "ChatTemplate",
    "first_new_step",
    "past_blank_lines",
    "resolve_tokenizer",
    "show_solution_so_far",
]

log = get_logger("searchlearn.openai")

SOLUTION_SO_FAR = "Your solution so far:\n\n{prefix}\n\nContinue from the next step. Do not repeat the steps above."
"""What a chat model that cannot continue an assistant message is shown after the
question (the third protocol of the module docstring)."""

_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")
BLANK_LINE_RETRIES = 1
"""Times a step that stopped at once on its delimiter is asked again past it. Once: a
text server does not say whether an empty completion stopped on the delimiter or on
the end-of-sequence token (a model that is done), and the second costs a call per
finished episode for nothing."""
_CACHED_PROMPTS = 4096  # rendered templates kept per policy (one per task is the common case)


def resolve_tokenizer(name_or_path: str | Path) -> Path:
    """The tokenizer directory ``name_or_path`` names: a named checkpoint (``bundled``,
    ``bundled-weak``, a fetched model such as ``smollm2-135m``: resolved as the local
    policy resolves ``policy.path``) or a directory holding a tokenizer."""
    from runtime.policy.checkpoints import FETCHABLE, named_checkpoints, resolve_checkpoint

    name = str(name_or_path)
    names = named_checkpoints()
    path = Path(name).expanduser()
    if name in names or (name in FETCHABLE and not path.exists()):
        return resolve_checkpoint(name)
    if path.is_dir() and any((path / f).is_file() for f in _TOKENIZER_FILES):
        return path
    known = ", ".join(sorted({*names, *FETCHABLE}))
    raise FileNotFoundError(
        f"{name!r} is neither a checkpoint name ({known}) nor a directory with a tokenizer "
        f"({' or '.join(_TOKENIZER_FILES)})"
    )


class ChatTemplate:
    """A model's own chat template, rendered by its tokenizer, as text or token ids.

    Rendered prompts are cached per message list (a task's steps share one), at most
    ``_CACHED_PROMPTS`` of them.
    """

    def __init__(self, tokenizer: Any, source: str = "the tokenizer") -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"policy.tokenizer: {source} has no chat template; completion mode renders chat messages "
                "with the model's own template (send raw prompts, or name a tokenizer that has one)"
            )
        self.tokenizer = tokenizer
        self.source = source
        self._texts: OrderedDict[str, str] = OrderedDict()
        self._ids: OrderedDict[str, list[int]] = OrderedDict()

    @classmethod
    def load(cls, name_or_path: str | Path) -> ChatTemplate:
        """The template of the tokenizer at ``name_or_path`` (see :func:`resolve_tokenizer`);
        a ConfigError naming ``policy.tokenizer`` if there is none."""
        try:
            directory = resolve_tokenizer(name_or_path)
        except FileNotFoundError as exc:
            raise ConfigError(f"policy.tokenizer: {exc}") from None
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"policy.tokenizer: cannot load a tokenizer from {directory}: {exc}") from None
        return cls(tokenizer, str(name_or_path))

    def text(self, messages: Sequence[dict[str, str]], tools: Sequence[dict[str, Any]] | None = None) -> str:
        """The prompt text: ``messages`` (and ``tools``, the schemas the template renders)
        through the template, the assistant turn opened."""
        key = _key(messages, tools)
        text = self._texts.get(key)
        if text is None:
            extra = {"tools": list(tools)} if tools else {}
            text = self.tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=True, **extra
            )
            _remember(self._texts, key, text)
        return str(text)

    def ids(self, messages: Sequence[dict[str, str]], tools: Sequence[dict[str, Any]] | None = None) -> list[int]:
        """The prompt's token ids: the rendered text encoded without added special tokens
        (what ``apply_chat_template(tokenize=True)`` does, and how the local engine and the
        learners encode a rendered prompt, so all three agree on the sequence)."""
        key = _key(messages, tools)
        ids = self._ids.get(key)
        if ids is None:
            ids = self.encode(self.text(messages, tools))
            _remember(self._ids, key, ids)
        return list(ids)

    def encode(self, text: str) -> list[int]:
        """``text`` on its own, without special tokens (a text part of the assistant's turn)."""
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def prompt_ids(
        self,
        messages: Sequence[dict[str, str]],
        parts: Sequence[str | list[int]],
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> list[int]:
        """Template ids, then the assistant's parts: ids as they are, text encoded alone."""
        ids = self.ids(messages, tools)
        for part in parts:
            ids += self.encode(part) if isinstance(part, str) else [int(i) for i in part]
        return ids


def _key(messages: Sequence[dict[str, str]], tools: Sequence[dict[str, Any]] | None = None) -> str:
    return json.dumps([list(messages), list(tools or [])], sort_keys=True, ensure_ascii=False)


def _remember(cache: OrderedDict[str, Any], key: str, value: Any) -> None:
    cache[key] = value
    if len(cache) > _CACHED_PROMPTS:
        cache.popitem(last=False)


def show_solution_so_far(messages: Sequence[dict[str, str]], prefix: str) -> list[dict[str, str]]:
    """``messages`` with the accepted text shown in the last user message (appended as
    a user message only where the conversation does not end with one)."""
    out = [dict(m) for m in messages]
    note = SOLUTION_SO_FAR.format(prefix=prefix.rstrip())
    if out and out[-1].get("role") == "user":
        out[-1]["content"] = f"{out[-1]['content']}\n\n{note}"
    else:
        out.append({"role": "user", "content": note})
    return out


def first_new_step(reply: str, prefix: str, stop: Sequence[str] | None) -> tuple[str, bool]:
    """The first step of ``reply`` that is new: leading whitespace and steps that restate
    an accepted step of ``prefix`` are skipped, then the text is cut at the first stop
    string. Returns the step and whether a stop string ended it."""
    stops = [s for s in stop or [] if s]
    if not stops:
        return reply.lstrip(), False
    accepted = {step.strip() for step in _split(prefix, stops) if step.strip()}
    rest = reply
    while True:
        rest = rest.lstrip()
        cut = _first_stop(rest, stops)
        if cut is None:
            return rest, False
        at, length = cut
        step = rest[:at]
        if step.strip() in accepted:
            rest = rest[at + length :]
            continue
        return step, True


def _first_stop(text: str, stops: Sequence[str]) -> tuple[int, int] | None:
    found = [(i, len(s)) for s in stops if (i := text.find(s)) >= 0]
    return min(found) if found else None


def _split(text: str, stops: Sequence[str]) -> list[str]:
    steps = []
    while (cut := _first_stop(text, stops)) is not None:
        steps.append(text[: cut[0]])
        text = text[cut[0] + cut[1] :]
    return [*steps, text]


async def past_blank_lines(
    generate: Callable[[GenerationRequest], Awaitable[GenerationResult]],
    request: GenerationRequest,
    result: GenerationResult,
) -> None:
    """Completions of ``result`` that stopped at once on the request's one stop string
    (nothing but whitespace before it) are replaced by a new sample from the prefix with
    that text and the stop string accepted into it, at most :data:`BLANK_LINE_RETRIES`
    times; their tokens and cost are added to ``result``'s usage."""
    stop = (request.stop or [""])[0]
    for _ in range(BLANK_LINE_RETRIES):
        empty = [
            i
            for i, c in enumerate(result.completions)
            if not c.text.strip() and c.finish_reason == "stop" and not c.end_of_turn
        ]
        if not empty:
            return
        log.info("a step stopped at once on the delimiter; continuing past the blank line", n=len(empty))
        groups: dict[str, list[int]] = {}
        for i in empty:
            groups.setdefault(request.assistant_prefix + result.completions[i].text + stop, []).append(i)
        for prefix, indexes in groups.items():
            again = replace(request, assistant_prefix=prefix, assistant_parts=None, n=len(indexes))
            more = await generate(again)
            for i, c in zip(indexes, more.completions, strict=False):
                result.completions[i] = c
            result.prompt_tokens += more.prompt_tokens
            result.completion_tokens += more.completion_tokens
            result.cost += more.cost
