"""Early consensus: sample solutions a few at a time, stop once k answers agree."""

from __future__ import annotations

from collections import Counter
from typing import Literal

from pydantic import Field

from runtime.core.types import Episode
from runtime.search import BaseStrategy, Context


class EarlyConsensus(BaseStrategy):
    """Self-consistency that stops sampling once ``k`` solutions give the same answer."""

    name: Literal["early_consensus"] = "early_consensus"
    k: int = Field(3, ge=1)
    """Agreeing answers that end the search."""
    max_samples: int = Field(16, ge=1)
    """Solutions sampled at most."""
    batch: int = Field(2, ge=1)
    """Solutions sampled per round."""

    async def run(self, ctx: Context) -> Episode:
        leaves, votes = [], Counter[str]()
        while len(leaves) < self.max_samples:
            new = await ctx.complete(ctx.root, min(self.batch, self.max_samples - len(leaves)))
            leaves += new
            votes.update(a for leaf in new if (a := ctx.answer(leaf)) is not None)
            if votes and votes.most_common(1)[0][1] >= self.k:
                break
        ctx.root.meta["samples"] = len(leaves)
        best = votes.most_common(1)[0][0] if votes else None
        return await ctx.finish(next((leaf for leaf in leaves if ctx.answer(leaf) == best), leaves[0]))
