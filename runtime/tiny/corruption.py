"""Corrupted tiny-domain solutions: negatives for training step verifiers."""

from __future__ import annotations

import random

from runtime.core.types import Task
from runtime.tiny.domain import check_step, next_reduction, parse_expression, remaining_after, render

__all__ = ["corrupt_tiny_step"]


def corrupt_tiny_step(task: Task, steps: list[str], rng: random.Random) -> list[str] | None:
    """A prefix of a tiny-domain solution whose last step has a wrong result, carried
    consistently into the restated remainder (the error a policy actually makes)."""
    expression = task.metadata.get("expression")
    if expression is None:
        return None
    states = []
    for k, line in enumerate(steps):
        if check_step(expression, line)[0] == 1.0 and "=" in line:
            states.append((k, expression))
        expression = remaining_after(expression, line) if check_step(expression, line)[0] == 1.0 else expression
    if not states:
        return None
    k, before = rng.choice(states)
    numbers, ops = parse_expression(before)
    i = next_reduction(ops)
    a, op, b = numbers[i], ops[i], numbers[i + 1]
    wrong = (a + b if op == "+" else a - b if op == "-" else a * b) + rng.choice([-10, -2, -1, 1, 2, 10])
    numbers[i : i + 2] = [wrong]
    del ops[i]
    line = f"{a}{op}{b}={wrong}" + (f", leaving {render(numbers, ops)}" if ops else "")
    return [*steps[:k], line]
