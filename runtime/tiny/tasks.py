"""Tasks of the bundled tiny arithmetic domain."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

from runtime.core.types import Task
from runtime.tiny.domain import generate_problem

__all__ = ["tiny_tasks"]


def tiny_tasks(count: int = 100, steps: Iterable[int] = (3, 4), seed: int = 0) -> Iterator[Task]:
    """Problems of the bundled tiny arithmetic domain (see ``runtime.tiny.domain``)."""
    steps = list(steps)
    rng = random.Random(seed)
    for index in range(count):
        problem = generate_problem(rng, steps[index % len(steps)])
        yield Task(
            id=f"tiny-{seed}-{index}",
            prompt=problem.question,
            answer=str(problem.answer),
            metadata={"source": "tiny", "expression": problem.expression, "steps": problem.steps},
        )
