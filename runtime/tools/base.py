"""What the search layer knows of tools and environments: a parsed call, a tool's
output, an environment turn, and the :class:`Environment` protocol.

An environment answers a model's actions: ``reset(task)`` gives the episode's first
state, ``step(state, call)`` runs one parsed tool call and returns a :class:`Turn`
(new state, the observation text, chat messages to append, an optional per-turn
reward, done). Search runs on the tree of steps, so an environment also declares how
its state forks (``fork``) and what a call costs before it runs (``check``).

Design decisions:
- This module imports no heavy library: the episode context (the search layer, which
  must stay cheap to import) depends on it alone. Tool schemas come from transformers
  in :mod:`runtime.tools.spec`, which the search layer never imports.
- Fork modes, after the three ways agent frameworks branch a stateful world:
  ``copy`` deep-copies the state before each step (each branch its own world);
  ``replay`` keeps one live state and rebuilds another branch's state by replaying the
  path's earlier calls from ``reset`` (only deterministic tools can be replayed: a
  non-deterministic one is refused, naming it); ``none`` refuses any branching, naming
  the tool whose call would have branched.
- A tool that fails (raises, hangs past its timeout, writes too much, returns text
  that cannot be stored) is an observation, not an exception: the model sees the
  error, the episode goes on. Only a broken contract of the environment itself (a
  refused fork) raises :class:`ToolEnvironmentError`, which fails that episode alone.
- One prompt per episode: :func:`task_prompt` is the messages and tools every model
  call of an episode is prompted with (the call format's system message describing the
  tools, or the schemas for ``apply_chat_template(tools=...)`` / the OpenAI ``tools``
  field). The episode context sends it, and whatever rebuilds an episode's sequence
  later (the learners' examples, rollouts and pairs, Monte-Carlo rollouts from a step)
  takes it from here, so an episode's tokens are trained under the prompt they were
  sampled under. It lives here, the lowest layer that knows environments, so the
  rewards, the search API and the learners can all import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from runtime.core.errors import SearchlearnError
from runtime.core.types import Node, Task

__all__ = ["Environment", "ForkMode", "ToolCall", "ToolEnvironmentError", "ToolOutput", "Turn", "task_prompt"]

ForkMode = Literal["copy", "replay", "none"]


class ToolEnvironmentError(SearchlearnError):
    """The environment cannot do what the search asked (a fork it refuses); fails the
    episode, attributed to the environment."""

    boundary = "environment"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call parsed from a model's step."""

    name: str
    """The tool the step calls ('' when the call is too malformed to name one)."""
    arguments: dict[str, Any] | None
    """Its arguments by name; None where the format could not read them."""
    text: str
    """The step it was parsed from."""
    error: str | None = None
    """Why the call is malformed (None: well-formed)."""


@dataclass(frozen=True, slots=True)
class ToolOutput:
    """What one tool execution returned, made storable."""

    text: str
    """The result as text (cleaned, cut to the tool's output cap); '' on error."""
    error: str | None = None
    """What went wrong (raised, timed out, bad arguments); None: it ran."""
    capped: bool = False
    """The output was cut at the tool's cap."""
    seconds: float = 0.0
    """Wall time of the execution."""


@dataclass(slots=True)
class Turn:
    """The environment's answer to one action (``Environment.step``)."""

    state: Any
    """The state after the action."""
    observation: str
    """The text appended to the episode as an observation node (the call format's
    rendering of the result or the error)."""
    messages: list[dict[str, Any]] = field(default_factory=list)
    """The same answer as chat messages (a ``tool`` message), for chat-format policies."""
    reward: float | None = None
    """A per-turn reward, where the environment gives one."""
    done: bool = False
    """The environment ended the episode: the observation is a terminal node."""
    output: ToolOutput | None = None
    """The tool's raw output, where a tool ran."""
    meta: dict[str, Any] = field(default_factory=dict)
    """What the environment records on the observation node (JSON values): what a
    verifier of the finished episode reads of the turn (an adapter's chat messages)."""


@runtime_checkable
class Environment(Protocol):
    """What the episode context needs of an environment (the built-ins are components of
    the ``environments`` registry, :class:`runtime.tools.environment.BaseEnvironment`)."""

    name: str
    fork: ForkMode
    max_turns: int
    max_calls: int

    def parse(self, text: str) -> ToolCall | None:
        """The tool call ``text`` (one model step) makes, or None for a plain step."""
        ...

    def check(self, call: ToolCall) -> str | None:
        """Why ``call`` cannot run (malformed, unknown tool, arguments the schema
        refuses), or None: what a verifier checks before the call costs anything."""
        ...

    def replayable(self, call: ToolCall) -> bool:
        """Whether running ``call`` again gives the same result and state (its tool is
        deterministic)."""
        ...

    def shareable(self, call: ToolCall) -> bool:
        """Whether two identical calls from one state may share one execution (the tool
        is deterministic and side-effect free)."""
        ...

    def reset(self, task: Task) -> Any:
        """The state an episode of ``task`` starts in."""
        ...

    async def step(self, state: Any, call: ToolCall) -> Turn:
        """Run ``call`` in ``state``; never raises for a tool's failure (an error turn)."""
        ...

    def error_turn(self, state: Any, message: str, *, done: bool = False) -> Turn:
        """A turn that only reports ``message`` (a limit reached, a call refused)."""
        ...

    def prompt(self, messages: Sequence[dict[str, str]]) -> tuple[list[dict[str, str]], list[dict[str, Any]] | None]:
        """The task's ``messages`` as the policy is to see them, and the tool schemas the
        prompt offers (None: none), as the call format wants them."""
        ...

    def assistant_messages(self, path: Sequence[Node], delimiter: str) -> list[dict[str, Any]] | None:
        """``path`` as OpenAI chat messages for a chat backend, where the call format
        speaks that protocol; None: the path goes as text."""
        ...


def task_prompt(
    task: Task, environment: Environment | None
) -> tuple[list[dict[str, str]], list[dict[str, Any]] | None]:
    """The messages and the tool schemas (None: none) that every model call of an episode
    of ``task`` is prompted with, under ``environment`` (None: no tools, the task's own
    messages): what :meth:`Environment.prompt` makes of the task's messages. The one
    source of an episode's prompt: the episode context sends it, and the learners and
    the Monte-Carlo value rebuild an episode's sequence from it."""
    messages = task.as_messages()
    if environment is None:
        return list(messages), None
    return environment.prompt(messages)
