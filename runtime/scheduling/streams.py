"""Task streams: tasks read as they are drawn, from a file that may still grow, a folder
of files or standard input (the sources themselves are in :mod:`runtime.scheduling.tasks`).

A streaming source's ``build()`` returns a :class:`TaskStream`: an async iterable of
tasks (a bounded one is a plain iterable too) that says whether it ends by itself and,
when known, how many tasks it holds, so the CLI's progress bar shows a total only then.

Design decisions:
- Lazy: nothing holds the tasks. What a stream keeps per task drawn is its id (to
  refuse a duplicate); a file is read a line at a time, and a line is assembled by
  :class:`LineCutter`, which never holds more than ``max_line_bytes + 1`` bytes of it:
  an over-long line is refused naming it and skipped to its newline, so line numbers
  stay the file's (they are the ids of tasks without one).
- A followed file is polled every ``poll_interval`` seconds, not watched (inotify):
  portable, and a poll of a file at its end is one ``read()``. A last line without its
  newline is not read until it is complete. After ``idle_timeout`` seconds without a
  new byte the stream ends; an unfinished last line is then left unread, with a warning.
- A followed file may be rotated under the reader, and then its lines start again at
  1: truncated in place (logrotate's ``copytruncate``: seen as a size below what was
  read, or first bytes that changed, so a file cut and refilled past the old size
  between two polls is caught too) or renamed away and replaced (logrotate's default:
  seen as a new inode at the path; the old file is read to its end first, its last line
  whole). Either way the reader says so (a warning, :attr:`TaskStream.rotations`) and
  reads what the path holds now from its start, never the old file forever. A line
  cut off by a truncation is lost (the rotated copy has it). Ids that do not depend on
  line numbers are the task source's part (:mod:`runtime.scheduling.tasks`).
- A followed folder reads its ``*.jsonl`` files in name order; at the end of the
  current file it waits there until a file that sorts later appears, then finishes the
  current one (its last line counts even without a newline) and moves on. So a
  producer writes one file at a time, or writes each file whole and renames it in.
- A bad line met while streaming (appended after the source was checked, or any line
  with ``check: false``) cannot stop the run before it starts, and must not end it: it
  is logged (a warning with the same ``file:line: ...`` message the up-front check
  raises) and skipped, and counted in :attr:`TaskStream.skipped`. It is never stored,
  so a restarted run meets it again.
- Standard input is read by a daemon thread that hands lines to the event loop through
  a bounded stream: a blocking read of a pipe cannot be cancelled, and an anyio worker
  thread left blocked in one would keep the process from exiting at shutdown.
- Shutdown: a stream waits in ``anyio.sleep`` or a stream receive, so cancelling its
  consumer (the scheduler stops admission on SIGTERM) ends it at once.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sized
from contextlib import suppress
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import anyio.from_thread
import anyio.lowlevel

from runtime.core.errors import TaskError
from runtime.core.log import get_logger
from runtime.core.types import Task

__all__ = [
    "DEFAULT_POLL_INTERVAL",
    "Line",
    "LineCutter",
    "TaskStream",
    "file_lines",
    "follow_dir",
    "follow_file",
    "jsonl_files",
    "stdin_lines",
    "task_count",
]

log = get_logger("searchlearn.tasks")

DEFAULT_POLL_INTERVAL = 0.5  # seconds between two looks at a followed file's end
_STDIN_BUFFER = 64  # lines read ahead of the consumer

Line = tuple[int, bytes | TaskError]
"""A numbered line of an input, or the error that line is (too long)."""


class TaskStream:
    """Tasks a source reads as they are drawn (see the module doc).

    ``read(stream)`` makes the async iterator of one pass; ``read_sync(stream)``, given
    only for a bounded stream, the plain iterator (``list(stream)`` works then). Every
    pass reads the source again from its start.
    """

    def __init__(
        self,
        read: Callable[[TaskStream], AsyncIterator[Task]],
        *,
        bounded: bool,
        size: int | None = None,
        read_sync: Callable[[TaskStream], Iterator[Task]] | None = None,
        name: str = "task stream",
    ) -> None:
        self.bounded = bounded
        """Whether the stream ends by itself (a file read once); False for one that
        follows a file, a folder or a pipe."""
        self.size = size
        """Tasks the source held when it was checked, if known (a bounded source)."""
        self.skipped = 0
        """Bad lines skipped while streaming (each logged with its file and line)."""
        self.rotations = 0
        """Times a followed file was truncated or replaced under the reader (each logged)."""
        self.name = name
        self._read = read
        self._read_sync = read_sync
        self._maps: list[Callable[[Task], Task]] = []

    @classmethod
    def lazy(
        cls, read_sync: Callable[[TaskStream], Iterator[Task]], *, size: int | None = None, name: str = "task stream"
    ) -> TaskStream:
        """A bounded stream over a plain iterator (made anew for every pass)."""

        async def read(stream: TaskStream) -> AsyncIterator[Task]:
            for task in read_sync(stream):
                yield task

        return cls(read, bounded=True, size=size, read_sync=read_sync, name=name)

    def map(self, fn: Callable[[Task], Task]) -> TaskStream:
        """Apply ``fn`` to every task this stream yields from now on (in place, so its
        size and skip count stay its own); returns the stream."""
        self._maps.append(fn)
        return self

    def _mapped(self, task: Task) -> Task:
        for fn in self._maps:
            task = fn(task)
        return task

    def __aiter__(self) -> AsyncIterator[Task]:
        if not self._maps:
            return self._read(self)
        return self._amapped()

    async def _amapped(self) -> AsyncIterator[Task]:
        async for task in self._read(self):
            yield self._mapped(task)

    def __iter__(self) -> Iterator[Task]:
        if self._read_sync is None:
            raise TypeError(
                f"{self.name} is unbounded (it follows its input); iterate it with `async for`, "
                "or hand it to Runtime.stream"
            )
        tasks = self._read_sync(self)
        return map(self._mapped, tasks) if self._maps else tasks

    def skip(self, error: TaskError) -> None:
        """Count and log a bad line met while streaming."""
        self.skipped += 1
        log.warning("task line skipped", error=str(error), skipped=self.skipped)

    def rotated(self, file: Path, how: str) -> None:
        """Count and log a followed file truncated or replaced under the reader."""
        self.rotations += 1
        log.warning(
            "task file rotated; reading it again from its start",
            file=str(file),
            how=how,
            rotations=self.rotations,
        )

    def statistics(self) -> dict[str, Any]:
        return {"bounded": self.bounded, "size": self.size, "skipped": self.skipped, "rotations": self.rotations}

    def __repr__(self) -> str:
        return f"TaskStream({self.name}, bounded={self.bounded}, size={self.size})"


def task_count(tasks: Any) -> int | None:
    """How many tasks ``tasks`` holds, if that is known without reading them: a list's
    length, a bounded stream's checked size; None for an unbounded or unknown source."""
    if isinstance(tasks, TaskStream):
        return tasks.size if tasks.bounded else None
    if isinstance(tasks, Sized):
        return len(tasks)
    return None


class LineCutter:
    """Assembles lines from ``readline(cutter.room)`` chunks, holding at most
    ``limit + 1`` bytes of one line (see the module doc)."""

    def __init__(self, where: str, limit: int) -> None:
        self.where = where
        self.limit = limit
        self.lineno = 0
        self._partial = b""
        self._skipping = False  # inside an over-long line: discard up to its newline

    @property
    def room(self) -> int:
        """Bytes to ask ``readline`` for next."""
        return self.limit + 1 - len(self._partial)

    @property
    def pending(self) -> bool:
        """Whether an unfinished line has been read in part."""
        return bool(self._partial)

    def feed(self, chunk: bytes) -> Line | None:
        """The line ``chunk`` completes (or the error an over-long one is), else None."""
        if self._skipping:
            self._skipping = not chunk.endswith(b"\n")
            return None
        line = self._partial + chunk if self._partial else chunk
        if chunk.endswith(b"\n"):
            self._partial = b""
            self.lineno += 1
            return self.lineno, line
        if len(line) > self.limit:
            self._partial, self._skipping = b"", True
            self.lineno += 1
            return self.lineno, TaskError(
                f"{self.where}:{self.lineno}: line longer than {self.limit:,} bytes (tasks.max_line_bytes)"
            )
        self._partial = line
        return None

    def end(self) -> Line | None:
        """At the end of the input: its last line, if it has no newline."""
        self._skipping = False
        if not self._partial:
            return None
        line, self._partial = self._partial, b""
        self.lineno += 1
        return self.lineno, line


def file_lines(path: Path, limit: int, *, complete_only: bool = False) -> Iterator[Line]:
    """The lines of ``path`` as it is now; ``complete_only`` leaves out a last line
    without its newline (it may still be being written)."""
    cut = LineCutter(str(path), limit)
    with path.open("rb") as f:
        while chunk := f.readline(cut.room):
            if (got := cut.feed(chunk)) is not None:
                yield got
    if not complete_only and (got := cut.end()) is not None:
        yield got


class _Idle:
    """Seconds since the last new byte, against an optional timeout."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()

    @property
    def expired(self) -> bool:
        return self.timeout is not None and time.monotonic() - self.last >= self.timeout


_HEAD_BYTES = 4096  # bytes of a followed file's start compared at each poll


class _Opened:
    """A followed file as opened: its identity and its first bytes, to tell when the
    path has been truncated or replaced since (see :func:`rotation`)."""

    def __init__(self, f: BinaryIO) -> None:
        st = os.fstat(f.fileno())
        self.f = f
        self.identity = (st.st_dev, st.st_ino)
        self.head = b""

    def saw(self, position: int) -> None:
        """Remember the file's first bytes, up to what has been read (unless they no
        longer start as they did: the next look at the file calls that a truncation)."""
        if len(self.head) < min(position, _HEAD_BYTES):
            head = os.pread(self.f.fileno(), min(position, _HEAD_BYTES), 0)
            if head.startswith(self.head):
                self.head = head

    def rotation(self, path: Path) -> str | None:
        """How the file at ``path`` changed under the reader: ``replaced`` (renamed away
        and a new file put there), ``truncated`` (cut, perhaps refilled: its size fell
        under what was read, or its first bytes changed), or None."""
        try:
            st = os.stat(path)
        except FileNotFoundError:  # renamed away, no new file yet: the writer may still append to the old one
            return None
        if (st.st_dev, st.st_ino) != self.identity:
            return "replaced"
        if st.st_size < self.f.tell():
            return "truncated"
        if self.head and os.pread(self.f.fileno(), len(self.head), 0) != self.head:
            return "truncated"
        return None


async def follow_file(
    path: Path,
    limit: int,
    *,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    idle_timeout: float | None = None,
    move_on: Callable[[], bool] | None = None,
    idle: _Idle | None = None,
    on_rotation: Callable[[str], None] | None = None,
) -> AsyncIterator[Line]:
    """The lines of ``path`` as it grows (``tail -f``), until ``idle_timeout`` seconds
    pass without a new byte, or, at the file's end, ``move_on()`` says the file is done
    (then a last line without its newline is read as complete).

    A file rotated under the reader (see the module doc) is read again from the start of
    what the path holds now, its lines numbered from 1: ``on_rotation(how)`` is called
    first (``truncated`` or ``replaced``)."""
    idle = idle or _Idle(idle_timeout)
    cut = LineCutter(str(path), limit)
    opened = _Opened(path.open("rb"))
    try:
        while True:
            f = opened.f
            how = opened.rotation(path)  # before reading: a refilled file is not read from the old offset
            if how == "replaced":
                try:
                    fresh = path.open("rb")
                except FileNotFoundError:  # gone again since: look at the next poll
                    how = None
            if how is not None:
                if how == "replaced":  # the old file is done: its last line counts whole
                    opened = _Opened(fresh)
                    try:
                        while chunk := f.readline(cut.room):
                            if (got := cut.feed(chunk)) is not None:
                                yield got
                        if (got := cut.end()) is not None:
                            yield got
                    finally:
                        f.close()
                else:  # the same file, cut: read it again from its start
                    if cut.pending:
                        log.warning("unfinished last line lost to truncation", file=str(path), line=cut.lineno + 1)
                    f.seek(0)
                    opened = _Opened(f)
                if on_rotation is not None:
                    on_rotation(how)
                idle.touch()
                cut = LineCutter(str(path), limit)
                continue
            while chunk := f.readline(cut.room):
                idle.touch()
                if (got := cut.feed(chunk)) is not None:
                    yield got
            opened.saw(f.tell())
            if move_on is not None and move_on():
                idle.touch()  # a later file is news too
                while chunk := f.readline(cut.room):  # what came before the later file did
                    if (got := cut.feed(chunk)) is not None:
                        yield got
                if (got := cut.end()) is not None:
                    yield got
                return
            if idle.expired:
                if cut.pending:
                    log.warning("unfinished last line left unread", file=str(path), line=cut.lineno + 1)
                return
            await anyio.sleep(poll_interval)
    finally:
        opened.f.close()


def jsonl_files(directory: Path, exclude: set[str] | frozenset[str] = frozenset()) -> list[Path]:
    """The ``*.jsonl`` files of ``directory`` in name order, but those named in ``exclude``."""
    return sorted(p for p in directory.glob("*.jsonl") if p.name not in exclude and p.is_file())


async def follow_dir(
    directory: Path,
    limit: int,
    *,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    idle_timeout: float | None = None,
    on_rotation: Callable[[Path, str], None] | None = None,
) -> AsyncIterator[tuple[Path, int, bytes | TaskError]]:
    """The lines of every ``*.jsonl`` file of ``directory``, in name order, files that
    appear later included (see the module doc), until ``idle_timeout`` seconds pass
    without a new byte; ``on_rotation(file, how)`` as for :func:`follow_file`."""
    finished: set[str] = set()
    idle = _Idle(idle_timeout)
    while True:
        pending = jsonl_files(directory, finished)
        if not pending:
            if idle.expired:
                return
            await anyio.sleep(poll_interval)
            continue
        current = pending[0]

        def later_file(current: Path = current) -> bool:
            return any(p.name > current.name for p in jsonl_files(directory, finished))

        try:
            rotated = None if on_rotation is None else functools.partial(on_rotation, current)
            async for lineno, line in follow_file(
                current, limit, poll_interval=poll_interval, move_on=later_file, idle=idle, on_rotation=rotated
            ):
                yield current, lineno, line
        except FileNotFoundError:
            log.warning("task file vanished before it was read", file=str(current))
        if idle.expired:
            return
        finished.add(current.name)


async def stdin_lines(limit: int, source: BinaryIO | None = None) -> AsyncIterator[Line]:
    """The lines of standard input (or ``source``, a binary file) until its end, read by
    a daemon thread (see the module doc); a last line without its newline counts."""
    source = source if source is not None else sys.stdin.buffer
    send, receive = anyio.create_memory_object_stream[Any](_STDIN_BUFFER)
    token = anyio.lowlevel.current_token()
    cut = LineCutter("<stdin>", limit)  # used by the thread only

    def pump() -> None:
        try:
            while chunk := source.readline(cut.room):
                if (got := cut.feed(chunk)) is not None:
                    anyio.from_thread.run(send.send, got, token=token)
            if (got := cut.end()) is not None:
                anyio.from_thread.run(send.send, got, token=token)
        except OSError as exc:
            with suppress(Exception):
                anyio.from_thread.run(send.send, exc, token=token)
        except Exception:  # the reader or the event loop is gone: nobody to hand lines to
            pass
        finally:
            with suppress(Exception):
                anyio.from_thread.run_sync(send.close, token=token)

    with receive:
        threading.Thread(target=pump, name="searchlearn-stdin", daemon=True).start()
        async for item in receive:
            if isinstance(item, OSError):
                raise TaskError(f"<stdin>: cannot be read: {item}")
            yield item
