"""Part 3's API: the episode context (expand / complete / score / judge / fork /
finish) and the Strategy protocol that strategies are written against."""

from __future__ import annotations

from runtime.core.lazy import lazy_exports as _lazy_exports

_EXPORTS = {
    "Aggregate": ".context",
    "BaseStrategy": ".strategy",
    "Context": ".context",
    "Ledger": ".context",
    "Sampling": ".context",
    "Strategy": ".strategy",
    "Verifiers": ".context",
    "aggregate_scores": ".context",
    "gather": ".context",
}

__all__ = [
    "Aggregate",
    "BaseStrategy",
    "Context",
    "Ledger",
    "Sampling",
    "Strategy",
    "Verifiers",
    "aggregate_scores",
    "gather",
]

__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
