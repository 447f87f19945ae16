"""PrimeIntellect ``verifiers`` environments inside searchlearn: loading one, its rows as
tasks, and the record its turns leave on an episode (shared by the three adapter
components: the ``verifiers`` task source, the ``verifiers_rubric`` verifier and the
``verifiers`` environment).

The classic API of verifiers 0.3.x is supported: a ``vf.Environment`` (``SingleTurnEnv``,
``MultiTurnEnv``, ``ToolEnv``, or a subclass) with a dataset of ``prompt`` / ``answer`` /
``info`` rows and a ``Rubric``. Install it with ``pip install 'searchlearn[verifiers]'``.

Design decisions:
- Environments are named as verifiers users name them (``vf-eval``, ``prime-rl``): ``env:
  vf-wordle`` is ``vf.load_environment("vf-wordle", **env_args)``, which imports the
  installed module ``vf_wordle`` and calls its ``load_environment``; ``env:
  my_pkg.envs:make_env`` calls that function with ``env_args`` (an environment defined
  in your own code, not installed as a package). Both settings live once, in
  :class:`VerifiersEnvSettings`, which the three components share.
- One environment object per process and ``(env, env_args)``: the task source, the
  rubric and the environment of a run use the same one (a cache), so it is loaded once.
- Loaded lazily: importing verifiers takes seconds and it is an optional extra, so
  nothing imports it until a component needs the environment (the task source when
  the run starts, the others on first use).
- ``vf.Environment`` installs process-wide SIGINT / SIGTERM handlers when it is
  constructed; the loader puts back the handlers that were there, so a run still
  drains on a signal as the scheduler arranges.
- The record: the environment writes what it answered on each observation node
  (``meta["verifiers"]``: its messages as JSON, and the stop condition when it ended the
  episode), so :func:`conversation` rebuilds the library's completion messages from
  the episode alone (a stored episode, a learner's rescoring) without running a tool
  again. A tool call's id is its place on the path (``call_0``, ``call_1``, ...): the
  library takes ids from the model's server, searchlearn has none.
"""

from __future__ import annotations

import functools
import importlib
import json
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from runtime.core.errors import ConfigError
from runtime.core.text import clean_value
from runtime.core.types import Node, Task

__all__ = [
    "MODEL",
    "RECORD",
    "VerifiersEnvSettings",
    "assistant_turn",
    "call_id",
    "conversation",
    "load_environment",
    "no_model_client",
    "rollout_input",
    "task_from_row",
    "verifiers_api",
]

RECORD = "verifiers"
"""The key of an observation node's ``meta`` that holds the environment's answer."""
MODEL = "searchlearn"
"""The model name the library's rollout state gets (the policy is searchlearn's)."""
INSTALL = "pip install 'searchlearn[verifiers]' (verifiers==0.3.1)"

_CACHE: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


class VerifiersEnvSettings(BaseModel):
    """Which verifiers environment a component uses (shared by the adapter components)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    env: str = Field(min_length=1)
    """The verifiers environment: an environment id as ``vf.load_environment`` takes it
    (``vf-wordle``: the installed module ``vf_wordle``'s ``load_environment``), or
    ``module:function``, a function of your own code that returns a ``vf.Environment``."""
    env_args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the environment's loader (``load_environment(**env_args)``)."""

    def environment(self) -> Any:
        """The loaded ``vf.Environment`` (once per process and settings)."""
        return load_environment(self.env, self.env_args)


def verifiers_api() -> Any:
    """``import verifiers as vf``: the classic API, or a ConfigError saying how to install it."""
    try:
        vf = importlib.import_module("verifiers")
        vf.Environment  # noqa: B018  (the classic API; verifiers 0.4 drops it)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"the verifiers adapter needs the verifiers library's classic API: {INSTALL} ({exc})"
        ) from None
    return vf


@contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """Put back SIGINT / SIGTERM handlers that constructing a ``vf.Environment`` replaces."""
    main = threading.current_thread() is threading.main_thread()
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


def load_environment(env: str, env_args: dict[str, Any] | None = None) -> Any:
    """The ``vf.Environment`` that ``env`` names (see the module doc), loaded with
    ``env_args``; the same object for the same arguments. ConfigError if it cannot be
    loaded or is not an environment."""
    args = dict(env_args or {})
    key = (env, json.dumps(args, sort_keys=True, default=str))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        vf = verifiers_api()
        with _signal_handlers_kept():
            try:
                if ":" in env:
                    module, _, attr = env.partition(":")
                    loaded = getattr(importlib.import_module(module), attr)(**args)
                else:
                    loaded = vf.load_environment(env, **args)
            except ConfigError:
                raise
            except Exception as exc:
                raise ConfigError(f"cannot load verifiers environment {env!r}: {type(exc).__name__}: {exc}") from None
        if not isinstance(loaded, vf.Environment):
            raise ConfigError(f"verifiers environment {env!r} is a {type(loaded).__name__}, not a vf.Environment")
        _CACHE[key] = loaded
        return loaded


# -- rows and tasks ----------------------------------------------------------------------


def _plain(messages: Any) -> list[dict[str, Any]]:
    """A row's prompt (dicts or vf messages) as JSON-ready dicts."""
    out = []
    for m in messages or []:
        item = m.model_dump(mode="json", exclude_none=True) if hasattr(m, "model_dump") else dict(m)
        out.append({k: v for k, v in item.items() if v is not None})
    return out


def task_from_row(row: dict[str, Any], *, env: str, split: str) -> Task:
    """The Task of one formatted dataset row: its prompt messages, its answer (None if
    the row has none), and the rest of the row in ``metadata['verifiers']`` (what
    :func:`rollout_input` gives back to the environment and its rubric)."""
    example_id = row.get("example_id")
    rest = {k: v for k, v in row.items() if k != "prompt"}
    answer = row.get("answer")
    return Task(
        id=f"{env.replace(':', '.')}-{split}-{example_id}",
        messages=_plain(row.get("prompt")),
        answer=None if answer is None else str(answer),
        metadata={"source": "verifiers", "env": env, "split": split, RECORD: clean_value(rest)},
    )


def rollout_input(task: Task) -> dict[str, Any]:
    """The library's ``RolloutInput`` of ``task``: the row it came from, with the prompt
    the policy saw (a task from another source: its messages, answer and metadata)."""
    row = task.metadata.get(RECORD)
    if isinstance(row, dict):
        data = dict(row)
    else:
        data = {"example_id": 0, "info": dict(task.metadata)}
        if task.answer is not None:
            data["answer"] = task.answer
    data["prompt"] = [dict(m) for m in task.as_messages()]
    data.setdefault("example_id", 0)
    return data


# -- the record ---------------------------------------------------------------------------


def call_id(index: int) -> str:
    """The id of the ``index``-th tool call of a path (what the model's server would name)."""
    return f"call_{index}"


def _record(nodes: Sequence[Node], obs: Node) -> dict[str, Any] | None:
    """What the environment recorded on ``obs`` (through a shared copy's source)."""
    record = obs.meta.get(RECORD)
    if record is None and "shared_from" in obs.meta:
        record = nodes[obs.meta["shared_from"]].meta.get(RECORD)
    return record if isinstance(record, dict) else None


def conversation(
    path: Sequence[Node], nodes: Sequence[Node], delimiter: str = "\n"
) -> tuple[list[dict[str, Any]], str | None]:
    """The library's completion messages of a path (root excluded; ``nodes``: the whole
    tree), and the stop condition the environment ended it on (None: the model's turn).

    Steps between two turns make one assistant message (joined by ``delimiter``; null
    content where a tool call has no text before it). A tool call (a well-formed
    ``call`` node) is that message's ``tool_calls`` entry, answered
    by the messages its observation recorded (each tool message's ``tool_call_id`` is
    the call's); a ``call`` node of the step-per-turn mode (no tool) is the message's
    last line. A call the environment never answered (refused as malformed, unknown or
    over a limit, or the path's end) leaves no answer; a malformed one stays text.
    """
    messages: list[dict[str, Any]] = []
    lines: list[str] = []
    stop: str | None = None
    calls = 0
    pending: str | None = None  # the id of the call the next observation answers

    def assistant(**fields: Any) -> None:
        text = delimiter.join(lines)
        messages.append({"role": "assistant", "content": text or None if "tool_calls" in fields else text, **fields})
        lines.clear()

    for node in path:
        if node.kind == "step":
            lines.append(node.text)
        elif node.kind == "call":
            call = node.meta.get("call") or {}
            if call.get("malformed") is not None or not call.get("name"):
                lines.append(node.text)
                if call.get("malformed") is None:  # a turn of the step-per-turn mode
                    assistant()
                pending = None
                continue
            pending = call_id(calls)
            calls += 1
            arguments = json.dumps(call.get("arguments") or {})
            assistant(tool_calls=[{"id": pending, "name": call["name"], "arguments": arguments}])
        else:
            record = _record(nodes, node)
            if record is None:
                continue
            for message in record.get("messages", []):
                if message.get("role") == "tool" and pending is not None:
                    message = {**message, "tool_call_id": pending}
                messages.append(message)
            stop = record.get("stop") or stop
    if lines:
        assistant()
    return messages, stop


# -- the library's rollout state ---------------------------------------------------------


def no_model_client() -> Any:
    """A ``vf.Client`` for a rollout state the library does not sample: searchlearn's
    policy writes the turns, so an environment asking this client for a response fails."""
    return _client_class()(None)


@functools.cache
def _client_class() -> Any:
    vf = verifiers_api()
    from verifiers.clients import Client

    class SearchlearnPolicy(Client):  # type: ignore[misc]
        def setup_client(self, config: Any) -> None:
            return None

        async def to_native_tool(self, tool: Any) -> Any:
            return tool

        async def to_native_prompt(self, messages: Any) -> tuple[Any, dict[str, Any]]:
            return messages, {}

        async def get_native_response(self, *args: Any, **kwargs: Any) -> Any:
            raise vf.Error("searchlearn's policy samples this environment's turns: the library has no model here")

        async def raise_from_native_response(self, response: Any) -> None:
            return None

        async def from_native_response(self, response: Any) -> Any:
            return response

        async def close(self) -> None:
            return None

    return SearchlearnPolicy


def assistant_turn(prompt: list[Any], message: Any, number: int, trajectory_id: str) -> dict[str, Any]:
    """The library's trajectory step of one model turn: ``message`` (a vf assistant
    message) continuing ``prompt``, with the response a server would have sent."""
    from verifiers.types import Response, ResponseMessage

    calls = message.tool_calls
    response = Response(
        id=f"{MODEL}-{number}",
        created=0,
        model=MODEL,
        message=ResponseMessage(
            content=message.content,
            tool_calls=calls,
            finish_reason="tool_calls" if calls else "stop",
            is_truncated=False,
        ),
    )
    return {"prompt": prompt, "completion": [message], "response": response, "tokens": None, "reward": None,
            "advantage": None, "is_truncated": False, "trajectory_id": trajectory_id, "extras": {}}  # fmt: skip
