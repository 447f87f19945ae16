"""Learners and the online loop: SFT steps, verified-path extraction, staleness,
backpressure, checkpoints, evaluation inside the loop."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from learners import (
    EvalSettings,
    Evaluator,
    Example,
    LoopSettings,
    LoraSettings,
    OnlineLoop,
    SFTLearner,
    UpdateResult,
    VerifiedPaths,
)
from runtime.core.errors import ConfigError
from runtime.core.types import Episode, Node, Task
from runtime.policy.base import GenerationRequest
from runtime.policy.local import LocalPolicy
from runtime.policy.scripted import ScriptedPolicy
from runtime.rewards.outcome import ExactMatch
from runtime.scheduling.scheduler import Runtime, SchedulerSettings
from runtime.scheduling.store import EpisodeStore
from runtime.search.context import Sampling, Verifiers
from runtime.tiny.domain import generate_problem, solution_steps
from runtime.tiny.policy_format import BUNDLED_POLICY
from runtime.tiny.tasks import tiny_tasks
from runtime.tiny.verifier import TinyStepVerifier
from strategies import BestOfN

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(BUNDLED_POLICY)


def tiny_model(tokenizer: Any, seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen2ForCausalLM(config)


def solution_example(seed: int, steps: int = 2) -> Example:
    import random

    problem = generate_problem(random.Random(seed), steps)
    text = "\n".join([*solution_steps(problem), f"Answer: {problem.answer}"])
    return Example(messages=[{"role": "user", "content": problem.question}], completion=text, key=("r", f"t{seed}", 0))


# -- the SFT learner ----------------------------------------------------------------------


@pytest.mark.parametrize("lora", [None, LoraSettings(r=4, alpha=8)])
async def test_learner_step_lowers_the_loss_and_changes_the_parameters(
    tokenizer: Any, lora: LoraSettings | None
) -> None:
    lr = 3e-3 if lora is None else 3e-2  # adapters on a random model need a larger step
    learner = SFTLearner(tiny_model(tokenizer), tokenizer, lr=lr, micro_batch=4, lora=lora)
    batch = [solution_example(s) for s in range(8)]
    before_loss = learner.loss(batch)
    before = learner.weights()
    for _ in range(5):
        result = await learner.update(batch)
    assert isinstance(result, UpdateResult) and result.step == 5 and result.examples == 8 and result.tokens > 0
    assert learner.loss(batch) < before_loss - 0.1
    after = learner.weights()
    assert set(after) == set(before)  # published names are the plain model's, LoRA merged in
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed
    if lora is not None:  # only the adapted projections move
        assert all(any(m in k for m in lora.target_modules) for k in changed)


async def test_labels_cover_only_the_completion(tokenizer: Any) -> None:
    learner = SFTLearner(tiny_model(tokenizer), tokenizer)
    example = solution_example(3)
    ids, labels = learner.encode(example)
    learned = tokenizer.decode([t for t in labels if t != -100])
    assert learned == example.completion + tokenizer.eos_token
    assert labels[0] == -100 and len(ids) == len(labels)


async def test_warmup_ramps_the_learning_rate_and_shrinks_the_first_update(tokenizer: Any) -> None:
    def first_update(warmup: int) -> float:
        learner = SFTLearner(tiny_model(tokenizer), tokenizer, lr=1e-3, warmup_steps=warmup)
        before = learner.weights()
        learner.step([solution_example(s) for s in range(4)])
        after = learner.weights()
        return max(float((after[k] - before[k]).abs().max()) for k in before)

    learner = SFTLearner(tiny_model(tokenizer), tokenizer, lr=1e-3, warmup_steps=4)
    assert [learner.lr_at(s) for s in range(6)] == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4, 1e-3, 1e-3])
    decaying = SFTLearner(tiny_model(tokenizer), tokenizer, lr=1e-3, warmup_steps=4, decay_steps=10, min_lr_ratio=0.1)
    assert [decaying.lr_at(s) for s in (3, 4, 9, 14, 100)] == pytest.approx([8e-4, 1e-3, 5.5e-4, 1e-4, 1e-4])
    # Adam's first update moves weights by about lr: a fifth of it under a 4-step warmup.
    assert first_update(4) == pytest.approx(first_update(0) / 5, rel=0.05)


async def test_ema_publishes_the_average_of_the_iterates_and_keeps_it_across_a_checkpoint(
    tokenizer: Any, tmp_path: Path
) -> None:
    decay = 0.8
    learner = SFTLearner(tiny_model(tokenizer), tokenizer, lr=3e-3, ema=decay)
    raw = lambda: {k: v.detach().clone() for k, v in learner.model.state_dict().items()}  # noqa: E731
    expected = raw()
    assert all(torch.equal(v, learner.weights()[k]) for k, v in expected.items())  # the average starts at the start
    batch = [solution_example(s) for s in range(4)]
    for _ in range(4):
        await learner.update(batch)
        expected = {k: decay * expected[k] + (1 - decay) * v for k, v in raw().items()}
    published = learner.weights()
    assert all(torch.allclose(published[k], expected[k], atol=1e-6) for k in expected)
    start = tiny_model(tokenizer).state_dict()
    moved = lambda w: sum(float((w[k] - start[k]).norm()) for k in start)  # noqa: E731
    assert 0 < moved(published) < moved(raw())  # it lags the raw weights, which keep training
    learner.save(tmp_path / "ck.pt")
    other = SFTLearner(tiny_model(tokenizer, seed=9), tokenizer, lr=3e-3, ema=decay)
    other.load(tmp_path / "ck.pt")
    assert all(torch.equal(v, other.weights()[k]) for k, v in published.items())
    learner.export(tmp_path / "policy")  # the export is the policy the engine was given
    exported = Qwen2ForCausalLM.from_pretrained(tmp_path / "policy").state_dict()
    assert all(torch.allclose(exported[k], published[k]) for k in exported)
    with pytest.raises(ValueError, match="ema: an average of the weights is not kept for LoRA"):
        SFTLearner(tiny_model(tokenizer), tokenizer, ema=0.9, lora=LoraSettings(r=4, alpha=8))


async def test_checkpoint_round_trip(tokenizer: Any, tmp_path: Path) -> None:
    learner = SFTLearner(tiny_model(tokenizer), tokenizer, lr=1e-3)
    await learner.update([solution_example(1)])
    learner.version = 3
    learner.save(tmp_path / "ck.pt", {"consumed": [["a", 0]]})
    other = SFTLearner(tiny_model(tokenizer, seed=9), tokenizer, lr=1e-3)
    extra = other.load(tmp_path / "ck.pt")
    assert extra == {"consumed": [["a", 0]]} and other.version == 3 and other.steps == 1
    assert all(torch.equal(v, other.weights()[k]) for k, v in learner.weights().items())
    learner.export(tmp_path / "policy")
    served = LocalPolicy.from_path(tmp_path / "policy")
    try:
        assert all(torch.equal(v, served.engine.model.state_dict()[k]) for k, v in learner.weights().items())
    finally:
        await served.aclose()


# -- from episodes to examples ------------------------------------------------------------


def episode_with_leaves(
    texts: Sequence[tuple[str, float | None]], chosen: int, reward: float, version: int = 0
) -> Episode:
    ep = Episode(run_id="r", task=Task(id="t", prompt="Evaluate: 2+3", answer="5"), reward=reward)
    ep.nodes.append(Node(id=0, parent=None, depth=0))
    for text, score in texts:
        step = Node(id=len(ep.nodes), parent=0, depth=1, text="2+3=5", policy_version=version)
        ep.nodes.append(step)
        ep.nodes[0].children.append(step.id)
        leaf = Node(id=len(ep.nodes), parent=step.id, depth=2, text=text, terminal=True, policy_version=version + 1)
        leaf.answer = text.removeprefix("Answer: ")
        if score is not None:
            leaf.scores["outcome:exact"] = score
        ep.nodes.append(leaf)
        step.children.append(leaf.id)
    ep.chosen_path = [chosen * 2 + 1, chosen * 2 + 2]
    return ep


async def test_verified_paths_chosen_all_correct_and_dedupe() -> None:
    ep = episode_with_leaves([("Answer: 5", 1.0), ("Answer: 6", None), ("Answer: 5", None)], chosen=0, reward=1.0)
    chosen = await VerifiedPaths(keep="chosen").examples(ep)
    assert [e.completion for e in chosen] == ["2+3=5\nAnswer: 5"]
    assert chosen[0].policy_version == 0  # the oldest version on the path
    source = VerifiedPaths(keep="all_correct")
    verifiers = Verifiers(outcome=ExactMatch())
    every = await source.examples(ep, verifiers)
    # the unjudged leaves are judged here: one is wrong, one duplicates the first
    assert [e.completion for e in every] == ["2+3=5\nAnswer: 5"]
    assert ep.nodes[4].scores["outcome:exact"] == 0.0
    assert await source.examples(ep, verifiers) == []  # deduplicated across the stream
    wrong = episode_with_leaves([("Answer: 6", 0.0)], chosen=0, reward=0.0)
    assert await VerifiedPaths(keep="chosen").examples(wrong) == []
    failed = episode_with_leaves([("Answer: 5", 1.0)], chosen=0, reward=1.0)
    failed.status = "failed"
    assert await VerifiedPaths(keep="chosen").examples(failed) == []


async def test_pass_rate_weighting_favours_problems_few_samples_solve() -> None:
    source = VerifiedPaths(keep="all_correct", weighting="pass_rate")
    hard = episode_with_leaves([("Answer: 5", 1.0), ("Answer: 6", 0.0), ("Answer: 7", 0.0), ("Answer: 4", 0.0)], 0, 1.0)
    [example] = await source.examples(hard)
    assert example.weight == pytest.approx(0.75)
    easy = episode_with_leaves([("Answer: 5", 1.0), ("Answer: 5", 1.0)], 0, 1.0)
    assert await source.examples(easy) == []  # every sample solved it
    assert [e.weight for e in await VerifiedPaths(keep="all_correct").examples(easy)] == [1.0]


async def test_a_right_answer_reached_through_wrong_steps_is_not_kept() -> None:
    task = Task(id="t", prompt="Evaluate: 19-22+29", answer="26", metadata={"expression": "19-22+29"})
    ep = Episode(run_id="r", task=task, reward=1.0)
    ep.nodes.append(Node(id=0, parent=None, depth=0))
    solutions = [
        ["19-22=-3, leaving -3+29", "-3+29=26", "Answer: 26"],  # right
        ["19-22=-5, leaving -5+29", "-5+29=26", "Answer: 26"],  # two slips that cancel out
    ]
    for lines in solutions:
        parent = ep.nodes[0]
        for line in lines:
            node = Node(id=len(ep.nodes), parent=parent.id, depth=parent.depth + 1, text=line)
            parent.children.append(node.id)
            ep.nodes.append(node)
            parent = node
        parent.terminal, parent.answer = True, "26"
        parent.scores["outcome:exact"] = 1.0
    verifiers = Verifiers(outcome=ExactMatch(), process=TinyStepVerifier())
    source = VerifiedPaths(keep="all_correct")
    kept = await source.examples(ep, verifiers)
    assert [e.completion for e in kept] == ["\n".join(solutions[0])]
    assert source.rejected_by_process == 1
    assert ep.nodes[4].scores["tiny_rule"] == 0.0  # the strategy never scored it; the filter did
    # outcome only: both are kept
    assert len(await VerifiedPaths(keep="all_correct", min_step_score=None).examples(ep, verifiers)) == 2


# -- the loop with a fake learner -----------------------------------------------------------


class FakeLearner:
    """Counts what it is given; each update takes ``seconds``."""

    name = "fake"

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.version = 0
        self.steps = 0
        self.seen: list[tuple[str, str, int]] = []
        self.batches: list[list[tuple[str, str, int]]] = []
        self.weights_given: list[float] = []

    async def update(self, examples: Sequence[Example]) -> UpdateResult:
        await anyio.sleep(self.seconds)
        self.steps += 1
        self.seen.extend(e.key for e in examples)
        self.batches.append([e.key for e in examples])
        self.weights_given.extend(e.weight for e in examples)
        return UpdateResult(self.steps, 1.0 / self.steps, len(examples), 0, self.seconds, 0.0)

    def weights(self) -> dict[str, Any]:
        return {"v": self.version}


class Publish:
    """Publishes to a scripted policy: it tags later completions with the new version."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy

    def swap_weights(self, weights: dict[str, Any], version: int) -> None:
        self.policy.version = version


def answer_script(request: GenerationRequest, i: int) -> str:
    return "Answer: 1"


def scripted_runtime(store: EpisodeStore | None = None, concurrency: int = 8, buffer: int = 4) -> Runtime:
    return Runtime(
        ScriptedPolicy(answer_script, latency=0.001),
        BestOfN(n=1),
        verifiers=Verifiers(outcome=ExactMatch()),
        settings=SchedulerSettings(concurrency=concurrency, buffer=buffer),
        store=store,
        run_id="loop",
    )


def ones(n: int) -> list[Task]:
    return [Task(id=f"t{i}", prompt=f"q{i}", answer="1") for i in range(n)]


@pytest.mark.parametrize("mode", ["drop", "downweight"])
async def test_stale_examples_are_dropped_or_downweighted_and_counted(mode: str) -> None:
    learner = FakeLearner()
    learner.version = 6
    rt = scripted_runtime()
    loop = OnlineLoop(
        rt,
        learner,
        VerifiedPaths(dedupe=False),  # type: ignore[arg-type]
        publish=Publish(rt.policy),
        settings=LoopSettings(max_staleness=2, stale=mode, stale_decay=0.5, batch_examples=100),  # type: ignore[arg-type]
    )
    loop._restore()
    for version in range(7):  # staleness 6, 5, ..., 0
        ep = episode_with_leaves([("Answer: 5", 1.0)], chosen=0, reward=1.0, version=version)
        ep.task = Task(id=f"t{version}", prompt="Evaluate: 2+3", answer="5")
        await loop._take(ep)
    assert loop.stats.staleness == {s: 1 for s in range(7)}
    # The trees hold text, no sampled ids: the learner encodes them, and the summary says so.
    assert loop.stats.as_dict()["paths re-encoded (no sampled ids)"] == 7
    if mode == "drop":
        assert loop.stats.dropped_stale == 4 and len(loop._pending) == 3
        assert all(6 - e.policy_version <= 2 for e in loop._pending if e.policy_version is not None)
    else:
        assert loop.stats.downweighted == 4 and len(loop._pending) == 7
        weights = sorted(e.weight for e in loop._pending)
        assert weights == [0.0625, 0.125, 0.25, 0.5, 1.0, 1.0, 1.0]


async def test_slow_learner_slows_admission_and_everything_is_consumed_once(tmp_path: Path) -> None:
    learner = FakeLearner(seconds=0.05)
    store = EpisodeStore(tmp_path / "s.db")
    rt = scripted_runtime(store, concurrency=8, buffer=4)
    loop = OnlineLoop(
        rt,
        learner,
        VerifiedPaths(),
        publish=Publish(rt.policy),  # type: ignore[arg-type]
        settings=LoopSettings(batch_examples=4, buffer_episodes=4, max_staleness=1000),
    )
    peak_gap = 0

    async def watch() -> None:
        nonlocal peak_gap
        while True:
            peak_gap = max(peak_gap, rt.stats.admitted - loop.stats.episodes)
            await anyio.sleep(0.002)

    async with rt, anyio.create_task_group() as tg:
        tg.start_soon(watch)
        stats = await loop.run(ones(400))
        tg.cancel_scope.cancel()
    # admitted-but-not-consumed is bounded by the buffers and the concurrency (in flight
    # 8; the scheduler's two streams of 4 and the store writer's batch; the loop's 4;
    # a batch pending and one in training), not by the 400 tasks
    assert 0 < peak_gap <= 2 * (8 + 3 * 4) + 2 * 4
    assert sorted(learner.seen) == sorted(("loop", f"t{i}", 0) for i in range(400))
    assert stats.episodes == 400 and stats.examples == 400 and stats.version == learner.steps
    assert stats.dropped_stale == 0 and sum(stats.staleness.values()) == 400
    store.close()


async def run_sync(tasks: int, **settings: Any) -> tuple[FakeLearner, Any]:
    """A sync-mode loop over ``tasks`` scripted tasks with a fake learner."""
    learner = FakeLearner()
    rt = scripted_runtime()
    loop = OnlineLoop(
        rt,
        learner,  # type: ignore[arg-type]
        VerifiedPaths(),
        publish=Publish(rt.policy),
        settings=LoopSettings(mode="sync", **settings),
    )
    async with rt:
        stats = await loop.run(ones(tasks))
    return learner, stats


async def test_sync_mode_alternates_generation_and_training() -> None:
    learner, stats = await run_sync(60, batch_examples=10, sync_episodes=20)
    assert learner.steps == 6 and stats.examples == 60 and len(set(learner.seen)) == 60


async def test_passes_replay_each_example_in_that_many_steps_among_other_examples() -> None:
    learner, stats = await run_sync(60, batch_examples=10, sync_episodes=10, passes=3)
    # rounds of 1, 2, 3, 3, 3, 3 steps: the window grows to `passes` batches
    assert learner.steps == 15 and stats.examples == 60
    assert all(len(b) == 10 for b in learner.batches)
    uses = Counter(learner.seen)
    first = [("loop", f"t{i}", 0) for i in range(40)]  # the first four batches left the window
    assert all(uses[k] == 3 for k in first)
    assert sorted(uses.values()) == [1] * 10 + [2] * 10 + [3] * 40
    # never the same batch twice in a row, and replayed examples mix across batches
    assert all(set(a) != set(b) for a, b in zip(learner.batches, learner.batches[1:], strict=False))
    assert any(len({int(k[1][1:]) // 10 for k in b}) > 1 for b in learner.batches)


# -- the real loop: bundled policy, its own engine, evaluation and resume --------------------


async def test_expert_iteration_loop_publishes_versions_evaluates_and_resumes(tmp_path: Path) -> None:
    verifiers = Verifiers(outcome=ExactMatch(), process=TinyStepVerifier())
    sampling = Sampling(temperature=1.0, max_tokens=120)
    held_out = list(tiny_tasks(8, steps=[2], seed=99))

    def make_loop(store: EpisodeStore) -> OnlineLoop:
        policy = LocalPolicy.from_path("bundled", max_batch=32)
        learner = SFTLearner.from_path("bundled", lr=1e-5, micro_batch=8)
        evaluator = Evaluator(LocalPolicy.from_path("bundled"), held_out, verifiers, sampling, BestOfN(n=2))
        rt = Runtime(
            policy,
            BestOfN(n=2, selection="process"),
            verifiers=verifiers,
            sampling=sampling,
            settings=SchedulerSettings(concurrency=4),
            store=store,
            run_id="ei",
        )
        return OnlineLoop(
            rt,
            learner,
            VerifiedPaths(keep="all_correct"),
            publish=policy,
            evaluator=evaluator,
            checkpoint=tmp_path / "ei" / "learner.pt",
            settings=LoopSettings(batch_examples=8, eval=EvalSettings(every=2), max_versions=3),
        )

    tasks = list(tiny_tasks(160, steps=[2, 3], seed=5))
    store = EpisodeStore(tmp_path / "s.db")
    first = make_loop(store)
    async with first:
        stats = await first.run(tasks)
    assert stats.version == 3 and (tmp_path / "ei" / "learner.pt").is_file()
    # generation ran under the published versions, and the curve is stored with the run
    versions = {v for ep in store.episodes("ei") for v in ep.policy_versions}
    assert 0 in versions and max(versions) >= 1
    curve = store.curve("ei")
    assert [p["version"] for p in curve] == [0, 2, 3]
    assert all(0.0 <= p["greedy_pass@1"] <= 1.0 and "strategy_accuracy" in p for p in curve)
    stored = store.count("ei")

    # resume: the checkpoint's version is served again, stored episodes not yet
    # consumed are replayed, and the rest of the tasks run
    second = make_loop(store)
    second.settings.max_versions = None
    async with second:
        resumed = await second.run(tasks)
    assert resumed.replayed == stored - stats.episodes
    assert resumed.episodes == store.count("ei") == len(tasks)  # every episode consumed exactly once
    assert second.runtime.policy.version == resumed.version > 3

    # the checkpoint is never resumed against a store without the episodes it trained on
    other_store = EpisodeStore(tmp_path / "other.db")
    other = make_loop(other_store)
    with pytest.raises(ConfigError, match="does not belong to run 'ei'"):
        async with other:
            await other.run(tasks)
    assert other_store.count("ei") == 0
    other_store.close()
    store.close()


async def test_evaluator_measures_the_version_it_is_given(tokenizer: Any) -> None:
    tasks = list(tiny_tasks(6, steps=[1], seed=4))
    bundled = SFTLearner.from_path("bundled")
    random_weights = SFTLearner(tiny_model(tokenizer), tokenizer)
    evaluator = Evaluator(
        LocalPolicy.from_path("bundled"), tasks, Verifiers(outcome=ExactMatch()), Sampling(max_tokens=40)
    )
    started = time.monotonic()
    try:
        good = await evaluator.evaluate(bundled.weights(), version=1)
        assert evaluator.policy.version == 1 and good["greedy_pass@1"] == 1.0
        broken = {k: torch.zeros_like(v) for k, v in bundled.weights().items()}
        bad = await evaluator.evaluate(broken, version=2)
        assert evaluator.policy.version == 2 and bad["greedy_pass@1"] == 0.0
    finally:
        await evaluator.aclose()
    assert random_weights.version == 0 and time.monotonic() - started < 60


async def test_nothing_is_stale_without_a_policy_to_publish_to() -> None:
    """Distillation: the teacher samples and never changes, so no example is stale."""
    learner = FakeLearner()
    learner.version = 9
    loop = OnlineLoop(scripted_runtime(), learner, VerifiedPaths(), settings=LoopSettings(max_staleness=0))  # type: ignore[arg-type]
    loop._restore()
    await loop._take(episode_with_leaves([("Answer: 5", 1.0)], chosen=0, reward=1.0, version=0))
    assert loop.stats.dropped_stale == 0 and len(loop._pending) == 1 and loop.stats.staleness == {0: 1}
