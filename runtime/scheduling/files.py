"""Writing a run's output files whole: a learner checkpoint, the exported policy folder,
an episode export, a plot. The ``store`` boundary of :mod:`runtime.core.errors`, as for
the episode store itself.

Design decisions:
- Everything is written beside its target under a temporary name and renamed over it
  when complete (a folder: the old one is moved aside, the new one renamed in, the old
  one removed), so a full disk, a kill or a read-only folder mid-write leaves the
  previous file or folder as it was and no partial one: a reader never sees a torn file.
  The temporary name is fixed (``NAME.tmp``), so one a crash left behind is replaced by
  the next write; a folder that was moved aside and never replaced is moved back first.
- A target that cannot be written is refused before any work, in one line naming it:
  a folder where a file goes, a file where a folder goes, a parent that is a file or
  cannot be created (:func:`check_output`; a run calls it at build time).
- A failed write is a :class:`StoreError` naming the file and why (disk full, permission
  denied, read-only file system), in the words of the episode store's faults.
- Standard library only.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from runtime.core.errors import StoreError
from runtime.scheduling.store_faults import one_line, os_reason

__all__ = ["check_output", "written_whole"]


def check_output(target: str | Path, what: str, *, folder: bool = False) -> Path:
    """Refuse a ``target`` that cannot be written, before anything is computed: a folder
    where a file goes (or, ``folder``, a file where a folder goes), or a parent folder that
    is a file, cannot be created or is not writable. Creates the parent folders."""
    target = Path(target)
    if folder and target.exists() and not target.is_dir():
        raise StoreError(f"{what} {target} is a file, not a folder: move it away or choose another path")
    if not folder and target.is_dir():
        raise StoreError(f"{what} {target} is a folder, not a file: choose a file path")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot write {what} {target}: {os_reason(exc, target)}") from exc
    if not os.access(target.parent, os.W_OK):
        raise StoreError(f"cannot write {what} {target}: permission denied on {target.parent}")
    return target


def _remove(path: Path) -> None:
    with suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextmanager
def written_whole(
    target: str | Path, what: str, *, folder: bool = False, also: tuple[type[Exception], ...] = ()
) -> Iterator[Path]:
    """A temporary path beside ``target`` to write (a file, or with ``folder`` a folder);
    when the block ends without an error it replaces ``target`` in one rename. An OSError
    (or an error of ``also``: what a writer raises for a failed write) inside the block or
    while renaming is a one-line StoreError naming ``target``; whatever the error, the
    temporary is removed and ``target`` is as it was."""
    target = check_output(target, what, folder=folder)
    tmp = target.with_name(target.name + ".tmp")
    aside = target.with_name(target.name + ".old")
    caught: tuple[type[Exception], ...] = (OSError, *also)
    try:
        if folder and aside.is_dir() and not target.exists():
            os.replace(aside, target)  # a swap that a crash interrupted: the old folder is the export
        _remove(tmp)
        yield tmp
        if folder:
            _swap(tmp, target, aside)
        else:
            _fsync(tmp)
            os.replace(tmp, target)
    except caught as exc:
        why = os_reason(exc, target) if isinstance(exc, OSError) else one_line(exc)
        kept = "the previous one is kept" if target.exists() else "nothing was written"
        raise StoreError(f"cannot write {what} {target}: {why}; {kept}") from exc
    finally:
        _remove(tmp)


def _swap(new: Path, target: Path, aside: Path) -> None:
    """Put folder ``new`` at ``target``; an existing ``target`` is moved to ``aside`` first
    and removed once ``new`` is in place (moved back if that fails)."""
    if not target.exists():
        os.replace(new, target)
        return
    _remove(aside)
    os.replace(target, aside)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(aside, target)
        raise
    _remove(aside)
