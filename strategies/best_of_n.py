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
from dataclasses import asdict, dataclass
from typing import Any, Literal

from runtime.context import Aggregate, Context
from runtime.types import Episode, Node

__all__ = ["BestOfN"]

Selection = Literal["majority", "weighted_majority", "process", "outcome"]


@dataclass
class BestOfN:
    n: int = 8
    selection: Selection = "majority"
    aggregate: Aggregate = "min"
    name = "best_of_n"

    def config(self) -> dict[str, Any]:
        return asdict(self)

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
