"""Worker processes for :func:`medeq.convert`: the pool, its queue, and crash recovery.

A conversion runs each job (a series, or one image) in two passes of tasks:

1. a first pass per file (decode its pixels, or count its normalised values);
2. once every first-pass task of the job is back, this process decides the mapping and
   submits a second pass (write each file).

:class:`Scheduler` keeps a few jobs in flight (which bounds memory), hands the pool a
short queue, and survives workers that die: see its docstring.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import os
import signal
import sys
import threading
import traceback
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ._notes import collecting
from .errors import MedeqError
from .reader import DicomImage, read

__all__ = [
    "Inline",
    "Later",
    "Outcome",
    "Scanned",
    "Scheduler",
    "Task",
    "failure_text",
    "guarded",
    "native_stderr_silenced",
    "read_headers",
    "start_method",
]


class Job(Protocol):
    """What the scheduler knows of a job: its images (for messages) and where each
    file's notes go. :class:`medeq.convert.Job` is one."""

    @property
    def images(self) -> list[DicomImage]: ...

    @property
    def results(self) -> list[Any]: ...


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool) -> Iterator[None]:
    """Hide what C decoders print on file descriptor 2 (their messages become our errors)."""
    if not enabled:
        yield
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def start_method() -> str:
    """How to start worker processes: "fork" when that is safe here, else "spawn".

    A forked worker starts at once, with medeq already imported; a spawned one imports it
    afresh (about half a second of CPU each). Forking is safe only while this process runs
    no other thread (a thread holding a lock at the fork would leave it held for ever in
    the child), and it is used on Linux only.
    """
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return "fork"
    return "spawn"


def _ready() -> None:
    """A task that does nothing: its end tells that a worker process is up."""


def _launch(pool: Executor, workers: int) -> list[Future[None]]:
    """Start the pool's workers; the futures of their first (empty) tasks.

    A forked worker shares this process's memory until it writes to it, and a garbage
    collection in the worker touches every object it looks at: frozen here (gc.freeze),
    the objects inherited are left alone, and the worker reads its first headers twice
    as fast (50 instead of 100 ms for 12 CT headers).
    """
    gc.freeze()
    try:
        # A fork-context pool starts all its processes at the first submit.
        return [pool.submit(_ready) for _ in range(workers)]
    finally:
        gc.unfreeze()


#: Exceptions that stop a batch instead of failing one file: the user's Ctrl-C (or
#: SIGTERM, which the command turns into one), and a process that is exiting.
STOPS_THE_BATCH = (KeyboardInterrupt, SystemExit, GeneratorExit)


def failure_text(exc: BaseException, name: str = "") -> str:
    """One line saying why handling a file failed (``name``: the file, if known).

    A MedeqError's message already names the file and the cause. Anything else is a bug
    of medeq's or of a library under it (a decoder that panics raises a BaseException):
    the line gives its class, its message and where in medeq it was raised, so that a
    report is enough to find it.
    """
    if isinstance(exc, MedeqError):
        return " ".join(str(exc).split())
    where = ""
    ours = [
        f for f in traceback.extract_tb(exc.__traceback__) if f"{os.sep}medeq{os.sep}" in f.filename
    ]
    if ours:
        where = f" at medeq/{Path(ours[-1].filename).name}:{ours[-1].lineno} in {ours[-1].name}"
    message = " ".join(str(exc).split())[:500] or "(no message)"
    text = (
        f"internal error {type(exc).__name__}{where}: {message} "
        "(a bug of medeq's or of a library it uses; please report it)"
    )
    return f"{name}: {text}" if name else text


@dataclass(frozen=True)
class Outcome:
    """What a task sends back: its value and the notes made while it ran, or its failure.

    Every task a :class:`Scheduler` runs goes through :func:`guarded`, in a worker or in
    this process, so no exception of a task reaches the batch: a task that raised has
    ``failure`` set (:func:`failure_text`; ``internal`` when it was not a MedeqError,
    whose text does not name the file yet) and ``value`` None.
    """

    value: Any
    notes: tuple[str, ...] = ()
    failure: str | None = None
    internal: bool = False

    def error(self, name: str | None) -> str:
        """The failure as one line naming the file ``name`` (a MedeqError's names it)."""
        return f"{name}: {self.failure}" if self.internal else str(self.failure)


def guarded(fn: Callable[..., Any], args: tuple[Any, ...]) -> Outcome | Later:
    """Run ``fn(*args)`` into an :class:`Outcome`; nothing it raises escapes.

    Only what stops a whole batch (:data:`STOPS_THE_BATCH`) is raised again. A value of
    :class:`Later` stays one, whose ``finish`` is guarded the same way.
    """
    with collecting() as notes:
        try:
            value = fn(*args)
        except STOPS_THE_BATCH:
            raise
        except BaseException as exc:  # native decoders may raise BaseExceptions (panics)
            internal = not isinstance(exc, MedeqError)
            return Outcome(None, tuple(notes), failure_text(exc), internal)
    if isinstance(value, Later):
        return Later(functools.partial(_finish_guarded, value.finish, tuple(notes)))
    return Outcome(value, tuple(notes))


def _finish_guarded(finish: Callable[[], Any], notes: tuple[str, ...]) -> Outcome:
    outcome = guarded(finish, ())
    assert isinstance(outcome, Outcome)
    return Outcome(outcome.value, notes + outcome.notes, outcome.failure, outcome.internal)


#: A file the scan read: its image (or why it could not be read), and the notes made.
Scanned = tuple[DicomImage | str, tuple[str, ...]]


def read_headers(files: list[str], keep: bool = True) -> list[Scanned]:
    """Read the headers of ``files`` (pixels are not decoded), each with its notes.

    Whatever goes wrong with one file (a MedeqError, or a bug) becomes its message:
    the other files are read all the same. ``keep`` False: the images go without their
    headers (:meth:`DicomImage.without_header`), as a worker sends them back.
    """
    images: list[Scanned] = []
    for file in files:
        outcome = guarded(read, (file,))
        assert isinstance(outcome, Outcome)
        if outcome.failure is None:
            image = outcome.value if keep else outcome.value.without_header()
            images.append((image, outcome.notes))
        else:
            images.append((outcome.error(file), outcome.notes))
    return images


@dataclass(frozen=True)
class Later:
    """What a task returns in place of its outcome to finish on :class:`Inline`'s thread.

    ``finish()`` gives the outcome; the task's future completes when it has run.
    """

    finish: Callable[[], Any]


class Inline(Executor):
    """Runs each task at once in this process (``jobs=1``).

    A task may return :class:`Later`: the rest of its work then runs on one thread of
    this executor, in the order handed over, while this process goes on with the next
    task. That rest must spend most of its time where Python lets other threads run
    (writing files, encoding a JPEG), or the two threads only take turns.
    """

    def __init__(self) -> None:
        self._thread: ThreadPoolExecutor | None = None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            outcome = fn(*args, **kwargs)
        except BaseException as exc:
            future.set_exception(exc)
            if isinstance(exc, KeyboardInterrupt):
                raise
            return future
        if isinstance(outcome, Later):
            if self._thread is None:
                self._thread = ThreadPoolExecutor(1, thread_name_prefix="medeq-finish")
            try:
                return self._thread.submit(outcome.finish)
            except RuntimeError:  # no new threads while the interpreter shuts down
                return self.submit(outcome.finish)
        future.set_result(outcome)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait, cancel_futures=cancel_futures)


def quiet_unpickling() -> None:
    """Ignore pydicom's warnings in this process outside the tasks' own capture.

    pydicom validates values again as they are unpickled between processes (an invalid
    UID in a source warns each time); the reader already logged what it says, and the
    tasks capture their own warnings (:func:`medeq.reader.logged_warnings`).
    """
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\.")


def _worker_init(parent: int) -> None:
    """Set up a worker process: quiet unpickling, Ctrl-C left to the main process, and
    an end with the main process ``parent``.

    Ctrl-C in a terminal reaches every process of the group; the main process ends the
    workers itself (:meth:`Scheduler.abort`), so they need not print their own traceback.
    """
    end_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The command turns SIGTERM into an exception in the main process; a worker is ended
    # by it (Scheduler.abort), as by default.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    quiet_unpickling()
    keep_freed_memory()


#: prctl's option that has the kernel send a signal to a process when its parent ends.
_PR_SET_PDEATHSIG = 1


@functools.cache
def _libc() -> Any:
    """glibc, or None where there is none (not Linux, or another C library)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def end_with_parent(parent: int) -> bool:
    """Have this process killed when the process ``parent`` ends (Linux); True if set.

    A main process killed outright (``kill -9``, the OOM killer) cannot end its workers:
    without this they would wait for work for ever, each holding its memory.
    """
    libc = _libc()
    if libc is None or libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # it ended before the line above took effect
        os._exit(1)
    return True


#: glibc's mallopt parameters, and the values set (its largest allowed mmap threshold).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_FREE, _MAP_FROM = 64 << 20, 32 << 20


def keep_freed_memory() -> bool:
    """Have this process's allocator keep freed memory for reuse (glibc); True if set.

    Writing a CT slice allocates and frees about 4.5 MB (pixels, an index array numpy
    makes for a table lookup, the encoded file, the preview). glibc gives the top of its
    heap back to the system whenever more than its trim threshold lies free there, and
    maps blocks above its mmap threshold afresh each time; both thresholds start at
    128 KiB and rise only as mapped blocks are freed, so whether a process pays depends
    on what it happened to free before. A forked worker measured here faulted the same
    1120 pages in again for every slice (about 3 ms of a 12 ms slice; the main process of
    ``--jobs 1``, none). Set, blocks up to 32 MiB come from the heap and up to 64 MiB of
    free heap is kept. Other C libraries are left alone.
    """
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, _MAP_FROM)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _KEEP_FREE)
    )


def _stop(pool: Executor) -> None:
    """End a process pool at once: its workers are terminated, not waited for."""
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14 on
    if terminate is not None:
        terminate()  # shuts the pool down too
        return
    # Ended first, so that the pool fails its futures as broken; cancelling them first
    # would kill its manager thread instead (see Scheduler.scan).
    _end_workers(pool)
    pool.shutdown(wait=False)


def _end_workers(pool: Executor) -> None:
    """Terminate the pool's worker processes that are still alive.

    ProcessPoolExecutor has no public handle on them before Python 3.14
    (``terminate_workers``).
    """
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        if process.is_alive():
            process.terminate()


@dataclass
class Task:
    """Work for a worker process, kept so it can be resubmitted after a worker crash."""

    kind: str  # decode or write
    job: Job
    index: int
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    #: The tasks a batch runs in one trip to a worker (see :func:`_batched`), else None.
    parts: list[Task] | None = None
    #: It runs a codec library on the file's data (compressed pixel data): a process of
    #: its own even with one worker (see :meth:`Scheduler.isolate`).
    isolate: bool = False


#: A job's first-pass tasks go to the workers in batches of up to this many: a task's
#: trip through the pool's pipes and threads costs about as much as counting a CT
#: slice's values (about 1 ms).
MOST_BATCHED = 16


def _run_batch(calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[Any]:
    """Run several tasks in one worker, one after the other; their outcomes in order."""
    return [guarded(fn, args) for fn, args in calls]


def _batched(tasks: list[Task], workers: int) -> list[Task]:
    """``tasks`` in batches that keep every worker in a few of them (one each for one).

    A batch's outcome is the list of its tasks' outcomes; a batch in flight when a
    worker dies is rerun as its tasks, one at a time (:meth:`Scheduler._recover`).
    """
    size = min(MOST_BATCHED, max(1, len(tasks) // (8 * workers)))
    if workers == 1 or size == 1:
        return tasks
    batches = []
    for start in range(0, len(tasks), size):
        parts = tasks[start : start + size]
        calls = [(t.fn, t.args) for t in parts]
        batches.append(
            Task(parts[0].kind, parts[0].job, parts[0].index, _run_batch, (calls,), parts)
        )
    return batches


class Scheduler:
    """Runs each job's two passes of tasks in worker processes (or in this one).

    ``first_pass(job)`` gives a job's first tasks (one per file, kind "decode"); when all
    are back, ``second_pass(job, outcomes, submit)`` decides the job here, submits its
    write tasks and returns how many (or -1 to run the first pass again, which
    ``first_pass`` may then plan differently). A write task returns ``(outputs, error)``,
    handed to ``written(job, index, outputs, error)``. A few jobs are in flight at a time,
    which bounds memory. A worker that dies (a decoder crash, the OOM killer) breaks the
    pool: the pool is rebuilt and the tasks that were in flight run again one at a time;
    the one that kills a worker while running alone fails with that cause, and the batch
    goes on.
    A first-pass task that does so gets the outcome ``(None, cause)``.
    """

    def __init__(
        self,
        workers: int,
        # The callbacks take the caller's own job type (a Job): Any, as Callable's
        # parameters cannot be narrowed to a subtype.
        first_pass: Callable[[Any], list[Task]],
        second_pass: Callable[[Any, list[Any], Callable[[Task], None]], int],
        written: Callable[[Any, int, list[str], str | None], None],
    ):
        self.workers = workers
        self.first_pass = first_pass
        self.second_pass = second_pass
        self.written = written
        self.pool = self._new_pool()
        #: With one worker: the process that runs the tasks marked ``isolate``.
        self.sandbox: ProcessPoolExecutor | None = None
        self.pending: dict[Future[Any], Task] = {}
        self.suspects: deque[Task] = deque()
        self.backlog: deque[Task] = deque()
        self.decoded: dict[int, list[Any]] = {}
        self.writes_left: dict[int, int] = {}
        self.closed = False

    def _new_pool(self) -> Executor:
        if self.workers == 1:
            return Inline()
        return self._process_pool(self.workers)

    @staticmethod
    def _process_pool(workers: int) -> ProcessPoolExecutor:
        import multiprocessing

        return ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context(start_method()),
            initializer=_worker_init,
            initargs=(os.getpid(),),
        )

    def submit(self, task: Task) -> None:
        if self.suspects:
            self.suspects.append(task)  # after a crash, tasks run one at a time
            return
        self.backlog.append(task)
        self._fill()

    def _fill(self) -> None:
        """Hand the pool a few tasks per worker; the rest wait here.

        Waiting on every future of a 500-slice series at once would cost time
        quadratic in its length; a short queue keeps each wait cheap.
        """
        while self.backlog and len(self.pending) < 4 * self.workers:
            self._send(self.backlog.popleft())

    def _send(self, task: Task) -> None:
        """Hand one task to the pool, guarded (:func:`guarded`): it cannot raise there."""
        if task.isolate and isinstance(self.pool, Inline):
            future = self._isolated(task)
        elif task.parts is None:
            future = self.pool.submit(guarded, task.fn, task.args)
        else:
            future = self.pool.submit(task.fn, *task.args)  # _run_batch guards each part
        self.pending[future] = task

    def run(self, jobs: Sequence[Job]) -> None:
        with warnings.catch_warnings():
            quiet_unpickling()
            self._run(jobs)

    def _run(self, jobs: Sequence[Job]) -> None:
        queue = list(reversed(jobs))
        try:
            while queue or self.pending or self.suspects or self.backlog:
                if self.suspects:
                    if not self.pending:
                        self._send(self.suspects.popleft())
                else:
                    while queue and len(self.decoded) + len(self.writes_left) <= self.workers:
                        self._start(queue.pop())
                    self._fill()
                if not self.pending:
                    continue
                finished, _ = wait(list(self.pending), return_when=FIRST_COMPLETED)
                crashed: list[Task] = []
                # In the order submitted: a finished set's order is arbitrary.
                for future in [f for f in self.pending if f in finished]:
                    task = self.pending.pop(future)
                    try:
                        outcome = future.result()
                    except BrokenProcessPool:
                        crashed.append(task)
                        continue
                    except STOPS_THE_BATCH:
                        raise
                    except BaseException as exc:  # its outcome could not be sent back
                        failed = Outcome(None, (), failure_text(exc), internal=True)
                        outcome = failed if task.parts is None else [failed] * len(task.parts)
                    self._done(task, outcome)
                if crashed:
                    self._recover(crashed)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Stop at once (an error or Ctrl-C here): drop queued tasks, end the workers.

        Merely shutting the pool down is not enough: a worker sending back a big result
        that no one reads any more blocks for ever, and this process waits for its
        children as it exits.
        """
        if self.closed:
            return
        self.closed = True
        if self.sandbox is not None:
            _stop(self.sandbox)
        if isinstance(self.pool, Inline):
            # The file being written on its thread is finished and the rest dropped, so
            # that nothing appears (unflushed) after the run has returned.
            self.pool.shutdown(wait=True, cancel_futures=True)
            return
        _stop(self.pool)

    def close(self) -> None:
        """Shut the pool down, waiting for its processes (unless a failure already did)."""
        if not self.closed:
            self.closed = True
            self.pool.shutdown(wait=True)
            if self.sandbox is not None:
                self.sandbox.shutdown(wait=True)

    def isolate(self) -> None:
        """With one worker, start the process that runs the tasks marked ``isolate``.

        A codec library given hostile data can abort the process it runs in (CharLS
        does, on some sizes); checked as the reader checks every codestream, the data
        should not do that, but the one process of ``jobs=1`` is also the batch's, so such
        tasks run in a process of their own, one at a time. Started here, before the run
        starts its threads, it is forked at once. Worker processes need none.
        """
        if isinstance(self.pool, Inline) and self.sandbox is None:
            self.sandbox = self._process_pool(1)
            _launch(self.sandbox, 1)

    def _isolated(self, task: Task) -> Future[Any]:
        """Run ``task`` in the sandbox process and wait; a crash there fails the task."""
        if self.sandbox is None:
            self.isolate()
        assert self.sandbox is not None
        future: Future[Any] = Future()
        try:
            outcome = self.sandbox.submit(guarded, task.fn, task.args).result()
        except BrokenProcessPool:
            _stop(self.sandbox)
            self.sandbox = None
            path = task.job.images[task.index].info.path
            outcome = Outcome(
                None,
                (),
                f"{path}: the codec library ended the process decoding it (the compressed "
                "pixel data are damaged in a way the decoder does not survive)",
            )
        except STOPS_THE_BATCH:
            raise
        except BaseException as exc:  # its outcome could not be sent back
            outcome = Outcome(None, (), failure_text(exc), internal=True)
        future.set_result(outcome)
        return future

    def scan(self, files: list[Path]) -> list[Scanned]:
        """Headers of ``files`` (or error messages), read in batches by the workers.

        Until the first worker is up (each imports medeq, which takes half a second),
        this process reads batches from the front of the list; then it keeps the pool a
        few batches from the front and reads from the back itself, until the two meet.
        Reading a header runs no C decoder, so a worker should not die on one; if the
        pool breaks anyway (the OOM killer), the batches it lost are read here too.
        The images come without their headers (:meth:`DicomImage.without_header`),
        whichever process read them: what this process decides needs only their info,
        and a worker that writes a file reads its header again (refusing a file that
        changed since). Headers thus never travel between processes, and a big batch
        does not hold them all here.
        """
        names = [str(f) for f in files]
        size = max(1, min(32, len(names) // (4 * self.workers)))
        batches = [names[i : i + size] for i in range(0, len(names), size)]
        if isinstance(self.pool, Inline):
            return [image for batch in batches for image in read_headers(batch)]
        done: list[list[Scanned] | None] = [None] * len(batches)
        broken = False
        try:
            ready = _launch(self.pool, self.workers)
            front, back = (
                0,
                len(batches),
            )  # the pool takes batches[front], this process batches[back - 1]
            while front < back and not any(r.done() for r in ready):
                done[front] = read_headers(batches[front], False)
                front += 1
            # No future is ever cancelled: a cancelled future in a pool that then breaks
            # kills the pool's manager thread (Python 3.11), which leaves workers hanging.
            inflight: dict[Future[list[Scanned]], int] = {}
            while front < back or inflight:
                while front < back and not broken and len(inflight) < 2 * self.workers:
                    inflight[self.pool.submit(read_headers, batches[front], False)] = front
                    front += 1
                if front < back:
                    back -= 1
                    done[back] = read_headers(batches[back], False)
                    finished = [f for f in inflight if f.done()]
                else:
                    finished = list(wait(list(inflight), return_when=FIRST_COMPLETED)[0])
                for future in finished:
                    i = inflight.pop(future)
                    try:
                        done[i] = future.result()
                    except BrokenProcessPool:
                        broken = True
                        done[i] = read_headers(batches[i], False)
                    except STOPS_THE_BATCH:
                        raise
                    except BaseException:  # its headers could not be sent back
                        done[i] = read_headers(batches[i], False)
        except BaseException:
            self.abort()
            raise
        if broken:
            self._replace_pool()
        return [image for batch in done if batch is not None for image in batch]

    def _replace_pool(self) -> None:
        """Retire a broken pool (ending whatever is left of its processes); start anew.

        The new workers start here, as the first ones did (:func:`_launch`).
        """
        _end_workers(self.pool)
        self.pool.shutdown(wait=True)
        self.pool = self._new_pool()
        _launch(self.pool, self.workers)

    def _recover(self, crashed: list[Task]) -> None:
        """Rebuild the pool; rerun the tasks that were in flight one at a time.

        A task that breaks the pool while it runs alone is the culprit: it fails.
        """
        tasks = [part for t in [*crashed, *self.pending.values()] for part in t.parts or [t]]
        self.pending.clear()
        self._replace_pool()
        if len(tasks) == 1:
            task = tasks[0]
            path = task.job.images[task.index].info.path
            what = "decoding" if task.kind == "decode" else "writing"
            self._done(task, Outcome(None, (), f"{path}: a worker process died while {what} it"))
            return
        self.suspects.extendleft(reversed(tasks))

    def _start(self, job: Job) -> None:
        """Submit a job's first pass."""
        self.decoded[id(job)] = [None] * len(job.images)
        for task in _batched(self.first_pass(job), self.workers):
            self.submit(task)

    def _done(self, task: Task, outcome: Any) -> None:
        if task.parts is not None:
            for part, part_outcome in zip(task.parts, outcome, strict=True):
                self._done(part, part_outcome)
            return
        job, i = task.job, task.index
        assert isinstance(outcome, Outcome)
        job.results[i].add_notes(outcome.notes)
        if outcome.failure is None:
            outcome = outcome.value
        else:
            error = outcome.error(job.images[i].info.path)
            outcome = (None, error) if task.kind == "decode" else ([], error)
        if task.kind == "decode":
            self.decoded[id(job)][i] = outcome
            if all(d is not None for d in self.decoded[id(job)]):
                submitted = self.second_pass(job, self.decoded.pop(id(job)), self.submit)
                if submitted < 0:
                    self._start(job)
                elif submitted:
                    self.writes_left[id(job)] = submitted
            return
        outputs, error = outcome
        self.written(job, i, outputs, error)
        self.writes_left[id(job)] -= 1
        if self.writes_left[id(job)] == 0:
            del self.writes_left[id(job)]
