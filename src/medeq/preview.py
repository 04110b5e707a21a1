"""JPEG previews and the comparison figure (original and equalized, histograms and CDFs).

A preview of a derived object goes through the window written into its header with the
LINEAR function of PS3.3 C.11.2.1.2.1, so it shows what a viewer shows when it opens the
written DICOM. A preview of a source image goes through the source's own VOI (see
:func:`medeq.normalize`).
"""

from __future__ import annotations

import errno
import functools
import io
import math
import os
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
from numpy.typing import NDArray

from . import _atomic, core
from .enhance import Derived
from .errors import ParameterError
from .normalize import Normalized, normalize

__all__ = ["plot_comparison", "preview", "render", "save_preview"]

Frame = int | str | None


def window_to_8bit(values: NDArray[Any], center: float, width: float) -> NDArray[np.uint8]:
    """The LINEAR VOI function (PS3.3 C.11.2.1.2.1) into 0..255, rounded."""
    if values.dtype in (np.uint8, np.uint16) and values.size > 1 << 16:
        # One evaluation per possible value, then a table lookup per pixel.
        table = _window_table(float(center), float(width), 8 * values.dtype.itemsize)
        mapped: NDArray[np.uint8] = np.take(table, values)  # twice as fast as table[values]
        return mapped
    x = values.astype(np.float64)
    if width <= 1:
        return np.where(x <= center - 0.5, 0, 255).astype(np.uint8)
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.rint(np.clip(y, 0.0, 255.0)).astype(np.uint8)


@functools.lru_cache(maxsize=16)
def _window_table(center: float, width: float, bits: int) -> NDArray[np.uint8]:
    """:func:`window_to_8bit` of every unsigned ``bits``-bit value, kept for the next call.

    The slices of a series share their window: the 65536 evaluations (0.6 ms) are made
    once, not once a slice.
    """
    table = window_to_8bit(np.arange(1 << bits), center, width)
    table.flags.writeable = False
    return table


def _scaled_8bit(norm: Normalized) -> NDArray[np.uint8]:
    lo, hi = norm.value_range
    if not hi > lo:  # a Normalized made by hand: normalize() always gives lo < hi
        return np.where(norm.array > lo, 255, 0).astype(np.uint8)
    y = (norm.array.astype(np.float64) - lo) / (hi - lo) * 255.0
    return np.rint(np.clip(y, 0.0, 255.0)).astype(np.uint8)


def render(image: Any) -> NDArray[np.uint8]:
    """8-bit frames ``(frames, rows, columns)`` as a viewer would show them.

    Parameters
    ----------
    image : Derived, DicomImage, Series or Normalized
        Derived objects use the window written to their headers; source images their
        normalised VOI range, in presentation sense.
    """
    if isinstance(image, Derived):
        center, width = image.window()
        return window_to_8bit(image.pixels, center, width)
    if isinstance(image, Normalized):
        return _scaled_8bit(image)
    return _scaled_8bit(normalize(image))


def _pick(frames: NDArray[np.uint8], frame: Frame) -> NDArray[np.uint8]:
    count = frames.shape[0]
    if frame is None:
        middle: NDArray[np.uint8] = frames[count // 2]
        return middle
    if frame == "sheet":
        return _contact_sheet(frames)
    if isinstance(frame, (int, np.integer)) and not isinstance(frame, bool):
        if not -count <= frame < count:
            raise ParameterError(f"frame {frame} is out of range: the image has {count} frame(s)")
        chosen: NDArray[np.uint8] = frames[int(frame)]
        return chosen
    raise ParameterError(f"frame must be None, a frame index or 'sheet', got {frame!r}")


def _contact_sheet(frames: NDArray[np.uint8], most: int = 16) -> NDArray[np.uint8]:
    count = frames.shape[0]
    chosen = np.unique(np.linspace(0, count - 1, min(count, most)).round().astype(int))
    cols = math.ceil(math.sqrt(chosen.size))
    rows = math.ceil(chosen.size / cols)
    h, w = frames.shape[1:]
    sheet = np.zeros((rows * h, cols * w), dtype=np.uint8)
    for n, index in enumerate(chosen):
        r, c = divmod(n, cols)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = frames[index]
    return sheet


def preview(
    image: Any,
    path: str | os.PathLike[str],
    *,
    frame: Frame = None,
    size: int | None = None,
    quality: int = 95,
    overwrite: bool = True,
) -> Path:
    """Write an 8-bit JPEG preview, atomically.

    Parameters
    ----------
    image : Derived, DicomImage or Series
        What to show; see :func:`render`.
    path : path
        The JPEG file.
    frame : int, "sheet" or None
        A frame (slice) index, ``"sheet"`` for a contact sheet of up to 16 frames, or None
        for the middle frame.
    size : int, optional
        Longest side in pixels; larger pictures are scaled down.
    quality : int
        JPEG quality, 1 to 95.

    Returns
    -------
    Path
    """
    if not isinstance(quality, int) or not 1 <= quality <= 95:
        raise ParameterError(f"quality must be a whole number from 1 to 95, got {quality!r}")
    if size is not None and (not isinstance(size, int) or size < 16):
        raise ParameterError(f"size must be a whole number >= 16 or None, got {size!r}")
    picture = _pick(render(image), frame)
    return _save_jpeg(picture, Path(path), size, quality, overwrite)


class _JpegFile:
    """The file a JPEG is written to, named so that Pillow knows the format.

    Given ``format="JPEG"``, Pillow first imports its five common image plugins (BMP's
    pulls in its colour tables: some 30 ms in every new process); given a file name it
    imports the one plugin for the extension. The file itself is the real one: Pillow
    then encodes straight into its descriptor with the GIL released (into a Python
    file-like object it holds the GIL throughout), so a preview can be encoded on a
    thread while the conversion goes on.
    """

    name = "preview.jpg"

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    def fileno(self) -> int:
        return self._file.fileno()

    def write(self, data: bytes) -> int:
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()


def _save_jpeg(
    picture: NDArray[np.uint8], path: Path, size: int | None, quality: int, overwrite: bool
) -> Path:
    from PIL import Image

    img = Image.fromarray(picture, mode="L")
    if size is not None and max(img.size) > size:
        scale = size / max(img.size)
        img = img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))),
            Image.Resampling.LANCZOS,
        )

    def write(f: BinaryIO) -> None:
        # The wrapper has what Pillow uses of a file (its name, descriptor, write, flush).
        img.save(cast(BinaryIO, _JpegFile(f)), quality=quality)
        # Pillow does not check that its last write to the descriptor wrote everything
        # (a full disk, a file size limit): a JPEG ends with its EOI marker.
        if _last_two_bytes(f.fileno()) != b"\xff\xd9":
            raise OSError(errno.EIO, "the JPEG was written only in part")

    _atomic.atomic_write(path, write, overwrite=overwrite)
    return path


def _last_two_bytes(fd: int) -> bytes:
    """The last two bytes of the file open (for reading too) as ``fd``."""
    size = os.fstat(fd).st_size
    if size < 2:
        return b""
    if hasattr(os, "pread"):
        return os.pread(fd, 2, size - 2)
    os.lseek(fd, size - 2, os.SEEK_SET)  # Windows: no pread
    try:
        return os.read(fd, 2)
    finally:
        os.lseek(fd, 0, os.SEEK_END)


def _require_matplotlib() -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ParameterError(
            "plot_comparison needs matplotlib: install it with pip install 'medeq[plot]'"
        ) from None
    return Figure, FigureCanvasAgg


def plot_comparison(
    original: Any,
    derived: Derived,
    path: str | os.PathLike[str],
    *,
    frame: Frame = None,
    dpi: int = 100,
    overwrite: bool = True,
) -> Path:
    """The classic figure as PNG: original and equalized, with histograms and CDFs.

    Top row: the original (through its VOI, presentation sense) and the equalized image
    (through its written window). Bottom row: the normalised histogram of each (bars) and
    its cumulative distribution (line), over all (masked) frames.

    Parameters
    ----------
    original : DicomImage or Series
        The source of ``derived``.
    derived : Derived
        The result of :func:`medeq.enhance`.
    path : path
        The PNG file.
    frame : int, "sheet" or None
        Which frame to show; see :func:`preview`.

    Raises
    ------
    ParameterError
        Without matplotlib (``pip install 'medeq[plot]'``).
    """
    figure_cls, canvas_cls = _require_matplotlib()
    sources = list(getattr(original, "images", [original]))
    same = [id(s) for s in sources] == [id(s) for s in derived.sources]
    norm = derived.normalized if same else normalize(original)
    before_img = _pick(_scaled_8bit(norm), frame)
    after_img = _pick(render(derived), frame)

    lo, hi = norm.value_range
    nb = int(min(norm.bins, 256))
    counts_b, edges_b = core.histogram(norm.array, nb, value_range=(lo, hi), mask=derived.mask)
    top = derived.levels - 1
    counts_a, edges_a = core.histogram(
        derived.pixels, int(min(derived.levels, 256)), value_range=(0, top), mask=derived.mask
    )

    fig = figure_cls(figsize=(11, 8.5), dpi=dpi)
    canvas_cls(fig)
    axes = fig.subplots(2, 2, gridspec_kw={"height_ratios": [3, 2]})
    name = derived.sources[0].name
    fig.suptitle(f"{Path(name).name}: {derived.parameters['method']} equalization", fontsize=12)
    for ax, img, title in (
        (axes[0, 0], before_img, f"original ({norm.voi})"),
        (axes[0, 1], after_img, f"equalized ({derived.levels} levels)"),
    ):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    units = f" ({norm.units})" if norm.units else ""
    for ax, counts, edges, label, q in (
        (axes[1, 0], counts_b, edges_b, f"value{units}", derived.before),
        (axes[1, 1], counts_a, edges_a, "output level", derived.after),
    ):
        total = max(int(counts.sum()), 1)
        widths = np.diff(edges)
        ax.bar(edges[:-1], counts / total, width=widths, align="edge", color="0.55")
        ax.set_xlabel(label, fontsize=9)
        ax.set_ylabel("fraction of pixels", fontsize=9)
        ax.set_xlim(edges[0], edges[-1])
        cdf_ax = ax.twinx()
        cdf_ax.plot(edges[1:], np.cumsum(counts) / total, color="tab:red", linewidth=1.5)
        cdf_ax.set_ylim(0, 1.02)
        cdf_ax.set_ylabel("CDF", color="tab:red", fontsize=9)
        ax.set_title(
            f"entropy {q.entropy:.2f} bits, RMS contrast {q.rms_contrast:.3f}, "
            f"KS from flat {q.uniformity:.3f}",
            fontsize=8,
        )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    out = Path(path)
    _atomic.atomic_write(out, lambda f: f.write(buffer.getvalue()), overwrite=overwrite)
    return out


def save_preview(
    pixels: NDArray[Any],
    window: tuple[float, float],
    path: Path,
    *,
    frame: Frame = None,
    size: int | None = None,
    quality: int = 95,
    overwrite: bool = True,
) -> Path:
    """Write the JPEG of derived ``(frames, rows, columns)`` pixels through their window."""
    center, width = window
    return _save_jpeg(
        _pick(window_to_8bit(pixels, center, width), frame), path, size, quality, overwrite
    )
