"""Tool-call formats: how a model's step is read as a tool call, and how the
environment's answer is written back as an observation.

A format is a component of the ``tool_formats`` registry (``environment.format``).
Built in: ``compact``, one call per line, a format a tiny tokenizer learns from a few
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
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal

from pydantic import Field

from runtime.core.registry import Component
from runtime.tools.base import ToolCall, ToolOutput

__all__ = ["CallFormat", "CompactFormat"]

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
