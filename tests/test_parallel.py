"""The work-sharing pool: every chunk once, errors surface, concurrent callers, forks."""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Iterator

import numpy as np
import pytest

import medeq
from medeq import _parallel


@pytest.fixture
def pool() -> Iterator[_parallel.WorkSharing]:
    workers = _parallel.WorkSharing(3)
    yield workers
    workers.close()


def test_every_chunk_runs_once_in_a_valid_slot(pool: _parallel.WorkSharing) -> None:
    for nchunks in (1, 2, 7, 100):
        seen: list[tuple[int, int]] = []
        pool.run(lambda c, slot, seen=seen: seen.append((c, slot)), nchunks)
        assert sorted(c for c, _ in seen) == list(range(nchunks))
        assert all(0 <= slot < pool.threads for _, slot in seen)


def test_chunks_of_one_slot_never_overlap(pool: _parallel.WorkSharing) -> None:
    busy = [0] * pool.threads
    clashes = []

    def body(c: int, slot: int) -> None:
        busy[slot] += 1
        if busy[slot] > 1:
            clashes.append(slot)
        time.sleep(0.0002)
        busy[slot] -= 1

    pool.run(body, 50)
    assert not clashes


def test_an_error_in_a_chunk_is_raised_and_the_pool_still_works(
    pool: _parallel.WorkSharing,
) -> None:
    def body(c: int, slot: int) -> None:
        if c == 3:
            raise KeyError("chunk 3")

    with pytest.raises(KeyError, match="chunk 3"):
        pool.run(body, 10)
    done: list[int] = []
    pool.run(lambda c, slot: done.append(c), 10)
    assert sorted(done) == list(range(10))


def test_concurrent_callers_each_get_all_their_chunks(pool: _parallel.WorkSharing) -> None:
    results: dict[int, list[int]] = {0: [], 1: [], 2: []}

    def caller(k: int) -> None:
        for _ in range(20):
            got: list[int] = []

            def body(c: int, slot: int, got: list[int] = got) -> None:
                time.sleep(0.0001)
                got.append(c)

            pool.run(body, 9)
            results[k].append(len(set(got)) if sorted(got) == list(range(9)) else -1)

    threads = [threading.Thread(target=caller, args=(k,)) for k in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == [9] * 20 for r in results.values())


def test_one_thread_runs_everything_in_the_caller() -> None:
    workers = _parallel.WorkSharing(1)
    me = threading.get_ident()
    idents = set()
    workers.run(lambda c, slot: idents.add((threading.get_ident(), slot)), 5)
    assert idents == {(me, 0)}


def test_closed_pool_runs_in_the_caller(pool: _parallel.WorkSharing) -> None:
    pool.run(lambda c, slot: None, 4)  # starts the helpers
    pool.close()
    me = threading.get_ident()
    idents = set()
    pool.run(lambda c, slot: idents.add(threading.get_ident()), 6)
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
