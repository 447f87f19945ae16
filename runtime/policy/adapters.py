"""What a LoRA learner publishes to a server that loads adapters, and how it is published
(``policy.lora``): plain data and settings, no client, so the run config and the
learners import them without openai. :class:`~runtime.policy.lora_server.LoraServerPolicy`
does the publishing.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AdapterWeights", "LoraPublishing"]


class AdapterWeights(dict[str, Any]):
    """Published weights of a LoRA learner with ``lora.publish: adapter``: the mapping
    is the merged plain weights (what any in-process engine and the evaluator load);
    ``adapter`` holds the LoRA tensors and ``config`` the adapter_config.json fields,
    as peft saves them."""

    def __init__(self, merged: dict[str, Any], *, adapter: dict[str, Any], config: dict[str, Any]) -> None:
        super().__init__(merged)
        self.adapter = adapter
        self.config = config


class LoraPublishing(BaseModel):
    """LoRA versions published to a vLLM server (``policy.lora``; kind openai, server vllm)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    directory: str | None = None
    """Where adapter versions are written (the server must read the same path); None: a
    temporary directory, removed at the end of the run."""
    keep: int = Field(2, ge=1)
    """Adapters kept loaded on the server (the newest); older ones are unloaded once no
    request uses them. Start the server with --max-loras >= keep to batch them together."""
    timeout: float = Field(120.0, gt=0)
    """Seconds one adapter load may take before it counts as failed."""
