"""Tasks of the bundled tiny arithmetic domain."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Annotated, Literal

from pydantic import Field

from runtime.core.types import Task
from runtime.scheduling.tasks import TaskSource
from runtime.tiny.domain import Split, generate_problem

__all__ = ["TinyTasks", "tiny_tasks"]


def tiny_tasks(
    count: int = 100,
    steps: Iterable[int] = (3, 4),
    seed: int = 0,
    split: Split = "all",
    max_operand: int | None = None,
) -> Iterator[Task]:
    """Problems of the bundled tiny arithmetic domain (see ``runtime.tiny.domain``)."""
    steps = list(steps)
    rng = random.Random(seed)
    for index in range(count):
        problem = generate_problem(rng, steps[index % len(steps)], split, max_operand)
        yield Task(
            id=f"tiny-{seed}-{index}",
            prompt=problem.question,
            answer=str(problem.answer),
            metadata={"source": "tiny", "expression": problem.expression, "steps": problem.steps},
        )


class TinyTasks(TaskSource):
    """Generated problems of the bundled tiny arithmetic domain."""

    source: Literal["tiny"] = "tiny"
    size: int = Field(100, ge=1)
    """Number of tasks."""
    seed: int = 0
    """Seed of the generated tasks."""
    steps: list[Annotated[int, Field(ge=1, le=8)]] = Field(default_factory=lambda: [3, 4], min_length=1)
    """Problem lengths (operations per expression), cycled."""
    split: Split = "all"
    """Part of the problem space: train (nine tenths), heldout (the fixed tenth no training
    set drawn with split train can contain) or all."""

    max_operand: int | None = Field(None, ge=2, le=1_000_000)
    """Draw every operand from 1 (2 in products) up to this instead of the domain's
    ranges (2-9 in products, 1-30 elsewhere): problems past the times tables a policy
    learnt, for out-of-distribution tests (999: up to six-digit products)."""

    def build(self) -> list[Task]:
        return list(tiny_tasks(self.size, self.steps, self.seed, self.split, self.max_operand))
