"""The whole search tree as training signal, and a learner that never waits: verified
prefixes of unsolved episodes, weight on steps found after a rejection, idle replay,
the tiny domain's fixed held-out split."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from test_dpo import verify_backtrack_tree
from test_learners import FakeLearner, Publish, ones, scripted_runtime
from transformers import AutoTokenizer

from learners import LoopSettings, OnlineLoop, SFTLearner, SFTSettings, VerifiedPaths
from runtime.core.types import Episode, Node, Task
from runtime.rewards.outcome import ExactMatch
from runtime.search.context import Verifiers
from runtime.tiny.domain import generate_problem, split_of
from runtime.tiny.policy_format import BUNDLED_POLICY
from runtime.tiny.tasks import TinyTasks
from runtime.tiny.verifier import TinyStepVerifier

pytestmark = pytest.mark.anyio
VERIFIERS = Verifiers(outcome=ExactMatch(), process=TinyStepVerifier())


def unsolved_tree() -> Episode:
    """No correct answer: a right first step whose successor was rejected, and a wrong
    first step whose (locally right) successor leads to a wrong answer."""
    task = Task(id="u", prompt="Evaluate: 19-22+29", answer="26", metadata={"expression": "19-22+29"})
    ep = Episode(run_id="r", task=task, reward=0.0)
    ep.nodes.append(Node(id=0, parent=None, depth=0))

    def add(parent: int, text: str, **kw: Any) -> int:
        node = Node(id=len(ep.nodes), parent=parent, depth=ep.nodes[parent].depth + 1, text=text, **kw)
        ep.nodes[parent].children.append(node.id)
        ep.nodes.append(node)
        return node.id

    right = add(0, "19-22=-3, leaving -3+29", policy_version=2)
    add(right, "-3+29=25", meta={"rejected": True})
    wrong = add(0, "19-22=-5, leaving -5+29")
    leaf = add(add(wrong, "-5+29=24"), "Answer: 24", terminal=True, answer="24")
    ep.nodes[leaf].scores["outcome:exact"] = 0.0
    return ep


async def test_an_unsolved_episode_gives_its_deepest_fully_verified_prefix_only() -> None:
    assert await VerifiedPaths(keep="all_correct").examples(unsolved_tree(), VERIFIERS) == []
    examples = await VerifiedPaths(keep="all_correct", prefixes=True).examples(unsolved_tree(), VERIFIERS)
    # "-5+29=24" is right arithmetic, but the step before it is not: that branch gives nothing
    assert [e.completion for e in examples] == ["19-22=-3, leaving -3+29"]
    (prefix,) = examples
    assert not prefix.ends and prefix.meta["prefix"] and prefix.policy_version == 2


async def test_a_solved_episode_gives_no_prefix_beside_its_solution() -> None:
    examples = await VerifiedPaths(keep="all_correct", prefixes=True).examples(verify_backtrack_tree(), VERIFIERS)
    assert [e.ends for e in examples] == [True]


def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(BUNDLED_POLICY)


async def test_a_prefix_is_trained_without_an_end_of_turn() -> None:
    from transformers import AutoModelForCausalLM

    tok = tokenizer()
    learner = SFTLearner(AutoModelForCausalLM.from_pretrained(BUNDLED_POLICY), tok, SFTSettings(threads=1))
    (prefix,) = await VerifiedPaths(prefixes=True).examples(unsolved_tree(), VERIFIERS)
    ids, labels = learner.encode(prefix)
    trained = [t for t in labels if t != -100]
    assert tok.eos_token_id not in trained and tok.decode(trained) == "19-22=-3, leaving -3+29\n"
    (solution,) = await VerifiedPaths(keep="all_correct").examples(verify_backtrack_tree(), VERIFIERS)
    assert [t for t in learner.encode(solution)[1] if t != -100][-1] == tok.eos_token_id


async def test_a_step_found_after_a_rejection_weighs_retry_weight() -> None:
    from transformers import AutoModelForCausalLM

    (example,) = await VerifiedPaths(keep="all_correct", retry_weight=3.0).examples(verify_backtrack_tree(), VERIFIERS)
    assert example.segments == [("19-22=-3, leaving -3+29", 1.0), ("-3+29=26", 3.0), ("Answer: 26", 1.0)]
    tok = tokenizer()
    learner = SFTLearner(AutoModelForCausalLM.from_pretrained(BUNDLED_POLICY), tok, SFTSettings(threads=1))
    ids, labels, weights = learner.encode_weighted(example)
    heavy = [t for t, w in zip(ids, weights, strict=True) if w == 3.0]
    assert tok.decode(heavy) == "-3+29=26\n"
    # weight 1 (the default) leaves the text whole, tokenised as before
    (plain,) = await VerifiedPaths(keep="all_correct").examples(verify_backtrack_tree(), VERIFIERS)
    assert plain.segments is None and plain.completion == example.completion


async def test_idle_replay_steps_while_no_batch_is_ready_and_bounds_reuse() -> None:
    pools: list[int] = []

    class Recording(OnlineLoop):
        async def _replay(self) -> bool:
            pool = len(self._pool)
            took = await super()._replay()
            if took:
                pools.append(pool)
            return took

    learner = FakeLearner()
    rt = scripted_runtime(concurrency=2, buffer=2)
    rt.policy.latency = 0.02  # type: ignore[attr-defined]  # generation slower than the learner
    settings = LoopSettings(
        batch_examples=4, idle_replay=True, replay_min_pool=8, max_reuse=3, max_staleness=1000, eval=None
    )
    loop = Recording(rt, learner, VerifiedPaths(), publish=Publish(rt.policy), settings=settings)  # type: ignore[arg-type]
    async with rt:
        stats = await loop.run(ones(40))
    uses = Counter(learner.seen)
    assert stats.replay_steps == len(pools) > 0 and stats.steps == len(learner.batches)
    assert set(uses) == {("loop", f"t{i}", 0) for i in range(40)}  # every episode trained, none lost
    assert max(uses.values()) <= 3  # max_reuse, first step included
    assert min(pools) >= 8  # not before the pool held replay_min_pool examples


def test_the_tiny_split_keeps_held_out_problems_out_of_every_training_set() -> None:
    train = {t.prompt for t in TinyTasks(size=3000, steps=[3, 4], seed=1, split="train").build()}
    held = {t.prompt for t in TinyTasks(size=300, steps=[3, 4], seed=10_000, split="heldout").build()}
    assert train and held and not train & held
    assert all(split_of(q or "") == "heldout" for q in held)
    rng = random.Random(0)
    drawn = [split_of(generate_problem(rng, 3).question) for _ in range(2000)]
    assert 0.05 < drawn.count("heldout") / len(drawn) < 0.15  # about one tenth of the space


async def test_unsolved_tasks_run_again_later_under_new_sample_indices() -> None:
    learner = FakeLearner()
    rt = scripted_runtime(concurrency=2, buffer=2)  # it always answers 1
    tasks = [Task(id=f"t{i}", prompt=f"q{i}", answer="1" if i % 2 == 0 else "2") for i in range(40)]
    settings = LoopSettings(batch_examples=2, retry_unsolved=2, retry_after=1, max_staleness=1000, eval=None)
    loop = OnlineLoop(rt, learner, VerifiedPaths(), publish=Publish(rt.policy), settings=settings)  # type: ignore[arg-type]
    seen: list[tuple[str, int]] = []
    async with rt:
        stats = await loop.run(tasks, on_episode=lambda ep: seen.append(ep.key[1:]))
    attempts = Counter(task for task, _ in seen)
    assert len(seen) == len(set(seen))  # every attempt its own (task, sample): none stored twice
    assert all(attempts[f"t{i}"] == 1 for i in range(0, 40, 2))  # solved: never again
    assert all(attempts[f"t{i}"] <= 3 for i in range(1, 40, 2))  # at most retry_unsolved more
    assert sum(attempts[f"t{i}"] == 3 for i in range(1, 40, 2)) >= 10  # most unsolved ones twice more
    assert stats.retries >= len(seen) - 40  # queued; the last ones may come after the source is spent
