"""Decomposition: least-to-most prompting (Zhou et al. 2023).

::

    subquestions <- complete(fork(root, decompose_prompt))      # one per line
    node <- end of the decomposition
    for q in subquestions:                                       # in order
        node <- complete(fork(node, subquestion_template(q)))    # its answer stays in the prefix
    leaf <- complete(fork(node, final_template(question)))

Design decisions:
- Everything is one path of the tree: the decomposition prompt and its sub-question
  lines (``meta['subquestion']``), each sub-question with its solution, then the
  original question and the final solution, so each answer is in the prefix of the
  next call (and a prefix cache reuses it).
- Sub-question lines are the decomposition's lines without an extracted answer, at
  most ``max_subquestions`` of them; with none, the final question is asked directly.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from runtime.core.types import Episode
from runtime.search.context import Context
from runtime.search.strategy import BaseStrategy

__all__ = ["LeastToMost"]


class LeastToMost(BaseStrategy):
    """Decomposition (least-to-most): sub-questions first, solved in order, then the question."""

    name: Literal["least_to_most"] = "least_to_most"
    max_subquestions: int = Field(4, ge=1, le=16)
    """Sub-questions solved at most."""
    decompose_prompt: str = Field(
        "To solve this, first answer these simpler sub-questions, one per line:", min_length=1
    )
    """Text that asks the policy for sub-questions."""
    subquestion_template: str = Field("Sub-question: {question}", min_length=1)
    """Text that poses one sub-question; field {question}."""
    final_template: str = Field("Now the original question: {question}", min_length=1)
    """Text that poses the original question at the end; field {question}."""

    async def run(self, ctx: Context) -> Episode:
        plan = ctx.fork(ctx.root, self.decompose_prompt, stage="decompose")
        (node,) = await ctx.complete(plan, 1)
        lines = [n for n in ctx.path(node)[plan.depth :] if n.text and n.answer is None]
        for n in lines[: self.max_subquestions]:
            n.meta["subquestion"] = True
        for k, sub in enumerate(lines[: self.max_subquestions]):
            ask = ctx.fork(node, self.subquestion_template.format(question=sub.text), stage=f"subquestion {k + 1}")
            (node,) = await ctx.complete(ask, 1)
        question = ctx.task.as_messages()[-1]["content"]
        final = ctx.fork(node, self.final_template.format(question=question), stage="final")
        (leaf,) = await ctx.complete(final, 1)
        return await ctx.finish(leaf)
