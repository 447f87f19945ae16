"""An agent episode's tokens are trained under the prompt they were sampled under (issue
26): with a call format that puts the tools into the prompt (``chat_template``: the
schemas through ``apply_chat_template(tools=...)``, or a system message describing them
where the template shows none), the learners' examples, rollouts and pairs and the
Monte-Carlo value take the episode's prompt from :func:`runtime.tools.base.task_prompt`,
the one the episode context sends, not the task's messages alone.

The local engine on ``bundled-weak`` records the ids it is fed; its 512-token context
holds neither Qwen's tool system turn nor the described calculator, so it runs under a
ChatML template that lists the tools in a short system turn. The two long prompts are
checked on a scripted policy's requests, encoded by the engines' own rule
(:class:`~runtime.policy.prompts.PromptEncoder`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch
from recording import recording_weak_policy
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from learners.dpo import DPOLearner
from learners.examples import Example, VerifiedPaths
from learners.on_policy_distill import OnPolicySamples
from learners.pairs import Pair, Pairs
from learners.policy_gradient import PolicyGradientLearner
from learners.rollouts import Rollout, Rollouts
from learners.sft import SFTLearner
from runtime.core.types import Episode, Task
from runtime.policy.base import GenerationRequest, GenerationResult
from runtime.policy.local import LocalPolicy
from runtime.policy.prompts import PromptEncoder
from runtime.policy.scripted import ScriptedPolicy
from runtime.rewards.base import VerifierEnv
from runtime.rewards.mc_value import MonteCarloValue
from runtime.rewards.outcome import ExactMatch
from runtime.search.context import Context, Sampling, Verifiers
from runtime.tiny.policy_format import WEAK_POLICY
from runtime.tools import CalculatorEnvironment, ChatTemplateFormat, task_prompt

pytestmark = pytest.mark.anyio

TASK = Task(id="t", prompt="What is 6*7?", answer="42")
QWEN_STYLE = (Path(__file__).parent / "data" / "qwen_style_tools.jinja").read_text(encoding="utf-8")
SHORT_TOOLS = (
    "{% if tools %}{{ '<|im_start|>system\\ntools:' }}{% for t in tools %}{{ ' ' + t['function']['name'] }}"
    "{% endfor %}{{ '<|im_end|>\\n' }}{% endif %}{% for message in messages %}{{ '<|im_start|>' + message['role'] "
    "+ '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""bundled-weak's ChatML, with the tools' names in a system turn (what fits its context)."""


def tokenizer_with(template: str | None) -> Any:
    tokenizer = AutoTokenizer.from_pretrained(WEAK_POLICY)
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer


def tiny_model(tokenizer: Any) -> Qwen2ForCausalLM:
    """A one-layer model over the tokenizer: the learners here only encode."""
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return Qwen2ForCausalLM(config)


async def converted(episode: Episode, verifiers: Verifiers) -> tuple[Example, list[Rollout], Pair]:
    """The right leaf's example, the leaves' rollouts and the solution pair of ``episode``."""
    (example,) = await VerifiedPaths(keep="all_correct").examples(episode, verifiers)
    rollouts = await Rollouts().examples(episode, verifiers)
    (pair,) = await Pairs(levels=["solutions"]).examples(episode, verifiers)
    assert len(rollouts) == 2
    return example, rollouts, pair


def trained_ids(tokenizer: Any, example: Example, rollouts: list[Rollout], pair: Pair) -> list[list[int]]:
    """The sequences each learner trains on: SFT's example, GRPO's rollouts, DPO's two sides."""
    model = tiny_model(tokenizer)
    sft = SFTLearner(model, tokenizer, max_length=4096)
    pg = PolicyGradientLearner(model, tokenizer, max_length=4096)
    dpo = DPOLearner(model, tokenizer, max_length=4096)
    out = [sft.encode(example)[0]]
    for rollout in rollouts:
        encoded = pg.encode(rollout)
        assert encoded.mismatch is None
        out.append(encoded.ids)
    chosen, rejected, problem = dpo._sequences(pair)  # the rows DPO's loss is computed on
    assert problem is None
    return [*out, chosen[0], rejected[0]]


# -- the engine's own record -------------------------------------------------------------


@pytest.fixture(scope="module")
def short() -> Any:
    return tokenizer_with(SHORT_TOOLS)


@pytest.fixture
async def policy(short: Any) -> AsyncIterator[LocalPolicy]:
    policy: LocalPolicy = recording_weak_policy(short, max_batch=2)
    async with policy:
        yield policy


async def test_the_learners_train_on_the_ids_the_engine_was_fed_with_the_tools(policy: LocalPolicy, short: Any) -> None:
    fmt = ChatTemplateFormat.of(short)
    assert fmt.syntax().renders_tools  # the schemas go to the template, not into the messages
    env = CalculatorEnvironment(format=fmt)
    verifiers = Verifiers(outcome=ExactMatch(), environment=env)
    sampling = Sampling(temperature=0.0, max_steps=8, step_max_tokens=12)
    ctx = Context(Episode(run_id="r", task=TASK), policy, verifiers, sampling)
    (step,) = await ctx.expand(ctx.root)  # sampled by the engine: ids kept
    call = ctx.fork(step, fmt.call_text("calc", {"expression": "6*7"}))
    (after,) = await ctx.expand(call)  # runs the call, then the engine samples after its answer
    assert step.token_ids and after.token_ids and ctx.node(after.parent or 0).kind == "observation"
    ctx.fork(after, "Answer: 42")
    ctx.fork(after, "Answer: 41")

    sent: list[list[int]] = policy.sent  # type: ignore[attr-defined]
    prompt, fed = sent[0], sent[1]  # the first call's prompt; the call after the observation
    offered = short.apply_chat_template(TASK.as_messages(), tokenize=False, add_generation_prompt=True, tools=[
        env.specs()["calc"].schema])  # fmt: skip
    assert prompt == short(offered, add_special_tokens=False)["input_ids"] and fed[: len(prompt)] == prompt

    example, rollouts, pair = await converted(ctx.episode, verifiers)
    for ids in trained_ids(short, example, rollouts, pair):
        assert ids[: len(fed)] == fed  # the engine's sequence, continued by the path's own tokens
    assert example.tools == rollouts[0].tools == pair.tools == [env.specs()["calc"].schema]


# -- both ways of offering the tools, and none ------------------------------------------------


def episode_formats() -> list[str]:
    return ["qwen", "chatml", "compact"]


async def scripted_episode(env: CalculatorEnvironment, call: str) -> tuple[Episode, Verifiers, list[GenerationRequest]]:
    """A call, its answer, then a right and a wrong final answer after the observation."""
    seen: list[GenerationRequest] = []

    def script(request: GenerationRequest, i: int) -> str:
        seen.append(request)
        return call if not request.assistant_prefix else "Answer: 42"

    verifiers = Verifiers(outcome=ExactMatch(), environment=env)
    ctx = Context(Episode(run_id="r", task=TASK), ScriptedPolicy(script), verifiers, Sampling(max_steps=8))
    (node,) = await ctx.expand(ctx.root)
    (right,) = await ctx.expand(node)
    assert [n.kind for n in ctx.path(right)] == ["call", "observation", "step"]
    ctx.fork(ctx.node(right.parent or 0), "Answer: 41")
    return ctx.episode, verifiers, seen


@pytest.mark.parametrize("template", episode_formats())
async def test_examples_rollouts_and_pairs_are_prompted_as_the_episodes_calls_were(template: str) -> None:
    tokenizer = tokenizer_with({"qwen": QWEN_STYLE, "chatml": None, "compact": None}[template])
    fmt: Any = ChatTemplateFormat.of(tokenizer) if template != "compact" else None
    env = CalculatorEnvironment(format=fmt) if fmt is not None else CalculatorEnvironment()
    call = fmt.call_text("calc", {"expression": "6*7"}) if fmt is not None else "call: calc(6*7)"
    episode, verifiers, seen = await scripted_episode(env, call)
    messages, tools = seen[0].messages, seen[0].tools
    assert (messages, tools) == task_prompt(TASK, env) == (seen[1].messages, seen[1].tools)
    assert (tools is not None) == (template == "qwen")
    assert (messages == TASK.as_messages()) == (template != "chatml")  # chatml: the tools in a system message

    example, rollouts, pair = await converted(episode, verifiers)
    (distilled, _) = await OnPolicySamples().examples(episode, verifiers)
    items: list[Example | Rollout | Pair] = [example, *rollouts, pair, distilled]
    assert all(item.messages == messages for item in items)
    fed = PromptEncoder(tokenizer, "local")(seen[1])  # what an ids engine is fed after the observation
    for ids in trained_ids(tokenizer, example, rollouts, pair):
        assert ids[: len(fed)] == fed
    assert all(item.tools == tools for item in items)


@pytest.mark.parametrize("template", ["qwen", "chatml"])
async def test_monte_carlo_rollouts_are_sent_the_episodes_prompt(template: str) -> None:
    tokenizer = tokenizer_with(QWEN_STYLE if template == "qwen" else None)
    env = CalculatorEnvironment(format=ChatTemplateFormat.of(tokenizer))
    sent: list[GenerationRequest] = []

    class Recording(ScriptedPolicy):
        async def generate(self, request: GenerationRequest) -> GenerationResult:
            sent.append(request)
            return await super().generate(request)

    value = MonteCarloValue(rollouts=2).build(VerifierEnv(policy=Recording(["Answer: 42"]), environment=env))
    score = await value.score_step(TASK, [], "6*7=42, leaving 42")
    assert score.value == 1.0
    assert [(r.messages, r.tools) for r in sent] == [task_prompt(TASK, env)]
    assert sent[0].messages != TASK.as_messages() or sent[0].tools is not None  # the tools are in the prompt
