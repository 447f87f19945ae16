"""Monte-Carlo tree search over reasoning steps with PUCT selection (Silver et al.
2017, AlphaZero; for LLM reasoning: Zhang et al. 2024 ReST-MCTS*, Guan et al. 2025 rStar).

::

    repeat `simulations` times:
        node <- root; while node is expanded and not finished:
            node <- argmax_c  Q(c) + c_puct * P(c) * sqrt(N(node)) / (1 + N(c))
        if node is finished: evaluate it again
        else: expand it into k steps (distinct ones), evaluate each new child
        backpropagate every value to the evaluated node and all its ancestors
    answer <- the finished node with the best Q (else: follow the most visits, complete)

Design decisions:
- Prior P: the softmax of each child's sequence logprob where the backend returns
  logprobs, else uniform (``meta['prior']``). Dirichlet noise
  ``(1 - eps) P + eps Dir(alpha)`` on the root's children is for training-time
  search (``dirichlet_weight`` eps > 0); it is off by default.
- Value of a node: ``process`` = its aggregated process score; ``rollout_process`` /
  ``rollout_outcome`` = the mean over ``rollouts`` completions from it of their process
  score / outcome score (the latter uses the reference answer: training-time search).
  Rollout nodes stay in the tree, marked ``meta['rollout']``, and are never selected.
- Bookkeeping on the nodes themselves: ``visits`` N, ``value`` Q (mean of the values
  backed up through it) and ``meta['evals']`` (how often the node itself was
  evaluated), so N(n) = evals(n) + sum of N over its children, and N(root) is the
  number of evaluations.
"""

from __future__ import annotations

import math
import random
from typing import Literal

from pydantic import Field

from runtime.core.types import Episode, Node
from runtime.search.context import Aggregate, Context, gather
from runtime.search.strategy import BaseStrategy

__all__ = ["MCTS"]

Value = Literal["process", "rollout_process", "rollout_outcome"]


class MCTS(BaseStrategy):
    """Monte-Carlo tree search over steps with PUCT selection."""

    name: Literal["mcts"] = "mcts"
    simulations: int = Field(16, ge=1, le=4096)
    """Select-expand-evaluate-backpropagate rounds."""
    expansions: int = Field(4, ge=1, le=64)
    """Next steps sampled when a node is expanded."""
    c_puct: float = Field(1.5, gt=0, le=100)
    """Exploration constant of PUCT."""
    value: Literal["process", "rollout_process", "rollout_outcome"] = "process"
    """Node value: its process score, or the mean score of rollouts from it (process or outcome)."""
    rollouts: int = Field(1, ge=1, le=64)
    """Rollouts per evaluation (rollout values)."""
    aggregate: Aggregate = "min"
    """How a path's step scores combine: last, min, product or mean."""
    dirichlet_alpha: float = Field(0.3, gt=0, le=10)
    """Concentration of the Dirichlet noise on the root's priors."""
    dirichlet_weight: float = Field(0.0, ge=0, le=1)
    """Share of Dirichlet noise in the root's priors (0: none; use > 0 for training-time search)."""
    seed: int | None = None
    """Seed of the noise."""

    def needs(self) -> dict[str, str]:
        return {"outcome" if self.value == "rollout_outcome" else "process": f"value {self.value!r}"}

    async def run(self, ctx: Context) -> Episode:
        rng = random.Random(self.seed)
        for _ in range(self.simulations):
            node = ctx.root
            while not node.terminal and (actions := self.actions(ctx, node)):
                node = max(actions, key=lambda c: self.puct(node, c))
            if node.terminal:
                evaluated = [node]
            else:
                evaluated = ctx.dedupe(await ctx.expand(node, self.expansions))
                self._priors(evaluated, rng if node is ctx.root and self.dirichlet_weight > 0 else None)
            values = await gather(self._evaluate(ctx, c) for c in evaluated)
            for child, v in zip(evaluated, values, strict=True):
                self._backpropagate(ctx, child, v)
        return await ctx.finish(await self._choose(ctx))

    @staticmethod
    def actions(ctx: Context, node: Node) -> list[Node]:
        """The children selection may descend to (no duplicates, no rollouts)."""
        kids = (ctx.node(i) for i in node.children)
        return [c for c in kids if "duplicate_of" not in c.meta and not c.meta.get("rollout")]

    def puct(self, parent: Node, child: Node) -> float:
        prior = float(child.meta.get("prior", 1.0))
        return (child.value or 0.0) + self.c_puct * prior * math.sqrt(parent.visits) / (1 + child.visits)

    def _priors(self, children: list[Node], rng: random.Random | None) -> None:
        if all(c.logprobs for c in children):
            logits = [sum(c.logprobs or []) for c in children]
            top = max(logits)
            weights = [math.exp(x - top) for x in logits]
        else:
            weights = [1.0] * len(children)
        priors = [w / sum(weights) for w in weights]
        if rng is not None:
            noise = [rng.gammavariate(self.dirichlet_alpha, 1.0) for _ in children]
            eps = self.dirichlet_weight
            priors = [(1 - eps) * p + eps * g / (sum(noise) or 1.0) for p, g in zip(priors, noise, strict=True)]
        for c, p in zip(children, priors, strict=True):
            c.meta["prior"] = p

    async def _evaluate(self, ctx: Context, node: Node) -> float:
        if self.value == "process" or node.terminal:
            if self.value == "rollout_outcome":
                return (await ctx.judge(node)).value
            return await ctx.score_path(node, self.aggregate)
        leaves = await ctx.complete(node, self.rollouts, meta={"rollout": True})
        if self.value == "rollout_outcome":
            scores = [(await ctx.judge(leaf)).value for leaf in leaves]
        else:
            scores = [await ctx.score_path(leaf, self.aggregate) for leaf in leaves]
        return sum(scores) / len(scores)

    def _backpropagate(self, ctx: Context, node: Node, value: float) -> None:
        node.meta["evals"] = node.meta.get("evals", 0) + 1
        current: Node | None = node
        while current is not None:
            current.value = ((current.value or 0.0) * current.visits + value) / (current.visits + 1)
            current.visits += 1
            current = None if current.parent is None else ctx.node(current.parent)

    async def _choose(self, ctx: Context) -> Node:
        finished = [n for n in ctx.episode.nodes if n.terminal and n.visits and not n.meta.get("rollout")]
        if finished:
            return max(finished, key=lambda n: (n.value or 0.0, n.visits))
        node = ctx.root
        while actions := self.actions(ctx, node):
            node = max(actions, key=lambda c: c.visits)
        if node.terminal:
            return node
        (leaf,) = await ctx.complete(node, 1)
        return leaf
