"""Learning on agent episodes (issue 26 item 5): a loss mask keeps the environment's
tokens out of every loss, SFT, GRPO, DPO and PPO each take a step on calculator
episodes, a sample whose ids are not what the engine was fed is dropped and counted,
and the sft export writes each observation as a ``tool`` message.

Episodes come from a scripted policy on the calculator environment (as in
tests/test_agentic.py): three sibling calls at the root (right, wrong, malformed), each
run once, and an answer after each observation. Where a test needs token ids, the
policy's nodes get the ids the bundled tokenizer gives their text, as a local engine
would have recorded them.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from learners.dpo import DPOLearner
from learners.examples import VerifiedPaths
from learners.pairs import Pairs
from learners.policy_gradient import PolicyGradientLearner
from learners.ppo import PPOLearner
from learners.rollouts import Rollouts
from learners.sft import SFTLearner
from learners.trainer import part_ids
from runtime.app.cli import FAMILIES
from runtime.app.dataset_export import dataset_rows
from runtime.core.types import Episode, Task
from runtime.policy.base import GenerationRequest
from runtime.policy.scripted import ScriptedPolicy
from runtime.rewards.base import VerifierEnv
from runtime.rewards.outcome import ExactMatch
from runtime.rewards.tool_call import ToolCallVerifier
from runtime.search.context import Context, Sampling, Verifiers
from runtime.tiny.policy_format import BUNDLED_POLICY
from runtime.tools import CalculatorEnvironment
from strategies.best_of_n import BestOfN
from strategies.chain_of_thought import ChainOfThought

pytestmark = pytest.mark.anyio

TASK = Task(id="t", prompt="What is 6*7?", answer="42")
CALLS = ["call: calc(6*7)", "call: calc(6+7)", "call: calc(6*7"]  # right, wrong, malformed


def script(request: GenerationRequest, i: int) -> str:
    """Three calls at the start; after an observation ``= v``, ``Answer: v``."""
    if not request.assistant_prefix:
        return CALLS[i % len(CALLS)]
    last = request.assistant_prefix.rstrip("\n").split("\n")[-1]
    value = last.removeprefix("= ")
    return f"Answer: {value if value.isdigit() else 0}"


def verifiers(env: CalculatorEnvironment) -> Verifiers:
    tool_call = ToolCallVerifier().build(VerifierEnv(environment=env))
    return Verifiers(outcome=ExactMatch(), process=tool_call, environment=env)


async def agent_episode(tokenizer: Any = None, sample: int = 0) -> tuple[Episode, Verifiers]:
    """Three calls from one state, each observed once and answered (see module doc)."""
    env = CalculatorEnvironment()
    v = verifiers(env)
    ctx = Context(Episode(run_id="r", task=TASK, sample=sample), ScriptedPolicy(script), v, Sampling(max_steps=8))
    calls = await ctx.expand(ctx.root, 3)
    for call in calls:
        await ctx.expand(call)
    ep = ctx.episode
    assert [n.kind for n in ep.nodes].count("observation") == 3
    if tokenizer is not None:
        for node in ep.nodes[1:]:
            if node.trained:
                stop = "\n" if node.kind == "call" else ""
                node.token_ids = tokenizer(node.text + stop, add_special_tokens=False)["input_ids"]
                node.sample_logprobs = [-0.5] * len(node.token_ids)
                node.stop_reason = stop or None
    return ep, v


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(BUNDLED_POLICY)


def tiny_model(tokenizer: Any, seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return Qwen2ForCausalLM(config)


def snapshot(learner: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.model.state_dict().items()}


def moved(before: dict[str, torch.Tensor], learner: Any) -> bool:
    return any(not torch.equal(before[k], v) for k, v in learner.model.state_dict().items())


def logits_of(learner: Any) -> list[torch.Tensor]:
    """Every forward pass's logits from now on, keeping their gradients."""
    seen: list[torch.Tensor] = []

    def hook(module: Any, args: Any, output: Any) -> None:
        if output.logits.requires_grad:
            output.logits.retain_grad()
            seen.append(output.logits)

    learner.model.register_forward_hook(hook)
    return seen


def completion_mask(tokenizer: Any, parts: list[Any], mask: list[int]) -> list[int]:
    """Per completion token, its piece's mask."""
    return [m for (ids, _), m in zip(part_ids(tokenizer, parts), mask, strict=True) for _ in ids]


# -- the loss mask -----------------------------------------------------------------------


async def test_rollouts_and_examples_carry_a_loss_mask_with_no_behaviour_on_observations(tokenizer: Any) -> None:
    ep, v = await agent_episode(tokenizer)
    rollouts = await Rollouts(groups="leaves", advantage="outcome").examples(ep, v)
    assert len(rollouts) == 3
    for r in rollouts:
        assert r.parts is not None and r.mask == [1, 0, 1] and r.texts is not None
        assert isinstance(r.parts[1], str) and r.texts[1].startswith("= ")  # the observation: text, fed only
        assert r.behaviour is not None and len(r.behaviour) == len(r.parts[0]) + len(r.parts[2])  # none on it
        assert r.step_advantages[1] == 0.0 and r.step_advantages[0] == r.step_advantages[2] != 0.0
    (example,) = await VerifiedPaths(keep="all_correct").examples(ep, v)
    assert example.mask == [1, 0, 1] and example.texts is not None and example.texts[1] == "= 42\n"
    learner = PolicyGradientLearner(tiny_model(tokenizer), tokenizer)
    encoded = learner.encode(rollouts[0])
    observation = tokenizer("= 42\n", add_special_tokens=False)["input_ids"]
    assert encoded.mask is not None and encoded.masked == len(observation)
    at = [i for i, m in enumerate(encoded.mask) if not m]
    assert all(math.isnan(encoded.behaviour[i]) for i in at)


async def test_the_gradient_at_observation_targets_is_zero(tokenizer: Any) -> None:
    ep, v = await agent_episode(tokenizer)
    (example,) = await VerifiedPaths(keep="all_correct").examples(ep, v)
    sft = SFTLearner(tiny_model(tokenizer), tokenizer, lr=1e-3)
    seen = logits_of(sft)
    result = sft.step([example])
    assert result.metrics["masked_tokens"] == len(tokenizer("= 42\n", add_special_tokens=False)["input_ids"])
    ids, _ = sft.encode(example)
    assert example.parts is not None and example.mask is not None
    mask = completion_mask(tokenizer, [p for p, _ in example.parts], example.mask) + [1]  # the end of turn
    prompt = len(ids) - len(mask)
    (logits,) = seen
    assert logits.grad is not None
    row_norms = logits.grad[0].abs().sum(-1)  # row t predicts token t + 1
    for j, m in enumerate(mask):
        norm = float(row_norms[prompt + j - 1])
        assert (norm > 0) == bool(m), (j, m, norm)

    rollouts = await Rollouts(groups="leaves").examples(ep, v)
    pg = PolicyGradientLearner(tiny_model(tokenizer), tokenizer, lr=1e-3)
    seen = logits_of(pg)
    rollout = rollouts[0]
    assert rollout.parts is not None and rollout.mask is not None
    result = pg.step([rollout])
    encoded = pg.encode(rollout)
    assert encoded.mask is not None and result.metrics["masked_tokens"] == encoded.masked > 0
    assert result.tokens == sum(encoded.mask)  # only the policy's tokens are counted, and normalised over
    (logits,) = seen
    assert logits.grad is not None
    row_norms = logits.grad[0].abs().sum(-1)
    for j, m in enumerate(encoded.mask):
        assert (float(row_norms[encoded.prompt + j - 1]) > 0) == bool(m), (j, m)


# -- one step of each learner on agent episodes ------------------------------------------


async def test_sft_grpo_dpo_and_ppo_each_take_a_step_on_agent_episodes(tokenizer: Any) -> None:
    ep, v = await agent_episode()  # text only, as a scripted policy gives it
    examples = await VerifiedPaths(keep="all_correct").examples(ep, v)
    learner: Any = SFTLearner(tiny_model(tokenizer), tokenizer, lr=1e-2)
    before = snapshot(learner)
    result = learner.step(examples)
    assert moved(before, learner) and result.metrics["masked_tokens"] > 0

    sampled, v = await agent_episode(tokenizer)  # sibling groups are of steps sampled as ids
    rollouts = await Rollouts(groups="both", advantage="outcome_process").examples(sampled, v)
    assert {r.meta["group"] for r in rollouts} == {"leaves", "siblings"}
    learner = PolicyGradientLearner(tiny_model(tokenizer), tokenizer, lr=1e-2)
    before = snapshot(learner)
    result = learner.step(rollouts)
    assert moved(before, learner) and result.metrics["masked_tokens"] > 0

    pairs = await Pairs().examples(ep, v)
    assert {p.level for p in pairs} == {"solutions", "steps"}
    assert all(p.chosen_parts is not None and 0 in p.chosen_parts.mask for p in pairs if p.level == "solutions")
    learner = DPOLearner(tiny_model(tokenizer), tokenizer, lr=1e-2)
    before = snapshot(learner)
    result = learner.step(pairs)
    assert moved(before, learner) and result.metrics["masked_tokens"] > 0

    rollouts = await Rollouts(critic=True).examples(ep, v)
    assert len(rollouts) == 3 and all(r.mask == [1, 0, 1] for r in rollouts)
    learner = PPOLearner(tiny_model(tokenizer), tokenizer, lr=1e-2)
    before = snapshot(learner)
    result = learner.step(rollouts)
    assert moved(before, learner) and result.metrics["masked_tokens"] > 0


async def test_sibling_turns_are_a_group_with_per_turn_process_advantages(tokenizer: Any) -> None:
    ep, v = await agent_episode(tokenizer)
    siblings = await Rollouts(groups="siblings").examples(ep, v)
    calls = [n for n in ep.nodes if n.kind == "call"]
    assert [r.text for r in siblings] == [c.text for c in calls]  # the three calls from one state
    scores = [c.scores["tool_call"] for c in calls]
    assert scores[0] == scores[1] > scores[2]  # the malformed call fails the tool_call verifier
    advantages = [r.step_advantages[0] for r in siblings]
    assert advantages[0] == advantages[1] > 0 > advantages[2]
    # leaves credited per turn: the process advantage sits on the call, none on the observation
    leaves = await Rollouts(groups="leaves", advantage="process").examples(ep, v)
    for r in leaves:
        assert r.step_advantages[1] == 0.0
    malformed = next(r for r in leaves if r.text.split("\n")[0] == CALLS[2])
    assert malformed.step_advantages[0] < 0
    pairs = await Pairs(levels=["steps"]).examples(ep, v)
    assert {(p.chosen, p.rejected) for p in pairs} == {(CALLS[0], CALLS[2]), (CALLS[1], CALLS[2])}
    assert all(p.prefix_pieces is None and p.chosen_parts is not None for p in pairs)  # siblings at the root


async def test_best_of_n_on_the_calculator_gives_a_group_of_whole_agent_episodes() -> None:
    env = CalculatorEnvironment()
    v = verifiers(env)
    ctx = Context(Episode(run_id="r", task=TASK), ScriptedPolicy(script), v, Sampling(max_steps=8))
    ep = await BestOfN(n=3).run(ctx)
    assert ctx.turns is not None and ctx.turns.executions == 2  # the malformed call never ran
    rollouts = await Rollouts(groups="leaves").examples(ep, v)
    assert sorted(r.text.split("\n")[0] for r in rollouts) == sorted(CALLS)
    for r in rollouts:  # each a whole trajectory: call, observation, answer
        assert r.mask == [1, 0, 1] and r.meta["group"] == "leaves"
        assert (r.meta["reward"] == 1.0) == (r.step_advantages[0] > 0)


# -- ids that are not what the engine was fed --------------------------------------------


async def test_a_sample_whose_ids_are_not_what_the_engine_was_fed_is_dropped_and_counted(tokenizer: Any) -> None:
    ep, v = await agent_episode(tokenizer)
    good = ep.nodes[1]
    assert good.text == CALLS[0]
    good.token_ids = tokenizer("call: calc(9*9)\n", add_special_tokens=False)["input_ids"]  # not this step's ids
    good.sample_logprobs = [-0.5] * len(good.token_ids)
    rollouts = await Rollouts(groups="leaves").examples(ep, v)
    learner = PolicyGradientLearner(tiny_model(tokenizer), tokenizer, lr=1e-2)
    before = snapshot(learner)
    result = learner.step(rollouts)
    assert result.metrics["mismatched_samples"] == 1 == learner.mismatched_samples
    assert result.metrics["mismatched_tokens"] > 0 and result.examples == 2 and moved(before, learner)

    clean, _ = await agent_episode(tokenizer, sample=1)
    examples = await VerifiedPaths(keep="all_correct").examples(ep, v)
    examples += await VerifiedPaths(keep="all_correct").examples(clean, v)
    sft = SFTLearner(tiny_model(tokenizer), tokenizer, lr=1e-2)
    result = sft.step(examples)
    assert result.metrics["mismatched_samples"] == 1 == sft.mismatched_samples and result.examples == 1

    pairs = await Pairs(levels=["solutions"]).examples(ep, v)
    dpo = DPOLearner(tiny_model(tokenizer), tokenizer, lr=1e-2)
    result = dpo.step(pairs + await Pairs(levels=["solutions"]).examples(clean, v))
    assert result.metrics["mismatched_samples"] == len(pairs) == dpo.mismatched_samples > 0

    # behaviour log-probs that are not one per sampled id: dropped too
    ep, v = await agent_episode(tokenizer)
    rollouts = await Rollouts(groups="leaves").examples(ep, v)
    assert rollouts[0].behaviour is not None
    rollouts[0].behaviour = rollouts[0].behaviour[:-1]
    ppo = PPOLearner(tiny_model(tokenizer), tokenizer, lr=1e-2)
    result = ppo.step(rollouts)
    assert result.metrics["mismatched_samples"] == 1 == ppo.mismatched_samples


# -- export ------------------------------------------------------------------------------


async def test_the_sft_export_writes_each_observation_as_a_tool_message() -> None:
    table = {"": "call: calc(6*7)", "= 42": "call: calc(42+0)"}

    def two_calls(request: GenerationRequest, i: int) -> str:
        lines = request.assistant_prefix.rstrip("\n").split("\n")
        return "Answer: 42" if len(lines) >= 4 else table[lines[-1]]

    env = CalculatorEnvironment()
    v = verifiers(env)
    ctx = Context(Episode(run_id="r", task=TASK), ScriptedPolicy(two_calls), v, Sampling(max_steps=8))
    ep = await ChainOfThought().run(ctx)
    assert [ep.nodes[i].kind for i in ep.chosen_path] == ["call", "observation", "call", "observation", "step"]
    rows = [row async for row in dataset_rows([ep], "sft", verifiers=v)]
    (row,) = rows
    turns = row["messages"][1:]
    assert turns == [
        {"role": "assistant", "content": "call: calc(6*7)"},
        {"role": "tool", "name": "calc", "content": "= 42"},
        {"role": "assistant", "content": "call: calc(42+0)"},
        {"role": "tool", "name": "calc", "content": "= 42"},
        {"role": "assistant", "content": "Answer: 42"},
    ]
    assert all("= 42" not in m["content"] for m in turns if m["role"] == "assistant")
    pa = pytest.importorskip("pyarrow")
    from runtime.app.dataset_export import _schema

    table_ = pa.Table.from_pylist(rows, schema=_schema("sft"))
    assert table_.to_pylist()[0]["messages"][2] == {"role": "tool", "content": "= 42", "name": "calc"}


async def test_the_preference_export_splits_each_side_at_its_observations() -> None:
    ep, v = await agent_episode()
    rows = [row async for row in dataset_rows([ep], "preference", verifiers=v)]
    solutions = [r for r in rows if r["level"] == "solutions"]
    assert solutions and {r["level"] for r in rows} == {"solutions", "steps"}
    for row in solutions:
        assert row["chosen"] == [
            {"role": "assistant", "content": CALLS[0]},
            {"role": "tool", "name": "calc", "content": "= 42"},
            {"role": "assistant", "content": "Answer: 42"},
        ]
        assert [m["role"] for m in row["rejected"]] == ["assistant", "tool", "assistant"]
    steps = [r for r in rows if r["level"] == "steps"]
    assert all(r["chosen"] == [{"role": "assistant", "content": r["chosen"][0]["content"]}] for r in steps)
    pa = pytest.importorskip("pyarrow")
    from runtime.app.dataset_export import _schema

    assert len(pa.Table.from_pylist(rows, schema=_schema("preference"))) == len(rows)


def test_components_lists_the_agentic_families() -> None:
    assert {"environments", "tools", "tool_formats"} <= set(FAMILIES)
