"""How an in-process engine (the local one, vLLM's) turns a request into prompt token ids.

Chat messages go through the checkpoint's chat template with the generation prompt; a
checkpoint without one gets the documented plain-prompt fallback (contents joined by
blank lines, as completion mode's ``plain`` template), warned once per policy.
"""

from __future__ import annotations

from typing import Any

from runtime.core.log import get_logger
from runtime.policy.base import GenerationRequest

__all__ = ["PromptEncoder"]

log = get_logger("searchlearn.policy")


class PromptEncoder:
    """Renders requests for one tokenizer; remembers whether it has warned."""

    def __init__(self, tokenizer: Any, name: str) -> None:
        self.tokenizer = tokenizer
        self.name = name
        self._warned_plain = False

    def __call__(self, request: GenerationRequest) -> list[int]:
        if request.prompt is not None:
            text = request.prompt
        elif getattr(self.tokenizer, "chat_template", None) is None:
            if not self._warned_plain:
                self._warned_plain = True
                log.warning("checkpoint has no chat template; messages are joined as a plain prompt", name=self.name)
            text = "\n\n".join(m["content"] for m in request.messages or []) + "\n\n"
        else:
            text = self.tokenizer.apply_chat_template(
                request.messages or [], tokenize=False, add_generation_prompt=True
            )
        ids: list[int] = self.tokenizer(text + request.assistant_prefix, add_special_tokens=False)["input_ids"]
        return ids
