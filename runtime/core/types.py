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
"""

from __future__ import annotations

import time
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
    "Stop",
    "StopKind",
    "Task",
    "Usage",
    "episode_from_json",
    "episode_to_json",
]

Status = Literal["ok", "failed"]
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
    logprobs: list[float] | None = None
    policy_version: int | None = None
    sample_logprobs: list[float] | None = None
    token_versions: list[int] | None = None
    """Per token, the policy version it was sampled under, where a weight swap landed
    mid-step (partial rollouts); None: every token under ``policy_version`` (which is
    always the oldest, so a staleness bound on it bounds every token)."""
    finish_reason: str | None = None
    terminal: bool = False
    answer: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    explanations: dict[str, str] = field(default_factory=dict)
    value: float | None = None
    visits: int = 0
    children: list[int] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


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
