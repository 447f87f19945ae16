"""From episodes to training examples: the verified-correct paths of a search tree.

Expert iteration / rejection-sampling fine-tuning (STaR, Zelikman et al. 2022; ReST-EM,
Singh et al. 2023) keeps what the verifier accepted and behaviour-clones it.

Design decisions:
- ``keep="chosen"`` takes the path the strategy picked when the episode's outcome
  reward reaches ``min_reward``; ``keep="all_correct"`` takes every terminal leaf whose
  outcome score reaches it (a leaf the strategy never judged is judged here with the
  run's outcome verifier), so one best-of-8 episode may give up to eight examples.
- A path whose final answer is right but one of whose steps the run's process verifier
  rejects (``min_step_score``) is not kept: two arithmetic slips can cancel out, and
  such a path teaches the slips. Its wrong steps have the highest loss in the batch,
  so a few of them dominate the gradient of a batch of already likely correct paths.
  Steps the strategy never scored are scored here; rejected paths are counted.
- ``weighting="pass_rate"`` weighs an episode's examples by the share of its samples
  that failed (1 - pass rate): a problem every sample already solves teaches nothing
  and gives no example, one solved by a single sample of eight weighs 7/8. This is
  filtered behaviour cloning with a per-problem baseline, the positive half of a
  policy gradient with the mean reward as baseline; it spends the learner's steps at
  the frontier of what the policy can do.
- Deduplicated by (task, completion text) over the whole stream, so a policy that has
  converged on one solution does not train on it eight times per episode.
- An example carries the policy version its text was sampled under (the oldest in its
  path) and a weight; the loop lowers the weight of, or drops, stale examples.
- Failed episodes and episodes without a reward give nothing; they are counted by the
  loop, not silently lost.
- The whole tree, not only solved leaves (``prefixes``): an unsolved episode still holds
  steps the process verifier accepted. Its deepest prefix whose every step passes
  becomes an example that ends open (no end of turn is trained after it), so a task the
  policy fails at its last step still teaches the steps before it. Nothing of the
  verifier's (hints, reference steps) enters the text: only the policy's own steps.
- Token ids are the record: an example whose path the policy sampled as ids carries
  them (``parts``: each step's ids across every model call, stop tokens included), and
  the learner trains on exactly those, never on the text encoded again. Text the path
  holds without ids (a strategy's fork, a text-only backend's step) is encoded by the
  learner; such examples are counted (``reencoded_paths``).
- Agent episodes: an observation (the environment's answer to a tool call) is context,
  never trained. It is a piece of its own (:func:`~runtime.core.types.path_pieces`)
  and the example's ``mask`` gives it 0 (every piece the policy wrote: 1), so the
  learner feeds its tokens and puts none of them in the loss; a path with an
  observation always carries ``parts``, ids or not, so its text is never trained as one
  assistant string. ``texts`` keeps each piece's text: the learner checks a piece's
  sampled ids against it (:func:`fed_mismatch`), and an export writes
  observations as ``tool`` messages. The prompt is the one the episode's calls were
  sent (:func:`~runtime.tools.base.task_prompt`: the call format's system message
  describing the tools, or the schemas the chat template renders, ``Example.tools``).
- ``retry_weight`` weighs a step that was accepted only after a rejected sibling under
  the same prefix: the positions where the policy went wrong first are where it has the
  most to learn (in the tiny domain, two-digit sums; teacher-forced, ``bundled-weak``
  gives a correct sum step a mean probability of 0.41, every other line 0.94-0.99).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from runtime.core.errors import VerifierError
from runtime.core.registry import with_overrides
from runtime.core.types import Episode, Node, Piece, path_pieces
from runtime.search.context import Context, Verifiers
from runtime.tools.base import task_prompt

__all__ = [
    "Example",
    "PathSettings",
    "VerifiedPaths",
    "fed_mismatch",
    "masked_parts",
    "oldest_version",
    "path_nodes",
    "path_text",
    "tool_names",
]

Keep = Literal["chosen", "all_correct"]
Weighting = Literal["uniform", "pass_rate"]


@dataclass(slots=True)
class Example:
    """One behaviour-cloning example: the task's messages and the assistant text to learn."""

    messages: list[dict[str, str]]
    completion: str
    key: tuple[str, str, int]
    policy_version: int | None = None
    weight: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)
    segments: list[tuple[str, float]] | None = None
    """The completion's lines, each with the weight the loss gives its tokens (0 or False:
    not trained; None: all of it at weight 1)."""
    ends: bool = True
    """Whether the completion is a whole answer (an end of turn is trained after it); a
    verified prefix of an unsolved episode is not."""
    parts: list[tuple[str | list[int], float]] | None = None
    """The completion as the policy sampled it, each piece with its loss weight: token
    ids as sampled (used as they are), or text to encode (a step without ids); a prefix
    that does not end the answer ends with its line break. None: encode ``segments`` or
    ``completion``. A converter that rewrites the completion drops them."""
    mask: list[int] | None = None
    """Per piece of ``parts``: 1 the policy wrote it (trained at its weight), 0 the
    environment's (an observation: fed, never trained). None: every piece is 1."""
    texts: list[str] | None = None
    """Per piece of ``parts``, the text the tree holds for it (what sampled ids are
    checked against, and what an export writes)."""
    tools: list[dict[str, Any]] | None = None
    """The tool schemas the prompt offered with ``messages`` (rendered by the chat
    template, ``apply_chat_template(tools=...)``); None: none."""


def masked_parts(pieces: Sequence[Piece]) -> tuple[list[str | list[int]], list[int], list[str]]:
    """``pieces`` as parts (ids as sampled, else text), their loss mask (0 for an
    observation's piece, 1 otherwise) and their texts."""
    parts: list[str | list[int]] = [p.ids if p.ids is not None else p.text for p in pieces]
    mask = [0 if any(not n.trained for n in p.nodes) else 1 for p in pieces]
    return parts, mask, [p.text for p in pieces]


def fed_mismatch(
    tokenizer: Any,
    parts: Sequence[str | Sequence[int]] | None,
    texts: Sequence[str] | None = None,
    behaviour: Sequence[float] | None = None,
) -> str | None:
    """Why ``parts``' sampled ids are not what the engine was fed and sampled for this
    sample, or None. The learner rebuilds the engine's sequence by the engine's own rule
    (:func:`~learners.trainer.part_ids`), so it differs only where the record does: an id outside this
    tokenizer's vocabulary (another tokenizer sampled it), a piece whose ids do not
    decode to the text the tree holds for it (``texts``; whitespace aside, as a step's
    text is stripped), or behaviour log-probs that are not one per sampled id."""
    if parts is None:
        return None
    vocab = len(tokenizer)
    sampled = 0
    for k, part in enumerate(parts):
        if isinstance(part, str):
            continue
        sampled += len(part)
        if any(not 0 <= int(t) < vocab for t in part):
            return f"piece {k}: a token id outside the vocabulary ({vocab})"
        if texts is not None and k < len(texts):
            decoded = "".join(tokenizer.decode(list(part), skip_special_tokens=True).split())
            if "".join(texts[k].split()) not in decoded:
                return f"piece {k}: its ids do not decode to its step's text"
    if behaviour is not None and len(behaviour) != sampled:
        return f"{len(behaviour)} behaviour log-probs for {sampled} sampled ids"
    return None


def path_nodes(episode: Episode, leaf: Node) -> list[Node]:
    out = []
    node = leaf
    while node.parent is not None:
        out.append(node)
        node = episode.nodes[node.parent]
    out.reverse()
    return out


def path_text(episode: Episode, leaf: Node, delimiter: str = "\n") -> str:
    """The assistant text of the path ending at ``leaf``: its steps joined by ``delimiter``."""
    return delimiter.join(n.text for n in path_nodes(episode, leaf) if n.text)


def _after_rejection(episode: Episode, node: Node) -> bool:
    """Whether a sibling of ``node`` (same parent) was rejected by the process verifier."""
    if node.parent is None:
        return False
    siblings = episode.nodes[node.parent].children
    return any(episode.nodes[c].meta.get("rejected") for c in siblings if c != node.id)


def tool_names(path: Sequence[Node]) -> list[str]:
    """For each observation on ``path`` (in order), the name of the tool whose call is
    the node before it ("" where that is not a parsed call)."""
    out = []
    for i, node in enumerate(path):
        if node.trained:
            continue
        call = path[i - 1].meta.get("call") if i > 0 else None
        out.append(str(call.get("name", "")) if isinstance(call, dict) else "")
    return out


def oldest_version(path: Sequence[Node]) -> int | None:
    versions = [n.policy_version for n in path if n.policy_version is not None]
    return min(versions) if versions else None


class PathSettings(BaseModel):
    """Which paths of an episode become examples (part of a learner config section)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    keep: Keep = "chosen"
    """Which verified paths of an episode become examples."""
    min_reward: float = Field(1.0, ge=0, le=1)
    """A path counts as correct at this outcome score."""
    min_step_score: float | None = Field(0.5, ge=0, le=1)
    """With a process verifier, every step of a kept path must score at least this
    (right answers reached through wrong steps are not kept); null: outcome only."""
    weighting: Weighting = "uniform"
    """pass_rate: weigh an episode's examples by the share of its samples that failed
    (a problem every sample solves gives none)."""
    dedupe: bool = True
    """Skip an example whose (task, text) was already trained on."""
    prefixes: bool = False
    """An episode without a kept path gives its deepest prefix whose every step the
    process verifier accepts, as an example without an end of turn (needs a process
    verifier)."""
    retry_weight: float = Field(1.0, ge=0, le=16)
    """Loss weight of a step accepted after a rejected sibling (other steps weigh 1)."""


class VerifiedPaths:
    """Turns episodes into examples of their verified-correct paths (see module doc)."""

    def __init__(self, settings: PathSettings | None = None, *, delimiter: str = "\n", **overrides: Any) -> None:
        self.settings = with_overrides(settings or PathSettings(), overrides)
        self.delimiter = delimiter
        self.rejected_by_process = 0
        self.reencoded_paths = 0
        """Examples with text the learner encodes (not all of it sampled ids): see module doc."""
        self._seen: set[bytes] = set()

    def _fresh(self, task_id: str, text: str) -> bool:
        if not self.settings.dedupe:
            return True
        digest = hashlib.blake2b(f"{task_id}\0{text}".encode(), digest_size=12).digest()
        if digest in self._seen:
            return False
        self._seen.add(digest)
        return True

    async def examples(self, episode: Episode, verifiers: Verifiers | None = None) -> list[Example]:
        """The examples ``episode`` gives (possibly none)."""
        if episode.status != "ok":
            return []
        # A context for scoring only (it never generates): leaves and steps the strategy
        # left unjudged get the caching, timeout and error handling of its own calls.
        ctx = None
        if verifiers is not None:
            ctx = Context.scoring(episode, verifiers, self.delimiter)
        if self.settings.keep == "chosen":
            solved = episode.reward is not None and episode.reward >= self.settings.min_reward
            candidates = [episode.nodes[episode.chosen_path[-1]]] if solved and episode.chosen_path else []
        else:
            candidates = [leaf for leaf in episode.leaves if await self._correct(ctx, leaf)]
        leaves = []
        for leaf in candidates:
            if await self._steps_pass(ctx, leaf):
                leaves.append(leaf)
            else:
                self.rejected_by_process += 1
        weight = 1.0
        if self.settings.weighting == "pass_rate" and leaves:
            terminal = [leaf for leaf in episode.leaves if leaf.terminal] or leaves
            if self.settings.keep == "all_correct":  # every verified terminal leaf is in ``leaves``
                passed = len(leaves)
            else:
                passed = sum(
                    [await self._correct(ctx, leaf) and await self._steps_pass(ctx, leaf) for leaf in terminal]
                )
            weight = 1.0 - passed / len(terminal)
            if weight <= 0.0:  # every sample solved it: nothing left to learn here
                return []
        if not leaves and self.settings.prefixes:
            prefix = await self._verified_prefix(ctx, episode)
            return [] if prefix is None else self._example(episode, prefix, weight, ends=False, verifiers=verifiers)
        out = []
        for leaf in leaves:
            out += self._example(episode, leaf, weight, verifiers=verifiers)
        return out

    def _example(
        self, episode: Episode, leaf: Node, weight: float, *, ends: bool = True, verifiers: Verifiers | None = None
    ) -> list[Example]:
        """The example of the path to ``leaf`` (none if it is empty or already seen), under
        the prompt the episode's calls were sent (its environment's, ``verifiers.environment``)."""
        nodes = path_nodes(episode, leaf)
        path = [n for n in nodes if n.text]
        text = self.delimiter.join(n.text for n in path)
        if not text or not self._fresh(episode.task.id, text if ends else text + self.delimiter):
            return []
        segments = None
        if self.settings.retry_weight != 1.0:
            segments = [(n.text, self.settings.retry_weight if _after_rejection(episode, n) else 1.0) for n in path]
        parts, mask, texts = self._parts(episode, nodes, ends)
        sampled_only = parts is not None and all(
            not isinstance(piece, str) for (piece, _), m in zip(parts, mask or [], strict=True) if m
        )
        if not sampled_only:
            self.reencoded_paths += 1
        reward = episode.reward if leaf.id == (episode.chosen_path or [-1])[-1] else 1.0
        tools = tool_names(nodes)  # what each observation answers, for an export's tool messages
        messages, schemas = task_prompt(episode.task, verifiers.environment if verifiers is not None else None)
        return [
            Example(
                messages=messages,
                tools=schemas,
                completion=text,
                key=episode.key,
                policy_version=oldest_version(path),
                weight=weight,
                meta={
                    "reward": reward if ends else 0.0,
                    "leaf": leaf.id,
                    **({} if ends else {"prefix": True}),
                    **({"tools": tools} if tools else {}),
                },
                segments=segments,
                ends=ends,
                parts=parts,
                mask=mask,
                texts=texts,
            )
        ]

    def _parts(
        self, episode: Episode, path: list[Node], ends: bool
    ) -> tuple[list[tuple[str | list[int], float]] | None, list[int] | None, list[str] | None]:
        """The path's pieces with their loss weights (``retry_weight`` where a step of the
        piece came after a rejected sibling), mask and texts; None where no step has ids
        and no observation is on the path (text only, trained as one string)."""
        pieces = path_pieces(path, self.delimiter, closed=not ends)
        if all(p.ids is None for p in pieces) and all(n.trained for n in path):
            return None, None, None
        retry = self.settings.retry_weight
        parts, mask, texts = masked_parts(pieces)
        weighted: list[tuple[str | list[int], float]] = [
            (piece, retry if retry != 1.0 and any(_after_rejection(episode, n) for n in p.nodes) else 1.0)
            for piece, p in zip(parts, pieces, strict=True)
        ]
        return weighted, mask, texts

    async def _verified_prefix(self, ctx: Context | None, episode: Episode) -> Node | None:
        """The deepest non-terminal node whose every step passes the process verifier."""
        if ctx is None or ctx.verifiers.process is None or self.settings.min_step_score is None:
            return None
        for node in sorted(episode.nodes[1:], key=lambda n: -n.depth):
            candidate = node.text and not node.terminal and not node.meta.get("reflection")
            if candidate and await self._steps_pass(ctx, node):
                return node
        return None

    async def _correct(self, ctx: Context | None, leaf: Node) -> bool:
        """Whether terminal ``leaf``'s outcome score reaches ``min_reward`` (judged now if
        the strategy did not; a verifier that fails does not accept it)."""
        if not leaf.terminal:
            return False
        cached = [v for k, v in leaf.scores.items() if k.startswith("outcome:")]
        if cached:
            return max(cached) >= self.settings.min_reward
        if ctx is None or ctx.verifiers.outcome is None or ctx.task.answer is None:
            return False
        try:
            return (await ctx.judge(leaf)).value >= self.settings.min_reward
        except VerifierError:
            return False

    async def _steps_pass(self, ctx: Context | None, leaf: Node) -> bool:
        """Whether every step to ``leaf`` reaches ``min_step_score`` under the process
        verifier (scored now where the strategy did not; a failing verifier rejects)."""
        if ctx is None or ctx.verifiers.process is None or self.settings.min_step_score is None:
            return True
        try:
            for node in ctx.path(leaf):
                if await ctx.score(node) < self.settings.min_step_score:
                    return False
        except VerifierError:
            return False
        return True

    def state(self) -> list[bytes]:
        return sorted(self._seen)

    def load_state(self, seen: Sequence[bytes]) -> None:
        self._seen = set(seen)
