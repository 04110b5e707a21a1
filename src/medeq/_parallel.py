"""Work sharing for the kernels: the calling thread and helper threads split an image.

Why not numba's ``parallel=True``: its parallel regions end in a barrier, so every call
waits for every worker thread to wake up. On the 2-core virtual machines this project
runs on, a worker that has been idle for a tenth of a second takes about 8 ms to wake,
four times as long as equalizing a 2048x2048 image takes (docs/performance.md has the
measurements). Here the calling thread starts at once and takes chunks from a shared
counter until none are left; a helper that wakes late finds the work done and goes back
to sleep, so a call is never slower than the serial path by more than one chunk. The
chunk bodies are numba functions compiled with ``nogil=True``, so the threads run them in
parallel.

Each participant has a fixed slot (the caller is slot 0) for per-thread scratch memory.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable

#: How long the caller spins for chunks still running on a helper before it sleeps.
_SPIN_SECONDS = 0.002
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


class _Job:
    def __init__(self, body: Callable[[int, int], None], nchunks: int) -> None:
        self.body = body
        self.nchunks = nchunks
        # next() on an itertools.count is atomic under the GIL: the chunk claim.
        self.claims = itertools.count()
        self.done: list[int] = []
        self.error: BaseException | None = None
        self.finished = threading.Event()

    def work(self, slot: int) -> None:
        while True:
            chunk = next(self.claims)
            if chunk >= self.nchunks:
                return
            # After an error the remaining chunks are claimed but skipped, so that waiting
            # for the job means the same thing as without one: every chunk is done.
            if self.error is None:
                try:
                    self.body(chunk, slot)
                except BaseException as exc:
                    self.error = exc
            self.done.append(chunk)
            if len(self.done) == self.nchunks:
                self.finished.set()


class WorkSharing:
    """The caller plus ``threads - 1`` helper threads, started on first use."""

    def __init__(self, threads: int | None = None) -> None:
        self._threads = _default_threads() if threads is None else max(1, threads)
        self._busy = threading.Lock()
        self._wake = threading.Condition()
        self._job: _Job | None = None
        self._generation = 0
        self._helpers: list[threading.Thread] = []
        self._closed = False

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
            if job is None:
                if self._closed:
                    return
                continue
            job.work(slot)

    def close(self) -> None:
        """Let the helper threads end (a closed pool runs every chunk in the caller)."""
        with self._wake:
            self._closed = True
            self._threads = 1
            self._job = None
            self._generation += 1
            self._wake.notify_all()

    def run(self, body: Callable[[int, int], None], nchunks: int) -> None:
        """Call ``body(chunk, slot)`` once for every chunk in ``0 .. nchunks-1``.

        Chunks of one slot run one after another in one thread. Returns when all have
        run; re-raises the first exception a chunk raised (the remaining chunks are
        then skipped). When another thread is already using the helpers, the caller
        runs every chunk itself.
        """
        if self._threads == 1 or nchunks == 1 or not self._busy.acquire(blocking=False):
            for chunk in range(nchunks):
                body(chunk, 0)
            return
        job = _Job(body, nchunks)
        try:
            self._start_helpers()
            with self._wake:
                self._job = job
                self._generation += 1
                self._wake.notify_all()
            job.work(0)
            self._wait(job)
        finally:
            with self._wake:
                self._job = None
            self._busy.release()
        if job.error is not None:
            raise job.error

    @staticmethod
    def _wait(job: _Job) -> None:
        """Wait for chunks that helpers claimed and are still running."""
        deadline = time.perf_counter() + _SPIN_SECONDS
        while len(job.done) < job.nchunks:
            if time.perf_counter() > deadline:
                job.finished.wait()
                return
            # Sleeping here would cost a wake-up as slow as the one this design avoids;
            # yielding lets a helper that shares this core finish.
            _yield()


_pool = WorkSharing()


def pool() -> WorkSharing:
    """The process's work-sharing pool."""
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
