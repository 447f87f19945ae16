"""The ``verifiers`` task source: the rows of a PrimeIntellect verifiers environment's
dataset as tasks (``tasks: {source: verifiers, env: ..., split: train}``).

Each formatted row (``prompt`` messages, ``answer``, ``info``, ``example_id`` and any
other column) is a task: its prompt messages (the environment's system prompt and
few-shot turns included), its answer, and the rest of the row kept in
``metadata['verifiers']``, which the ``verifiers`` environment and the
``verifiers_rubric`` verifier give back to the library as the rollout's input.

Design decisions:
- The environment is loaded when the source is built, before the run starts, so a bad
  ``env`` fails with a message naming ``tasks.env``; it is the object the run's
  environment and rubric use (one per process and settings).
- Ids are ``<env>-<split>-<example_id>``: stable across restarts for the same dataset
  (a shuffled one with the same ``seed``), so a resumed run skips what it stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from runtime.core.errors import ConfigError, TaskError
from runtime.core.types import Task
from runtime.scheduling.streams import TaskStream
from runtime.scheduling.tasks import TaskSource
from runtime.tools.verifiers_load import VerifiersEnvSettings, task_from_row

__all__ = ["VerifiersTasks"]


class VerifiersTasks(TaskSource, VerifiersEnvSettings):
    """The rows of a verifiers environment's dataset (its train or eval split)."""

    source: Literal["verifiers"] = "verifiers"
    input_field = "env"
    split: Literal["train", "eval"] = "train"
    """The environment's ``dataset`` (train) or ``eval_dataset`` (eval; the library falls
    back to the train set where there is none)."""
    size: int | None = Field(None, ge=1)
    """The first rows only (null: every row)."""
    seed: int | None = None
    """Shuffle the rows with this seed first, as the library's ``get_dataset(seed=...)``
    does (null: in the dataset's order)."""

    def build(self) -> TaskStream:
        try:
            env = self.environment()
        except ConfigError as exc:
            raise TaskError(str(exc)) from None
        get = env.get_dataset if self.split == "train" else env.get_eval_dataset
        try:
            rows = get(n=self.size or -1, seed=self.seed)
        except ValueError as exc:  # no dataset of that split
            raise TaskError(f"verifiers environment {self.env!r}: {exc}") from None
        name, split = self.env, self.split

        def read(_stream: TaskStream) -> Iterator[Task]:
            for row in rows:
                yield task_from_row(dict(row), env=name, split=split)

        return TaskStream.lazy(read, size=len(rows), name=f"verifiers environment {name} ({split})")
