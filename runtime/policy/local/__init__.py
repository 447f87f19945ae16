"""Local policy engine: any transformers checkpoint served in process."""

from __future__ import annotations

from runtime.policy.local.engine import EngineRequest, EngineResult, EngineStats, LocalEngine
from runtime.policy.local.policy import LocalPolicy

__all__ = ["EngineRequest", "EngineResult", "EngineStats", "LocalEngine", "LocalPolicy"]
