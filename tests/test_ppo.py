"""PPO with a critic: GAE over tokens, the value head learns the returns, rewards on tokens."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from test_policy_gradient import rollout, scripted_tree, tiny_model
from transformers import AutoTokenizer

from learners.ppo import PPOLearner, gae
from learners.rollouts import Rollouts
from runtime.rewards.outcome import ExactMatch
from runtime.search.context import Verifiers
from runtime.tiny.policy_format import BUNDLED_POLICY
from runtime.tiny.verifier import TinyStepVerifier

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(BUNDLED_POLICY)


def test_gae_matches_a_hand_computed_example() -> None:
    # rewards [0, 0, 1], values [0.5, 0.6, 0.7], gamma 0.9, lambda 0.8:
    # deltas: 0 + 0.9*0.6 - 0.5 = 0.04; 0 + 0.9*0.7 - 0.6 = 0.03; 1 + 0 - 0.7 = 0.3
    # A2 = 0.3; A1 = 0.03 + 0.72*0.3 = 0.246; A0 = 0.04 + 0.72*0.246 = 0.21712
    advantages, returns = gae([0, 0, 1], [0.5, 0.6, 0.7], gamma=0.9, lam=0.8)
    assert advantages == pytest.approx([0.21712, 0.246, 0.3])
    assert returns == pytest.approx([0.71712, 0.846, 1.0])
    # lambda 1, gamma 1: the advantage is the return to go minus the value
    assert gae([0, 1], [0.2, 0.4], 1.0, 1.0)[0] == pytest.approx([0.8, 0.6])


def test_the_value_heads_loss_falls(tokenizer: Any) -> None:
    learner = PPOLearner(tiny_model(tokenizer), tokenizer, lr=3e-3, vf_coef=1.0)
    rollouts = [
        rollout("2+3=5\nAnswer: 5", 0.0, ends=True, meta={"reward": 1.0}),
        rollout("2+3=6\nAnswer: 6", 0.0, ends=True, meta={"reward": 0.0}),
    ]
    losses = [learner.step(rollouts).metrics["value_loss"] for _ in range(8)]
    assert losses[-1] < losses[0]


def test_step_rewards_sit_on_the_token_that_ends_each_step(tokenizer: Any) -> None:
    learner = PPOLearner(tiny_model(tokenizer), tokenizer, step_reward=1.0, step_reward_center=0.5)
    r = rollout("19-22=-5, leaving -5+29\n-5+29=26\nAnswer: 26", 0.0, meta={"reward": 1.0})
    r.meta["step_scores"] = [0.0, 0.0, 1.0]
    r.step_advantages = [0.0, 0.0, 0.0]
    enc = learner.encode(r)
    rewards = learner.token_rewards(r, enc)
    first = len(tokenizer("19-22=-5, leaving -5+29\n", add_special_tokens=False)["input_ids"])
    assert rewards[first - 1] == -0.5  # the wrong first step ends with a negative reward
    assert rewards[-1] == 1.0 + 0.5  # the answer step and the outcome, on the last token
    assert sum(1 for x in rewards if x != 0) == 3


async def test_the_critic_converter_keeps_every_solution_with_its_scores() -> None:
    ep = scripted_tree([["2+3=5", "Answer: 5"], ["2+3=5", "Answer: 5"]], answer="5", expression="2+3")
    rollouts = await Rollouts(critic=True).examples(ep, Verifiers(outcome=ExactMatch(), process=TinyStepVerifier()))
    assert len(rollouts) == 2  # equal rewards: no group baseline needed, nothing skipped
    assert all(r.meta["reward"] == 1.0 and r.meta["step_scores"] == [1.0, 1.0] for r in rollouts)


def test_mini_batches_take_that_many_steps_and_the_clip_acts_after_the_first(tokenizer: Any) -> None:
    """configs/ppo.yaml's clip only acts when an update takes several optimizer steps
    against one proximal policy: the first step moves the weights, so the later
    mini-batches' ratios are off 1, and with a large rate some tokens are clipped."""
    rollouts = [rollout(f"2+3={v}\nAnswer: {v}", 0.0, ends=True, meta={"reward": float(v == 5)}) for v in (5, 6, 4, 7)]
    single = PPOLearner(tiny_model(tokenizer), tokenizer, lr=5e-2, mini_batches=1)
    one = single.step(rollouts)
    assert single.steps == 1 and one.metrics["mean_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert one.metrics["clipped_tokens"] == 0
    learner = PPOLearner(tiny_model(tokenizer), tokenizer, lr=5e-2, mini_batches=2, clip_low=0.1, clip_high=0.1)
    first_ratio: list[float] = []
    original = learner._loss_and_backward

    def recording(batch: Any, prox: Any) -> tuple[float, int]:
        out = original(batch, prox)
        first_ratio.append(learner._last["mean_ratio"])
        return out

    learner._loss_and_backward = recording  # type: ignore[method-assign]
    result = learner.step(rollouts)
    assert learner.steps == 2 and result.metrics["mini_batches"] == 2  # one optimizer step per mini-batch
    assert first_ratio[0] == pytest.approx(1.0, abs=1e-5)  # nothing moved yet
    assert abs(first_ratio[1] - 1.0) > 1e-3  # the second mini-batch sees the first one's step
    assert result.metrics["clipped_tokens"] > 0
    learner.step(rollouts)
    assert learner.steps == 4


async def test_ppo_config_builds_its_learner_and_takes_a_step(tmp_path: Path) -> None:
    """configs/ppo.yaml as the CLI builds it: a PPO learner with a critic over the
    bundled-weak policy, its settings from the file, and one update on the rollouts its
    converter takes from a tree changes the policy and the value head."""
    import torch

    from runtime.app.build import build_verifiers
    from runtime.app.config import load_config
    from runtime.app.learning import build_learner

    config = load_config(Path(__file__).parents[1] / "configs" / "ppo.yaml", [f"store.path={tmp_path / 's.db'}"])
    assert config.learner is not None and config.learner.kind == "ppo"
    learner = build_learner(config)
    assert isinstance(learner, PPOLearner)
    s = learner.settings
    assert (s.step_reward, s.clip_high, s.lr, s.temperature) == (0.5, 0.28, 3e-5, config.sampling.temperature)
    assert s.mini_batches == 2  # the config's clip acts only from a batch's second optimizer step
    source = config.learner.build_converter(config.sampling.step_delimiter)
    tree = scripted_tree([["2+3=5", "Answer: 5"], ["2+3=6", "Answer: 6"]], answer="5", expression="2+3")
    rollouts = await source.examples(tree, build_verifiers(config))
    assert len(rollouts) == 2 and sorted(r.meta["reward"] for r in rollouts) == [0.0, 1.0]
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    result = await learner.update(rollouts)
    assert learner.steps == result.step == 2 and math.isfinite(result.loss) and result.metrics["value_loss"] > 0
    assert any(not torch.equal(before[k], v) for k, v in learner.model.state_dict().items())
    assert learner.value_head.bias.item() != 0.0


def test_the_value_head_survives_a_checkpoint(tokenizer: Any, tmp_path: Path) -> None:
    learner = PPOLearner(tiny_model(tokenizer), tokenizer, lr=3e-3)
    learner.step([rollout("2+3=5\nAnswer: 5", 0.0, ends=True, meta={"reward": 1.0})])
    learner.save(tmp_path / "ppo.pt")
    fresh = PPOLearner(tiny_model(tokenizer, seed=3), tokenizer)
    fresh.load(tmp_path / "ppo.pt")
    assert fresh.value_head.weight.equal(learner.value_head.weight) and fresh.steps == 1
