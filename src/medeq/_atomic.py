"""Atomic file writes: a complete file appears at its path, or nothing does.

Data go to a hidden temporary file in the target folder (same file system), are flushed
to disk, and the file is then renamed into place. A crash or kill at any point leaves the
target untouched; at worst a hidden ``.<name>.*.part`` file remains, which later runs may
delete (:func:`remove_stale_parts`).

A batch writes many files under :func:`deferred_sync` and flushes them all at its end
with :func:`sync_files`. A flush waits for the file system's journal, which on ext4 also
writes out every other process's pending data: one flush per file cost a 100-file
conversion 0.6 s standalone and 6 ms a file beside other writers. Renaming still makes
each file appear whole or not at all; until the batch's flush, only a power cut (not a
crash or kill) can leave a file short, which a resumed run detects and reports.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import OutputError

PART_SUFFIX = ".part"
_umask: int | None = None
_deferred = False


@contextlib.contextmanager
def deferred_sync() -> Iterator[None]:
    """Atomic writes in this block skip the flush; the caller flushes with sync_files."""
    global _deferred
    before, _deferred = _deferred, True
    try:
        yield
    finally:
        _deferred = before


def sync_files(paths: Iterable[str | os.PathLike[str]]) -> dict[str, str]:
    """Flush files and their folders to disk; return {path: error} for those that failed.

    After the first flush the file system has written the rest, so each further one
    returns at once.
    """
    failed: dict[str, str] = {}
    folders: set[str] = set()
    for path in paths:
        try:
            _fsync_path(path)
            folders.add(os.path.dirname(os.path.abspath(path)))
        except OSError as exc:
            failed[str(path)] = f"{path}: cannot flush to disk: {exc.strerror or exc}"
    for folder in sorted(folders):
        with contextlib.suppress(OSError):  # not every system can open a folder
            _fsync_path(folder)
    return failed


def _fsync_path(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_mode() -> int:
    """The mode a plain open() would give a new file (mkstemp gives 0600)."""
    global _umask
    if _umask is None:
        _umask = os.umask(0o022)
        os.umask(_umask)
    return 0o666 & ~_umask


def atomic_write(
    path: Path, write: Callable[[BinaryIO], object], *, overwrite: bool = True
) -> None:
    """Write ``path`` through ``write(file)`` atomically.

    Raises
    ------
    OutputError
        If the folder cannot be created or written, or ``path`` exists and ``overwrite``
        is False.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=PART_SUFFIX
        )
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _file_mode())
            write(f)
            f.flush()
            if not _deferred:
                os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            # link() refuses to replace an existing file, atomically.
            os.link(tmp, path)
            tmp.unlink()
    except FileExistsError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: exists (pass overwrite=True to replace it)") from exc
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def remove_stale_parts(folder: Path) -> int:
    """Delete temporary files an interrupted run left below ``folder``; return how many."""
    removed = 0
    for part in Path(folder).rglob(f".*{PART_SUFFIX}"):
        with contextlib.suppress(OSError):
            part.unlink()
            removed += 1
    return removed
