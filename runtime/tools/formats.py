"""Tool-call formats: how a model's step is read as a tool call, how the environment's
answer is written back as an observation, and what the prompt offers.

A format is a component of the ``tool_formats`` registry (``environment.format``).
Built in: ``compact`` (the default), ``chat_template`` (the model's own template's
call and tool-turn syntax, :mod:`runtime.tools.template_format`) and ``openai`` (the
OpenAI ``tools`` / ``tool_calls`` fields of an HTTP chat backend).

``compact`` is one call per line, a format a tiny tokenizer learns from a few
thousand traces::

    4*5=20, leaving 3+20-6
    call: calc(3+20-6)
    = 17
    Answer: 17

Design decisions:
- A step is a call when it starts with the format's ``prefix``; a step that starts so
  and does not parse is a *malformed* call (:attr:`ToolCall.error`), which a
  verifier rejects before anything runs, rather than a plain step.
- ``name(text)`` passes ``text`` to a tool's only parameter, so the model never writes
  JSON for a one-argument tool; ``name({...})`` passes a JSON object of arguments by
  name, for tools with several.
- An observation is one line (``= 84``, ``= error: ...``): newlines in a tool's output
  become spaces, so the step delimiter still separates steps.
- ``compact`` offers no tools to the prompt (the tiny policy learnt the syntax from
  traces); a format that does returns the schemas from :meth:`CallFormat.prompt`.

``openai`` reads the line the OpenAI backend writes for a reply's ``tool_calls``
(:mod:`runtime.policy.openai_tools`), answers with the tool's output as it is, and
gives the path back as ``assistant`` / ``tool`` messages
(:meth:`CallFormat.assistant_messages`); its prompt carries the tools' schemas, which
the backend sends as the ``tools`` field. It is for chat-mode HTTP backends, whose
server renders the template; ``chat_template`` is for engines that render it here.

The JSON convention both read (``{"name": ..., "arguments": {...}}`` between
markers) has one reader, :func:`read_json_call`: the fallback parser of
``chat_template`` and the whole parser of ``openai``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field

from runtime.core.registry import Component
from runtime.core.types import Node
from runtime.policy.openai_tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from runtime.tools.base import ToolCall, ToolOutput

__all__ = ["CallFormat", "CompactFormat", "OpenAIFormat", "call_from_object", "read_json_call"]

_CALL = re.compile(r"^(?P<name>[A-Za-z_][\w.-]*)\((?P<args>.*)\)$", re.DOTALL)


class CallFormat(Component):
    """Base of the tool-call formats a config can name (``environment.format``)."""

    family: ClassVar[str] = "tool_formats"
    name: str
    """What configs call the format."""

    def parse(self, text: str, parameters: Mapping[str, Sequence[str]]) -> ToolCall | None:
        """The call ``text`` makes (``parameters``: each tool's parameter names), or None."""
        raise NotImplementedError

    def observation(self, output: ToolOutput) -> str:
        """The observation text of a tool's output."""
        raise NotImplementedError

    def error(self, message: str) -> str:
        """The observation text of an error the environment reports."""
        raise NotImplementedError

    def prompt(
        self, messages: Sequence[dict[str, str]], tools: Sequence[dict[str, Any]]
    ) -> tuple[list[dict[str, str]], list[dict[str, Any]] | None]:
        """The task's ``messages`` as the policy is to see them, and the tool schemas its
        prompt offers (``GenerationRequest.tools``; None: none). By default the messages
        as they are and no tools."""
        return list(messages), None

    def assistant_messages(self, path: Sequence[Node], delimiter: str) -> list[dict[str, Any]] | None:
        """``path`` (the steps so far) as chat messages for a backend that speaks the
        OpenAI tool protocol (``GenerationRequest.assistant_messages``), or None: the
        path goes as text. None by default."""
        return None


class CompactFormat(CallFormat):
    """``call: name(argument)`` on its own line, answered by ``= result``."""

    name: Literal["compact"] = "compact"
    prefix: str = Field("call: ", min_length=1)
    """What a call step starts with."""
    answer: str = Field("= ", min_length=1)
    """What an observation line starts with."""

    def parse(self, text: str, parameters: Mapping[str, Sequence[str]]) -> ToolCall | None:
        text = text.strip()
        if not text.startswith(self.prefix):
            return None
        body = text[len(self.prefix) :].strip()
        match = _CALL.match(body)
        if match is None:
            return ToolCall("", None, text, f"malformed call {body[:80]!r}: expected name(argument)")
        name, raw = match["name"], match["args"].strip()
        params = parameters.get(name)
        if params is None:
            return ToolCall(name, None, text)  # an unknown tool: ``check`` names the known ones
        if raw.startswith("{"):
            try:
                arguments = json.loads(raw)
            except json.JSONDecodeError as exc:
                return ToolCall(name, None, text, f"arguments of {name} are not a JSON object: {exc.msg}")
            if not isinstance(arguments, dict):
                return ToolCall(name, None, text, f"arguments of {name} are not a JSON object")
            return ToolCall(name, arguments, text)
        if len(params) == 1:
            return ToolCall(name, {params[0]: raw}, text)
        if not params and not raw:
            return ToolCall(name, {}, text)
        return ToolCall(name, None, text, f"{name} takes {len(params)} arguments: write them as a JSON object")

    def observation(self, output: ToolOutput) -> str:
        if output.error is not None:
            return self.error(output.error)
        return self.answer + " ".join(output.text.split("\n")).strip()

    def error(self, message: str) -> str:
        return self.answer + "error: " + " ".join(message.split("\n")).strip()


# -- the JSON convention -----------------------------------------------------------------


def call_from_object(obj: Any, text: str) -> ToolCall:
    """The call a decoded JSON value makes: an object with ``name`` and ``arguments`` (an
    object, or the JSON text of one; ``parameters``, as Llama's templates write it, is
    read too). Anything else is a malformed call."""
    if not isinstance(obj, dict):
        return ToolCall("", None, text, 'a call is a JSON object {"name": ..., "arguments": {...}}')
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return ToolCall("", None, text, "the call names no tool")
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return ToolCall(name, None, text, f"arguments of {name} are not JSON: {exc.msg}")
    if not isinstance(arguments, dict):
        return ToolCall(name, None, text, f"arguments of {name} are not a JSON object")
    return ToolCall(name, arguments, text)


def read_json_call(text: str, open_marker: str, close_marker: str) -> ToolCall | None:
    """The call ``text`` makes as ``open_marker {"name": ..., "arguments": {...}}
    close_marker`` (text before the opening marker is the model's own words), or None
    where it opens none. Without markers a call is a step that is a JSON object. One
    call per step; an unclosed call, a second call or a body that is no JSON object is a
    malformed call (:attr:`ToolCall.error`)."""
    if open_marker:
        at = text.find(open_marker)
        if at < 0:
            return None
        start = at + len(open_marker)
    else:
        stripped = text.lstrip()
        if not stripped.startswith("{"):
            return None
        start = len(text) - len(stripped)
    body = text[start:]
    if close_marker:
        end = body.find(close_marker)
        if end < 0:
            return ToolCall("", None, text, f"unclosed call: no {close_marker!r} after the call")
        if open_marker and open_marker in body[end:]:
            return ToolCall("", None, text, "one call per step: the step opens a second call")
        body = body[:end]
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as exc:
        return ToolCall("", None, text, f"the call is not JSON: {exc.msg} in {body.strip()[:80]!r}")
    return call_from_object(obj, text)


class OpenAIFormat(CallFormat):
    """The OpenAI tool protocol for chat-mode HTTP backends: the request carries the
    tools' schemas (``tools``), a reply's ``tool_calls`` is a call node, and an
    observation goes back as a ``tool`` message with the call's ``tool_call_id``."""

    name: Literal["openai"] = "openai"

    def parse(self, text: str, parameters: Mapping[str, Sequence[str]]) -> ToolCall | None:
        return read_json_call(text, TOOL_CALL_OPEN, TOOL_CALL_CLOSE)

    def observation(self, output: ToolOutput) -> str:
        return self.error(output.error) if output.error is not None else output.text

    def error(self, message: str) -> str:
        return "error: " + message

    def prompt(
        self, messages: Sequence[dict[str, str]], tools: Sequence[dict[str, Any]]
    ) -> tuple[list[dict[str, str]], list[dict[str, Any]] | None]:
        return list(messages), list(tools) or None

    def assistant_messages(self, path: Sequence[Node], delimiter: str) -> list[dict[str, Any]] | None:
        """Per answered call an ``assistant`` message (the text written since the last
        answer, the call as ``tool_calls`` with id ``call_<node id>``) and a ``tool``
        message; then the text written since, if any. None where no call was answered
        (the path is text). A call without its answer on the path is text."""
        out: list[dict[str, Any]] = []
        written: list[str] = []
        for i, node in enumerate(path):
            answered = i + 1 < len(path) and path[i + 1].kind == "observation" and path[i + 1].parent == node.id
            if node.kind == "call" and answered:
                before = node.text.partition(TOOL_CALL_OPEN)[0].strip()
                content = delimiter.join([*written, before] if before else written)
                call = {"name": _call_name(node), "arguments": _call_arguments(node)}
                tool_call = {"id": f"call_{node.id}", "type": "function", "function": call}
                out.append({"role": "assistant", "content": content or None, "tool_calls": [tool_call]})
                written = []
            elif node.kind == "observation" and node.parent is not None:
                out.append({"role": "tool", "tool_call_id": f"call_{node.parent}", "content": node.text})
            else:
                written.append(node.text)
        if not out:
            return None
        if written:
            out.append({"role": "assistant", "content": delimiter.join(written) + delimiter})
        return out


def _call_name(node: Node) -> str:
    call = node.meta.get("call") or {}
    return str(call.get("name") or "")


def _call_arguments(node: Node) -> str:
    """The call's arguments as the JSON text the protocol carries: the parsed object, or
    for a malformed call the text it gave (so the server sees what the model sent)."""
    arguments = (node.meta.get("call") or {}).get("arguments")
    if isinstance(arguments, dict):
        return json.dumps(arguments, ensure_ascii=False)
    body = node.text.partition(TOOL_CALL_OPEN)[2].rpartition(TOOL_CALL_CLOSE)[0]
    try:
        raw = json.loads(body).get("arguments")
    except (ValueError, AttributeError):
        return "{}"
    return raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False)
