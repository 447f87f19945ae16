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
- The global budget is the run's, not this object's: it counts the generated
  (completion) tokens of every episode of the run, in a :class:`TokenPool`. A
  resumed run starts from what its store holds (the scheduler calls
  :meth:`ComputeOptimal.resume_run` with the stored run's summary: its episodes'
  completion tokens), and on Ray the driver owns the pool in an actor that every
  rollout worker's copy of the strategy spends from (:meth:`ComputeOptimal.use_pool`,
  :mod:`runtime.app.cluster_account`), so N workers share one budget instead of N.
- An allocation is reserved from the pool before it runs and settled to what it used
  after (shielded from cancellation: an abandoned episode still settles), so concurrent
  episodes, in one process or on several workers, cannot overspend it together. The
  pool's methods are async without a suspension point inside: atomic on one event
  loop, and so inside the driver's actor, which holds the pool as it is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any, Literal, Protocol

import anyio
from pydantic import Field, PrivateAttr, model_validator

from runtime.core.types import Episode, Node
from runtime.search.context import Context
from runtime.search.strategy import BaseStrategy

__all__ = ["ComputeOptimal", "Pool", "TokenPool"]

Choice = Literal["best_of_n", "beam_search", "dvts", "verify_backtrack"]


class Pool(Protocol):
    """What the strategy spends its global budget from: a :class:`TokenPool` here, or a
    proxy of one that lives elsewhere (a Ray actor the driver owns)."""

    async def reserve(self, most: int, unit: int) -> int: ...

    async def spend(self, tokens: int) -> int: ...


class TokenPool:
    """A run's budget of generated tokens: ``limit`` in all, ``spent`` so far (reserved
    allocations included)."""

    def __init__(self, limit: int, spent: int = 0) -> None:
        self.limit = limit
        self.spent = spent

    async def reserve(self, most: int, unit: int) -> int:
        """Whole units of ``unit`` tokens, at most ``most``, that the budget still holds;
        they count as spent until :meth:`spend` settles them."""
        granted = max(0, min(most, (self.limit - self.spent) // max(1, unit)))
        self.spent += granted * unit
        return granted

    async def spend(self, tokens: int) -> int:
        """Count ``tokens`` more as spent (negative: give a reservation's rest back); the total."""
        self.spent += tokens
        return self.spent


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
    """Generated tokens all tasks of the run may spend together, across resumes and
    rollout workers (None: no cap)."""
    _pool: Pool | None = PrivateAttr(None)

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

    @property
    def pool(self) -> Pool | None:
        """The run's token pool this strategy spends from (None: no global budget)."""
        if self._pool is None and self.global_token_budget is not None:
            self._pool = TokenPool(self.global_token_budget)
        return self._pool

    def resume_run(self, summary: Mapping[str, Any]) -> None:
        """Start the budget from what the run's store holds (``summary``: the stored run's
        totals, its episodes' ``completion_tokens`` among them), not from zero."""
        if self.global_token_budget is not None:
            self._pool = TokenPool(self.global_token_budget, int(summary.get("completion_tokens") or 0))

    def use_pool(self, pool: Pool) -> None:
        """Spend from ``pool``, a budget shared with other processes of the run."""
        self._pool = pool

    async def run(self, ctx: Context) -> Episode:
        pool = self.pool
        before = ctx.episode.usage.completion_tokens
        probes = await ctx.complete(ctx.root, self.probes, meta={"probe": True})
        probed = ctx.episode.usage.completion_tokens - before
        per_sample = max(1, probed // max(1, len(probes)))
        if pool is not None:
            await _settle(pool, probed)
        answers = Counter(a for leaf in probes if (a := ctx.answer(leaf)) is not None)
        agreement = answers.most_common(1)[0][1] / len(probes) if answers else 0.0
        if agreement >= self.easy_agreement:
            tier, choice, budget = "easy", None, 0
        elif agreement >= self.hard_agreement:
            tier, choice, budget = "medium", self.medium_strategy, self.medium_budget
        else:
            tier, choice, budget = "hard", self.hard_strategy, self.hard_budget
        if pool is not None and budget:
            budget = await pool.reserve(budget, per_sample)
        ctx.root.meta["allocation"] = {"difficulty": 1 - agreement, "tier": tier, "strategy": choice, "budget": budget}
        if choice is None or budget < 2:
            ctx.root.meta["allocation"]["strategy"] = None
            if pool is not None and budget:
                await _settle(pool, -budget * per_sample)
            return await ctx.finish(self._majority(ctx, probes, answers))
        reserved = budget * per_sample
        start = ctx.episode.usage.completion_tokens
        try:
            episode: Episode = await _strategy(choice, budget, ctx.verifiers.process is not None).run(ctx)
            return episode
        finally:
            if pool is not None:
                await _settle(pool, ctx.episode.usage.completion_tokens - start - reserved)

    @staticmethod
    def _majority(ctx: Context, probes: list[Node], answers: Counter[str]) -> Node:
        if not answers:
            return probes[0]
        top = answers.most_common(1)[0][0]
        return next(leaf for leaf in probes if ctx.answer(leaf) == top)


async def _settle(pool: Pool, tokens: int) -> None:
    """Count ``tokens`` in the pool even while the episode is being cancelled."""
    if tokens:
        with anyio.CancelScope(shield=True):
            await pool.spend(tokens)


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
