"""Turn boundaries of an agentic episode: tool calls run where the search expands them.

The episode context hands every new step to :meth:`Turns.mark`, which makes a step the
environment's format parses as a tool call a ``call`` node. Nothing runs then: a
process verifier may still reject the call. When a strategy expands a call node,
:meth:`Turns.observe` runs the call once and adds its answer as an ``observation``
child; the expansion samples after that observation. So every strategy runs on agent
episodes unchanged: ``expand(call, 4)`` gives four next steps that share one execution.

Design decisions:
- One execution per call node, whoever asks and however often (a lock per node; a
  strategy that backtracks to an accepted call reuses its observation). Sibling call
  nodes with the same text from the same state share one execution too, where the
  environment says the tool is deterministic and side-effect free; the second
  observation is a copy marked ``meta['shared_from']``. ``executions`` counts the
  calls that ran; ``replays`` the re-executions a ``replay`` fork needed.
- The state a call runs in is the one after the nearest observation above it (or
  ``reset(task)``). Fork modes (:mod:`runtime.tools.base`): ``copy`` keeps a state per
  observation and deep-copies it before a step; ``replay`` keeps one live state and
  rebuilds another by rerunning the path's earlier calls; ``none`` keeps one live
  state and refuses to step from any other. A turn that runs nothing (a refused or
  over-budget call) leaves the state as it was.
- Limits: past ``max_turns`` observations on a path the call is answered with an error
  that ends the path (``done``); past ``max_calls`` executions in the episode a call is
  answered with an error and runs nothing (the path goes on, without tools).
- An observation's text is what the environment fed the model, stored without ids:
  it is encoded on its own (:func:`~runtime.core.types.path_pieces`) by the engine and
  the learner alike, and never trained on (``Node.kind``). It is stored without a
  trailing step delimiter, which the path writes after it: a chat template's tool turn
  ends with the assistant's header and a newline, and with the default delimiter the
  ids fed are then the template's own.
"""

from __future__ import annotations

import copy
from typing import Any

import anyio

from runtime.core.types import Episode, Node
from runtime.tools.base import Environment, ToolCall, ToolEnvironmentError, Turn

__all__ = ["Turns"]


class Turns:
    """The environment side of one episode: states, executions, limits."""

    def __init__(self, episode: Episode, environment: Environment, max_steps: int, delimiter: str = "\n") -> None:
        self.episode = episode
        self.environment = environment
        self.max_steps = max_steps
        self.delimiter = delimiter
        self.executions = 0
        """Tool calls that ran (shared and refused calls not counted)."""
        self.replays = 0
        """Calls rerun to rebuild a branch's state (``fork: replay``)."""
        self._states: dict[int, Any] = {}  # copy: state after each observation (0: reset)
        self._live: tuple[int, Any] | None = None  # replay / none: the one live state
        self._alias: dict[int, int] = {}  # an observation whose turn ran nothing -> its source
        self._shared: dict[tuple[int, str], Node] = {}
        self._locks: dict[int, anyio.Lock] = {}
        self._live_lock = anyio.Lock()
        self._key_locks: dict[tuple[int, str], anyio.Lock] = {}

    def mark(self, node: Node) -> None:
        """Make ``node`` a ``call`` node if its text is a tool call (``meta['call']``)."""
        call = self.environment.parse(node.text)
        if call is None:
            return
        node.kind = "call"
        node.meta["call"] = {"name": call.name, "arguments": call.arguments}
        if call.error is not None:
            node.meta["call"]["malformed"] = call.error

    async def observe(self, node: Node) -> Node:
        """The observation child of call node ``node``, running the call the first time."""
        lock = self._locks.setdefault(node.id, anyio.Lock())
        async with lock:
            for child in node.children:
                if self.episode.nodes[child].kind == "observation":
                    return self.episode.nodes[child]
            return await self._run(node)

    async def _run(self, node: Node) -> Node:
        env = self.environment
        call = env.parse(node.text) or ToolCall("", None, node.text, "not a tool call")
        source = self._source(node)
        if not env.shareable(call):
            return await self._turn(node, call, source)
        key = (source, call.text)
        async with self._key_locks.setdefault(key, anyio.Lock()):  # identical calls in flight wait for the first
            shared = self._shared.get(key)
            if shared is None:
                obs = self._shared[key] = await self._turn(node, call, source)
                return obs
        obs = self._add(node, Turn(None, shared.text, done=shared.terminal), meta={"shared_from": shared.id})
        self._alias[obs.id] = self._alias.get(shared.id, shared.id)
        if shared.id in self._states:
            self._states[obs.id] = self._states[shared.id]
        return obs

    async def _turn(self, node: Node, call: ToolCall, source: int) -> Node:
        """The observation of ``call`` at ``node``: an error turn (a limit, a refused
        call; the state stays ``source``'s), or one execution."""
        env = self.environment
        turns = sum(1 for n in self._path(node) if n.kind == "observation")
        refused = env.check(call)
        if turns >= env.max_turns:
            turn = env.error_turn(None, f"turn limit ({env.max_turns}) reached", done=True)
        elif refused is None and self.executions >= env.max_calls:
            turn = env.error_turn(None, f"call budget ({env.max_calls} calls) spent")
        elif refused is not None:
            turn = env.error_turn(None, refused)
        else:
            self.executions += 1
            number = {"execution": self.executions}
            if env.fork == "copy":  # the copy is taken before any await: branches never share a state
                turn = self._trimmed(await env.step(await self._state_at(source, call), call))
                obs = self._add(node, turn, meta=number)
                self._states[obs.id] = turn.state
                return obs
            async with self._live_lock:  # one live state: one step at a time
                turn = self._trimmed(await env.step(await self._state_at(source, call), call))
                obs = self._add(node, turn, meta=number)
                self._live = (obs.id, turn.state)
            return obs
        obs = self._add(node, self._trimmed(turn), meta={})
        self._alias[obs.id] = source
        return obs

    def _trimmed(self, turn: Turn) -> Turn:
        """``turn`` with its observation's trailing step delimiter left to the path."""
        d = self.delimiter
        if turn.observation.endswith(d) and turn.observation != d:
            turn.observation = turn.observation[: -len(d)]
        return turn

    def _add(self, call: Node, turn: Turn, meta: dict[str, Any]) -> Node:
        nodes = self.episode.nodes
        depth = call.depth + 1
        obs = Node(id=len(nodes), parent=call.id, depth=depth, text=turn.observation, kind="observation",
                   meta={**turn.meta, **meta})  # fmt: skip
        obs.terminal = turn.done or depth >= self.max_steps
        out = turn.output
        if out is not None:
            if out.error is not None:
                obs.meta["error"] = out.error
            if out.capped:
                obs.meta["capped"] = True
                self.episode.usage.capped += 1
            obs.meta["seconds"] = round(out.seconds, 6)
        if turn.reward is not None:
            obs.meta["reward"] = turn.reward
        nodes.append(obs)
        call.children.append(obs.id)
        return obs

    def _path(self, node: Node) -> list[Node]:
        out = []
        nodes = self.episode.nodes
        while node.parent is not None:
            out.append(node)
            node = nodes[node.parent]
        out.reverse()
        return out

    def _source(self, node: Node) -> int:
        """The node whose state a call at ``node`` runs in: the nearest observation
        above it (through the aliases of turns that ran nothing), or the root."""
        nodes = self.episode.nodes
        while node.parent is not None:
            node = nodes[node.parent]
            if node.kind == "observation":
                return self._alias.get(node.id, node.id)
        return 0

    async def _state_at(self, source: int, call: ToolCall) -> Any:
        env = self.environment
        if env.fork == "copy":
            if source not in self._states:
                self._states[source] = env.reset(self.episode.task)
            return copy.deepcopy(self._states[source])
        if self._live is None and source == 0:
            self._live = (0, env.reset(self.episode.task))
        if self._live is not None and self._live[0] == source:
            return self._live[1]
        if env.fork == "none":
            raise ToolEnvironmentError(
                f"environment {env.name} cannot branch (fork: none): tool {call.name!r} was called from a state "
                "another branch has already moved on from; use fork: copy or replay, or a strategy that does not branch"
            )
        state = env.reset(self.episode.task)
        for obs in [n for n in self._path(self.episode.nodes[source]) if n.kind == "observation"]:
            ran = obs if "shared_from" not in obs.meta else self.episode.nodes[obs.meta["shared_from"]]
            if "execution" not in ran.meta:
                continue  # a turn that ran nothing
            earlier = env.parse(self.episode.nodes[obs.parent or 0].text)
            if earlier is None:
                continue
            if not env.replayable(earlier):
                raise ToolEnvironmentError(
                    f"environment {env.name} forks by replay, and tool {earlier.name!r} is not deterministic: "
                    f"its call cannot be replayed to branch (use fork: copy)"
                )
            self.replays += 1
            state = (await env.step(state, earlier)).state
        return state
