"""Reflection traces: a searched tree flattened into one chain of thought in which a step
the verifier rejected is followed by its check and the corrected step, so that expert
iteration teaches backtracking itself (the paper's self-correction behaviour; the
bundled policy's own training traces have this form: ``7*8=54`` then
``check: 7*8=54 is wrong, 7*8=56, leaving 3+56``).

For every verified-correct path (:class:`~learners.examples.VerifiedPaths` decides which),
each step that was accepted only after a rejected sibling (the first one sampled,
verify-and-backtrack's ``meta['rejected']`` or a process score below ``min_step_score``)
becomes ``rejected``, then the ``template`` line in place of the accepted step. Fields of
the template: ``{rejected}`` (the rejected step), ``{rejected_head}`` (it, up to its first
comma), ``{step}`` (the accepted step), ``{explanation}`` (the verifier's, on the rejected
step). Reflection nodes the strategy wrote itself are left out (the template replaces them).

Design decisions:
- ``mask_rejected`` (default on) keeps the rejected step out of the loss: the policy
  should learn to check and correct, not to make the slip. The example carries the
  masked text as its own segment; the supervised learner gives it no labels.
- ``max_reflections`` bounds how many corrections one trace holds, and
  ``reflection_share`` how many of the kept paths get them (the rest are plain paths),
  so a run can mix the two as the bundled recipe does.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from pydantic import Field

from learners.examples import Example, PathSettings, VerifiedPaths, path_nodes
from runtime.core.types import Episode, Node
from runtime.search.context import Verifiers

__all__ = ["ReflectionSettings", "ReflectionTraces"]


class ReflectionSettings(PathSettings):
    """Which verified paths become reflection traces, and how a correction is written."""

    traces: Literal["plain", "reflection"] = "plain"
    """plain: verified paths as they are; reflection: with their rejected steps and the
    corrections written out (see learners/reflection.py)."""
    template: str = Field("check: {rejected_head} is wrong, {step}", min_length=1)
    """The line that follows a rejected step and stands for the accepted one; fields
    {rejected}, {rejected_head}, {step}, {explanation}."""
    mask_rejected: bool = True
    """Keep the rejected step out of the loss (it stays in the context)."""
    max_reflections: int = Field(2, ge=1, le=16)
    """Corrections written into one trace, at most."""
    reflection_share: float = Field(1.0, ge=0, le=1)
    """Share of the kept paths written with their corrections (the rest stay plain)."""
    seed: int = 0
    """Seed of the reflection_share draw."""


class ReflectionTraces(VerifiedPaths):
    """Verified paths with their rejected-then-corrected steps written out (see module doc)."""

    settings: ReflectionSettings

    def __init__(self, settings: ReflectionSettings | None = None, *, delimiter: str = "\n", **overrides: Any) -> None:
        super().__init__(settings or ReflectionSettings(), delimiter=delimiter, **overrides)
        self._rng = random.Random(self.settings.seed)
        self.reflections = 0

    async def examples(self, episode: Episode, verifiers: Verifiers | None = None) -> list[Example]:
        plain = await super().examples(episode, verifiers)
        out = []
        for example in plain:
            leaf = episode.nodes[example.meta["leaf"]]
            segments, written = self._segments(episode, leaf)
            if written and self._rng.random() < self.settings.reflection_share:
                example.segments = segments
                example.completion = self.delimiter.join(text for text, _ in segments)
                example.parts = None  # the rewritten text is not what was sampled
                example.meta["reflections"] = written
                self.reflections += written
            out.append(example)
        return out

    def _segments(self, episode: Episode, leaf: Node) -> tuple[list[tuple[str, float]], int]:
        """The path's lines, each with whether the loss trains on it, and how many
        corrections they hold."""
        s = self.settings
        out: list[tuple[str, float]] = []  # (text, loss weight: 1 or 0)
        written = 0
        for node in path_nodes(episode, leaf):
            if node.meta.get("reflection") or not node.text:
                continue
            assert node.parent is not None
            rejected = self._rejected_sibling(episode, episode.nodes[node.parent], node)
            if rejected is not None and written < s.max_reflections:
                fields = {
                    "rejected": rejected.text,
                    "rejected_head": rejected.text.split(",", 1)[0].strip(),
                    "step": node.text,
                    "explanation": next(iter(rejected.explanations.values()), ""),
                }
                out.append((rejected.text, not s.mask_rejected))
                out.append((s.template.format(**fields), True))
                written += 1
            else:
                out.append((node.text, True))
        return out, written

    def _rejected_sibling(self, episode: Episode, parent: Node, accepted: Node) -> Node | None:
        """The first step sampled beside ``accepted`` (under the same parent, or under a
        reflection written there) that the verifier rejected."""
        parents = [parent] + [episode.nodes[c] for c in parent.children if episode.nodes[c].meta.get("reflection")]
        threshold = self.settings.min_step_score
        for p in parents:
            for child_id in p.children:
                child = episode.nodes[child_id]
                if child.id == accepted.id or child.meta.get("reflection") or not child.text:
                    continue
                score = next(iter(child.scores.values()), None)
                bad = child.meta.get("rejected") or (threshold is not None and score is not None and score < threshold)
                if bad and child.id < accepted.id:
                    return child
        return None
