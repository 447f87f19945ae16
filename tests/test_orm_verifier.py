"""The ``orm`` outcome verifier: a Bradley-Terry outcome model trained with the project's
own learner, exported, loaded through ``verifiers.outcome: {name: orm, path: ...}``,
ranks held-out solutions, reranks best-of-N and sets the episode's reward."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_policy_gradient import tiny_model
from test_reward_models import solution_pairs
from transformers import AutoTokenizer

from learners.pairs import Pair
from learners.reward_models import OutcomeRMLearner
from runtime.app.config import RunConfig
from runtime.app.parts import build_verifiers
from runtime.core.errors import ConfigError
from runtime.core.types import Task
from runtime.rewards.orm import OutcomeRewardModel
from runtime.scheduling.store import EpisodeStore
from runtime.tiny.domain import generate_problem, solution_steps
from runtime.tiny.policy_format import BUNDLED_POLICY

TRAIN = solution_pairs(1, 32)


@pytest.fixture(scope="module")
def orm_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ORM: ten Bradley-Terry steps on 32 pairs (finished vs cut-off solutions)."""
    tokenizer = AutoTokenizer.from_pretrained(BUNDLED_POLICY)
    learner = OutcomeRMLearner(tiny_model(tokenizer, seed=0), tokenizer, lr=3e-3)
    losses = [learner.step(TRAIN).loss for _ in range(10)]
    assert losses[-1] < losses[0] / 2
    path = tmp_path_factory.mktemp("orm") / "orm"
    learner.export(path)
    return path


def config(tmp_path: Path, orm: Path, **extra: Any) -> RunConfig:
    data: dict[str, Any] = {
        "run_id": "orm",
        "policy": {"kind": "scripted", "script": ["Answer: 1"]},
        "strategy": {"name": "best_of_n", "n": 2, "selection": "outcome"},
        "verifiers": {"outcome": {"name": "orm", "path": str(orm)}, "answer_patterns": ["answer_line"]},
        "store": {"path": str(tmp_path / "store.db")},
    }
    return RunConfig.model_validate(data | extra)


def test_a_trained_orm_loads_from_config_and_ranks_held_out_solutions(orm_path: Path, tmp_path: Path) -> None:
    verifiers = build_verifiers(config(tmp_path, orm_path))
    orm = verifiers.outcome
    assert isinstance(orm, OutcomeRewardModel) and not orm.needs_reference
    held_out = solution_pairs(2, 32, exclude=TRAIN)
    assert not {p.messages[0]["content"] for p in held_out} & {p.messages[0]["content"] for p in TRAIN}

    async def scores(pair: Pair) -> tuple[float, float]:
        task = Task(id="t", prompt=pair.messages[0]["content"])  # no reference answer needed
        # as the context passes a finished path: each step followed by the delimiter
        chosen = await orm.score(task, None, pair.chosen + "\n")
        rejected = await orm.score(task, None, pair.rejected + "\n")
        return chosen.value, rejected.value

    async def main() -> list[tuple[float, float]]:
        return [await scores(p) for p in held_out]

    pairs = anyio.run(main)
    assert all(0.0 < v < 1.0 for pair in pairs for v in pair)
    right = sum(chosen > rejected for chosen, rejected in pairs) / len(pairs)
    assert right >= 0.85, pairs
    assert orm.forward_passes > 0


def test_best_of_n_reranks_with_the_orm_and_rewards_with_it(orm_path: Path, tmp_path: Path) -> None:
    """Two samples per task, the right solution first or second: best-of-N by outcome
    keeps the one the ORM prefers, and the episode's reward is its score."""
    from runtime.app.build import build_runtime

    rng = random.Random(11)
    seen = {p.messages[0]["content"] for p in TRAIN}
    problems = []
    while len(problems) < 6:
        problem = generate_problem(rng, 2)
        if problem.question not in seen:
            problems.append(problem)
    script, tasks = [], []
    for i, problem in enumerate(problems):
        steps = solution_steps(problem)
        right = "\n".join([*steps, f"Answer: {problem.answer}"])
        cut = "\n".join([steps[0], steps[1].split("=")[0] + "="])
        script += [right, cut] if i % 2 else [cut, right]
        tasks.append(Task(id=f"p{i}", prompt=problem.question, answer=str(problem.answer)))
    cfg = config(
        tmp_path,
        orm_path,
        policy={"kind": "scripted", "script": script},
        scheduler={"concurrency": 1},  # the script's texts go to the tasks in order
    )

    async def main() -> list[Any]:
        async with build_runtime(cfg) as rt:
            return [ep async for ep in rt.stream(tasks)]

    episodes = anyio.run(main)
    assert len(episodes) == 6 and all(ep.status == "ok" for ep in episodes)
    by_id = {t.id: t for t in tasks}
    kept = sum(ep.final_answer == by_id[ep.task.id].answer for ep in episodes)
    assert kept >= 5, [(ep.final_answer, by_id[ep.task.id].answer) for ep in episodes]
    for ep in episodes:
        leaves = [n for n in ep.nodes if n.terminal]
        assert len(leaves) == 2 and all("outcome:orm" in n.scores for n in leaves)
        chosen = ep.nodes[ep.chosen_path[-1]]
        assert ep.reward == chosen.scores["outcome:orm"] == max(n.scores["outcome:orm"] for n in leaves)
    with EpisodeStore(cfg.store.path) as store:
        assert store.summary("orm")["episodes"] == 6


def test_a_checkpoint_that_is_no_bradley_terry_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"verifiers\.outcome\.path: .*not a Bradley-Terry outcome model"):
        build_verifiers(config(tmp_path, Path(BUNDLED_POLICY)))
    with pytest.raises(ConfigError, match=r"verifiers\.outcome\.path"):
        build_verifiers(config(tmp_path, tmp_path / "missing"))
