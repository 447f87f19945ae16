"""Store faults end a run with one line naming the file, or are waited out: a lock held
by another process, a full disk, a truncated, corrupt or foreign file, an unwritable
path, a second process on the same run id, a damaged learner checkpoint."""

from __future__ import annotations

import gc
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_store import episode

import runtime.scheduling.store as store_module
import runtime.scheduling.store_faults as store_faults
from runtime.core.errors import SearchlearnError, StoreError
from runtime.scheduling.store import EpisodeStore

ROOT = Path(__file__).resolve().parent.parent


def fill(path: Path, n: int = 200) -> None:
    with EpisodeStore(path) as st:
        st.write_many([episode(f"task-{i}", i % 3) for i in range(n)])
    assert not Path(f"{path}-wal").exists()  # closed cleanly: every page is in the file


def one_line(info: pytest.ExceptionInfo[StoreError], path: Path) -> str:
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    assert isinstance(info.value, SearchlearnError) and info.value.boundary == "store"
    return message


# -- locks ---------------------------------------------------------------------------------


def test_a_lock_held_past_lock_timeout_is_one_message(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    store = EpisodeStore(path, lock_timeout=0.5)
    other = sqlite3.connect(path)
    other.execute("BEGIN IMMEDIATE")  # another process writing, and not letting go
    try:
        started = time.monotonic()
        with pytest.raises(StoreError) as info:
            store.write_many([episode("a")])
        assert 0.4 < time.monotonic() - started < 3
        message = one_line(info, path)
        assert message.startswith(f"store {path} is locked by another process for more than 0.5 s")
        with pytest.raises(StoreError, match="is locked by another process"):
            store.register_run("r", {})
    finally:
        other.rollback()
        other.close()
    assert store.write_many([episode("a")]) == 1  # nothing half-done was left behind
    store.close()


def test_a_lock_held_briefly_is_waited_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # sqlite's own busy handler gives up after 0.05 s: the wait is the store's backoff.
    monkeypatch.setattr(store_module, "_BUSY_SLICE", 0.05)
    path = tmp_path / "e.db"
    store = EpisodeStore(path, lock_timeout=5)
    other = sqlite3.connect(path, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.5, other.rollback)
    release.start()
    try:
        started = time.monotonic()
        assert store.write_many([episode("a"), episode("b")]) == 2
        assert time.monotonic() - started >= 0.4
    finally:
        release.join()
        other.close()
    assert store.done_keys("run") == {("a", 0), ("b", 0)}
    store.close()


# -- a full disk ---------------------------------------------------------------------------


def test_disk_full_names_the_real_error_not_the_rollback(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    store = EpisodeStore(path)
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages + 2}")  # SQLITE_FULL after two more pages
    with pytest.raises(StoreError) as info:
        store.write_many([episode(f"t{i}") for i in range(500)])
    message = one_line(info, path)
    assert message.startswith(f"disk full while writing to store {path}")
    assert "cannot rollback" not in message
    assert not store._db.in_transaction and store.count("run") == 0  # the batch is all or nothing
    store._db.execute("PRAGMA max_page_count = 1000000")  # space freed: the store works again
    assert store.write_many([episode(f"t{i}") for i in range(500)]) == 500
    store.close()


# -- damaged files -------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["at a page boundary", "inside a page", "inside the header"])
def test_a_truncated_store_is_refused(tmp_path: Path, where: str) -> None:
    path = tmp_path / "e.db"
    fill(path)
    data = path.read_bytes()
    cut = {"at a page boundary": len(data) // 2 // 4096 * 4096, "inside a page": len(data) // 2 + 100}.get(where, 50)
    path.write_bytes(data[:cut])
    with pytest.raises(StoreError) as info:
        EpisodeStore(path)
    assert one_line(info, path).startswith(f"store {path} is truncated")


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    path.write_text("run_id,task_id,reward\n" * 500)
    with pytest.raises(StoreError) as info:
        EpisodeStore(path)
    assert one_line(info, path) == (
        f"store {path} is not a SQLite database (corrupt, or another kind of file); restore it or start a new store"
    )


def test_mid_file_corruption_is_refused_before_any_work(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    fill(path, 3000)
    data = bytearray(path.read_bytes())
    pages = len(data) // 4096
    rng = random.Random(7)
    for page in range(pages // 3, 2 * pages // 3, 5):  # scribble over page headers in the middle
        start = page * 4096
        data[start : start + 64] = rng.randbytes(64)
    path.write_bytes(bytes(data))
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        EpisodeStore(path)
    assert time.monotonic() - started < 2
    message = one_line(info, path)
    assert message.startswith(f"store {path} is corrupt (quick_check: ") and "start a new store" in message
    # The check is what refuses it: opened unchecked, the file is not rejected up front.
    EpisodeStore(path, check=False).close()


def index_root(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        sql = "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_episodes_1'"
        root = int(conn.execute(sql).fetchone()[0])
    conn.close()
    return root


def test_an_emptied_index_page_never_gives_a_bogus_done_set(tmp_path: Path) -> None:
    """The primary-key index's root replaced by a valid, empty page: read unchecked, the
    run looks like it stored nothing (every task would run again)."""
    path = tmp_path / "e.db"
    fill(path, 3000)
    data = bytearray(path.read_bytes())
    start = (index_root(path) - 1) * 4096
    data[start : start + 4096] = b"\x0a\x00\x00\x00\x00\x10\x00\x00" + bytes(4088)  # an empty index leaf
    path.write_bytes(bytes(data))
    with EpisodeStore(path, check=False) as unchecked:
        assert unchecked.done_keys("run") == set()  # what today's store answered
    with pytest.raises(StoreError) as info:
        EpisodeStore(path)
    assert one_line(info, path).startswith(f"store {path} is corrupt (quick_check: Page ")


def test_a_big_store_checks_the_index_resuming_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "FULL_CHECK_BYTES", 0)  # every store is "big"
    path = tmp_path / "e.db"
    fill(path, 3000)
    EpisodeStore(path).close()  # a sound store passes the cheap check
    data = bytearray(path.read_bytes())
    start = (index_root(path) - 1) * 4096
    data[start : start + 64] = random.Random(1).randbytes(64)
    path.write_bytes(bytes(data))
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        EpisodeStore(path)
    assert time.monotonic() - started < 1
    assert one_line(info, path).startswith(f"store {path} is corrupt (")


def test_an_unreadable_row_is_one_message(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    fill(path, 3)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE episodes SET data = '{\"truncated' WHERE task_id = 'task-1'")
    conn.close()
    with EpisodeStore(path) as store, pytest.raises(StoreError) as info:
        list(store.episodes("run"))
    assert one_line(info, path).startswith(f"store {path} holds an unreadable row of run 'run'")


# -- paths that cannot hold a store ----------------------------------------------------------


@pytest.mark.parametrize("below", ["e.db", "sub/e.db"])
def test_a_path_under_a_file_is_one_message(tmp_path: Path, below: str) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a folder")
    path = blocker / below
    with pytest.raises(StoreError) as info:
        EpisodeStore(path)
    assert one_line(info, path) == f"cannot open store {path}: {blocker} is a file, not a folder"


def test_a_folder_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        EpisodeStore(tmp_path)
    assert one_line(info, tmp_path) == f"cannot open store {tmp_path}: it is a folder, not a file"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permission bits")
def test_a_read_only_folder_is_one_message(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(StoreError) as info:
            EpisodeStore(folder / "e.db")
        assert one_line(info, folder / "e.db") == f"cannot open store {folder / 'e.db'}: permission denied"
    finally:
        folder.chmod(0o755)


# -- one process per run -------------------------------------------------------------------


def test_a_second_store_on_a_running_run_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    first, second = EpisodeStore(path), EpisodeStore(path)
    first.acquire_run("r")
    first.acquire_run("r")  # its own lease: fine
    with pytest.raises(StoreError) as info:
        second.acquire_run("r")
    pattern = (
        rf"run 'r' is already running in pid {os.getpid()} \(this process\) on host \S+ "
        rf"\(store {re.escape(str(path))}, heartbeat 0 s ago\); stop it, wait, or use another run id"
    )
    assert re.fullmatch(pattern, one_line(info, path))
    second.acquire_run("other")  # another run id is free
    first.release_run("r")
    second.acquire_run("r")  # released: free
    with pytest.raises(StoreError, match="already running"):
        first.acquire_run("r")
    second.close()  # closing releases
    first.acquire_run("r")
    first.close()


def test_a_lease_of_a_closed_or_collected_store_is_free(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    gone = EpisodeStore(path)
    gone.acquire_run("r")
    gone._leases.clear()  # as if close() could not delete the row
    gone.close()
    with EpisodeStore(path) as store:
        store.acquire_run("r")  # same pid, but its store is closed
        store._leases.clear()
    store = EpisodeStore(path)
    store.acquire_run("r")
    store._db.close()  # dropped without close(): only the garbage collector knows
    del store
    gc.collect()
    with EpisodeStore(path) as store:
        store.acquire_run("r")


def test_a_stale_lease_is_taken_over_and_its_owner_learns_it(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with EpisodeStore(path) as store:
        row = "INSERT OR REPLACE INTO leases VALUES ('r', 'token', 1, 'elsewhere', ?)"
        store._db.execute(row, (time.time() - 2,))
        with pytest.raises(StoreError, match=r"running in pid 1 on host elsewhere .*heartbeat 2 s ago"):
            store.acquire_run("r")
        store.acquire_run("r", stale_after=1)  # two seconds without a heartbeat is stale here
        store.heartbeat("r")  # throttled: no write
        assert store._db.execute("SELECT owner FROM leases").fetchone()[0] == store._token
    first, second = EpisodeStore(path), EpisodeStore(path)
    first.acquire_run("r", stale_after=0.2)
    time.sleep(0.3)
    second.acquire_run("r", stale_after=0.2)  # first stopped beating: taken over (the taker says what is stale)
    with pytest.raises(StoreError) as info:
        first.heartbeat("r")
    assert one_line(info, path).startswith("run 'r' lost its lease in store")
    second.heartbeat("r")
    first.close()
    second.close()


def test_another_process_is_refused_until_it_dies(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    holder = (
        "import sys; from runtime.scheduling.store import EpisodeStore; "
        "s = EpisodeStore(sys.argv[1]); s.acquire_run('r'); print('ready', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder, str(path)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        with EpisodeStore(path) as store:
            with pytest.raises(StoreError) as info:
                store.acquire_run("r")
            assert f"run 'r' is already running in pid {proc.pid} on host " in one_line(info, path)
            proc.send_signal(signal.SIGKILL)  # killed without releasing; not reaped yet (a zombie)
            deadline = time.monotonic() + 5
            while store_faults.pid_alive(proc.pid):
                assert time.monotonic() < deadline
                time.sleep(0.02)
            store.acquire_run("r")  # its pid is gone: the lease is free at once
    finally:
        proc.kill()
        proc.communicate()


# -- the learner checkpoint ----------------------------------------------------------------


def test_a_truncated_learner_checkpoint_is_one_message(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from learners import SFTLearner
    from runtime.tiny.policy_format import BUNDLED_POLICY

    tokenizer = AutoTokenizer.from_pretrained(BUNDLED_POLICY)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    learner = SFTLearner(Qwen2ForCausalLM(config), tokenizer)
    path = tmp_path / "learner.pt"
    learner.save(path, {"consumed": []})
    assert learner.load(path) == {"consumed": []}
    data = path.read_bytes()
    for damaged in (data[: len(data) // 2], data[:100], b"\x80\x04garbage"):
        path.write_bytes(damaged)
        with pytest.raises(StoreError) as info:
            learner.load(path)
        assert one_line(info, path).startswith(f"learner checkpoint {path} is truncated or corrupt (")
