"""Step-by-step chain-of-thought: one step per model call until an answer appears.

Each call stops at the step delimiter, so every step is its own node (and can be
scored, branched or resampled by the strategies built on this one).
"""

from __future__ import annotations

from typing import Literal

from runtime.core.types import Episode
from runtime.search.context import Context
from runtime.search.strategy import BaseStrategy

__all__ = ["ChainOfThought"]


class ChainOfThought(BaseStrategy):
    """Step-by-step chain-of-thought, one step per call."""

    name: Literal["chain_of_thought"] = "chain_of_thought"

    async def run(self, ctx: Context) -> Episode:
        node = ctx.root
        while not node.terminal:
            (node,) = await ctx.expand(node, 1)
        return await ctx.finish(node)
