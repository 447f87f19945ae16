"""The ``verifiers`` environment: a PrimeIntellect verifiers environment (``ToolEnv``,
``MultiTurnEnv``, ``SingleTurnEnv``) answering a searchlearn policy's turns, each turn a
node of the search tree.

A step the call format reads as a tool call of one of the environment's tools is a
``call`` node; when the search expands it, the environment's own ``env_response`` runs
it (``ToolEnv``: the tool, its error formatting) and its answer is the ``observation``
child. An environment without tools that answers every message (a game, a simulated
user: ``MultiTurnEnv.env_response``) makes every step a turn (``turn: step``). Any
searchlearn policy samples the turns (the local engine included: no HTTP server), and
any strategy searches them.

Design decisions:
- The library's own rollout loop, one turn per ``step``: the model's message is added
  to the rollout state's trajectory, the environment's stop conditions are checked
  (``max_turns``, an error, a custom ``@vf.stop``), then ``env_response`` answers; its
  ``final_env_response`` ends the path. A stop ends the path on an observation that
  says why (a terminal node; the model never reads it).
- The state is the library's rollout ``State`` (``init_state`` and ``setup_state`` on
  the path's first turn). ``fork: copy`` (the default) copies it for each branch, the
  usage tracker rebuilt; a value that cannot be copied (a live game object, a sandbox
  handle) fails the episode naming it (use ``fork: replay`` with ``deterministic``, or
  ``none``). ``env_response`` sees the turns' tool calls; reasoning steps between
  calls are not sent to it (ToolEnv reads only the calls).
- Each answered observation records the environment's messages (``meta['verifiers']``,
  :mod:`runtime.tools.verifiers_load`), so the ``verifiers_rubric`` verifier scores
  the very messages the library would, from the episode alone.
- Tools are the environment's: their schemas (``tool_defs``) check a call before it
  runs (the ``tool_call`` process verifier uses the same check). verifiers cannot say
  whether a tool is deterministic; ``deterministic: true`` lets identical sibling calls
  share one execution and ``fork: replay`` rebuild a branch.
- ``env_response`` runs under ``timeout`` (an asyncio-only library: the run's event
  loop must be asyncio or uvloop). A synchronous tool runs in the event loop's thread,
  as in the library: a timeout cannot interrupt it while it runs.
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any, Literal

import anyio
from pydantic import Field, PrivateAttr

from runtime.core.registry import ComponentField
from runtime.core.text import clean_text, clean_value, cut_text
from runtime.core.types import Task
from runtime.tools.base import ToolCall, ToolEnvironmentError, ToolOutput, Turn
from runtime.tools.environment import BaseEnvironment
from runtime.tools.spec import DEFAULT_MAX_OUTPUT_CHARS, BaseTool, ToolSpec
from runtime.tools.verifiers_load import (
    MODEL,
    RECORD,
    VerifiersEnvSettings,
    assistant_turn,
    call_id,
    no_model_client,
    rollout_input,
    verifiers_api,
)

__all__ = ["DEFAULT_ENV_TIMEOUT", "MAX_MESSAGE_CHARS", "VerifiersEnvironment"]

DEFAULT_ENV_TIMEOUT = 60.0
"""Seconds one ``env_response`` (or the first turn's ``setup_state``) may take."""
MAX_MESSAGE_CHARS = 65_536
"""Characters of one recorded message's text (the episode keeps the record)."""
_UNCOPIED = frozenset({"client", "usage_tracker", "usage"})  # shared, or rebuilt by the copy


class _Rollout:
    """One path's state: the library's rollout State, started on the path's first turn."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.state: Any = None
        self.prompt: list[Any] = []
        """The messages the next model turn continues (prompt, earlier turns and answers)."""
        self.turns = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> _Rollout:
        new = _Rollout(self.task)
        new.turns = self.turns
        new.prompt = copy.deepcopy(self.prompt, memo)
        if self.state is not None:
            state = type(self.state)()
            for key, value in dict.items(self.state):
                if key in _UNCOPIED:
                    continue
                try:
                    dict.__setitem__(state, key, copy.deepcopy(value, memo))
                except Exception as exc:
                    raise ToolEnvironmentError(
                        f"environment verifiers cannot copy its state's {key!r} ({type(value).__name__}: {exc}) "
                        "to branch the search (fork: copy); use fork: replay with deterministic: true, or fork: none"
                    ) from None
            dict.__setitem__(state, "client", self.state.get("client"))
            old = self.state.get("usage_tracker")
            if old is not None:  # a fresh tracker with the same totals (its read-only view cannot be copied)
                tracker = type(old)()
                totals = old.snapshot()
                if totals is not None:
                    tracker.increment(totals["input_tokens"], totals["output_tokens"])
                dict.__setitem__(state, "usage_tracker", tracker)
                dict.__setitem__(state, "usage", tracker.usage)
            new.state = state
        return new


def _text(content: Any) -> str:
    """A message's content as text (its text parts, for a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # parts: dicts, or the library's models (which have ``get`` too)
        return " ".join(str(p.get("text", "")) for p in content if hasattr(p, "get") and p.get("type") == "text")
    return "" if content is None else str(content)


class VerifiersEnvironment(BaseEnvironment, VerifiersEnvSettings):
    """A verifiers environment's tools and ``env_response`` answering the policy's turns."""

    name: Literal["verifiers"] = "verifiers"
    tools: list[ComponentField("tools", BaseTool)] = Field(default_factory=list, max_length=0)  # type: ignore[valid-type]
    """Not used: the tools are the verifiers environment's own."""
    turn: Literal["auto", "call", "step"] = "auto"
    """What the environment answers: ``call``, a step the format reads as a call of one of
    its tools (ToolEnv); ``step``, every step (a MultiTurnEnv whose env_response answers
    each message); ``auto``: call when it has tools, step when it has none and more than
    one turn, nothing for a single-turn environment."""
    deterministic: bool = False
    """The environment answers the same call in the same state the same way and changes
    nothing outside its state: identical sibling calls share one execution, and
    ``fork: replay`` may rebuild a branch by rerunning its calls."""
    timeout: float = Field(DEFAULT_ENV_TIMEOUT, gt=0, le=86_400)
    """Seconds one env_response (or the first turn's setup_state) may take; past it the
    path ends on an error observation."""
    max_output_chars: int = Field(DEFAULT_MAX_OUTPUT_CHARS, ge=1)
    """Characters of the environment's answer the model sees; the rest is cut (the
    recorded messages keep up to 64 KiB each)."""

    _mode: Literal["call", "step", "none"] | None = PrivateAttr(default=None)

    def mode(self) -> Literal["call", "step", "none"]:
        """What the environment answers (``turn``, with ``auto`` resolved once)."""
        if self._mode is None:
            if self.turn != "auto":
                self._mode = self.turn
            else:
                env = self.environment()
                self._mode = "call" if env.tool_defs else "none" if getattr(env, "max_turns", 1) == 1 else "step"
        return self._mode

    def specs(self) -> dict[str, ToolSpec]:
        """The environment's tools (their schemas from its ``tool_defs``)."""
        if self._specs is None:
            env = self.environment()
            functions = getattr(env, "tool_map", {})
            specs = {}
            for tool in env.tool_defs or []:
                specs[tool.name] = ToolSpec(
                    name=tool.name,
                    function=functions.get(tool.name) or (lambda **_: None),
                    schema={
                        "type": "function",
                        "function": {
                            "name": tool.name,
                            "description": tool.description,
                            "parameters": dict(tool.parameters),
                        },
                    },
                    timeout=self.timeout,
                    max_output_chars=self.max_output_chars,
                    deterministic=self.deterministic,
                    side_effect_free=self.deterministic,
                    parameters=list(dict(tool.parameters).get("properties", {})),
                )
            self._specs = specs
        return self._specs

    def parse(self, text: str) -> ToolCall | None:
        mode = self.mode()
        if mode == "call":
            return super().parse(text)
        if mode == "step" and text.strip():
            return ToolCall("", None, text)
        return None

    def check(self, call: ToolCall) -> str | None:
        if self.mode() == "step":
            return call.error
        return super().check(call)

    def replayable(self, call: ToolCall) -> bool:
        return self.deterministic

    def shareable(self, call: ToolCall) -> bool:
        return self.deterministic

    def reset(self, task: Task) -> Any:
        """The path's state; the library's rollout state is made on its first turn."""
        return _Rollout(task)

    async def _start(self, rollout: _Rollout, env: Any, vf: Any) -> None:
        state = await env.init_state(rollout_input(rollout.task), no_model_client(), MODEL, {})
        try:
            with anyio.fail_after(self.timeout):
                started = await env.setup_state(state)
            state = started if started is not None else state
        except vf.Error as exc:  # the library records it on the state; the stop conditions end the path
            state["error"] = exc
        except TimeoutError:
            state["error"] = vf.Error(f"setup_state timed out after {self.timeout:g}s")
        rollout.state = state
        rollout.prompt = list(state["prompt"])

    def _message(self, call: ToolCall, number: int) -> Any:
        """The model's turn as the library's assistant message."""
        from verifiers.types import AssistantMessage
        from verifiers.types import ToolCall as VfToolCall

        if self.mode() == "step":
            return AssistantMessage(content=call.text)
        arguments = json.dumps(call.arguments or {})
        return AssistantMessage(
            content=None, tool_calls=[VfToolCall(id=call_id(number), name=call.name, arguments=arguments)]
        )

    async def step(self, state: Any, call: ToolCall) -> Turn:
        """One turn of the library's rollout loop (see the module doc)."""
        problem = self.check(call)
        if problem is not None:
            return self.error_turn(state, problem)
        vf = verifiers_api()
        env = self.environment()
        rollout: _Rollout = state
        if rollout.state is None:
            await self._start(rollout, env, vf)
        s = rollout.state
        if await env.is_completed(s):  # before the model's turn (a failed setup_state)
            return self._ended(rollout)
        message = self._message(call, rollout.turns)
        prompt = rollout.prompt
        await env.add_trajectory_step(s, assistant_turn(prompt, message, rollout.turns, s["trajectory_id"]))
        rollout.turns += 1
        if await env.is_completed(s):
            return self._ended(rollout)
        conversation = [*prompt, message]
        start = time.perf_counter()
        try:
            with anyio.fail_after(self.timeout):
                answer = await env.env_response(conversation, s)
        except TimeoutError:
            s["timed_out"] = True
            return self._ended(rollout, f"env_response timed out after {self.timeout:g}s", "timeout_reached")
        except vf.Error as exc:  # the library records it on the state and stops
            s["error"] = exc
            return self._ended(rollout, f"{type(exc).__name__}: {exc}", "has_error")
        except Exception as exc:
            raise ToolEnvironmentError(f"verifiers env_response raised {type(exc).__name__}: {exc}") from exc
        seconds = time.perf_counter() - start
        from verifiers.utils.message_utils import normalize_messages

        final = s.get("final_env_response")
        answer = normalize_messages(final if final is not None else answer, field_name="env_response")
        rollout.prompt = [*conversation, *answer]
        stop = None
        if final is not None and await env.is_completed(s):
            stop = s.get("stop_condition")
        text, capped = cut_text(clean_text("\n".join(_text(m.content) for m in answer)), self.max_output_chars)
        output = ToolOutput(text, None, capped, seconds)
        dumped = [_stored(m) for m in answer]
        return Turn(
            rollout,
            self.format.observation(output),
            dumped,
            done=stop is not None,
            output=output,
            meta={RECORD: {"messages": dumped, **({"stop": stop} if stop else {})}},
        )

    def _ended(self, rollout: _Rollout, problem: str | None = None, stop: str | None = None) -> Turn:
        """The terminal observation of a path the environment ended (a stop condition)."""
        s = rollout.state
        stop = stop or s.get("stop_condition") or "stopped"
        if problem is None and s.get("error") is not None:
            problem = f"{type(s['error']).__name__}: {s['error']}"
        message = f"the environment ended the episode ({stop})" + (f": {problem}" if problem else "")
        meta: dict[str, Any] = {RECORD: {"messages": [], "stop": stop}}
        if problem:
            meta[RECORD]["error"] = problem
        return Turn(rollout, self.format.error(message), [], done=True, meta=meta)


def _stored(message: Any) -> dict[str, Any]:
    """A vf message as JSON for the record: text cleaned and cut at 64 KiB."""
    data: dict[str, Any] = clean_value(message.model_dump(mode="json", exclude_none=True))
    if isinstance(data.get("content"), str):
        data["content"], _ = cut_text(data["content"], MAX_MESSAGE_CHARS)
    return data
