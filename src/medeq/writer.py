"""Writing derived DICOM: pixels into a derived header, encoding, atomic files, previews.

The header itself, with every rule of a derived image, comes from :mod:`medeq.derive`.
Every file is written atomically (:mod:`medeq._atomic`): a complete file appears at its
path, or nothing does. No DICOM value ever steers a path (:func:`safe_name`).
"""

from __future__ import annotations

import copy
import enum
import hashlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.uid import UID

from . import _atomic
from ._encode import copy_file_meta, element_name, encode_file
from .errors import OutputError, ParameterError
from .reader import DicomImage, logged_warnings

__all__ = [
    "TransferSyntax",
    "encode_image",
    "safe_name",
    "sidecar",
    "source_names",
    "with_pixels",
    "write",
    "write_dataset",
    "write_image",
]

logger = logging.getLogger(__name__)


class TransferSyntax(str, enum.Enum):
    """Transfer syntaxes medeq writes (all lossless)."""

    EXPLICIT_LITTLE = "explicit-little"
    RLE = "rle"
    JPEG_LS = "jpeg-ls"
    JPEG2000 = "jpeg2000"

    @property
    def uid(self) -> UID:
        """The transfer syntax UID."""
        return UID(_TS_UID[self])

    @classmethod
    def parse(cls, value: str | TransferSyntax) -> TransferSyntax:
        """Accept a name (``"rle"``) or a UID; raise ParameterError otherwise."""
        if isinstance(value, TransferSyntax):
            return value
        for ts in cls:
            if value in (ts.value, _TS_UID[ts]):
                return ts
        names = ", ".join(repr(t.value) for t in cls)
        raise ParameterError(f"transfer_syntax must be one of {names} (or its UID), got {value!r}")


_TS_UID = {
    TransferSyntax.EXPLICIT_LITTLE: pydicom.uid.ExplicitVRLittleEndian,
    TransferSyntax.RLE: pydicom.uid.RLELossless,
    TransferSyntax.JPEG_LS: pydicom.uid.JPEGLSLossless,
    TransferSyntax.JPEG2000: pydicom.uid.JPEG2000Lossless,
}


# --------------------------------------------------------------------------- writing


def with_pixels(header: Dataset, pixels: NDArray[Any], transfer_syntax: TransferSyntax) -> Dataset:
    """A shallow copy of ``header`` carrying ``pixels``, encoded in ``transfer_syntax``."""
    ds = copy.copy(header)
    ds.file_meta = copy_file_meta(header.file_meta)
    frames = pixels.shape[0]
    dtype = np.uint8 if int(header.BitsAllocated) == 8 else np.dtype("<u2")
    data = np.ascontiguousarray(pixels, dtype=dtype)
    ds.PixelData = data.tobytes()
    ds["PixelData"].VR = "OB" if int(header.BitsAllocated) == 8 else "OW"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    if "NumberOfFrames" in header or frames > 1:
        ds.NumberOfFrames = frames
    if transfer_syntax is not TransferSyntax.EXPLICIT_LITTLE:
        arr = data if frames > 1 else data[0]
        try:
            ds.compress(transfer_syntax.uid, arr, generate_instance_uid=False)
        except Exception as exc:  # encoder plugins raise many types
            raise OutputError(f"cannot encode as {transfer_syntax.uid.name}: {exc}") from exc
    return ds


def write_dataset(
    ds: Dataset,
    path: Path,
    *,
    overwrite: bool = True,
) -> Path:
    """Write a complete dataset to ``path`` atomically (DICOM file format)."""
    _write_bytes(path, _encoded(ds, path), overwrite)
    return path


def _encoded(ds: Dataset, path: Path) -> bytes:
    """The DICOM file of ``ds``; pydicom's warnings are logged against ``path``.

    Raises
    ------
    OutputError
        When an element cannot be encoded: names ``path`` and the element (its path
        through sequences), with pydicom's reason.
    """
    # Values copied from the source (an invalid UID) make pydicom warn again.
    try:
        with logged_warnings(str(path)):
            return encode_file(ds)
    except Exception as exc:  # pydicom's writer raises many types on odd values
        raise OutputError(f"{path}: cannot write DICOM: {_encoding_failure(exc)}") from exc


#: How pydicom's writer names the element it failed on, once per sequence level.
_TAG_IN_MESSAGE = re.compile(r"With tag \(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\) got exception: ")


def _encoding_failure(exc: Exception) -> str:
    """``(0008,1140) Referenced Image Sequence > (0028,3002) LUT Descriptor: <reason>``.

    pydicom's writer wraps its reason in "With tag ... got exception:" at every level
    and appends a traceback: the element's path and the first lines of the reason remain.
    """
    text = str(exc)
    tags: list[int] = []
    for group, element in _TAG_IN_MESSAGE.findall(text):
        tag = int(group + element, 16)
        if not tags or tags[-1] != tag:
            tags.append(tag)
    reason = _TAG_IN_MESSAGE.sub("", text).split("\nTraceback")[0]
    reason = "; ".join(line.strip() for line in reason.splitlines() if line.strip())
    return f"{' > '.join(map(element_name, tags))}: {reason}" if tags else reason


def _write_bytes(path: Path, data: bytes, overwrite: bool) -> None:
    _atomic.atomic_write(path, lambda f: f.write(data), overwrite=overwrite)


#: Longest file name stem medeq builds (file systems allow 255 bytes a name; room is
#: left for a "_NN" to make it unique and an extension).
_MAX_STEM = 200
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(text: str, fallback: str) -> str:
    """A file name stem made from ``text``, which may come from a file's content.

    Only letters, digits, ".", "_" and "-" are kept (anything else becomes "_"), leading
    dots are removed (no hidden files, never "." or ".."), and a stem longer than
    _MAX_STEM characters is cut, with a digest of the whole text appended so that
    different long texts stay different. An empty result gives ``fallback`` (made safe
    the same way). No DICOM value can thus name a path outside the target folder.
    """
    stem = _UNSAFE.sub("_", text).lstrip(".")
    if len(stem) > _MAX_STEM:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        stem = f"{stem[: _MAX_STEM - 17]}-{digest}"
    if not stem:
        return safe_name(fallback, "image") if fallback else "image"
    return stem


def source_names(images: Sequence[DicomImage]) -> list[str]:
    """Output file names for a series: the source's file names, made unique.

    A source without a file name (in memory) is named after its SOP Instance UID, made
    safe by :func:`safe_name` (a DICOM value never steers a path), or after its index.
    A file's own stem is kept: it names a file already, and cannot hold a separator.
    """
    names: list[str] = []
    seen: set[str] = set()
    for i, im in enumerate(images):
        if im.info.path:
            stem = Path(im.info.path).stem
        else:
            stem = safe_name(im.info.sop_instance_uid, f"{i}")
        name = f"{stem}.dcm"
        n = 1
        while name in seen:
            n += 1
            name = f"{stem}_{n}.dcm"
        seen.add(name)
        names.append(name)
    return names


def write(
    derived: Any,
    path: str | os.PathLike[str],
    *,
    transfer_syntax: TransferSyntax | str = "explicit-little",
    preview: bool = False,
    overwrite: bool = True,
) -> list[Path]:
    """Write a derived image or series as DICOM, each file atomically.

    Parameters
    ----------
    derived : Derived
        The result of :func:`medeq.enhance`.
    path : path
        For one image: the output file (or a folder, existing or ending in "/", to put
        it in, named after the source). For a series: the folder; each file is named
        after its source.
    transfer_syntax : {"explicit-little", "rle", "jpeg-ls", "jpeg2000"} or a UID
        Explicit VR Little Endian (default) or a lossless compressed syntax.
    preview : bool
        Also write an 8-bit JPEG beside each DICOM file (same name, ``.jpg``; see
        :func:`sidecar`), rendered through the written window.
    overwrite : bool
        Replace existing files (default); with False an existing output is an error.

    Returns
    -------
    list of Path
        The DICOM files written, in slice order.

    Raises
    ------
    OutputError
        When a file cannot be written, exists (``overwrite=False``), or would replace a
        source file.
    ParameterError
        For an unknown transfer syntax.
    """
    ts = TransferSyntax.parse(transfer_syntax)
    target = Path(path)
    sources: list[DicomImage] = derived.sources
    folder = target.is_dir() or str(path).endswith(("/", os.sep))
    if len(sources) == 1 and not folder:
        files = [target]
    else:
        files = [target / name for name in source_names(sources)]
        # A name never leaves its folder (safe_name); checked again, as the last word.
        folder_path = os.path.abspath(target)
        for f in files:
            if os.path.dirname(os.path.abspath(f)) != folder_path:
                raise OutputError(f"{f}: an output name must stay inside {target}")
    inputs = {Path(s.info.path).resolve() for s in sources if s.info.path}
    for f in files:
        if f.resolve() in inputs:
            raise OutputError(f"{f}: refusing to write over a source file")
    window = derived.window() if preview else None
    for index, f in enumerate(files):
        write_image(
            derived.headers[index],
            derived.image_pixels(index),
            f,
            transfer_syntax=ts,
            overwrite=overwrite,
            preview_window=window,
        )
    return files


def sidecar(path: Path, extension: str) -> Path:
    """The path of a file that sits beside a DICOM file (``x.dcm`` -> ``x.jpg``).

    DICOM files are often named without an extension or after a UID ("1.2.840..."), so
    only a DICOM extension is replaced; other names get the extension appended.
    """
    if path.suffix.lower() in (".dcm", ".dicom", ".ima"):
        return path.with_suffix(extension)
    return path.with_name(path.name + extension)


def write_image(
    header: Dataset,
    pixels: NDArray[Any],
    path: Path,
    *,
    transfer_syntax: TransferSyntax = TransferSyntax.EXPLICIT_LITTLE,
    overwrite: bool = True,
    preview_window: tuple[float, float] | None = None,
) -> list[Path]:
    """Write one derived image (and, given its window, its JPEG preview) atomically.

    Returns the files written: the DICOM file, then the preview if any.
    """
    return encode_image(
        header,
        pixels,
        path,
        transfer_syntax=transfer_syntax,
        overwrite=overwrite,
        preview_window=preview_window,
    )()


def encode_image(
    header: Dataset,
    pixels: NDArray[Any],
    path: Path,
    *,
    transfer_syntax: TransferSyntax = TransferSyntax.EXPLICIT_LITTLE,
    overwrite: bool = True,
    preview_window: tuple[float, float] | None = None,
) -> Callable[[], list[Path]]:
    """:func:`write_image` in two steps: encode the DICOM file now, write it later.

    Returns the second step, which writes the file and the preview (if any) and returns
    their paths. That step spends its time where Python lets other threads run (writing
    files, the preview's table lookup and JPEG encoding): a conversion in one process
    runs it on a thread while it prepares the next image.
    """
    ds = with_pixels(header, pixels, transfer_syntax)
    data = _encoded(ds, path)

    def finish() -> list[Path]:
        _write_bytes(path, data, overwrite)
        written = [path]
        if preview_window is not None:
            from .preview import save_preview

            jpeg = sidecar(path, ".jpg")
            save_preview(pixels, preview_window, jpeg, overwrite=overwrite)
            written.append(jpeg)
        return written

    return finish
