"""Part 1, policy: the Policy protocol and its backends: the scripted fake, any
OpenAI-compatible server (with the per-endpoint limiter), a vLLM server loading LoRA
adapters at run time, the local transformers engine, vLLM's in-process engine; and
checkpoint resolution."""

from __future__ import annotations

from runtime.core.lazy import stub_exports as _stub_exports

__getattr__, __dir__, __all__ = _stub_exports(__name__, __file__)
