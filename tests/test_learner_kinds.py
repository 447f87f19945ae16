"""Every learner kind that trains from the stream runs through the real online loop:
ppo, dpo, prm and orm, each built from its config section, fed by a scripted policy that
solves the tiny domain's problems (sample 0 right, sample 1 with a wrong first step),
takes optimizer steps that change its parameters and are counted by the loop."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_policy_gradient import tiny_model
from transformers import AutoTokenizer

from learners import OnlineLoop
from learners.base import LearnerSpec
from learners.dpo import DPO
from learners.ppo import PPO
from learners.reward_models import ORM, PRM
from runtime.core.types import Task
from runtime.policy.base import GenerationRequest
from runtime.policy.scripted import ScriptedPolicy
from runtime.rewards.outcome import ExactMatch
from runtime.scheduling.scheduler import Runtime, SchedulerSettings
from runtime.search.context import Sampling, Verifiers
from runtime.tiny.domain import ArithProblem, parse_expression, solution_steps
from runtime.tiny.policy_format import BUNDLED_POLICY
from runtime.tiny.tasks import tiny_tasks
from runtime.tiny.verifier import TinyStepVerifier
from strategies import BestOfN

pytestmark = pytest.mark.anyio

SAMPLING = Sampling(temperature=1.0, max_tokens=80, logprobs=True)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(BUNDLED_POLICY)


def solve(request: GenerationRequest, i: int) -> str:
    """Sample 0: the right solution; sample 1: a wrong first step and a wrong answer."""
    question = next(m["content"] for m in reversed(request.messages or []) if "Evaluate:" in m["content"])
    numbers, ops = parse_expression(question.split("Evaluate:", 1)[1].strip())
    problem = ArithProblem(tuple(numbers), tuple(ops))
    steps = solution_steps(problem)
    if i % 2 == 0:
        return "\n".join([*steps, f"Answer: {problem.answer}"])
    head, tail = steps[0].split("=", 1)
    value = tail.split(",", 1)[0]
    return "\n".join([f"{head}={int(value) + 1}{tail[len(value) :]}", f"Answer: {problem.answer + 1}"])


class Publish:
    """Publishes to a scripted policy: later completions carry the new version."""

    def __init__(self, policy: ScriptedPolicy) -> None:
        self.policy = policy

    def swap_weights(self, weights: dict[str, Any], version: int) -> None:
        self.policy.version = version


def solver_runtime(store: Any = None, run_id: str = "kinds") -> Runtime:
    return Runtime(
        ScriptedPolicy(solve),
        BestOfN(n=2, selection="outcome"),
        verifiers=Verifiers(outcome=ExactMatch(), process=TinyStepVerifier()),
        sampling=SAMPLING,
        settings=SchedulerSettings(concurrency=4),
        store=store,
        run_id=run_id,
    )


def tasks(count: int = 8) -> list[Task]:
    return list(tiny_tasks(count, steps=[2], seed=21))


async def run_kind(spec: LearnerSpec, tokenizer: Any, count: int = 8) -> tuple[OnlineLoop, bool]:
    """Runs ``spec`` through the loop; the loop, and whether every parameter tensor of
    the trained model is unchanged."""
    learner = spec.build_learner(tiny_model(tokenizer), tokenizer, SAMPLING)
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}  # type: ignore[attr-defined]
    rt = solver_runtime()
    publish = Publish(rt.policy) if spec.trains_policy else None  # type: ignore[arg-type]
    loop = OnlineLoop(rt, learner, spec.build_converter("\n"), publish=publish, settings=spec)  # type: ignore[arg-type]
    async with rt:
        stats = await loop.run(tasks(count))
    after = learner.model.state_dict()  # type: ignore[attr-defined]
    assert stats is loop.stats
    return loop, all(torch.equal(before[k], after[k]) for k in before)


async def test_ppo_through_the_loop_takes_mini_batch_steps_and_publishes(tokenizer: Any) -> None:
    spec = PPO(batch_examples=8, mini_batches=2, lr=1e-2, kl_coef=0.1, entropy_coef=0.01, eval=None)
    loop, unchanged = await run_kind(spec, tokenizer)
    learner, stats = loop.learner, loop.stats
    assert not unchanged and stats.episodes == 8
    assert stats.examples == 16  # the critic keeps both solutions of every episode
    # two batches of 8 rollouts, two optimizer steps each, one published version per batch
    assert learner.steps == stats.steps == 4 and stats.version == 2
    assert stats.learner_counts["clipped_tokens"] > 0 and stats.trained_tokens > 0  # the clip acted
    assert learner.value_head.weight.abs().sum() > 0  # the critic trained too


async def test_dpo_through_the_loop_trains_on_the_trees_pairs(tokenizer: Any) -> None:
    spec = DPO(batch_examples=4, lr=1e-2, eval=None)
    loop, unchanged = await run_kind(spec, tokenizer)
    learner, stats = loop.learner, loop.stats
    assert not unchanged and stats.steps == learner.steps >= 2 and stats.version == learner.steps
    assert stats.examples >= 8  # a solution pair per episode (and step pairs)
    counts = loop.source.counts  # type: ignore[attr-defined]
    assert counts == {"solutions": 8, "steps": 8}  # and each wrong first step pairs with the right one


async def test_prm_through_the_loop_learns_from_process_labels_and_publishes_nothing(tokenizer: Any) -> None:
    spec = PRM(label="process", batch_examples=8, lr=1e-2)
    loop, unchanged = await run_kind(spec, tokenizer)
    learner, stats = loop.learner, loop.stats
    assert not unchanged and stats.steps == learner.steps >= 2
    assert stats.examples == 16  # both paths of every episode, each step labelled
    assert stats.version == learner.version == learner.steps  # versions count, nothing is served


async def test_orm_through_the_loop_trains_on_solution_pairs(tokenizer: Any) -> None:
    spec = ORM(batch_examples=2, lr=1e-2)
    loop, unchanged = await run_kind(spec, tokenizer)
    learner, stats = loop.learner, loop.stats
    assert not unchanged and stats.steps == learner.steps >= 2
    assert stats.examples == 8  # one solution pair per episode
