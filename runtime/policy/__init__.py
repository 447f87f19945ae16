"""Part 1, policy: the Policy protocol and its backends: the scripted fake, any
OpenAI-compatible server (with the per-endpoint limiter), the local transformers
engine; and checkpoint resolution."""

from __future__ import annotations

from runtime.core.lazy import lazy_exports as _lazy_exports

_EXPORTS = {
    "Completion": ".base",
    "EndpointLimiter": ".limits",
    "EndpointLimits": ".limits",
    "EngineRequest": ".local",
    "EngineResult": ".local",
    "EngineStats": ".local",
    "GenerationRequest": ".base",
    "GenerationResult": ".base",
    "LocalEngine": ".local",
    "LocalPolicy": ".local",
    "Mode": ".base",
    "OpenAIPolicy": ".openai_compatible",
    "PRICES": ".limits",
    "Policy": ".base",
    "Price": ".limits",
    "ScriptedPolicy": ".scripted",
    "Server": ".base",
    "WeightedPolicy": ".base",
    "limiter_for": ".limits",
    "named_checkpoints": ".checkpoints",
    "render_prompt": ".openai_compatible",
    "resolve_checkpoint": ".checkpoints",
}

__all__ = [
    "PRICES",
    "Completion",
    "EndpointLimiter",
    "EndpointLimits",
    "EngineRequest",
    "EngineResult",
    "EngineStats",
    "GenerationRequest",
    "GenerationResult",
    "LocalEngine",
    "LocalPolicy",
    "Mode",
    "OpenAIPolicy",
    "Policy",
    "Price",
    "ScriptedPolicy",
    "Server",
    "WeightedPolicy",
    "limiter_for",
    "named_checkpoints",
    "render_prompt",
    "resolve_checkpoint",
]

__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
