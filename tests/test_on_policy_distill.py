"""On-policy distillation: the weak bundled policy (the student) samples, the strong one
(the frozen teacher) scores the student's tokens, the reverse KL between them falls and
the teacher never changes; a missing teacher is a config error; every sample, right or
wrong, is an example."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from learners import Example, OnPolicyDistill, OnPolicyDistillLearner, OnPolicySamples
from runtime.app.config import load_config
from runtime.app.learning import build_learner
from runtime.core.errors import ConfigError
from runtime.core.types import Episode, Node, Task
from runtime.policy.base import GenerationRequest
from runtime.policy.checkpoints import resolve_checkpoint
from runtime.policy.local import LocalPolicy
from runtime.search.context import Sampling
from runtime.tiny.tasks import TinyTasks

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]


def student() -> tuple[Any, Any]:
    directory = resolve_checkpoint("bundled-weak")
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(directory)


async def sample(policy: LocalPolicy, tasks: list[Task], n: int, seed: int) -> list[Example]:
    """``n`` completions per task from the local engine, all requests in one batch."""
    out: list[Example] = []

    async def one(i: int, task: Task) -> None:
        request = GenerationRequest(messages=task.as_messages(), n=n, temperature=1.0, max_tokens=160, seed=seed + i)
        result = await policy.generate(request)
        out.extend(
            Example(messages=task.as_messages(), completion=c.text, key=("s", task.id, k), policy_version=0)
            for k, c in enumerate(result.completions)
        )

    async with anyio.create_task_group() as tg:
        for i, task in enumerate(tasks):
            tg.start_soon(one, i, task)
    return sorted(out, key=lambda e: e.key)


async def test_reverse_kl_to_the_teacher_falls_and_the_teacher_stays_frozen() -> None:
    model, tokenizer = student()
    learner = OnPolicyDistill(teacher="bundled", lr=2e-4, threads=2).build_learner(model, tokenizer, Sampling())
    assert isinstance(learner, OnPolicyDistillLearner)
    teacher = {k: v.clone() for k, v in learner.teacher.state_dict().items()}
    in_optimizer = {id(p) for group in learner.optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in learner.teacher.parameters()}
    engine_model, _ = student()  # the engine serves its own copy of the student, as in a run
    tasks = list(TinyTasks(size=8, steps=[3, 4], seed=1).tasks())
    async with LocalPolicy(engine_model, tokenizer, threads=2) as policy:
        samples = await sample(policy, tasks, n=4, seed=0)  # 32 of the student's own solutions
        held_out = await sample(policy, tasks, n=4, seed=100)  # 32 more, never trained on
        before, before_fresh = learner.reverse_kl(samples), learner.reverse_kl(held_out)
        results = [await learner.update(samples) for _ in range(4)]
        after = learner.reverse_kl(samples)
        # Publish to the engine (as the loop does) and sample again under the held-out seeds.
        await policy.load_weights(learner.weights(), 1)
        after_fresh = learner.reverse_kl(await sample(policy, tasks, n=4, seed=100))
    # Two measures, in nats per completion token (seeds 0, 7, 13, 21 measured):
    # - the same 32 samples before and after 4 steps on them: 0.23-0.39 -> 0.08-0.20;
    # - fresh samples of the student before and after, same tasks and seeds: 0.22-0.27 -> 0.13-0.15.
    assert after < 0.6 * before, (before, after)
    assert after_fresh < 0.8 * before_fresh, (before_fresh, after_fresh)
    assert results[0].metrics["reverse_kl"] == pytest.approx(before, rel=1e-4)  # the first step saw what we measured
    assert all(r.tokens > 0 and r.examples == 32 for r in results)
    assert results[-1].metrics["reverse_kl"] < results[0].metrics["reverse_kl"]
    assert not learner.teacher.training
    assert all(torch.equal(v, learner.teacher.state_dict()[k]) for k, v in teacher.items())
    assert all(p.grad is None and not p.requires_grad for p in learner.teacher.parameters())


async def test_a_missing_teacher_is_a_config_error_naming_learner_teacher(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-teacher"
    config = load_config(ROOT / "configs" / "on_policy_distill.yaml", [f"learner.teacher={missing}"])
    with pytest.raises(ConfigError) as info:
        build_learner(config)
    message = str(info.value)
    assert message.startswith("learner.teacher: ") and str(missing) in message and "\n" not in message


def episode(leaves: list[tuple[str, float | None]], chosen: int, reward: float) -> Episode:
    ep = Episode(run_id="r", task=Task(id="t", prompt="Evaluate: 2+3*4", answer="14"), reward=reward)
    ep.nodes.append(Node(id=0, parent=None, depth=0))
    step = Node(id=1, parent=0, depth=1, text="3*4=12, leaving 2+12", policy_version=3)
    ep.nodes += [step]
    ep.nodes[0].children.append(1)
    for text, score in leaves:
        leaf = Node(id=len(ep.nodes), parent=1, depth=2, text=text, terminal=True, policy_version=4)
        if score is not None:
            leaf.scores["outcome:exact"] = score
        ep.nodes.append(leaf)
        step.children.append(leaf.id)
    ep.chosen_path = [1, chosen + 2]
    return ep


async def test_every_sample_is_an_example_wrong_answers_too() -> None:
    source = OnPolicySamples()
    ep = episode([("2+12=14\nAnswer: 14", 1.0), ("2+12=15\nAnswer: 15", 0.0), ("2+12=16\nAnswer: 16", None)], 1, 0.0)
    examples = await source.examples(ep)
    assert [e.completion.splitlines()[-1] for e in examples] == ["Answer: 14", "Answer: 15", "Answer: 16"]
    assert [e.meta["reward"] for e in examples] == [1.0, 0.0, None]  # the chosen one is wrong, and kept
    assert all(e.policy_version == 3 and e.weight == 1.0 and e.key == ep.key for e in examples)
    assert len(await source.examples(ep)) == 3  # no deduplication: on-policy samples repeat
    assert source.rejected_by_process == 0 and source.state() == []
    source.load_state([b"x"])
    ep.status = "failed"
    assert await source.examples(ep) == []
