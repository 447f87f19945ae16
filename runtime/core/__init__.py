"""The base layer: core types (task, node, episode, usage), the exception tree, the
component registry and concurrency helpers. Everything else builds on it."""

from __future__ import annotations

from runtime.core.lazy import stub_exports as _stub_exports

__getattr__, __dir__, __all__ = _stub_exports(__name__, __file__)
