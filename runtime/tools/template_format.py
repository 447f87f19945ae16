"""The ``chat_template`` call format: tool calls and tool turns as the model's own chat
template writes them.

``environment.format: {name: chat_template, tokenizer: smollm2-135m}`` reads the syntax
off the tokenizer's template once, by rendering probe conversations through
``apply_chat_template``:

- **the call**: an assistant message with ``tool_calls`` shows how the template writes
  a call (Qwen2.5's ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``).
  A template that writes none (SmolLM2's, the tiny policy's ChatML) gets Hermes's
  ``<tool_call>`` convention, which those model families' larger siblings use.
- **the observation**: a ``tool`` message after the assistant's turn is rendered and the
  text around its content kept, so an observation is the template's own tool turn: the
  assistant's end of turn, the tool role (``<|im_start|>tool``, or Qwen's ``user`` turn
  with ``<tool_response>``), the result, and the next assistant header.
- **the tools**: the schemas go to ``apply_chat_template(tools=...)`` with the prompt
  (``GenerationRequest.tools``). A template that ignores them gets a system message that
  lists them and shows the call syntax (``describe_tools``).

A step is parsed through transformers' response parser
(``transformers.utils.chat_parsing.parse_response``, transformers 5) with the
tokenizer's own ``response_template`` where it declares one, else with one built from
the call syntax read off the template; where that parser cannot read the step (it
raises on broken JSON) the JSON reader of :mod:`runtime.tools.formats` names what is
wrong, so a malformed call is a call a verifier rejects before it runs.

Design decisions:
- A call is one step: written on one line by default (``one_line``; the template's
  newlines inside the markers dropped), so the default step delimiter ends the step
  after it. The parser reads a call written over several lines too.
- Token ids: an observation is encoded on its own and the step delimiter follows it
  (:func:`~runtime.core.types.path_pieces`; the episode stores it without its final
  newline), so with the default delimiter the ids the engine is fed are the template's
  rendering of the conversation in which the assistant wrote the path's text (the
  delimiter after each step) and the tool answered: what ``apply_chat_template`` gives
  for ``[..., {"role": "assistant", "content": text}, {"role": "tool", ...}]``.
- A tool message is rendered without a ``name``: an observation is written from the
  tool's output alone. transformers is imported only when the format is first used,
  and the tokenizer is loaded once per format object.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import PrivateAttr, field_validator

from runtime.core.errors import ConfigError
from runtime.policy.openai_tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from runtime.tools.base import ToolCall, ToolOutput
from runtime.tools.formats import CallFormat, call_from_object, read_json_call

__all__ = ["TOOLS_PROMPT", "ChatTemplateFormat", "TemplateSyntax", "read_syntax"]

TOOLS_PROMPT = (
    "You may call a tool to help. The tools, as JSON schemas:\n<tools>\n{tools}\n</tools>\n"
    "To call one, write on a line of its own:\n{example}\nIts answer follows."
)
"""The system message that offers the tools where the template does not render them."""
_NAME, _ARG, _VALUE = "searchlearn_probe_tool", "searchlearn_probe_arg", "searchlearn_probe_value"
_CALL, _OUT, _QUESTION = "searchlearn_probe_call", "searchlearn_probe_output", "searchlearn_probe_question"


@dataclass(frozen=True, slots=True)
class TemplateSyntax:
    """What one template writes: read by :func:`read_syntax`."""

    open: str
    """Text before a call's JSON object (``<tool_call>\\n``; '' for bare JSON)."""
    close: str
    """Text after it."""
    observation_before: str
    """The tool turn before the tool's output (the assistant's end of turn, the tool role)."""
    observation_after: str
    """The tool turn after the output (its end, the next assistant header)."""
    renders_tools: bool
    """``apply_chat_template(tools=...)`` shows the tools."""
    from_template: bool
    """The call syntax is the template's (False: Hermes's, the template writes no calls)."""
    response_template: dict[str, Any] | None = None
    """How transformers' response parser reads a reply (the tokenizer's own or one built
    from the markers); None: the JSON reader alone."""
    own_parser: bool = False
    """``response_template`` is the tokenizer's own (its calls need not close as the
    markers read off the template do)."""

    @property
    def markers(self) -> tuple[str, str]:
        """The opening and closing markers, without the template's whitespace."""
        return self.open.strip(), self.close.strip()


def read_syntax(tokenizer: Any | None) -> TemplateSyntax:
    """The call syntax, tool turn and tool support of ``tokenizer``'s chat template (None:
    Hermes's convention, one line each, no template)."""
    if tokenizer is None:
        return TemplateSyntax(TOOL_CALL_OPEN, TOOL_CALL_CLOSE, "<tool_response>", "</tool_response>", False, False,
                              _response_template(TOOL_CALL_OPEN, TOOL_CALL_CLOSE, TOOL_CALL_OPEN))  # fmt: skip

    def render(messages: list[dict[str, Any]], generation: bool = False, **extra: Any) -> str:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation, **extra)
        return str(text)

    question = [{"role": "user", "content": _QUESTION}]
    opened = render(question, generation=True)
    header = opened[len(render(question)) :] if opened.startswith(render(question)) else ""
    parameters = {"type": "object", "properties": {_ARG: {"type": "string", "description": "A probe."}}}
    probe = {"type": "function", "function": {"name": _NAME, "description": "A probe.", "parameters": parameters}}
    try:
        renders_tools = _NAME in render(question, generation=True, tools=[probe])
    except Exception:
        renders_tools = False
    open_, close = _call_markup(render, question, opened)
    from_template = open_ is not None
    if open_ is None or close is None:
        open_, close = TOOL_CALL_OPEN, TOOL_CALL_CLOSE
    try:
        full = render([*question, {"role": "assistant", "content": _CALL}, {"role": "tool", "content": _OUT}], True)
    except Exception as exc:
        raise ConfigError(f"environment.format: the chat template cannot render a tool message: {exc}") from None
    start = full.find(_CALL)
    out = full.find(_OUT, start)
    if start < 0 or out < 0:
        raise ConfigError("environment.format: the chat template does not show a tool message's content")
    before, after = full[start + len(_CALL) : out], full[out + len(_OUT) :]
    own = getattr(tokenizer, "response_template", None)
    markers = open_.strip(), close.strip()
    response = own if isinstance(own, dict) else _response_template(*markers, header or markers[0])
    return TemplateSyntax(open_, close, before, after, renders_tools, from_template, response, isinstance(own, dict))


def _call_markup(render: Any, question: list[dict[str, Any]], opened: str) -> tuple[str | None, str | None]:
    """The text a template writes before and after a call's JSON object, or None where it
    writes no call (it ignores ``tool_calls``, or the call is not a JSON object)."""
    call = {"type": "function", "id": "call_0", "function": {"name": _NAME, "arguments": {_ARG: _VALUE}}}
    try:
        with_call = render([*question, {"role": "assistant", "content": "", "tool_calls": [call]}])
        empty = render([*question, {"role": "assistant", "content": ""}])
    except Exception:
        return None, None
    if not with_call.startswith(opened) or _NAME not in with_call:
        return None, None
    body = with_call[len(opened) :]
    end = empty[len(opened) :] if empty.startswith(opened) else ""
    shared = 0  # the end of turn both renderings close with
    while shared < min(len(body), len(end)) and body[-1 - shared] == end[-1 - shared]:
        shared += 1
    markup = body[: len(body) - shared]
    decoder = json.JSONDecoder()
    for i, char in enumerate(markup):
        if char != "{":
            continue
        try:
            obj, stop = decoder.raw_decode(markup, i)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("name") == _NAME:
            return markup[:i], markup[stop:]
    return None, None


def _response_template(open_marker: str, close_marker: str, anchor: str) -> dict[str, Any] | None:
    """A transformers response template reading ``open {json} close`` calls."""
    if not open_marker:
        return None
    calls: dict[str, Any] = {"open": open_marker, "repeats": True, "content": "json",
                             "transform": {"type": "function", "function": "{content}"}}  # fmt: skip
    if close_marker:
        calls["close"] = close_marker
    return {"start_anchor": anchor, "fields": {"content": {"content": "text"}, "tool_calls": calls}}


class ChatTemplateFormat(CallFormat):
    """Calls and tool turns in the model's own chat template's syntax (module docstring)."""

    name: Literal["chat_template"] = "chat_template"
    tokenizer: str | None = None
    """The tokenizer whose chat template writes calls and tool turns: a checkpoint name
    (bundled, bundled-weak, a fetched model such as smollm2-135m) or a directory; the
    policy's own. None: Hermes's convention without a template (one-line
    ``<tool_call>{...}</tool_call>`` calls, ``<tool_response>...</tool_response>``
    observations, tools described in a system message)."""
    one_line: bool = True
    """Write a call on one line (the template's newlines around the call dropped), so the
    default step delimiter ends the step after it; false keeps the template's text
    (then use a step delimiter a call does not contain)."""
    describe_tools: bool = True
    """Where the template does not render ``tools`` (SmolLM2's, the tiny policy's), list
    the tools and the call syntax in a system message (before the task's own, if any)."""

    _syntax: TemplateSyntax | None = PrivateAttr(default=None)
    _loaded: Any = PrivateAttr(default=None)
    _calls: Any = PrivateAttr(default=None)  # the response template's compiled tool_calls field

    @field_validator("tokenizer")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        if value is not None:
            from runtime.policy.continuation import resolve_tokenizer

            try:
                resolve_tokenizer(value)
            except FileNotFoundError as exc:
                raise ValueError(str(exc)) from None
        return value

    @classmethod
    def of(cls, tokenizer: Any, **settings: Any) -> ChatTemplateFormat:
        """The format of an already loaded tokenizer (Python use and tests)."""
        fmt = cls(**settings)
        fmt._loaded = tokenizer
        return fmt

    def syntax(self) -> TemplateSyntax:
        """The template's syntax (read on first use; loads the tokenizer)."""
        if self._syntax is None:
            tokenizer = self._loaded
            if tokenizer is None and self.tokenizer is not None:
                tokenizer = self._loaded = _load(self.tokenizer)
            if tokenizer is not None and not getattr(tokenizer, "chat_template", None):
                name = self.tokenizer or "the tokenizer"
                raise ConfigError(f"environment.format.tokenizer: {name} has no chat template")
            self._syntax = read_syntax(tokenizer)
            self._calls = _calls_field(self._syntax.response_template)
        return self._syntax

    def call_text(self, name: str, arguments: Mapping[str, Any]) -> str:
        """A call of ``name`` as this format writes it (what a trace teaches a model)."""
        s = self.syntax()
        body = json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False)
        open_, close = (s.open.replace("\n", ""), s.close.replace("\n", "")) if self.one_line else (s.open, s.close)
        return open_ + body + close

    # -- reading a step ----------------------------------------------------------------

    def parse(self, text: str, parameters: Mapping[str, Sequence[str]]) -> ToolCall | None:
        s = self.syntax()
        open_marker, close_marker = s.markers
        if not self._opens_call(text, s):
            return None
        call = self._through_transformers(text, s)
        if call is not None:
            return call
        return read_json_call(text, open_marker, close_marker) or ToolCall(
            "", None, text, "the call could not be read (it opens no call this format's reader knows)"
        )

    def _opens_call(self, text: str, s: TemplateSyntax) -> bool:
        open_marker = s.markers[0]
        if open_marker:
            if open_marker in text:
                return True
        elif text.lstrip().startswith("{"):
            return True
        field = self._calls
        return field is not None and field.open_re is not None and field.open_re.search(text) is not None

    def _through_transformers(self, text: str, s: TemplateSyntax) -> ToolCall | None:
        """The call transformers' response parser reads in ``text``, or None where it
        reads none, more than one, or raises (the JSON reader then says what is wrong)."""
        if s.response_template is None:
            return None
        try:
            from transformers.utils.chat_parsing import parse_response
        except ImportError:  # transformers before 5: the JSON reader alone
            return None
        try:
            message = parse_response(text, s.response_template, prefix="")
        except Exception:
            return None
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if not isinstance(calls, list) or len(calls) != 1 or not isinstance(calls[0], dict):
            return None
        close_marker = s.markers[1]
        if close_marker and not s.own_parser and close_marker not in text:
            return None  # transformers reads an unclosed call to its end; here it is malformed
        return call_from_object(calls[0].get("function"), text)

    # -- writing observations and the prompt -------------------------------------------

    def observation(self, output: ToolOutput) -> str:
        if output.error is not None:
            return self.error(output.error)
        return self._turn(output.text)

    def error(self, message: str) -> str:
        return self._turn("error: " + message)

    def _turn(self, content: str) -> str:
        s = self.syntax()
        return s.observation_before + content + s.observation_after

    def prompt(
        self, messages: Sequence[dict[str, str]], tools: Sequence[dict[str, Any]]
    ) -> tuple[list[dict[str, str]], list[dict[str, Any]] | None]:
        out = [dict(m) for m in messages]
        if not tools:
            return out, None
        s = self.syntax()
        if s.renders_tools:
            return out, list(tools)
        if not self.describe_tools:
            return out, None
        note = self.describe(tools)
        if out and out[0].get("role") == "system":
            out[0]["content"] = note + "\n\n" + out[0]["content"]
        else:
            out.insert(0, {"role": "system", "content": note})
        return out, None

    def describe(self, tools: Sequence[dict[str, Any]]) -> str:
        """The system message offering ``tools`` (:data:`TOOLS_PROMPT`)."""
        example = self.call_text("<function-name>", {}).replace("{}", "<arguments-json-object>")
        schemas = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        return TOOLS_PROMPT.format(tools=schemas, example=example)


def _calls_field(response_template: dict[str, Any] | None) -> Any:
    """The ``tool_calls`` field of a response template, compiled (None: it has none)."""
    if response_template is None:
        return None
    try:
        from transformers.utils.chat_parsing.response_templates import load_response_template
    except ImportError:
        return None
    try:
        return load_response_template(response_template).fields.get("tool_calls")
    except ValueError:
        return None


def _load(name: str) -> Any:
    from transformers import AutoTokenizer

    from runtime.policy.continuation import resolve_tokenizer

    try:
        directory = resolve_tokenizer(name)
        return AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"environment.format.tokenizer: cannot load {name!r}: {exc}") from None
