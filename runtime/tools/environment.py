"""Environments as components: the ``environments`` registry (``environment:`` in a
run config).

:class:`BaseEnvironment` implements the :class:`~runtime.tools.base.Environment`
protocol for environments whose actions are tool calls: it holds the tools (components
of the ``tools`` registry), the call format, the fork mode and the limits, parses and
checks calls, and runs one per ``step``. A stateless tool environment needs nothing
more (``tools``, and ``calculator`` in :mod:`runtime.tools.calculator`); a stateful one
overrides ``reset`` and ``step`` (the state is whatever it returns; ``fork: copy``
deep-copies it before each step, so a step may mutate it).

Design decisions:
- Limits are the environment's, enforced by the episode context: ``max_turns``
  observations along one path (past it the path ends on an error observation),
  ``max_calls`` tool executions in the whole episode, siblings included (past it a call
  is answered with an error and nothing runs): a budget a search cannot overspend.
- Tool specs are built once per environment object, when first needed (building one
  imports transformers for its schema).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr

from runtime.core.registry import Component, ComponentField
from runtime.core.types import Node, Task
from runtime.tools.base import ForkMode, ToolCall, Turn
from runtime.tools.formats import CallFormat, CompactFormat
from runtime.tools.spec import BaseTool, ToolSpec

__all__ = ["BaseEnvironment", "ToolsEnvironment", "tool_message"]


class BaseEnvironment(Component):
    """Base of the environments a config can name (``environment: {name: ..., ...}``)."""

    family: ClassVar[str] = "environments"
    name: str
    """What configs call the environment."""
    tools: list[ComponentField("tools", BaseTool)] = Field(default_factory=list)  # type: ignore[valid-type]
    """The tools a model may call: names (calc, or a plug-in's) or mappings with ``name``
    and the tool's settings (timeout, max_output_chars)."""
    format: ComponentField("tool_formats", CallFormat) = Field(default_factory=CompactFormat)  # type: ignore[valid-type]
    """How a step is read as a tool call, an observation written and the tools offered
    to the prompt: compact (one call per line), chat_template (the model's own chat
    template), openai (the OpenAI tools / tool_calls fields of a chat-mode HTTP backend),
    or a plug-in's."""
    fork: ForkMode = "copy"
    """How a branch of the search gets its own state: copy (deep copy before each
    step), replay (rerun the path's earlier calls; deterministic tools only), none
    (branching after a call is refused, naming the tool)."""
    max_turns: int = Field(16, ge=1, le=4096)
    """Observations along one path; the turn after the last ends the path."""
    max_calls: int = Field(64, ge=1, le=1_000_000)
    """Tool executions in one episode, siblings included; later calls are answered
    with an error and run nothing."""

    _specs: dict[str, ToolSpec] | None = PrivateAttr(default=None)

    def specs(self) -> dict[str, ToolSpec]:
        """The tools by name (built on first use)."""
        if self._specs is None:
            specs = {}
            for tool in self.tools:
                spec = tool.spec()
                specs[spec.name] = spec
            self._specs = specs
        return self._specs

    def parse(self, text: str) -> ToolCall | None:
        fmt: CallFormat = self.format
        return fmt.parse(text, {name: spec.parameters for name, spec in self.specs().items()})

    def check(self, call: ToolCall) -> str | None:
        if call.error is not None:
            return call.error
        spec = self.specs().get(call.name)
        if spec is None:
            return f"unknown tool {call.name!r} (tools: {', '.join(self.specs()) or 'none'})"
        return spec.check(call.arguments)

    def replayable(self, call: ToolCall) -> bool:
        spec = self.specs().get(call.name)
        return spec is None or spec.deterministic

    def shareable(self, call: ToolCall) -> bool:
        spec = self.specs().get(call.name)
        return spec is None or (spec.deterministic and spec.side_effect_free)

    def reset(self, task: Task) -> Any:
        """No state: the tools are functions of their arguments."""
        return None

    async def step(self, state: Any, call: ToolCall) -> Turn:
        """Run ``call``'s tool; a call that fails its check is answered with the problem."""
        problem = self.check(call)
        if problem is not None:
            return self.error_turn(state, problem)
        output = await self.specs()[call.name].run(call.arguments or {})
        text = self.format.observation(output)
        return Turn(state, text, [tool_message(call.name, output.error or output.text)], output=output)

    def error_turn(self, state: Any, message: str, *, done: bool = False) -> Turn:
        return Turn(state, self.format.error(message), [tool_message("", message)], done=done)

    def prompt(self, messages: Sequence[dict[str, str]]) -> tuple[list[dict[str, str]], list[dict[str, Any]] | None]:
        """What the call format makes of the prompt, given the tools' schemas."""
        fmt: CallFormat = self.format
        return fmt.prompt(messages, [spec.schema for spec in self.specs().values()])

    def assistant_messages(self, path: Sequence[Node], delimiter: str) -> list[dict[str, Any]] | None:
        fmt: CallFormat = self.format
        return fmt.assistant_messages(path, delimiter)


def tool_message(name: str, content: str) -> dict[str, Any]:
    """A tool's answer as a chat message."""
    return {"role": "tool", "name": name, "content": content}


class ToolsEnvironment(BaseEnvironment):
    """Stateless tools and nothing else: each call runs its tool on its arguments."""

    name: Literal["tools"] = "tools"
