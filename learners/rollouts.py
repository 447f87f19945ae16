"""From episode trees to policy-gradient rollouts with per-step advantages.

Two kinds of group, both read from the tree a search produced:

- ``leaves``: the finished solutions of one episode (best-of-N's samples,
  self-consistency's votes, compute-optimal's probes, every terminal path of a tree
  search): a group of answers to one task, whose advantages come from their outcome
  rewards relative to the group, optionally with the process verifier's step scores;
- ``siblings``: the steps sampled under one parent (the expansions of beam search,
  DVTS, MCTS, the resamples of verify-and-backtrack, rejected ones included): a group
  of actions from one state, whose advantages come from their process scores relative
  to the group (step-level GRPO: the search's negatives become gradient).

Advantages come from two registries (:mod:`learners.algorithms`, built-ins in
:mod:`learners.advantages`): the advantage estimator (``estimator``: grpo, dr_grpo,
rloo) turns a group's rewards into advantages relative to the group, and the step credit
(``advantage``: outcome, process, outcome_process, first_error) places a leaf's outcome
advantage and its steps' process scores on its steps. A sibling group's advantages are
its steps' process scores under the estimator. A new estimator or credit is one
registered function; the config names it.

Design decisions:
- A rollout keeps what was sampled, across every model call of its path: the token ids
  of each step (:func:`~runtime.core.types.path_pieces`: a step-level search's path is
  the concatenation of its calls' ids, stop tokens included) and the behaviour log-probs
  the engine recorded under the temperature and top-p it used, where every step has
  them. A sibling group's prefix is kept as the request that sampled it sent it
  (``prefix_parts``), so the learner rebuilds the very sequence the policy saw. A path
  with text the policy did not sample as ids (a strategy's fork, a text-only backend's
  step, a delimiter after a step cut at its token cap) has that text encoded by the
  learner, with the learner's policy as its behaviour; such rollouts are counted
  (``reencoded_paths``).
- Agent episodes: a leaf's group is whole agent episodes (every finished path, its tool
  calls and observations in it); a sibling group is the turns sampled from one
  identical state (the call nodes under one parent, or the steps after one
  observation), with the process verifier's score per turn (the ``tool_call``
  verifier's, or the configured one's) as its advantage. A leaf's step credit is over
  the policy's steps only: an observation is the environment's, gets advantage 0 and
  no score of its own in the group's statistics. A rollout whose path holds an
  observation always carries ``parts`` (ids or not), with ``mask`` (1: the policy's
  tokens; 0: the observation's, fed but never trained, with no behaviour log-prob)
  and each piece's ``texts`` and path steps (``part_steps``), so the learner places
  advantages by piece, whatever lines an observation holds. Its prompt is the one the
  episode's calls were sent (:func:`~runtime.tools.base.task_prompt`: the call
  format's system message describing the tools, or ``tools`` for the chat template),
  so the behaviour log-probs are of the sequence the learner rebuilds.
- Leaves and steps the strategy left unjudged or unscored are judged and scored here
  (through a scoring-only context: cached, bounded, errors kept out of the loss).
- A group whose advantages are all zero teaches nothing: it is counted
  (``skipped_groups``) and gives no rollout; so is a group of one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from learners.advantages import EPS, LeafCredit, group_advantages
from learners.algorithms import STEP_CREDITS, CreditName, EstimatorName
from learners.examples import masked_parts
from runtime.core.errors import VerifierError
from runtime.core.registry import with_overrides
from runtime.core.types import Episode, Node, path_parts, path_pieces
from runtime.search.context import Context, Verifiers
from runtime.tools.base import task_prompt

__all__ = ["Rollout", "RolloutSettings", "Rollouts", "group_advantages"]


class RolloutSettings(BaseModel):
    """Which groups the tree gives and how their advantages are computed (part of a
    policy-gradient learner's config section)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    groups: Literal["leaves", "siblings", "both"] = "leaves"
    """leaves: an episode's finished solutions form a group; siblings: the steps sampled
    under one parent form a group (scored by the process verifier); both."""
    estimator: EstimatorName = "grpo"
    """Group baseline, a registered advantage estimator: grpo (mean and std), dr_grpo
    (mean only), rloo (mean of the others), or one registered with
    ``learners.algorithms.register_advantage``."""
    advantage: CreditName = "outcome"
    """What a leaf's tokens are credited with, a registered step credit: outcome (its
    outcome), process (its steps' process scores), outcome_process (both);
    first_error: the outcome, placed where the process verifier says it belongs (a
    wrong solution's negative advantage goes on its first rejected step only, the correct
    steps before it and the steps after it get none; a right solution credits its
    accepted steps and gives its rejected steps the negative of its advantage)."""
    outcome_weight: float = Field(1.0, ge=0)
    """Weight of the outcome advantage (advantage outcome_process)."""
    process_weight: float = Field(1.0, ge=0)
    """Weight of the process advantage (advantage outcome_process)."""
    reject_below: float = Field(0.5, ge=0, le=1)
    """A step scoring below this is rejected: no outcome credit flows through it."""
    locate_errors: bool = False
    """Credit at the first wrong token: the first rejected step of a solution whose
    process verifier located the error in it (``tiny_rule`` does: the first character
    that differs from the correct step) carries its advantage on the token holding that
    character only; the step's other tokens get none (its right prefix is not blamed,
    and what follows the error is conditioned on it). Steps the verifier did not locate
    keep the step's credit."""


@dataclass(slots=True)
class Rollout:
    """One sampled continuation with an advantage per step, ready for a policy-gradient loss."""

    messages: list[dict[str, str]]
    prefix: str
    """Assistant text the continuation was sampled after ("" for a whole solution)."""
    text: str
    """The continuation's text (its steps joined by the step delimiter)."""
    step_advantages: list[float]
    key: tuple[str, str, int]
    token_ids: list[int] | None = None
    """The continuation's token ids as sampled, across every call of its path (None:
    encode ``parts``, or ``text``)."""
    behaviour: list[float] | None = None
    """Behaviour log-prob of each sampled token (of ``token_ids``, or of the id pieces of
    ``parts``, in order); None: take the learner's own."""
    ends: bool = False
    """The continuation ends the answer: the end-of-turn token is trained too."""
    policy_version: int | None = None
    weight: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)
    prefix_parts: list[str | list[int]] | None = None
    """``prefix`` as the request that sampled the continuation sent it (its
    ``assistant_parts``: earlier steps' ids as sampled); None: encode ``prefix``."""
    parts: list[str | list[int]] | None = None
    """The continuation as pieces where some of it has no sampled ids: ids as sampled,
    text for the learner to encode (None: ``token_ids``, or ``text`` where neither)."""
    mask: list[int] | None = None
    """Per piece of ``parts``: 1 the policy's tokens (trained), 0 the environment's (an
    observation: fed, never trained, no behaviour log-prob). None: all 1."""
    texts: list[str] | None = None
    """Per piece of ``parts``, the text the tree holds for it (sampled ids are checked against it)."""
    part_steps: list[list[int]] | None = None
    """Per piece of ``parts``, the indexes in ``step_advantages`` of the steps it holds
    (none: a delimiter, which belongs to the step before it)."""
    error_at: tuple[int, int] | None = None
    """``(step, offset)``: the step (index in ``step_advantages``) whose advantage goes on
    one token only, the token holding character ``offset`` of that step's text
    (``locate_errors``); None: every token carries its step's advantage."""
    tools: list[dict[str, Any]] | None = None
    """The tool schemas the prompt offered with ``messages`` (rendered by the chat
    template, ``apply_chat_template(tools=...)``); None: none."""


class Rollouts:
    """Turns episodes into groups of rollouts with advantages (see module doc)."""

    def __init__(
        self, settings: RolloutSettings | None = None, *, delimiter: str = "\n", critic: bool = False, **overrides: Any
    ) -> None:
        """``critic``: every finished solution is a rollout, with its outcome reward and
        step scores in ``meta`` and no group baseline (a learner with a critic, PPO,
        computes the advantages)."""
        self.critic = critic
        self.settings = with_overrides(settings or RolloutSettings(), overrides)
        self.delimiter = delimiter
        self.rejected_by_process = 0  # the loop's counter: steps the process verifier rejected
        self.skipped_groups = 0
        self.groups = 0
        self.reencoded_paths = 0
        """Rollouts with text the learner encodes (not all of it sampled ids): see module doc."""

    def state(self) -> list[bytes]:
        return []  # nothing to dedupe: every sample is a draw of the policy

    def load_state(self, seen: Sequence[bytes]) -> None:
        return None

    async def examples(self, episode: Episode, verifiers: Verifiers | None = None) -> list[Rollout]:
        """The rollouts ``episode`` gives (possibly none)."""
        if episode.status != "ok" or verifiers is None:
            return []
        ctx = Context.scoring(episode, verifiers, self.delimiter)
        out: list[Rollout] = []
        if self.settings.groups in ("leaves", "both"):
            out += await self._leaves(ctx)
        if self.settings.groups in ("siblings", "both") and verifiers.process is not None:
            out += await self._siblings(ctx)
        self.reencoded_paths += sum(_reencoded(r) for r in out)
        return out

    # -- groups of solutions ---------------------------------------------------------

    async def _leaves(self, ctx: Context) -> list[Rollout]:
        ep = ctx.episode
        leaves = [n for n in ep.nodes[1:] if n.terminal and not n.children]
        scored = [(leaf, reward) for leaf in leaves if (reward := await self._outcome(ctx, leaf)) is not None]
        s = self.settings
        if self.critic:
            out = []
            for leaf, reward in scored:
                path = ctx.path(leaf)
                scores = [await self._step_score(ctx, n) for n in path] if ctx.verifiers.process is not None else []
                meta = {"reward": reward, "step_scores": scores, "group": "leaves"}
                out.append(self._rollout(ctx, path, [0.0] * len(path), meta))
            return out
        if len(scored) < 2:
            return []
        outcome = group_advantages([r for _, r in scored], s.estimator)
        paths = [ctx.path(leaf) for leaf, _ in scored]
        turns = [[n for n in path if n.trained] for path in paths]  # the policy's steps, not observations
        credit = STEP_CREDITS.entry(s.advantage)
        steps: list[list[float]] = [[] for _ in paths]
        if credit.traits.get("process", True) and ctx.verifiers.process is not None:
            for i, own in enumerate(turns):
                steps[i] = [await self._step_score(ctx, n) for n in own]
        flat = group_advantages([v for row in steps for v in row], s.estimator)
        process, k = [], 0
        for row in steps:
            process.append(flat[k : k + len(row)])
            k += len(row)
        rollouts = []
        for (_, reward), path, own, a_out, a_proc, scores in zip(scored, paths, turns, outcome, process, steps,
                                                                 strict=True):  # fmt: skip
            if scores or not credit.traits.get("process", True):
                per_step = credit.fn(LeafCredit(a_out, reward, len(own), scores, a_proc), s)
            else:  # a credit that reads step scores, on a solution nobody scored: its outcome
                per_step = [a_out] * len(own)
            if len(per_step) != len(own):
                raise ValueError(f"step credit {s.advantage!r} gave {len(per_step)} advantages for {len(own)} steps")
            self.rejected_by_process += sum(v < s.reject_below for v in scores)
            placed = iter(per_step)
            on_path = [next(placed) if n.trained else 0.0 for n in path]
            rollout = self._rollout(ctx, path, on_path, {"reward": reward, "group": "leaves"})
            if s.locate_errors and scores:
                rollout.error_at = self._located(ctx, path)
            rollouts.append(rollout)
        return self._kept(rollouts)

    # -- groups of sibling steps -----------------------------------------------------

    async def _siblings(self, ctx: Context) -> list[Rollout]:
        out: list[Rollout] = []
        for parent in ctx.episode.nodes:
            children = [ctx.node(c) for c in parent.children]
            sampled = [c for c in children if c.trained and _sampled_step(c)]
            if len(sampled) < 2:
                continue
            scores = [await self._step_score(ctx, c) for c in sampled]
            advantages = group_advantages(scores, self.settings.estimator)
            prefix = ctx.path(parent)
            parts = path_parts(path_pieces(prefix, self.delimiter))  # what the siblings' request sent
            group = [
                self._rollout(ctx, [c], [a], {"reward": v, "group": "siblings"}, ctx.text(parent), parts)
                for c, a, v in zip(sampled, advantages, scores, strict=True)
            ]
            out += self._kept(group)
        return out

    # -- helpers ---------------------------------------------------------------------

    def _kept(self, group: list[Rollout]) -> list[Rollout]:
        self.groups += 1
        if all(abs(a) < EPS for r in group for a in r.step_advantages):
            self.skipped_groups += 1
            return []
        return group

    def _rollout(
        self,
        ctx: Context,
        path: list[Node],
        per_step: list[float],
        meta: dict[str, Any],
        prefix: str = "",
        prefix_parts: list[str | list[int]] | None = None,
    ) -> Rollout:
        pieces = path_pieces(path, self.delimiter, closed=False)
        sampled = [p for p in pieces if p.ids is not None]
        exact = len(sampled) == len(pieces)
        agentic = any(not n.trained for n in path)
        known = bool(sampled) and all(p.behaviour is not None and len(p.behaviour) == len(p.ids or []) for p in sampled)
        versions = [n.policy_version for n in path if n.policy_version is not None]
        messages, tools = task_prompt(ctx.task, ctx.verifiers.environment)  # what the episode's calls were sent
        rollout = Rollout(
            messages=messages,
            tools=tools,
            prefix=prefix,
            text=self.delimiter.join(n.text for n in path),
            step_advantages=per_step,
            key=ctx.episode.key,
            token_ids=[t for p in pieces for t in p.ids or []] if exact else None,
            behaviour=[lp for p in sampled for lp in p.behaviour or []] if known else None,
            ends=path[-1].terminal and path[-1].finish_reason == "stop",
            policy_version=min(versions) if versions else None,
            meta=meta,
            prefix_parts=prefix_parts,
        )
        if (exact and not agentic) or not (sampled or agentic):
            return rollout  # all sampled ids (token_ids), or text only (text)
        index = {n.id: i for i, n in enumerate(path)}
        rollout.parts, rollout.mask, rollout.texts = masked_parts(pieces)
        rollout.part_steps = [[index[n.id] for n in p.nodes] for p in pieces]
        return rollout

    def _located(self, ctx: Context, path: list[Node]) -> tuple[int, int] | None:
        """``(step, offset)`` of the path's first rejected step, where its process
        verifier located the error in it; None when that step has no location."""
        name = ctx.verifiers.process.name if ctx.verifiers.process is not None else ""
        for i, node in enumerate(path):
            if node.trained and node.scores.get(name, 1.0) < self.settings.reject_below:
                offset = node.meta.get("error_at", {}).get(name)
                return (i, int(offset)) if offset is not None else None
        return None

    async def _outcome(self, ctx: Context, leaf: Node) -> float | None:
        cached = [v for k, v in leaf.scores.items() if k.startswith("outcome:")]
        if cached:
            return max(cached)
        if ctx.verifiers.outcome is None:
            return None
        try:
            return (await ctx.judge(leaf)).value
        except VerifierError:
            return None

    async def _step_score(self, ctx: Context, node: Node) -> float:
        try:
            return await ctx.score(node)
        except VerifierError:
            return 0.0


def _reencoded(rollout: Rollout) -> bool:
    """Whether the learner encodes some of the policy's own text (an observation's text is
    the environment's, encoded as the engine was fed it)."""
    if rollout.token_ids is not None:
        return False
    if rollout.parts is None:
        return True
    mask = rollout.mask or [1] * len(rollout.parts)
    return any(isinstance(part, str) and m for part, m in zip(rollout.parts, mask, strict=True))


def _sampled_step(node: Node) -> bool:
    """A one-step continuation the policy sampled (not a fork, a greedy lookahead, or a
    whole solution)."""
    if not node.text or node.token_ids is None or node.meta.get("covers", 1) != 1:
        return False
    return not node.sample_logprobs or any(lp != 0.0 for lp in node.sample_logprobs)
