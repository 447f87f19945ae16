"""Tree of thoughts (Yao et al. 2023), with the process verifier as the state evaluator.

``bfs``: propose ``expansions`` thoughts for each of the ``breadth`` best states of a
level, evaluate them, keep the ``breadth`` best states of the next level (Yao et al.'s
Algorithm 1, which is a step-level beam search, so it reuses :class:`BeamSearch`).

``dfs`` (Algorithm 2)::

    dfs(s): if s is finished: return s
            for s' in expand(s, k), best value first:
                if value(s') < threshold: prune s' (meta['pruned'])
                elif (found := dfs(s')): return found
            return nothing      # backtrack to the parent

Design decisions:
- A state's value is the aggregated process score of its path (``min``: one bad step
  spoils the state).
- DFS is bounded by ``max_expansions`` model calls; if it runs out (or every branch is
  pruned), the best state it scored is completed without search.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from runtime.core.types import Episode, Node
from runtime.search.context import Aggregate, Context
from runtime.search.strategy import BaseStrategy
from strategies.beam_search import BeamSearch

__all__ = ["TreeOfThought"]


class TreeOfThought(BaseStrategy):
    """Tree of thoughts (Yao et al. 2023) with the process verifier as state evaluator."""

    name: Literal["tree_of_thought"] = "tree_of_thought"
    search: Literal["bfs", "dfs"] = "bfs"
    """Breadth-first (keep the best states per level) or depth-first with pruning and backtracking."""
    breadth: int = Field(3, ge=1, le=64)
    """States kept per level (bfs)."""
    expansions: int = Field(3, ge=1, le=64)
    """Thoughts proposed per state."""
    threshold: float = Field(0.5, ge=0, le=1)
    """Thoughts scoring below this are pruned (dfs)."""
    max_expansions: int = Field(32, ge=1, le=4096)
    """Expansion calls before dfs gives up searching (dfs)."""
    aggregate: Aggregate = "min"
    """How a path's step scores combine into a state's value."""

    def needs(self) -> dict[str, str]:
        return {"process": "it scores every step"}

    async def run(self, ctx: Context) -> Episode:
        if self.search == "bfs":
            bfs = BeamSearch(width=self.breadth, expansions=self.expansions, aggregate=self.aggregate)
            return await ctx.finish(await bfs.search(ctx, ctx.root))
        found = await self._dfs(ctx, ctx.root, calls=[0])
        if found is None:
            scored = [n for n in ctx.episode.nodes if n.value is not None and not n.meta.get("pruned")]
            best = max(scored, key=lambda n: (n.value or 0.0, n.depth), default=ctx.root)
            found = best if best.terminal else (await ctx.complete(best, 1))[0]
        return await ctx.finish(found)

    async def _dfs(self, ctx: Context, node: Node, calls: list[int]) -> Node | None:
        """``calls`` counts this episode's expansions (the strategy object is shared by episodes)."""
        if node.terminal:
            return node
        if calls[0] >= self.max_expansions:
            return None
        calls[0] += 1
        children = ctx.dedupe(await ctx.expand(node, self.expansions))
        for child, value in zip(children, await ctx.score_all(children, self.aggregate), strict=True):
            child.value = value
        for child in sorted(children, key=lambda c: -(c.value or 0.0)):
            if (child.value or 0.0) < self.threshold:
                child.meta["pruned"] = True
            elif (found := await self._dfs(ctx, child, calls)) is not None:
                return found
        return None
