"""Part 2, reward design: the verifier protocols and components, answer extraction,
outcome checks, the LLM judge, sandboxed code execution, Monte-Carlo values, PRM
and ORM scoring, composition (weighted sums, gates) and potential-based shaping."""

from __future__ import annotations

from runtime.core.lazy import stub_exports as _stub_exports

__getattr__, __dir__, __all__ = _stub_exports(__name__, __file__)
