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
from typing import Any, BinaryIO, ClassVar, Literal

from pydantic import Field

from runtime.core.errors import TaskError
from runtime.core.registry import Component
from runtime.core.text import clean_text, clean_value
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

MAX_LINE_BYTES = 1 << 20  # 1 MiB: a task, not a corpus


def to_task(item: Any, index: int) -> Task:
    """A Task from a Task, a mapping (``id``, ``prompt``/``question``/``messages``,
    ``answer``, ``metadata``) or a plain string prompt; its text cleaned of what cannot
    be stored (lone surrogates)."""
    if isinstance(item, Task):
        return _clean_task(item)
    if isinstance(item, str):
        return Task(id=str(index), prompt=clean_text(item))
    if isinstance(item, dict):
        item = clean_value(item)
        metadata = item.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise TaskError(f"task {index}: metadata must be an object, got {type(metadata).__name__}")
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


def _clean_task(task: Task) -> Task:
    texts = [task.id, task.prompt or "", task.answer or ""]
    texts += [m.get("content", "") for m in task.messages or [] if isinstance(m.get("content"), str)]
    if all(clean_text(t) is t for t in texts):
        return task
    return Task(
        id=clean_text(task.id),
        prompt=None if task.prompt is None else clean_text(task.prompt),
        messages=clean_value(task.messages),
        answer=None if task.answer is None else clean_text(task.answer),
        metadata=clean_value(task.metadata),
    )


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


def jsonl_tasks(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> list[Task]:
    """Tasks of a JSONL file, one object (or a plain string prompt) per line; blank
    lines are skipped; a task without an ``id`` gets ``<file stem>-<line>``.

    Raises TaskError naming the file and line of the first malformed line (not JSON,
    not UTF-8, longer than ``max_line_bytes``), or if the file holds no task. A line
    over the cap is never read whole.
    """
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task file {path} does not exist")
    tasks = []
    seen: set[str] = set()
    with path.open("rb") as f:
        for lineno, line in enumerate(_lines(f, path, max_line_bytes), 1):
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TaskError(
                    f"{path}:{lineno}: not UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1})"
                ) from None
            try:
                item = json.loads(text)
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


def _lines(f: BinaryIO, path: Path, limit: int) -> Iterator[bytes]:
    """The file's lines; a line longer than ``limit`` bytes raises before it is read whole."""
    lineno = 0
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        lineno += 1
        if len(line) > limit and not (len(line) == limit + 1 and line.endswith(b"\n")):
            raise TaskError(f"{path}:{lineno}: line longer than {limit:,} bytes (tasks.max_line_bytes)")
        yield line


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
    max_line_bytes: int = Field(MAX_LINE_BYTES, ge=1)
    """Longest line accepted; a longer one is an error naming the line."""

    def build(self) -> list[Task]:
        return jsonl_tasks(self.path, self.max_line_bytes)


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
