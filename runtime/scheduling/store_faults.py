"""What can go wrong with the episode store's file, in user words, and how a run's lease
is judged live: the fault helpers of :mod:`runtime.scheduling.store` (the ``store``
boundary of :mod:`runtime.core.errors`).

Design decisions:
- Every sqlite3 error the file can cause becomes a :class:`StoreError` whose message is
  one line naming the file, what happened and what to do (locked, disk full, corrupt,
  cannot open, read-only, I/O error), by SQLite's primary result code
  (https://sqlite.org/rescode.html). "unable to open database file" says nothing, so
  the path is looked at to say why (a folder, a parent that is a file, no permission).
  Turning a programming error (``sqlite3.ProgrammingError``) into a traceback, and
  waiting out a lock, are the store's business (:meth:`EpisodeStore._retry`); this
  module only says whether an error is a lock.
- Opening an existing file checks it before any work starts. First its 100-byte header,
  read directly: not a SQLite file, truncated (smaller than its header's page count
  promises, unless a WAL still holds pages), a bad page size. Then ``PRAGMA
  quick_check``, which walks every page but skips ``integrity_check``'s index-versus-
  table cross-check. Its cost is the file's size (measured, 100k episodes: 105 MB in
  0.13 s warm, 1.4 s with the file out of the page cache; 1.6 GB in 0.9 s / 11 s), so
  above ``FULL_CHECK_BYTES`` (the store's constant, passed in) only what resuming reads
  is checked: the small tables and every page and key of the episodes' primary-key
  index (30-60 ms for 1.6 GB). Either way ``done_keys`` never answers from a damaged
  index; a damaged episode row of a big store is a StoreError when it is read.
- A lease (one ``leases`` row per running run id: owner token, pid, host, heartbeat
  time) is held while its heartbeat is younger than ``stale_after`` and, on this host,
  while its process runs (a zombie does not; a run killed with SIGKILL and restarted at
  once resumes). A lease of this very process is held while its store is open: the
  owner tokens of open stores are in ``LIVE_OWNERS`` (the in-process analogue of a dead
  pid). Off POSIX there is no cheap pid check, and the heartbeat alone decides.
- Standard library only, no import of the store itself (the store imports this).
"""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from runtime.core.errors import StoreError

__all__ = [
    "HOST",
    "LIVE_OWNERS",
    "Lease",
    "check_header",
    "check_pages",
    "is_locked",
    "lease_held",
    "one_line",
    "os_reason",
    "pid_alive",
    "store_error",
]

HOST = socket.gethostname()
#: Owner tokens of this process's open stores: a lease held by this pid whose store is
#: closed or collected is free (the in-process analogue of a dead pid).
LIVE_OWNERS: set[str] = set()

_MAGIC = b"SQLite format 3\x00"
# SQLite primary result codes (https://sqlite.org/rescode.html).
_PERM, _BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 3, 5, 6, 8, 10, 11, 13, 14, 26


@dataclass
class Lease:
    """A lease this store holds."""

    stale_after: float
    beat: float  # time.monotonic() of the last heartbeat written


def _code(exc: sqlite3.Error) -> int:
    return int(getattr(exc, "sqlite_errorcode", -1)) & 0xFF


def is_locked(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` is another connection's lock (worth waiting out)."""
    return _code(exc) in (_BUSY, _LOCKED)


def one_line(text: object, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def store_error(exc: sqlite3.Error, path: Path, doing: str, lock_timeout: float) -> StoreError:
    """``exc`` in user words: one line naming the file and what happened."""
    code, detail = _code(exc), one_line(exc)
    if code in (_BUSY, _LOCKED):
        return StoreError(
            f"store {path} is locked by another process for more than {lock_timeout:g} s "
            f"({doing}); is another run writing to it? stop it, or retry later"
        )
    if code == _FULL:
        return StoreError(f"disk full while writing to store {path} ({detail}); free some space and rerun")
    if code in (_CORRUPT, _NOTADB):
        return StoreError(f"store {path} is corrupt ({detail}); restore it or start a new store")
    if code == _CANTOPEN:
        return StoreError(f"cannot open store {path}: {_why_unopenable(path)}")
    if code in (_READONLY, _PERM):
        return StoreError(f"cannot write to store {path}: permission denied or read-only ({detail})")
    if code == _IOERR:
        return StoreError(f"I/O error on store {path} while {doing} ({detail}); check its disk")
    return StoreError(f"store {path} failed while {doing} ({detail})")


def os_reason(exc: OSError, path: Path) -> str:
    """An OSError on ``path`` in user words."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return _why_unopenable(path)
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno == errno.ENOSPC:
        return "disk full"
    return one_line(exc.strerror or exc)


def _why_unopenable(path: Path) -> str:
    """Why SQLite could not open ``path`` ("unable to open database file" says nothing)."""
    if path.is_dir():
        return "it is a folder, not a file"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, not a folder"
    if not os.access(path if path.exists() else parent, os.W_OK):
        return "permission denied"
    return "unable to open the file"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def check_header(path: Path) -> bool:
    """Refuse a file that is not a whole SQLite database; True if it holds one."""
    wal = Path(f"{path}-wal")
    in_use = _size(wal) > 0  # looked at before and after the header
    try:
        with open(path, "rb") as f:
            header, size = f.read(100), os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StoreError(f"cannot open store {path}: {os_reason(exc, path)}") from exc
    if size == 0:
        return False  # SQLite treats an empty file as a new database
    damaged = f"store {path} is {{}}; restore it or start a new store"
    if header[:16] != _MAGIC:
        if _MAGIC.startswith(header):
            raise StoreError(damaged.format(f"truncated ({size:,} bytes)"))
        raise StoreError(damaged.format("not a SQLite database (corrupt, or another kind of file)"))
    if size < 100:
        raise StoreError(damaged.format(f"truncated ({size:,} bytes)"))
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise StoreError(damaged.format(f"corrupt (bad page size {page_size} in its header)"))
    if in_use or _size(wal) > 0:
        return True  # pages may still live in the WAL (a process uses it, or crashed): quick_check decides
    pages = int.from_bytes(header[28:32], "big")
    header_valid = pages > 0 and header[24:28] == header[92:96]  # SQLite's "valid-for" rule
    expected = pages * page_size if header_valid else size
    if size % page_size or size < expected:
        raise StoreError(damaged.format(f"truncated ({size:,} bytes, its header promises {expected:,})"))
    return True


def check_pages(db: sqlite3.Connection, path: Path, full_check_bytes: int) -> None:
    """``quick_check``, or for a file over ``full_check_bytes`` the cheap check of what
    resuming reads; a StoreError naming the damage."""
    size = _size(path) + _size(Path(f"{path}-wal"))
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if size <= full_check_bytes or "episodes" not in tables:
        problems = [str(r[0]) for r in db.execute("PRAGMA quick_check(1)")]
    else:
        problems = []
        for table in sorted(tables - {"episodes"}):
            quoted = table.replace("'", "''")  # a PRAGMA takes no bound parameters
            problems += [str(r[0]) for r in db.execute(f"PRAGMA quick_check('{quoted}')")]
        # Every page and key of the index done_keys and count read (not the rows' data).
        db.execute(
            "SELECT count(*), sum(length(task_id) + sample) FROM episodes INDEXED BY sqlite_autoindex_episodes_1"
        ).fetchall()
    problems = [p for p in problems if p != "ok"]
    if problems:
        detail = one_line("; ".join(problems)).removeprefix("*** in database main *** ")
        raise StoreError(f"store {path} is corrupt (quick_check: {detail}); restore it or start a new store")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (a zombie does not)."""
    if os.name != "posix":
        return True  # no cheap check (os.kill(pid, 0) terminates on Windows): trust the heartbeat
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    with suppress(OSError, IndexError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    return True


def lease_held(owner: str, pid: int, host: str, beat: float, now: float, stale_after: float) -> bool:
    """Whether the lease row ``(owner, pid, host, beat)`` still holds its run at ``now``."""
    if now - beat > stale_after:
        return False
    if host != HOST:
        return True
    if pid == os.getpid():
        return owner in LIVE_OWNERS
    return pid_alive(pid)
