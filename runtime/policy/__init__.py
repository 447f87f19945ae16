"""Part 1, policy: the Policy protocol and its backends: the scripted fake, any
OpenAI-compatible server (with the per-endpoint limiter), a vLLM server loading LoRA
adapters at run time, the local transformers engine, vLLM's in-process engine; and
checkpoint resolution."""

from __future__ import annotations

from runtime.core.lazy import lazy_exports as _lazy_exports

_EXPORTS = {
    "AdapterWeights": ".adapters",
    "ChatTemplate": ".continuation",
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
    "LoraPublishing": ".adapters",
    "LoraServerPolicy": ".lora_server",
    "Mode": ".base",
    "OpenAIPolicy": ".openai_compatible",
    "PRICES": ".limits",
    "Policy": ".base",
    "Price": ".limits",
    "ScriptedPolicy": ".scripted",
    "Server": ".base",
    "VllmPolicy": ".vllm_engine",
    "VllmSettings": ".vllm_engine",
    "WeightedPolicy": ".base",
    "limiter_for": ".limits",
    "named_checkpoints": ".checkpoints",
    "resolve_checkpoint": ".checkpoints",
}

__all__ = [
    "PRICES",
    "AdapterWeights",
    "ChatTemplate",
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
    "LoraPublishing",
    "LoraServerPolicy",
    "Mode",
    "OpenAIPolicy",
    "Policy",
    "Price",
    "ScriptedPolicy",
    "Server",
    "VllmPolicy",
    "VllmSettings",
    "WeightedPolicy",
    "limiter_for",
    "named_checkpoints",
    "resolve_checkpoint",
]

__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
