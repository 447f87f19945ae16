"""The bundled tiny arithmetic domain as one environment: its tasks, its rule
verifier, its prompt format and the policy checkpoints that ship with the package."""

from __future__ import annotations

from runtime.core.lazy import stub_exports as _stub_exports

__getattr__, __dir__, __all__ = _stub_exports(__name__, __file__)
