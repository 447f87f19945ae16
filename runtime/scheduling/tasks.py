"""Task sources: reasoning-gym datasets, JSONL files, any iterable (the tiny domain's
own source is ``runtime.tiny.tiny_tasks``).

Every source yields :class:`~runtime.core.types.Task` with a stable id, so a resumed run
recognises what it already did. Problems in a source are errors that name the place
(``tasks.jsonl:17: ...``), raised before the run starts where possible.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from runtime.core.errors import TaskError
from runtime.core.registry import Component
from runtime.core.types import Task

__all__ = [
    "JsonlTasks",
    "ReasoningGymTasks",
    "TaskSource",
    "iterate_tasks",
    "jsonl_tasks",
    "reasoning_gym_tasks",
    "to_task",
]


def to_task(item: Any, index: int) -> Task:
    """A Task from a Task, a mapping (``id``, ``prompt``/``question``/``messages``,
    ``answer``, ``metadata``) or a plain string prompt."""
    if isinstance(item, Task):
        return item
    if isinstance(item, str):
        return Task(id=str(index), prompt=item)
    if isinstance(item, dict):
        prompt = item.get("prompt", item.get("question"))
        messages = item.get("messages")
        if prompt is None and messages is None:
            raise TaskError(f"task {index} has none of prompt, question or messages: {sorted(item)}")
        if messages is not None and not (
            isinstance(messages, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)
        ):
            raise TaskError(f"task {index}: messages must be a list of {{role, content}} objects")
        answer = item.get("answer")
        return Task(
            id=str(item.get("id", index)),
            prompt=None if prompt is None else str(prompt),
            messages=messages,
            answer=None if answer is None else str(answer),
            metadata=dict(item.get("metadata") or {}),
        )
    raise TaskError(f"task {index} is a {type(item).__name__}; expected a Task, a dict or a string")


async def iterate_tasks(source: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Task]:
    """Tasks from any iterable or async iterable of tasks, dicts or strings."""
    if isinstance(source, AsyncIterable):
        index = 0
        async for item in source:
            yield to_task(item, index)
            index += 1
    else:
        for index, item in enumerate(source):
            yield to_task(item, index)


def jsonl_tasks(path: str | Path) -> list[Task]:
    """Tasks of a JSONL file, one object (or a plain string prompt) per line; blank
    lines are skipped; a task without an ``id`` gets ``<file stem>-<line>``.

    Raises TaskError naming the file and line of the first malformed line, or if the
    file holds no task.
    """
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task file {path} does not exist")
    tasks = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(item, dict | str):
                raise TaskError(f"{path}:{lineno}: expected a JSON object or string, got {type(item).__name__}")
            try:
                task = to_task(item if isinstance(item, dict) else {"prompt": item}, lineno)
            except TaskError as exc:
                raise TaskError(f"{path}:{lineno}: {exc}") from None
            if not isinstance(item, dict) or "id" not in item:
                task.id = f"{path.stem}-{lineno}"
            if task.id in seen:
                raise TaskError(f"{path}:{lineno}: duplicate task id {task.id!r}")
            seen.add(task.id)
            tasks.append(task)
    if not tasks:
        raise TaskError(f"task file {path} holds no tasks")
    return tasks


def reasoning_gym_tasks(
    name: str, size: int = 100, seed: int = 0, config: dict[str, Any] | None = None
) -> Iterator[Task]:
    """Tasks of a reasoning-gym procedural dataset; scored by its own ``score_answer``.

    The dataset is created (and an unknown name or bad config raises TaskError) when
    this is called, not when the first task is drawn, so a bad source fails before the
    run starts.
    """
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    if name not in DATASETS:
        close = difflib.get_close_matches(name, DATASETS, n=3)
        allowed = f"did you mean {', '.join(close)}?" if close else "allowed: a name in reasoning_gym.factory.DATASETS"
        raise TaskError(f"unknown reasoning-gym dataset {name!r} ({len(DATASETS)} registered); {allowed}")
    params = {**(config or {}), "size": size, "seed": seed}
    try:
        dataset = reasoning_gym.create_dataset(name, **params)
    except Exception as exc:  # bad config
        raise TaskError(f"reasoning-gym dataset {name!r}: {exc}") from None
    return _reasoning_gym_entries(name, dataset, size, params)


def _reasoning_gym_entries(name: str, dataset: Any, size: int, params: dict[str, Any]) -> Iterator[Task]:
    seed = params["seed"]
    for index in range(size):
        entry = dataset[index]
        yield Task(
            id=f"{name}-{seed}-{index}",
            prompt=entry["question"],
            answer=str(entry["answer"]),
            metadata={"source": "reasoning_gym", "dataset": name, "config": params, "index": index},
        )


class TaskSource(Component):
    """Base of the task sources a config can name (``tasks: {source: ..., ...}``).

    ``build()`` returns the tasks, checking what it can up front (a missing file or an
    unknown dataset raises TaskError before the run starts)."""

    family: ClassVar[str] = "tasks"
    key: ClassVar[str] = "source"
    default_component: ClassVar[str | None] = "tiny"
    input_field: ClassVar[str | None] = None
    """The setting a TaskError from ``build`` is about (the file, the dataset name)."""
    source: str
    """Where tasks come from."""

    def build(self) -> Iterable[Task]:
        raise NotImplementedError


class JsonlTasks(TaskSource):
    """Tasks of a JSONL file, one object per line (see :func:`jsonl_tasks`)."""

    source: Literal["jsonl"] = "jsonl"
    input_field = "path"
    path: str
    """The JSONL file."""

    def build(self) -> list[Task]:
        return jsonl_tasks(self.path)


class ReasoningGymTasks(TaskSource):
    """A reasoning-gym procedural dataset, scored by its own ``score_answer``."""

    source: Literal["reasoning_gym"] = "reasoning_gym"
    input_field = "name"
    name: str
    """Dataset name, e.g. basic_arithmetic, chain_sum, countdown."""
    size: int = Field(100, ge=1)
    """Number of tasks."""
    seed: int = 0
    """Seed of the generated tasks."""
    config: dict[str, Any] = Field(default_factory=dict)
    """Extra dataset config."""

    def build(self) -> list[Task]:
        return list(reasoning_gym_tasks(self.name, self.size, self.seed, self.config))
