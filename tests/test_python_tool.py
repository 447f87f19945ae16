"""The ``python`` environment: a model's code in the sandbox, one cell a call, its state
the path's earlier cells replayed (issue 26 item 3), and hostile cells contained: a cell
that hangs, prints 10 MB, writes a lone surrogate, forks, or kills its parent leaves an
error observation, nothing running, and the run going on."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import anyio
import psutil
import pytest

from runtime.app.config import load_config
from runtime.core.types import Episode, Task
from runtime.policy.base import GenerationRequest
from runtime.policy.scripted import ScriptedPolicy
from runtime.rewards.base import VerifierEnv
from runtime.rewards.outcome import ExactMatch
from runtime.rewards.tool_call import ToolCallVerifier
from runtime.scheduling.scheduler import Runtime
from runtime.scheduling.store import EpisodeStore
from runtime.search.context import Context, Sampling, Verifiers
from runtime.tools.python import PythonEnvironment, PythonTool
from runtime.tools.sandbox import MARKER
from strategies.best_of_n import BestOfN
from strategies.chain_of_thought import ChainOfThought

pytestmark = pytest.mark.anyio

TASK = Task(id="t", prompt="What is 6*7?", answer="42")


def env(**tool: object) -> PythonEnvironment:
    return PythonEnvironment(tools=[PythonTool(**tool)])


async def run(environment: PythonEnvironment, state: tuple[str, ...], code: str) -> tuple[str, tuple[str, ...]]:
    call = environment.parse(f"call: python({code})")
    assert call is not None
    turn = await environment.step(state, call)
    return turn.observation, turn.state


def sandboxed() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(MARKER in part for part in p.info["cmdline"] or []):
                found.append(p)
        except psutil.Error:
            pass
    return found


async def test_cells_keep_their_state_by_replay_and_branches_do_not_share_it() -> None:
    e = env()
    state = e.reset(TASK)
    seen, state = await run(e, state, "x = 6 * 7")
    assert seen == "= (no output)" and state == ("x = 6 * 7",)
    seen, after = await run(e, state, "x")  # a last expression is shown, as in a notebook
    assert seen == "= 42"
    # two branches from one state: each its own world
    left, left_state = await run(e, state, "x = x + 1")
    right, right_state = await run(e, state, "print(x)")
    assert (await run(e, left_state, "x"))[0] == "= 43"
    assert (await run(e, right_state, "x"))[0] == "= 42"
    # a cell that raises shows its output and error, and is not replayed
    seen, failed = await run(e, state, "print('so far'); 1/0")
    assert seen == "= error: so far ZeroDivisionError: division by zero" and failed == state


async def test_hostile_cells_end_as_error_observations_with_nothing_left_running() -> None:
    e = env(timeout=2.0)
    state: tuple[str, ...] = ()
    parent = os.getpid()
    for code, expected in [
        ("while True: pass", "timed out"),
        ("print('a' * 10_000_000)", "output limit"),
        ("import os; os.kill(os.getppid(), 9)", "error"),
        ("import os\nfor _ in range(4): os.fork()\nimport time; time.sleep(30)", "timed out"),
        ("raise SystemExit(3)", "SystemExit: 3"),
    ]:
        with anyio.fail_after(30):
            seen, state = await run(e, state, code)
        assert seen.startswith("= error: ") and expected in seen, (code, seen)
        assert state == ()  # none of them joins the path's cells
    assert os.getpid() == parent and psutil.pid_exists(parent)
    assert sandboxed() == []
    seen, _ = await run(e, state, "print('\\ud800 ok')")  # a lone surrogate prints escaped, storable
    assert seen == "= \\ud800 ok"
    seen.encode("utf-8")


def script_of(lines: dict[str, str]) -> Callable[[GenerationRequest, int], str]:
    def script(request: GenerationRequest, i: int) -> str:
        last = request.assistant_prefix.rstrip("\n").split("\n")[-1]
        return lines.get(last, "Answer: 42")

    return script


async def test_an_episode_calls_python_and_the_store_keeps_it(tmp_path: Path) -> None:
    environment = env()
    policy = ScriptedPolicy(script_of({"": "call: python(x = 6 * 7)", "= (no output)": "call: python(x)"}))
    verifiers = Verifiers(outcome=ExactMatch(), environment=environment)
    with EpisodeStore(tmp_path / "s.db") as store:
        async with Runtime(policy, ChainOfThought(), verifiers=verifiers, store=store, run_id="py") as rt:
            [episode] = [ep async for ep in rt.stream([TASK])]
        [stored] = list(store.episodes("py"))
    assert episode.reward == 1.0 and episode.final_answer == "42"
    kinds = [stored.nodes[i].kind for i in stored.chosen_path]
    assert kinds == ["call", "observation", "call", "observation", "step"]
    assert [stored.nodes[i].text for i in stored.chosen_path][1::2][:2] == ["= (no output)", "= 42"]


async def test_a_malformed_call_is_rejected_before_it_runs_and_calls_are_budgeted() -> None:
    environment = PythonEnvironment(max_calls=2)
    calls = {"": "call: python(print(1)", "= error: python takes": ""}  # unbalanced: no closing bracket
    verifiers = Verifiers(
        outcome=ExactMatch(),
        process=ToolCallVerifier().build(VerifierEnv(environment=environment)),
        environment=environment,
    )
    ctx = Context(Episode(run_id="r", task=TASK), ScriptedPolicy(script_of(calls)), verifiers, Sampling(max_steps=6))
    score = await verifiers.process.score_step(ctx.task, [], "call: python(print(1)")  # type: ignore[union-attr]
    assert score.value == 0.0
    # four identical calls from the root: not shareable (python is not deterministic), so
    # each runs, until max_calls; the rest are answered with an error and run nothing
    policy = ScriptedPolicy(script_of({"": "call: python(6 * 7)"}))
    ctx = Context(
        Episode(run_id="r", task=TASK), policy, Verifiers(outcome=ExactMatch(), environment=environment), Sampling()
    )
    episode = await BestOfN(n=4).run(ctx)
    observations = [n.text for n in episode.nodes if n.kind == "observation"]
    assert observations.count("= 42") == 2 and len(observations) == 4
    assert ctx.turns is not None and ctx.turns.executions == 2


def test_a_config_names_the_python_environment() -> None:
    config = load_config(
        None, ["policy.kind=scripted", "environment.name=python", "environment.tools=[{name: python, timeout: 3}]"]
    )
    assert isinstance(config.environment, PythonEnvironment)
    assert config.environment.tools[0].timeout == 3.0
