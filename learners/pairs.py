"""Preference pairs straight from the search tree, at two levels.

- **Solution pairs** (``solutions``): a finished solution the verifiers accept and one
  they reject, of the same task (best-of-N's samples, a tree's leaves): the chosen and
  rejected continuations share the prompt.
- **Step pairs** (``steps``, Step-DPO, Lai et al. 2024; MCTS-DPO, Xie et al. 2024): at one
  node, a child step the process verifier accepts and a sibling it rejects, or two
  children whose values (MCTS / Monte-Carlo) differ by more than ``value_margin``; both
  continue the same prefix (the path to the node), so the pair isolates one step.
  Verify-and-backtrack and MCTS keep the rejected siblings in the tree.

Design decisions:
- A solution is accepted when its outcome score reaches ``min_reward`` and, with a
  process verifier, every step reaches ``min_step_score`` (a right answer through a
  wrong step is not a chosen example); unscored leaves and steps are judged and scored
  here through a scoring-only context.
- At most ``max_pairs`` pairs per group (every accepted with every rejected would grow
  quadratically); pairs are taken in tree order, so a run is reproducible.
- Identical texts never pair (a duplicate sibling is not a preference).
- Token ids are the record, and agent episodes train as they ran: where a side's path
  holds sampled ids or an observation, the pair carries each side as pieces
  (:class:`Continuation`: ids as sampled, text to encode, a loss mask that gives an
  observation's tokens 0, and each piece's text) and the prefix as the request sent it
  (``prefix_pieces``), so DPO's log-probabilities are of the policy's own tokens only.
  Sibling turns (the call nodes under one parent, the steps after one observation)
  pair as steps from one identical state; an observation is never a side. The prompt
  is the one the episode's calls were sent (:func:`~runtime.tools.base.task_prompt`:
  the call format's system message describing the tools, or ``tools``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from learners.examples import masked_parts, tool_names
from runtime.core.errors import VerifierError
from runtime.core.registry import with_overrides
from runtime.core.types import Episode, Node, path_pieces
from runtime.search.context import Context, Verifiers
from runtime.tools.base import task_prompt

__all__ = ["Continuation", "Pair", "PairSettings", "Pairs"]

Level = Literal["solutions", "steps"]


def _levels(*names: Level) -> list[Level]:
    """A typed default list of pair levels (a bare list literal is ``list[str]`` to mypy)."""
    return list(names)


class PairSettings(BaseModel):
    """Which preference pairs the tree gives (part of a preference learner's config)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    levels: list[Level] = Field(default_factory=lambda: _levels("solutions", "steps"), min_length=1)
    """Solution pairs (accepted vs rejected solutions of a task), step pairs (siblings under one prefix), or both."""
    min_reward: float = Field(1.0, ge=0, le=1)
    """A solution is accepted at this outcome score."""
    min_step_score: float | None = Field(0.5, ge=0, le=1)
    """A step is accepted at this process score (and a solution needs every step accepted; null: outcome only)."""
    value_margin: float | None = Field(None, gt=0, le=1)
    """Step pairs also from two siblings whose values (node.value: MCTS, Monte-Carlo)
    differ by more than this (null: off)."""
    max_pairs: int = Field(4, ge=1, le=256)
    """Pairs taken from one group (one task's solutions, one node's children), at most."""


@dataclass(slots=True)
class Continuation:
    """One side of a pair as the policy sampled it (see module doc)."""

    parts: list[str | list[int]]
    """Ids as sampled, or text the learner encodes (an observation's, a fork's)."""
    mask: list[int]
    """Per piece: 1 the policy's tokens (in the log-probability), 0 an observation's (fed only)."""
    texts: list[str]
    """Per piece, the text the tree holds (sampled ids are checked against it)."""
    tools: list[str] = field(default_factory=list)
    """Per observation piece, in order, the tool whose call it answers (for an export)."""


@dataclass(slots=True)
class Pair:
    """A preferred and a dispreferred continuation of the same prompt and prefix."""

    messages: list[dict[str, str]]
    prefix: str
    chosen: str
    rejected: str
    key: tuple[str, str, int]
    level: str
    policy_version: int | None = None
    weight: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)
    prefix_pieces: Continuation | None = None
    """``prefix`` as pieces, where it holds sampled ids or an observation (None: encode
    ``prefix``). Where any piece is ids, the learner sends its parts as the request that
    sampled the sides did; text alone is encoded as one string, as the request sent it."""
    chosen_parts: Continuation | None = None
    """``chosen`` as sampled (None: encode its text)."""
    rejected_parts: Continuation | None = None
    """``rejected`` as sampled (None: encode its text)."""
    tools: list[dict[str, Any]] | None = None
    """The tool schemas the prompt offered with ``messages`` (rendered by the chat
    template, ``apply_chat_template(tools=...)``); None: none."""


class Pairs:
    """Turns episodes into preference pairs (see module doc)."""

    def __init__(self, settings: PairSettings | None = None, *, delimiter: str = "\n", **overrides: Any) -> None:
        self.settings = with_overrides(settings or PairSettings(), overrides)
        self.delimiter = delimiter
        self.rejected_by_process = 0
        self.counts = {"solutions": 0, "steps": 0}

    def state(self) -> list[bytes]:
        return []

    def load_state(self, seen: Sequence[bytes]) -> None:
        return None

    async def examples(self, episode: Episode, verifiers: Verifiers | None = None) -> list[Pair]:
        if episode.status != "ok" or verifiers is None:
            return []
        ctx = Context.scoring(episode, verifiers, self.delimiter)
        out: list[Pair] = []
        if "solutions" in self.settings.levels:
            out += await self._solution_pairs(ctx)
        if "steps" in self.settings.levels:
            out += await self._step_pairs(ctx)
        for p in out:
            self.counts[p.level] += 1
        return out

    async def _solution_pairs(self, ctx: Context) -> list[Pair]:
        leaves = [n for n in ctx.episode.nodes[1:] if n.terminal and not n.children and n.text]
        good: list[Node] = []
        bad: list[Node] = []
        for leaf in leaves:
            verdict = await self._accepted(ctx, leaf)
            if verdict is not None:
                (good if verdict else bad).append(leaf)
        text = {leaf.id: self.delimiter.join(n.text for n in ctx.path(leaf)) for leaf in good + bad}
        pairs = [(g, b) for g in good for b in bad if text[g.id] != text[b.id]][: self.settings.max_pairs]
        return [
            self._pair(ctx, "", text[g.id], text[b.id], "solutions", ctx.path(g), ctx.path(b), None) for g, b in pairs
        ]

    async def _step_pairs(self, ctx: Context) -> list[Pair]:
        s = self.settings
        out: list[Pair] = []
        for parent in ctx.episode.nodes:
            children = [ctx.node(c) for c in parent.children if ctx.node(c).text and ctx.node(c).trained]
            if len(children) < 2:
                continue
            found: list[tuple[Node, Node]] = []
            if ctx.verifiers.process is not None and s.min_step_score is not None:
                scores = {c.id: await self._score(ctx, c) for c in children}
                good = [c for c in children if scores[c.id] >= s.min_step_score]
                bad = [c for c in children if scores[c.id] < s.min_step_score]
                found += [(g, b) for g in good for b in bad]
            if s.value_margin is not None:
                valued = [c for c in children if c.value is not None]
                found += [(a, b) for a in valued for b in valued if a.value - b.value > s.value_margin]  # type: ignore[operator]
            found = [(g, b) for g, b in found if g.text != b.text][: s.max_pairs]
            prefix = ctx.text(parent)
            sent = self._continuation(ctx.path(parent), closed=True)  # what the siblings' request sent
            out += [self._pair(ctx, prefix, g.text, b.text, "steps", [g], [b], sent) for g, b in found]
        return out

    def _pair(
        self, ctx: Context, text: str, chosen: str, rejected: str, level: str, good: list[Node], bad: list[Node],
        prefix: Continuation | None,
    ) -> Pair:  # fmt: skip
        versions = [n.policy_version for n in good + bad if n.policy_version is not None]
        sides = [self._continuation(path, closed=level == "steps") for path in (good, bad)]
        messages, tools = task_prompt(ctx.task, ctx.verifiers.environment)  # what the episode's calls were sent
        return Pair(
            messages=messages,
            tools=tools,
            prefix=text,
            chosen=chosen,
            rejected=rejected,
            key=ctx.episode.key,
            level=level,
            policy_version=min(versions) if versions else None,
            prefix_pieces=prefix,
            chosen_parts=sides[0],
            rejected_parts=sides[1],
        )

    def _continuation(self, path: list[Node], closed: bool) -> Continuation | None:
        """``path`` as pieces (a step ends with its delimiter, ``closed``); None where it
        holds neither sampled ids nor an observation (its text is encoded whole)."""
        pieces = path_pieces(path, self.delimiter, closed=closed)
        if all(p.ids is None for p in pieces) and all(n.trained for n in path):
            return None
        parts, mask, texts = masked_parts(pieces)
        return Continuation(parts, mask, texts, tool_names(path))

    async def _accepted(self, ctx: Context, leaf: Node) -> bool | None:
        """Whether a finished solution is accepted (None: it cannot be judged)."""
        cached = [v for k, v in leaf.scores.items() if k.startswith("outcome:")]
        if cached:
            right = max(cached) >= self.settings.min_reward
        elif ctx.verifiers.outcome is not None:
            try:
                right = (await ctx.judge(leaf)).value >= self.settings.min_reward
            except VerifierError:
                return None
        else:
            return None
        if right and ctx.verifiers.process is not None and self.settings.min_step_score is not None:
            for node in ctx.path(leaf):
                if await self._score(ctx, node) < self.settings.min_step_score:
                    self.rejected_by_process += 1
                    return False
        return right

    async def _score(self, ctx: Context, node: Node) -> float:
        try:
            return await ctx.score(node)
        except VerifierError:
            return 0.0
