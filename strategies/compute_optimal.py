"""Compute-optimal allocation of test-time compute (Snell et al. 2024, §3-4): estimate
how hard a task is from a few cheap samples, then pick the strategy and the budget for
it, under one token budget shared by every task of the run.

::

    probes <- complete(root, p)                            # cheap: p full samples
    agreement <- share of probes giving the most common answer
    easy   (agreement >= easy_agreement): the probes' majority answer, no more compute
    medium (agreement >= hard_agreement): medium_strategy with medium_budget samples
    hard:                                 hard_strategy with hard_budget samples
    (a budget is cut to what the global token budget still holds, at the probes'
     tokens per sample; nothing left: the probes' majority answer)

Design decisions:
- Difficulty is the probes' disagreement (Snell et al. bin questions by the
  verifier's pass rate; agreement needs no verifier and no reference answer). The
  chosen tier, difficulty and budget are recorded in ``root.meta['allocation']``.
- Budgets are in samples-equivalent (one full solution's worth of generated tokens):
  best-of-N draws ``budget`` solutions; beam search and DVTS expand ``budget``
  steps per level (width or subtrees = budget / 4, 4 expansions); verify-and-backtrack
  gets ``budget`` retries.
- The global budget counts generated (completion) tokens of this strategy object's
  episodes. An allocation is reserved before it runs and settled after, so
  concurrent episodes cannot overspend it together.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

from pydantic import Field, PrivateAttr, model_validator

from runtime.core.types import Episode, Node
from runtime.search.context import Context
from runtime.search.strategy import BaseStrategy

__all__ = ["ComputeOptimal"]

Choice = Literal["best_of_n", "beam_search", "dvts", "verify_backtrack"]


class ComputeOptimal(BaseStrategy):
    """Compute-optimal allocation (Snell et al. 2024): strategy and budget per task by difficulty."""

    name: Literal["compute_optimal"] = "compute_optimal"
    probes: int = Field(4, ge=1, le=64)
    """Cheap full samples that estimate a task's difficulty (their answers' agreement)."""
    easy_agreement: float = Field(0.75, ge=0, le=1)
    """Agreement from which a task is easy: the probes' majority answer is kept."""
    hard_agreement: float = Field(0.5, ge=0, le=1)
    """Agreement below which a task is hard."""
    medium_strategy: Choice = "best_of_n"
    """Strategy for medium tasks."""
    medium_budget: int = Field(8, ge=1, le=1024)
    """Samples-equivalent for a medium task."""
    hard_strategy: Choice = "beam_search"
    """Strategy for hard tasks."""
    hard_budget: int = Field(16, ge=1, le=1024)
    """Samples-equivalent for a hard task."""
    global_token_budget: int | None = Field(None, ge=1)
    """Generated tokens all tasks of the run may spend together (None: no cap)."""
    _spent: int = PrivateAttr(0)

    @model_validator(mode="after")
    def _tiers_ordered(self) -> ComputeOptimal:
        if self.hard_agreement > self.easy_agreement:
            raise ValueError(
                f"hard_agreement ({self.hard_agreement}) must not exceed easy_agreement ({self.easy_agreement})"
            )
        return self

    def needs(self) -> dict[str, str]:
        step_level = sorted({self.medium_strategy, self.hard_strategy} - {"best_of_n"})
        return {"process": f"{', '.join(step_level)} for medium or hard tasks"} if step_level else {}

    async def run(self, ctx: Context) -> Episode:
        before = ctx.episode.usage.completion_tokens
        probes = await ctx.complete(ctx.root, self.probes, meta={"probe": True})
        per_sample = max(1, (ctx.episode.usage.completion_tokens - before) // max(1, len(probes)))
        self._spent += ctx.episode.usage.completion_tokens - before
        answers = Counter(a for leaf in probes if (a := ctx.answer(leaf)) is not None)
        agreement = answers.most_common(1)[0][1] / len(probes) if answers else 0.0
        if agreement >= self.easy_agreement:
            tier, choice, budget = "easy", None, 0
        elif agreement >= self.hard_agreement:
            tier, choice, budget = "medium", self.medium_strategy, self.medium_budget
        else:
            tier, choice, budget = "hard", self.hard_strategy, self.hard_budget
        if self.global_token_budget is not None:
            budget = min(budget, max(0, self.global_token_budget - self._spent) // per_sample)
        ctx.root.meta["allocation"] = {"difficulty": 1 - agreement, "tier": tier, "strategy": choice, "budget": budget}
        if choice is None or budget < 2:
            ctx.root.meta["allocation"]["strategy"] = None
            return await ctx.finish(self._majority(ctx, probes, answers))
        reserved = budget * per_sample
        self._spent += reserved
        start = ctx.episode.usage.completion_tokens
        try:
            episode: Episode = await _strategy(choice, budget, ctx.verifiers.process is not None).run(ctx)
            return episode
        finally:
            self._spent += ctx.episode.usage.completion_tokens - start - reserved

    @staticmethod
    def _majority(ctx: Context, probes: list[Node], answers: Counter[str]) -> Node:
        if not answers:
            return probes[0]
        top = answers.most_common(1)[0][0]
        return next(leaf for leaf in probes if ctx.answer(leaf) == top)


def _strategy(choice: Choice, budget: int, has_process: bool) -> Any:
    from strategies.beam_search import BeamSearch
    from strategies.best_of_n import BestOfN
    from strategies.dvts import DVTS
    from strategies.verify_backtrack import VerifyAndBacktrack

    if choice == "best_of_n":
        return BestOfN(n=budget, selection="weighted_majority" if has_process else "majority")
    if choice == "beam_search":
        return BeamSearch(width=max(1, budget // 4), expansions=min(4, budget))
    if choice == "dvts":
        return DVTS(subtrees=max(1, budget // 4), expansions=min(4, budget))
    return VerifyAndBacktrack(episode_retries=budget)
