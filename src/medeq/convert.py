"""Batch conversion: many inputs -> derived DICOM files, previews, figures and a report.

:func:`convert` is what ``medeq convert`` runs. It scans headers, groups files into series,
equalizes each series as one volume (or per slice), and writes the outputs into a tree
that mirrors the inputs' relative paths. It is built to be one step of a PACS export
script:

- every output is written atomically; an interrupted run leaves no partial file, and a
  re-run recognises the outputs it already made (their UIDs are fixed by the source UIDs
  and the parameters) and finishes the rest;
- it refuses to write into an input folder or over an input file, and replaces existing
  outputs only with ``overwrite=True``;
- a file that fails is reported and the batch goes on;
- decoding and writing run in ``jobs`` worker processes; one series at a time per worker
  is held in memory.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray

from . import _atomic, _kernels, core
from .enhance import Method, canonical_parameters, default_levels, describe, enhance, quality_of
from .errors import DicomError, MedeqError, OutputError, ParameterError
from .normalize import VoiPlan, WindowSpec, _invert, parse_window, voi_plan
from .reader import DicomImage, ImageInfo, read
from .series import Series, _make_series, find_dicom_files
from .writer import TransferSyntax, derive_header, derived_uid, sidecar, write_image

__all__ = ["FileResult", "Report", "convert"]

#: A conversion equalizing fewer pixels than this (256 CT slices of 512 x 512) uses the
#: numpy kernels in a process that has not loaded the compiled ones: loading those costs
#: about a second, more than they would save (measured in docs/performance.md).
JIT_WORTH_PIXELS = 1 << 26
#: A series is equalized slice by slice in the workers (each counts its slice's values,
#: this process adds the counts up and hands back one mapping) when it has at least two
#: images and runs in parallel, or is this many pixels or more; otherwise it is decoded
#: into one volume here. Slice-wise, no volume is ever held in memory.
STREAM_MIN_PIXELS = 1 << 26
#: Slices whose values span this many levels or more are equalized as a volume.
STREAM_MAX_SPAN = 1 << 20
#: With the default ``jobs``, one worker process per this many input files (at most one
#: per core): below about that, a worker's start-up costs more than it saves.
FILES_PER_WORKER = 32


@dataclass
class FileResult:
    """What happened to one input file."""

    input: str
    status: str  # converted, skipped, failed or planned
    outputs: list[str] = field(default_factory=list)
    error: str | None = None
    series_uid_in: str | None = None
    series_uid_out: str | None = None
    quality_before: dict[str, float] | None = None
    quality_after: dict[str, float] | None = None


@dataclass
class Report:
    """The outcome of :func:`convert`: one :class:`FileResult` per input file."""

    output: str
    parameters: dict[str, Any]
    files: list[FileResult] = field(default_factory=list)
    started: str = ""
    elapsed: float = 0.0
    dry_run: bool = False

    @property
    def totals(self) -> dict[str, int]:
        """Counts per status, and the total."""
        counts = {"converted": 0, "skipped": 0, "failed": 0, "planned": 0}
        for f in self.files:
            counts[f.status] += 1
        counts["total"] = len(self.files)
        return counts

    @property
    def exit_code(self) -> int:
        """0: every file converted (or already done); 1: some failed; 2: nothing to do."""
        totals = self.totals
        if totals["total"] == 0:
            return 2
        return 1 if totals["failed"] else 0

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        from . import __version__

        return {
            "medeq_version": __version__,
            "started": self.started,
            "elapsed_seconds": round(self.elapsed, 3),
            "output": self.output,
            "dry_run": self.dry_run,
            "parameters": self.parameters,
            "totals": self.totals,
            "files": [f.__dict__ for f in self.files],
        }

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as JSON, atomically."""
        import json

        text = json.dumps(self.as_dict(), indent=2, default=str) + "\n"
        target = Path(path)
        _atomic.atomic_write(target, lambda f: f.write(text.encode()))
        return target


@dataclass(frozen=True)
class _Settings:
    """What every job of one conversion shares."""

    enhance: dict[str, Any]
    transfer_syntax: TransferSyntax
    preview: bool
    figure: bool
    overwrite: bool
    keep_private: bool


@dataclass
class _Job:
    """One series (or one image) to convert, with where each file goes."""

    images: list[DicomImage]
    targets: list[Path]
    done: list[bool]
    results: list[FileResult]
    #: Set when the series is equalized slice-wise in the workers (see _stream_job).
    stream: VoiPlan | None = None


# --------------------------------------------------------------------------- workers


@contextlib.contextmanager
def _native_stderr_silenced(enabled: bool) -> Iterator[None]:
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


def _decode_task(info: ImageInfo, quiet: bool) -> tuple[NDArray[Any] | None, str | None]:
    """Decode one file's stored values (its header was read and checked by the scan)."""
    try:
        with _native_stderr_silenced(quiet):
            image = DicomImage(pydicom.Dataset(), info, Path(str(info.path)))
            return np.array(image.stored), None
    except MedeqError as exc:
        return None, str(exc)


def _start_method() -> str:
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


def _read_headers(files: list[str]) -> list[DicomImage | str]:
    """Read the headers of ``files`` (pixels are not decoded); an error becomes its message."""
    images: list[DicomImage | str] = []
    for file in files:
        try:
            images.append(read(file))
        except DicomError as exc:
            images.append(str(exc))
    return images


def _slice_values(path: str, sop_uid: str, plan: VoiPlan) -> tuple[DicomImage, NDArray[Any]]:
    """Read one file again in a worker and normalise its values as the plan says."""
    image = read(path)
    if image.info.sop_instance_uid != sop_uid:
        raise OutputError(
            f"{path}: changed during the conversion ((0008,0018) SOP Instance UID is now "
            f"{image.info.sop_instance_uid}, was {sop_uid})"
        )
    return image, plan.values(image)


def _count_task(
    path: str, sop_uid: str, plan: VoiPlan, quiet: bool
) -> tuple[tuple[int, int, NDArray[np.int64]] | str | None, str | None]:
    """Decode and normalise one slice; return its value range and value counts.

    Returns ``((lo, hi, counts), None)``, or ``("volume", None)`` when the values are not
    integers in a span small enough to count (the series is then equalized as a volume),
    or ``(None, error)``.
    """
    try:
        with _native_stderr_silenced(quiet):
            _, values = _slice_values(path, sop_uid, plan)
    except MedeqError as exc:
        return None, str(exc)
    if values.dtype.kind not in "iu":
        return "volume", None
    lo, hi = int(values.min()), int(values.max())
    if hi - lo >= STREAM_MAX_SPAN:
        return "volume", None
    counts = np.bincount((values.astype(np.int64) - lo).ravel(), minlength=hi - lo + 1)
    return (lo, hi, counts.astype(np.int64, copy=False)), None


def _stream_write_task(
    path: str,
    sop_uid: str,
    plan: VoiPlan,
    invert: tuple[float, float] | None,
    mapping: core.ValueMapping,
    header_options: dict[str, Any],
    target: str,
    ts: TransferSyntax,
    overwrite: bool,
    window: tuple[float, float] | None,
    quiet: bool,
) -> tuple[list[str], str | None]:
    """Decode, normalise and map one slice, then write it with its derived header."""
    try:
        with _native_stderr_silenced(quiet):
            image, values = _slice_values(path, sop_uid, plan)
        if invert is not None:
            values = _invert(values, *invert)
        written = write_image(
            derive_header(image, **header_options),
            mapping.apply(values),
            Path(target),
            transfer_syntax=ts,
            overwrite=overwrite,
            preview_window=window,
        )
        return [str(p) for p in written], None
    except MedeqError as exc:
        return [], str(exc)


def _write_task(
    source: DicomImage,
    header_options: dict[str, Any],
    pixels: NDArray[Any],
    path: str,
    ts: TransferSyntax,
    overwrite: bool,
    window: tuple[float, float] | None,
) -> tuple[list[str], str | None]:
    try:
        written = write_image(
            derive_header(source, **header_options),
            pixels,
            Path(path),
            transfer_syntax=ts,
            overwrite=overwrite,
            preview_window=window,
        )
        return [str(p) for p in written], None
    except MedeqError as exc:
        return [], str(exc)


class _Inline(Executor):
    """Runs each task at once in this process (``jobs=1``)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
            if isinstance(exc, KeyboardInterrupt):
                raise
        return future


# --------------------------------------------------------------------------- planning


def _expand(inputs: Iterable[str | os.PathLike[str]]) -> list[tuple[Path, Path]]:
    """(file, root) pairs: outputs mirror each file's path relative to its root."""
    pairs: list[tuple[Path, Path]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            pairs += [(f, p) for f in find_dicom_files(p)]
        elif p.name.upper() == "DICOMDIR" and p.is_file():
            pairs += [(f, p.parent) for f in find_dicom_files(p)]
        else:
            pairs.append((p, p.parent))
    return pairs


def _check_output(output: Path, inputs: Iterable[str | os.PathLike[str]]) -> None:
    out = output.resolve()
    for item in inputs:
        p = Path(item).resolve()
        folder = p if p.is_dir() else (p.parent if p.name.upper() == "DICOMDIR" else None)
        if folder is None:
            continue
        if out == folder or folder in out.parents or out in folder.parents:
            raise OutputError(
                f"{output}: refusing to write into the input tree {item} "
                "(choose an output folder outside it)"
            )


def _target(file: Path, root: Path, output: Path, taken: set[Path]) -> Path:
    try:
        relative = file.resolve().relative_to(root.resolve())
    except ValueError:
        relative = Path(file.name)
    target = output / relative
    n = 1
    while target in taken:
        n += 1
        target = target.with_name(f"{relative.stem}_{n}{relative.suffix}")
    taken.add(target)
    return target


def _already_done(target: Path, expected_uid: str) -> bool | str:
    """True if ``target`` is this command's own output; a message if it is something else."""
    if not target.exists():
        return False
    try:
        ds = pydicom.dcmread(target, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        if str(ds.get("SOPInstanceUID", "")) == expected_uid:
            return True
    except Exception:  # an unreadable file at the target is simply not ours
        pass
    return (
        f"{target}: exists and is not this command's output for these parameters "
        "(use --overwrite to replace it)"
    )


# --------------------------------------------------------------------------- convert


def convert(
    inputs: Iterable[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    method: Method | str = "global",
    bins: int | None = None,
    levels: int | None = None,
    window: WindowSpec = "auto",
    mask: str | None = None,
    per_slice: bool = False,
    variant: core.Variant | str = "standard",
    clip_limit: float = 0.01,
    kernel_size: int | tuple[int, int] | None = None,
    transfer_syntax: TransferSyntax | str = "explicit-little",
    preview: bool = True,
    figure: bool = False,
    jobs: int | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    keep_private: bool = True,
    quiet_decoders: bool = True,
    progress: Callable[[FileResult], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> Report:
    """Convert files, folders (recursive) and DICOMDIRs into equalized derived DICOM.

    Parameters
    ----------
    inputs : iterable of paths
        Files, folders and DICOMDIR files.
    output : path
        The output folder; the tree below it mirrors each input's relative paths.
    method, bins, levels, window, mask, per_slice, variant, clip_limit, kernel_size
        As :func:`medeq.enhance` (``mask`` is None, "none" or "auto").
    transfer_syntax : str
        As :func:`medeq.write`.
    preview : bool
        Write a JPEG beside each DICOM file.
    figure : bool
        Write the comparison figure (PNG) for each series.
    jobs : int, optional
        Worker processes. 1 runs everything in this process. The default uses every core
        for big batches and fewer for small ones (one per 32 files), since a worker's
        start-up costs about half a second.
    overwrite : bool
        Replace existing outputs. Without it, outputs this command already made (same
        source, same parameters) are skipped and anything else in the way is an error.
    dry_run : bool
        Plan only: report what would be written, write nothing.
    keep_private : bool
        Copy private attributes into the outputs.
    quiet_decoders : bool
        Hide what C decoder libraries print to standard error.
    progress : callable, optional
        Called with each :class:`FileResult` as it is settled.
    on_start : callable, optional
        Called once with the number of input files found, before any is read.

    Returns
    -------
    Report
        ``report.exit_code`` is 0 when every file was converted or already done, 1 when
        some failed, 2 when there was nothing to do.

    Raises
    ------
    ParameterError
        For a bad parameter, before anything is read or written.
    OutputError
        When the output folder lies in an input folder (or contains one).
    """
    paths = [Path(i) for i in inputs]
    ts = TransferSyntax.parse(transfer_syntax)
    try:
        how = Method(method)
    except ValueError:
        raise ParameterError(f"method must be 'global' or 'clahe', got {method!r}") from None
    core._check_bins(bins)
    core._check_levels(levels)
    core._as_variant(variant)
    parse_window(window)
    if mask not in (None, "none", "auto"):
        raise ParameterError(f"mask must be 'none' or 'auto', got {mask!r}")
    workers = (os.cpu_count() or 1) if jobs is None else jobs
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ParameterError(f"jobs must be a whole number >= 1, got {jobs!r}")
    out = Path(output)
    _check_output(out, paths)
    enhance_options: dict[str, Any] = {
        "method": how,
        "bins": bins,
        "window": window,
        "mask": mask,
        "levels": levels,
        "per_slice": per_slice,
        "variant": variant,
        "clip_limit": clip_limit,
        "kernel_size": kernel_size,
    }
    report = Report(
        output=str(out),
        parameters={
            **{k: (v.value if isinstance(v, Method) else v) for k, v in enhance_options.items()},
            "transfer_syntax": ts.value,
            "preview": preview,
            "figure": figure,
            "overwrite": overwrite,
        },
        started=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        dry_run=dry_run,
    )
    clock = time.perf_counter()

    def settle(result: FileResult) -> None:
        report.files.append(result)
        if progress is not None:
            progress(result)

    pairs = _expand(paths)
    if on_start is not None:
        on_start(len(pairs))
    if not pairs:
        report.elapsed = time.perf_counter() - clock
        return report
    settings = _Settings(enhance_options, ts, preview, figure, overwrite, keep_private)

    def make_write(job: _Job, outcomes: list[Any], submit: Callable[[_Task], None]) -> int:
        if job.stream is not None:
            return _stream_job(job, outcomes, submit, settings, settle, quiet_decoders)
        return _equalize_job(job, outcomes, submit, settings, settle)

    # Starting a worker costs about half a second (it imports medeq): more workers than
    # files would only cost that, and by default a small batch does not use every core.
    if jobs is None:
        workers = min(workers, max(1, len(pairs) // FILES_PER_WORKER))
    scheduler = _Scheduler(min(workers, len(pairs)), make_write, settle)
    warm: threading.Thread | None = None
    try:
        headers = scheduler.scan([file for file, _ in pairs])
        jobs_todo = _plan(pairs, headers, out, enhance_options, overwrite, dry_run, settle)
        if not dry_run and jobs_todo:
            slice_wise = (
                how is Method.GLOBAL and not per_slice and mask in (None, "none") and not figure
            )
            for job in jobs_todo:
                big = scheduler.workers > 1 or _pixels(job) >= STREAM_MIN_PIXELS
                if slice_wise and len(job.images) >= 2 and big:
                    job.stream = _stream_plan(job, window)
            kernels: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
            if how is Method.GLOBAL and not _kernels.loaded():
                pixels = sum(_pixels(job) for job in jobs_todo if job.stream is None)
                if pixels < JIT_WORTH_PIXELS:
                    kernels = _kernels.numpy_kernels()
                else:
                    # The compiled kernels load while the workers decode the first series.
                    warm = threading.Thread(target=_kernels.warm_up, name="medeq-warm-up")
                    warm.start()
            if out.exists():
                _atomic.remove_stale_parts(out)
            with kernels:
                scheduler.run(jobs_todo, quiet_decoders)
    finally:
        scheduler.close()
    if warm is not None:
        warm.join()
    report.elapsed = time.perf_counter() - clock
    return report


def _pixels(job: _Job) -> int:
    return sum(im.info.rows * im.info.columns * im.info.frames for im in job.images)


def _stream_plan(job: _Job, window: WindowSpec) -> VoiPlan | None:
    """The VOI plan for equalizing ``job`` slice-wise, or None to decode it as a volume."""
    try:
        plan = voi_plan(job.images, window)
    except MedeqError:
        return None  # the volume path reports it, file by file
    return plan if plan.sigmoid is None else None


def _plan(
    pairs: list[tuple[Path, Path]],
    headers: list[DicomImage | str],
    out: Path,
    options: dict[str, Any],
    overwrite: bool,
    dry_run: bool,
    settle: Callable[[FileResult], None],
) -> list[_Job]:
    groups: dict[str, list[tuple[DicomImage, Path]]] = {}
    taken: set[Path] = set()
    for (file, root), image in zip(pairs, headers, strict=True):
        if isinstance(image, str):
            settle(FileResult(str(file), "failed", error=image))
            continue
        target = _target(file, root, out, taken)
        groups.setdefault(image.info.series_instance_uid or str(file), []).append((image, target))

    jobs: list[_Job] = []
    for uid, members in groups.items():
        targets = {id(im): t for im, t in members}
        series = _make_series(uid, [im for im, _ in members])
        for dup in series.duplicates:
            kept = next(
                im for im in series.images if im.info.sop_instance_uid == dup.info.sop_instance_uid
            )
            settle(
                FileResult(
                    str(dup.info.path),
                    "skipped",
                    error=f"same (0008,0018) SOP Instance UID as {kept.name}: converted once",
                    series_uid_in=dup.info.series_instance_uid,
                )
            )
        # Images of different sizes cannot share a volume histogram: one job each.
        batches = [series.images] if series.stackable else [[im] for im in series.images]
        for batch in batches:
            canonical = canonical_parameters(batch, **options)
            series_out = derived_uid(
                batch[0].info.series_instance_uid or batch[0].info.sop_instance_uid,
                canonical,
                "series",
            )
            job = _Job([], [], [], [])
            for im in batch:
                target = targets[id(im)]
                expected = derived_uid(im.info.sop_instance_uid, canonical, "instance")
                done = False if overwrite else _already_done(target, expected)
                result = FileResult(
                    str(im.info.path),
                    "planned",
                    [str(target)],
                    series_uid_in=im.info.series_instance_uid,
                    series_uid_out=series_out,
                )
                if isinstance(done, str):
                    result.status, result.error, result.outputs = "failed", done, []
                    settle(result)
                    continue
                job.images.append(im)
                job.targets.append(target)
                job.done.append(done)
                job.results.append(result)
            if not job.images:
                continue
            if all(job.done):
                for r in job.results:
                    r.status = "skipped"
                    settle(r)
                continue
            if dry_run:
                for r, d in zip(job.results, job.done, strict=True):
                    r.status = "skipped" if d else "planned"
                    settle(r)
                continue
            jobs.append(job)
    return jobs


@dataclass
class _Task:
    """Work for a worker process, kept so it can be resubmitted after a worker crash."""

    kind: str  # decode or write
    job: _Job
    index: int
    fn: Callable[..., Any]
    args: tuple[Any, ...]


class _Scheduler:
    """Runs decode and write tasks in worker processes; equalizes in this one.

    Each job (series) is decoded in parallel, equalized here once all its files are
    decoded, then written in parallel. A few jobs are in flight at a time, which bounds
    memory. A worker that dies (a decoder crash, the OOM killer) breaks the pool: the pool
    is rebuilt and the tasks that were in flight run again one at a time; the one that
    kills a worker while running alone fails with that cause, and the batch goes on.
    """

    def __init__(
        self,
        workers: int,
        make_write: Callable[..., int],
        settle: Callable[[FileResult], None],
        decode: Callable[..., Any] = _decode_task,
    ):
        self.workers = workers
        self.decode = decode
        self.pool = self._new_pool()
        self.pending: dict[Future[Any], _Task] = {}
        self.suspects: deque[_Task] = deque()
        self.backlog: deque[_Task] = deque()
        self.decoded: dict[int, list[Any]] = {}
        self.writes_left: dict[int, int] = {}
        self.make_write = make_write
        self.settle = settle
        self.closed = False
        self.quiet = True

    def _new_pool(self) -> Executor:
        import multiprocessing

        if self.workers == 1:
            return _Inline()
        return ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context(_start_method())
        )

    def submit(self, task: _Task) -> None:
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
            task = self.backlog.popleft()
            self.pending[self.pool.submit(task.fn, *task.args)] = task

    def run(self, jobs: list[_Job], quiet: bool) -> None:
        queue = list(reversed(jobs))
        try:
            while queue or self.pending or self.suspects or self.backlog:
                if self.suspects:
                    if not self.pending:
                        task = self.suspects.popleft()
                        self.pending[self.pool.submit(task.fn, *task.args)] = task
                else:
                    while queue and len(self.decoded) + len(self.writes_left) <= self.workers:
                        self._start(queue.pop(), quiet)
                    self._fill()
                if not self.pending:
                    continue
                finished, _ = wait(list(self.pending), return_when=FIRST_COMPLETED)
                crashed: list[_Task] = []
                for future in finished:
                    task = self.pending.pop(future)
                    try:
                        outcome = future.result()
                    except BrokenProcessPool:
                        crashed.append(task)
                        continue
                    self._done(task, outcome)
                if crashed:
                    self._recover(crashed)
        except BaseException:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.closed = True
            raise

    def close(self) -> None:
        """Shut the pool down, waiting for its processes (unless a failure already did)."""
        if not self.closed:
            self.closed = True
            self.pool.shutdown(wait=True, cancel_futures=True)

    def scan(self, files: list[Path]) -> list[DicomImage | str]:
        """Headers of ``files`` (or error messages), read in batches by the workers.

        Until the first worker is up (each imports medeq, which takes half a second),
        this process reads batches from the front of the list; then it hands the rest to
        the pool and reads from the back whatever no worker has taken yet (cancelling
        it in the pool). Reading a header runs no C decoder, so a
        worker should not die on one; if the pool breaks anyway (the OOM killer), the
        batches it lost are read here too.
        """
        names = [str(f) for f in files]
        size = max(1, min(32, len(names) // (4 * self.workers)))
        batches = [names[i : i + size] for i in range(0, len(names), size)]
        read_here = isinstance(self.pool, _Inline)
        done: list[list[DicomImage | str] | None] = [None] * len(batches)
        broken = False
        try:
            if read_here:
                done = [_read_headers(batch) for batch in batches]
            else:
                # Until a worker is up, read here from the front.
                ready = [self.pool.submit(_ready) for _ in range(self.workers)]
                first = 0
                while first < len(batches) and not any(r.done() for r in ready):
                    done[first] = _read_headers(batches[first])
                    first += 1
                futures: dict[int, Future[list[DicomImage | str]]] = {
                    i: self.pool.submit(_read_headers, batches[i])
                    for i in range(first, len(batches))
                }
                # Then from the back, whatever the workers have not taken yet.
                for i in reversed(range(first, len(batches))):
                    if futures[i].cancel():
                        done[i] = _read_headers(batches[i])
                for i, future in futures.items():
                    if done[i] is None:
                        try:
                            done[i] = future.result()
                        except BrokenProcessPool:
                            broken = True
                            done[i] = _read_headers(batches[i])
        except BaseException:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.closed = True
            raise
        headers = [image for batch in done if batch is not None for image in batch]
        if broken:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = self._new_pool()
        return headers

    def _recover(self, crashed: list[_Task]) -> None:
        """Rebuild the pool; rerun the tasks that were in flight one at a time.

        A task that breaks the pool while it runs alone is the culprit: it fails.
        """
        tasks = crashed + list(self.pending.values())
        self.pending.clear()
        # The broken pool's processes are gone or being terminated: wait for its
        # threads, so nothing of it is left to be finalised at some later moment.
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pool = self._new_pool()
        if len(tasks) == 1:
            task = tasks[0]
            path = task.job.images[task.index].info.path
            what = "decoding" if task.kind == "decode" else "writing"
            cause = f"{path}: a worker process died while {what} it"
            self._done(task, (None, cause) if task.kind == "decode" else ([], cause))
            return
        self.suspects.extendleft(reversed(tasks))

    def _start(self, job: _Job, quiet: bool) -> None:
        """Submit a job's first pass: count its slices' values, or decode them."""
        self.quiet = quiet
        self.decoded[id(job)] = [None] * len(job.images)
        for i, im in enumerate(job.images):
            if job.stream is not None:
                args: tuple[Any, ...] = (
                    str(im.info.path),
                    im.info.sop_instance_uid,
                    job.stream,
                    quiet,
                )
                self.submit(_Task("decode", job, i, _count_task, args))
            else:
                self.submit(_Task("decode", job, i, self.decode, (im.info, quiet)))

    def _done(self, task: _Task, outcome: Any) -> None:
        job, i = task.job, task.index
        if task.kind == "decode":
            self.decoded[id(job)][i] = outcome
            if all(d is not None for d in self.decoded[id(job)]):
                submitted = self.make_write(job, self.decoded.pop(id(job)), self.submit)
                if submitted < 0:  # slice-wise was not possible: decode it as a volume
                    job.stream = None
                    self._start(job, self.quiet)
                elif submitted:
                    self.writes_left[id(job)] = submitted
            return
        result = job.results[i]
        result.status = "failed" if outcome[1] else "converted"
        result.error = outcome[1]
        result.outputs = [] if outcome[1] else outcome[0]
        self.settle(result)
        self.writes_left[id(job)] -= 1
        if self.writes_left[id(job)] == 0:
            del self.writes_left[id(job)]


def _equalize_job(
    job: _Job,
    arrays: list[tuple[NDArray[Any] | None, str | None]],
    submit: Callable[[_Task], None],
    settings: _Settings,
    settle: Callable[[FileResult], None],
) -> int:
    """Equalize one decoded job in this process and submit its writes; return how many."""
    good: list[int] = []
    for i, (arr, error) in enumerate(arrays):
        if error is not None:
            job.results[i].status, job.results[i].error = "failed", error
            job.results[i].outputs = []
            settle(job.results[i])
        else:
            assert arr is not None
            arr.flags.writeable = False
            job.images[i]._stored = arr
            good.append(i)
    if not good:
        return 0
    images = [job.images[i] for i in good]
    source: Any = (
        images[0] if len(images) == 1 else Series(images[0].info.series_instance_uid, images)
    )
    try:
        derived = enhance(source, keep_private=settings.keep_private, **settings.enhance)
        if settings.figure:
            from .preview import plot_comparison

            plot_comparison(
                source, derived, sidecar(job.targets[good[0]], ".comparison.png"), overwrite=True
            )
    except MedeqError as exc:
        for i in good:
            job.results[i].status, job.results[i].error = "failed", str(exc)
            job.results[i].outputs = []
            settle(job.results[i])
        return 0
    window = derived.window() if settings.preview else None
    submitted = 0
    for n, i in enumerate(good):
        result = job.results[i]
        result.quality_before = derived.before.as_dict()
        result.quality_after = derived.after.as_dict()
        result.series_uid_out = derived.series_uid
        if job.done[i]:
            result.status = "skipped"
            settle(result)
            continue
        # The header is derived in the worker, beside the write: that work runs in
        # parallel rather than in this process, one image after another.
        job.images[i].release()
        args = (
            job.images[i],
            derived.header_options,
            derived.image_pixels(n),
            str(job.targets[i]),
            settings.transfer_syntax,
            settings.overwrite,
            window,
        )
        submit(_Task("write", job, i, _write_task, args))
        submitted += 1
    for im in images:
        im.release()
    return submitted


def _stream_job(
    job: _Job,
    outcomes: list[tuple[Any, str | None]],
    submit: Callable[[_Task], None],
    settings: _Settings,
    settle: Callable[[FileResult], None],
    quiet: bool,
) -> int:
    """Equalize a series from its slices' value counts; submit the slice-wise writes.

    The result is what :func:`medeq.enhance` gives for the volume (the same VOI plan and
    span, :func:`medeq.core.value_mapping` for the mapping, :func:`medeq.enhance.describe`
    for the record). Returns how many writes were submitted, or -1 when the series has to
    be equalized as a volume after all (values that are not integers, a flat histogram).
    """
    if any(result == "volume" for result, _ in outcomes):
        return -1
    good: list[int] = []
    for i, (_, error) in enumerate(outcomes):
        if error is not None:
            job.results[i].status, job.results[i].error = "failed", error
            job.results[i].outputs = []
            settle(job.results[i])
        else:
            good.append(i)
    if not good:
        return 0
    images = [job.images[i] for i in good]
    options = settings.enhance
    try:
        plan = voi_plan(images, options["window"])
        if plan.sigmoid is not None:
            return -1
        ranges = [outcomes[i][0] for i in good]
        span = plan.span(
            images, True, float(min(r[0] for r in ranges)), float(max(r[1] for r in ranges))
        )
        inverted = [im.info.photometric == "MONOCHROME1" for im in images]
        total = int(span.lo + span.hi)
        entries = []
        for (lo, hi, counts), inv in zip(ranges, inverted, strict=True):
            entries.append((total - hi, counts[::-1]) if inv else (lo, counts))
        first = min(lo for lo, _ in entries)
        summed = np.zeros(max(lo + c.size for lo, c in entries) - first, np.int64)
        for lo, counts in entries:
            summed[lo - first : lo - first + counts.size] += counts
        bins = core._check_bins(options["bins"])
        out_levels = core._check_levels(options["levels"]) or default_levels(images)
        nbins = bins or int(min(max(span.levels, 1), 65536))
        variant = core._as_variant(options["variant"])
        mapping = core.value_mapping(first, summed, nbins, (span.lo, span.hi), out_levels, variant)
        if mapping is None:
            return -1
        used = mapping.table[summed > 0]
        header_options, _, _, series_uid = describe(
            images,
            method=Method.GLOBAL,
            variant=variant,
            bins=bins,
            nbins=nbins,
            value_range=(span.lo, span.hi),
            voi=span.voi + (", MONOCHROME1 inverted" if any(inverted) else ""),
            window=options["window"],
            mask=options["mask"],
            mask_text="none",
            levels=options["levels"],
            out_levels=out_levels,
            per_slice=False,
            clip_limit=options["clip_limit"],
            kernel_size=options["kernel_size"],
            keep_private=settings.keep_private,
            value_span=(int(used.min()), int(used.max())),
        )
        after = np.bincount(mapping.table, weights=summed, minlength=out_levels)
        before_q = quality_of(mapping.counts).as_dict()
        after_q = quality_of(np.rint(after).astype(np.int64)).as_dict()
    except MedeqError as exc:
        for i in good:
            job.results[i].status, job.results[i].error = "failed", str(exc)
            job.results[i].outputs = []
            settle(job.results[i])
        return 0
    lo_out, hi_out = header_options["value_span"]
    window = ((lo_out + hi_out + 1) / 2, hi_out - lo_out + 1) if settings.preview else None
    submitted = 0
    for i, inv in zip(good, inverted, strict=True):
        result = job.results[i]
        result.quality_before, result.quality_after = before_q, after_q
        result.series_uid_out = series_uid
        if job.done[i]:
            result.status = "skipped"
            settle(result)
            continue
        info = job.images[i].info
        args = (
            str(info.path),
            info.sop_instance_uid,
            plan,
            (span.lo, span.hi) if inv else None,
            mapping,
            header_options,
            str(job.targets[i]),
            settings.transfer_syntax,
            settings.overwrite,
            window,
            quiet,
        )
        submit(_Task("write", job, i, _stream_write_task, args))
        submitted += 1
    return submitted
