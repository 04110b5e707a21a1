"""Group files into series and order their slices.

:func:`read_series` reads headers only (pixels stay on disk until a volume is asked for),
groups images by (0020,000E) *Series Instance UID*, and orders each series along the slice
normal computed from (0020,0037) *Image Orientation (Patient)* and (0020,0032) *Image
Position (Patient)*, falling back to (0020,0013) *Instance Number*. Problems are reported
on the :class:`Series` (duplicates, gaps, mixed orientations, mixed sizes), and
:meth:`Series.volume` refuses to stack images that are not one volume unless told to.
"""

from __future__ import annotations

import errno
import logging
import os
import statistics
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray

from .errors import DicomError, NotDicomError, SeriesError
from .normalize import modality_values, stack_frames
from .reader import DicomImage, read

__all__ = ["DICOM_SUFFIXES", "Series", "Walk", "find_dicom_files", "read_series", "walk"]

logger = logging.getLogger(__name__)


@dataclass
class Series:
    """The images of one series, in slice order.

    Attributes
    ----------
    uid : str
        (0020,000E) *Series Instance UID* ("" when the files have none).
    images : list of DicomImage
        In slice order; exact duplicates (same SOP Instance UID) are dropped.
    problems : list of str
        What is odd about the series: duplicate instances or positions, gaps in slice
        spacing, mixed image sizes. Empty for a clean series.
    ordered_by : str
        How the slices were ordered: "position", "instance number" or "file name".
    duplicates : list of DicomImage
        Images dropped because an earlier file has the same SOP Instance UID.
    """

    uid: str
    images: list[DicomImage]
    problems: list[str] = field(default_factory=list)
    ordered_by: str = "position"
    duplicates: list[DicomImage] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[DicomImage]:
        return iter(self.images)

    def __repr__(self) -> str:
        first = self.images[0].info if self.images else None
        what = f"{first.modality} {first.rows}x{first.columns}" if first else "empty"
        return f"<Series {self.uid or '(no UID)'} {len(self.images)} images, {what}>"

    @property
    def stackable(self) -> bool:
        """True when every image has the same rows and columns (an array can be built).

        This says nothing about geometry: :meth:`volume` also checks that the images
        form one volume.
        """
        sizes = {(im.info.rows, im.info.columns) for im in self.images}
        return len(sizes) <= 1

    def volume(self, *, force: bool = False) -> NDArray[Any]:
        """Modality values (HU for CT) of every frame of every image: ``(slices, rows, columns)``.

        Each image goes through its own Modality LUT (slices may differ in rescale), so
        the stack is in one unit. Integer when every value is whole, else float32. The
        slices come in the order of :attr:`images`.

        Parameters
        ----------
        force : bool, default False
            Stack images that are not one geometric volume anyway, in the order of
            :attr:`images` (as ``pydicom.dcmread(force=True)`` reads a file that does
            not look like DICOM). Mixed image sizes cannot be stacked even then.

        Returns
        -------
        volume : (P, M, N) ndarray
            Integer when every value is whole, else float32.

        Raises
        ------
        SeriesError
            When the images differ in size (always), or, unless ``force``, when they are
            not one volume: (0020,0037) *Image Orientation (Patient)* differs between
            images (a multi-plane localizer), or two or more images lie at the same
            (0020,0032) *Image Position (Patient)* along the slice normal (the same
            slice sent twice, in other transfer syntaxes, or several acquisitions mixed).

        Notes
        -----
        Missing slices (a gap in the spacing) and dropped duplicate SOP Instance UIDs do
        not block stacking: the slices present are still a volume, only with uneven
        spacing. They stay in :attr:`problems` and a gap is logged as a warning.
        """
        self._check_stackable()
        ordered, _, positions = _order(self.images)
        blocking = _geometry_problems(ordered, positions)
        if blocking and not force:
            raise SeriesError(
                f"series {self.uid or '(no UID)'}: the images are not one volume: "
                f"{'; '.join(blocking)}. Pass volume(force=True) to stack them in the "
                "order of Series.images anyway"
            )
        if positions is not None:
            for gap in _gap_problems(ordered, positions):
                logger.warning("series %s: stacking despite a %s", self.uid or "(no UID)", gap)
        return stack_frames([modality_values(im) for im in self.images])

    def _check_stackable(self) -> None:
        if not self.stackable:
            sizes = sorted({f"{im.info.rows}x{im.info.columns}" for im in self.images})
            raise SeriesError(
                f"series {self.uid}: cannot stack images of different sizes ({', '.join(sizes)})"
            )


# --------------------------------------------------------------------------- finding files


def find_dicom_files(
    source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> list[Path]:
    """The files a folder (recursive), a DICOMDIR or a list of these holds, sorted.

    A DICOMDIR contributes the files its records reference; a folder contributes every
    regular file below it except DICOMDIR files and hidden files (see :func:`walk`).
    """
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    found: list[Path] = []
    seen: set[Path] = set()
    for item in items:
        path = Path(item)
        files = walk(path).files if path.is_dir() else _expand(path)
        for f in files:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                found.append(f)
    return found


@dataclass
class Walk:
    """What :func:`walk` found below a folder."""

    #: Regular files, sorted, DICOMDIR and hidden files left out.
    files: list[Path] = field(default_factory=list)
    #: (path, why) of what was found but cannot be read as a file: a link loop, a broken
    #: link, a folder named like a DICOM file with no file in it, a socket or pipe.
    ignored: list[tuple[str, str]] = field(default_factory=list)
    #: Files reached through a symbolic link that leads out of the folder: where it leads.
    outside: dict[Path, Path] = field(default_factory=dict)


def walk(folder: Path) -> Walk:
    """Every regular file below ``folder``, and what was passed over, and why.

    Symbolic links are followed, as DCMTK and dcm2niix do (an export folder of links into
    an archive is common); a link that leads out of ``folder`` is recorded in
    :attr:`Walk.outside`, and a folder reached again through a link (a loop) is entered
    only once.
    """
    found = Walk()
    top = folder.resolve()
    entered: set[Path] = set()

    def visit(directory: Path) -> None:
        real = directory.resolve()
        if real in entered:
            found.ignored.append((str(directory), "symbolic link loop: the folder is already read"))
            return
        entered.add(real)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            found.ignored.append((str(directory), f"cannot list the folder: {exc.strerror}"))
            return
        had_file = False
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if entry.is_symlink() and not path.exists():
                why = "symbolic link loop" if _loops(path) else "broken symbolic link"
                found.ignored.append((str(path), why))
                continue
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()
            except OSError as exc:  # a permission problem
                found.ignored.append((str(path), f"cannot be read: {exc.strerror}"))
                continue
            if is_dir:
                visit(path)
            elif is_file:
                had_file = True
                if entry.name.upper() == "DICOMDIR":
                    continue
                found.files.append(path)
                if entry.is_symlink() or real != directory.absolute():
                    target = path.resolve()
                    if top not in target.parents:
                        found.outside[path] = target
            else:
                found.ignored.append((str(path), "not a regular file (a socket, pipe or device)"))
        if not had_file and directory.suffix.lower() in DICOM_SUFFIXES and directory != folder:
            found.ignored.append((str(directory), "a folder named like a DICOM file, with no file"))

    visit(folder)
    return found


#: Extensions DICOM files carry.
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic", ".dc3", ".ima", ".img"})


def _loops(path: Path) -> bool:
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop so
        return True
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def _expand(path: Path) -> list[Path]:
    if path.name.upper() == "DICOMDIR" and path.is_file():
        return _dicomdir_files(path)
    return [path]


def _dicomdir_files(path: Path) -> list[Path]:
    """The files a DICOMDIR's directory records reference (Referenced File ID, 0004,1500).

    Read straight from the records: a pydicom FileSet would stage a temporary folder that
    outlives the call.
    """
    try:
        dicomdir = pydicom.dcmread(path)
        records = dicomdir.DirectoryRecordSequence
    except Exception as exc:  # pydicom raises many types for a malformed DICOMDIR
        raise NotDicomError(f"{path}: not a readable DICOMDIR: {exc}") from exc
    files: list[Path] = []
    for record in records:
        file_id = record.get("ReferencedFileID")
        if file_id is None:
            continue
        parts = [file_id] if isinstance(file_id, str) else list(file_id)
        files.append(path.parent.joinpath(*(str(part) for part in parts)))
    return sorted(set(files))


# --------------------------------------------------------------------------- grouping


def read_series(
    source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    errors: list[tuple[str, DicomError]] | None = None,
) -> list[Series]:
    """Read headers of many files and group them into ordered series.

    Parameters
    ----------
    source : path, or iterable of paths
        Files, folders (searched recursively) and DICOMDIR files.
    errors : list, optional
        Files that cannot be read as grey-scale images are appended here as
        ``(path, error)``; without the list they are logged and skipped.

    Returns
    -------
    list of Series
        Ordered by (0020,0011) *Series Number*, then UID.
    """
    groups: dict[str, list[DicomImage]] = {}
    for path in find_dicom_files(source):
        try:
            image = read(path)
        except DicomError as exc:
            if errors is None:
                logger.warning("skipping %s", exc)
            else:
                errors.append((str(path), exc))
            continue
        groups.setdefault(image.info.series_instance_uid, []).append(image)
    series = [make_series(uid, images) for uid, images in groups.items()]

    def key(s: Series) -> tuple[int, str]:
        number = s.images[0].info.series_number
        return (number if number is not None else 1 << 30, s.uid)

    return sorted(series, key=key)


def make_series(uid: str, images: Sequence[DicomImage]) -> Series:
    problems: list[str] = []
    unique: dict[str, DicomImage] = {}
    duplicates: list[DicomImage] = []
    for im in images:
        sop = im.info.sop_instance_uid or im.name
        if sop in unique:
            problems.append(f"duplicate instance {sop}: {im.name} (kept {unique[sop].name})")
            duplicates.append(im)
            continue
        unique[sop] = im
    kept = list(unique.values())
    ordered, how, positions = _order(kept)
    mixed = _orientation_problem(kept)
    if mixed is not None:
        problems.append(f"{mixed}; slices ordered by {how}")
    series = Series(uid, ordered, problems, how, duplicates)
    if not series.stackable:
        sizes = sorted({f"{im.info.rows}x{im.info.columns}" for im in ordered})
        problems.append(f"mixed image sizes: {', '.join(sizes)}")
    if positions is not None:
        problems.extend(_same_position_problems(ordered, positions))
        problems.extend(_gap_problems(ordered, positions))
    return series


def _normal(images: Sequence[DicomImage]) -> NDArray[np.float64] | None:
    orientations = {im.info.image_orientation for im in images}
    if len(orientations) != 1 or None in orientations:
        return None
    row_col = np.array(next(iter(orientations)), dtype=np.float64)
    normal = np.cross(row_col[:3], row_col[3:])
    norm = float(np.linalg.norm(normal))
    return normal / norm if norm > 0 else None


def _order(
    images: list[DicomImage],
) -> tuple[list[DicomImage], str, NDArray[np.float64] | None]:
    normal = _normal(images)
    if normal is not None and all(im.info.image_position for im in images):
        distances = np.array([np.dot(normal, np.asarray(im.info.image_position)) for im in images])
        order = np.argsort(distances, kind="stable")
        return [images[i] for i in order], "position", distances[order]
    if all(im.info.instance_number is not None for im in images):
        ordered = sorted(images, key=lambda im: (im.info.instance_number, im.name))
        return ordered, "instance number", None
    return sorted(images, key=lambda im: im.name), "file name", None


#: Positions along the slice normal closer than this (mm) are the same position.
_SAME_MM = 1e-3


def _orientation_problem(images: Sequence[DicomImage]) -> str | None:
    orientations = {im.info.image_orientation for im in images} - {None}
    if len(orientations) > 1:
        return (
            f"mixed orientations: {len(orientations)} different (0020,0037) Image Orientation "
            "(Patient) values"
        )
    return None


def _same_runs(positions: NDArray[np.float64]) -> list[tuple[int, int]]:
    """``(start, stop)`` of each run of sorted positions that coincide (two or more)."""
    runs: list[tuple[int, int]] = []
    start = 0
    for i in range(1, positions.size + 1):
        if i == positions.size or positions[i] - positions[i - 1] > _SAME_MM:
            if i - start > 1:
                runs.append((start, i))
            start = i
    return runs


def _geometry_problems(
    images: Sequence[DicomImage], positions: NDArray[np.float64] | None
) -> list[str]:
    """Why ``images`` (in position order) are not one volume; empty when they are.

    One line per kind of problem, short enough for an error message.
    """
    mixed = _orientation_problem(images)
    if mixed is not None:
        return [mixed]
    if positions is None:
        return []  # no geometry to check: order by instance number is all there is
    problems = []
    for start, stop in _same_runs(positions):
        names = [im.name for im in images[start:stop]]
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        problems.append(
            f"{stop - start} images at the same position {positions[start]:.3f} mm along "
            f"the slice normal ({shown})"
        )
    return problems


def _same_position_problems(
    images: Sequence[DicomImage], positions: NDArray[np.float64]
) -> list[str]:
    problems = []
    for start, stop in _same_runs(positions):
        for i in range(start, stop - 1):
            problems.append(
                f"two images at the same position {positions[i]:.3f} mm: "
                f"{images[i].name} and {images[i + 1].name}"
            )
    return problems


def _gap_problems(images: Sequence[DicomImage], positions: NDArray[np.float64]) -> list[str]:
    problems = []
    steps = np.diff(positions)
    moving = steps[steps > _SAME_MM]
    if moving.size:
        # Not np.median: its first call imports numpy.ma (15 ms of every conversion).
        typical = float(statistics.median(moving.tolist()))
        gaps = np.flatnonzero(steps > 1.5 * typical + _SAME_MM)
        for i in gaps.tolist():
            missing = round(steps[i] / typical) - 1
            problems.append(
                f"gap of {steps[i]:.3f} mm between {images[i].name} and {images[i + 1].name} "
                f"(spacing {typical:.3f} mm): about {missing} slice(s) missing"
            )
    return problems
