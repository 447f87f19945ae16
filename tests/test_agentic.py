"""Agentic episodes (issue 26 items 1-4): tools, call and observation nodes,
environments and their fork modes, and search at turn boundaries.

Policies are scripted (offline), except the token-exact check, which runs the local
engine on ``bundled-weak``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import anyio
import pytest
import yaml
from typer.testing import CliRunner

from runtime.app.cli import app
from runtime.app.config import load_config
from runtime.core.registry import components
from runtime.core.types import Episode, Node, Task, episode_from_json, episode_to_json
from runtime.policy.base import GenerationRequest
from runtime.policy.scripted import ScriptedPolicy
from runtime.rewards.base import Score, VerifierEnv
from runtime.rewards.outcome import ExactMatch
from runtime.rewards.tool_call import ToolCallVerifier
from runtime.scheduling.store import EpisodeStore
from runtime.search.context import Context, Sampling, Verifiers, gather
from runtime.tools import BaseEnvironment, BaseTool, CalculatorEnvironment, ToolEnvironmentError, ToolsEnvironment
from runtime.tools.base import ToolCall, ToolOutput, Turn
from runtime.tools.calculator import calculate
from strategies.chain_of_thought import ChainOfThought
from strategies.verify_backtrack import VerifyAndBacktrack

pytestmark = pytest.mark.anyio

TASK = Task(id="t", prompt="What is 6*7?", answer="42")


def context(script: Any, env: Any, **verifiers: Any) -> Context:
    sampling = Sampling(temperature=0.0, max_steps=12)
    return Context(
        Episode(run_id="r", task=TASK), ScriptedPolicy(script), Verifiers(environment=env, **verifiers), sampling
    )


def after(table: dict[str, str], default: str = "Answer: 42") -> Callable[[GenerationRequest, int], str]:
    """A script that answers by the last line of the path so far ('' at the start)."""

    def script(request: GenerationRequest, i: int) -> str:
        lines = request.assistant_prefix.rstrip("\n").split("\n")
        return table.get(lines[-1], default)

    return script


def observations(ep: Episode) -> list[Node]:
    return [n for n in ep.nodes if n.kind == "observation"]


# -- tools -------------------------------------------------------------------------------


async def test_the_calculator_is_arithmetic_only_and_bounded() -> None:
    assert await calculate("12*7") == "84"
    assert await calculate("(2+3)*4 - 7/2") == "16.5"
    for bad, why in [("9**9**9", "too large"), ("1/0", "division"), ("__import__('os')", "not arithmetic"),
                     ("x+1", "not arithmetic"), ("1" * 300, "longer")]:  # fmt: skip
        with pytest.raises(ValueError, match=why):
            await calculate(bad)
    start = time.perf_counter()
    for _ in range(200):
        await calculate("123*456+789")
    assert (time.perf_counter() - start) / 200 < 0.005


def test_a_tool_spec_has_the_schema_transformers_derives() -> None:
    env = CalculatorEnvironment()
    spec = env.specs()["calc"]
    params = spec.schema["function"]["parameters"]
    assert spec.schema["function"]["name"] == "calc" and params["required"] == ["expression"]
    assert params["properties"]["expression"]["type"] == "string"
    assert spec.deterministic and spec.side_effect_free
    assert spec.check({"expression": 3}) is not None and spec.check({"other": "1"}) is not None
    assert {"calculator", "tools"} <= set(components("environments"))
    assert "calc" in components("tools") and "compact" in components("tool_formats")


# -- nodes -------------------------------------------------------------------------------


async def test_call_and_observation_nodes_round_trip_through_json_and_the_store(tmp_path: Path) -> None:
    ctx = context(after({"": "call: calc(6*7)"}), CalculatorEnvironment())
    ep = await ChainOfThought().run(ctx)
    assert [n.kind for n in ep.nodes] == ["step", "call", "observation", "step"]
    assert [n.text for n in ep.nodes[1:]] == ["call: calc(6*7)", "= 42", "Answer: 42"]
    assert ep.final_answer == "42" and ep.reward is None
    obs = ep.nodes[2]
    assert not obs.trained and ep.nodes[1].trained and obs.answer is None
    back = episode_from_json(episode_to_json(ep))
    assert back == ep
    with EpisodeStore(tmp_path / "s.db") as store:
        store.write_many([ep])
        (stored,) = store.episodes("r")
    assert stored == ep
    data = json.loads(episode_to_json(ep))
    for node in data["nodes"]:
        del node["kind"]  # as a run stored before node kinds existed
    assert {n.kind for n in episode_from_json(json.dumps(data)).nodes} == {"step"}


# -- search at turn boundaries -----------------------------------------------------------


async def test_siblings_under_one_call_node_share_one_execution() -> None:
    ctx = context(after({"": "call: calc(6*7)"}), CalculatorEnvironment())
    (call,) = await ctx.expand(ctx.root)
    children = await ctx.expand(call, 4)
    again = await ctx.expand(call, 2)  # backtracking to the call reuses its observation
    assert ctx.turns is not None and ctx.turns.executions == 1
    (obs,) = observations(ctx.episode)
    assert all(c.parent == obs.id for c in children + again) and obs.parent == call.id
    # identical sibling calls from one state share one execution too (deterministic, side-effect free)
    ctx = context(after({"": "call: calc(6*7)"}), CalculatorEnvironment())
    calls = await ctx.expand(ctx.root, 3)
    await ctx.expand_all(calls)
    assert ctx.turns is not None and ctx.turns.executions == 1
    assert [o.meta.get("shared_from") for o in observations(ctx.episode)] == [None, 4, 4]
    # and when their expansions run concurrently, through a tool that takes its time
    ctx = context(after({"": "call: test_slow(6*7)"}), ToolsEnvironment(tools=[SLOW()]))
    calls = await ctx.expand(ctx.root, 3)
    await gather(ctx.expand(c) for c in calls)
    assert ctx.turns is not None and ctx.turns.executions == 1
    assert {o.text for o in observations(ctx.episode)} == {"= 6*7"}


async def slow(x: str) -> str:
    """Answers after a while.

    Args:
        x: Said back.
    """
    await anyio.sleep(0.05)
    return x


async def test_verify_backtrack_rejects_a_malformed_call_before_it_runs() -> None:
    env = CalculatorEnvironment()
    verifier = ToolCallVerifier().build(VerifierEnv(environment=env))
    script = ["call: calc(6*7", "call: nope(1)", "call: calc(6*7)", "Answer: 42"]
    ctx = context(script, env, process=verifier)
    ep = await VerifyAndBacktrack(step_retries=4).run(ctx)
    calls = [n for n in ep.nodes if n.kind == "call"]
    assert [c.meta.get("accepted", False) for c in calls] == [False, False, True]
    assert "malformed" in calls[0].meta["call"] and "unknown tool" in calls[1].explanations["tool_call"]
    assert ctx.turns is not None and ctx.turns.executions == 1 == sum(c.meta.get("accepted", False) for c in calls)
    assert all(not c.children for c in calls[:2])  # rejected calls never ran
    assert ep.final_answer == "42"


class NoEquals:
    """A domain verifier that would fail an observation's text if it scored it."""

    name = "no_equals"

    async def score_step(self, task: Task, previous: Sequence[str], step: str) -> Score:
        return Score(0.0 if step.startswith("=") else 1.0)


async def test_an_observation_is_not_scored_as_a_step() -> None:
    ctx = context(after({"": "call: calc(6*7)"}), CalculatorEnvironment(), process=NoEquals())
    (call,) = await ctx.expand(ctx.root)
    (answer,) = await ctx.expand(call)
    obs = ctx.node(answer.parent or 0)
    assert obs.kind == "observation"
    assert await ctx.score_path(answer) == 1.0 and await ctx.score(obs) == await ctx.score(call) == 1.0
    assert "no_equals" not in obs.scores


# -- fork modes, with a mutating tool ----------------------------------------------------


def note(text: str) -> str:
    """Append a line to the notebook.

    Args:
        text: The line.
    """
    return text


class Note(BaseTool):
    name: Literal["test_note"] = "test_note"
    side_effect_free: ClassVar[bool] = False

    def function(self) -> Callable[..., Any]:
        return note


class RandomNote(Note):
    name: Literal["test_random_note"] = "test_random_note"  # type: ignore[assignment]
    deterministic: ClassVar[bool] = False


class Notebook(BaseEnvironment):
    """A stateful environment: each call appends to a list, which the observation shows."""

    name: Literal["test_notebook"] = "test_notebook"

    def reset(self, task: Task) -> Any:
        return []

    async def step(self, state: Any, call: ToolCall) -> Turn:
        state.append(call.arguments["text"] if call.arguments else "?")
        return Turn(state, self.format.observation(ToolOutput(",".join(state))))


def branching(env: BaseEnvironment) -> tuple[Context, Callable[[], Any]]:
    """root -> note(a) -> {note(b), note(c)} -> each expanded once."""
    table = {"": "call: NAME(a)", "= a": "call: NAME(b)"}
    name = env.tools[0].name
    calls = iter(["call: NAME(b)", "call: NAME(c)"])

    def script(request: GenerationRequest, i: int) -> str:
        last = request.assistant_prefix.rstrip("\n").split("\n")[-1]
        text = next(calls) if last == "= a" else table.get(last, "Answer: done")
        return text.replace("NAME", name)

    ctx = context(script, env)

    async def run() -> list[Node]:
        (first,) = await ctx.expand(ctx.root)
        b, c = await ctx.expand(first, 2)
        return [n for ns in await ctx.expand_all([b, c]) for n in ns]

    return ctx, run


async def test_copy_fork_gives_each_branch_its_own_state() -> None:
    ctx, run = branching(Notebook(tools=[Note()], fork="copy"))
    await run()
    assert [o.text for o in observations(ctx.episode)] == ["= a", "= a,b", "= a,c"]


async def test_replay_fork_rebuilds_a_branch_and_refuses_a_non_deterministic_tool() -> None:
    ctx, run = branching(Notebook(tools=[Note()], fork="replay"))
    await run()
    assert [o.text for o in observations(ctx.episode)] == ["= a", "= a,b", "= a,c"]
    assert ctx.turns is not None and ctx.turns.executions == 3 and ctx.turns.replays == 1
    ctx, run = branching(Notebook(tools=[RandomNote()], fork="replay"))
    with pytest.raises(ToolEnvironmentError, match="test_random_note.*not deterministic"):
        await run()


async def test_fork_none_refuses_to_branch_naming_the_tool() -> None:
    ctx, run = branching(Notebook(tools=[Note()], fork="none"))
    with pytest.raises(ToolEnvironmentError, match="fork: none.*test_note"):
        await run()


# -- tools that misbehave ----------------------------------------------------------------

RELEASE = threading.Event()


def hang(x: str) -> str:
    """Never answers in time.

    Args:
        x: Ignored.
    """
    RELEASE.wait(10)
    return "late"


def boom(x: str) -> str:
    """Raises.

    Args:
        x: Ignored.
    """
    raise RuntimeError("boom")


def flood(x: str) -> str:
    """Returns 10 MB.

    Args:
        x: Ignored.
    """
    return "y" * 10_000_000


def surrogates(x: str) -> str:
    """Returns lone surrogates.

    Args:
        x: Ignored.
    """
    return "a\ud800b\udfff"


def _tool(fn: Callable[..., Any]) -> type[BaseTool]:
    name = f"test_{fn.__name__}"
    return type(f"T{fn.__name__}", (BaseTool,), {"__annotations__": {"name": Literal[name]}, "name": name,
                                                  "function": lambda self: fn})  # fmt: skip


HANG, BOOM, FLOOD, SURROGATES, SLOW = (_tool(f) for f in (hang, boom, flood, surrogates, slow))


@pytest.mark.parametrize(
    ("tool", "expected"),
    [
        (HANG, "error: tool test_hang timed out"),
        (BOOM, "error: RuntimeError: boom"),
        (FLOOD, "y" * 100),
        (SURROGATES, "a\ufffdb\ufffd"),
    ],  # fmt: skip
)
async def test_a_misbehaving_tool_gives_an_error_observation_and_the_episode_goes_on(tool: Any, expected: str) -> None:
    env = ToolsEnvironment(tools=[tool(timeout=0.3, max_output_chars=500)])
    ctx = context(after({"": f"call: {tool().name}(x)"}), env)
    try:
        ep = await ChainOfThought().run(ctx)
    finally:
        RELEASE.set()
    (obs,) = observations(ep)
    assert expected in obs.text and len(obs.text) <= 510
    assert ep.final_answer == "42" and ep.status == "ok"
    assert episode_from_json(episode_to_json(ep)).nodes[obs.id].text == obs.text  # storable


async def test_turn_and_call_limits() -> None:
    loop = after({}, default="call: calc(1+1)")
    ctx = context(loop, CalculatorEnvironment(max_turns=2))
    ep = await ChainOfThought().run(ctx)
    assert [o.text for o in observations(ep)] == ["= 2", "= 2", "= error: turn limit (2) reached"]
    assert ep.nodes[-1].terminal
    ctx = context(loop, CalculatorEnvironment(max_calls=1))
    calls = await ctx.expand(ctx.root, 1)
    (second,) = await ctx.expand(calls[0], 1)
    await ctx.expand(second, 1)
    assert ctx.turns is not None and ctx.turns.executions == 1
    assert observations(ctx.episode)[-1].text == "= error: call budget (1 calls) spent"


# -- from a config -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "process", "script"),
    [
        ("chain_of_thought", None, ["call: calc(6*7)", "Answer: 42"]),
        ("verify_backtrack", "tool_call", ["call: calc(6*7", "call: calc(6*7)", "Answer: 42"]),
    ],
)
def test_searchlearn_run_with_the_calculator(
    tmp_path: Path, strategy: str, process: str | None, script: list[str]
) -> None:
    config = {
        "run_id": "agentic",
        "policy": {"kind": "scripted", "script": script},
        "tasks": {"source": "tiny", "size": 3},
        "strategy": {"name": strategy},
        "verifiers": {"outcome": "exact", "process": process},
        "environment": {"name": "calculator", "max_calls": 8},
        "scheduler": {"concurrency": 1},
        "store": {"path": str(tmp_path / "s.db")},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert load_config(path).environment is not None
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    with EpisodeStore(tmp_path / "s.db") as store:
        episodes = list(store.episodes("agentic"))
    assert len(episodes) == 3
    for ep in episodes:
        assert ep.status == "ok" and ep.final_answer == "42"
        path_kinds = [ep.nodes[i].kind for i in ep.chosen_path]
        assert path_kinds == ["call", "observation", "step"]
        assert ep.nodes[ep.chosen_path[1]].text == "= 42"
        ran = [n for n in ep.nodes if n.kind == "observation" and "execution" in n.meta]
        assert len(ran) == 1 == sum(1 for n in ep.nodes if n.kind == "call" and not n.meta.get("rejected"))


# -- the walkthrough in docs/extending.md ------------------------------------------------


async def test_the_memory_calculator_of_the_extending_guide_runs() -> None:
    text = (Path(__file__).parents[1] / "docs" / "extending.md").read_text(encoding="utf-8")
    section = text.split("## An environment and a tool", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    module = types.ModuleType("memory_walkthrough")
    sys.modules[module.__name__] = module  # pydantic resolves the annotations there
    exec(compile(code, "extending.md", "exec"), module.__dict__)  # the guide's code, as written
    from runtime.tools import Calc

    env = module.MemoryCalculator(tools=[Calc(), module.Store()])
    script = ['call: store({"name": "total", "value": "12*7"})', "call: calc(total+1)", "Answer: 85"]
    ep = await ChainOfThought().run(context(script, env))
    assert [o.text for o in observations(ep)] == ["= 84", "= 85"] and ep.final_answer == "85"


# -- every strategy, unchanged ------------------------------------------------------------


def _strategies() -> list[str]:
    import runtime.app.config  # noqa: F401  (registers the built-in packages)

    return list(components("strategies"))


@pytest.mark.parametrize("name", _strategies())
async def test_every_strategy_runs_on_the_calculator(name: str) -> None:
    def script(request: GenerationRequest, i: int) -> str:
        if request.assistant_prefix:
            return "Answer: 42"
        return "call: calc(6*7)" if request.stop else "call: calc(6*7)\nAnswer: 42"

    env = CalculatorEnvironment()
    verifiers = Verifiers(
        outcome=ExactMatch(), process=ToolCallVerifier().build(VerifierEnv(environment=env)), environment=env
    )
    episode = Episode(run_id="r", task=TASK)
    ctx = Context(episode, ScriptedPolicy(script), verifiers, Sampling(max_steps=8), token_budget=4000)
    strategy = components("strategies")[name]()
    with anyio.fail_after(30):
        ep = await strategy.run(ctx)
    assert ep.final_answer == "42" and ep.reward == 1.0
    if name != "least_to_most":  # its path starts with sub-questions it writes itself
        assert [ep.nodes[i].kind for i in ep.chosen_path] == ["call", "observation", "step"]
        assert ctx.turns is not None and ctx.turns.executions == 1  # however many identical calls it sampled
