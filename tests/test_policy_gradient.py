"""Policy gradient on the tree: group advantages, process advantages per step, the
PPO-clip loss against the engine's behaviour log-probs, and GRPO on the online loop."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from learners.policy_gradient import PolicyGradientLearner, token_logprobs
from learners.rollouts import Rollout, Rollouts, group_advantages
from runtime.core.types import Episode, Node, Task
from runtime.policy.local import LocalPolicy
from runtime.rewards.outcome import ExactMatch
from runtime.search.context import Context, Sampling, Verifiers
from runtime.tiny.policy_format import BUNDLED_POLICY
from runtime.tiny.tasks import tiny_tasks
from runtime.tiny.verifier import TinyStepVerifier

pytestmark = pytest.mark.anyio

PROMPT = [{"role": "user", "content": "Evaluate: 2+3"}]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(BUNDLED_POLICY)


def tiny_model(tokenizer: Any, seed: int = 0, tied: bool = True) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=tied,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return Qwen2ForCausalLM(config)


def rollout(text: str, advantage: float, **kw: Any) -> Rollout:
    return Rollout(messages=PROMPT, prefix="", text=text, step_advantages=[advantage], key=("r", "t", 0), **kw)


def sequence_logprob(learner: PolicyGradientLearner, r: Rollout) -> float:
    enc = learner.encode(r)
    with torch.no_grad():
        logits = learner.model(input_ids=torch.tensor([enc.ids])).logits[0, :-1].float()
        lp = token_logprobs(logits, torch.tensor(enc.ids[1:]), 1.0, 1.0)
    return float(lp[enc.prompt - 1 :].sum())


# -- advantages --------------------------------------------------------------------------


def test_group_advantage_estimators() -> None:
    grpo = group_advantages([1, 0, 0, 0], "grpo")
    assert grpo[0] > 0 and all(a < 0 for a in grpo[1:]) and abs(sum(grpo)) < 1e-9
    assert group_advantages([1, 0, 0, 0], "dr_grpo") == [0.75, -0.25, -0.25, -0.25]
    assert group_advantages([1, 0, 0, 0], "rloo") == [1.0, -1 / 3, -1 / 3, -1 / 3]
    assert group_advantages([1, 1, 1], "grpo") == [0.0, 0.0, 0.0]
    assert group_advantages([1], "grpo") == [0.0]


def test_one_grpo_step_raises_the_rewarded_completion_and_lowers_the_others(tokenizer: Any) -> None:
    """Four answers to one prompt, rewards [1, 0, 0, 0]. Only the output layer trains (so a
    change to one answer's logit cannot leak into another's through shared weights, which
    is generalisation, not the loss): the rewarded answer's log-prob rises, the rest fall."""
    model = tiny_model(tokenizer, tied=False)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("lm_head"))
    learner = PolicyGradientLearner(model, tokenizer, lr=1e-2)
    texts = ["Answer: 5", "Answer: 6", "Answer: 4", "Answer: 7"]
    advantages = group_advantages([1, 0, 0, 0], "grpo")
    rollouts = [rollout(t, a) for t, a in zip(texts, advantages, strict=True)]
    before = [sequence_logprob(learner, r) for r in rollouts]
    result = learner.step(rollouts)
    after = [sequence_logprob(learner, r) for r in rollouts]
    assert after[0] > before[0]
    assert all(a < b for a, b in zip(after[1:], before[1:], strict=True))
    assert result.metrics["mean_ratio"] == pytest.approx(1.0, abs=1e-6)  # one step: r = 1 at the gradient


def test_equal_rewards_change_nothing(tokenizer: Any) -> None:
    learner = PolicyGradientLearner(tiny_model(tokenizer), tokenizer, lr=5e-3)
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    learner.step([rollout("2+3=5\nAnswer: 5", 0.0), rollout("2+3=6\nAnswer: 6", 0.0)])
    assert all(torch.equal(before[k], v) for k, v in learner.model.state_dict().items())


async def test_a_group_of_equal_rewards_gives_no_rollout_and_is_counted() -> None:
    ep = scripted_tree([["2+3=5", "Answer: 5"], ["2+3=5", "Answer: 5"]], answer="5", expression="2+3")
    source = Rollouts()
    assert await source.examples(ep, Verifiers(outcome=ExactMatch())) == []
    assert source.skipped_groups == 1 and source.groups == 1


# -- the clip and the behaviour correction -----------------------------------------------


def test_the_clip_stops_the_gradient_of_a_token_that_moved_too_far(tokenizer: Any) -> None:
    learner = PolicyGradientLearner(tiny_model(tokenizer), tokenizer, clip_high=0.2)
    enc = learner.encode(rollout("2+3=5", 1.0))
    n = len(enc.advantages)
    with torch.no_grad():
        logits = learner.model(input_ids=torch.tensor([enc.ids])).logits[0, :-1].float()
        now = token_logprobs(logits, torch.tensor(enc.ids[1:]), 1.0, 1.0)[enc.prompt - 1 :].tolist()

    def grad_norm(prox: list[float]) -> float:
        learner.optimizer.zero_grad(set_to_none=True)
        learner._loss_and_backward([enc], [prox])
        return sum(float(p.grad.abs().sum()) for p in learner.model.parameters() if p.grad is not None)

    assert grad_norm(now) > 0  # ratio 1: inside the clip
    assert grad_norm([lp - math.log(1.5) for lp in now]) == 0.0  # ratio 1.5 > 1.2 with A > 0: clipped
    assert learner._last["clipped_tokens"] == n
    assert grad_norm([lp + math.log(1.5) for lp in now]) > 0  # ratio 0.67 with A > 0: not clipped (min)


def test_an_updates_clipped_tokens_count_every_mini_batch(tokenizer: Any) -> None:
    """With mini_batches the update reports the clipped tokens of all its optimizer steps
    (the loop sums them per run and the trackers divide them by the update's tokens)."""
    clip = {"clip_low": 0.02, "clip_high": 0.02}
    learner = PolicyGradientLearner(tiny_model(tokenizer), tokenizer, lr=1e-1, mini_batches=3, **clip)
    per_part: list[float] = []
    original = learner._loss_and_backward

    def recording(batch: Any, prox: Any) -> tuple[float, int]:
        out = original(batch, prox)
        per_part.append(learner._last["clipped_tokens"])
        return out

    learner._loss_and_backward = recording  # type: ignore[method-assign]
    pairs = ((5, 1.0), (6, -1.0), (4, -1.0), (7, -1.0), (8, -1.0), (9, -1.0))
    result = learner.step([rollout(f"2+3={v}\nAnswer: {v}", a) for v, a in pairs])
    # the first step's ratio is 1; the second's and third's moved and were clipped
    assert len(per_part) == 3 and per_part[0] == 0 and per_part[1] > 0 and per_part[2] > 0
    assert result.metrics["clipped_tokens"] == sum(per_part)


def test_a_stale_samples_weight_is_truncated_and_counted(tokenizer: Any) -> None:
    learner = PolicyGradientLearner(tiny_model(tokenizer), tokenizer, is_cap=2.0)
    ids = tokenizer("2+3=5", add_special_tokens=False)["input_ids"]
    fresh = rollout("2+3=5", 1.0, token_ids=ids)
    enc = learner.encode(fresh)
    with torch.no_grad():
        logits = learner.model(input_ids=torch.tensor([enc.ids])).logits[0, :-1].float()
        now = token_logprobs(logits, torch.tensor(enc.ids[1:]), 1.0, 1.0)[enc.prompt - 1 :].tolist()
    on_policy = rollout("2+3=5", 1.0, token_ids=ids, behaviour=now)
    result = learner.step([on_policy])
    assert result.metrics["behaviour_ratio_max_dev"] < 1e-4 and result.metrics["truncated_tokens"] == 0
    stale = rollout("2+3=5", 1.0, token_ids=ids, behaviour=[lp - 3.0 for lp in now])  # w = e^3 > 2
    result = learner.step([stale])
    assert result.metrics["truncated_tokens"] == len(ids)
    assert learner.metrics["truncated_tokens"] == len(ids)


async def test_fresh_engine_samples_have_ratio_one_and_match_a_forward_pass(tokenizer: Any) -> None:
    """The engine's sample log-probs (temperature and top-p applied) are what the learner
    computes for the same weights: on fresh samples w = pi_prox / pi_behaviour = 1."""
    model = AutoModelForCausalLM.from_pretrained(BUNDLED_POLICY, dtype=torch.float32)
    task = next(tiny_tasks(1, [3], seed=11))
    sampling = Sampling(temperature=0.9, top_p=0.8, logprobs=True, max_tokens=96)
    verifiers = Verifiers(outcome=ExactMatch())
    async with LocalPolicy.from_path("bundled", threads=1) as policy:
        ctx = Context(Episode(run_id="r", task=task), policy, verifiers, sampling)
        leaves = await ctx.complete(ctx.root, 4)
        for leaf in leaves:
            await ctx.judge(leaf)
    first = ctx.path(leaves[0])[0]
    assert first.sample_logprobs is not None and len(first.sample_logprobs) == len(first.token_ids or [])
    learner = PolicyGradientLearner(model, tokenizer, temperature=0.9, top_p=0.8, lr=1e-6)
    rollouts = [
        Rollout(task.as_messages(), "", ctx.text(leaf).rstrip("\n"), [1.0], ("r", task.id, 0),
                token_ids=ctx.path(leaf)[0].token_ids, behaviour=ctx.path(leaf)[0].sample_logprobs)
        for leaf in leaves
    ]  # fmt: skip
    result = learner.step(rollouts)
    assert result.metrics["behaviour_ratio_max_dev"] < 1e-4


# -- process advantages on a scripted tree -----------------------------------------------


def scripted_tree(solutions: list[list[str]], answer: str, expression: str) -> Episode:
    task = Task(id="t", prompt=f"Evaluate: {expression}", answer=answer, metadata={"expression": expression})
    ep = Episode(run_id="r", task=task)
    ep.nodes.append(Node(id=0, parent=None, depth=0))
    for lines in solutions:
        parent = ep.nodes[0]
        for k, line in enumerate(lines):
            node = Node(id=len(ep.nodes), parent=parent.id, depth=parent.depth + 1, text=line)
            node.meta = {"covers": len(lines)} if k == 0 else {}
            parent.children.append(node.id)
            ep.nodes.append(node)
            parent = node
        parent.terminal, parent.finish_reason = True, "stop"
        parent.answer = lines[-1].removeprefix("Answer: ")
    return ep


@pytest.mark.parametrize("mode", ["process", "outcome_process", "first_error"])
async def test_a_right_answer_through_a_wrong_step_gets_a_negative_advantage_on_that_step(
    mode: str, tokenizer: Any
) -> None:
    ep = scripted_tree(
        [
            ["19-22=-3, leaving -3+29", "-3+29=26", "Answer: 26"],  # right
            ["19-22=-5, leaving -5+29", "-5+29=26", "Answer: 26"],  # right answer, two slips that cancel out
            ["19-22=-3, leaving -3+29", "-3+29=25", "Answer: 25"],  # wrong
        ],
        answer="26",
        expression="19-22+29",
    )
    source = Rollouts(advantage=mode)
    rollouts = await source.examples(ep, Verifiers(outcome=ExactMatch(), process=TinyStepVerifier()))
    assert len(rollouts) == 3
    slipped = rollouts[1]
    assert slipped.meta["reward"] == 1.0 and slipped.step_advantages[0] < 0
    assert rollouts[0].step_advantages[0] > 0
    # ... and every token of that step carries it.
    enc = PolicyGradientLearner(tiny_model(tokenizer), tokenizer).encode(slipped)
    first_line = tokenizer(slipped.text.split("\n")[0] + "\n", add_special_tokens=False)["input_ids"]
    assert all(a == slipped.step_advantages[0] for a in enc.advantages[: len(first_line)])
    assert enc.advantages[len(first_line)] == slipped.step_advantages[1]


async def test_first_error_credit_blames_a_wrong_solution_at_its_first_rejected_step_only() -> None:
    ep = scripted_tree(
        [
            ["19-22=-3, leaving -3+29", "-3+29=26", "Answer: 26"],  # right
            ["19-22=-3, leaving -3+29", "-3+29=25", "Answer: 25"],  # a right step, then the error
            ["19-22=-3, leaving -3+29", "-3+29=26", "Answer: 26"],  # right
        ],
        answer="26",
        expression="19-22+29",
    )
    rollouts = await Rollouts(advantage="first_error").examples(
        ep, Verifiers(outcome=ExactMatch(), process=TinyStepVerifier())
    )
    outcome = await Rollouts(advantage="outcome").examples(ep, Verifiers(outcome=ExactMatch()))
    wrong, wrong_outcome = rollouts[1], outcome[1]
    assert wrong.meta["reward"] == 0.0
    # The correct first step is not pushed down with the error; the error carries the
    # whole outcome advantage; the answer line after it carries none.
    assert wrong_outcome.step_advantages[0] < 0 and wrong.step_advantages[0] == 0.0
    assert wrong.step_advantages[1] == pytest.approx(wrong_outcome.step_advantages[1]) and wrong.step_advantages[1] < 0
    assert wrong.step_advantages[2] == 0.0
    # Right solutions keep their outcome credit on every (accepted) step.
    assert rollouts[0].step_advantages == pytest.approx(outcome[0].step_advantages)


async def test_sibling_steps_form_a_group_scored_by_the_process_verifier() -> None:
    task = Task(id="t", prompt="Evaluate: 2+3*4", answer="14", metadata={"expression": "2+3*4"})
    ep = Episode(run_id="r", task=task)
    ep.nodes.append(Node(id=0, parent=None, depth=0))
    for text in ["3*4=12, leaving 2+12", "3*4=13, leaving 2+13", "2+3=5, leaving 5*4"]:
        node = Node(id=len(ep.nodes), parent=0, depth=1, text=text, token_ids=[1, 2, 3], sample_logprobs=[-1.0] * 3)
        ep.nodes[0].children.append(node.id)
        ep.nodes.append(node)
    rollouts = await Rollouts(groups="siblings").examples(ep, Verifiers(process=TinyStepVerifier()))
    assert [r.meta["reward"] for r in rollouts] == [1.0, 0.0, 0.0]
    assert rollouts[0].step_advantages[0] > 0 > rollouts[1].step_advantages[0]
    assert all(r.prefix == "" and r.token_ids == [1, 2, 3] and r.behaviour == [-1.0] * 3 for r in rollouts)


async def test_grpo_config_loads_and_builds(tmp_path: Path) -> None:
    """configs/grpo.yaml as the CLI builds it: the loop trains a policy-gradient learner
    with the file's settings on the rollouts of the tree's groups, publishing into the
    local engine that samples them, with a held-out evaluator."""
    from learners.evaluate import Evaluator
    from learners.loop import OnlineLoop
    from runtime.app.config import load_config
    from runtime.app.learning import build_loop

    config = load_config(Path(__file__).parents[1] / "configs" / "grpo.yaml", [f"store.path={tmp_path / 's.db'}"])
    assert config.learner is not None and config.learner.kind == "grpo"
    assert config.sampling.logprobs and config.sampling.temperature > 0
    loop = build_loop(config)
    try:
        assert isinstance(loop, OnlineLoop) and isinstance(loop.learner, PolicyGradientLearner)
        assert isinstance(loop.source, Rollouts) and isinstance(loop.evaluator, Evaluator)
        assert isinstance(loop.runtime.policy, LocalPolicy) and loop.publish_to is loop.runtime.policy
        s = loop.learner.settings
        assert (s.mini_batches, s.clip_high, s.lr, s.temperature) == (2, 0.28, 3e-5, 0.7)
        assert loop.settings.batch_examples == 128 and loop.checkpoint == tmp_path / "grpo" / "learner.pt"
    finally:
        await loop.aclose()
        if loop.runtime.store is not None:
            loop.runtime.store.close()


async def test_locate_errors_puts_a_wrong_solutions_credit_on_its_first_wrong_token(tokenizer: Any) -> None:
    """The rule verifier locates '-3+29=25' as wrong at the '5'; with locate_errors only
    that token carries the negative advantage, and one step pushes it down while the
    right prefix of the step ('-3+29=2') moves less than under whole-step credit."""
    ep = scripted_tree(
        [
            ["19-22=-3, leaving -3+29", "-3+29=26", "Answer: 26"],
            ["19-22=-3, leaving -3+29", "-3+29=25", "Answer: 25"],
            ["19-22=-3, leaving -3+29", "-3+29=26", "Answer: 26"],
        ],
        answer="26",
        expression="19-22+29",
    )
    verifiers = Verifiers(outcome=ExactMatch(), process=TinyStepVerifier())
    located = (await Rollouts(advantage="first_error", locate_errors=True).examples(ep, verifiers))[1]
    whole = (await Rollouts(advantage="first_error").examples(ep, verifiers))[1]
    assert located.error_at == (1, len("-3+29=2")) and whole.error_at is None
    learner = PolicyGradientLearner(tiny_model(tokenizer), tokenizer, lr=1e-2)
    enc = learner.encode(located)
    completion = enc.ids[enc.prompt :]
    nonzero = [i for i, a in enumerate(enc.advantages) if a != 0.0]
    assert len(nonzero) == 1 and enc.advantages[nonzero[0]] == pytest.approx(located.step_advantages[1])
    assert tokenizer.decode(completion[: nonzero[0]]).endswith("-3+29=2")
    assert tokenizer.decode([completion[nonzero[0]]]) == "5"
    whole_enc = learner.encode(whole)
    assert sum(a != 0.0 for a in whole_enc.advantages) > 5  # the whole step

    def token_lp(model: Any, position: int) -> float:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([enc.ids])).logits[0, :-1].float()
            return float(token_logprobs(logits, torch.tensor(enc.ids[1:]), 1.0, 1.0)[enc.prompt - 1 + position])

    wrong_at, prefix_at = nonzero[0], nonzero[0] - 2  # the '5', and the '=' before it
    before = token_lp(learner.model, wrong_at), token_lp(learner.model, prefix_at)
    learner.step([located])
    after = token_lp(learner.model, wrong_at), token_lp(learner.model, prefix_at)
    assert after[0] < before[0]  # the wrong digit is pushed down
    other = PolicyGradientLearner(tiny_model(tokenizer), tokenizer, lr=1e-2)
    other.step([whole])
    moved_whole = abs(token_lp(other.model, prefix_at) - before[1])
    assert abs(after[1] - before[1]) < moved_whole  # the right prefix moves less than under whole-step credit
