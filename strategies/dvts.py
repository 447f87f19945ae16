"""Diverse verifier tree search (DVTS; Beeching, Tunstall & Rush 2024, "Scaling
test-time compute with open models").

Beam search with N beams and M expansions each tends to collapse onto one prefix that
the verifier likes. DVTS splits the budget N into N/M independent subtrees, each a
greedy beam search (width 1, M expansions per step) from the root, so the subtrees
explore different prefixes::

    for i in 1..N/M (concurrently):  leaf_i <- BeamSearch(width=1, expansions=M) from root
    answer <- the best leaf_i (or the weighted majority of their answers)

Every node a subtree creates carries ``meta['subtree'] = i``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

from pydantic import Field

from runtime.core.types import Episode
from runtime.search.context import Aggregate, Context, gather
from runtime.search.strategy import BaseStrategy
from strategies.beam_search import BeamSearch

__all__ = ["DVTS"]


class DVTS(BaseStrategy):
    """Diverse verifier tree search: independent greedy subtrees (Beeching et al. 2024)."""

    name: Literal["dvts"] = "dvts"
    subtrees: int = Field(4, ge=1, le=256)
    """Independent subtrees (N/M of a budget of N with M expansions)."""
    expansions: int = Field(4, ge=1, le=64)
    """Next steps sampled per subtree and step; the best one is kept."""
    aggregate: Aggregate = "min"
    """How a path's step scores combine: last, min, product or mean."""
    selection: Literal["best", "weighted_majority"] = "best"
    """Answer: the best-scored subtree, or the answer with the most score across subtrees."""

    def needs(self) -> dict[str, str]:
        return {"process": "it scores every step"}

    async def run(self, ctx: Context) -> Episode:
        greedy = BeamSearch(width=1, expansions=self.expansions, aggregate=self.aggregate)
        leaves = await gather(greedy.search(ctx, ctx.root, {"subtree": i}) for i in range(self.subtrees))
        if self.selection == "weighted_majority":
            votes: dict[str | None, float] = defaultdict(float)
            for leaf in leaves:
                votes[ctx.answer(leaf)] += leaf.value or 0.0
            votes.pop(None, None)
            if votes:
                best_answer = max(votes, key=lambda a: votes[a])
                leaves = [leaf for leaf in leaves if ctx.answer(leaf) == best_answer]
        return await ctx.finish(max(leaves, key=lambda n: n.value or 0.0))
