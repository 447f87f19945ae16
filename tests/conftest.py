"""Shared fixtures of the core test suite: the anyio backend, task and solution makers."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

from runtime.core.types import Task
from runtime.tiny.domain import generate_problem, solution_steps

DATA = Path(__file__).parent / "data"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """The CLI configures structlog to print to the stderr it saw (CliRunner's, closed
    afterwards); put the defaults back so later tests never log into a closed file."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture
def make_tasks() -> Callable[..., list[Task]]:
    """``make_tasks(n, prefix="t")``: ``n`` tasks whose reference answer is their index."""

    def make(n: int, prefix: str = "t") -> list[Task]:
        return [Task(id=f"{prefix}{i}", prompt=f"question {i}", answer=str(i)) for i in range(n)]

    return make


@pytest.fixture
def tiny_solution() -> Callable[..., tuple[Task, list[str]]]:
    """``tiny_solution(seed, steps=3)``: a tiny-domain task and its correct solution
    lines (step lines, then ``Answer: N``)."""

    def make(seed: int, steps: int = 3) -> tuple[Task, list[str]]:
        problem = generate_problem(random.Random(seed), steps)
        task = Task(
            id=f"tiny-{seed}",
            prompt=problem.question,
            answer=str(problem.answer),
            metadata={"source": "tiny", "expression": problem.expression, "steps": problem.steps},
        )
        return task, [*solution_steps(problem), f"Answer: {problem.answer}"]

    return make
