"""Threads for the kernels: the calling thread starts at once, helpers join when they can.

Why not numba's ``parallel=True``: its parallel regions end in a barrier, so every call
waits until every worker thread has woken up and done its share. On the 2-core virtual
machines this project runs on, a thread that has been idle for a tenth of a second takes
milliseconds to wake, longer than equalizing a 2048x2048 image (docs/performance.md has
the measurements). Here a job is a compiled worker function that every participant calls
once: the caller first, helpers as they wake. Each call takes chunks from a shared atomic
counter until none are left (see :mod:`medeq._jit`), so a helper that wakes late finds
the work done, and the caller waits only for chunks a helper has already started.

Each participant has a fixed slot (the caller is slot 0) for its own scratch memory and
results. The workers release the GIL, so the threads run them in parallel, and each
needs the GIL only to start its call.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

#: How long the caller spins for chunks still running on a helper before it blocks.
_SPIN_SECONDS = 0.002
#: Polls a helper makes, after its share of a job, for the next job before it returns
#: to Python: about 0.6 ms here, longer than the Python between the two jobs of one
#: equalize call (see medeq._jit._linger).
LINGER_SPINS = 1_000_000
#: Give up the CPU without sleeping (releases the GIL).
_yield: Callable[[], None] = getattr(os, "sched_yield", lambda: time.sleep(0))


def _default_threads() -> int:
    env = os.environ.get("MEDEQ_NUM_THREADS", "").strip()
    if env:
        return max(1, int(env))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


#: ``work(slot, generation, spins)``: see :meth:`WorkSharing.run`.
Work = Callable[[int, int, int], None]


class _Job:
    def __init__(self, work: Work, finished: Callable[[], bool], generation: int) -> None:
        self.work = work
        self.finished = finished
        self.generation = generation
        self.error: BaseException | None = None
        self.active = 0
        self.lock = threading.Lock()
        self.changed = threading.Event()

    def run(self, slot: int, spins: int) -> None:
        with self.lock:
            self.active += 1
        try:
            self.work(slot, self.generation, spins)
        except BaseException as exc:
            if self.error is None:
                self.error = exc
        finally:
            with self.lock:
                self.active -= 1
            self.changed.set()

    def _settled(self) -> bool:
        if self.error is not None:
            # The buffers must outlive every call still running.
            return self.active == 0
        return self.finished()

    def wait(self) -> None:
        """Until every chunk is finished, or after a failure every call has returned."""
        deadline = time.perf_counter() + _SPIN_SECONDS
        while not self._settled():
            if time.perf_counter() < deadline:
                # Sleeping would cost a wake-up as slow as the one this design avoids;
                # yielding lets a helper that shares this core go on.
                _yield()
            else:
                self.changed.wait(0.001)
                self.changed.clear()


class WorkSharing:
    """The calling thread plus ``threads - 1`` helper threads, started on first use."""

    def __init__(self, threads: int | None = None) -> None:
        self._threads = _default_threads() if threads is None else max(1, threads)
        self._busy = threading.Lock()
        self._wake = threading.Condition()
        self._job: _Job | None = None
        self._generation = 0
        self._helpers: list[threading.Thread] = []
        self._closed = False
        #: ``control[0]``: the newest job's number, which lingering helpers watch.
        self.control: NDArray[np.int64] = np.zeros(1, np.int64)

    @property
    def threads(self) -> int:
        """Participants: the calling thread and its helpers."""
        return self._threads

    def _start_helpers(self) -> None:
        while len(self._helpers) < self._threads - 1:
            slot = len(self._helpers) + 1
            helper = threading.Thread(
                target=self._serve, args=(slot,), name=f"medeq-kernels-{slot}", daemon=True
            )
            helper.start()
            self._helpers.append(helper)

    def _serve(self, slot: int) -> None:
        seen = 0
        while True:
            with self._wake:
                while self._generation == seen:
                    self._wake.wait()
                seen = self._generation
                job = self._job
            if job is not None:
                job.run(slot, LINGER_SPINS)
            elif self._closed:
                return

    def close(self) -> None:
        """Let the helper threads end (a closed pool runs everything in the caller)."""
        with self._wake:
            self._closed = True
            self._threads = 1
            self._job = None
            self._generation += 1
            self.control[0] = self._generation
            self._wake.notify_all()

    def run(self, work: Work, finished: Callable[[], bool]) -> None:
        """Call ``work(slot, generation, spins)`` in the caller and in helpers that wake in time.

        The caller takes slot 0, helpers 1 and up. ``work`` must take chunks from a
        shared counter until none are left, then (helpers, ``spins`` > 0) linger while
        ``control[0] == generation``; ``finished()`` must tell when every chunk is done.
        Returns then; re-raises an exception from any participant. When another thread
        is using the helpers, or there is one thread, the caller does all the work.
        """
        if self._threads == 1 or not self._busy.acquire(blocking=False):
            work(0, -1, 0)
            return
        try:
            self._start_helpers()
            with self._wake:
                self._generation += 1
                job = _Job(work, finished, self._generation)
                self._job = job
                # Lingering helpers see this at once, sleeping ones when notified.
                self.control[0] = self._generation
                self._wake.notify_all()
            job.run(0, 0)
            job.wait()
        finally:
            with self._wake:
                self._job = None
            self._busy.release()
        if job.error is not None:
            raise job.error


_pool = WorkSharing()


def pool() -> WorkSharing:
    """The process's pool."""
    return _pool


def set_threads(threads: int | None) -> None:
    """Use ``threads`` participants from now on (None: one per available CPU)."""
    global _pool
    _pool.close()
    _pool = WorkSharing(threads)


def _after_fork() -> None:
    # The helper threads do not exist in a forked child.
    global _pool
    _pool = WorkSharing(_pool.threads)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
