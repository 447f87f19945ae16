"""Local policy engine: any transformers checkpoint served in process."""

from __future__ import annotations

from runtime.local.engine import EngineRequest, EngineResult, EngineStats, LocalEngine
from runtime.local.policy import LocalPolicy, resolve_checkpoint

__all__ = ["EngineRequest", "EngineResult", "EngineStats", "LocalEngine", "LocalPolicy", "resolve_checkpoint"]
