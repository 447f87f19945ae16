"""Run a loaded config's tasks through its runtime and collect the episodes (the tests
that point a shipped config at a real server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from runtime.app.build import build_runtime
from runtime.app.parts import build_tasks
from runtime.core.types import Episode

__all__ = ["run_episodes", "server_policy"]


def run_episodes(config: Any) -> list[Episode]:
    """Every episode of ``config``'s tasks, in the order they finished; the policy's client
    is closed after (the openai client's aiohttp session)."""

    async def go() -> list[Episode]:
        async with build_runtime(config) as runtime:
            try:
                return [ep async for ep in runtime.stream(build_tasks(config))]
            finally:
                await runtime.policy.aclose()

    return anyio.run(go)


def server_policy(base_url: str, model: str, server: str, tokenizer: Path, **settings: Any) -> dict[str, Any]:
    """A ``policy:`` mapping for a real server on loopback in completion mode, the prompt
    rendered by ``tokenizer``'s chat template; ``settings`` add to it or override it."""
    return {
        "kind": "openai",
        "base_url": base_url,
        "model": model,
        "server": server,
        "mode": "completion",
        "tokenizer": str(tokenizer),
        "timeout": 600,
        "wait_ready": 30,
    } | settings
