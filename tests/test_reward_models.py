"""Reward models learned from the run's own episodes: a PRM from the tree's step labels,
a Bradley-Terry outcome model from solution pairs."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from test_dpo import verify_backtrack_tree
from test_policy_gradient import tiny_model
from transformers import AutoTokenizer

from learners.pairs import Pair
from learners.reward_models import OutcomeRMLearner, PRMLearner, StepLabels
from runtime.rewards.outcome import ExactMatch
from runtime.rewards.prm import ProcessRewardModel
from runtime.search.context import Verifiers
from runtime.tiny.domain import generate_problem, solution_steps
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


def solution_pairs(seed: int, count: int, exclude: Sequence[Pair] = ()) -> list[Pair]:
    """Two-step problems (none of ``exclude``'s): the whole solution against one cut off in
    its second step (a sample that ran out of tokens: no answer)."""
    rng = random.Random(seed)
    seen = {p.messages[0]["content"] for p in exclude}
    pairs: list[Pair] = []
    while len(pairs) < count:
        problem = generate_problem(rng, 2)
        if problem.question in seen:
            continue
        seen.add(problem.question)
        steps = solution_steps(problem)
        right = "\n".join([*steps, f"Answer: {problem.answer}"])
        cut = "\n".join([steps[0], steps[1].split("=")[0] + "="])
        messages = [{"role": "user", "content": problem.question}]
        pairs.append(Pair(messages, "", right, cut, ("r", f"t{seed}-{len(pairs)}", 0), "solutions"))
    return pairs


def pair_accuracy(learner: OutcomeRMLearner, pairs: list[Pair]) -> float:
    with torch.no_grad():
        r = learner.rewards([learner._ids(p, text) for p in pairs for text in (p.chosen, p.rejected)])
    return float(((r[0::2] - r[1::2]) > 0).float().mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_a_bradley_terry_outcome_model_ranks_held_out_solutions(tokenizer: Any, seed: int) -> None:
    """Trained on 32 pairs, measured on 32 pairs of problems it never saw: it ranks the
    finished solution above the cut-off one by what they are, not by which texts it was
    shown (the reward is read at each row's own last token, whatever the padding)."""
    learner = OutcomeRMLearner(tiny_model(tokenizer, seed=seed), tokenizer, lr=3e-3)
    train = solution_pairs(1, 32)
    held_out = solution_pairs(2, 32, exclude=train)
    before = pair_accuracy(learner, held_out)
    losses = [learner.step(train).loss for _ in range(10)]
    assert losses[-1] < losses[0] / 2
    after = pair_accuracy(learner, held_out)
    assert before <= 0.7 and after >= 0.85, (before, after)


async def test_reward_model_configs_build_and_take_a_step(tmp_path: Path) -> None:
    """prm and orm as a config names them: built over the run's policy checkpoint, their
    converter takes examples from a search tree, one step changes the model; nothing is
    published and nothing evaluated."""
    from runtime.app.config import load_config
    from runtime.app.learning import build_learner

    verifiers = Verifiers(outcome=ExactMatch(), process=TinyStepVerifier())
    for kind, learner_class in (("prm", PRMLearner), ("orm", OutcomeRMLearner)):
        overrides = ["policy.kind=local", f"learner.kind={kind}", f"store.path={tmp_path / 's.db'}"]
        config = load_config(None, [*overrides, *(["learner.label=process"] if kind == "prm" else [])])
        assert config.learner is not None and config.learner.kind == kind
        assert not config.learner.trains_policy and config.learner.eval is None
        learner = build_learner(config)
        assert isinstance(learner, learner_class)
        examples = await config.learner.build_converter("\n").examples(verify_backtrack_tree(), verifiers)
        assert len(examples) == (3 if kind == "prm" else 1)  # every path / one verified-vs-failed pair
        before = {k: v.clone() for k, v in learner.model.state_dict().items()}
        result = await learner.update(examples)
        assert learner.steps == 1 and result.examples == len(examples) and result.loss > 0
        assert any(not torch.equal(before[k], v) for k, v in learner.model.state_dict().items())
