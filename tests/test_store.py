"""The SQLite episode store: WAL, exactly-once keys, failed-row retry, summaries, export."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.core.types import Episode, ErrorInfo, Node, Task, Usage, episode_from_json
from runtime.scheduling.store import EpisodeStore


def episode(
    task_id: str,
    sample: int = 0,
    *,
    run_id: str = "run",
    reward: float | None = 1.0,
    error: str | None = None,
    finished_at: float = 100.0,
    tokens: tuple[int, int] = (10, 5),
    cost: float = 0.01,
) -> Episode:
    ep = Episode(
        run_id=run_id,
        task=Task(id=task_id, prompt="q", answer="1"),
        sample=sample,
        nodes=[Node(id=0, parent=None, depth=0, children=[1]), Node(id=1, parent=0, depth=1, text="Answer: 1")],
        chosen_path=[1],
        final_answer="1",
        reward=reward,
        usage=Usage(calls=1, prompt_tokens=tokens[0], completion_tokens=tokens[1], cost=cost, wall_time=2.0),
        started_at=finished_at - 2.0,
        finished_at=finished_at,
    )
    if error is not None:
        ep.status = "failed"
        ep.reward = None
        ep.errors.append(ErrorInfo(error, "boom", "policy"))
    return ep


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EpisodeStore]:
    with EpisodeStore(tmp_path / "sub" / "episodes.db") as st:  # the parent folder is created
        yield st


def test_wal_mode(store: EpisodeStore) -> None:
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # Another connection (another process, e.g. `searchlearn show`) sees WAL too.
    other = sqlite3.connect(store.path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()


def test_write_many_is_idempotent_per_key(store: EpisodeStore) -> None:
    assert store.write_many([episode("a"), episode("b"), episode("a", 1)]) == 3
    # The same keys again: ignored, the first row is kept.
    assert store.write_many([episode("a", reward=0.0), episode("b")]) == 0
    assert store.write_many([episode("a"), episode("c")]) == 1
    assert store.count("run") == 4
    assert next(ep for ep in store.episodes("run") if ep.key == ("run", "a", 0)).reward == 1.0
    # Duplicates inside one batch count once.
    assert store.write_many([episode("d"), episode("d")]) == 1
    assert store.write_many([]) == 0


def test_done_keys_and_runs(store: EpisodeStore) -> None:
    store.write_many(
        [episode("a"), episode("b", 2), episode("c", error="PolicyUnavailable"), episode("x", run_id="other")]
    )
    assert store.done_keys("run") == {("a", 0), ("b", 2), ("c", 0)}
    assert store.done_keys("run", include_failed=False) == {("a", 0), ("b", 2)}
    assert store.done_keys("nobody") == set()
    assert store.runs() == ["other", "run"]
    assert store.count("other") == 1


def test_retry_failed_replaces_only_failed_rows(store: EpisodeStore) -> None:
    store.write_many([episode("a", error="PolicyUnavailable"), episode("b", reward=0.0)])
    retried = [episode("a", reward=1.0), episode("b", reward=1.0)]
    assert store.write_many(retried, replace_failed=True) == 1  # only the failed row is replaced
    by_id = {ep.task.id: ep for ep in store.episodes("run")}
    assert by_id["a"].status == "ok" and by_id["a"].reward == 1.0 and not by_id["a"].errors
    assert by_id["b"].reward == 0.0  # an ok episode is never overwritten
    assert store.count("run") == 2
    assert store.summary("run")["failures"] == {}


def test_summary(store: EpisodeStore) -> None:
    store.write_many(
        [
            episode("a", reward=1.0, finished_at=100.0),
            episode("b", reward=0.5, finished_at=104.0),
            episode("c", reward=0.0, finished_at=106.0),
            episode("d", error="PolicyUnavailable", finished_at=103.0),
            episode("e", error="PolicyUnavailable", finished_at=103.0),
            episode("f", error="EpisodeTimeout", finished_at=103.0),
        ]
    )
    s = store.summary("run")
    assert s["run_id"] == "run"
    assert (s["episodes"], s["ok"], s["failed"]) == (6, 3, 3)
    assert s["accuracy"] == pytest.approx(1 / 3)  # one of the three rewarded episodes solved
    assert s["mean_reward"] == pytest.approx(0.5)
    assert (s["prompt_tokens"], s["completion_tokens"]) == (60, 30)
    assert s["cost"] == pytest.approx(0.06)
    assert s["span_seconds"] == pytest.approx(106.0 - (100.0 - 2.0))  # first start to last finish
    assert s["failures"] == {"PolicyUnavailable": 2, "EpisodeTimeout": 1}
    assert list(s["failures"]) == ["PolicyUnavailable", "EpisodeTimeout"]  # most common first


def test_summary_of_an_empty_run(store: EpisodeStore) -> None:
    s = store.summary("none")
    assert (s["episodes"], s["ok"], s["failed"]) == (0, 0, 0)
    assert s["accuracy"] is None and s["mean_reward"] is None and s["failures"] == {}


def test_episodes_in_finish_order_and_export(store: EpisodeStore, tmp_path: Path) -> None:
    written = [
        episode("late", finished_at=300.0),
        episode("early", finished_at=100.0),
        episode("mid", finished_at=200.0),
    ]
    store.write_many(written)
    assert [ep.task.id for ep in store.episodes("run")] == ["early", "mid", "late"]
    out = tmp_path / "run.jsonl"
    assert store.export_jsonl("run", out) == 3
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [episode_from_json(line) for line in lines] == sorted(written, key=lambda e: e.finished_at or 0)


def test_register_run_keeps_the_first_config(store: EpisodeStore) -> None:
    store.register_run("r", {"scheduler": {"concurrency": 4}, "path": Path("/x")})
    store.register_run("r", {"scheduler": {"concurrency": 99}})
    assert store.run_config("r") == {"scheduler": {"concurrency": 4}, "path": "/x"}
    assert store.run_config("unknown") is None


def test_rows_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with EpisodeStore(path) as st:
        st.write_many([episode("a"), episode("b", error="VerifierError")])
    with EpisodeStore(path) as st:
        assert st.done_keys("run") == {("a", 0), ("b", 0)}
        failed = next(ep for ep in st.episodes("run") if ep.status == "failed")
        assert failed.errors == [ErrorInfo("VerifierError", "boom", "policy")]


def test_concurrent_writers_from_threads(store: EpisodeStore) -> None:
    """The store is shared by the scheduler's worker threads: no write is lost."""

    def writer(k: int) -> None:
        for i in range(20):
            store.write_many([episode(f"w{k}-{i}"), episode(f"shared-{i}")])

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.count("run") == 4 * 20 + 20
