"""The episode context: the primitives every search strategy is written with.

``expand`` a node into n one-step children, ``complete`` a node to the end, ``score``
a step with the process verifier, ``judge`` a path with the outcome verifier, ``fork``
a node with text the strategy writes itself (a reflection, feedback), and ``finish``
the episode on a chosen leaf. Every node created is kept in the episode's tree.
Tree searches also get ``expand_all`` (several nodes at once), ``gather`` (run
awaitables concurrently, results in order) and ``dedupe`` (identical sibling steps are
one state).

Design decisions:
- Branches share their prefix: a request carries the task's messages plus the path's
  text as ``assistant_prefix``, identical for siblings, so a backend with a prefix
  cache (vLLM, SGLang, the local engine) reuses it.
- Token ids are the record: the request also carries the path as ``assistant_parts``
  (:func:`~runtime.core.types.path_pieces`: each step's sampled ids, text only where a
  step has none), so a backend that takes ids continues the very tokens it sampled
  and never re-encodes generated text; a text-only backend sends the text.
- Budgets are enforced here, at the only place model calls are made: the episode's
  token budget is checked before every call and clamps ``max_tokens``.
- Errors are attributed at the boundary: anything a policy raises that is not already
  a :class:`~runtime.core.errors.PolicyError` is wrapped in one, likewise for verifiers,
  so the stored episode says which part failed. ``gather`` re-raises the first error
  of its task group unwrapped, so attribution survives concurrency.
- Concurrency without nondeterministic trees: ``expand_all`` issues its calls
  concurrently (a batching backend serves them in one batch) but adds the children in
  the order of its arguments, so node ids do not depend on which call returned first.
- Verifier cost is episode cost: a verifier that calls a model (Monte-Carlo rollouts,
  an LLM judge) reports its tokens and cost on the :class:`~runtime.rewards.base.Score`
  and they are added to the episode's usage and the run's :class:`Ledger`.
- What a model writes is made storable before it enters the tree: lone surrogates are
  replaced and a completion past ``sampling.max_completion_chars`` is cut and counted.
- Agentic episodes (``verifiers.environment`` set): a step the environment's format
  reads as a tool call becomes a ``call`` node; expanding or completing a call node
  first runs the call once and samples after its observation
  (:mod:`runtime.search.turns`), so strategies need no change to search agent episodes.
  ``complete`` then goes one step per call, so every call runs where it is written.
  The environment's call format also shapes the request: the tools its prompt offers
  (``GenerationRequest.tools``, and a system message where the template shows none)
  and, for the OpenAI tool protocol, the path as chat messages. That prompt is
  :func:`~runtime.tools.base.task_prompt`'s, the one the learners rebuild an episode's
  sequence under.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import anyio
from pydantic import BaseModel, ConfigDict, Field

from runtime.core.concurrency import gather
from runtime.core.errors import PolicyError, TokenBudgetExceeded, VerifierError
from runtime.core.text import clean_text, cut_text
from runtime.core.types import Episode, Node, path_parts, path_pieces
from runtime.policy.base import Completion, GenerationRequest, GenerationResult, Policy
from runtime.rewards.base import AnswerExtractor, OutcomeVerifier, ProcessVerifier, Score
from runtime.rewards.shaping import PotentialShaping
from runtime.search.turns import Turns
from runtime.tools.base import Environment, task_prompt

__all__ = ["Aggregate", "Context", "Ledger", "Sampling", "Verifiers", "aggregate_scores", "gather"]

Aggregate = Literal["last", "min", "product", "mean"]
Meta = dict[str, Any] | None  # fields every node a call creates carries
T = TypeVar("T")
MAX_COMPLETION_CHARS = 65_536  # far above a reasoning step; bounds what one reply can cost the store


def aggregate_scores(scores: Sequence[float], aggregate: Aggregate) -> float:
    """Combine step scores: the last, the minimum, the mean or the product (0 if none)."""
    if not scores:
        return 0.0
    if aggregate == "last":
        return scores[-1]
    if aggregate == "min":
        return min(scores)
    if aggregate == "mean":
        return sum(scores) / len(scores)
    product = 1.0
    for v in scores:
        product *= v
    return product


class Sampling(BaseModel):
    """How the context samples: shared by every strategy."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    temperature: float = Field(0.8, ge=0, le=2)
    """Sampling temperature (0 = greedy)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass."""
    step_delimiter: str = Field("\n", min_length=1)
    """Text that ends one reasoning step. A step that ends on the model's end of turn
    instead ends its path (no call asks for a step after the end of the message), where
    the backend can tell (token ids; ``transformers serve``, which keeps the stop string in
    the text); a text-only backend that cannot leaves its paths to end on the empty step
    that follows."""
    step_max_tokens: int = Field(64, ge=1)
    """Token cap of one step."""
    max_tokens: int = Field(512, ge=1)
    """Token cap of a full solution."""
    max_steps: int = Field(16, ge=1)
    """Steps before a path is cut off."""
    logprobs: bool = False
    """Ask the backend for token logprobs."""
    max_completion_chars: int = Field(MAX_COMPLETION_CHARS, ge=1)
    """Characters kept of one completion; the rest is cut (finish reason length) and counted."""
    seed: int | None = None
    """Base sampling seed, where the backend honours seeds."""


@dataclass(slots=True)
class Ledger:
    """What a run has spent so far, in-flight episodes included: every context of the
    run adds each model call's cost (its own and its verifiers') as it happens, so a
    run-wide budget stops admission before the episodes that spent it finish."""

    cost: float = 0.0


@dataclass(slots=True)
class Verifiers:
    outcome: OutcomeVerifier | None = None
    process: ProcessVerifier | None = None
    extractor: AnswerExtractor = field(default_factory=AnswerExtractor)
    timeout: float = 30.0
    shaping: PotentialShaping | None = None
    final: AnswerExtractor | None = None
    """Read from the whole text of a finished path none of whose steps wrote an answer."""
    environment: Environment | None = None
    """Where the episode's tool calls run (None: no tools). It travels with the
    verifiers: both are the world's side of an episode, built once per run."""


class _NoGeneration:
    """The policy of a scoring-only context: any generation is a bug of its caller."""

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        raise RuntimeError("a scoring-only context does not generate")

    async def aclose(self) -> None:
        return None


class Context:
    """Everything one episode's strategy may use. Created by the scheduler."""

    @classmethod
    def scoring(cls, episode: Episode, verifiers: Verifiers, delimiter: str = "\n") -> Context:
        """A context over a finished episode that only scores and judges (with the same
        caching, timeout and error handling as a strategy's own calls), never generates:
        what learners use to score the steps and leaves a strategy left unscored."""
        return cls(episode, _NoGeneration(), verifiers, Sampling(step_delimiter=delimiter))

    def __init__(
        self,
        episode: Episode,
        policy: Policy,
        verifiers: Verifiers,
        sampling: Sampling,
        token_budget: int | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.episode = episode
        self.ledger = ledger
        self.task = episode.task
        self.policy = policy
        self.verifiers = verifiers
        self.sampling = sampling
        self.token_budget = token_budget
        if not episode.nodes:
            episode.nodes.append(Node(id=0, parent=None, depth=0))
        env = verifiers.environment
        self.turns = None if env is None else Turns(episode, env, sampling.max_steps, sampling.step_delimiter)
        """The episode's tool executions and environment states (None: no environment)."""
        self._prompt: tuple[list[dict[str, str]], list[dict[str, Any]] | None] | None = None

    @property
    def root(self) -> Node:
        return self.episode.nodes[0]

    def node(self, node_id: int) -> Node:
        return self.episode.nodes[node_id]

    def path(self, node: Node) -> list[Node]:
        """Nodes from the first step down to ``node`` (the root excluded)."""
        out = []
        nodes = self.episode.nodes
        while node.parent is not None:
            out.append(node)
            node = nodes[node.parent]
        out.reverse()
        return out

    def text(self, node: Node) -> str:
        """The path's step texts, each followed by the step delimiter."""
        texts = []
        nodes = self.episode.nodes
        while node.parent is not None:  # path() without the list of nodes: once per model call
            texts.append(node.text)
            node = nodes[node.parent]
        if not texts:
            return ""
        texts.reverse()
        d = self.sampling.step_delimiter
        return d.join(texts) + d

    # -- building the tree -------------------------------------------------------------

    def _add(self, parent: Node, text: str, **fields: Any) -> Node:
        node = Node(id=len(self.episode.nodes), parent=parent.id, depth=parent.depth + 1, text=text, **fields)
        return self._attach(parent, node)

    def _attach(self, parent: Node, node: Node, ended_turn: bool = False) -> Node:
        """``node`` (a new child of ``parent``) into the tree: its answer, whether it ends a
        path (``ended_turn``: its sampling ended on the model's end of turn, which ends the
        path unless the step is a tool call, whose observation the turn waits for)."""
        self.episode.nodes.append(node)
        parent.children.append(node.id)
        if self.turns is not None:
            self.turns.mark(node)
        text = node.text
        answer = node.answer = self.verifiers.extractor(text) if text else None
        node.terminal = (
            node.terminal
            or answer is not None
            or not text.strip()
            or node.depth >= self.sampling.max_steps
            or (ended_turn and node.kind != "call")
        )
        return node

    def fork(self, node: Node, text: str, **meta: Any) -> Node:
        """A child of ``node`` with text the strategy wrote (no model call)."""
        return self._add(node, text, meta=dict(meta))

    def dedupe(self, nodes: Sequence[Node]) -> list[Node]:
        """The first of each group of identical sibling steps; the others stay in the
        tree, marked ``meta['duplicate_of']`` (sampling the same step twice reaches the
        same state, so a search should spend its budget once on it)."""
        seen: dict[tuple[int | None, str], Node] = {}
        out = []
        for n in nodes:
            first = seen.setdefault((n.parent, n.text), n)
            if first is n:
                out.append(n)
            else:
                n.meta["duplicate_of"] = first.id
        return out

    async def _generate(
        self, node: Node, n: int, max_tokens: int, stop: list[str] | None, **overrides: Any
    ) -> GenerationResult:
        episode = self.episode
        usage = episode.usage
        if self.token_budget is not None:
            left = self.token_budget - usage.prompt_tokens - usage.completion_tokens
            if left <= 0:
                raise TokenBudgetExceeded(f"episode used {usage.tokens} of {self.token_budget} tokens")
            max_tokens = max(1, min(max_tokens, left // max(n, 1)))
        s = self.sampling
        task = self.task
        path = self.path(node)
        d = s.step_delimiter
        env = self.verifiers.environment
        messages, tools = self._messages()
        request = GenerationRequest(
            messages=messages,
            assistant_prefix=d.join(n.text for n in path) + d if path else "",
            assistant_parts=path_parts(path_pieces(path, d)),
            tools=tools,
            assistant_messages=env.assistant_messages(path, d) if env is not None and path else None,
            n=n,
            max_tokens=max_tokens,
            temperature=overrides.get("temperature", s.temperature) if overrides else s.temperature,
            top_p=overrides.get("top_p", s.top_p) if overrides else s.top_p,
            stop=stop,
            logprobs=s.logprobs,
            seed=None if s.seed is None else s.seed + usage.calls,
            metadata={"task_id": task.id, "sample": episode.sample},
        )
        try:
            result = await self.policy.generate(request)
        except PolicyError:
            raise
        except Exception as exc:
            raise PolicyError(f"{type(exc).__name__}: {exc}") from exc
        self._admit(result)
        usage.calls += 1
        usage.prompt_tokens += result.prompt_tokens
        usage.completion_tokens += result.completion_tokens
        self._charge(result.cost)
        v = result.policy_version
        if v is not None:
            span = episode.policy_versions  # [lowest, highest]; a new list only when it widens
            if not span:
                episode.policy_versions = [v, v]
            elif v < span[0] or v > span[1]:
                episode.policy_versions = [min(span[0], v), max(span[1], v)]
        return result

    def _messages(self) -> tuple[list[dict[str, str]], list[dict[str, Any]] | None]:
        """The task's messages and the tools the prompt offers: as they are without an
        environment, else as its call format wants them (:func:`~runtime.tools.base.task_prompt`,
        which the learners rebuild the prompt with too; computed once per episode)."""
        if self._prompt is None:
            self._prompt = task_prompt(self.task, self.verifiers.environment)
        messages, tools = self._prompt
        return list(messages), tools

    def _admit(self, result: GenerationResult) -> None:
        """What a model wrote, made storable: lone surrogates replaced, and text past
        ``sampling.max_completion_chars`` cut (finish reason ``length``; its token data
        no longer lines up and is dropped), counted in ``usage.capped``."""
        limit = self.sampling.max_completion_chars
        for c in result.completions:
            text = c.text if isinstance(c.text, str) else str(c.text)
            text, cut = cut_text(clean_text(text), limit)
            c.text = text
            if cut:
                c.token_ids = c.logprobs = c.sample_logprobs = c.token_versions = None
                c.finish_reason = "length"
                self.episode.usage.capped += 1

    async def expand(self, node: Node, n: int = 1, *, meta: Meta = None, **overrides: Any) -> list[Node]:
        """Sample ``n`` next steps of ``node``; each becomes a child (tagged with ``meta``).
        A call node's steps are children of its observation (the call runs first); a
        call whose observation ends the path gives that observation instead."""
        if self.turns is not None:
            (children,) = await self.expand_all([node], n, meta=meta, **overrides)
            return children
        s = self.sampling
        result = await self._generate(node, n, s.step_max_tokens, [s.step_delimiter], **overrides)
        return self._add_steps(node, result, meta)

    async def expand_all(
        self, nodes: Sequence[Node], n: int = 1, *, meta: Meta = None, **overrides: Any
    ) -> list[list[Node]]:
        """``expand`` every node of ``nodes`` concurrently; children are added in the
        order of ``nodes`` whatever order the calls finish in (tool calls among them run
        first, one after another, so observation ids are as deterministic)."""
        s = self.sampling
        if self.turns is not None:
            nodes = [await self.turns.observe(node) if node.kind == "call" else node for node in nodes]
        ended = [node.kind == "observation" and node.terminal for node in nodes]
        results = iter(
            await gather(
                self._generate(node, n, s.step_max_tokens, [s.step_delimiter], **overrides)
                for node, end in zip(nodes, ended, strict=True)
                if not end
            )
        )
        return [
            [node] if end else self._add_steps(node, next(results), meta)
            for node, end in zip(nodes, ended, strict=True)
        ]

    def _add_steps(self, node: Node, result: GenerationResult, meta: Meta) -> list[Node]:
        # Once per model call: the Node is built here, not through _add's **fields.
        nodes = self.episode.nodes
        return [
            self._attach(
                node,
                Node(
                    id=len(nodes),
                    parent=node.id,
                    depth=node.depth + 1,
                    text=c.text.strip(),
                    token_ids=c.token_ids,
                    logprobs=c.logprobs,
                    sample_logprobs=c.sample_logprobs,
                    token_versions=c.token_versions,
                    policy_version=result.policy_version,
                    finish_reason=c.finish_reason,
                    stop_reason=c.stop_reason if c.token_ids is not None else None,
                    meta=dict(meta) if meta else {},
                ),
                ended_turn=_ended_turn(c),
            )
            for c in result.completions
        ]

    async def complete(self, node: Node, n: int = 1, *, meta: Meta = None, **overrides: Any) -> list[Node]:
        """Sample ``n`` continuations of ``node`` to the end; returns their leaves.

        Each continuation is split at the step delimiter into a chain of step nodes,
        so process verifiers and learners see steps either way; the continuation's
        token ids and logprobs are kept on its first node (``meta['covers']`` steps).
        Every node created carries ``meta``. With an environment, one step per call.
        """
        if self.turns is not None:
            return await gather(
                self._run_out(first, meta, overrides) for first in await self.expand(node, n, meta=meta, **overrides)
            )
        s = self.sampling
        result = await self._generate(node, n, s.max_tokens, None, **overrides)
        leaves = []
        for c in result.completions:
            lines = [ln.strip() for ln in c.text.split(s.step_delimiter) if ln.strip()] or [""]
            parent = node
            for k, line in enumerate(lines):
                parent = self._add(
                    parent,
                    line,
                    token_ids=c.token_ids if k == 0 else None,
                    logprobs=c.logprobs if k == 0 else None,
                    sample_logprobs=c.sample_logprobs if k == 0 else None,
                    token_versions=c.token_versions if k == 0 else None,
                    policy_version=result.policy_version,
                    finish_reason=c.finish_reason if k == len(lines) - 1 else None,
                    meta=({"covers": len(lines)} if k == 0 else {}) | (meta or {}),
                )
            parent.terminal = True
            leaves.append(parent)
        return leaves

    async def _run_out(self, node: Node, meta: Meta, overrides: dict[str, Any]) -> Node:
        """Expand ``node`` one step at a time (running the calls on the way) to the end."""
        while not node.terminal:
            (node,) = await self.expand(node, 1, meta=meta, **overrides)
        return node

    # -- scoring ------------------------------------------------------------------------

    async def score(self, node: Node, verifier: ProcessVerifier | None = None) -> float:
        """Process-verifier score of ``node``'s step given its prefix (cached per
        verifier name). ``verifier`` defaults to the configured process verifier. An
        observation is not the policy's step: it has the score of the call it answers."""
        verifier = verifier or self.verifiers.process
        if verifier is None:
            raise VerifierError("this strategy needs a process verifier and none is configured")
        if node.kind == "observation" and node.parent is not None:
            return await self.score(self.node(node.parent), verifier)
        if verifier.name in node.scores:
            return node.scores[verifier.name]
        previous = [n.text for n in self.path(node)[:-1]]
        result = await self._verify(verifier.name, verifier.score_step(self.task, previous, node.text))
        node.scores[verifier.name] = result.value
        if result.explanation:
            node.explanations[verifier.name] = result.explanation
        if result.error_at is not None:
            node.meta.setdefault("error_at", {})[verifier.name] = result.error_at
        return result.value

    async def score_path(
        self, node: Node, aggregate: Aggregate = "min", verifier: ProcessVerifier | None = None
    ) -> float:
        """Aggregate of the process scores of every step from the root to ``node``
        (observations are the environment's, not steps: not counted)."""
        path = [n for n in self.path(node) if n.kind != "observation"]
        return aggregate_scores([await self.score(n, verifier) for n in path], aggregate)

    async def score_all(self, nodes: Sequence[Node], aggregate: Aggregate = "min") -> list[float]:
        """``score_path`` of every node, concurrently (a batching verifier serves them together)."""
        return await gather(self.score_path(n, aggregate) for n in nodes)

    def answer(self, node: Node) -> str | None:
        """The answer written on the path to ``node`` (last one found), if any; for a
        finished path with none, what ``verifiers.final`` reads from its whole text."""
        for n in reversed(self.path(node)):
            if n.answer is not None:
                return n.answer
        if self.verifiers.final is not None and node.terminal:
            return self.verifiers.final(self.text(node))
        return None

    async def judge(self, node: Node) -> Score:
        """Outcome-verifier score of the solution ending at ``node`` (cached). A verifier
        with a ``score_turns(task, answer, path, nodes)`` method reads the path's nodes
        instead of its text (an agentic episode's calls, and what the environment recorded
        on its observations: the ``verifiers_rubric`` adapter)."""
        verifier = self.verifiers.outcome
        if verifier is None:
            raise VerifierError("this strategy needs an outcome verifier and none is configured")
        key = "outcome:" + verifier.name
        if key in node.scores:
            return Score(node.scores[key], node.explanations.get(key))
        turns = getattr(verifier, "score_turns", None)
        scoring = (
            turns(self.task, self.answer(node), self.path(node), self.episode.nodes)
            if turns is not None
            else verifier.score(self.task, self.answer(node), self.text(node))
        )
        result = await self._verify(verifier.name, scoring)
        node.scores[key] = result.value
        if result.explanation:
            node.explanations[key] = result.explanation
        return result

    async def _verify(self, name: str, call: Any) -> Score:
        try:
            with anyio.fail_after(self.verifiers.timeout):
                result: Score = await call
        except VerifierError:
            raise
        except TimeoutError as exc:
            raise VerifierError(f"verifier {name} timed out after {self.verifiers.timeout}s") from exc
        except Exception as exc:
            raise VerifierError(f"verifier {name} raised {type(exc).__name__}: {exc}") from exc
        if not 0.0 <= result.value <= 1.0:
            raise VerifierError(f"verifier {name} returned {result.value}, outside [0, 1]")
        if result.calls or result.cost:
            usage = self.episode.usage
            usage.calls += result.calls
            usage.prompt_tokens += result.prompt_tokens
            usage.completion_tokens += result.completion_tokens
            self._charge(result.cost)
        return result

    def _charge(self, cost: float) -> None:
        if cost:
            self.episode.usage.cost += cost
            if self.ledger is not None:
                self.ledger.cost += cost

    # -- the end -----------------------------------------------------------------------

    async def finish(self, leaf: Node, reward_from_outcome: bool = True) -> Episode:
        """Close the episode on ``leaf``: chosen path, final answer, outcome reward."""
        ep = self.episode
        ep.chosen_path = [n.id for n in self.path(leaf)]
        ep.final_answer = self.answer(leaf)
        outcome = self.verifiers.outcome
        # A verifier that needs no reference answer (code against the task's tests, a
        # judge) scores every task; the others only tasks that have an answer.
        if reward_from_outcome and outcome is not None:
            if self.task.answer is not None or not getattr(outcome, "needs_reference", True):
                ep.reward = (await self.judge(leaf)).value
        if self.verifiers.shaping is not None:
            await self.verifiers.shaping.apply(self.episode, self.score)
        ep.finished_at = time.time()
        return ep


def _ended_turn(c: Completion) -> bool:
    """Whether step completion ``c`` ended on the model's end of turn (as its backend
    says, else: its ids end on neither the step delimiter nor the token cap): the path
    ends there, as a chat ends, rather than asking for a step after the end of the
    message. A text-only backend that cannot tell leaves its paths to end on an empty step."""
    if c.end_of_turn is not None:
        return c.end_of_turn
    return c.token_ids is not None and c.finish_reason == "stop" and c.stop_reason is None
