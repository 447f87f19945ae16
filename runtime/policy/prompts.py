"""How an in-process engine (the local one, vLLM's) turns a request into prompt token ids.

Chat messages go through the checkpoint's chat template with the generation prompt (and
the request's ``tools``, which the template renders as it was trained to); a
checkpoint without one gets the documented plain-prompt fallback (contents joined by
blank lines, as completion mode's ``plain`` template), warned once per policy.

Token ids are the record: a request that carries ``assistant_parts`` is sent as
``encode(rendered prompt) + parts``, each text piece encoded on its own and each id
piece (what the policy sampled for an earlier step) appended as it is, so generated
text is never re-encoded. :func:`encode_parts` is that rule, and :func:`chat_prompt`
the rendering of the messages and tools, both shared with the learners, which rebuild
the same sequence to train on. A request without parts (text only)
encodes the prompt and ``assistant_prefix`` as one string, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from runtime.core.log import get_logger
from runtime.policy.base import GenerationRequest

__all__ = ["PromptEncoder", "chat_prompt", "encode_parts"]

log = get_logger("searchlearn.policy")


def encode_parts(tokenizer: Any, parts: Sequence[str | Sequence[int]]) -> list[int]:
    """Token ids of ``parts``: text pieces encoded one by one (no special tokens added),
    id pieces as they are."""
    ids: list[int] = []
    for part in parts:
        if isinstance(part, str):
            if part:
                ids += tokenizer(part, add_special_tokens=False)["input_ids"]
        else:
            ids += part
    return ids


def chat_prompt(
    tokenizer: Any, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
) -> str:
    """``messages`` through ``tokenizer``'s chat template with the generation prompt, and
    ``tools`` where the prompt offers any (``apply_chat_template(tools=...)``): how the
    engine renders a chat request, and how the learners render an episode's prompt
    (:func:`~runtime.tools.base.task_prompt`) to train under it."""
    extra = {"tools": list(tools)} if tools else {}
    text: str = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True, **extra)
    return text


class PromptEncoder:
    """Renders requests for one tokenizer; remembers whether it has warned."""

    def __init__(self, tokenizer: Any, name: str) -> None:
        self.tokenizer = tokenizer
        self.name = name
        self._warned_plain = False

    def render(self, request: GenerationRequest) -> str:
        """The prompt as text: the raw prompt, or the messages through the chat template
        (with the generation prompt) or the plain fallback."""
        if request.prompt is not None:
            return request.prompt
        if getattr(self.tokenizer, "chat_template", None) is None:
            if not self._warned_plain:
                self._warned_plain = True
                log.warning("checkpoint has no chat template; messages are joined as a plain prompt", name=self.name)
            return "\n\n".join(m["content"] for m in request.messages or []) + "\n\n"
        return chat_prompt(self.tokenizer, request.messages or [], request.tools)

    def __call__(self, request: GenerationRequest) -> list[int]:
        text = self.render(request)
        if request.assistant_parts is None:
            ids: list[int] = self.tokenizer(text + request.assistant_prefix, add_special_tokens=False)["input_ids"]
            return ids
        return encode_parts(self.tokenizer, [text, *request.assistant_parts])
