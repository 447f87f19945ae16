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

from dataclasses import asdict, dataclass
from typing import Any, Literal

from runtime.context import Aggregate, Context
from runtime.types import Episode, Node
from strategies.beam_search import BeamSearch

__all__ = ["TreeOfThought"]


@dataclass
class TreeOfThought:
    search: Literal["bfs", "dfs"] = "bfs"
    breadth: int = 3
    expansions: int = 3
    threshold: float = 0.5
    max_expansions: int = 32
    aggregate: Aggregate = "min"
    name = "tree_of_thought"

    def config(self) -> dict[str, Any]:
        return asdict(self)

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
