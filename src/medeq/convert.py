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
- decoding and writing run in ``jobs`` worker processes. A series that runs in parallel
  (or is big) is equalized slice-wise: each worker counts its slice's values, this
  process adds the counts up into one mapping, and each worker maps and writes its slice
  (:mod:`medeq._slicewise`), so no volume is held in memory. Other series are decoded
  into one volume here; at most ``jobs`` + 1 of those are in memory at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray

from . import _atomic, _kernels, core
from ._filewalk import Place
from ._notes import collecting, note
from ._scheduler import (
    STOPS_THE_BATCH,
    Later,
    Scanned,
    Scheduler,
    Task,
    failure_text,
    native_stderr_silenced,
)
from ._slicewise import (
    CountedEqualization,
    SliceCounts,
    StoredCounts,
    count_stored,
    count_values,
    counts_through,
    equalize_counted,
    stored_countable,
)
from .clahe import check_parameters as check_clahe_parameters
from .derive import creation_time, derive_header, output_instance_uid, output_series_uid
from .enhance import Derived, Method, canonical_parameters, enhance
from .errors import MedeqError, OutputError, ParameterError
from .normalize import VoiPlan, WindowSpec, needs_header, parse_window, voi_plan
from .reader import (
    DicomImage,
    ImageInfo,
    decode_in_place,
    logged_warnings,
    looks_like_dicom,
    read,
    read_whole,
)
from .series import DICOM_SUFFIXES, Series, Walk, find_dicom_files, make_series, walk
from .writer import TransferSyntax, encode_image, sidecar

__all__ = ["FileResult", "Report", "Status", "convert"]

logger = logging.getLogger(__name__)

#: A conversion equalizing fewer pixels than this (256 CT slices of 512 x 512) uses the
#: numpy kernels in a process that has not loaded the compiled ones: loading those costs
#: about a second, more than they would save (measured in docs/performance.md).
JIT_WORTH_PIXELS = 1 << 26
#: A series of at least two images is equalized slice by slice (each task counts its
#: slice's values, this process adds the counts up and hands back one mapping) when it
#: runs in worker processes, has native pixel data, or is this many pixels or more
#: (see _by_slice); otherwise it is decoded into one volume here. Slice-wise, no volume
#: is ever held in memory.
STREAM_MIN_PIXELS = 1 << 26
#: Room on disk taken for the report before anything is written (see _atomic.Reservation),
#: and per file found: a file's entry with an error or a few notes is under 2 KiB.
REPORT_BYTES, REPORT_BYTES_PER_FILE = 16 << 10, 2 << 10
#: With the default ``jobs``, one worker process per this many input files (at most one
#: per core): below about that, a worker's start-up costs more than it saves.
FILES_PER_WORKER = 32


class Status(str, enum.Enum):
    """What became of one input file (a str: it compares and serialises as its value)."""

    CONVERTED = "converted"
    #: Already done by an earlier run, or the same instance as another input.
    SKIPPED = "skipped"
    FAILED = "failed"
    #: A dry run's, or a file not yet settled.
    PLANNED = "planned"

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:  # "converted", not "Status.CONVERTED"
        return format(str(self.value), spec)


@dataclass
class FileResult:
    """What happened to one input file."""

    input: str
    status: Status
    outputs: list[str] = field(default_factory=list)
    error: str | None = None
    series_uid_in: str | None = None
    series_uid_out: str | None = None
    quality_before: dict[str, float] | None = None
    quality_after: dict[str, float] | None = None
    #: What medeq repaired, assumed or chose for this file (see medeq._notes).
    notes: list[str] = field(default_factory=list)

    def add_notes(self, notes: Iterable[str]) -> None:
        """Add notes not already listed, in order."""
        self.notes.extend(n for n in dict.fromkeys(notes) if n not in self.notes)


@dataclass
class Report:
    """The outcome of :func:`convert`: one :class:`FileResult` per input file."""

    output: str
    parameters: dict[str, Any]
    files: list[FileResult] = field(default_factory=list)
    #: (path, why) of what input folders hold that is not converted: files that are not
    #: DICOM (texts, pictures), link loops, broken links, empty folders named as files.
    ignored: list[tuple[str, str]] = field(default_factory=list)
    started: str = ""
    elapsed: float = 0.0
    dry_run: bool = False
    #: Set when the run was stopped (Ctrl-C, SIGTERM) before every file was handled:
    #: the files listed are those that were settled.
    interrupted: bool = False

    @property
    def totals(self) -> dict[str, int]:
        """Counts per status, and the total."""
        counts = {status.value: 0 for status in Status}
        for f in self.files:
            counts[Status(f.status).value] += 1
        counts["total"] = len(self.files)
        return counts

    @property
    def exit_code(self) -> int:
        """0: every file converted (or already done); 1: some failed; 2: nothing to do."""
        totals = self.totals
        if totals["total"] == 0:
            return 2
        return 1 if totals["failed"] or self.interrupted else 0

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
            "interrupted": self.interrupted,
            "files": [f.__dict__ for f in self.files],
            "ignored": [{"path": p, "reason": why} for p, why in self.ignored],
            "ignored_not_dicom": [p for p, why in self.ignored if why == "not DICOM"],
        }

    def json(self) -> str:
        """The report as JSON text."""
        import json

        return json.dumps(self.as_dict(), indent=2, default=str) + "\n"

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as JSON, atomically."""
        target = Path(path)
        data = self.json().encode()
        _atomic.atomic_write(target, lambda f: f.write(data))
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
    #: Every task runs in this process (``jobs=1``): a slice-wise write uses the header
    #: the scan read, instead of reading the file again as a worker must.
    in_process: bool = False


@dataclass
class Job:
    """One series (or one image) to convert, with where each file goes."""

    images: list[DicomImage]
    targets: list[Path]
    done: list[bool]
    results: list[FileResult]
    #: Set when the series is equalized slice-wise in the workers (see _stream_job).
    stream: VoiPlan | None = None
    #: Some files repeat another's SOP Instance UID: their pixels are compared, so the
    #: job is decoded into a volume (never slice-wise).
    copies: bool = False
    #: Indices of files whose earlier output is incomplete: replaced (atomically) even
    #: without ``overwrite``, never removed first (another run may be finishing it).
    replace: set[int] = field(default_factory=set)


# --------------------------------------------------------------------------- workers


def _scanned(info: ImageInfo, place: Place | None) -> DicomImage:
    """A file the scan read, for its pixels only: its info and where its header ends.

    A first-pass task is sent only these (never a header, which with ``--jobs 1`` the
    scanned image holds): reading the pixels in place needs no more.
    """
    return DicomImage.scanned(info, place)


def _decode_task(
    info: ImageInfo, place: Place | None, quiet: bool
) -> tuple[NDArray[Any] | None, str | None]:
    """Decode one file's stored values (its header was read and checked by the scan).

    ``place`` is where the scan found the header to end: native pixel data are read
    from there, without parsing the header again.
    """
    try:
        with native_stderr_silenced(quiet):
            return np.array(_scanned(info, place).stored), None
    except MedeqError as exc:
        return None, str(exc)


def _slice_values(
    source: str | DicomImage, sop_uid: str, plan: VoiPlan
) -> tuple[DicomImage, NDArray[Any]]:
    """Normalise one file's values as the plan says.

    ``source`` is a path, which a worker reads again, or (in this process) the image the
    scan read, whose native pixels are read in place once more and not kept. When they
    are not where the scan found them, the file has changed: it is read again whole, and
    refused if it is another instance now. A worker reads the header, then native pixels
    in place after it, and reads the file whole only for other pixel data (or a file that
    changed between the two reads).
    """
    if isinstance(source, DicomImage):
        if decode_in_place(source):
            try:
                return source, plan.values(source)
            finally:
                source.release()
        if not source.info.path:
            raise OutputError(f"{source.name}: not a file, cannot be read again to write it")
        source = source.info.path
    else:
        image = _same_instance(read(source), sop_uid)
        if decode_in_place(image):
            return image, plan.values(image)
    image = _same_instance(read_whole(source), sop_uid)
    return image, plan.values(image)


def _same_instance(image: DicomImage, sop_uid: str) -> DicomImage:
    """``image``, if it is still the instance the scan read (else an OutputError)."""
    if image.info.sop_instance_uid != sop_uid:
        raise OutputError(
            f"{image.name}: changed during the conversion ((0008,0018) SOP Instance UID is "
            f"now {image.info.sop_instance_uid}, was {sop_uid})"
        )
    return image


def _stored_count_task(
    info: ImageInfo, place: Place | None, quiet: bool
) -> tuple[StoredCounts | None, str | None]:
    """Count the stored values of one uncompressed single-frame file.

    Its pixel data are read from where the scan found its header to end: the header is
    not parsed again. This process turns the counts into those of the normalised values
    (:func:`medeq._slicewise.counts_through`), with the header it already has.
    """
    try:
        with native_stderr_silenced(quiet):
            counts = count_stored(_scanned(info, place))
    except MedeqError as exc:
        return None, str(exc)
    if counts is None:
        return None, f"{info.path}: its stored values cannot be counted"
    return counts, None


def _count_task(
    path: str, sop_uid: str, plan: VoiPlan, quiet: bool
) -> tuple[SliceCounts | str | None, str | None]:
    """Decode and normalise one slice; count its values.

    Returns ``(counts, None)``, ``("volume", None)`` when the values cannot be counted
    (the series is then equalized as a volume), or ``(None, error)``.
    """
    try:
        with native_stderr_silenced(quiet):
            _, values = _slice_values(path, sop_uid, plan)
    except MedeqError as exc:
        return None, str(exc)
    counted = count_values(values)
    return ("volume" if counted is None else counted), None


def _counted_write_task(
    source: str | DicomImage,
    sop_uid: str,
    counted: CountedEqualization,
    target: str,
    ts: TransferSyntax,
    overwrite: bool,
    window: tuple[float, float] | None,
    quiet: bool,
) -> tuple[list[str], str | None] | Later:
    """Decode, normalise and map one slice, then write it with its derived header.

    In this process (``source`` the scanned image) the files are written later, on the
    executor's thread (:func:`_write_task`).
    """
    try:
        with native_stderr_silenced(quiet):
            image, values = _slice_values(source, sop_uid, counted.plan)
    except MedeqError as exc:
        return [], str(exc)
    try:
        pixels = counted.map(image, values)
    except ParameterError as exc:  # other values than the first pass counted
        return [], f"{image.name}: changed during the conversion ({exc})"
    later = isinstance(source, DicomImage)
    return _write_task(image, counted.header_options, pixels, target, ts, overwrite, window, later)


def _write_task(
    source: DicomImage,
    header_options: dict[str, Any],
    pixels: NDArray[Any],
    path: str,
    ts: TransferSyntax,
    overwrite: bool,
    window: tuple[float, float] | None,
    later: bool = False,
) -> tuple[list[str], str | None] | Later:
    """Derive the header, encode and write one image (and its preview).

    ``later`` (in this process only): the files are written on the executor's thread
    (:class:`medeq._scheduler.Later`) while this process prepares the next image.
    """
    try:
        # The source's own flaws (an invalid UID it refers to) make pydicom warn as they
        # are copied: a debug log line, not noise on a batch's standard error.
        with logged_warnings(source.name):
            header = derive_header(source, **header_options)
            finish = encode_image(
                header,
                pixels,
                Path(path),
                transfer_syntax=ts,
                overwrite=overwrite,
                preview_window=window,
            )
    except MedeqError as exc:
        return [], str(exc)
    uid = str(header.SOPInstanceUID)
    done = functools.partial(_finished, finish, Path(path), uid, overwrite)
    return Later(done) if later else done()


def _finished(
    finish: Callable[[], list[Path]], path: Path, uid: str, overwrite: bool
) -> tuple[list[str], str | None]:
    """Write the files; the run flushes them to disk (convert's Flusher), not the writer.

    A file that another run into the same folder wrote in the meantime (the same instance
    with the same parameters, whole) counts as written. When the preview cannot be
    written, the DICOM file just written is removed again: a rerun makes both.
    """
    jpeg = sidecar(path, ".jpg")

    def by_another_run() -> tuple[list[str], str | None]:
        note(f"{path}: written by another run into the same folder at the same time")
        return [str(p) for p in (path, jpeg) if p.exists()], None

    existed = path.exists()
    if existed and not overwrite:
        return by_another_run() if _ours(path, uid) else ([], _in_the_way(path))
    try:
        with _atomic.deferred_sync():
            return [str(p) for p in finish()], None
    except MedeqError as exc:
        if str(exc).startswith(str(jpeg)):  # the DICOM file was written, its preview not
            if not existed:
                with contextlib.suppress(OSError):
                    path.unlink()
        elif not overwrite and _ours(path, uid):  # the other run got there in between
            return by_another_run()
        return [], str(exc)


def _ours(path: Path, uid: str) -> bool:
    """Whether ``path`` is a whole output with SOP Instance UID ``uid``."""
    try:
        with native_stderr_silenced(True):
            image = read(path)
        return image.info.sop_instance_uid == uid and _incomplete(image, False) is None
    except MedeqError:
        return False


# --------------------------------------------------------------------------- planning


def _expand(inputs: Iterable[Path]) -> tuple[list[tuple[Path, Path]], Walk]:
    """(file, root) pairs, and what the input folders hold that is not converted.

    Outputs mirror each file's path relative to its root. A folder's text files, pictures
    and the like (:func:`_other_kind`) are left out, as are links that lead nowhere: they
    are listed as ignored, not failures of the conversion. A file named on its own is
    always tried.
    """
    pairs: list[tuple[Path, Path]] = []
    passed = Walk()
    for p in inputs:
        if p.is_dir():
            found = walk(p)
            passed.ignored += found.ignored
            passed.outside.update(found.outside)
            for f in found.files:
                if _other_kind(f):
                    passed.ignored.append((str(f), "not DICOM"))
                else:
                    pairs.append((f, p))
        elif p.name.upper() == "DICOMDIR" and p.is_file():
            pairs += [(f, p.parent) for f in find_dicom_files(p)]
        else:
            pairs.append((p, p.parent))
    return pairs, passed


def _other_kind(file: Path) -> bool:
    """A file of a folder that is plainly something else: a text, a picture, a program.

    It has an extension of letters that is not a DICOM one, and its first bytes are not
    DICOM's. A broken file named as DICOM (empty, cut short) is not one: it fails.
    """
    suffix = file.suffix.lower()
    named_otherwise = suffix[1:].isalnum() and not suffix[1:].isdigit()
    return named_otherwise and suffix not in DICOM_SUFFIXES and not looks_like_dicom(file)


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


def _target(file: Path, root: Path, output: Path, taken: set[str]) -> Path:
    """Where ``file``'s output goes: its path below ``root``, mirrored below ``output``.

    Unique by construction: a name whose DICOM file, preview or figure (see
    :func:`~medeq.writer.sidecar`) would be one that another input already took, compared
    without case (``x`` and ``x.dcm`` both preview as ``x.jpg``), gets a number.
    """
    for base in (root, root.resolve()):
        try:
            relative = file.relative_to(base)
            break
        except ValueError:
            continue
    else:
        relative = Path(file.name)
    target = output / relative
    n = 1
    while any(k in taken for k in _family(target)):
        n += 1
        target = target.with_name(f"{relative.stem}_{n}{relative.suffix}")
    taken.update(_family(target))
    return target


def _family(target: Path) -> list[str]:
    """The files one output may consist of, as keys that ignore case."""
    files = (target, sidecar(target, ".jpg"), sidecar(target, ".comparison.png"))
    return [str(f).casefold() for f in files]


#: What :func:`_already_done` says of an earlier output of this command that is not whole.
REPLACE = "replace"


def _already_done(target: Path, expected_uid: str, preview: bool, result: FileResult) -> bool | str:
    """True if ``target`` is this command's whole output; a message if it is something else.

    An earlier output of this command that is not whole (a kill between the DICOM file and
    its preview, a power cut before its flush left it short) gives :data:`REPLACE`: it is
    made again and replaces the old files atomically, with a note on ``result``. Outputs
    are flushed to disk after they are renamed into place (see :mod:`medeq._atomic`): one
    left short is found here by reading it whole.
    """
    if not target.exists():
        return False
    problem: str | None
    try:
        with native_stderr_silenced(True):
            image = read(target)
    except MedeqError as exc:  # not ours, or ours and cut short
        if _sop_instance_uid(target) != expected_uid:
            return _in_the_way(target)
        problem = str(exc)
    else:
        if image.info.sop_instance_uid != expected_uid:
            return _in_the_way(target)
        problem = _incomplete(image, preview)
    if problem is None:
        return True
    result.add_notes(
        [f"{target}: an earlier output of this command was incomplete ({problem}): made again"]
    )
    return REPLACE


def _in_the_way(target: Path) -> str:
    return (
        f"{target}: exists and is not this command's output for these parameters "
        "(use --overwrite to replace it)"
    )


def _sop_instance_uid(path: Path) -> str | None:
    """The (0008,0018) SOP Instance UID of a file medeq cannot read whole, if it has one."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        return str(ds.SOPInstanceUID)
    except Exception:  # whatever the file is, it is not a whole output of ours
        return None


def _incomplete(image: DicomImage, preview: bool) -> str | None:
    """Why an output (and its preview) is not whole, or None."""
    try:
        with native_stderr_silenced(True):
            if pydicom.uid.UID(image.info.transfer_syntax).is_encapsulated:
                # A file cut short ends inside its fragments, which parsing the whole file
                # finds without decoding them (15-30 ms a slice for JPEG-LS or JPEG 2000).
                read_whole(image.name)
            else:
                _ = image.stored  # native: read in place, its length checked
    except MedeqError as exc:
        return str(exc)
    if not preview:
        return None
    jpeg = sidecar(Path(image.name), ".jpg")
    try:
        with open(jpeg, "rb") as f:
            f.seek(-2, os.SEEK_END)
            whole = f.read(2) == b"\xff\xd9"  # a JPEG ends with its EOI marker
    except FileNotFoundError:
        return f"its preview {jpeg} is missing"
    except OSError:
        whole = False
    return None if whole else f"its preview {jpeg} is cut short"


# --------------------------------------------------------------------------- convert


def convert(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
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
    redistribution: str = "limited",
    transfer_syntax: TransferSyntax | str = "explicit-little",
    preview: bool = True,
    figure: bool = False,
    jobs: int | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    keep_private: bool = True,
    sync: bool = True,
    quiet_decoders: bool = True,
    progress: Callable[[FileResult], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    report: str | os.PathLike[str] | None = None,
) -> Report:
    """Convert files, folders (recursive) and DICOMDIRs into equalized derived DICOM.

    Parameters
    ----------
    inputs : path or iterable of paths
        Files, folders and DICOMDIR files (one path alone is one input).
    output : path
        The output folder; the tree below it mirrors each input's relative paths.
    method, bins, levels, window, mask, per_slice, variant
        As :func:`medeq.enhance` (``mask`` is None, "none" or "auto").
    clip_limit, kernel_size, redistribution
        CLAHE parameters, as :func:`medeq.enhance`.
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
    sync : bool
        Flush the outputs to disk, on a thread, as they are finished; the call returns
        once all are (a file that cannot be flushed fails). Without it a power cut soon
        after the run may cut outputs short; a rerun reports such files. Every file
        appears whole or not at all either way.
    quiet_decoders : bool
        Hide what C decoder libraries print to standard error.
    progress : callable, optional
        Called with each :class:`FileResult` as it is settled.
    on_start : callable, optional
        Called once with the number of input files found, before any is read.
    report : path, optional
        Write the report here as JSON (atomically) however the run ends: finished,
        interrupted (Ctrl-C; ``report.interrupted``), or stopped by an error of its own.

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
    paths = [Path(inputs)] if isinstance(inputs, (str, os.PathLike)) else [Path(i) for i in inputs]
    ts = TransferSyntax.parse(transfer_syntax)
    try:
        how = Method(method)
    except ValueError:
        raise ParameterError(f"method must be 'global' or 'clahe', got {method!r}") from None
    core.check_bins(bins)
    core.check_levels(levels)
    core.as_variant(variant)
    parse_window(window)
    check_clahe_parameters(clip_limit, kernel_size, redistribution)
    creation_time()  # a malformed SOURCE_DATE_EPOCH stops the batch here, not file by file
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
        "redistribution": redistribution,
    }
    made = Report(
        output=str(out),
        parameters={
            **{k: (v.value if isinstance(v, Method) else v) for k, v in enhance_options.items()},
            "transfer_syntax": ts.value,
            "preview": preview,
            "figure": figure,
            "overwrite": overwrite,
            "sync": sync,
        },
        started=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        dry_run=dry_run,
    )
    settings = _Settings(
        enhance_options, ts, preview, figure, overwrite, keep_private, in_process=workers == 1
    )
    clock = time.perf_counter()
    # The report's room on disk is taken first: outputs that fill the disk cannot keep
    # it from landing.
    room = None if report is None else _atomic.Reservation(Path(report), REPORT_BYTES)
    stopped = False
    try:
        _run(made, paths, out, settings, workers, jobs is None, dry_run, sync, quiet_decoders,
             progress, on_start, room)  # fmt: skip
    except BaseException as exc:
        stopped = True
        made.interrupted = isinstance(exc, KeyboardInterrupt)
        raise
    finally:
        made.elapsed = time.perf_counter() - clock
        if room is not None:
            try:
                room.write(made.json().encode())
            except OutputError:
                if not stopped:
                    raise
                logger.exception("the report could not be written")
    return made


def _run(
    report: Report,
    paths: list[Path],
    out: Path,
    settings: _Settings,
    workers: int,
    default_jobs: bool,
    dry_run: bool,
    sync: bool,
    quiet_decoders: bool,
    progress: Callable[[FileResult], None] | None,
    on_start: Callable[[int], None] | None,
    room: _atomic.Reservation | None,
) -> None:
    """The batch of :func:`convert`, its parameters checked: ``report`` is filled in.

    ``room``: the report file's reservation, grown to fit the number of files found.
    """
    flusher: _atomic.Flusher | None = None
    pairs, passed = _expand(paths)
    report.ignored = passed.ignored
    if room is not None:
        room.reserve(REPORT_BYTES + REPORT_BYTES_PER_FILE * (len(pairs) + len(passed.ignored)))

    def settle(result: FileResult) -> None:
        followed = passed.outside.get(Path(result.input))
        if followed is not None:
            result.add_notes([f"{result.input}: read through a symbolic link, from {followed}"])
        report.files.append(result)
        if flusher is not None and result.status is Status.CONVERTED:
            flusher.add(result.outputs)
        if progress is not None:
            progress(result)

    if on_start is not None:
        on_start(len(pairs))
    if not pairs:
        return

    def first_pass(job: Job) -> list[Task]:
        plan = job.stream
        tasks = []
        fn: Callable[..., Any]
        args: tuple[Any, ...]
        for i, im in enumerate(job.images):
            if plan is None:
                fn, args = _decode_task, (im.info, im.place, quiet_decoders)
            elif stored_countable(im):
                fn, args = _stored_count_task, (im.info, im.place, quiet_decoders)
            else:
                path, uid = str(im.info.path), im.info.sop_instance_uid
                fn, args = _count_task, (path, uid, plan, quiet_decoders)
            tasks.append(Task("decode", job, i, fn, args, isolate=compressed(im)))
        return tasks

    def second_pass(job: Job, outcomes: list[Any], submit: Callable[[Task], None]) -> int:
        """Decide the job here and submit its writes; a failure fails its files alone."""
        sent: set[int] = set()

        def send(task: Task) -> None:
            sent.add(task.index)
            submit(task)

        with collecting() as notes:
            try:
                if job.stream is not None:
                    return _stream_job(job, outcomes, send, settings, settle, quiet_decoders)
                return _equalize_job(job, outcomes, send, settings, settle)
            except STOPS_THE_BATCH:
                raise
            except BaseException as exc:
                for i, result in enumerate(job.results):
                    if result.status is Status.PLANNED and i not in sent:
                        result.status, result.outputs = Status.FAILED, []
                        result.error = failure_text(exc, job.images[i].name)
                        settle(result)
                return len(sent)
            finally:
                _share_notes(job, notes)

    # Starting a worker costs about half a second (it imports medeq): more workers than
    # files would only cost that, and by default a small batch does not use every core.
    if default_jobs:
        workers = min(workers, max(1, len(pairs) // FILES_PER_WORKER))

    def written(job: Job, i: int, outputs: list[str], error: str | None) -> None:
        result = job.results[i]
        result.status = Status.FAILED if error else Status.CONVERTED
        result.error, result.outputs = error, [] if error else outputs
        settle(result)

    scheduler = Scheduler(min(workers, len(pairs)), first_pass, second_pass, written)
    if scheduler.workers == 1 and not settings.in_process:
        settings = dataclasses.replace(settings, in_process=True)
    warm: threading.Thread | None = None
    options = settings.enhance
    how = options["method"]
    slice_wise = (
        how is Method.GLOBAL
        and not options["per_slice"]
        and options["mask"] in (None, "none")
        and not settings.figure
    )
    try:
        headers = scheduler.scan([file for file, _ in pairs])
        jobs_todo = _plan(pairs, headers, out, settings, dry_run, settle)
        if not dry_run and any(compressed(im) for job in jobs_todo for im in job.images):
            scheduler.isolate()
        if not dry_run and jobs_todo:
            for job in jobs_todo:
                if (
                    slice_wise
                    and len(job.images) >= 2
                    and not job.copies
                    and _by_slice(job, settings)
                ):
                    job.stream = _stream_plan(job, options["window"])
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
            if sync:
                # Started after the scan: the workers are forked by then (see start_method).
                flusher = _atomic.Flusher()
            with kernels:
                scheduler.run(jobs_todo)
    finally:
        scheduler.close()
        if flusher is not None:
            _flush(report, flusher.close(), progress)
    if warm is not None:
        warm.join()


def _share_notes(job: Job, notes: list[str]) -> None:
    """Give each file of ``job`` the notes that name it, and every file those naming none.

    A note about one slice's header belongs to that slice; one about the series (its
    values are constant) to all of them.
    """
    names = [image.name for image in job.images]
    for text in notes:
        about = [i for i, name in enumerate(names) if text.startswith(f"{name}:")]
        for i in about or range(len(names)):
            job.results[i].add_notes([text])


def _flush(
    report: Report, failed: dict[str, str], progress: Callable[[FileResult], None] | None
) -> None:
    """Fail the files whose outputs could not be flushed to disk (``failed``: path -> error).

    ``progress`` hears of such a file again, now failed.
    """
    converted = {p: r for r in report.files if r.status is Status.CONVERTED for p in r.outputs}
    for path, error in failed.items():
        result = converted[path]
        if result.status is Status.FAILED:
            continue  # its other output failed too
        # What is on disk may not be what was written: a rerun must make it again.
        for output in result.outputs:
            with contextlib.suppress(OSError):
                os.unlink(output)
        result.status, result.error, result.outputs = Status.FAILED, error, []
        if progress is not None:
            progress(result)


def _by_slice(job: Job, settings: _Settings) -> bool:
    """Whether to equalize a series slice by slice rather than as one volume.

    Workers always do (the volume would have to travel between processes); this process
    does for a big series, and for any series whose slices it can count and map in place
    (native pixel data): then each is read twice, cheaply, and no volume is built.
    Compressed slices would be decoded twice: a small series of them goes as a volume.
    """
    return (
        not settings.in_process
        or _pixels(job) >= STREAM_MIN_PIXELS
        or all(stored_countable(im) for im in job.images)
    )


def _pixels(job: Job) -> int:
    return sum(im.info.rows * im.info.columns * im.info.frames for im in job.images)


def _stream_plan(job: Job, window: WindowSpec) -> VoiPlan | None:
    """The VOI plan for equalizing ``job`` slice-wise, or None to decode it as a volume."""
    try:
        plan = voi_plan(job.images, window)
    except MedeqError:
        return None  # the volume path reports it, file by file
    return plan if plan.sigmoid is None else None


def _plan(
    pairs: list[tuple[Path, Path]],
    headers: list[Scanned],
    out: Path,
    settings: _Settings,
    dry_run: bool,
    settle: Callable[[FileResult], None],
) -> list[Job]:
    """Group the scanned files into jobs; settle those that failed, are done or planned.

    Whatever goes wrong while planning one series fails its files, and only them.
    """
    groups: dict[str, list[tuple[DicomImage, Path]]] = {}
    notes: dict[int, tuple[str, ...]] = {}
    taken: set[str] = set()
    for (file, root), (image, made) in zip(pairs, headers, strict=True):
        if isinstance(image, str):
            failed = FileResult(str(file), Status.FAILED, error=image)
            failed.add_notes(made)
            settle(failed)
            continue
        notes[id(image)] = made
        target = _target(file, root, out, taken)
        groups.setdefault(image.info.series_instance_uid or str(file), []).append((image, target))

    jobs: list[Job] = []
    settled: set[str] = set()

    def settle_once(result: FileResult) -> None:
        settled.add(result.input)
        settle(result)

    for uid, members in groups.items():
        try:
            jobs += _plan_series(uid, members, notes, settings, dry_run, settle_once)
        except STOPS_THE_BATCH:
            raise
        except BaseException as exc:
            for image, _ in members:
                if str(image.info.path) not in settled:
                    error = failure_text(exc, image.name)
                    settle_once(FileResult(str(image.info.path), Status.FAILED, error=error))
    return jobs


def _plan_series(
    uid: str,
    members: list[tuple[DicomImage, Path]],
    notes: dict[int, tuple[str, ...]],
    settings: _Settings,
    dry_run: bool,
    settle: Callable[[FileResult], None],
) -> list[Job]:
    """The jobs of one series (one, or one per image when they cannot form a volume)."""
    targets = {id(im): t for im, t in members}
    series = make_series(uid, [im for im, _ in members])
    # A duplicate (same SOP Instance UID) joins its series' job right after the image it
    # repeats: all are decoded, the first that decodes is converted (a broken copy must not
    # stand in for a good one), and the others are compared with it: the same pixels are
    # skipped, other pixels are a conflict. A dry run cannot tell: it plans the first.
    copies: dict[str, list[DicomImage]] = {}
    for dup in series.duplicates:
        if dry_run:
            settle(_duplicate_result(dup, _first_copy(series.images, dup)))
        else:
            copies.setdefault(_sop_key(dup), []).append(dup)
    # Images of different sizes cannot share a volume histogram: one job each.
    batches = [series.images] if series.stackable else [[im] for im in series.images]
    jobs: list[Job] = []
    for batch in batches:
        canonical = canonical_parameters(
            batch, keep_private=settings.keep_private, **settings.enhance
        )
        series_out = output_series_uid(batch[0], canonical)
        job = Job([], [], [], [])
        for first in batch:
            for im in [first, *copies.get(_sop_key(first), [])]:
                job.copies = job.copies or im is not first
                target = targets[id(im)]
                result = FileResult(
                    str(im.info.path),
                    Status.PLANNED,
                    [str(target)],
                    series_uid_in=im.info.series_instance_uid,
                    series_uid_out=series_out,
                )
                result.add_notes(notes.get(id(im), ()))
                done: bool | str = False
                if not settings.overwrite:
                    expected = output_instance_uid(im, canonical)
                    done = _already_done(target, expected, settings.preview, result)
                if done == REPLACE:
                    job.replace.add(len(job.images))
                    done = False
                elif isinstance(done, str):
                    result.status, result.error, result.outputs = Status.FAILED, done, []
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
                r.status = Status.SKIPPED
                settle(r)
            continue
        if dry_run:
            for r, d in zip(job.results, job.done, strict=True):
                r.status = Status.SKIPPED if d else Status.PLANNED
                settle(r)
            continue
        jobs.append(job)
    return jobs


def _equalize_job(
    job: Job,
    arrays: list[tuple[NDArray[Any] | None, str | None]],
    submit: Callable[[Task], None],
    settings: _Settings,
    settle: Callable[[FileResult], None],
) -> int:
    """Equalize one decoded job in this process and submit its writes; return how many."""
    errors = [error for _, error in arrays]
    for i, image in enumerate(job.images):
        # A header the scan did not keep is read again here only if normalising needs it:
        # one file that changed since then fails alone, not its whole series.
        if errors[i] is None and needs_header(image):
            try:
                _ = image.dataset
            except STOPS_THE_BATCH:
                raise
            except BaseException as exc:
                errors[i] = failure_text(exc, image.name)
    good = _settle_failed(job, errors, settle, pixels=[a for a, _ in arrays])
    for i in good:
        arr = arrays[i][0]
        assert arr is not None
        job.images[i].keep_stored(arr)
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
        _settle_failed(job, [str(exc)] * len(good), settle, good)
        return 0
    window = derived.window() if settings.preview else None

    def write(n: int, i: int) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        # The header is derived in the worker, beside the write: that work runs in
        # parallel rather than in this process, one image after another.
        job.images[i].release()
        args = (
            job.images[i],
            derived.header_options,
            derived.image_pixels(n),
            str(job.targets[i]),
            settings.transfer_syntax,
            settings.overwrite or i in job.replace,
            window,
            settings.in_process,
        )
        return _write_task, args

    submitted = _submit_writes(job, good, derived, settle, submit, write)
    for im in images:
        im.release()
    return submitted


def _stream_job(
    job: Job,
    outcomes: list[tuple[Any, str | None]],
    submit: Callable[[Task], None],
    settings: _Settings,
    settle: Callable[[FileResult], None],
    quiet: bool,
) -> int:
    """Equalize a series from its slices' value counts; submit the slice-wise writes.

    The result equals :func:`medeq.enhance` of the volume (see :mod:`medeq._slicewise`).
    Returns how many writes were submitted, or -1 when the series has to be equalized as
    a volume after all (values that are not integers, a single non-empty bin).
    """
    plan = job.stream
    assert plan is not None
    outcomes = [_normalised_counts(job.images[i], plan, o) for i, o in enumerate(outcomes)]
    if any(counted == "volume" for counted, _ in outcomes):
        job.stream = None
        return -1
    good = _settle_failed(job, [error for _, error in outcomes], settle)
    if not good:
        return 0
    options = settings.enhance
    try:
        counted = equalize_counted(
            [job.images[i] for i in good],
            plan,
            [outcomes[i][0] for i in good],
            bins=options["bins"],
            window=options["window"],
            levels=options["levels"],
            variant=options["variant"],
            keep_private=settings.keep_private,
        )
    except MedeqError as exc:
        _settle_failed(job, [str(exc)] * len(good), settle, good)
        return 0
    if counted is None:
        job.stream = None
        return -1
    window = counted.window() if settings.preview else None

    def write(_: int, i: int) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        image = job.images[i]
        info = image.info
        # A compressed file is read again by path, in a process of its own (Task.isolate).
        args = (
            image if settings.in_process and not compressed(image) else str(info.path),
            info.sop_instance_uid,
            counted,
            str(job.targets[i]),
            settings.transfer_syntax,
            settings.overwrite or i in job.replace,
            window,
            quiet,
        )
        return _counted_write_task, args

    return _submit_writes(job, good, counted, settle, submit, write)


def compressed(image: DicomImage) -> bool:
    """Whether decoding ``image`` runs a codec library (its pixel data are encapsulated)."""
    try:
        return bool(pydicom.uid.UID(image.info.transfer_syntax).is_encapsulated)
    except ValueError:  # not a transfer syntax pydicom knows: whatever decodes it is foreign
        return True


def _normalised_counts(
    image: DicomImage, plan: VoiPlan, outcome: tuple[Any, str | None]
) -> tuple[Any, str | None]:
    """A counting task's outcome, with counts of stored values made normalised ones."""
    counted, error = outcome
    if not isinstance(counted, StoredCounts):
        return outcome
    try:
        normalised = counts_through(image, plan, counted)
    except STOPS_THE_BATCH:
        raise
    except BaseException as exc:  # a bug with one file's header fails that file alone
        return None, failure_text(exc, image.name)
    return ("volume" if normalised is None else normalised), error


def _submit_writes(
    job: Job,
    good: list[int],
    made: Derived | CountedEqualization,
    settle: Callable[[FileResult], None],
    submit: Callable[[Task], None],
    write: Callable[[int, int], tuple[Callable[..., Any], tuple[Any, ...]]],
) -> int:
    """Record what ``made`` says of each good file; submit a write for those not yet done.

    ``write(n, i)`` gives the task for the n-th good file, ``job`` file ``i``. Returns how
    many writes were submitted.
    """
    submitted = 0
    for n, i in enumerate(good):
        result = job.results[i]
        result.quality_before = made.before.as_dict()
        result.quality_after = made.after.as_dict()
        result.series_uid_out = made.series_uid
        if job.done[i]:
            result.status = Status.SKIPPED
            settle(result)
            continue
        fn, args = write(n, i)
        decodes = fn is _counted_write_task and compressed(job.images[i])
        submit(Task("write", job, i, fn, args, isolate=decodes))
        submitted += 1
    return submitted


def _settle_failed(
    job: Job,
    errors: list[str | None],
    settle: Callable[[FileResult], None],
    indices: list[int] | None = None,
    pixels: list[NDArray[Any] | None] | None = None,
) -> list[int]:
    """Settle the files of ``job`` that failed, or repeat an earlier file; return the rest.

    Of several copies of one instance (same SOP Instance UID), the first without an
    error is kept; a later one with the same ``pixels`` is skipped, one with other pixels
    fails as a conflict naming both files.
    """
    good: list[int] = []
    kept: dict[str, int] = {}
    for i, error in zip(indices or range(len(errors)), errors, strict=True):
        result = job.results[i]
        image = job.images[i]
        first = kept.get(_sop_key(image))
        if error is None and first is None:
            kept[_sop_key(image)] = i
            good.append(i)
            continue
        if error is None and first is not None:
            original = job.images[first]
            if pixels is None or np.array_equal(pixels[i], pixels[first]):  # type: ignore[arg-type]
                skipped = _duplicate_result(image, original)
                result.status, result.error = skipped.status, skipped.error
            else:
                result.status = Status.FAILED
                result.error = (
                    f"{image.name}: conflict: the same (0008,0018) SOP Instance UID "
                    f"{image.info.sop_instance_uid} as {original.name}, but other pixel data "
                    f"(only {original.name} is converted)"
                )
        else:
            result.status, result.error = Status.FAILED, error
        result.outputs = []
        settle(result)
    return good


def _sop_key(image: DicomImage) -> str:
    return image.info.sop_instance_uid or image.name


def _first_copy(images: list[DicomImage], dup: DicomImage) -> DicomImage:
    return next(im for im in images if _sop_key(im) == _sop_key(dup))


def _duplicate_result(dup: DicomImage, kept: DicomImage) -> FileResult:
    return FileResult(
        str(dup.info.path),
        Status.SKIPPED,
        error=f"same (0008,0018) SOP Instance UID as {kept.name}: converted once",
        series_uid_in=dup.info.series_instance_uid,
    )
