"""A `searchlearn run` subprocess killed with SIGKILL mid-run, then rerun: every task
stored exactly once, nothing lost. Also SIGTERM: admission stops, the store is flushed."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

from runtime.scheduling.store import EpisodeStore

TASKS = 400


def write_config(tmp_path: Path) -> tuple[Path, Path]:
    db = tmp_path / "store.db"
    config = {
        "run_id": "killme",
        "policy": {"kind": "scripted", "script": ["1+1=2", "Answer: 2"], "latency": 0.05},
        "tasks": {"source": "tiny", "size": TASKS, "steps": [1]},
        "strategy": {"name": "chain_of_thought"},
        "scheduler": {"concurrency": 16},
        "store": {"path": str(db)},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, db


def stored(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM episodes").fetchone()[0])
    except sqlite3.OperationalError:  # table not created yet
        return 0


CLI = [sys.executable, "-c", "from runtime.app.cli import main; main()"]


def start(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*CLI, "run", str(config), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``searchlearn ARGS`` run to its end, its output captured."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def wait_for(db: Path, at_least: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while (n := stored(db)) < at_least:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"only {n} episodes stored"
        time.sleep(0.05)
    return n


def test_sigkill_then_resume_stores_every_task_once(tmp_path: Path) -> None:
    config, db = write_config(tmp_path)
    proc = start(config)
    wait_for(db, 60, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    after_kill = stored(db)
    assert 60 <= after_kill < TASKS  # really killed mid-run

    rerun = cli("run", str(config), "--no-progress")
    assert rerun.returncode == 0, rerun.stderr
    assert f"{after_kill:,}" in rerun.stdout  # the summary reports the stored ones as skipped
    with EpisodeStore(db) as store:
        keys = [(ep.task.id, ep.sample) for ep in store.episodes("killme")]
    assert len(keys) == len(set(keys)) == TASKS
    assert {k[0] for k in keys} == {f"tiny-0-{i}" for i in range(TASKS)}


def test_sigterm_stops_admission_and_flushes(tmp_path: Path) -> None:
    config, db = write_config(tmp_path)
    proc = start(config)
    wait_for(db, 30, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err  # drained, but not a finished run
    assert b"stopped early: received SIGTERM" in err
    n = stored(db)
    assert 30 <= n < TASKS
    assert f"{n:,}".encode() in out  # every finished episode was flushed and counted


def test_sigkill_in_the_middle_of_tool_calls_then_resume_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """Episodes whose paths call the sandboxed python tool (each call half a second):
    killed while calls run, the sandboxes die with the run, and the rerun stores
    every task once, each with its call and observation, which the export writes."""
    import json

    import psutil

    tasks = 48
    db = tmp_path / "store.db"
    config = {
        "run_id": "killtool",
        # Every step is the call; the path ends at the environment's one-turn limit.
        "policy": {"kind": "scripted", "script": ["call: python(import time; time.sleep(0.5); print(2))"]},
        "tasks": {"source": "tiny", "size": tasks, "steps": [1]},
        "strategy": {"name": "chain_of_thought"},
        "environment": {"name": "python", "max_turns": 1},
        "scheduler": {"concurrency": 8},
        "store": {"path": str(db)},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = start(path)
    wait_for(db, 8, proc, timeout=120)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "no tool call was running at the kill"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    after_kill = stored(db)
    assert 8 <= after_kill < tasks
    _, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, f"left running after the kill: {[p.cmdline() for p in alive if p.is_running()]}"

    rerun = cli("run", str(path), "--no-progress", timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    with EpisodeStore(db) as store:
        episodes = list(store.episodes("killtool"))
    keys = [(ep.task.id, ep.sample) for ep in episodes]
    assert len(keys) == len(set(keys)) == tasks
    for ep in episodes:
        assert ep.status == "ok", ep.error
        path = [ep.nodes[i] for i in ep.chosen_path]
        assert [n.kind for n in path] == ["call", "observation", "call", "observation"]
        assert path[1].text == "= 2" and path[3].text == "= error: turn limit (1) reached"
        assert sum(1 for n in ep.nodes if n.kind == "observation" and "execution" in n.meta) == 1
    out = tmp_path / "episodes.jsonl"
    export = cli("export", "killtool", "--store", str(db), "-o", str(out))
    assert export.returncode == 0, export.stderr
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(e["task"]["id"] for e in exported) == sorted(k[0] for k in keys)
