"""Continuous export: each finished episode, once the store has committed it, appended
to a JSONL file as one line, for a trainer that reads the file elsewhere (``tail -f``,
or a followed ``jsonl`` source of its own).

::

    async with rt:
        with EpisodeExport("episodes.jsonl", rt.run_id) as export:
            export.open(rt.store)              # reconcile with the store (in a thread)
            async for episode in rt.stream(tasks):
                export.write(episode)

Design decisions:
- A line is an episode's full JSON, the format of ``searchlearn export``
  (``runtime.core.types.episode_from_json`` reads it back).
- Exactly once across kills, with no new state in the store: the file is its own
  record. An episode is stored, then exported; a process killed between the two has
  stored episodes the file lacks, and one killed in mid-write leaves a torn last line.
  So :meth:`EpisodeExport.open` reconciles: a last line without its newline is cut off,
  the keys (task id, sample) and status of the run's lines are read, and the stored
  episodes the file lacks (those the filter takes) are appended in the order they
  finished. From then on :meth:`~EpisodeExport.write` appends an episode whose key the
  file lacks. However often a run is killed and restarted, the file holds each of its
  stored episodes once.
- One exception: with ``scheduler.retry_failed`` an exported failed episode that ran
  again and was stored ok is appended again; a reader keeps the last line of a key.
- One writer per file: open it once the runtime holds the run's lease (inside
  ``async with rt``). Lines of other runs are left as they are.
- Each line is written whole and flushed: it survives the process (it is not fsynced;
  after a power cut the next start appends what the file lost).
- Reconciling reads the file once (a JSON parse per line) and the store's index of the
  run (no episode data but what is missing); memory is one key per exported episode.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Literal

from runtime.core.errors import StoreError
from runtime.core.log import get_logger
from runtime.core.types import Episode, episode_to_json
from runtime.scheduling.store import EpisodeStore

__all__ = ["EpisodeExport", "ExportFilter"]

log = get_logger("searchlearn.export")

ExportFilter = Literal["all", "ok", "solved"]
"""Which episodes are exported: all, those that did not fail, those with reward >= 1."""

_TAIL_CHUNK = 1 << 16


def _takes(only: ExportFilter, status: str, reward: float | None) -> bool:
    if only == "all":
        return True
    if only == "ok":
        return status == "ok"
    return status == "ok" and reward is not None and reward >= 1.0


class EpisodeExport:
    """Appends a run's committed episodes to a JSONL file, each once (see the module doc)."""

    def __init__(self, path: str | os.PathLike[str], run_id: str, *, only: ExportFilter = "all") -> None:
        self.path = Path(path)
        self.run_id = run_id
        self.only = only
        self.written = 0
        """Lines appended by this process (reconciled ones included)."""
        self.reconciled = 0
        """Stored episodes the file lacked when it was opened, appended then."""
        self.cut_bytes = 0
        """Bytes of a torn last line cut off when the file was opened."""
        self._exported: dict[tuple[str, int], bool] = {}  # key -> its exported line is ok
        self._file: BinaryIO | None = None

    def __enter__(self) -> EpisodeExport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self, store: EpisodeStore | None = None) -> int:
        """Read what the file holds, cut a torn last line, open it for appending and
        append the episodes of the run ``store`` holds that the file lacks; returns how
        many. Blocking (reads the file and the store): call it in a worker thread."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_file():
                self._read()
            self._file = self.path.open("ab")
        except OSError as exc:
            raise StoreError(f"cannot write export file {self.path}: {exc.strerror or exc}") from exc
        if store is not None:
            missing = [
                (task_id, sample)
                for task_id, sample, status, reward in store.episode_index(self.run_id)
                if self._wanted((task_id, sample), status, reward)
            ]
            for episode in store.episodes_for(self.run_id, missing):
                self._append(episode)
            self.reconciled = len(missing)
        if self.reconciled or self.cut_bytes:
            log.info("export reconciled", path=str(self.path), appended=self.reconciled, cut_bytes=self.cut_bytes)
        return self.reconciled

    def _read(self) -> None:
        with self.path.open("rb+") as f:
            self.cut_bytes = _cut_torn_tail(f)
            f.seek(0)
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                    run_id, key, status = data["run_id"], (str(data["task"]["id"]), int(data["sample"])), data["status"]
                except (ValueError, KeyError, TypeError) as exc:
                    raise StoreError(
                        f"export file {self.path}:{lineno} is not an episode line ({type(exc).__name__}: {exc}); "
                        "move the file away or cut that line"
                    ) from None
                if run_id == self.run_id:
                    self._exported[key] = status == "ok"  # the last line of a key wins

    def _wanted(self, key: tuple[str, int], status: str, reward: float | None) -> bool:
        """Whether an episode of ``key`` belongs in the file and is not there yet."""
        if not _takes(self.only, status, reward):
            return False
        prior = self._exported.get(key)
        return prior is None or (not prior and status == "ok")

    def write(self, episode: Episode) -> bool:
        """Append ``episode`` (committed to the store already) unless the filter leaves
        it out or the file holds it; returns whether it was appended."""
        if self._file is None:
            raise RuntimeError("EpisodeExport.open() first")
        key = (episode.task.id, episode.sample)
        if not self._wanted(key, episode.status, episode.reward):
            return False
        self._append(episode)
        return True

    def _append(self, episode: Episode) -> None:
        assert self._file is not None
        try:
            self._file.write((episode_to_json(episode) + "\n").encode("utf-8"))
            self._file.flush()
        except OSError as exc:
            self._abandon()  # its buffer would fail again on close: the error is said once
            raise StoreError(f"cannot write export file {self.path}: {exc.strerror or exc}") from exc
        self._exported[(episode.task.id, episode.sample)] = episode.status == "ok"
        self.written += 1

    def close(self) -> None:
        f, self._file = self._file, None
        if f is None:
            return
        try:
            f.close()
        except OSError as exc:
            raise StoreError(f"cannot write export file {self.path}: {exc.strerror or exc}") from exc

    def _abandon(self) -> None:
        """Drop the file after a failed write (a torn last line is cut when it is reopened)."""
        f, self._file = self._file, None
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()

    def statistics(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "exported": len(self._exported),
            "written": self.written,
            "reconciled": self.reconciled,
            "cut_bytes": self.cut_bytes,
        }


def _cut_torn_tail(f: BinaryIO) -> int:
    """Truncate a file that does not end in a newline after its last newline (a line
    torn by a kill); returns the bytes cut."""
    size = f.seek(0, os.SEEK_END)
    end = size
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        f.seek(start)
        chunk = f.read(end - start)
        at = chunk.rfind(b"\n")
        if at >= 0:
            keep = start + at + 1
            break
        end = start
    else:
        keep = 0
    if keep < size:
        f.truncate(keep)
    return size - keep
