"""Token ids are the record in agent episodes too: along a multi-turn path, each call of
the local engine (``bundled-weak``) is fed the prompt, the ids it sampled for every
earlier step, unchanged, and each observation's text encoded on its own.

The tiny model was not trained on tool calls, so a test format reads every step as a
call of an ``echo`` tool: what is checked is the token sequence, not the tool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Literal

import pytest
from recording import recording_weak_policy
from transformers import AutoTokenizer

from runtime.core.types import Episode, path_parts, path_pieces
from runtime.policy.local import LocalPolicy
from runtime.policy.prompts import encode_parts
from runtime.search.context import Context, Sampling, Verifiers
from runtime.tiny.policy_format import WEAK_POLICY
from runtime.tiny.tasks import tiny_tasks
from runtime.tools import BaseTool, CallFormat, ToolsEnvironment
from runtime.tools.base import ToolCall, ToolOutput

pytestmark = pytest.mark.anyio


def echo(text: str) -> str:
    """Say the step back, reversed.

    Args:
        text: The step.
    """
    return text[::-1]


class Echo(BaseTool):
    name: Literal["test_echo"] = "test_echo"

    def function(self) -> Callable[..., Any]:
        return echo


class EveryStep(CallFormat):
    """Every step is a call of test_echo; its observation is ``>> result``."""

    name: Literal["test_every_step"] = "test_every_step"

    def parse(self, text: str, parameters: Mapping[str, Sequence[str]]) -> ToolCall | None:
        return ToolCall("test_echo", {"text": text}, text)

    def observation(self, output: ToolOutput) -> str:
        return ">> " + (output.error or output.text)

    def error(self, message: str) -> str:
        return ">> " + message


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(WEAK_POLICY)


@pytest.fixture
async def policy(tokenizer: Any) -> AsyncIterator[LocalPolicy]:
    policy: LocalPolicy = recording_weak_policy(tokenizer, max_batch=4)
    async with policy:
        yield policy


async def test_the_ids_along_a_multi_turn_path_are_what_the_engine_was_fed(policy: LocalPolicy, tokenizer: Any) -> None:
    task = next(tiny_tasks(1, [3], seed=11))
    env = ToolsEnvironment(tools=[Echo()], format=EveryStep())
    sampling = Sampling(temperature=0.8, logprobs=True, seed=0, step_max_tokens=48, max_steps=12)
    ctx = Context(Episode(run_id="r", task=task), policy, Verifiers(environment=env), sampling)
    node = ctx.root
    for _ in range(3):
        (node,) = await ctx.expand(node)
    path = ctx.path(node)
    assert [n.kind for n in path] == ["call", "observation", "call", "observation", "call"]
    calls = [n for n in path if n.kind == "call"]
    assert all(n.stop_reason == "\n" and n.token_ids for n in calls)
    for obs, call in zip(path[1::2], calls, strict=False):
        assert obs.text == ">> " + call.text[::-1] and obs.token_ids is None and not obs.trained

    rendered = tokenizer.apply_chat_template(task.as_messages(), tokenize=False, add_generation_prompt=True)
    prompt = tokenizer(rendered, add_special_tokens=False)["input_ids"]

    def encoded(text: str) -> list[int]:
        ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    sent: list[list[int]] = policy.sent  # type: ignore[attr-defined]
    c1, o1, c2, o2 = path[:4]
    assert sent == [
        prompt,
        prompt + c1.token_ids + encoded(o1.text + "\n"),  # type: ignore[operator]
        prompt + c1.token_ids + encoded(o1.text + "\n") + c2.token_ids + encoded(o2.text + "\n"),  # type: ignore[operator]
    ]
    # the learner's rule (path_pieces -> encode_parts) rebuilds the same sequence, with
    # the observations as pieces of their own that no loss trains on
    pieces = path_pieces(path[:4], "\n")
    assert [p.ids is None for p in pieces] == [False, True, False, True]
    assert [p.nodes[0].trained for p in pieces] == [True, False, True, False]
    assert encode_parts(tokenizer, [rendered, *(path_parts(pieces) or [])]) == sent[2]
