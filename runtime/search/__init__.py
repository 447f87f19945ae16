"""Part 3's API: the episode context (expand / complete / score / judge / fork /
finish) and the Strategy protocol that strategies are written against."""

from __future__ import annotations

from runtime.core.lazy import stub_exports as _stub_exports

__getattr__, __dir__, __all__ = _stub_exports(__name__, __file__)
