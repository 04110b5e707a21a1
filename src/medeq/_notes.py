"""Notes: what medeq repaired, assumed or chose for one file, for its report entry.

Some inputs are not wrong enough to refuse but not right either: an empty Modality LUT
item that is ignored, a file window that lies wholly outside the data, a source without
(0020,000D) *Study Instance UID* that gets a derived one. The code that makes such a
choice calls :func:`note`; the message is logged (INFO) and, inside :func:`collecting`,
kept in a list that the caller attaches to its result (``Derived.notes``, the report's
``notes`` of a file). Collectors nest: a note reaches every collector open around it.

Messages follow the errors' rule: they name the file, the DICOM tag and the value.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar

__all__ = ["collecting", "note"]

logger = logging.getLogger("medeq")

_collectors: ContextVar[tuple[list[str], ...]] = ContextVar("medeq_notes", default=())


def note(message: str) -> None:
    """Record ``message`` in every open collector (once each) and log it at INFO level."""
    logger.info("%s", message)
    for collected in _collectors.get():
        if message not in collected:
            collected.append(message)


@contextlib.contextmanager
def collecting() -> Iterator[list[str]]:
    """Collect the notes made inside the ``with`` block (of this thread or task)."""
    collected: list[str] = []
    token = _collectors.set((*_collectors.get(), collected))
    try:
        yield collected
    finally:
        _collectors.reset(token)
