"""Scheduling: the scheduler (:class:`Runtime`), the SQLite episode store, its continuous
JSONL export and task sources (bounded or streaming)."""

from __future__ import annotations

from runtime.core.lazy import stub_exports as _stub_exports

__getattr__, __dir__, __all__ = _stub_exports(__name__, __file__)
