"""Tools and environments for agentic episodes: tool specs built from typed Python
functions, tool-call formats, and environments (``reset`` / ``step``) whose calls the
episode context runs at turn boundaries of the search tree."""

from __future__ import annotations

from runtime.core.lazy import stub_exports as _stub_exports

__getattr__, __dir__, __all__ = _stub_exports(__name__, __file__)
