"""Atomic file writes: a complete file appears at its path, or nothing does.

Data go to a hidden temporary file in the target folder (same file system), are flushed
to disk, and the file is then renamed into place. A crash or kill at any point leaves the
target untouched; at worst a hidden ``.<name>.*.part`` file remains, which later runs may
delete (:func:`remove_stale_parts`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import OutputError

PART_SUFFIX = ".part"
_umask: int | None = None


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
