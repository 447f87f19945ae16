"""Core data: Task, Node (one step), Episode (the whole explored tree), Usage, ErrorInfo.

Design decisions:
- An episode is a tree, not a string: ``nodes`` holds every node the search explored,
  in creation order, each pointing at its parent by index; ``chosen_path`` lists the
  node ids from the first step to the leaf the strategy picked. Learners read the
  tree (best path for SFT, siblings for step-level preferences, leaves for policy
  gradient, values for PRM training).
- Plain ``dataclasses`` with slots on the hot path (thousands of nodes a second); JSON
  goes through one pydantic ``TypeAdapter`` per type, which round-trips losslessly
  (checked by a property-based test).
- Infinities are written as the JSON constants ``Infinity`` / ``-Infinity`` everywhere,
  including inside free-form ``metadata`` / ``meta`` / ``strategy_config`` values:
  pydantic applies a dataclass's ``ser_json_inf_nan`` only to float-typed fields and
  writes an inferred (``Any``) infinity as ``null``, so :func:`episode_to_json`
  serializes the validated Python form with ``inf_nan_mode="constants"`` instead.
- Token ids are the record: a node keeps the ids the policy sampled for its step (the
  stop string's tokens included), and :func:`path_pieces` turns a path into what it
  adds to the token sequence, so the next call of a step-level search and the learner
  both send or train on the sampled ids instead of re-encoding the text (which a BPE
  may tokenise otherwise). Text is encoded only where no ids exist: a strategy's fork,
  a text-only backend's step, a delimiter the policy did not sample.
- Agentic episodes add two node kinds beside the model's ``step``: a ``call`` (a step
  the tool-call format parsed as a tool call) and an ``observation`` (what the
  environment answered, as text). An observation is always its own text piece, encoded
  on its own exactly as the engine was fed it, and is context only: learners never put
  its tokens in a loss. ``kind`` defaults to ``step``, so stored runs read unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ConfigDict, TypeAdapter
from pydantic_core import PydanticSerializationError, to_json

from runtime.core.secrets import redact
from runtime.core.text import clean_text, clean_value, cut_text

__all__ = [
    "Episode",
    "ErrorInfo",
    "Node",
    "NodeKind",
    "Piece",
    "Stop",
    "StopKind",
    "Task",
    "Usage",
    "episode_from_json",
    "episode_to_json",
    "path_parts",
    "path_pieces",
]

Status = Literal["ok", "failed"]
NodeKind = Literal["step", "call", "observation"]
MAX_ERROR_CHARS = 2000  # an error message is a diagnosis, not a dump of a server's body
_JSON = ConfigDict(ser_json_inf_nan="constants")  # scores may be inf/nan; keep them


@dataclass(slots=True)
class Task:
    """A problem to solve: a raw prompt or chat messages, and a reference answer."""

    __pydantic_config__ = _JSON

    id: str
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    answer: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def as_messages(self) -> list[dict[str, str]]:
        if self.messages is not None:
            return self.messages
        return [{"role": "user", "content": self.prompt or ""}]


StopKind = Literal["limit", "budget", "failures", "signal", "requested"]


@dataclass(frozen=True, slots=True)
class Stop:
    """Why a run stopped admitting before its tasks ran out, as a value the caller can
    branch on (never by matching text):

    - ``limit``: a limit the config set on purpose (a learner's ``max_minutes`` or
      ``max_versions``): the run did what it was asked;
    - ``budget``: a spending budget ran out (the run's, an endpoint's);
    - ``failures``: the failure policy (too many episodes in a row failed, every worker died);
    - ``signal``: SIGINT or SIGTERM (``signal`` holds its number);
    - ``requested``: the code asked (``shutdown()``, the consumer closed the stream).
    """

    kind: StopKind
    reason: str
    signal: int | None = None


@dataclass(slots=True)
class Node:
    """One step of reasoning. The root (id 0) holds no text and stands for the prompt."""

    __pydantic_config__ = _JSON

    id: int
    parent: int | None
    depth: int
    text: str = ""
    token_ids: list[int] | None = None
    """The ids the policy sampled for this step, the stop string's tokens included (the
    text is stripped and cut before it); the first node of a ``complete()`` chain holds
    the ids of its whole chain (``meta['covers']`` lines). None: no ids (a fork, a
    text-only backend). The record continuations send and learners train on."""
    logprobs: list[float] | None = None
    policy_version: int | None = None
    sample_logprobs: list[float] | None = None
    token_versions: list[int] | None = None
    """Per token, the policy version it was sampled under, where a weight swap landed
    mid-step (partial rollouts); None: every token under ``policy_version`` (which is
    always the oldest, so a staleness bound on it bounds every token)."""
    finish_reason: str | None = None
    stop_reason: str | None = None
    """The stop string the step's sampling ended on, whose tokens end ``token_ids``;
    None: its ids end otherwise (end of sequence, token cap), so a continuation puts the
    step delimiter after them as text."""
    terminal: bool = False
    answer: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    explanations: dict[str, str] = field(default_factory=dict)
    value: float | None = None
    visits: int = 0
    children: list[int] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    kind: NodeKind = "step"
    """``step``: the model wrote it; ``call``: a step that is a tool call (its parsed call
    in ``meta['call']``); ``observation``: the environment's answer to the call above
    it, never sampled and never trained on (see :attr:`trained`)."""

    @property
    def trained(self) -> bool:
        """Whether a loss may train on this node's tokens (not an observation's)."""
        return self.kind != "observation"


@dataclass(slots=True)
class Piece:
    """What one stretch of a path adds to the token sequence (:func:`path_pieces`)."""

    text: str
    """Its text: what is encoded where ``ids`` is None."""
    ids: list[int] | None = None
    """The token ids the policy sampled, used as they are; None: encode ``text``."""
    behaviour: list[float] | None = None
    """Behaviour log-prob of each of ``ids``, where the backend recorded them."""
    nodes: list[Node] = field(default_factory=list)
    """The nodes whose steps it holds (none: a delimiter the policy did not sample)."""


def path_pieces(path: Sequence[Node], delimiter: str, *, closed: bool = True) -> list[Piece]:
    """The pieces the steps of ``path`` (root excluded) add to the sequence, in order.

    A node with sampled ids gives them (the first node of a ``complete()`` chain holds
    the ids of all its ``meta['covers']`` lines: they are used once, when the whole chain
    is on the path, else its lines are text); a step whose ids did not end on a stop
    string is followed by ``delimiter`` as text. A node without ids gives its text and
    the delimiter; adjacent text is one piece (encoded as one string, by the backend
    and the learner alike), except an observation's text and delimiter, which are a
    piece of their own (the environment's tokens, kept apart from what was sampled).
    ``closed``: the last step is followed by its delimiter too (what a next call
    continues after); open, the path ends with what its last step holds.
    """
    pieces: list[Piece] = []

    def text(value: str, nodes: list[Node]) -> None:
        last = pieces[-1] if pieces else None
        apart = any(n.kind == "observation" for n in nodes + (last.nodes if last else []))
        if last is not None and last.ids is None and not apart:
            last.text += value
            last.nodes += nodes
        else:
            pieces.append(Piece(value, nodes=nodes))

    i = 0
    while i < len(path):
        node = path[i]
        covers = int(node.meta.get("covers", 1)) if node.token_ids is not None else 0
        span = list(path[i : i + covers])
        chain = covers >= 1 and len(span) == covers and all(n.id == node.id + k for k, n in enumerate(span))
        if not chain:
            span = [node]
        i += len(span)
        end = closed or i < len(path)
        if chain:
            pieces.append(Piece(delimiter.join(n.text for n in span), list(node.token_ids or []),
                                node.sample_logprobs, span))  # fmt: skip
            if node.stop_reason is None and end:
                text(delimiter, [])
        else:
            text(node.text + delimiter if end else node.text, span)
    return pieces


def path_parts(pieces: Sequence[Piece]) -> list[str | list[int]] | None:
    """``pieces`` as a request's ``assistant_parts``; None where none holds ids (a
    text-only path is sent, and encoded by a learner, as one string with the prompt)."""
    if all(p.ids is None for p in pieces):
        return None
    return [p.ids if p.ids is not None else p.text for p in pieces]


@dataclass(slots=True)
class Usage:
    __pydantic_config__ = _JSON

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    wall_time: float = 0.0
    capped: int = 0
    """Texts cut at a size cap (a completion, a stored row)."""

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class ErrorInfo:
    """An error recorded on an episode: class name, message and boundary crossed."""

    type: str
    message: str
    boundary: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        """The error of ``exc``; its message cleaned, capped and with secrets masked
        (a server's error body may echo the request's key back)."""
        from runtime.core.errors import boundary_of

        message, _ = cut_text(redact(clean_text(str(exc) or repr(exc))), MAX_ERROR_CHARS)
        return cls(type=type(exc).__name__, message=message, boundary=boundary_of(exc))


@dataclass(slots=True)
class Episode:
    """A finished (or failed) attempt at one task by one strategy."""

    __pydantic_config__ = _JSON

    run_id: str
    task: Task
    sample: int = 0
    strategy: str = ""
    strategy_config: dict[str, Any] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    chosen_path: list[int] = field(default_factory=list)
    final_answer: str | None = None
    reward: float | None = None
    usage: Usage = field(default_factory=Usage)
    policy_versions: list[int] = field(default_factory=list)
    errors: list[ErrorInfo] = field(default_factory=list)
    status: Status = "ok"
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.run_id, self.task.id, self.sample)

    @property
    def steps(self) -> list[str]:
        """The chosen path's step texts, in order."""
        return [self.nodes[i].text for i in self.chosen_path]

    @property
    def leaves(self) -> list[Node]:
        return [n for n in self.nodes if not n.children and n.id != 0]


_EPISODE = TypeAdapter(Episode)


def episode_to_json(episode: Episode) -> str:
    data = _EPISODE.dump_python(episode)
    try:
        return to_json(data, inf_nan_mode="constants").decode()
    except PydanticSerializationError:
        # Text that entered without passing a boundary's cleaning (a custom strategy's
        # fork, a plug-in's metadata): clean every string rather than lose the episode.
        return to_json(clean_value(data), inf_nan_mode="constants").decode()


def episode_from_json(data: str | bytes) -> Episode:
    return _EPISODE.validate_json(data)
