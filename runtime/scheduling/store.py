"""Durable episode store: one SQLite file in WAL mode, one row per (run, task, sample).

Design decisions:
- The primary key ``(run_id, task_id, sample)`` makes "exactly once" a property of the
  file: a restarted run skips the keys already stored, and a write of a key already
  present is ignored, so a run killed with SIGKILL and restarted neither loses nor
  duplicates an episode (an episode is only "done" once its row is committed).
- Writes arrive in batches from the scheduler and commit in a worker thread, one
  transaction per batch, so the event loop never waits on the disk.
- Failed episodes are stored like any other, with their errors; ``retry_failed``
  makes a restarted run produce them again (the new row replaces the failed one).
- Rows keep the episode's full JSON plus the columns summaries need.
- A learning run also stores its evaluation curve (one row per evaluated policy
  version: episodes consumed, wall time, metrics as JSON) next to its episodes.

Faults (the store is the ``store`` boundary of :mod:`runtime.core.errors`; the
translation of sqlite errors into one-line :class:`StoreError` messages, the checks of a
file on open and the rule for a live lease are in :mod:`runtime.scheduling.store_faults`):
- A programming error (``sqlite3.ProgrammingError``) stays a traceback; every other
  sqlite3 error becomes a StoreError naming the file, what happened and what to do.
- Lock contention is waited out: sqlite's busy handler waits up to a short slice, and
  every operation is retried with exponential backoff until ``lock_timeout`` seconds
  have passed (a busy handler alone misses the cases where SQLite returns BUSY at once).
- A failed transaction is rolled back only if it is still open (SQLite already rolled
  back a transaction that hit "disk full"), so the rollback never hides the real error.
- Opening an existing file checks it before any work starts (``check=False`` skips
  this): its header, then ``PRAGMA quick_check``, or above ``FULL_CHECK_BYTES`` only
  what resuming reads. ``PRAGMA cell_size_check`` makes SQLite check each page's cells
  as it reads it.
- One process per run: a ``leases`` row (owner token, pid, host, heartbeat time) per
  running run id. :meth:`EpisodeStore.acquire_run` takes it before the run spends
  anything; another owner is refused while its lease is live. A lease is free once its
  heartbeat is older than ``stale_after`` or, on this host, once its process is gone (a
  run killed with SIGKILL and restarted at once resumes). Call :meth:`~EpisodeStore.heartbeat`
  at least every ``stale_after / 3`` seconds (it writes at most every ``stale_after / 10``
  seconds, so calling it after every batch is cheap), and :meth:`~EpisodeStore.release_run`
  at the end. Leases guard against spending twice; exactly-once storage does not
  depend on them (the primary key does that).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from runtime.core.errors import StoreError
from runtime.core.types import Episode, episode_from_json, episode_to_json
from runtime.scheduling.files import written_whole
from runtime.scheduling.store_faults import (
    HOST,
    LIVE_OWNERS,
    Lease,
    check_header,
    check_pages,
    is_locked,
    lease_held,
    one_line,
    os_reason,
    store_error,
)

__all__ = ["EpisodeStore", "RunSummary"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    config TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS episodes (
    run_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    sample INTEGER NOT NULL,
    status TEXT NOT NULL,
    reward REAL,
    error_type TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost REAL NOT NULL,
    wall_time REAL NOT NULL,
    finished_at REAL NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, task_id, sample)
);
CREATE TABLE IF NOT EXISTS curve (
    run_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    episodes INTEGER NOT NULL,
    wall_time REAL NOT NULL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (run_id, version)
);
CREATE TABLE IF NOT EXISTS leases (
    run_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    heartbeat REAL NOT NULL
);
"""

RunSummary = dict[str, Any]
T = TypeVar("T")

FULL_CHECK_BYTES = 128 << 20  # a bigger store gets the cheap check on open (see above)

LOCK_TIMEOUT = 30.0  # seconds a store operation waits out another process's lock
STALE_AFTER = 60.0  # seconds without a heartbeat after which a run's lease is free
_BUSY_SLICE = 1.0  # seconds sqlite's own busy handler waits inside one attempt
_MAX_BACKOFF = 1.0


class EpisodeStore:
    """A SQLite episode store. Thread-safe; use one per process and file.

    ``lock_timeout``: seconds an operation waits for another process's lock before a
    :class:`StoreError`. ``check``: check an existing file on open, and refuse a
    damaged one before any work starts.
    """

    def __init__(self, path: str | os.PathLike[str], *, lock_timeout: float = LOCK_TIMEOUT, check: bool = True) -> None:
        if lock_timeout < 0:
            raise ValueError(f"lock_timeout must be >= 0, got {lock_timeout}")
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self._token = uuid.uuid4().hex
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()
        existing = False
        if str(path) != ":memory:":
            if self.path.is_dir():
                raise StoreError(f"cannot open store {self.path}: it is a folder, not a file")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot open store {self.path}: {os_reason(exc, self.path)}") from exc
            existing = check and check_header(self.path)
        try:
            self._db = sqlite3.connect(
                str(path), timeout=min(lock_timeout, _BUSY_SLICE), check_same_thread=False, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise store_error(exc, self.path, "opening it", self.lock_timeout) from exc
        try:
            with self._lock:
                self._retry("opening it", self._open, existing)
        except BaseException:
            self._db.close()
            raise
        LIVE_OWNERS.add(self._token)
        weakref.finalize(self, LIVE_OWNERS.discard, self._token)

    def _open(self, check: bool) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA cell_size_check=ON")  # a damaged page fails when read, not later
        if check:
            check_pages(self._db, self.path, FULL_CHECK_BYTES)
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Release this store's leases (best effort) and close the file."""
        with self._lock:
            for run_id in self._leases:
                with suppress(sqlite3.Error):
                    self._db.execute("DELETE FROM leases WHERE run_id = ? AND owner = ?", (run_id, self._token))
            self._leases.clear()
            LIVE_OWNERS.discard(self._token)
            self._db.close()

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _retry(self, doing: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, retried with exponential backoff while another process holds the
        lock, for ``lock_timeout`` seconds in all; any sqlite error becomes a StoreError."""
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.01
        while True:
            try:
                return fn(*args)
            except sqlite3.ProgrammingError:
                raise  # a bug (a closed store, a bad statement), not a fault of the file
            except sqlite3.Error as exc:
                if not is_locked(exc) or time.monotonic() + delay > deadline:
                    raise store_error(exc, self.path, doing, self.lock_timeout) from exc
            time.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF)

    def _run(self, doing: str, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            return self._retry(doing, fn, *args)

    def _query(self, doing: str, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return self._run(doing, lambda: self._db.execute(sql, params).fetchall())

    def _execute(self, doing: str, sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
        return self._run(doing, self._db.execute, sql, params)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """A write transaction; rolled back on error only if SQLite has not already done so
        (after "disk full" it has, and a second rollback would hide the real error)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                with suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise

    def _decode(self, run_id: str, load: Callable[[str], T], text: str) -> T:
        try:
            return load(text)
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(
                f"store {self.path} holds an unreadable row of run {run_id!r} ({one_line(exc)}); "
                "restore it or start a new store"
            ) from exc

    # -- runs and episodes ---------------------------------------------------------------

    def register_run(self, run_id: str, config: dict[str, Any]) -> None:
        row = (run_id, time.time(), json.dumps(config, default=str))
        self._execute(f"registering run {run_id!r}", "INSERT OR IGNORE INTO runs VALUES (?, ?, ?)", row)

    def run_config(self, run_id: str) -> dict[str, Any] | None:
        rows = self._query(f"reading run {run_id!r}", "SELECT config FROM runs WHERE run_id = ?", (run_id,))
        return self._decode(run_id, json.loads, rows[0][0]) if rows else None

    def runs(self) -> list[str]:
        rows = self._query("listing runs", "SELECT DISTINCT run_id FROM episodes ORDER BY run_id")
        return [r[0] for r in rows]

    def done_keys(self, run_id: str, include_failed: bool = True) -> set[tuple[str, int]]:
        """``(task_id, sample)`` of every stored episode of the run."""
        sql = "SELECT task_id, sample FROM episodes WHERE run_id = ?"
        if not include_failed:
            sql += " AND status = 'ok'"
        return {(t, s) for t, s in self._query(f"reading run {run_id!r}", sql, (run_id,))}

    def write_many(
        self, episodes: Iterable[Episode], replace_failed: bool = False, texts: Sequence[str] | None = None
    ) -> int:
        """Store episodes in one transaction; returns how many rows were new. ``texts``,
        when given, are the episodes' JSON already encoded (by :func:`episode_to_json`,
        e.g. on the rollout worker that ran them), stored as they are."""
        episodes = list(episodes)
        if texts is None:
            texts = [episode_to_json(ep) for ep in episodes]
        rows = [
            (
                ep.run_id,
                ep.task.id,
                ep.sample,
                ep.status,
                ep.reward,
                ep.errors[0].type if ep.errors else None,
                ep.usage.prompt_tokens,
                ep.usage.completion_tokens,
                ep.usage.cost,
                ep.usage.wall_time,
                ep.finished_at or time.time(),
                text,
            )
            for ep, text in zip(episodes, texts, strict=True)
        ]

        def write() -> int:
            before = self._db.total_changes
            with self._transaction():
                if replace_failed:
                    self._db.executemany(
                        "DELETE FROM episodes WHERE run_id = ? AND task_id = ? AND sample = ? AND status = 'failed'",
                        [r[:3] for r in rows],
                    )
                    before = self._db.total_changes
                self._db.executemany("INSERT OR IGNORE INTO episodes VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            return self._db.total_changes - before

        return self._run(f"writing {len(rows)} episodes", write) if rows else 0

    def count(self, run_id: str) -> int:
        rows = self._query(f"reading run {run_id!r}", "SELECT COUNT(*) FROM episodes WHERE run_id = ?", (run_id,))
        return int(rows[0][0])

    def episodes(self, run_id: str) -> Iterator[Episode]:
        """Every stored episode of the run, in the order they finished."""
        rows = self._query(
            f"reading run {run_id!r}",
            "SELECT data FROM episodes WHERE run_id = ? ORDER BY finished_at, rowid",
            (run_id,),
        )
        for (data,) in rows:
            yield self._decode(run_id, episode_from_json, data)

    def episode_index(self, run_id: str) -> list[tuple[str, int, str, float | None]]:
        """``(task_id, sample, status, reward)`` of every stored episode of the run, in
        the order they finished; no episode data is read."""
        return [
            (t, int(s), status, reward)
            for t, s, status, reward in self._query(
                f"reading run {run_id!r}",
                "SELECT task_id, sample, status, reward FROM episodes WHERE run_id = ? ORDER BY finished_at, rowid",
                (run_id,),
            )
        ]

    def episodes_for(self, run_id: str, keys: Iterable[tuple[str, int]], chunk: int = 256) -> Iterator[Episode]:
        """The stored episodes of ``keys`` (``(task_id, sample)``), in the order given, read
        ``chunk`` at a time; a key not stored is left out."""
        sql = "SELECT data FROM episodes WHERE run_id = ? AND task_id = ? AND sample = ?"

        def read(part: list[tuple[str, int]]) -> list[str]:
            rows = (self._db.execute(sql, (run_id, t, s)).fetchone() for t, s in part)
            return [row[0] for row in rows if row is not None]

        keys = list(keys)
        for start in range(0, len(keys), chunk):
            for data in self._run(f"reading run {run_id!r}", read, keys[start : start + chunk]):
                yield self._decode(run_id, episode_from_json, data)

    def export_jsonl(self, run_id: str, path: str | Path) -> int:
        """Write the run's episodes to ``path``, one JSON line each, whole (a failed write is
        a StoreError naming ``path``, and leaves a file there as it was); returns how many."""
        n = 0
        with written_whole(path, "export") as tmp, open(tmp, "w", encoding="utf-8") as f:
            for ep in self.episodes(run_id):
                f.write(episode_to_json(ep) + "\n")
                n += 1
        return n

    def add_curve_point(
        self, run_id: str, version: int, episodes: int, wall_time: float, metrics: dict[str, Any]
    ) -> None:
        """Record the evaluation of policy ``version`` (a re-evaluation replaces it)."""
        row = (run_id, version, episodes, wall_time, json.dumps(metrics))
        self._execute(
            f"writing the curve of run {run_id!r}", "INSERT OR REPLACE INTO curve VALUES (?, ?, ?, ?, ?)", row
        )

    def curve(self, run_id: str) -> list[dict[str, Any]]:
        """The run's evaluation curve, by version: version, episodes, wall_time, metrics."""
        rows = self._query(
            f"reading run {run_id!r}",
            "SELECT version, episodes, wall_time, metrics FROM curve WHERE run_id = ? ORDER BY version",
            (run_id,),
        )
        return [
            {"version": v, "episodes": e, "wall_time": w, **self._decode(run_id, json.loads, m)} for v, e, w, m in rows
        ]

    def summary(self, run_id: str) -> RunSummary:
        """Counts, reward, tokens, cost and failures by error class of a stored run."""

        def read() -> tuple[Any, dict[str, int]]:
            row = self._db.execute(
                """SELECT COUNT(*), SUM(status = 'ok'), AVG(reward), SUM(reward >= 1.0), COUNT(reward),
                          SUM(prompt_tokens), SUM(completion_tokens), SUM(cost),
                          MIN(finished_at - wall_time), MAX(finished_at)
                   FROM episodes WHERE run_id = ?""",
                (run_id,),
            ).fetchone()
            failures = dict(
                self._db.execute(
                    "SELECT error_type, COUNT(*) FROM episodes WHERE run_id = ? AND status = 'failed' "
                    "GROUP BY error_type ORDER BY COUNT(*) DESC",
                    (run_id,),
                ).fetchall()
            )
            return row, failures

        row, failures = self._run(f"reading run {run_id!r}", read)
        total, ok, mean_reward, solved, scored, p_tok, c_tok, cost, first, last = row
        span = (last - first) if total and first is not None else 0.0
        return {
            "run_id": run_id,
            "episodes": total,
            "ok": ok or 0,
            "failed": total - (ok or 0),
            "accuracy": (solved or 0) / scored if scored else None,
            "mean_reward": mean_reward,
            "prompt_tokens": p_tok or 0,
            "completion_tokens": c_tok or 0,
            "cost": cost or 0.0,
            "span_seconds": span,
            "failures": failures,
        }

    # -- one process per run -------------------------------------------------------------

    def acquire_run(self, run_id: str, *, stale_after: float = STALE_AFTER) -> None:
        """Take the run's lease, or raise StoreError naming the live process that holds it.

        Free: no lease, this store's own, a heartbeat older than ``stale_after`` seconds,
        or a holder on this host whose process (or, in this process, whose store) is gone.
        """
        if stale_after <= 0:
            raise ValueError(f"stale_after must be > 0, got {stale_after}")

        def take() -> None:
            with self._transaction():
                row = self._db.execute(
                    "SELECT owner, pid, host, heartbeat FROM leases WHERE run_id = ?", (run_id,)
                ).fetchone()
                now = time.time()
                owner, pid, host, beat = row if row is not None else (self._token, 0, "", 0.0)
                if owner != self._token and lease_held(owner, pid, host, beat, now, stale_after):
                    this = " (this process)" if host == HOST and pid == os.getpid() else ""
                    raise StoreError(
                        f"run {run_id!r} is already running in pid {pid}{this} on host {host} "
                        f"(store {self.path}, heartbeat {max(0.0, now - beat):.0f} s ago); "
                        "stop it, wait, or use another run id"
                    )
                self._db.execute(
                    "INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?)",
                    (run_id, self._token, os.getpid(), HOST, now),
                )

        self._run(f"taking the lease of run {run_id!r}", take)
        self._leases[run_id] = Lease(stale_after, time.monotonic())

    def heartbeat(self, run_id: str) -> None:
        """Keep the run's lease live. Writes at most every ``stale_after / 10`` seconds;
        raises StoreError if another process took the lease over meanwhile."""
        lease = self._leases.get(run_id)
        if lease is None:
            raise StoreError(f"run {run_id!r} holds no lease in store {self.path}; call acquire_run first")
        now = time.monotonic()
        if now - lease.beat < lease.stale_after / 10:
            return
        sql = "UPDATE leases SET heartbeat = ? WHERE run_id = ? AND owner = ?"
        if (
            self._execute(f"renewing the lease of run {run_id!r}", sql, (time.time(), run_id, self._token)).rowcount
            == 0
        ):
            del self._leases[run_id]
            raise StoreError(
                f"run {run_id!r} lost its lease in store {self.path} to another process (its heartbeat "
                "went stale); stop this run"
            )
        lease.beat = now

    def release_run(self, run_id: str) -> None:
        """Give the run's lease back. Never raises for a store fault (it runs on the way
        out, after the error that matters): a lease left behind frees itself."""
        if self._leases.pop(run_id, None) is None:
            return
        with suppress(StoreError):
            sql = "DELETE FROM leases WHERE run_id = ? AND owner = ?"
            self._execute(f"releasing the lease of run {run_id!r}", sql, (run_id, self._token))
