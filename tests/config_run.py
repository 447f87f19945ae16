"""Run a loaded config's tasks through its runtime and collect the episodes (the tests
that point a shipped config at a real server)."""

from __future__ import annotations

from typing import Any

import anyio

from runtime.app.build import build_runtime
from runtime.app.parts import build_tasks
from runtime.core.types import Episode

__all__ = ["run_episodes"]


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
