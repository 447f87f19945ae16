"""Task sources: reasoning-gym datasets, JSONL files (read once or followed as they
grow), a folder of JSONL files, standard input, any iterable or async iterable (the
tiny domain's own source is ``runtime.tiny.tiny_tasks``).

Every source yields :class:`~runtime.core.types.Task` with a stable id, so a resumed run
recognises what it already did. Problems in a source are errors that name the place
(``tasks.jsonl:17: ...``), raised before the run starts where possible.

Design decisions:
- ``build()`` checks what it can up front (a missing file, an unknown dataset and, for
  JSONL, every line the file holds then, in one streaming pass) and returns the tasks
  lazily: a list for small generated sources, a
  :class:`~runtime.scheduling.streams.TaskStream` for the others, which says whether it
  is bounded and how many tasks it holds when known (the progress bar's total).
- JSONL ids: a line without ``id`` gets ``<file stem>-<line>``, stable across restarts
  as long as files are only appended to. Standard input has no stable line numbers (a
  restarted producer starts again at 1), so its lines get ``stdin-<hash of the line>``.
- A followed file may be rotated (truncated in place, or renamed away and replaced:
  :mod:`runtime.scheduling.streams` notices, says so and reads the new content), and
  its line numbers then start again at 1: with line-number ids the new lines would get
  the old lines' ids, be taken as already stored and never run, even after a restart.
  So a line without ``id`` in a followed file gets ``<file stem>-<line>-<hash of the
  line>``: the same line at the same place is the same task after a restart, and a new
  line where an old one was is a new task. After a rotation, an id the file held before
  it is the same task met again (a producer that rewrites the file whole and renames
  it in), passed over quietly, not a duplicate. (A folder's files are written whole and
  renamed in, so a followed folder keeps ``<file stem>-<line>``; a rotated file in it
  is still noticed and logged, and its colliding lines are logged as duplicates.)
- A bad line met while streaming (appended after the check, or ``check: false``) is
  logged and skipped, never fatal (see :mod:`runtime.scheduling.streams`).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Literal

from pydantic import Field

from runtime.core.errors import TaskError
from runtime.core.registry import Component
from runtime.core.splits import HELDOUT_SHARE, Split, split_of
from runtime.core.text import clean_text, clean_value
from runtime.core.types import Task
from runtime.scheduling.streams import (
    DEFAULT_POLL_INTERVAL,
    Line,
    TaskStream,
    file_lines,
    follow_dir,
    follow_file,
    jsonl_files,
    stdin_lines,
)

__all__ = [
    "JsonlDirTasks",
    "JsonlTasks",
    "ReasoningGymTasks",
    "StdinTasks",
    "TaskSource",
    "iterate_tasks",
    "jsonl_dir_stream",
    "jsonl_stream",
    "jsonl_tasks",
    "reasoning_gym_tasks",
    "stdin_stream",
    "to_task",
    "with_system",
]

MAX_LINE_BYTES = 1 << 20  # 1 MiB: a task, not a corpus

DefaultId = Callable[[int, bytes], str]
"""The id of a task whose line has none, from its line number and bytes."""


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


# -- JSONL lines ---------------------------------------------------------------------


def _line_ids(stem: str) -> DefaultId:
    return lambda lineno, _line: f"{stem}-{lineno}"


def _placed_content_ids(stem: str) -> DefaultId:
    """Ids of a followed file's lines: line number and content (see the module doc)."""
    return lambda lineno, line: f"{stem}-{lineno}-{hashlib.sha256(line.strip()).hexdigest()[:12]}"


def _content_id(_lineno: int, line: bytes) -> str:
    return f"stdin-{hashlib.sha256(line.strip()).hexdigest()[:16]}"


def _parse_line(where: str, lineno: int, line: bytes, default_id: DefaultId, text: bool = False) -> Task | None:
    """The task of one line (None for a blank one); TaskError naming ``where:lineno``.
    ``text``: the line is a plain prompt, not JSON."""
    if not line.strip():
        return None
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TaskError(
            f"{where}:{lineno}: not UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1})"
        ) from None
    if text:
        item: Any = decoded.strip()
    else:
        try:
            item = json.loads(decoded)
        except json.JSONDecodeError as exc:
            raise TaskError(f"{where}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(item, dict | str):
            raise TaskError(f"{where}:{lineno}: expected a JSON object or string, got {type(item).__name__}")
    try:
        task = to_task(item if isinstance(item, dict) else {"prompt": item}, lineno)
    except TaskError as exc:
        raise TaskError(f"{where}:{lineno}: {exc}") from None
    if not isinstance(item, dict) or "id" not in item:
        task.id = default_id(lineno, line)
    return task


def _checked(
    path: Path, limit: int, seen: set[str], *, complete_only: bool = False, ids: DefaultId | None = None
) -> Iterator[Task]:
    """The tasks of ``path``; the first bad line raises (the up-front check)."""
    ids = ids or _line_ids(path.stem)
    for lineno, line in file_lines(path, limit, complete_only=complete_only):
        if isinstance(line, TaskError):
            raise line
        task = _parse_line(str(path), lineno, line, ids)
        if task is None:
            continue
        if task.id in seen:
            raise TaskError(f"{path}:{lineno}: duplicate task id {task.id!r}")
        seen.add(task.id)
        yield task


def _lenient(
    stream: TaskStream, where: str, numbered: Line, ids: DefaultId, seen: set[str], text: bool = False
) -> Task | None:
    """The task of a line met while streaming; a bad line is skipped (counted, logged)."""
    lineno, line = numbered
    try:
        if isinstance(line, TaskError):
            raise line
        task = _parse_line(where, lineno, line, ids, text)
        if task is not None and task.id in seen:
            raise TaskError(f"{where}:{lineno}: duplicate task id {task.id!r}")
    except TaskError as exc:
        stream.skip(exc)
        return None
    if task is not None:
        seen.add(task.id)
    return task


def jsonl_tasks(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> list[Task]:
    """Tasks of a JSONL file, one object (or a plain string prompt) per line; blank
    lines are skipped; a task without an ``id`` gets ``<file stem>-<line>``.

    Raises TaskError naming the file and line of the first malformed line (not JSON,
    not UTF-8, longer than ``max_line_bytes``), or if the file holds no task. A line
    over the cap is never read whole. (:func:`jsonl_stream` reads the same lazily.)
    """
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task file {path} does not exist")
    tasks = list(_checked(path, max_line_bytes, set()))
    if not tasks:
        raise TaskError(f"task file {path} holds no tasks")
    return tasks


def jsonl_stream(
    path: str | Path,
    *,
    follow: bool = False,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    idle_timeout: float | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
    check: bool = True,
) -> TaskStream:
    """The tasks of a JSONL file (the format of :func:`jsonl_tasks`), read as they are
    drawn; ``follow``: and the lines appended later, until ``idle_timeout`` seconds pass
    without one (or the consumer stops).

    Checked now: the file exists and, with ``check``, every line it holds is a task with
    an id of its own (the first bad one raises TaskError naming it; without ``follow`` a
    file with no task raises too). Lines met later that are bad are skipped and logged.

    A followed file that is rotated (truncated in place, or renamed away and replaced)
    is read again from its start, with a warning counted in the stream's ``rotations``;
    its lines without ``id`` get ``<file stem>-<line>-<hash of the line>``, so the new
    lines never take the ids of the old ones (see the module doc).
    """
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task file {path} does not exist")
    ids, where = (_placed_content_ids if follow else _line_ids)(path.stem), str(path)
    size = None
    if check:
        size = sum(1 for _ in _checked(path, max_line_bytes, set(), complete_only=follow, ids=ids))
        if size == 0 and not follow:
            raise TaskError(f"task file {path} holds no tasks")

    def read_sync(stream: TaskStream) -> Iterator[Task]:
        seen: set[str] = set()
        for numbered in file_lines(path, max_line_bytes):
            if (task := _lenient(stream, where, numbered, ids, seen)) is not None:
                yield task

    if not follow:
        return TaskStream.lazy(read_sync, size=size, name=f"task file {path}")

    async def read(stream: TaskStream) -> AsyncIterator[Task]:
        seen: set[str] = set()  # ids of what the file holds since its latest rotation
        earlier: set[str] = set()  # ids it held before: met again (a file rewritten whole), the same task

        def rotated(how: str) -> None:
            earlier.update(seen)
            seen.clear()
            stream.rotated(path, how)

        lines = follow_file(
            path, max_line_bytes, poll_interval=poll_interval, idle_timeout=idle_timeout, on_rotation=rotated
        )
        async for numbered in lines:
            if (task := _lenient(stream, where, numbered, ids, seen)) is not None and task.id not in earlier:
                yield task

    return TaskStream(read, bounded=False, name=f"task file {path} (followed)")


def jsonl_dir_stream(
    path: str | Path,
    *,
    follow: bool = False,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    idle_timeout: float | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
    check: bool = True,
) -> TaskStream:
    """The tasks of every ``*.jsonl`` file of a folder, in name order, each file in the
    format of :func:`jsonl_tasks` (a line without ``id`` is ``<file stem>-<line>``);
    ``follow``: and the files and lines added later (see
    :func:`~runtime.scheduling.streams.follow_dir`), until ``idle_timeout``.

    Checked now as :func:`jsonl_stream` checks a file; ids are unique across files.
    Without ``follow`` the files are those the folder holds now.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise TaskError(f"task folder {directory} does not exist")
    files = jsonl_files(directory)
    if not files and not follow:
        raise TaskError(f"task folder {directory} holds no *.jsonl files")
    size = None
    if check:
        seen: set[str] = set()
        size = sum(1 for file in files for _ in _checked(file, max_line_bytes, seen, complete_only=follow))
        if size == 0 and not follow:
            raise TaskError(f"task folder {directory} holds no tasks")

    def read_sync(stream: TaskStream) -> Iterator[Task]:
        seen: set[str] = set()
        for file in files:
            ids = _line_ids(file.stem)
            try:
                for numbered in file_lines(file, max_line_bytes):
                    if (task := _lenient(stream, str(file), numbered, ids, seen)) is not None:
                        yield task
            except FileNotFoundError:
                stream.skip(TaskError(f"task file {file} vanished before it was read"))

    if not follow:
        return TaskStream.lazy(read_sync, size=size, name=f"task folder {directory}")

    async def read(stream: TaskStream) -> AsyncIterator[Task]:
        seen: set[str] = set()
        lines = follow_dir(
            directory,
            max_line_bytes,
            poll_interval=poll_interval,
            idle_timeout=idle_timeout,
            on_rotation=stream.rotated,
        )
        async for file, lineno, line in lines:
            if (task := _lenient(stream, str(file), (lineno, line), _line_ids(file.stem), seen)) is not None:
                yield task

    return TaskStream(read, bounded=False, name=f"task folder {directory} (followed)")


def stdin_stream(
    *,
    format: Literal["jsonl", "text"] = "jsonl",  # the config key (shadows the builtin here only)
    ids: Literal["content", "line"] = "content",
    max_line_bytes: int = MAX_LINE_BYTES,
    source: BinaryIO | None = None,
) -> TaskStream:
    """The tasks of standard input (or ``source``), one per line, until its end: JSONL
    lines (``format="jsonl"``, as in :func:`jsonl_tasks`) or plain prompts (``"text"``).
    A line without ``id`` gets ``stdin-<hash of the line>`` (``ids="content"``: stable
    whatever the order the lines come in) or ``stdin-<line>`` (``"line"``). Read by a
    thread, so the event loop never waits on the pipe; bad lines are skipped and logged."""
    default = _content_id if ids == "content" else _line_ids("stdin")

    async def read(stream: TaskStream) -> AsyncIterator[Task]:
        seen: set[str] = set()
        async for numbered in stdin_lines(max_line_bytes, source):
            if (task := _lenient(stream, "<stdin>", numbered, default, seen, format == "text")) is not None:
                yield task

    return TaskStream(read, bounded=False, name="standard input")


# -- reasoning-gym -------------------------------------------------------------------


def _reasoning_gym_dataset(
    name: str, size: int, seed: int, config: dict[str, Any] | None
) -> tuple[Any, dict[str, Any]]:
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
    return dataset, params


def reasoning_gym_tasks(
    name: str, size: int = 100, seed: int = 0, config: dict[str, Any] | None = None
) -> Iterator[Task]:
    """Tasks of a reasoning-gym procedural dataset; scored by its own ``score_answer``.

    The dataset is created (and an unknown name or bad config raises TaskError) when
    this is called, not when the first task is drawn, so a bad source fails before the
    run starts.
    """
    dataset, params = _reasoning_gym_dataset(name, size, seed, config)
    return _reasoning_gym_entries(name, dataset, size, params)


def _reasoning_gym_entries(name: str, dataset: Any, size: int, params: dict[str, Any]) -> Iterator[Task]:
    for index in range(size):
        yield _reasoning_gym_task(name, dataset, index, params)


def _reasoning_gym_task(name: str, dataset: Any, index: int, params: dict[str, Any]) -> Task:
    entry = dataset[index]
    return Task(
        id=f"{name}-{params['seed']}-{index}",
        prompt=entry["question"],
        answer=str(entry["answer"]),
        metadata={"source": "reasoning_gym", "dataset": name, "config": params, "index": index},
    )


DRAWS_PER_TASK = 40  # a split or distinct set gives up after this many draws per task it asks for


def _reasoning_gym_split(
    name: str, size: int, seed: int, config: dict[str, Any] | None, split: Split, unique: bool
) -> list[Task]:
    """``size`` tasks of ``split`` (distinct questions if ``unique``), drawn in the dataset's
    order; a TaskError names the fields when the problem space holds too few of them."""
    draws = size * DRAWS_PER_TASK * (HELDOUT_SHARE if split == "heldout" else 1)
    dataset, params = _reasoning_gym_dataset(name, draws, seed, config)  # the verifier rebuilds it from params
    tasks: list[Task] = []
    seen: set[str] = set()
    for index in range(draws):
        task = _reasoning_gym_task(name, dataset, index, params)
        question = task.prompt or ""
        if (split != "all" and split_of(question) != split) or (unique and question in seen):
            continue
        seen.add(question)
        tasks.append(task)
        if len(tasks) == size:
            return tasks
    which = f"{'distinct ' if unique else ''}{'' if split == 'all' else split + ' '}questions"
    raise TaskError(
        f"reasoning-gym dataset {name!r}: only {len(tasks)} {which} in {draws} draws, fewer than "
        f"tasks.size={size}; lower tasks.size, set tasks.unique=false, or widen tasks.config"
    )


# -- the sources a config names ------------------------------------------------------


class TaskSource(Component):
    """Base of the task sources a config can name (``tasks: {source: ..., ...}``).

    ``build()`` returns the tasks: a list, any iterable, or a
    :class:`~runtime.scheduling.streams.TaskStream` (lazy, bounded or not), checking
    what it can up front (a missing file or an unknown dataset raises TaskError before
    the run starts)."""

    family: ClassVar[str] = "tasks"
    key: ClassVar[str] = "source"
    default_component: ClassVar[str | None] = "tiny"
    input_field: ClassVar[str | None] = None
    """The setting a TaskError from ``build`` is about (the file, the dataset name)."""
    source: str
    """Where tasks come from."""
    system: str | None = Field(None, min_length=1, max_length=20_000)
    """A system message put before every task's messages (a task with a system message
    of its own keeps it): how a chat model is told the format of its answer, e.g. one
    short step per line so that step-level search has steps to work on (see
    configs/smollm2_steps.yaml). The learner trains on the same messages."""

    @property
    def bounded(self) -> bool:
        """Whether the source ends by itself. An unbounded one (a followed file or
        folder, standard input) is streamed, never listed."""
        return True

    def build(self) -> Iterable[Task] | AsyncIterable[Task]:
        """The source's own tasks (what a subclass implements; ``system`` not applied)."""
        raise NotImplementedError

    def tasks(self) -> Iterable[Task] | AsyncIterable[Task]:
        """The tasks a run gets: :meth:`build`'s, with ``system`` applied."""
        out: Iterable[Task] | AsyncIterable[Task] = with_system(self.build(), self.system)
        return out


def with_system(tasks: Any, system: str | None) -> Any:
    """``tasks`` (a list, a :class:`TaskStream`, any iterable or async iterable), each
    with ``system`` as its first message unless it has a system message already; the
    same kind of collection back, as lazy as it came (a stream is mapped in place)."""
    if system is None:
        return tasks

    def one(task: Task) -> Task:
        messages = task.as_messages()
        if messages and messages[0].get("role") == "system":
            return task
        return dataclasses.replace(task, messages=[{"role": "system", "content": system}, *messages])

    if isinstance(tasks, list):
        return [one(t) for t in tasks]
    if isinstance(tasks, TaskStream):
        return tasks.map(one)
    if isinstance(tasks, AsyncIterable):

        async def mapped() -> AsyncIterator[Task]:
            async for task in tasks:
                yield one(task)

        return mapped()
    return map(one, tasks)


class _JsonlFiles(TaskSource):
    """What the JSONL file sources share: the line cap, following, the up-front check."""

    input_field = "path"
    path: str
    """The JSONL file, or the folder of JSONL files."""
    max_line_bytes: int = Field(MAX_LINE_BYTES, ge=1)
    """Longest line accepted; a longer one is an error naming the line."""
    follow: bool = False
    """Keep reading what is appended (like ``tail -f``) until ``idle_timeout`` or a
    signal; a last line without its newline is read once complete. A followed folder
    also reads the files that appear later (a file is left for the next one in name
    order once that one exists). A followed file rotated under the run (truncated in
    place, or renamed away and replaced) is read again from its start, with a warning;
    its lines without ``id`` get ``<file stem>-<line>-<hash of the line>``, so new lines
    never take the ids of the old ones."""
    poll_interval: float = Field(DEFAULT_POLL_INTERVAL, gt=0)
    """Seconds between two looks for new lines or files."""
    idle_timeout: float | None = Field(None, gt=0)
    """End a followed source after this many seconds without a new byte (null: run until
    a signal)."""
    check: bool = True
    """Check every line there is before the run starts (one streaming pass; the first bad
    line is an error naming it); false: start at once. Bad lines met while running
    (appended later, or not checked) are logged and skipped."""

    @property
    def bounded(self) -> bool:
        return not self.follow

    def _options(self) -> dict[str, Any]:
        return {
            "follow": self.follow,
            "poll_interval": self.poll_interval,
            "idle_timeout": self.idle_timeout,
            "max_line_bytes": self.max_line_bytes,
            "check": self.check,
        }


class JsonlTasks(_JsonlFiles):
    """Tasks of a JSONL file, one object per line, read lazily; ``follow``: as it grows
    (see :func:`jsonl_stream`)."""

    source: Literal["jsonl"] = "jsonl"

    def build(self) -> TaskStream:
        return jsonl_stream(self.path, **self._options())


class JsonlDirTasks(_JsonlFiles):
    """Tasks of every ``*.jsonl`` file of a folder, in name order (a task without ``id``
    in ``a.jsonl`` gets ``a-<line>``); ``follow``: and the files added later (see
    :func:`jsonl_dir_stream`)."""

    source: Literal["jsonl_dir"] = "jsonl_dir"

    def build(self) -> TaskStream:
        return jsonl_dir_stream(self.path, **self._options())


class StdinTasks(TaskSource):
    """Tasks from standard input, one per line, until its end (see :func:`stdin_stream`)."""

    source: Literal["stdin"] = "stdin"
    format: Literal["jsonl", "text"] = "jsonl"
    """Each line is a JSONL task (an object or a string), or a plain prompt (text)."""
    ids: Literal["content", "line"] = "content"
    """Id of a line without one: ``stdin-<hash of the line>`` (content: the same line
    is the same task after a restart, whatever came before it) or ``stdin-<line>``."""
    max_line_bytes: int = Field(MAX_LINE_BYTES, ge=1)
    """Longest line accepted; a longer one is skipped, logged with its line number."""

    @property
    def bounded(self) -> bool:
        return False

    def build(self) -> TaskStream:
        return stdin_stream(format=self.format, ids=self.ids, max_line_bytes=self.max_line_bytes)


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
    split: Split = "all"
    """Part of the problem space: train (nine tenths), heldout (the tenth a hash of the
    question puts there; never in a train set, whatever the seeds) or all."""
    unique: bool = False
    """Skip a question met before, so that the set holds size distinct problems."""

    def build(self) -> TaskStream:
        name, size = self.name, self.size
        if self.split != "all" or self.unique:
            chosen = _reasoning_gym_split(name, size, self.seed, self.config, self.split, self.unique)
            return TaskStream.lazy(lambda _stream: iter(chosen), size=size, name=f"reasoning-gym dataset {name}")
        dataset, params = _reasoning_gym_dataset(self.name, self.size, self.seed, self.config)
        return TaskStream.lazy(
            lambda _stream: _reasoning_gym_entries(name, dataset, size, params),
            size=size,
            name=f"reasoning-gym dataset {name}",
        )
