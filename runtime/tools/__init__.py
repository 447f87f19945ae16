"""Tools and environments for agentic episodes: tool specs built from typed Python
functions, tool-call formats, and environments (``reset`` / ``step``) whose calls the
episode context runs at turn boundaries of the search tree."""

from __future__ import annotations

from runtime.core.lazy import lazy_exports as _lazy_exports

_EXPORTS = {
    "BaseEnvironment": ".environment",
    "BaseTool": ".spec",
    "Calc": ".calculator",
    "CalculatorEnvironment": ".calculator",
    "CallFormat": ".formats",
    "CompactFormat": ".formats",
    "Environment": ".base",
    "ForkMode": ".base",
    "ToolCall": ".base",
    "ToolEnvironmentError": ".base",
    "ToolOutput": ".base",
    "ToolSpec": ".spec",
    "ToolsEnvironment": ".environment",
    "Turn": ".base",
    "calculate": ".calculator",
}

__all__ = [
    "BaseEnvironment",
    "BaseTool",
    "Calc",
    "CalculatorEnvironment",
    "CallFormat",
    "CompactFormat",
    "Environment",
    "ForkMode",
    "ToolCall",
    "ToolEnvironmentError",
    "ToolOutput",
    "ToolSpec",
    "ToolsEnvironment",
    "Turn",
    "calculate",
]

__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
