"""Running compiled loops on bands of an image, one thread per band.

numba functions compiled with ``nogil=True`` release the GIL, so plain threads run them
in parallel. A private thread pool does it rather than numba's own parallel mode: its
default threading layer (workqueue) aborts the process when two Python threads launch
parallel loops at once, and a library cannot promise its callers will not.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

__all__ = ["MIN_PIXELS_PER_THREAD", "cpus", "in_bands", "parts_for"]

#: Below this many pixels per thread, starting the thread costs more than it saves.
MIN_PIXELS_PER_THREAD = 2**18
#: More threads than this only add memory traffic on the machines medeq targets.
MAX_THREADS = 8

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def parts_for(pixels: int, items: int) -> int:
    """How many threads should share ``items`` bands of an image of ``pixels`` pixels."""
    return max(1, min(cpus(), MAX_THREADS, items, pixels // MIN_PIXELS_PER_THREAD))


def in_bands(task: Callable[[int, tuple[int, int]], None], length: int, parts: int) -> None:
    """Run ``task(part, (start, stop))`` on ``parts`` contiguous bands of ``range(length)``.

    The split never changes the result as long as every band writes only its own
    elements. Exceptions from a band propagate to the caller.
    """
    if parts <= 1:
        task(0, (0, length))
        return
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                max_workers=min(cpus(), MAX_THREADS), thread_name_prefix="medeq"
            )
        executor = _executor
    bands = [(length * i // parts, length * (i + 1) // parts) for i in range(parts)]
    for _ in executor.map(task, range(parts), bands):
        pass
