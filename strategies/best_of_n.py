"""Best-of-N: sample N full solutions, keep one.

Selection (Cobbe et al. 2021; Wang et al. 2022 for self-consistency):
- ``majority``: the most frequent final answer (self-consistency);
- ``weighted_majority``: answers vote with their process score;
- ``process``: the solution with the best aggregated process score
  (``aggregate``: last, min, product or mean over its steps);
- ``outcome``: the solution the outcome verifier scores highest.
Ties go to the earliest sample.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

from pydantic import Field

from runtime.core.types import Episode, Node
from runtime.search.context import Aggregate, Context
from runtime.search.strategy import BaseStrategy

__all__ = ["BestOfN"]

Selection = Literal["majority", "weighted_majority", "process", "outcome"]


class BestOfN(BaseStrategy):
    """Best-of-N over full solutions."""

    name: Literal["best_of_n"] = "best_of_n"
    n: int = Field(8, ge=1, le=1024)
    """Solutions sampled per episode."""
    selection: Selection = "majority"
    """How the kept solution is chosen."""
    aggregate: Aggregate = "min"
    """How step scores combine for process selection."""

    def needs(self) -> dict[str, str]:
        role = {"process": "process", "weighted_majority": "process", "outcome": "outcome"}.get(self.selection)
        return {role: f"selection {self.selection!r}"} if role else {}

    async def run(self, ctx: Context) -> Episode:
        leaves = await ctx.complete(ctx.root, self.n)
        if self.selection == "outcome":
            scores = [(await ctx.judge(leaf)).value for leaf in leaves]
        elif self.selection == "process":
            scores = [await ctx.score_path(leaf, self.aggregate) for leaf in leaves]
        else:
            scores = await self._votes(ctx, leaves)
        best = max(range(len(leaves)), key=lambda i: (scores[i], -i))
        for leaf, score in zip(leaves, scores, strict=True):
            leaf.value = score
        return await ctx.finish(leaves[best])

    async def _votes(self, ctx: Context, leaves: list[Node]) -> list[float]:
        """Each leaf's score is the total vote of its answer (no answer: no vote)."""
        weights = [
            await ctx.score_path(leaf, self.aggregate) if self.selection == "weighted_majority" else 1.0
            for leaf in leaves
        ]
        tally: dict[str, float] = defaultdict(float)
        for leaf, w in zip(leaves, weights, strict=True):
            if (answer := ctx.answer(leaf)) is not None:
                tally[answer] += w
        return [tally[a] if (a := ctx.answer(leaf)) is not None else 0.0 for leaf in leaves]
