"""Read one DICOM file into a :class:`DicomImage`: the header, and stored pixel values on demand.

Reading the header never decodes pixels: :func:`read` parses up to (7FE0,0010) *Pixel
Data* and stops, so ``medeq info`` answers at once on a file of any size. The pixels are
decoded the first time :attr:`DicomImage.stored` is used.

Stored values come back as ``(frames, rows, columns)`` in native byte order, with the bits
above (0028,0101) *Bits Stored* masked off and signed values sign-extended, whatever the
decoder did. Each failure raises a :class:`~medeq.errors.DicomError` subclass whose message
names the file, the tag or cause, and what would be accepted.

Files are taken as hostile: every value the reader uses is converted and range-checked
before use (a bad optional one is dropped with a note, a bad required one refused);
the declared image must fit in the file (native) or under :data:`MAX_DECODED_BYTES`
(compressed); every encoded frame's own header must agree with the DICOM header before
any decoder sees it (some decoders abort the process otherwise); and no read asks for
more bytes than the file holds.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import os
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from . import _codestream
from ._filewalk import (
    PIXEL_DATA,
    PIXEL_TAGS,
    BoundedReader,
    Place,
    Skipper,
    last_place,
    resume,
    skip_file_meta,
)
from ._header import file_text, finite_number, header_value, read_header, tag_name, whole_number
from ._notes import note
from .errors import CorruptPixelDataError, DicomError, NotDicomError, UnsupportedImageError

__all__ = ["DicomImage", "ImageInfo", "Source", "Window", "read", "read_info"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def logged_warnings(name: str) -> Iterator[list[warnings.WarningMessage]]:
    """Turn pydicom's warnings about odd values into debug log lines naming the file.

    Real files carry small flaws (an over-long SH, an invalid UID) that pydicom warns
    about each time it meets them; they are the source's, and a batch should not print
    them, but ``--verbose`` shows them.
    """
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as recorded:
            warnings.simplefilter("always")
            try:
                yield recorded
            finally:
                caught = list(recorded)
    finally:
        for w in caught:
            logger.debug("%s: pydicom: %s", name, w.message)


def _uid(text: str) -> UID:
    """A UID from a file, as it is: pydicom's check of its form would warn each time."""
    return UID(text, validation_mode=config.IGNORE)


#: What :func:`read` accepts: a path, a binary file object, or a pydicom Dataset.
Source = str | os.PathLike[str] | IO[bytes] | Dataset

_GREY = ("MONOCHROME1", "MONOCHROME2")
_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


@dataclass(frozen=True)
class Window:
    """A VOI window: (0028,1050) *Window Center*, (0028,1051) *Window Width* and function."""

    center: float
    width: float
    function: str = "LINEAR"
    explanation: str = ""


@dataclass(frozen=True)
class ImageInfo:
    """The standardised facts about one image, read from its header."""

    path: str | None
    modality: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    rows: int
    columns: int
    frames: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    high_bit: int
    signed: bool
    photometric: str
    transfer_syntax: str
    #: True when the file has no file meta header and the transfer syntax was inferred.
    transfer_syntax_inferred: bool
    rescale_slope: float
    rescale_intercept: float
    rescale_type: str
    #: True when rescale values differ per frame (enhanced multi-frame objects).
    per_frame_rescale: bool
    modality_lut: bool
    voi_lut: bool
    windows: tuple[Window, ...]
    lossy: bool
    series_number: int | None
    instance_number: int | None
    image_position: tuple[float, float, float] | None
    image_orientation: tuple[float, float, float, float, float, float] | None

    @property
    def transfer_syntax_name(self) -> str:
        """The transfer syntax's name, as the DICOM standard gives it."""
        return _uid(self.transfer_syntax).name

    @property
    def is_grey(self) -> bool:
        """True for single-sample MONOCHROME1/MONOCHROME2 images."""
        return self.samples_per_pixel == 1 and self.photometric in _GREY

    def as_dict(self) -> dict[str, Any]:
        """The record as plain JSON-ready values."""
        out: dict[str, Any] = {
            name: getattr(self, name) for name in self.__dataclass_fields__ if name != "windows"
        }
        out["transfer_syntax_name"] = self.transfer_syntax_name
        out["windows"] = [w.__dict__ for w in self.windows]
        return out


class DicomImage:
    """One DICOM image: its header :class:`~pydicom.dataset.Dataset`, ``info`` and pixels.

    Attributes
    ----------
    dataset : pydicom.dataset.Dataset
        The header as read, without (7FE0,0010) *Pixel Data* for file sources. medeq never
        modifies it.
    info : ImageInfo
        The standardised facts medeq uses.
    """

    def __init__(
        self, dataset: Dataset | None, info: ImageInfo, source: bytes | Path | Dataset
    ) -> None:
        #: None: read again from the file on first use (see :meth:`without_header`).
        self._dataset = dataset
        self.info = info
        self._source = source
        self._stored: NDArray[Any] | None = None
        #: Where the header of a file source ends (see medeq._filewalk), if known.
        self._place: Place | None = None
        #: The file's size, modification time (ns) and inode before its header was read.
        self._version: tuple[int, int, int] | None = None

    def __repr__(self) -> str:
        i = self.info
        where = i.path or "<memory>"
        return (
            f"<DicomImage {where} {i.modality} {i.frames}x{i.rows}x{i.columns} "
            f"{'int' if i.signed else 'uint'}{i.bits_stored}/{i.bits_allocated} {i.photometric}>"
        )

    @property
    def name(self) -> str:
        """The file path, or ``<memory>`` for in-memory sources (for messages)."""
        return self.info.path or "<memory>"

    @property
    def dataset(self) -> Dataset:
        """The header (see the class's attributes); read again if this copy went without.

        Raises
        ------
        DicomError
            When the header has to be read again and the file no longer gives the same
            info record, or is no longer readable.
        """
        if self._dataset is None:
            self._dataset = _header_again(self)
        return self._dataset

    def without_header(self) -> DicomImage:
        """A copy without the header, which it reads from the file again if asked for it.

        For sending a file's image to another process: the info and where the header
        ends are a few hundred bytes, a header some 15 KB that costs a millisecond each
        way to pickle (worker processes send the images of the files they read this way,
        and the main process mostly needs only the info). Images not read from a file
        by its path keep their header. A file that changed in between is accepted only
        if it gives the same info record (the same instance, with the same image facts).
        """
        if self._version is None or not isinstance(self._source, Path):
            return self
        return self._copy(None)

    @classmethod
    def scanned(cls, info: ImageInfo, place: Place | None) -> DicomImage:
        """A file's image known only by its info and where its header ends.

        For reading its pixels in place (a batch's first pass sends a worker no more);
        its header, if asked for, is read again from the file.
        """
        image = cls(Dataset(), info, Path(str(info.path)))
        image._place = place
        return image

    @property
    def origin(self) -> bytes | Path | Dataset:
        """What the image was read from: a file's path, a file object's bytes, a Dataset."""
        return self._source

    @property
    def place(self) -> Place | None:
        """Where the header of a file source ends (see medeq._filewalk), if known."""
        return self._place

    def keep_stored(self, stored: NDArray[Any]) -> None:
        """Keep ``stored`` (decoded elsewhere, as a worker does) as this image's values.

        Shaped as :attr:`stored`; it is made read-only. :meth:`release` drops it.
        """
        stored.flags.writeable = False
        self._stored = stored

    def with_stored(self, stored: NDArray[Any]) -> DicomImage:
        """A copy with these stored values (shaped as :attr:`stored`) and the same header."""
        image = self._copy(self._dataset)
        image._stored = stored
        return image

    def _copy(self, dataset: Dataset | None) -> DicomImage:
        """The same file (info, source, version, where the header ends), with ``dataset``
        as its header and no pixels."""
        image = DicomImage(dataset, self.info, self._source)
        image._place, image._version = self._place, self._version
        return image

    @property
    def stored(self) -> NDArray[Any]:
        """Stored pixel values as a read-only ``(frames, rows, columns)`` array.

        Decoded on first use, then kept. Bits above *Bits Stored* are masked off and
        signed values sign-extended.
        """
        if self._stored is None:
            arr = _decode(self)
            arr.flags.writeable = False
            self._stored = arr
        return self._stored

    def release(self) -> None:
        """Drop the decoded pixels (they are decoded again if needed)."""
        self._stored = None

    def __getstate__(self) -> dict[str, Any]:
        # Pickling (to a worker process) carries the header and the source, not the
        # decoded pixels, which can be decoded again where needed.
        state = self.__dict__.copy()
        state["_stored"] = None
        return state


# --------------------------------------------------------------------------- reading


def read(source: Source) -> DicomImage:
    """Read a grey-scale DICOM image; pixels are decoded later, when first needed.

    Parameters
    ----------
    source : str, os.PathLike, binary file object or pydicom.dataset.Dataset
        The file. Files without a preamble or file meta header are read too (their
        transfer syntax is inferred). A file object's ``name``, when it has one, becomes
        ``info.path`` and names the file in error messages.

    Returns
    -------
    DicomImage

    Raises
    ------
    NotDicomError
        Missing, empty, not DICOM, a header that ends early, a value the reader needs
        that is no number, or a transfer syntax that is no UID.
    UnsupportedImageError
        Not an image (SR, RTSTRUCT, ...), a colour image (RGB, YBR, PALETTE COLOR), a
        pixel module medeq cannot use, a transfer syntax without a decoder, or a
        compressed image larger than :data:`MAX_DECODED_BYTES`.
    CorruptPixelDataError
        The header declares more pixel data than the file holds.
    """
    return _image(*_read_header(source))


def read_info(source: Source) -> ImageInfo:
    """Read only the header's :class:`ImageInfo`, for any image, colour included.

    Parameters
    ----------
    source : str, os.PathLike, binary file object or pydicom.dataset.Dataset
        The file, as for :func:`read`.

    Returns
    -------
    ImageInfo

    Raises
    ------
    NotDicomError
        Missing, empty, not DICOM, a header that ends early, or a value it needs that is
        no number (as :func:`read`).
    UnsupportedImageError
        A value out of its range (Number of Frames 0, Pixel Representation 2, ...), or a
        deflated data set that inflates past :data:`MAX_DECODED_BYTES`.
    """
    header, _, path, inferred, _ = _read_header(source)
    info = _info(header, path, inferred)
    _check_complete(header, info)
    return info


def read_whole(path: str | os.PathLike[str]) -> DicomImage:
    """:func:`read` a file in one pass, pixel data included.

    :func:`read` parses the header and, on first use of the pixels, the whole file again;
    a caller that wants the pixels at once (a conversion's worker) parses it once here.
    Raises what :func:`read` and decoding raise.
    """
    return _image(*_read_header(Path(path), whole=True))


def _header_again(image: DicomImage) -> Dataset:
    """The header of ``image``'s file, read again.

    A file that changed since (size, modification time or inode) is accepted if it
    still gives the same info record (the same instance, with the same image facts, as
    a file merely touched or rewritten as it was); otherwise it is refused. The image
    keeps its own version and place: its pixels are then read from the whole file.
    """
    if not isinstance(image._source, Path):
        raise DicomError(f"{image.name}: not a file, its header cannot be read again")
    again = read(image._source)
    if again._version != image._version and again.info != image.info:
        was, now = image.info.sop_instance_uid, again.info.sop_instance_uid
        what = (
            f"(0008,0018) SOP Instance UID is now {now}, was {was}"
            if now != was
            else "its image attributes differ"
        )
        raise DicomError(f"{image.name}: the file changed after its header was read ({what})")
    return again.dataset


def _image(
    header: Dataset,
    src: bytes | Path | Dataset,
    path: str | None,
    inferred: bool,
    version: tuple[int, int, int] | None,
) -> DicomImage:
    """The image of a header read by :func:`_read_header`, once its checks pass."""
    # Before the checks convert the last elements and forget their place in the file.
    place = last_place(header, bool(header.original_encoding[0])) if isinstance(src, Path) else None
    info = _info(header, path, inferred)
    _check_complete(header, info)
    _check_grey(header, info)
    size = version[0] if version is not None else len(src) if isinstance(src, bytes) else None
    _check_fits(info, size)
    image = DicomImage(header, info, src)
    image._place = place
    image._version = version
    return image


def _read_header(
    source: Source, *, whole: bool = False
) -> tuple[Dataset, bytes | Path | Dataset, str | None, bool, tuple[int, int, int] | None]:
    """The header, what to decode pixels from later, the file name (if any), 'ts inferred',
    and a file's version (:func:`_file_version`, taken before it is read).

    ``whole``: parse a file's pixel data too; the dataset is then also the pixel source.
    """
    if isinstance(source, Dataset):
        path = str(source.filename) if isinstance(source.get("filename"), str) else None
        return source, source, path, _declared_syntax(source) is None, None
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        name = str(p)
        if not p.exists():
            raise NotDicomError(f"{name}: no such file")
        if p.is_dir():
            raise NotDicomError(f"{name}: is a folder, not a DICOM file (use read_series)")
        version = _file_version(p)
        if version[0] == 0:
            raise NotDicomError(f"{name}: empty file (0 bytes)")
        header, inferred = _parse(p, name, stop_before_pixels=not whole)
        return header, (header if whole else p), name, inferred, version
    if hasattr(source, "read"):
        data = source.read()
        path = _file_object_path(source)
        name = path or "<memory>"
        if not isinstance(data, bytes):
            raise NotDicomError(f"{name}: file object was opened in text mode; open it with 'rb'")
        if not data:
            raise NotDicomError(f"{name}: empty file (0 bytes)")
        header, inferred = _parse(io.BytesIO(data), name, stop_before_pixels=True)
        return header, data, path, inferred, None
    raise NotDicomError(
        f"cannot read {type(source).__name__!r}: give a path, a binary file object "
        "or a pydicom Dataset"
    )


def _file_version(path: Path) -> tuple[int, int, int]:
    """Size, modification time (ns) and inode: a file rewritten or replaced changes them."""
    return _version_of(path.stat())


def _version_of(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino


def _file_object_path(source: Any) -> str | None:
    """The file name of an opened file (its ``name``), or None for in-memory buffers.

    ``open(fd)`` gives an int ``name`` and BytesIO has none: neither names a file.
    """
    name = getattr(source, "name", None)
    if isinstance(name, (str, bytes, os.PathLike)):
        return os.fsdecode(name)
    return None


def _info(header: Dataset, path: str | None, inferred: bool) -> ImageInfo:
    """The info record; values are converted lazily, so their flaws surface here."""
    name = path or "<memory>"
    with logged_warnings(name):
        try:
            return _make_info(header, path, inferred)
        except DicomError:
            raise
        except Exception as exc:  # malformed values raise many types on conversion
            raise NotDicomError(
                f"{name}: header values cannot be parsed: {_first_line(exc)}"
            ) from exc


def _parse(opener: Any, name: str, *, stop_before_pixels: bool) -> tuple[Dataset, bool]:
    """dcmread with medeq's error messages; returns the dataset and 'transfer syntax inferred'."""
    with logged_warnings(name) as caught:
        try:
            try:
                fast = None
                if stop_before_pixels and isinstance(opener, Path):
                    fast = read_header(str(opener))
                ds = _dcmread(opener, stop_before_pixels, force=False) if fast is None else fast
                forced = False
            except InvalidDicomError:
                ds = _dcmread(opener, stop_before_pixels, force=True)
                forced = True
        except _Inflation as exc:
            raise UnsupportedImageError(f"{name}: {exc}") from None
        except Exception as exc:  # pydicom raises many types on malformed input
            raise NotDicomError(f"{name}: not a readable DICOM file: {_first_line(exc)}") from exc
    if forced and not _looks_like_dicom(ds):
        raise NotDicomError(
            f"{name}: not DICOM (no 'DICM' preamble, and no DICOM image attributes could be parsed)"
        )
    inferred = _declared_syntax(ds) is None
    if inferred and not stop_before_pixels:
        _set_inferred_transfer_syntax(ds)
    truncated = [w for w in caught if "End of file reached" in str(w.message)]
    if truncated and not stop_before_pixels:
        raise CorruptPixelDataError(
            f"{name}: (7FE0,0010) Pixel Data is truncated: the file ends before the "
            "encapsulated data's sequence delimiter"
        )
    return ds, inferred


def _dcmread(opener: Path | io.BytesIO, stop_before_pixels: bool, *, force: bool) -> Dataset:
    """pydicom's reader on a file (through :class:`BoundedReader`) or in-memory bytes."""
    if isinstance(opener, Path):
        with BoundedReader(opener) as fp:
            _check_inflation(fp)
            return pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels, force=force)
    opener.seek(0)
    _check_inflation(opener)
    return pydicom.dcmread(opener, stop_before_pixels=stop_before_pixels, force=force)


class _Inflation(Exception):
    """A deflated data set that inflates to more than :data:`MAX_DECODED_BYTES`."""


def _check_inflation(fp: BinaryIO) -> None:
    """Refuse a deflated data set that inflates to more than :data:`MAX_DECODED_BYTES`.

    pydicom inflates a Deflated Explicit VR Little Endian data set whole, pixels
    included, even to read its header: 100 KB of zeros deflated make 100 MB, and
    deflate goes to 1:1032. The inflated size is counted here 1 MiB at a time, and
    ``fp`` is left at its start.
    """
    try:
        syntax = skip_file_meta(fp)
        if syntax is None or syntax.rstrip(b"\0 ") != _DEFLATED:
            return
        inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
        while not inflater.eof:
            chunk = inflater.unconsumed_tail or fp.read(1 << 20)
            if not chunk:
                break
            total += len(inflater.decompress(chunk, 1 << 20))
            if total > MAX_DECODED_BYTES:
                raise _Inflation(
                    "the deflated data set ((0002,0010) Transfer Syntax UID "
                    f"{_DEFLATED.decode()}) inflates to more than {MAX_DECODED_BYTES} bytes "
                    "(medeq.reader.MAX_DECODED_BYTES)"
                )
    except (OSError, ValueError, struct.error, zlib.error):
        pass  # damage pydicom's reader reports in its own words
    finally:
        fp.seek(0)


_DEFLATED = b"1.2.840.10008.1.2.1.99"


#: Groups a data set without a preamble can start with (little or big endian).
_FIRST_GROUPS = frozenset(
    g.to_bytes(2, order)
    for g in (0x0002, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028)
    for order in ("little", "big")
)


def looks_like_dicom(path: str | os.PathLike[str]) -> bool:
    """Whether a file may be DICOM, from its first 132 bytes (False for text and images).

    True for a 'DICM' preamble, or a start that reads as an element of one of the first
    groups of a data set (files without preamble and file meta). Only :func:`read` can
    tell a True for certain.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return True  # read() reports why it cannot be read
    return head[128:132] == b"DICM" or head[:2] in _FIRST_GROUPS


def _file_meta(ds: Dataset) -> Dataset:
    meta = getattr(ds, "file_meta", None)
    return meta if meta is not None else Dataset()


def _looks_like_dicom(ds: Dataset) -> bool:
    # A forced read of arbitrary bytes yields junk elements; real headers have these.
    return any(kw in ds for kw in ("SOPClassUID", "Rows", "Modality", "StudyInstanceUID"))


def _inferred_transfer_syntax(ds: Dataset) -> str:
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit:
        return pydicom.uid.ImplicitVRLittleEndian
    return pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian


def _set_inferred_transfer_syntax(ds: Dataset) -> None:
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = FileMetaDataset()
        ds.file_meta = meta
    meta.TransferSyntaxUID = _inferred_transfer_syntax(ds)


# --------------------------------------------------------------------------- the info record


def _number(value: Any, default: float, keyword: str) -> float:
    """A rescale value as a float (NaN and infinities included: normalising judges them).

    Raises ValueError naming the tag for text that is no number.
    """
    if value is None or value == "":
        return default
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0] if len(value) else default
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{tag_name(keyword)} {str(value)[:40]!r} is not a number") from None


def _values(ds: Dataset, keyword: str) -> list[Any]:
    value = _value(ds, keyword)
    if value is None or value == "":
        return []
    if isinstance(value, (pydicom.multival.MultiValue, list, tuple)):
        return list(value)
    return [value]


def _first_item(ds: Dataset, *keywords: str) -> Dataset | None:
    """``ds.A[0].B[0]...`` if every level is present, else None."""
    node: Dataset | None = ds
    for kw in keywords:
        seq = node.get(kw) if node is not None else None
        if not seq:
            return None
        node = seq[0]
    return node


#: (5200,9229) Shared and (5200,9230) Per-Frame Functional Groups Sequence.
_SHARED_GROUPS, _PER_FRAME_GROUPS = 0x52009229, 0x52009230


def frame_groups(ds: Dataset, frame: int) -> list[Dataset]:
    """The functional group items that apply to ``frame`` (per-frame first, then shared)."""
    if _SHARED_GROUPS not in ds._dict and _PER_FRAME_GROUPS not in ds._dict:
        return []  # most images: no lookups by keyword (each costs microseconds)
    groups: list[Dataset] = []
    per_frame = header_value(ds, "PerFrameFunctionalGroupsSequence")
    if per_frame and frame < len(per_frame):
        groups.append(per_frame[frame])
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    if shared is not None:
        groups.append(shared)
    return groups


def frame_attribute(ds: Dataset, frame: int, sequence: str, keyword: str) -> Any:
    """An attribute from a functional group macro of ``frame``, or None."""
    for group in frame_groups(ds, frame):
        item = _first_item(group, sequence)
        if item is not None and keyword in item:
            return header_value(item, keyword)
    return None


def rescale_of_frame(ds: Dataset, frame: int) -> tuple[float, float, str]:
    """(slope, intercept, type) of one frame: functional groups first, then the top level.

    The values are floats as the file gives them, NaN and infinities included (the
    normaliser refuses those); text that is no number raises ValueError naming the tag.
    """
    slope = frame_attribute(ds, frame, "PixelValueTransformationSequence", "RescaleSlope")
    intercept = frame_attribute(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept")
    rtype = frame_attribute(ds, frame, "PixelValueTransformationSequence", "RescaleType")
    if slope is None:
        slope = header_value(ds, "RescaleSlope")
    if intercept is None:
        intercept = header_value(ds, "RescaleIntercept")
    if rtype is None:
        rtype = header_value(ds, "RescaleType")
    return (
        _number(slope, 1.0, "RescaleSlope"),
        _number(intercept, 0.0, "RescaleIntercept"),
        str(rtype or ""),
    )


#: The largest magnitude of a window value or a patient coordinate medeq takes. Past
#: 2**53 a float64 no longer holds every integer: such a window cannot tell neighbouring
#: stored values apart, and such a position (in mm) is no patient's. 1e308 or inf in a
#: file is damage, and arithmetic on it overflows.
LARGEST_VALUE = 2.0**53


def _windows(ds: Dataset, name: str) -> tuple[Window, ...]:
    """The file's windows; a pair that is not two finite numbers within
    ±:data:`LARGEST_VALUE` is left out, with a note."""
    source: Dataset = ds
    if "WindowCenter" not in ds:
        item = None
        for group in frame_groups(ds, 0):
            item = _first_item(group, "FrameVOILUTSequence")
            if item is not None:
                break
        if item is None:
            return ()
        source = item
    centers = _values(source, "WindowCenter")
    widths = _values(source, "WindowWidth")
    explanations = _values(source, "WindowCenterWidthExplanation")
    function = str(header_value(source, "VOILUTFunction") or "LINEAR").strip().upper()
    out = []
    for i, (c, w) in enumerate(zip(centers, widths, strict=False)):
        center, width = finite_number(c), finite_number(w)
        if center is None or width is None or max(abs(center), abs(width)) > LARGEST_VALUE:
            later = " (the windows after it move up one place)" if i + 1 < len(centers) else ""
            note(
                f"{name}: window {i + 1} of {min(len(centers), len(widths))}, (0028,1050) "
                f"Window Center {_shown(c)} / (0028,1051) Window Width {_shown(w)}, "
                f"is ignored: both must be finite numbers within ±2**53{later}"
            )
            continue
        explanation = str(explanations[i]) if i < len(explanations) else ""
        out.append(Window(center, width, function, explanation))
    return tuple(out)


#: The largest (0028,0008) Number of Frames: what an IS value can hold.
MOST_FRAMES = 2**31 - 1
#: What a US value can hold (Rows, Columns, Bits Allocated ...).
_US = 0xFFFF


def _value(ds: Dataset, keyword: str) -> Any:
    """:func:`header_value`, or a value no number is made of when pydicom cannot decode it.

    pydicom raises on some values it cannot convert (an IS of 'inf'); the callers then
    name the element with its text from the file.
    """
    try:
        return header_value(ds, keyword)
    except Exception:
        return _UNDECODABLE


#: What :func:`_value` gives for an element pydicom cannot decode.
_UNDECODABLE = object()


def _shown(value: Any) -> str:
    """One value of an element, quoted, for a message."""
    return "(undecodable)" if value is _UNDECODABLE else repr(str(value)[:40])


def _whole(ds: Dataset, keyword: str, name: str, default: int, low: int, high: int) -> int:
    """A required whole-number value, ``default`` when absent or empty.

    Raises
    ------
    NotDicomError
        The value is no whole number (text, NaN, several values).
    UnsupportedImageError
        It is one, outside ``low`` to ``high``.
    """
    value = _value(ds, keyword)
    if value is None or value == "":
        return default
    number = whole_number(value)
    if number is not None and low <= number <= high:
        return number
    error = NotDicomError if number is None else UnsupportedImageError
    raise error(
        f"{name}: {tag_name(keyword)} {file_text(ds, keyword)} is not a whole number "
        f"from {low} to {high}"
    )


def _optional_whole(ds: Dataset, keyword: str, name: str) -> int | None:
    """An optional IS value; one that is not a whole number an IS holds is None, with a note."""
    value = _value(ds, keyword)
    if value is None or value == "":
        return None
    number = whole_number(value)
    if number is not None and -(2**31) <= number < 2**31:
        return number
    note(
        f"{name}: {tag_name(keyword)} {file_text(ds, keyword)} is ignored: not a whole "
        f"number from -2147483648 to 2147483647"
    )
    return None


def _geometry(
    ds: Dataset, keyword: str, count: int, name: str, *fallback: str
) -> tuple[float, ...] | None:
    """``count`` finite numbers within ±:data:`LARGEST_VALUE` from ``ds`` (or the first item
    of the ``fallback`` sequences); anything else is None, with a note.

    Direction cosines (six values) must also make two vectors of length 1 (to 1 %).
    """
    source = ds
    values = _values(ds, keyword)
    if not values:
        source = _first_item(ds, *fallback) or Dataset()
        values = _values(source, keyword)
    if not values:
        return None
    if values == [_UNDECODABLE]:
        values = [None]
    numbers = [finite_number(v) for v in values]
    good = [n for n in numbers if n is not None and abs(n) <= LARGEST_VALUE]
    unit = count != 6 or all(0.99 <= math.hypot(*good[k : k + 3]) <= 1.01 for k in (0, 3))
    if len(good) == count == len(numbers) and unit:
        return tuple(good)
    what = "two unit vectors" if count == 6 and len(good) == 6 else f"{count} finite numbers"
    note(f"{name}: {tag_name(keyword)} {file_text(source, keyword)} is ignored: not {what}")
    return None


def _declared_syntax(ds: Dataset) -> str | None:
    """(0002,0010) *Transfer Syntax UID* as the file meta gives it; None if absent or empty."""
    value = _file_meta(ds).get("TransferSyntaxUID")
    text = str(value).strip(" \0") if value is not None else ""
    return text or None


def _make_info(ds: Dataset, path: str | None, inferred: bool) -> ImageInfo:
    name = path or "<memory>"
    declared = _declared_syntax(ds)
    ts = declared or _inferred_transfer_syntax(ds)
    if declared is None and "TransferSyntaxUID" in _file_meta(ds):
        note(
            f"{name}: (0002,0010) Transfer Syntax UID is empty; the data set reads as "
            f"{_uid(ts).name}, and its pixels are read as such"
        )
        inferred = True
    frames = _whole(ds, "NumberOfFrames", name, 1, 1, MOST_FRAMES)
    try:
        # Only frames with an item of their own can differ: the rest share one rescale.
        per_frame = header_value(ds, "PerFrameFunctionalGroupsSequence") or ()
        count = min(frames, len(per_frame) + 1) if frames > 1 else 0
        slopes = {rescale_of_frame(ds, f)[:2] for f in range(count)}
        slope, intercept, rtype = rescale_of_frame(ds, 0)
    except ValueError as exc:
        raise NotDicomError(f"{name}: {exc}") from exc
    bits_allocated = _whole(ds, "BitsAllocated", name, 0, 0, _US)
    bits_stored = _whole(ds, "BitsStored", name, bits_allocated, 0, _US)
    return ImageInfo(
        path=path,
        modality=str(header_value(ds, "Modality") or ""),
        sop_class_uid=str(header_value(ds, "SOPClassUID") or ""),
        sop_instance_uid=str(header_value(ds, "SOPInstanceUID") or ""),
        series_instance_uid=str(header_value(ds, "SeriesInstanceUID") or ""),
        study_instance_uid=str(header_value(ds, "StudyInstanceUID") or ""),
        rows=_whole(ds, "Rows", name, 0, 0, _US),
        columns=_whole(ds, "Columns", name, 0, 0, _US),
        frames=frames,
        samples_per_pixel=_whole(ds, "SamplesPerPixel", name, 1, 1, _US),
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        high_bit=_whole(ds, "HighBit", name, bits_stored - 1, 0, _US),
        signed=_whole(ds, "PixelRepresentation", name, 0, 0, 1) == 1,
        photometric=str(header_value(ds, "PhotometricInterpretation") or "").strip().upper(),
        transfer_syntax=ts,
        transfer_syntax_inferred=inferred,
        rescale_slope=slope,
        rescale_intercept=intercept,
        rescale_type=rtype,
        per_frame_rescale=len(slopes) > 1,
        modality_lut="ModalityLUTSequence" in ds,
        voi_lut="VOILUTSequence" in ds,
        windows=_windows(ds, name),
        lossy=str(header_value(ds, "LossyImageCompression") or "") == "01",
        series_number=_optional_whole(ds, "SeriesNumber", name),
        instance_number=_optional_whole(ds, "InstanceNumber", name),
        image_position=_geometry(  # type: ignore[arg-type]
            ds,
            "ImagePositionPatient",
            3,
            name,
            "PerFrameFunctionalGroupsSequence",
            "PlanePositionSequence",
        ),
        image_orientation=_geometry(  # type: ignore[arg-type]
            ds,
            "ImageOrientationPatient",
            6,
            name,
            "SharedFunctionalGroupsSequence",
            "PlaneOrientationSequence",
        ),
    )


def _check_complete(ds: Dataset, info: ImageInfo) -> None:
    """Refuse an image header that ends before its pixel module (a truncated file).

    pydicom stops quietly at the end of the file, so the only sign is an image SOP class
    without Rows/Columns; non-image objects have none and pass.
    """
    if "Rows" in ds and "Columns" in ds:
        return
    sop = _uid(info.sop_class_uid).name if info.sop_class_uid else "unknown"
    if "Image Storage" in sop:
        raise NotDicomError(
            f"{info.path or '<memory>'}: header ends early: {sop} object without "
            "(0028,0010) Rows / (0028,0011) Columns (truncated file?)"
        )


def _check_grey(ds: Dataset, info: ImageInfo) -> None:
    name = info.path or "<memory>"
    if "Rows" not in ds or "Columns" not in ds:
        sop = _uid(info.sop_class_uid).name if info.sop_class_uid else "unknown"
        raise UnsupportedImageError(
            f"{name}: not an image: SOP Class {sop!r} has no pixel data ((0028,0010) Rows missing)"
        )
    _check_transfer_syntax(info, name)
    if info.samples_per_pixel != 1 or info.photometric not in _GREY:
        raise UnsupportedImageError(
            f"{name}: colour image: (0028,0004) Photometric Interpretation "
            f"{info.photometric!r} with (0028,0002) Samples per Pixel {info.samples_per_pixel}; "
            "medeq equalizes grey-scale images (MONOCHROME1, MONOCHROME2)"
        )
    if info.bits_allocated not in (8, 16, 32):
        raise UnsupportedImageError(
            f"{name}: unsupported (0028,0100) Bits Allocated {info.bits_allocated}; "
            "medeq reads 8, 16 and 32"
        )
    if not 1 <= info.bits_stored <= info.bits_allocated:
        raise UnsupportedImageError(
            f"{name}: (0028,0101) Bits Stored {info.bits_stored} does not fit (0028,0100) "
            f"Bits Allocated {info.bits_allocated}"
        )
    if info.high_bit != info.bits_stored - 1:
        note(
            f"{name}: (0028,0102) High Bit {info.high_bit} is not (0028,0101) Bits Stored "
            f"{info.bits_stored} - 1; the stored values are read from the low "
            f"{info.bits_stored} bits, as the image pixel module requires"
        )
    if info.rows < 1 or info.columns < 1:
        raise UnsupportedImageError(
            f"{name}: image size (0028,0010) Rows {info.rows} x (0028,0011) Columns "
            f"{info.columns} is empty"
        )


def _check_transfer_syntax(info: ImageInfo, name: str) -> None:
    """Refuse a transfer syntax that is not a UID, or one no installed decoder reads."""
    problem = _syntax_problem(info.transfer_syntax)
    if problem is not None:
        error, text = problem
        raise error(f"{name}: (0002,0010) Transfer Syntax UID {text}")


@functools.lru_cache(maxsize=64)
def _syntax_problem(syntax: str) -> tuple[type[DicomError], str] | None:
    """What is wrong with a transfer syntax for reading pixels (error class and text)."""
    ts = _uid(syntax)
    if not ts.is_valid:
        return (
            NotDicomError,
            f"{syntax[:70]!r} is not a UID (digits and dots, at most 64 characters)",
        )
    try:
        available = bool(get_decoder(ts).is_available)
    except (NotImplementedError, ValueError):
        available = False
    if available:
        return None
    what = "" if ts.name == syntax else f" ({ts.name})"
    return UnsupportedImageError, (
        f"{syntax!r}{what} is not one medeq can read pixels of: it reads native "
        "(uncompressed) pixel data and the compressed transfer syntaxes an installed "
        "decoder takes (JPEG, JPEG-LS, JPEG 2000, HTJ2K, RLE Lossless)"
    )


@functools.lru_cache(maxsize=64)
def _compressed(syntax: str) -> tuple[bool, bool]:
    """(compressed, deflated) for a transfer syntax :func:`_check_transfer_syntax` passed."""
    ts = _uid(syntax)
    return bool(ts.is_compressed), bool(ts.is_deflated)


#: The most bytes a compressed image may decode to (all frames, one sample a pixel at
#: Bits Allocated): 4 GiB. Native pixel data must be in the file, so it is checked
#: against its length instead; a compressed frame of a few bytes can claim any size, and
#: the decoders allocate what it claims before decoding. 4 GiB holds the largest grey
#: images in clinical use with room to spare (a 2000-slice enhanced CT of 512 x 512 is
#: 1 GiB, breast tomosynthesis under 1 GiB), and is what a 32-bit Pixel Data length
#: can hold natively. Raise it for larger images on a machine with the memory.
MAX_DECODED_BYTES = 1 << 32


def _decoded_bytes(info: ImageInfo) -> int:
    """The bytes of all frames at Bits Allocated, as the header declares them."""
    per_sample = max(1, (info.bits_allocated + 7) // 8)
    return info.frames * info.rows * info.columns * info.samples_per_pixel * per_sample


def _size_text(info: ImageInfo) -> str:
    return (
        f"(0028,0010) Rows {info.rows} x (0028,0011) Columns {info.columns} x (0028,0008) "
        f"Number of Frames {info.frames} x (0028,0100) Bits Allocated {info.bits_allocated} / 8"
    )


# --------------------------------------------------------------------------- pixels


def _full_dataset(image: DicomImage) -> Dataset:
    src = image._source
    if isinstance(src, Dataset):
        if _declared_syntax(src) is not None:
            return src
        # Decoding needs a transfer syntax; give it one without touching the caller's Dataset.
        shallow = Dataset(src)
        shallow.file_meta = FileMetaDataset(_file_meta(src))
        _set_inferred_transfer_syntax(shallow)
        return shallow
    opener: Any = io.BytesIO(src) if isinstance(src, bytes) else src
    ds, _ = _parse(opener, image.name, stop_before_pixels=False)
    return ds


def _encoded_frames(ds: Dataset, data: bytes, frames: int) -> Iterator[bytes]:
    """The encoded frames as pydicom's decoders split them (Extended Offset Table too)."""
    from pydicom.encaps import generate_frames

    offsets, lengths = ds.get("ExtendedOffsetTable"), ds.get("ExtendedOffsetTableLengths")
    extended = (offsets, lengths) if offsets and lengths else None
    return generate_frames(data, number_of_frames=frames, extended_offsets=extended)


def native_little(info: ImageInfo) -> bool:
    """Whether the pixel data are native little-endian whole bytes a pixel."""
    return (
        info.transfer_syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian)
        and not info.transfer_syntax_inferred
        and info.bits_allocated in (8, 16, 32)
    )


def _native_pixel_data(image: DicomImage) -> bytes | None:
    """The Pixel Data value of a native little-endian file, read straight from its place.

    Where the header ends is known from reading it, so the file is not parsed again.
    None when that does not apply or the file holds something unexpected there: the
    caller then parses the whole file, which reports any problem.
    """
    info, src = image.info, image._source
    if not isinstance(src, Path) or image._place is None or not native_little(info):
        return None
    implicit = info.transfer_syntax == ImplicitVRLittleEndian
    expected = info.frames * info.rows * info.columns * (info.bits_allocated // 8)
    try:
        with BoundedReader(src) as fp:
            if image._version is not None and _version_of(os.fstat(fp.fileno())) != image._version:
                return None  # not the file whose header was read: the full parse reads it
            walker = Skipper(fp, implicit=implicit, little=True)
            if not resume(walker, image._place):
                return None
            found = walker.find(PIXEL_TAGS)
            if found is None or found[1] != PIXEL_DATA:
                return None  # float pixel data, or none: the full parse says which
            start, _, vr, length = found
            fp.seek(start + 4)
            if implicit and fp.read(4) in (b"OB\0\0", b"OW\0\0"):
                return None  # explicit VR under an implicit label: pydicom copes
            # Only data of exactly the size the header gives (or one pad byte more):
            # anything else is for the full parse to decode or to refuse.
            if vr not in (None, b"OB", b"OW") or length not in (
                expected,
                expected + expected % 2,
            ):
                return None
            fp.seek(start + (8 if vr is None else 12))
            data = fp.read(length)
            return data if len(data) == length else None
    except (OSError, ValueError, struct.error, RecursionError):
        # RecursionError: sequences nested deeper than Python recurses, which the full
        # parse refuses with its own message.
        return None


def _native_values(data: bytes, info: ImageInfo, name: str) -> NDArray[Any]:
    """Stored values of native pixel data (they need no decoder: they are the bytes)."""
    _check_native_length(len(data), info, name)
    shape = (info.frames, info.rows, info.columns)
    arr = np.frombuffer(data, np.dtype(f"<u{info.bits_allocated // 8}"), int(np.prod(shape)))
    return _stored_values(arr.reshape(shape), info)


def decode_in_place(image: DicomImage) -> bool:
    """Decode an image's native pixel data from where its header read found them to end.

    Returns False, and decodes nothing, when the file is not the one whose header was
    read (its size, modification time or inode changed) or the data are not there as
    the header describes them (not native): the caller then reads the file again whole,
    which reports what it finds. The pixels are kept on the image until
    :meth:`DicomImage.release`.
    """
    if image._version is None:
        return False  # not read from a file by its path
    data = _native_pixel_data(image)  # checks the version of the file it opens
    if data is None:
        return False
    values = _native_values(data, image.info, image.name)
    values.flags.writeable = False
    image._stored = values
    return True


def _decode(image: DicomImage) -> NDArray[Any]:
    info, name = image.info, image.name
    data = _native_pixel_data(image)
    if data is not None:
        return _native_values(data, info, name)
    ds = _full_dataset(image)
    data = _pixel_data(ds, info, name)
    if not _uid(info.transfer_syntax).is_encapsulated:
        if native_little(info) and not ds["PixelData"].is_undefined_length:
            return _native_values(data, info, name)
        _check_native_length(len(data), info, name)
    else:
        _check_frames(ds, data, info, name)
    with logged_warnings(name):
        try:
            arr = pixel_array(ds, raw=True)
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:
            # Decoder plugins raise many types on bad input; pylibjpeg-rle panics, and a
            # Rust panic reaches Python as pyo3's PanicException, a BaseException. The
            # checks before allow no output past MAX_DECODED_BYTES, so a MemoryError
            # here is a codestream that asks its decoder for more: the data's fault too.
            raise CorruptPixelDataError(
                f"{name}: cannot decode (7FE0,0010) Pixel Data ({info.transfer_syntax_name}): "
                f"{_decoder_failure(exc)}"
            ) from exc
    expected = (info.frames, info.rows, info.columns)
    if arr.size != int(np.prod(expected)):
        raise CorruptPixelDataError(
            f"{name}: decoded {arr.size} pixels, but (0028,0008) Number of Frames x "
            f"(0028,0010) Rows x (0028,0011) Columns = {'x'.join(map(str, expected))}"
        )
    return _stored_values(arr.reshape(expected), info)


def _pixel_data(ds: Dataset, info: ImageInfo, name: str) -> bytes:
    """The value of (7FE0,0010) *Pixel Data*: bytes, not empty."""
    if "PixelData" not in ds:
        other = [kw for kw in ("FloatPixelData", "DoubleFloatPixelData") if kw in ds]
        if other:
            raise UnsupportedImageError(
                f"{name}: {other[0]} (float pixel data) is not supported; medeq reads "
                "integer (7FE0,0010) Pixel Data"
            )
        raise CorruptPixelDataError(
            f"{name}: no (7FE0,0010) Pixel Data (the file ends before it, or it was dropped "
            "because the encapsulated data is truncated)"
        )
    try:
        element = ds["PixelData"]
        value = element.value
    except Exception as exc:  # a damaged element pydicom cannot convert
        raise CorruptPixelDataError(
            f"{name}: (7FE0,0010) Pixel Data cannot be read: {_first_line(exc)}"
        ) from exc
    if not value:
        raise CorruptPixelDataError(
            f"{name}: (7FE0,0010) Pixel Data is empty (length 0); {_size_text(info)} = "
            f"{_decoded_bytes(info)} bytes expected"
        )
    if not isinstance(value, bytes):
        raise CorruptPixelDataError(
            f"{name}: (7FE0,0010) Pixel Data has VR {element.VR} and a "
            f"{type(value).__name__} value; OB or OW bytes expected"
        )
    return value


def _check_fits(info: ImageInfo, size: int | None) -> None:
    """Refuse a header that declares more pixels than a file of ``size`` bytes can hold
    (None: not known), or a compressed image larger than :data:`MAX_DECODED_BYTES`.

    Checked when the header is read, before any pixel is: a Number of Frames of 2**31
    in a small file would otherwise cost a loop or an allocation per frame first.
    """
    name = info.path or "<memory>"
    compressed, deflated = _compressed(info.transfer_syntax)
    # Each encapsulated frame takes at least its item's tag and length.
    if compressed and size is not None and info.frames * 8 > size:
        raise CorruptPixelDataError(
            f"{name}: (0028,0008) Number of Frames {info.frames} cannot be in a file of "
            f"{size} bytes: each encapsulated frame takes 8 bytes or more"
        )
    if compressed and _decoded_bytes(info) > MAX_DECODED_BYTES:
        raise UnsupportedImageError(
            f"{name}: {_size_text(info)} = {_decoded_bytes(info)} bytes decoded, more than "
            f"the {MAX_DECODED_BYTES} bytes medeq decodes from compressed pixel data "
            "(medeq.reader.MAX_DECODED_BYTES)"
        )
    if not compressed and not deflated and size is not None and _decoded_bytes(info) > size:
        raise CorruptPixelDataError(
            f"{name}: (7FE0,0010) Pixel Data as the header declares it cannot be in the "
            f"file: {_size_text(info)} = {_decoded_bytes(info)} bytes, more than the whole "
            f"file holds ({size} bytes; truncated, or a wrong size in the header)"
        )


def _check_frames(ds: Dataset, data: bytes, info: ImageInfo, name: str) -> None:
    """Check every encoded frame against the header before a decoder sees any.

    The number of frames must be Number of Frames; each frame's own header (see
    medeq._codestream) must give the header's Rows, Columns and Samples per Pixel, and
    no more bits a sample than Bits Allocated; JPEG markers must be in order.
    Decoders take the header's word for the output's size: some abort the process
    when the codestream says otherwise.
    """
    ts = info.transfer_syntax
    found = 0
    try:
        for found, frame in enumerate(_encoded_frames(ds, data, info.frames), start=1):
            if found > info.frames:
                continue  # counted only: the message says how many there are
            problem = _codestream.codestream_problem(frame, ts)
            if problem:
                raise CorruptPixelDataError(
                    f"{name}: frame {found} of (7FE0,0010) Pixel Data is corrupt: "
                    f"{problem} ({info.transfer_syntax_name})"
                )
            disagreement = _frame_disagreement(frame, info)
            if disagreement:
                raise CorruptPixelDataError(
                    f"{name}: frame {found} of (7FE0,0010) Pixel Data {disagreement} "
                    f"({info.transfer_syntax_name})"
                )
    except CorruptPixelDataError:
        raise
    except Exception as exc:
        raise CorruptPixelDataError(
            f"{name}: (7FE0,0010) Pixel Data fragments cannot be split into "
            f"{info.frames} frame(s): {_first_line(exc)}"
        ) from exc
    if found != info.frames:
        raise CorruptPixelDataError(
            f"{name}: (7FE0,0010) Pixel Data holds {found} encoded frame(s), but "
            f"(0028,0008) Number of Frames is {info.frames}"
        )


def _frame_disagreement(frame: bytes, info: ImageInfo) -> str | None:
    """How one encoded frame's own header disagrees with the DICOM header, if it does."""
    rows, columns, samples = info.rows, info.columns, info.samples_per_pixel
    if info.transfer_syntax == _codestream.RLE:
        segments = _codestream.rle_segments(frame)
        if isinstance(segments, str):
            return f"is corrupt: {segments}"
        wanted = samples * (info.bits_allocated // 8)
        if len(segments) != wanted:
            return (
                f"does not match the header: its RLE header gives {len(segments)} segments; "
                f"(0028,0002) Samples per Pixel {samples} x (0028,0100) Bits Allocated "
                f"{info.bits_allocated} / 8 = {wanted}"
            )
        most = min(segments) * _codestream.RLE_MOST_BYTES_PER_BYTE
        if most < rows * columns:
            return (
                f"does not match the header: an RLE segment of {min(segments)} bytes "
                f"decodes to {most} bytes at most, fewer than (0028,0010) Rows {rows} x "
                f"(0028,0011) Columns {columns} = {rows * columns}"
            )
        return None
    header = _codestream.frame_header(frame, info.transfer_syntax)
    if header is None:
        return None
    if isinstance(header, str):
        return f"is corrupt: {header}"
    if _fits_header(header, info):
        return None
    container = ""
    if info.transfer_syntax in _codestream.JPEG_FAMILY:
        bits = 8 if header.precision <= 8 else 16
        container = f" (JPEG samples of {header.precision} bits take {bits})"
    return (
        f"does not match the header: its codestream holds {header.rows} rows x "
        f"{header.columns} columns, {header.components} component(s) of "
        f"{header.precision} bits; the header gives (0028,0010) Rows {rows}, (0028,0011) "
        f"Columns {columns}, (0028,0002) Samples per Pixel {samples}, (0028,0100) Bits "
        f"Allocated {info.bits_allocated}{container}"
    )


def _fits_header(header: _codestream.FrameHeader, info: ImageInfo) -> bool:
    """Whether a frame header agrees with the DICOM header, as the decoders need it.

    Rows, columns and components must be equal, and the samples must fit Bits
    Allocated. A JPEG (T.81) codestream of up to 16 bits a sample must moreover be in
    exactly the 8 or 16 bits its precision takes: GDCM aborts the process on a JPEG
    frame under Bits Allocated 32 (JPEG-LS and JPEG 2000 decoders widen their output).
    """
    if (header.rows, header.columns, header.components) != (
        info.rows,
        info.columns,
        info.samples_per_pixel,
    ) or header.precision > info.bits_allocated:
        return False
    if info.transfer_syntax in _codestream.JPEG_FAMILY:
        return info.bits_allocated == (8 if header.precision <= 8 else 16)
    return True


def _check_native_length(actual: int, info: ImageInfo, name: str) -> None:
    """Refuse native pixel data shorter or longer than the pixel module says.

    Only the pad byte to even length may follow. pydicom takes any excess for padding
    and only warns, so a wrong Rows or Columns would decode as a sheared image; the
    data can only be trusted when the lengths agree.
    """
    expected = (info.frames * info.rows * info.columns * info.bits_allocated + 7) // 8
    allowed = expected + expected % 2
    if expected <= actual <= allowed:
        return
    padded = f", {allowed} with the padding byte to even length" if allowed != expected else ""
    if actual < expected:
        raise CorruptPixelDataError(
            f"{name}: (7FE0,0010) Pixel Data is shorter than the header says (truncated?): "
            f"{_size_text(info)} = {expected} bytes expected, but it holds {actual} bytes"
        )
    raise CorruptPixelDataError(
        f"{name}: (7FE0,0010) Pixel Data is longer than the header says: {_size_text(info)} "
        f"= {expected} bytes expected{padded}, but it holds {actual} bytes"
    )


#: How pydicom starts the message when every installed decoder plugin failed; each
#: plugin's own message follows on a line of its own, as "  name: message".
_ALL_PLUGINS_FAILED = "Unable to decode as exceptions were raised by all available plugins"


def _decoder_failure(exc: BaseException) -> str:
    """One line saying why decoding failed, with each decoder's own message in brackets."""
    text = str(exc).strip()
    if not text.startswith(_ALL_PLUGINS_FAILED):
        return _first_line(exc)
    reasons: list[str] = []
    for line in text.splitlines()[1:]:
        plugin, sep, message = line.strip().partition(": ")
        if line.startswith("  ") and sep and plugin and " " not in plugin:
            reasons.append(f"{plugin}: {message.strip()}")
        elif line.strip() and reasons:  # a plugin message that spans lines
            reasons[-1] += " " + line.strip()
    listed = "".join(f" [{r}]" for r in reasons)
    return f"the codestream could not be decoded by any installed decoder{listed}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not isinstance(exc, Exception):  # a Rust panic (pyo3's PanicException) or the like
        lines[0] = f"the decoder failed ({type(exc).__name__}): {lines[0]}"
    return " ".join(lines[:3])


def _stored_values(arr: NDArray[Any], info: ImageInfo) -> NDArray[Any]:
    """Native byte order, bits above Bits Stored masked, signed values sign-extended."""
    nbytes = arr.dtype.itemsize
    unsigned = np.dtype(f"u{nbytes}")
    raw = arr.astype(arr.dtype.newbyteorder("="), copy=False).view(unsigned)
    bits = info.bits_stored
    if bits < 8 * nbytes:
        raw = raw & unsigned.type((1 << bits) - 1)
    if not info.signed:
        return np.ascontiguousarray(raw)
    signed = np.dtype(f"i{nbytes}")
    if bits < 8 * nbytes:
        # Two's complement in `bits` bits: values with the top stored bit set are negative.
        sign = unsigned.type(1 << (bits - 1))
        raw = (raw ^ sign).view(signed) - signed.type(sign)
        return np.ascontiguousarray(raw.astype(signed, copy=False))
    return np.ascontiguousarray(raw.view(signed))
