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
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from runtime.core.types import Episode, episode_from_json, episode_to_json

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
"""

RunSummary = dict[str, Any]


class EpisodeStore:
    """A SQLite episode store. Thread-safe; use one per process and file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def register_run(self, run_id: str, config: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO runs (run_id, created_at, config) VALUES (?, ?, ?)",
                (run_id, time.time(), json.dumps(config, default=str)),
            )

    def run_config(self, run_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT config FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def runs(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT run_id FROM episodes ORDER BY run_id").fetchall()
        return [r[0] for r in rows]

    def done_keys(self, run_id: str, include_failed: bool = True) -> set[tuple[str, int]]:
        """``(task_id, sample)`` of every stored episode of the run."""
        sql = "SELECT task_id, sample FROM episodes WHERE run_id = ?"
        if not include_failed:
            sql += " AND status = 'ok'"
        with self._lock:
            return {(t, s) for t, s in self._db.execute(sql, (run_id,))}

    def write_many(self, episodes: Iterable[Episode], replace_failed: bool = False) -> int:
        """Store episodes in one transaction; returns how many rows were new."""
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
                episode_to_json(ep),
            )
            for ep in episodes
        ]
        with self._lock:
            before = self._db.total_changes
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if replace_failed:
                    self._db.executemany(
                        "DELETE FROM episodes WHERE run_id = ? AND task_id = ? AND sample = ? AND status = 'failed'",
                        [r[:3] for r in rows],
                    )
                    before = self._db.total_changes
                self._db.executemany("INSERT OR IGNORE INTO episodes VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return self._db.total_changes - before

    def count(self, run_id: str) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM episodes WHERE run_id = ?", (run_id,)).fetchone()[0])

    def episodes(self, run_id: str) -> Iterator[Episode]:
        """Every stored episode of the run, in the order they finished."""
        with self._lock:
            rows = self._db.execute(
                "SELECT data FROM episodes WHERE run_id = ? ORDER BY finished_at, rowid", (run_id,)
            ).fetchall()
        for (data,) in rows:
            yield episode_from_json(data)

    def export_jsonl(self, run_id: str, path: str | Path) -> int:
        n = 0
        with open(path, "w", encoding="utf-8") as f:
            for ep in self.episodes(run_id):
                f.write(episode_to_json(ep) + "\n")
                n += 1
        return n

    def add_curve_point(
        self, run_id: str, version: int, episodes: int, wall_time: float, metrics: dict[str, Any]
    ) -> None:
        """Record the evaluation of policy ``version`` (a re-evaluation replaces it)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO curve VALUES (?, ?, ?, ?, ?)",
                (run_id, version, episodes, wall_time, json.dumps(metrics)),
            )

    def curve(self, run_id: str) -> list[dict[str, Any]]:
        """The run's evaluation curve, by version: version, episodes, wall_time, metrics."""
        with self._lock:
            rows = self._db.execute(
                "SELECT version, episodes, wall_time, metrics FROM curve WHERE run_id = ? ORDER BY version", (run_id,)
            ).fetchall()
        return [{"version": v, "episodes": e, "wall_time": w, **json.loads(m)} for v, e, w, m in rows]

    def summary(self, run_id: str) -> RunSummary:
        """Counts, reward, tokens, cost and failures by error class of a stored run."""
        with self._lock:
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
