"""Reward models learned from the run's own episodes: a PRM from the tree's step labels,
a Bradley-Terry outcome model from solution pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_dpo import verify_backtrack_tree
from test_policy_gradient import tiny_model
from transformers import AutoTokenizer

from learners.pairs import Pair
from learners.reward_models import OutcomeRMLearner, PRMLearner, StepLabels
from runtime.rewards.outcome import ExactMatch
from runtime.rewards.prm import ProcessRewardModel
from runtime.search.context import Verifiers
from runtime.tiny.policy_format import BUNDLED_POLICY
from runtime.tiny.verifier import TinyStepVerifier

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(BUNDLED_POLICY)


async def test_a_prm_learns_the_trees_step_labels_and_serves_as_a_verifier(tokenizer: Any, tmp_path: Path) -> None:
    verifiers = Verifiers(outcome=ExactMatch(), process=TinyStepVerifier())
    examples = await StepLabels("process").examples(verify_backtrack_tree(), verifiers)
    # every finished path, its steps labelled by the rule verifier (the rejected sibling included)
    assert sorted(tuple(e.labels) for e in examples) == [(0.0, 0.0, 0.0), (1.0, 0.0), (1.0, 1.0, 1.0)]
    learner = PRMLearner(tiny_model(tokenizer), tokenizer, lr=3e-3)
    losses = [learner.step(examples).loss for _ in range(40)]
    assert losses[-1] < losses[0]
    assert learner.step(examples).metrics["label_accuracy"] == 1.0
    learner.export(tmp_path / "prm")
    prm = ProcessRewardModel(tmp_path / "prm")
    task = verify_backtrack_tree().task
    good = await prm.score_step(task, ["19-22=-3, leaving -3+29"], "-3+29=26")
    bad = await prm.score_step(task, ["19-22=-3, leaving -3+29"], "-3+29=25")
    assert prm.value_head and good.value > 0.5 > bad.value and good.value - bad.value > 0.2


def test_a_bradley_terry_outcome_model_ranks_the_verified_solution_higher(tokenizer: Any) -> None:
    learner = OutcomeRMLearner(tiny_model(tokenizer), tokenizer, lr=3e-3)
    messages = [{"role": "user", "content": "Evaluate: 19-22+29"}]
    right = "19-22=-3, leaving -3+29\n-3+29=26\nAnswer: 26"
    wrong = ["19-22=-5, leaving -5+29\n-5+29=24\nAnswer: 24", "19-22=-3, leaving -3+29\n-3+29=25\nAnswer: 25"]
    pairs = [Pair(messages, "", right, w, ("r", "t", i), "solutions") for i, w in enumerate(wrong)]
    losses = [learner.step(pairs).loss for _ in range(10)]
    assert losses[-1] < losses[0]
    assert learner.step(pairs).metrics["pair_accuracy"] == 1.0


def test_reward_model_configs_validate() -> None:
    from runtime.app.config import load_config

    for kind in ("prm", "orm"):
        config = load_config(None, ["policy.kind=local", f"learner.kind={kind}"])
        assert config.learner is not None and config.learner.kind == kind
        assert not config.learner.trains_policy and config.learner.eval is None
