"""A long-lived worker: task sources read lazily and followed as they grow (a JSONL file,
a folder of them, standard input, a Python async iterable), continuous export of
episodes, and the acceptance test: a producer appends tasks while `searchlearn run`
follows the file, the worker is SIGKILLed and restarted, and every task is stored once
and exported once."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from structlog.testing import capture_logs

from runtime.core.errors import ConfigError, TaskError
from runtime.core.types import Episode, Task, episode_from_json, episode_to_json
from runtime.policy.scripted import ScriptedPolicy
from runtime.scheduling.export import EpisodeExport
from runtime.scheduling.scheduler import Runtime
from runtime.scheduling.store import EpisodeStore
from runtime.scheduling.streams import TaskStream, task_count
from runtime.scheduling.tasks import (
    JsonlTasks,
    StdinTasks,
    iterate_tasks,
    jsonl_dir_stream,
    jsonl_stream,
    stdin_stream,
)
from strategies.chain_of_thought import ChainOfThought

CLI = [sys.executable, "-c", "from runtime.app.cli import main; main()", "run"]


def line(task_id: str, prompt: str = "What is 1+1?") -> str:
    return json.dumps({"id": task_id, "prompt": prompt, "answer": "2"}) + "\n"


async def drain(stream: Any, into: list[Task]) -> None:
    async for task in stream:
        into.append(task)


async def until(got: list[Any], n: int) -> None:
    """Wait (5 s at most) until ``got`` holds ``n`` items."""
    for _ in range(1000):
        if len(got) >= n:
            return
        await anyio.sleep(0.005)
    raise AssertionError(f"{len(got)} of {n} items after 5 s: {got}")


# -- lazy JSONL ----------------------------------------------------------------------


def test_jsonl_is_read_as_drawn(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('"a"\n"b"\n"c"\n', encoding="utf-8")
    stream = JsonlTasks(path=str(path)).build()
    assert isinstance(stream, TaskStream) and stream.bounded and task_count(stream) == 3
    it = iter(stream)
    assert next(it).id == "t-1"
    with path.open("a", encoding="utf-8") as f:
        f.write('"late"\n')  # a list made at build would not hold it
    assert [t.id for t in it] == ["t-2", "t-3", "t-4"]
    assert [t.prompt for t in stream] == ["a", "b", "c", "late"]  # every pass reads again


def test_streaming_a_big_file_keeps_memory_flat(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": f"{i} " + "x" * 300, "answer": str(i)}) + "\n" for i in range(10_000))
    )
    stream = jsonl_stream(path)
    tracemalloc.start()
    try:
        count = sum(1 for _ in stream)
        _, streamed = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        held = list(stream)
        _, listed = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == len(held) == 10_000
    assert streamed < listed / 5, (streamed, listed)  # ids only, not tasks


def test_jsonl_checks_up_front_and_skips_bad_lines_met_later(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(line("a") + "{not json\n" + line("a") + "x" * 80 + "\n" + line("b"), encoding="utf-8")
    with pytest.raises(TaskError, match=r"t\.jsonl:2: not valid JSON"):
        jsonl_stream(path)  # the up-front check: the first bad line, named, as before
    stream = jsonl_stream(path, check=False, max_line_bytes=60)
    assert stream.size is None
    with capture_logs() as logs:
        tasks = list(stream)
    assert [t.id for t in tasks] == ["a", "b"]
    assert stream.skipped == 3
    errors = [entry["error"] for entry in logs if entry["event"] == "task line skipped"]
    assert [e.split(": ", 1)[0] for e in errors] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    assert "not valid JSON" in errors[0] and "duplicate task id 'a'" in errors[1]
    assert "line longer than 60 bytes" in errors[2]
    with pytest.raises(TaskError, match="does not exist"):
        jsonl_stream(tmp_path / "nope.jsonl", follow=True)


# -- following a file ----------------------------------------------------------------


@pytest.mark.anyio
async def test_follow_reads_appended_lines_and_a_partial_line_once_complete(tmp_path: Path) -> None:
    path = tmp_path / "feed.jsonl"
    path.write_text(line("a"), encoding="utf-8")
    stream = jsonl_stream(path, follow=True, poll_interval=0.01, idle_timeout=0.5)
    assert not stream.bounded and task_count(stream) is None
    with pytest.raises(TypeError, match="unbounded"):
        list(stream)
    got: list[Task] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain, stream, got)
            await until(got, 1)
            with path.open("a", encoding="utf-8") as f:
                f.write(line("b") + '{"id": "c", "pro')
            await until(got, 2)
            await anyio.sleep(0.15)  # many polls: the unfinished line is not read
            assert [t.id for t in got] == ["a", "b"]
            with path.open("a", encoding="utf-8") as f:
                f.write('mpt": "third"}\n"fourth"\n{not json}\n')
            await until(got, 4)
        # the stream ended by itself: idle_timeout without a new byte
    # A followed file's line without an id: its line number and its content's hash.
    assert [t.id for t in got[:3]] == ["a", "b", "c"] and got[3].id.startswith("feed-4-")
    assert got[2].prompt == "third"
    assert stream.skipped == 1  # the bad line appended later is skipped, not fatal


@pytest.mark.anyio
async def test_follow_ends_on_idle_leaving_an_unfinished_line_unread(tmp_path: Path) -> None:
    path = tmp_path / "feed.jsonl"
    path.write_text(line("a") + '{"id": "b"', encoding="utf-8")
    stream = jsonl_stream(path, follow=True, poll_interval=0.01, idle_timeout=0.2)
    started = time.monotonic()
    with capture_logs() as logs, anyio.fail_after(5):
        got = [t.id async for t in stream]
    assert got == ["a"]
    assert time.monotonic() - started >= 0.2
    assert any(e["event"] == "unfinished last line left unread" and e["line"] == 2 for e in logs)


@pytest.mark.anyio
async def test_a_followed_source_stops_when_its_consumer_is_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "feed.jsonl"
    path.write_text(line("a"), encoding="utf-8")
    got: list[Task] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain, jsonl_stream(path, follow=True, poll_interval=0.01), got)  # no idle_timeout
            await until(got, 1)
            tg.cancel_scope.cancel()  # what the scheduler's shutdown does to admission
    assert [t.id for t in got] == ["a"]


# -- a folder of files ---------------------------------------------------------------


def test_jsonl_dir_reads_files_in_name_order_with_stable_ids(tmp_path: Path) -> None:
    d = tmp_path / "feed"
    d.mkdir()
    (d / "b.jsonl").write_text('"two"\n', encoding="utf-8")
    (d / "a.jsonl").write_text('"one"\n\n{"id": "x", "prompt": "p"}\n', encoding="utf-8")
    (d / "notes.txt").write_text("not a task file", encoding="utf-8")
    stream = jsonl_dir_stream(d)
    assert stream.bounded and task_count(stream) == 3
    assert [t.id for t in stream] == ["a-1", "x", "b-1"]
    (d / "c.jsonl").write_text('{"id": "x", "prompt": "again"}\n', encoding="utf-8")
    with pytest.raises(TaskError, match=r"c\.jsonl:1: duplicate task id 'x'"):
        jsonl_dir_stream(d)
    with pytest.raises(TaskError, match="does not exist"):
        jsonl_dir_stream(tmp_path / "nowhere")


@pytest.mark.anyio
async def test_jsonl_dir_follow_picks_up_files_added_while_it_runs(tmp_path: Path) -> None:
    d = tmp_path / "feed"
    d.mkdir()
    (d / "001.jsonl").write_text('"one"\n"two"\n', encoding="utf-8")
    stream = jsonl_dir_stream(d, follow=True, poll_interval=0.01, idle_timeout=0.5)
    got: list[Task] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain, stream, got)
            await until(got, 2)
            staged = d / "002.part"  # written whole, then renamed in
            staged.write_text('"three"\n{"id": "four", "prompt": "4"}', encoding="utf-8")
            staged.rename(d / "002.jsonl")
            await until(got, 3)
            await anyio.sleep(0.1)
            assert len(got) == 3  # 002's last line has no newline: not read while 002 is the newest
            (d / "003.jsonl").write_text('"five"\n', encoding="utf-8")
            await until(got, 5)
    assert [t.id for t in got] == ["001-1", "001-2", "002-1", "four", "003-1"]


# -- standard input ------------------------------------------------------------------


@pytest.mark.anyio
async def test_stdin_is_read_without_blocking_the_event_loop() -> None:
    r, w = os.pipe()
    with os.fdopen(r, "rb") as reader:
        stream = stdin_stream(format="text", ids="line", source=reader)
        got: list[Task] = []
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await anyio.sleep(0.01)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(tick)
                done = anyio.Event()

                async def consume() -> None:
                    await drain(stream, got)
                    done.set()

                tg.start_soon(consume)
                await anyio.sleep(0.2)  # the pipe is empty: the reader waits, the loop runs on
                assert ticks >= 10 and got == []
                os.write(w, b"first\n\n  second  \n")
                await until(got, 2)
                os.write(w, b"third")  # no newline: the end of input completes it
                os.close(w)
                await done.wait()
                tg.cancel_scope.cancel()
    assert [(t.id, t.prompt) for t in got] == [("stdin-1", "first"), ("stdin-3", "second"), ("stdin-4", "third")]


@pytest.mark.anyio
async def test_stdin_source_reads_jsonl_from_sys_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    data = b'{"id": "k", "prompt": "x"}\n"what?"\nnot json\n"what?"\n"other"\n'
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    source = StdinTasks()
    assert not source.bounded
    stream = source.build()
    with anyio.fail_after(5):
        got = [t async for t in iterate_tasks(stream)]
    assert [t.prompt for t in got] == ["x", "what?", "other"]
    assert got[0].id == "k" and got[1].id.startswith("stdin-") and got[1].id != got[2].id
    assert stream.skipped == 2  # not JSON; the same line again (the same content id)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'"other"\n"what?"\n')))
    with anyio.fail_after(5):
        again = [t async for t in StdinTasks().build()]
    assert {t.id for t in again} == {got[1].id, got[2].id}  # content ids: stable whatever the order


def write_config(tmp_path: Path, tasks: dict[str, Any], **extra: Any) -> tuple[Path, Path]:
    db = tmp_path / "store.db"
    config = {
        "run_id": "worker",
        "policy": {"kind": "scripted", "script": ["1+1=2", "Answer: 2"], "latency": extra.pop("latency", 0.0)},
        "tasks": tasks,
        "strategy": {"name": "chain_of_thought"},
        "scheduler": {"concurrency": extra.pop("concurrency", 4)},
        "store": {"path": str(db)},
        **extra,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path, db


def test_cli_runs_tasks_piped_to_stdin_and_resumes(tmp_path: Path) -> None:
    config, db = write_config(tmp_path, {"source": "stdin", "format": "text"})
    first = subprocess.run([*CLI, str(config), "--no-progress"], input="1+1\n2+2\n", capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    again = subprocess.run(
        [*CLI, str(config), "--no-progress"], input="1+1\n2+2\n3+3\n", capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert "skipped (already stored)" in again.stdout
    with EpisodeStore(db) as store:
        prompts = sorted(ep.task.prompt or "" for ep in store.episodes("worker"))
    assert prompts == ["1+1", "2+2", "3+3"]


# -- the Python API and the export writer --------------------------------------------


@pytest.mark.anyio
async def test_runtime_streams_a_python_async_generator_and_exports(tmp_path: Path) -> None:
    async def feed() -> AsyncIterator[dict[str, str]]:
        for i in range(6):
            await anyio.sleep(0.01)  # tasks arrive while episodes run
            yield {"id": f"g{i}", "prompt": "q"}

    target = tmp_path / "out" / "episodes.jsonl"
    rt = Runtime(ScriptedPolicy(["Answer: 2"]), ChainOfThought(), store=tmp_path / "s.db", run_id="py")
    with anyio.fail_after(10):
        async with rt:
            with EpisodeExport(target, rt.run_id) as export:
                await anyio.to_thread.run_sync(export.open, rt.store)
                async for episode in rt.stream(feed()):
                    assert export.write(episode)
                    assert not export.write(episode)  # never twice
    lines = target.read_text(encoding="utf-8").splitlines()
    assert sorted(episode_from_json(x).task.id for x in lines) == [f"g{i}" for i in range(6)]


@pytest.mark.anyio
async def test_sync_learning_refuses_an_unbounded_source(tmp_path: Path) -> None:
    from learners.loop import OnlineLoop
    from learners.loop_settings import LoopSettings

    feed = tmp_path / "feed.jsonl"
    feed.write_text(line("a"), encoding="utf-8")
    rt = Runtime(ScriptedPolicy(["Answer: 2"]), ChainOfThought())
    loop = OnlineLoop(rt, None, None, settings=LoopSettings(mode="sync"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="use mode: online"):
        await loop.run(jsonl_stream(feed, follow=True))


def episode(task_id: str, *, run_id: str = "r", status: str = "ok", finished_at: float = 100.0) -> Episode:
    ep = Episode(run_id=run_id, task=Task(id=task_id, prompt="q"), reward=1.0, finished_at=finished_at)
    ep.status = status  # type: ignore[assignment]
    return ep


def test_export_reconciles_a_killed_runs_file(tmp_path: Path) -> None:
    path = tmp_path / "episodes.jsonl"
    with EpisodeStore(tmp_path / "s.db") as store:
        store.write_many([episode(f"t{i}", finished_at=100.0 + i) for i in range(5)])
        store.write_many([episode("failed", status="failed", finished_at=99.0)])
        torn = episode_to_json(episode("t2"))[:40]
        other = episode_to_json(episode("t3", run_id="another"))
        path.write_text(
            "\n".join([episode_to_json(episode("t0")), other, episode_to_json(episode("t1")), torn]),
            encoding="utf-8",
        )
        export = EpisodeExport(path, "r", only="ok")
        assert export.open(store) == 3  # t2 (torn), t3, t4; the failed one is filtered out
        assert export.cut_bytes == 40
        assert not export.write(episode("t4"))  # already there
        assert not export.write(episode("late", status="failed"))
        assert export.write(episode("late"))
        export.close()
        text = path.read_text(encoding="utf-8")
        assert text.endswith("\n")
        keys = [(d["run_id"], d["task"]["id"]) for d in map(json.loads, text.splitlines())]
        assert len(keys) == len(set(keys)) == 7
        assert ("another", "t3") in keys
        assert {k for r, k in keys if r == "r"} == {"t0", "t1", "t2", "t3", "t4", "late"}
        again = EpisodeExport(path, "r", only="ok")
        assert again.open(store) == 0  # nothing missing, nothing appended
        again.close()
    assert path.read_text(encoding="utf-8") == text


# -- the acceptance test: a long-lived worker, killed and restarted ---------------------


TASKS = 150


def stored_keys(db: Path) -> list[tuple[str, int]]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return [(t, int(s)) for t, s in conn.execute("SELECT task_id, sample FROM episodes")]
    except sqlite3.OperationalError:  # table not created yet
        return []


def produce(path: Path, written: list[int], stop: threading.Event) -> None:
    """Append TASKS tasks, about 40 a second, each line written in two parts (the worker
    sees unfinished lines)."""
    for i in range(TASKS):
        if stop.is_set():
            return
        text = line(f"task-{i:04d}") if i % 3 else json.dumps({"prompt": f"task {i}", "answer": "2"}) + "\n"
        with path.open("a", encoding="utf-8") as f:
            f.write(text[:20])
            f.flush()
            time.sleep(0.005)
            f.write(text[20:])
        written.append(i)
        time.sleep(0.02)


def feed_id(lineno: int, i: int) -> str:
    """The id of the producer's task ``i`` without an id, on line ``lineno`` of feed.jsonl."""
    text = json.dumps({"prompt": f"task {i}", "answer": "2"}).encode()
    return f"feed-{lineno}-{hashlib.sha256(text).hexdigest()[:12]}"


def test_producer_appends_while_worker_is_killed_and_restarted(tmp_path: Path) -> None:
    feed = tmp_path / "feed.jsonl"
    feed.write_text(line("first"), encoding="utf-8")
    exported = tmp_path / "export" / "episodes.jsonl"
    tasks = {"source": "jsonl", "path": str(feed), "follow": True, "poll_interval": 0.05, "idle_timeout": 2.0}
    config, db = write_config(tmp_path, tasks, latency=0.03, concurrency=8, export={"path": str(exported)})
    written: list[int] = []
    stop = threading.Event()
    producer = threading.Thread(target=produce, args=(feed, written, stop), daemon=True)
    worker = subprocess.Popen([*CLI, str(config), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not stored_keys(db):  # the worker is up: it stored the first task
            assert worker.poll() is None, worker.communicate()
            assert time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.02)
        producer.start()
        while len(stored_keys(db)) < 30:
            assert worker.poll() is None, worker.communicate()
            assert time.monotonic() < deadline, "the worker stored too little"
            time.sleep(0.02)
        worker.send_signal(signal.SIGKILL)
        worker.communicate()
        at_kill = len(stored_keys(db))
        assert len(written) < TASKS and at_kill < TASKS + 1  # killed in the middle of the stream
        rerun = subprocess.run([*CLI, str(config), "--no-progress"], capture_output=True, text=True, timeout=60)
    finally:
        stop.set()
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    producer.join(timeout=10)
    assert len(written) == TASKS, "the producer did not finish while the worker ran"
    assert rerun.returncode == 0, rerun.stderr
    assert "skipped (already stored)" in rerun.stdout  # resumed: what it stored is not rerun
    assert "exported" in rerun.stderr

    # Every task once in the store: the first line, the ones with an id, and those
    # without one, by their line number and content (feed-<line>-<hash>).
    keys = stored_keys(db)
    ids = {k[0] for k in keys}
    expected = {"first"} | {f"task-{i:04d}" if i % 3 else feed_id(i + 2, i) for i in range(TASKS)}
    assert len(keys) == len(ids) and ids == expected
    # And every stored episode once in the export file, each line whole.
    lines = exported.read_text(encoding="utf-8").splitlines()
    exported_keys = [(ep.task.id, ep.sample) for ep in map(episode_from_json, lines)]
    assert len(exported_keys) == len(set(exported_keys))
    assert set(exported_keys) == set(keys)


def test_sigterm_ends_a_followed_run_and_drains(tmp_path: Path) -> None:
    feed = tmp_path / "feed.jsonl"
    feed.write_text("".join(line(f"t{i}") for i in range(20)), encoding="utf-8")
    tasks = {"source": "jsonl", "path": str(feed), "follow": True, "poll_interval": 0.05}  # no idle_timeout
    config, db = write_config(tmp_path, tasks, latency=0.01)
    worker = subprocess.Popen([*CLI, str(config), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while len(stored_keys(db)) < 20:  # all done; the source waits for more
            assert worker.poll() is None, worker.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 128 + signal.SIGTERM, err  # drained, but not a finished run
    assert b"stopped early: received SIGTERM" in err
    assert len(stored_keys(db)) == 20


def test_a_followed_eval_source_is_a_config_error(tmp_path: Path) -> None:
    from runtime.app.config import RunConfig
    from runtime.app.learning import _eval_tasks
    from runtime.core.errors import ConfigError

    feed = tmp_path / "eval.jsonl"
    feed.write_text('{"prompt": "1+1", "answer": "2"}\n')
    config = RunConfig.model_validate(
        {
            "policy": {"kind": "local", "path": "bundled"},
            "learner": {
                "kind": "expert_iteration",
                "eval": {"tasks": {"source": "jsonl", "path": str(feed), "follow": True}},
            },
        }
    )
    with pytest.raises(ConfigError, match="learner.eval.tasks: held-out tasks must be a fixed set"):
        _eval_tasks(config)
