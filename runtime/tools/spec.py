"""Tools: a typed Python function with a schema, a timeout and an output cap.

:class:`ToolSpec` is built from a function by :meth:`ToolSpec.from_function`, which
takes the JSON schema transformers derives for ``apply_chat_template(tools=...)``
(``transformers.utils.get_json_schema``: the signature's types and the Google-style
docstring's ``Args:``), so the schema a chat template shows the model and the one
calls are checked against are the same. :class:`BaseTool` is the family base of the
``tools`` registry: a component whose fields are the tool's settings and whose
:meth:`~BaseTool.function` is the Python function.

Design decisions:
- An execution never raises: a tool that raises, hangs past ``timeout``, returns more
  than ``max_output_chars`` or text with lone surrogates gives a :class:`ToolOutput`
  with the error, or the cleaned and cut text. A synchronous function runs in a worker
  thread (the event loop never blocks on it); on timeout the thread is abandoned, not
  killed (Python cannot kill a thread), so a tool that may hang for good belongs in the
  sandbox (:mod:`runtime.tools.sandbox`), not in process.
- Arguments are checked against the schema before a call runs (:meth:`ToolSpec.check`):
  required names present, no unknown names, JSON types and enums as declared. A small
  checker for the subset ``get_json_schema`` writes, not a JSON-Schema library.
- transformers is imported only when a spec is built from a function, never by the
  search layer (the layer contract keeps it cheap to import).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import anyio
import anyio.to_thread
from pydantic import Field

from runtime.core.registry import Component
from runtime.core.text import clean_text, cut_text
from runtime.tools.base import ToolOutput

__all__ = ["DEFAULT_MAX_OUTPUT_CHARS", "DEFAULT_TOOL_TIMEOUT", "BaseTool", "ToolSpec"]

DEFAULT_TOOL_TIMEOUT = 5.0
"""Seconds one tool execution may take."""
DEFAULT_MAX_OUTPUT_CHARS = 2000
"""Characters of a tool's output the model sees; the rest is cut (an observation is
context for the next step, not a dump)."""
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list, tuple),
    "object": (dict,),
    "null": (type(None),),
}


@dataclass(slots=True)
class ToolSpec:
    """One tool: its function, schema and limits."""

    name: str
    function: Callable[..., Any]
    schema: dict[str, Any]
    """The ``{"type": "function", "function": {...}}`` schema chat templates take."""
    timeout: float = DEFAULT_TOOL_TIMEOUT
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS
    deterministic: bool = True
    """The same arguments (and state) always give the same result: replayable."""
    side_effect_free: bool = True
    """It changes nothing outside its result: identical calls may share one execution."""
    parameters: list[str] = field(default_factory=list)

    @classmethod
    def from_function(
        cls,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        timeout: float = DEFAULT_TOOL_TIMEOUT,
        max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
        deterministic: bool = True,
        side_effect_free: bool = True,
    ) -> ToolSpec:
        """A spec of ``function`` (typed, with a Google-style docstring describing each
        argument, as transformers requires); ``name`` defaults to the function's."""
        from transformers.utils.chat_template_utils import get_json_schema

        schema = get_json_schema(function)
        if name is not None:
            schema["function"]["name"] = name
        properties = schema["function"].get("parameters", {}).get("properties", {})
        return cls(
            name=schema["function"]["name"],
            function=function,
            schema=schema,
            timeout=timeout,
            max_output_chars=max_output_chars,
            deterministic=deterministic,
            side_effect_free=side_effect_free,
            parameters=list(properties),
        )

    def check(self, arguments: dict[str, Any] | None) -> str | None:
        """Why ``arguments`` do not fit the schema, or None."""
        if arguments is None:
            return f"tool {self.name}: arguments could not be read"
        params = self.schema["function"].get("parameters", {})
        properties: dict[str, Any] = params.get("properties", {})
        missing = [p for p in params.get("required", []) if p not in arguments]
        if missing:
            return f"tool {self.name}: missing argument {', '.join(missing)}"
        unknown = [a for a in arguments if a not in properties]
        if unknown:
            return f"tool {self.name}: unknown argument {', '.join(unknown)} (takes {', '.join(properties) or 'none'})"
        for key, value in arguments.items():
            problem = _type_problem(properties[key], value)
            if problem:
                return f"tool {self.name}: argument {key} {problem}"
        return None

    async def run(self, arguments: dict[str, Any]) -> ToolOutput:
        """Execute once with ``arguments`` under the timeout; never raises (see module doc)."""
        start = time.perf_counter()
        try:
            with anyio.fail_after(self.timeout):
                if inspect.iscoroutinefunction(self.function):
                    result = await self.function(**arguments)
                else:
                    result = await anyio.to_thread.run_sync(lambda: self.function(**arguments), abandon_on_cancel=True)
            text = result if isinstance(result, str) else str(result)
        except TimeoutError:
            return ToolOutput("", f"tool {self.name} timed out after {self.timeout:g}s", seconds=self.timeout)
        except Exception as exc:
            message, _ = cut_text(clean_text(f"{type(exc).__name__}: {exc}"), self.max_output_chars)
            return ToolOutput("", message, seconds=time.perf_counter() - start)
        text, capped = cut_text(clean_text(text), self.max_output_chars)
        return ToolOutput(text, None, capped, time.perf_counter() - start)


def _type_problem(schema: dict[str, Any], value: Any) -> str | None:
    kinds = schema.get("type")
    if kinds is not None:
        names = kinds if isinstance(kinds, list) else [kinds]
        ok = any(isinstance(value, _TYPES.get(k, (object,))) for k in names)
        if isinstance(value, bool) and "boolean" not in names:
            ok = False  # JSON's true is not a number
        if not ok:
            return f"must be {' or '.join(names)} (got {type(value).__name__})"
    if "enum" in schema and value not in schema["enum"]:
        return f"must be one of {schema['enum']} (got {value!r})"
    return None


class BaseTool(Component):
    """Base of the tools a config can name (``environment.tools: [calc, ...]``).

    A subclass sets ``name`` to a ``Literal`` and implements :meth:`function`; its
    fields are the tool's settings. ``deterministic`` and ``side_effect_free`` are class
    facts about the function, not settings."""

    family: ClassVar[str] = "tools"
    deterministic: ClassVar[bool] = True
    side_effect_free: ClassVar[bool] = True
    name: str
    """What configs and tool calls call the tool."""
    timeout: float = Field(DEFAULT_TOOL_TIMEOUT, gt=0, le=3600)
    """Seconds one execution may take; past it the call's observation is an error."""
    max_output_chars: int = Field(DEFAULT_MAX_OUTPUT_CHARS, ge=1)
    """Characters of output the model sees; the rest is cut."""

    def function(self) -> Callable[..., Any]:
        """The typed, documented Python function the tool runs."""
        raise NotImplementedError

    def spec(self) -> ToolSpec:
        """The tool's spec (schema from the function, limits from the fields)."""
        return ToolSpec.from_function(
            self.function(),
            name=self.name,
            timeout=self.timeout,
            max_output_chars=self.max_output_chars,
            deterministic=self.deterministic,
            side_effect_free=self.side_effect_free,
        )
