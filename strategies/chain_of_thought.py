"""Step-by-step chain-of-thought: one step per model call until an answer appears.

Each call stops at the step delimiter, so every step is its own node (and can be
scored, branched or resampled by the strategies built on this one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from runtime.context import Context
from runtime.types import Episode

__all__ = ["ChainOfThought"]


@dataclass
class ChainOfThought:
    name = "chain_of_thought"

    def config(self) -> dict[str, Any]:
        return asdict(self)

    async def run(self, ctx: Context) -> Episode:
        node = ctx.root
        while not node.terminal:
            (node,) = await ctx.expand(node, 1)
        return await ctx.finish(node)
