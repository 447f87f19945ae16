"""The OpenAI tool protocol on the wire: the ``tools`` field of a chat request, a reply's
``tool_calls``, and the path's tool turns as ``assistant`` / ``tool`` messages.

A policy's reply is text in searchlearn (one completion is one node), so a reply that
calls a tool is written as text the ``openai`` call format reads back
(:class:`~runtime.tools.formats.OpenAIFormat`)::

    <tool_call>{"name": "calc", "arguments": {"expression": "12*7"}}</tool_call>

(the reply's content, if it had any beside the call, before it on the same line). On
the next request of that path the environment's format gives the tool turns back as
chat messages (``GenerationRequest.assistant_messages``): the call as an ``assistant``
message with ``tool_calls``, the observation as a ``tool`` message with its
``tool_call_id``, so the server renders both with the model's own template.

Design decisions:
- One call per node: a reply with several ``tool_calls`` keeps the first (logged); the
  request does not send ``parallel_tool_calls`` (not every server accepts it).
- Arguments the server returns as a string that is no JSON object are kept as that
  string, so the call reads as malformed and a verifier can reject it before it runs.
- Stop strings are not sent beside ``tools``: a server's tool-call parser must see the
  whole call (Qwen's template writes it over three lines), so the reply's text is cut
  at the step delimiter here, and a reply that is a tool call is never cut.
- The text form is Hermes's ``<tool_call>`` line (what Qwen2.5, SmolLM3 and others
  write in their own templates), so a call read from an HTTP reply and one a local
  model wrote look alike in a stored episode.
"""

from __future__ import annotations

import json
from typing import Any

from runtime.core.log import get_logger
from runtime.policy.base import GenerationRequest

__all__ = ["TOOL_CALL_CLOSE", "TOOL_CALL_OPEN", "call_text", "chat_turns", "reply_call"]

log = get_logger("searchlearn.openai")

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"


def call_text(name: str, arguments: Any, content: str = "") -> str:
    """A tool call as one line of text: ``content`` (what the reply said beside the call,
    newlines made spaces), then ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``.
    ``arguments`` is an object, or the JSON text of one (text that is not stays a string)."""
    if isinstance(arguments, str):
        try:
            decoded = json.loads(arguments)
        except ValueError:
            decoded = arguments
        arguments = decoded if isinstance(decoded, dict) else arguments
    call = TOOL_CALL_OPEN + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + TOOL_CALL_CLOSE
    before = " ".join(content.split())
    return f"{before} {call}" if before else call


def reply_call(message: Any) -> str | None:
    """The text of the first tool call in a chat reply's ``message`` (with its content),
    or None where it calls none."""
    if not isinstance(message, dict):
        return None
    calls = message.get("tool_calls")
    if not isinstance(calls, list) or not calls:
        return None
    if len(calls) > 1:
        log.warning("a reply made several tool calls; one node holds one call, the first is kept", n=len(calls))
    first = calls[0] if isinstance(calls[0], dict) else {}
    function = first.get("function")
    if not isinstance(function, dict):
        function = {}
    name = function.get("name")
    content = message.get("content")
    return call_text(
        name if isinstance(name, str) else "",
        function.get("arguments", {}),
        content if isinstance(content, str) else "",
    )


def chat_turns(request: GenerationRequest) -> tuple[list[dict[str, Any]], str]:
    """The request's messages followed by its tool turns (``assistant_messages``), and the
    assistant text written since the last tool answer (what the reply continues)."""
    messages: list[dict[str, Any]] = list(request.messages or [{"role": "user", "content": request.prompt or ""}])
    if request.assistant_messages is None:
        return messages, request.assistant_prefix
    turns = [dict(m) for m in request.assistant_messages]
    prefix = ""
    if turns and turns[-1].get("role") == "assistant" and not turns[-1].get("tool_calls"):
        prefix = str(turns.pop().get("content") or "")
    return messages + turns, prefix
