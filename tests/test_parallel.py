"""The work-sharing pool: every chunk once, errors surface, concurrent callers, forks."""

from __future__ import annotations

import itertools
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import pytest

import medeq
from medeq import _parallel


@pytest.fixture
def pool() -> Iterator[_parallel.WorkSharing]:
    workers = _parallel.WorkSharing(3)
    yield workers
    workers.close()


class Chunks:
    """A job in plain Python: workers claim chunks from a shared counter, as in _jit."""

    def __init__(self, nchunks: int, body: Callable[[int, int], None]) -> None:
        self.nchunks = nchunks
        self.body = body
        self.claims = itertools.count()
        self.done: list[int] = []

    def work(self, slot: int, generation: int, spins: int) -> None:
        while (chunk := next(self.claims)) < self.nchunks:
            self.body(chunk, slot)
            self.done.append(chunk)

    def finished(self) -> bool:
        return len(self.done) == self.nchunks


def run(pool: _parallel.WorkSharing, nchunks: int, body: Callable[[int, int], None]) -> Chunks:
    job = Chunks(nchunks, body)
    pool.run(job.work, job.finished)
    return job


def test_every_chunk_runs_once_in_a_valid_slot(pool: _parallel.WorkSharing) -> None:
    for nchunks in (1, 2, 7, 100):
        seen: list[tuple[int, int]] = []
        job = run(pool, nchunks, lambda c, slot, seen=seen: seen.append((c, slot)))
        assert job.finished()
        assert sorted(c for c, _ in seen) == list(range(nchunks))
        assert all(0 <= slot < pool.threads for _, slot in seen)


def test_helpers_take_part(pool: _parallel.WorkSharing) -> None:
    slots: set[int] = set()
    for _ in range(20):
        run(pool, 40, lambda c, slot: (slots.add(slot), time.sleep(0.001)))
        if len(slots) > 1:
            break
    assert len(slots) > 1


def test_chunks_of_one_slot_never_overlap(pool: _parallel.WorkSharing) -> None:
    busy = [0] * pool.threads
    clashes = []

    def body(c: int, slot: int) -> None:
        busy[slot] += 1
        if busy[slot] > 1:
            clashes.append(slot)
        time.sleep(0.0002)
        busy[slot] -= 1

    run(pool, 50, body)
    assert not clashes


def test_an_error_is_raised_after_every_call_returned(pool: _parallel.WorkSharing) -> None:
    running = []

    def body(c: int, slot: int) -> None:
        running.append(1)
        time.sleep(0.002)
        running.pop()
        if c == 3:
            raise KeyError("chunk 3")

    with pytest.raises(KeyError, match="chunk 3"):
        run(pool, 10, body)
    assert not running  # nothing still writing into the caller's buffers
    job = run(pool, 10, lambda c, slot: None)
    assert sorted(job.done) == list(range(10))


def test_concurrent_callers_each_get_all_their_chunks(pool: _parallel.WorkSharing) -> None:
    results: dict[int, list[bool]] = {0: [], 1: [], 2: []}

    def caller(k: int) -> None:
        for _ in range(20):
            job = run(pool, 9, lambda c, slot: time.sleep(0.0001))
            results[k].append(sorted(job.done) == list(range(9)))

    threads = [threading.Thread(target=caller, args=(k,)) for k in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == [True] * 20 for r in results.values())


def test_one_thread_runs_everything_in_the_caller() -> None:
    workers = _parallel.WorkSharing(1)
    me = threading.get_ident()
    idents = set()
    run(workers, 5, lambda c, slot: idents.add((threading.get_ident(), slot)))
    assert idents == {(me, 0)}


def test_closed_pool_runs_in_the_caller(pool: _parallel.WorkSharing) -> None:
    run(pool, 4, lambda c, slot: None)  # starts the helpers
    pool.close()
    me = threading.get_ident()
    idents = set()
    run(pool, 6, lambda c, slot: idents.add(threading.get_ident()))
    assert idents == {me}


def test_medeq_num_threads_sets_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDEQ_NUM_THREADS", "1")
    assert _parallel.WorkSharing().threads == 1
    monkeypatch.setenv("MEDEQ_NUM_THREADS", "3")
    assert _parallel.WorkSharing().threads == 3


def test_set_threads_replaces_the_pool() -> None:
    before = _parallel.pool()
    try:
        _parallel.set_threads(1)
        assert _parallel.pool().threads == 1
        img = np.arange(300 * 300, dtype=np.uint16).reshape(300, 300) % 1000
        single = medeq.equalize(img)
        _parallel.set_threads(2)
        np.testing.assert_array_equal(medeq.equalize(img), single)
    finally:
        _parallel.set_threads(before.threads)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_a_working_pool() -> None:
    img = np.arange(400 * 400, dtype=np.uint8).reshape(400, 400)
    expected = medeq.equalize(img)  # starts the helper threads in the parent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # the child: the helpers do not exist here
        ok = False
        try:
            ok = bool(np.array_equal(medeq.equalize(img), expected))
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
