"""Step-level beam search guided by a process verifier (Snell et al. 2024, "Scaling
LLM test-time compute optimally", §5; the search-and-learn recipe of Beeching et al.).

::

    beams <- [root]
    repeat until every beam is finished:
        candidates <- finished beams + expand(b, M) for every unfinished beam b
        (lookahead k > 0: a candidate is scored at the end of a k-step greedy rollout)
        beams <- the `width` candidates with the best aggregated process score
    answer <- the best finished beam

Design decisions:
- Identical sibling steps are one state (``ctx.dedupe``): a beam slot is never spent
  twice on the same text; the duplicates stay in the tree, marked.
- Every scored candidate keeps its score as ``node.value``; the candidates kept at
  round r carry ``meta['beam'] = r`` (learners and tests read what was kept).
- Finished beams compete with open candidates for the slots, so the search stops once
  the best ``width`` states are all finished (or ``max_steps`` ends every path).
- Lookahead rollouts are greedy (temperature 0) and marked ``meta['lookahead']``; the
  next round still expands the candidate itself, as in Snell et al.
"""

from __future__ import annotations

from itertools import count
from typing import Any, Literal

from pydantic import Field

from runtime.core.types import Episode, Node
from runtime.search.context import Aggregate, Context, gather
from runtime.search.strategy import BaseStrategy

__all__ = ["BeamSearch"]


class BeamSearch(BaseStrategy):
    """Step-level beam search guided by the process verifier (Snell et al. 2024)."""

    name: Literal["beam_search"] = "beam_search"
    width: int = Field(4, ge=1, le=256)
    """Beams kept after each step."""
    expansions: int = Field(4, ge=1, le=64)
    """Next steps sampled from each beam."""
    lookahead: int = Field(0, ge=0, le=8)
    """Greedy steps rolled out before a candidate is scored (0: score the candidate itself)."""
    aggregate: Aggregate = "min"
    """How a path's step scores combine into its beam score: last, min, product or mean."""

    def needs(self) -> dict[str, str]:
        return {"process": "it scores every step"}

    async def run(self, ctx: Context) -> Episode:
        return await ctx.finish(await self.search(ctx, ctx.root))

    async def search(self, ctx: Context, start: Node, meta: dict[str, Any] | None = None) -> Node:
        """Beam search from ``start``; returns the best finished beam. Nodes it creates carry ``meta``."""
        beams = [start]
        for depth in count(1):
            open_beams = [b for b in beams if not b.terminal]
            if not open_beams:
                break
            children = await ctx.expand_all(open_beams, self.expansions, meta=meta)
            fresh = ctx.dedupe([c for group in children for c in group])
            await gather(self._value(ctx, c, meta) for c in fresh)
            candidates = [b for b in beams if b.terminal] + fresh
            # Best first; ties go to the earlier candidate (finished beams, then creation order).
            beams = sorted(candidates, key=lambda n: -(n.value or 0.0))[: self.width]
            for b in beams:
                b.meta.setdefault("beam", depth)
        return max(beams, key=lambda n: n.value or 0.0)

    async def _value(self, ctx: Context, node: Node, meta: dict[str, Any] | None) -> None:
        end = node
        for _ in range(self.lookahead):
            if end.terminal:
                break
            (end,) = await ctx.expand(end, 1, meta={**(meta or {}), "lookahead": True}, temperature=0.0)
        node.value = await ctx.score_path(end, self.aggregate)
