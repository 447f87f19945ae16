"""The verifiers adapter (issue 26 item 3): a PrimeIntellect verifiers ``ToolEnv`` with two
tools and a ``Rubric``, run through searchlearn (the ``verifiers`` task source, environment
and ``verifiers_rubric`` verifier), gives the messages and the reward of the library's own
rollout of the same completions.

The library's rollout is driven offline by a ``vf.Client`` that replays the completions
(the extension point its clients implement), then scored as ``Environment.run_rollout``
scores it (``rubric.score_rollout``). searchlearn runs the scripted policy and, once, the
local engine on ``bundled-weak`` (no HTTP server). Skipped, with the reason, where
verifiers 0.3.x is not installed (``pip install 'searchlearn[verifiers]'``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest
import yaml
from typer.testing import CliRunner

vf = pytest.importorskip(
    "verifiers", reason="the verifiers adapter needs verifiers==0.3.1: pip install 'searchlearn[verifiers]'"
)
if not vf.__version__.startswith("0.3."):
    pytest.skip(f"the verifiers adapter needs the classic API of verifiers 0.3.x (installed: {vf.__version__})",
                allow_module_level=True)  # fmt: skip

from runtime.app.cli import app  # noqa: E402
from runtime.app.config import load_config  # noqa: E402
from runtime.app.parts import build_tasks, build_verifiers  # noqa: E402
from runtime.core.errors import ConfigError  # noqa: E402
from runtime.core.types import Episode, Node, episode_from_json, episode_to_json  # noqa: E402
from runtime.policy.base import GenerationRequest  # noqa: E402
from runtime.policy.scripted import ScriptedPolicy  # noqa: E402
from runtime.rewards.base import VerifierEnv  # noqa: E402
from runtime.rewards.verifiers_rubric import VerifiersRubric  # noqa: E402
from runtime.scheduling.store import EpisodeStore  # noqa: E402
from runtime.scheduling.verifiers_tasks import VerifiersTasks  # noqa: E402
from runtime.search.context import Context, Sampling, Verifiers  # noqa: E402
from runtime.tools import CallFormat, ToolCall, ToolOutput  # noqa: E402
from runtime.tools.verifiers_env import VerifiersEnvironment  # noqa: E402
from runtime.tools.verifiers_load import conversation  # noqa: E402
from runtime.tools.verifiers_load import load_environment as load_verifiers_env  # noqa: E402
from strategies.chain_of_thought import ChainOfThought  # noqa: E402

pytestmark = pytest.mark.anyio

SPEC = "test_verifiers_adapter:load_environment"
"""This module's loader, as a config names it (``module:function``)."""
CALLS: list[str] = []
"""The tools' executions, by name."""
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


# -- the environment: a ToolEnv with two tools and a Rubric ----------------------------------


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first.
        b: The second.
    """
    CALLS.append("add")
    return a + b


def spell(number: int) -> str:
    """Spell a number from 0 to 9 in English.

    Args:
        number: The number.
    """
    CALLS.append("spell")
    return WORDS[number]


def note(text: str) -> str:
    """Count the characters of a line.

    Args:
        text: The line.
    """
    CALLS.append("note")
    return str(len(text))


def correct(completion: Any, answer: str) -> float:
    """1 where the last assistant message ends with the answer."""
    last = [m for m in completion if m.role == "assistant"][-1]
    return 1.0 if str(last.content or "").strip().endswith(answer) else 0.0


def brevity(completion: Any) -> float:
    """Fewer assistant messages are better."""
    return 1.0 / sum(1 for m in completion if m.role == "assistant")


def quick(state: Any) -> float:
    """Fewer turns are better (read off the rollout state's trajectory)."""
    return 1.0 / len(state["trajectory"])


def load_game(copy: int = 0) -> Any:
    """A MultiTurnEnv without tools: guess a number, told higher or lower each turn."""
    from datasets import Dataset

    class Guess(vf.MultiTurnEnv):  # type: ignore[misc]
        async def env_response(self, messages: Any, state: Any, **kwargs: Any) -> Any:
            guess, answer = int(str(messages[-1].content).strip()), int(state["answer"])
            if guess == answer:
                state["final_env_response"] = [vf.UserMessage(content="correct")]
                return state["final_env_response"]
            return [vf.UserMessage(content="higher" if guess < answer else "lower")]

    rows = [{"question": "Guess my number from 1 to 9.", "answer": "7"}]
    return Guess(dataset=Dataset.from_list(rows), rubric=vf.Rubric(funcs=[quick]), max_turns=5)


def load_environment(copy: int = 0, local: bool = False) -> Any:
    """The test environment (``copy``: another instance; ``local``: the one-tool variant
    for the local engine, its questions the tiny domain's)."""
    from datasets import Dataset

    if local:
        from runtime.tiny.tasks import tiny_tasks

        rows = [{"question": t.prompt, "answer": t.answer} for t in tiny_tasks(1, [2], seed=3)]
        rubric = vf.Rubric(funcs=[correct, brevity], weights=[0.5, 0.5])
        return vf.ToolEnv(dataset=Dataset.from_list(rows), tools=[note], rubric=rubric, max_turns=3)
    rows = [
        {"question": "What is 2+3? Spell the sum.", "answer": "five", "info": {"level": 1}},
        {"question": "What is 4+4? Spell the sum.", "answer": "eight", "info": {"level": 2}},
    ]
    return vf.ToolEnv(
        dataset=Dataset.from_list(rows),
        tools=[add, spell],
        rubric=vf.Rubric(funcs=[correct, brevity], weights=[0.75, 0.25]),
        system_prompt="Use the tools.",
        max_turns=6,
    )


# -- the library's own rollout, offline ----------------------------------------------------


def replaying_client(turns: list[tuple[str | None, list[dict[str, Any]] | None]]) -> Any:
    """A ``vf.Client`` answering turn k with ``turns[k]`` (content, tool calls)."""
    from verifiers.clients import Client
    from verifiers.types import Response, ResponseMessage
    from verifiers.types import ToolCall as VfToolCall

    class Replay(Client):  # type: ignore[misc]
        def setup_client(self, config: Any) -> None:
            return None

        async def to_native_tool(self, tool: Any) -> Any:
            return tool

        async def to_native_prompt(self, messages: Any) -> tuple[Any, dict[str, Any]]:
            return messages, {}

        async def get_native_response(self, prompt: Any, model: str, sampling_args: Any, tools: Any = None,
                                      **kwargs: Any) -> Any:  # fmt: skip
            content, calls = turns.pop(0)
            tool_calls = [VfToolCall(**c) for c in calls] if calls else None
            message = ResponseMessage(content=content, tool_calls=tool_calls, is_truncated=False,
                                      finish_reason="tool_calls" if calls else "stop")  # fmt: skip
            return Response(id="replay", created=0, model=model, message=message)

        async def raise_from_native_response(self, response: Any) -> None:
            return None

        async def from_native_response(self, response: Any) -> Any:
            return response

        async def close(self) -> None:
            return None

    return Replay(None)


async def library_rollout(env: Any, index: int, turns: list[Any]) -> Any:
    """The library's rollout of dataset row ``index`` on ``turns``, scored as
    ``Environment.run_rollout`` scores it."""
    row = env.get_dataset()[index]
    state = await env.rollout(row, replaying_client(list(turns)), "replay", {})
    await env.rubric.score_rollout(state)
    return state


def turns_of(path: Sequence[Node], delimiter: str = "\n") -> list[tuple[str | None, list[dict[str, Any]] | None]]:
    """What the policy wrote along ``path``, as the model's turns a server would send:
    the steps since the last answer as content, a call as its ``tool_calls``."""
    out: list[tuple[str | None, list[dict[str, Any]] | None]] = []
    lines: list[str] = []
    for node in path:
        if node.kind == "step":
            lines.append(node.text)
        elif node.kind == "call":
            call = node.meta["call"]
            tool_call = {"id": f"call_{sum(1 for t in out if t[1])}", "name": call["name"],
                         "arguments": json.dumps(call["arguments"])}  # fmt: skip
            out.append((delimiter.join(lines) or None, [tool_call]))
            lines = []
    if lines:
        out.append((delimiter.join(lines), None))
    return out


def dumped(messages: Any) -> list[dict[str, Any]]:
    from verifiers.utils.message_utils import normalize_messages

    return [m.model_dump() for m in normalize_messages(messages)]


# -- searchlearn ---------------------------------------------------------------------------


def script(request: GenerationRequest, i: int) -> str:
    """Reason, add with the tool, spell the sum with the other, answer."""
    a, b = map(int, re.findall(r"(\d+)\+(\d+)", request.messages[-1]["content"])[0])
    last = request.assistant_prefix.rstrip("\n").split("\n")[-1]
    if not last:
        return "I add the numbers first."
    if last.startswith("I add"):
        return f'call: add({{"a": {a}, "b": {b}}})'
    if last == f"= {a + b}":
        return f'call: spell({{"number": {a + b}}})'
    return f"Answer: {WORDS[a + b]}"


def searchlearn_context(policy: Any, env: VerifiersEnvironment, task_index: int, max_steps: int = 12) -> Context:
    (task,) = [t for t in VerifiersTasks(env=env.env, env_args=env.env_args).tasks() if t.id.endswith(f"-{task_index}")]
    rubric = VerifiersRubric().build(VerifierEnv(environment=env))
    verifiers = Verifiers(outcome=rubric, environment=env)
    return Context(Episode(run_id="vf", task=task), policy, verifiers, Sampling(temperature=0.0, max_steps=max_steps))


@pytest.mark.parametrize("index", [0, 1])
async def test_a_tool_env_gives_the_librarys_messages_and_reward(index: int) -> None:
    env = VerifiersEnvironment(env=SPEC)
    CALLS.clear()
    ep = await ChainOfThought().run(searchlearn_context(ScriptedPolicy(script), env, index))
    path = [ep.nodes[i] for i in ep.chosen_path]
    assert [n.kind for n in path] == ["step", "call", "observation", "call", "observation", "step"]
    total = [5, 8][index]
    assert [n.text for n in path if n.kind == "observation"] == [f"= {total}", f"= {WORDS[total]}"]
    assert CALLS == ["add", "spell"]  # each call ran once, when the search expanded it

    library = load_verifiers_env(SPEC, {"copy": 1})  # another instance, never touched by the adapter
    state = await library_rollout(library, index, turns_of(path))
    assert CALLS == ["add", "spell"] * 2
    messages, stop = conversation(path, ep.nodes)
    assert dumped(messages) == [m.model_dump() for m in state["completion"]]
    assert dumped(ep.task.as_messages()) == [m.model_dump() for m in state["prompt"]]
    assert ep.reward == state["reward"] == 0.75 + 0.25 / 3
    assert stop is None and state["stop_condition"] == "no_tools_called"
    assert ep.final_answer == WORDS[total] and ep.status == "ok"
    assert "correct=1" in ep.nodes[ep.chosen_path[-1]].explanations["outcome:verifiers_rubric"]


async def test_a_stored_episode_is_rescored_without_running_a_tool_again() -> None:
    env = VerifiersEnvironment(env=SPEC)
    ep = await ChainOfThought().run(searchlearn_context(ScriptedPolicy(script), env, 0))
    back = episode_from_json(episode_to_json(ep))
    leaf = back.nodes[back.chosen_path[-1]]
    leaf.scores.clear()
    CALLS.clear()
    rubric = VerifiersRubric().build(VerifierEnv(environment=env))
    score = await Context.scoring(back, Verifiers(outcome=rubric, environment=env)).judge(leaf)
    assert score.value == ep.reward and CALLS == []


async def test_branches_get_their_own_rollout_state() -> None:
    """Two calls from one state (fork: copy): each branch's library State holds its own
    turns, and identical sibling calls share an execution only when deterministic."""
    for deterministic, executions in [(False, 3), (True, 2)]:
        env = VerifiersEnvironment(env=SPEC, deterministic=deterministic)
        ctx = searchlearn_context(ScriptedPolicy(script), env, 0)
        (reason,) = await ctx.expand(ctx.root)
        (add_call,) = await ctx.expand(reason)
        spell_calls = await ctx.expand(add_call, 2)
        leaves = [n for ns in await ctx.expand_all(spell_calls) for n in ns]
        assert ctx.turns is not None and ctx.turns.executions == executions
        for leaf in leaves:
            path = ctx.path(leaf)
            messages, _ = conversation(path, ctx.episode.nodes)
            assert [m["role"] for m in messages] == ["assistant", "tool", "assistant", "tool", "assistant"]
            assert [m["content"] for m in messages if m["role"] == "tool"] == ["5", "five"]
            assert [m["tool_call_id"] for m in messages if m["role"] == "tool"] == ["call_0", "call_1"]
            assert (await ctx.judge(leaf)).value == 0.75 + 0.25 / 3
        # the state after the first answer still holds one turn; each branch's, two
        states = ctx.turns._states
        observations = [n for n in ctx.episode.nodes if n.kind == "observation"]
        assert [len(states[o.id].state["trajectory"]) for o in observations] == [1, 2, 2]


async def test_the_environment_stops_a_path_as_the_library_would() -> None:
    """Past the environment's own max_turns the call is not run: the path ends on a
    terminal observation naming the stop condition, and the conversation ends on the call."""

    def calls_forever(request: GenerationRequest, i: int) -> str:
        return 'call: add({"a": 1, "b": 1})'

    env = VerifiersEnvironment(env=SPEC, env_args={"copy": 2})
    env.environment().max_turns = 2
    ep = await ChainOfThought().run(searchlearn_context(ScriptedPolicy(calls_forever), env, 0))
    path = [ep.nodes[i] for i in ep.chosen_path]
    assert [n.kind for n in path] == ["call", "observation", "call", "observation"]
    assert path[-1].terminal and "max_turns_reached" in path[-1].text
    messages, stop = conversation(path, ep.nodes)
    assert stop == "max_turns_reached" and [m["role"] for m in messages] == ["assistant", "tool", "assistant"]
    library = load_verifiers_env(SPEC, {"copy": 3})
    library.max_turns = 2
    state = await library_rollout(library, 0, turns_of(path))
    assert dumped(messages) == [m.model_dump() for m in state["completion"]]
    assert ep.reward == state["reward"] and state["stop_condition"] == stop


async def test_a_multi_turn_env_without_tools_answers_every_step() -> None:
    """A game (MultiTurnEnv.env_response, no tools): every step is a turn, its
    final_env_response ends the path, and a reward read off the State's trajectory is
    the library's."""
    guesses = iter(["5", "8", "7"])
    env = VerifiersEnvironment(env="test_verifiers_adapter:load_game")
    assert env.mode() == "step"
    ep = await ChainOfThought().run(searchlearn_context(ScriptedPolicy(lambda r, i: next(guesses)), env, 0))
    path = [ep.nodes[i] for i in ep.chosen_path]
    assert [n.text for n in path] == ["5", "= higher", "8", "= lower", "7", "= correct"]
    assert [n.kind for n in path] == ["call", "observation"] * 3 and path[-1].terminal
    messages, stop = conversation(path, ep.nodes)
    library = load_verifiers_env("test_verifiers_adapter:load_game", {"copy": 1})
    state = await library_rollout(library, 0, [("5", None), ("8", None), ("7", None)])
    assert dumped(messages) == [m.model_dump() for m in state["completion"]]
    assert stop == state["stop_condition"] == "has_final_env_response"
    assert ep.reward == state["reward"] == 1 / 3


# -- the local engine ----------------------------------------------------------------------


class EveryLine(CallFormat):
    """Every step but an answer is a call of the environment's ``note`` tool."""

    name: Literal["test_vf_every_line"] = "test_vf_every_line"

    def parse(self, text: str, parameters: Mapping[str, Sequence[str]]) -> ToolCall | None:
        if not text.strip() or "Answer" in text:
            return None
        return ToolCall("note", {"text": text}, text)

    def observation(self, output: ToolOutput) -> str:
        return "= " + (output.error or output.text)

    def error(self, message: str) -> str:
        return "= error: " + message


async def test_the_local_engine_drives_a_verifiers_environment() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime.policy.local import LocalPolicy
    from runtime.tiny.policy_format import WEAK_POLICY

    tokenizer = AutoTokenizer.from_pretrained(WEAK_POLICY)
    model = AutoModelForCausalLM.from_pretrained(WEAK_POLICY, dtype=torch.float32)
    env = VerifiersEnvironment(env=SPEC, env_args={"local": True}, format=EveryLine())
    CALLS.clear()
    async with LocalPolicy(model, tokenizer, max_batch=1, threads=1) as policy:
        with anyio.fail_after(120):
            ep = await ChainOfThought().run(searchlearn_context(policy, env, 0, max_steps=5))
    path = [ep.nodes[i] for i in ep.chosen_path]
    calls = [n for n in path if n.kind == "call"]
    assert calls and all(n.token_ids for n in path if n.kind != "observation")  # the engine's own steps
    assert CALLS == ["note"] * sum(1 for n in path if n.kind == "observation")
    state = await library_rollout(load_verifiers_env(SPEC, {"copy": 4, "local": True}), 0, turns_of(path))
    messages, _ = conversation(path, ep.nodes)
    assert dumped(messages) == [m.model_dump() for m in state["completion"]]
    assert ep.reward == state["reward"]


# -- the task source and the config ----------------------------------------------------------


def test_the_task_source_reads_the_rows() -> None:
    tasks = list(VerifiersTasks(env=SPEC).tasks())
    assert [t.id for t in tasks] == [f"{SPEC.replace(':', '.')}-train-0", f"{SPEC.replace(':', '.')}-train-1"]
    first = tasks[0]
    assert first.messages == [{"role": "system", "content": "Use the tools."},
                              {"role": "user", "content": "What is 2+3? Spell the sum."}]  # fmt: skip
    assert first.answer == "five" and first.metadata["verifiers"]["info"] == {"level": 1}
    assert [t.answer for t in VerifiersTasks(env=SPEC, size=1, seed=1).tasks()] in (["five"], ["eight"])
    # the library's own loader, by environment id (module test_verifiers_adapter)
    loaded = load_verifiers_env("test-verifiers-adapter")
    assert isinstance(loaded, vf.ToolEnv) and loaded is load_verifiers_env("test-verifiers-adapter")


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tasks.env: cannot load verifiers environment 'no_such_module:f'"):
        build_tasks(load_config(write(tmp_path, {"tasks": {"source": "verifiers", "env": "no_such_module:f"}})))
    config = load_config(write(tmp_path, {"verifiers": {"outcome": "verifiers_rubric"}}))
    with pytest.raises(ConfigError, match=r"verifiers.outcome: verifiers_rubric .* environment: \{name: verifiers"):
        build_verifiers(config)


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"policy": {"kind": "scripted", "script": ["x"]}, **data}))
    return path


def test_searchlearn_run_with_a_verifiers_environment(tmp_path: Path) -> None:
    script = ["I add the numbers first.", 'call: add({"a": 2, "b": 3})', 'call: spell({"number": 5})', "Answer: five"]
    config = {
        "run_id": "vf",
        "policy": {"kind": "scripted", "script": script},
        "tasks": {"source": "verifiers", "env": SPEC, "size": 1},
        "environment": {"name": "verifiers", "env": SPEC},
        "verifiers": {"outcome": "verifiers_rubric"},
        "scheduler": {"concurrency": 1},
        "store": {"path": str(tmp_path / "s.db")},
    }
    result = CliRunner().invoke(app, ["run", str(write(tmp_path, config))])
    assert result.exit_code == 0, result.output
    with EpisodeStore(tmp_path / "s.db") as store:
        (ep,) = store.episodes("vf")
    assert ep.status == "ok" and ep.reward == 0.75 + 0.25 / 3
    assert [ep.nodes[i].kind for i in ep.chosen_path] == ["step", "call", "observation", "call", "observation", "step"]
