"""Preference pairs from the tree (solution pairs, Step-DPO step pairs) and the DPO learner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_policy_gradient import tiny_model
from transformers import AutoTokenizer

from learners.dpo import DPOLearner
from learners.pairs import Pair, Pairs
from runtime.core.types import Episode, Node, Task
from runtime.rewards.outcome import ExactMatch
from runtime.search.context import Verifiers
from runtime.tiny.policy_format import BUNDLED_POLICY
from runtime.tiny.verifier import TinyStepVerifier

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(BUNDLED_POLICY)


def verify_backtrack_tree() -> Episode:
    """What verify-and-backtrack leaves: at the second step a rejected sibling, then the
    accepted resample, then the rest of the solution."""
    task = Task(id="t", prompt="Evaluate: 19-22+29", answer="26", metadata={"expression": "19-22+29"})
    ep = Episode(run_id="r", task=task)
    ep.nodes.append(Node(id=0, parent=None, depth=0))

    def add(parent: int, text: str, **kw: Any) -> int:
        node = Node(id=len(ep.nodes), parent=parent, depth=ep.nodes[parent].depth + 1, text=text, **kw)
        ep.nodes[parent].children.append(node.id)
        ep.nodes.append(node)
        return node.id

    first = add(0, "19-22=-3, leaving -3+29")
    add(first, "-3+29=25", meta={"rejected": True})
    good = add(first, "-3+29=26")
    leaf = add(good, "Answer: 26", terminal=True, answer="26")
    ep.nodes[leaf].scores["outcome:exact"] = 1.0
    wrong = add(0, "19-22=-5, leaving -5+29")
    wrong_leaf = add(add(wrong, "-5+29=24"), "Answer: 24", terminal=True, answer="24")
    ep.nodes[wrong_leaf].scores["outcome:exact"] = 0.0
    return ep


async def test_step_pairs_share_their_prefix_and_differ_in_one_step() -> None:
    source = Pairs(levels=["steps"])
    pairs = await source.examples(verify_backtrack_tree(), Verifiers(outcome=ExactMatch(), process=TinyStepVerifier()))
    by_prefix = {(p.prefix, p.chosen, p.rejected) for p in pairs}
    # under the first step: the accepted resample over the rejected sibling
    assert ("19-22=-3, leaving -3+29\n", "-3+29=26", "-3+29=25") in by_prefix
    # at the root: the right first step over the wrong one
    assert ("", "19-22=-3, leaving -3+29", "19-22=-5, leaving -5+29") in by_prefix
    for p in pairs:
        assert p.level == "steps" and p.chosen != p.rejected
        assert "\n" not in p.chosen and "\n" not in p.rejected  # one step each, after the same prefix
    assert source.counts["steps"] == len(pairs)


async def test_solution_pairs_take_a_verified_and_a_failed_solution_of_the_task() -> None:
    pairs = await Pairs(levels=["solutions"]).examples(
        verify_backtrack_tree(), Verifiers(outcome=ExactMatch(), process=TinyStepVerifier())
    )
    assert len(pairs) == 1
    (pair,) = pairs
    assert pair.prefix == "" and pair.chosen.endswith("Answer: 26") and pair.rejected.endswith("Answer: 24")


def test_dpo_loss_falls_while_the_reference_stays_bitwise_unchanged(tokenizer: Any, tmp_path: Path) -> None:
    learner = DPOLearner(tiny_model(tokenizer), tokenizer, lr=3e-3, beta=0.5)
    reference = {k: v.clone() for k, v in learner.reference.state_dict().items()}
    messages = [{"role": "user", "content": "Evaluate: 19-22+29"}]
    pairs = [
        Pair(messages, "19-22=-3, leaving -3+29\n", "-3+29=26", "-3+29=25", ("r", "t", 0), "steps"),
        Pair(messages, "", "19-22=-3, leaving -3+29", "19-22=-5, leaving -5+29", ("r", "t", 0), "steps"),
        Pair(messages, "", "-3+29=26\nAnswer: 26", "-3+29=24\nAnswer: 24", ("r", "t", 0), "solutions"),
    ]
    losses = [learner.step(pairs).loss for _ in range(6)]
    assert losses[-1] < losses[0]
    assert learner.step(pairs).metrics["pair_accuracy"] == 1.0
    assert all(torch.equal(reference[k], v) for k, v in learner.reference.state_dict().items())
    assert not all(torch.equal(reference[k], v) for k, v in learner.model.state_dict().items())
    # the reference survives a checkpoint as the start's weights, not the trained ones
    learner.save(tmp_path / "dpo.pt")
    fresh = DPOLearner(tiny_model(tokenizer, seed=5), tokenizer)
    fresh.load(tmp_path / "dpo.pt")
    assert all(torch.equal(reference[k], v) for k, v in fresh.reference.state_dict().items())


# -- reflection traces (the same verify-and-backtrack tree) ------------------------------


async def test_reflection_traces_write_the_rejected_step_its_check_and_mask_it(tokenizer: Any) -> None:
    from learners.reflection import ReflectionTraces
    from learners.sft import SFTLearner

    verifiers = Verifiers(outcome=ExactMatch(), process=TinyStepVerifier())
    (example,) = await ReflectionTraces(keep="all_correct").examples(verify_backtrack_tree(), verifiers)
    assert example.completion.split("\n") == [
        "19-22=-3, leaving -3+29",
        "-3+29=25",
        "check: -3+29=25 is wrong, -3+29=26",
        "Answer: 26",
    ]
    assert example.segments is not None and [t for _, t in example.segments] == [True, False, True, True]
    assert example.meta["reflections"] == 1
    # the rule verifier accepts the check line as the step it corrects
    score = await TinyStepVerifier().score_step(
        verify_backtrack_tree().task, ["19-22=-3, leaving -3+29"], example.segments[2][0]
    )
    assert score.value == 1.0
    # the supervised learner gives the rejected step no labels, and the rest keeps them
    learner = SFTLearner(tiny_model(tokenizer), tokenizer)
    ids, labels = learner.encode(example)
    rejected = tokenizer("-3+29=25\n", add_special_tokens=False)["input_ids"]
    masked = [i for i, label in enumerate(labels) if label == -100]
    assert len(masked) == len(ids) - len([x for x in labels if x != -100])
    plain = await ReflectionTraces(keep="all_correct", mask_rejected=False).examples(verify_backtrack_tree(), verifiers)
    _, plain_labels = learner.encode(plain[0])
    assert sum(x != -100 for x in plain_labels) - sum(x != -100 for x in labels) == len(rejected)
