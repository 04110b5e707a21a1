"""Atomic file writes: a complete file appears at its path, or nothing does.

Data go to a hidden temporary file in the target folder (same file system), are flushed
to disk, and the file is then renamed into place. A crash or kill at any point leaves the
target untouched; at worst a hidden ``.<name>.<pid>-*.part`` file remains, which later runs may
delete (:func:`remove_stale_parts`).

A batch writes many files under :func:`deferred_sync` and has a :class:`Flusher` flush
them on a thread, as they are finished, while the batch goes on: a flush waits for the
disk, and one per file in the writing process made that wait part of every file's cost.
Renaming still makes each file appear whole or not at all; until its flush, only a power
cut (not a crash or kill) can leave a file short, which a resumed run detects and
reports.
"""

from __future__ import annotations

import contextlib
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import OutputError

PART_SUFFIX = ".part"
#: Characters of the target's name that a temporary file's name repeats.
_PART_STEM = 64
_umask: int | None = None


class _Deferral(threading.local):
    on = False


_deferral = _Deferral()


@contextlib.contextmanager
def deferred_sync() -> Iterator[None]:
    """Atomic writes in this block (in this thread) skip the flush; the caller flushes
    (see Flusher)."""
    before, _deferral.on = _deferral.on, True
    try:
        yield
    finally:
        _deferral.on = before


class Flusher:
    """Flushes files to disk on a thread of its own, in the order they are added.

    The thread spends its time waiting for the disk, which releases the GIL: the caller
    goes on working meanwhile. :meth:`close` waits for the rest, flushes the folders
    (which makes the renames durable) and returns what failed.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[list[str] | None] = queue.SimpleQueue()
        self._failed: dict[str, str] = {}
        self._folders: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="medeq-flush", daemon=True)
        self._thread.start()

    def add(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        self._queue.put([str(p) for p in paths])

    def _run(self) -> None:
        while (paths := self._queue.get()) is not None:
            for path in paths:
                try:
                    _fsync_path(path)
                    self._folders.add(os.path.dirname(os.path.abspath(path)))
                except OSError as exc:
                    self._failed[path] = f"{path}: cannot flush to disk: {exc.strerror or exc}"

    def close(self) -> dict[str, str]:
        """Wait for every file added; flush their folders; return {path: error}."""
        self._queue.put(None)
        self._thread.join()
        for folder in sorted(self._folders):
            with contextlib.suppress(OSError):  # not every system can open a folder
                _fsync_path(folder)
        return self._failed


def _fsync_path(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _part_prefix(path: Path) -> str:
    """The start of a temporary file's name: hidden, the target's name, the process.

    Only the first _PART_STEM characters of the target's name are repeated: a target
    named near the file system's limit (255 bytes) must not fail on its temporary.
    """
    return f".{path.name[:_PART_STEM]}.{os.getpid()}-"


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
            dir=path.parent, prefix=_part_prefix(path), suffix=PART_SUFFIX
        )
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _file_mode())
            write(f)
            f.flush()
            # A file that replaces another is flushed before the rename even in a batch:
            # a power cut then leaves the old file or the new one, never a cut one.
            if not _deferral.on or (overwrite and path.exists()):
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
    """Delete temporary files interrupted runs left below ``folder``; return how many.

    A part file's name holds the id of the process writing it: the parts of a process
    still running (another run into the same folder) are left alone.
    """
    removed = 0
    for part in Path(folder).rglob(f".*{PART_SUFFIX}"):
        if _writer_alive(part.name):
            continue
        with contextlib.suppress(OSError):
            part.unlink()
            removed += 1
    return removed


def _writer_alive(name: str) -> bool:
    """Whether the process that named a part file ``name`` is still running."""
    pid = name.removesuffix(PART_SUFFIX).rpartition("-")[0].rpartition(".")[2]
    if not pid.isdigit():
        return False  # named by an older medeq: stale
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, owned by someone else
        return True
    return True


class Reservation:
    """Room on disk taken now for a file written atomically later, even if the disk fills.

    A batch's report must land however the batch ends, and the outputs written meanwhile
    may fill the disk it goes to: its place is allocated (``posix_fallocate``) at the
    start, as the hidden part file it will be renamed from. :meth:`write` writes into that
    room, so it needs no new blocks unless the data outgrow it.
    """

    def __init__(self, path: Path, size: int) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(
                dir=self.path.parent, prefix=_part_prefix(self.path), suffix=PART_SUFFIX
            )
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot write: {exc.strerror or exc}") from exc
        self._fd: int | None = fd
        self._tmp = Path(name)
        os.fchmod(fd, _file_mode())
        self.reserve(size)

    def reserve(self, size: int) -> None:
        """Take room for ``size`` bytes in all (more than before, or nothing happens)."""
        if self._fd is None:
            return
        # No room to take now (or no fallocate here): write() tries anyway.
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fallocate(self._fd, 0, max(size, 1))

    def write(self, data: bytes) -> None:
        """Put ``data`` at the path, atomically (the reservation is then used up)."""
        fd = self._fd
        if fd is None:
            raise OutputError(f"{self.path}: its reservation was already used")
        self._fd = None
        try:
            written = 0
            while written < len(data):
                written += os.pwrite(fd, data[written:], written)
            os.ftruncate(fd, len(data))
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(self._tmp, self.path)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            self._tmp.unlink(missing_ok=True)
            raise OutputError(f"{self.path}: cannot write: {exc.strerror or exc}") from exc

    def release(self) -> None:
        """Give the room back without writing (nothing appears at the path)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._tmp.unlink(missing_ok=True)
