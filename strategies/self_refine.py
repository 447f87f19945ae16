"""Sequential revision: generate, get feedback, revise with it, up to k rounds
(Self-Refine, Madaan et al. 2023; Reflexion, Shinn et al. 2023; the "revisions"
axis of Snell et al. 2024).

::

    leaf <- complete(root)
    for round in 1..rounds:
        ok, anchor, feedback <- feedback(leaf)
        if ok: break
        leaf <- complete(fork(anchor, template(feedback)))
    answer <- leaf

Feedback, by ``feedback``:
- ``process``: the first step of the latest attempt the process verifier rejects;
  the revision continues right after that step with its explanation, so the wrong
  step and the correction are both in the trace (the tiny domain's ``check:`` lines).
  An attempt whose steps all pass but that gives no answer is revised too.
- ``outcome``: the outcome verifier's verdict on the whole attempt; the revision
  follows the attempt. Its explanation is passed on only with ``explain`` (an exact
  match verifier's explanation contains the reference answer).
- ``critique``: the policy's own critique: the strategy writes ``critique_prompt``
  under the attempt, the policy answers in one step; ``CORRECT`` (without
  ``INCORRECT``) ends the loop, anything else is the feedback the revision follows.

Every attempt, note and critique stays on one path of the tree (``meta['revision']``
on feedback notes, ``meta['critique']`` on critique nodes), so the chosen path is the
whole refinement trace.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from runtime.core.types import Episode, Node
from runtime.search.context import Context
from runtime.search.strategy import BaseStrategy

__all__ = ["SelfRefine"]


class SelfRefine(BaseStrategy):
    """Sequential revision (Self-Refine / Reflexion): generate, get feedback, revise."""

    name: Literal["self_refine"] = "self_refine"
    rounds: int = Field(3, ge=0, le=16)
    """Revisions after the first attempt, at most."""
    feedback: Literal["process", "outcome", "critique"] = "process"
    """Feedback from the process verifier, the outcome verifier, or the policy's own critique."""
    threshold: float = Field(0.5, ge=0, le=1)
    """Score that counts as passing."""
    template: str = Field("check: {feedback}", min_length=1)
    """Feedback note written before a revision; field {feedback}."""
    explain: bool = False
    """Pass the outcome verifier's explanation on (it may contain the reference answer)."""
    critique_prompt: str = Field(
        "Review: is every step above correct? Say CORRECT, or name the first wrong step.", min_length=1
    )
    """Prompt for the policy's critique (feedback critique)."""

    def needs(self) -> dict[str, str]:
        return {self.feedback: f"feedback {self.feedback!r}"} if self.feedback in ("process", "outcome") else {}

    async def run(self, ctx: Context) -> Episode:
        (leaf,) = await ctx.complete(ctx.root, 1)
        for round_ in range(1, self.rounds + 1):
            ok, anchor, feedback = await self._feedback(ctx, leaf)
            if ok:
                break
            if feedback is not None:
                anchor = ctx.fork(anchor, self.template.format(feedback=feedback), revision=round_)
            (leaf,) = await ctx.complete(anchor, 1, meta={"round": round_})
        return await ctx.finish(leaf)

    async def _feedback(self, ctx: Context, leaf: Node) -> tuple[bool, Node, str | None]:
        """(passed, node the revision follows, feedback text or None if already in the tree)."""
        if self.feedback == "process":
            path = ctx.path(leaf)
            start = max((i + 1 for i, n in enumerate(path) if "revision" in n.meta), default=0)
            for step in path[start:]:  # the latest attempt only
                if await ctx.score(step) < self.threshold:
                    why = next(iter(step.explanations.values()), f"{step.text} is wrong")
                    return False, step, why
            if ctx.answer(leaf) is None:  # every step checks out, but it stops short
                return False, leaf, "the solution gives no answer yet"
            return True, leaf, None
        if self.feedback == "outcome":
            verdict = await ctx.judge(leaf)
            why = (
                verdict.explanation
                if self.explain and verdict.explanation
                else f"the answer {ctx.answer(leaf)} is wrong"
            )
            return verdict.value >= self.threshold, leaf, why
        ask = ctx.fork(leaf, self.critique_prompt, critique=True)
        (critique,) = await ctx.expand(ask, 1, meta={"critique": True})
        said = critique.text.upper()
        return "CORRECT" in said and "INCORRECT" not in said, critique, None
