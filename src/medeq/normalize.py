"""From stored values to the array the core equalizes (PS3.3 C.11, C.7.6.3).

The steps, in the order a viewer applies them:

1. Modality LUT: (0028,1053) *Rescale Slope* and (0028,1052) *Rescale Intercept* (per
   frame in the functional groups of enhanced multi-frame objects), or (0028,3000)
   *Modality LUT Sequence*. The result is in modality units (HU for CT).
2. VOI: a window (LINEAR, LINEAR_EXACT or SIGMOID), a (0028,3010) *VOI LUT Sequence*, a
   named CT preset, an explicit (center, width), or none (the data's full range).
3. MONOCHROME1 is inverted, so the array is in presentation sense: bright means dense.

A LINEAR window is not applied by squashing values into output levels: the array keeps
its modality values (every distinct level stays distinct) and the window becomes the
``value_range`` the core's bins cover, so values outside it fall into the end bins, just as
the window function clips them. Equalization depends only on the order of values, so this
equals equalizing the windowed image, without losing levels to the window's rounding.

Every header value read here is checked before use (design for files never seen): a LUT
item against itself and the values it maps, rescale values and windows for being finite
and within :data:`MAX_MAGNITUDE`. What cannot be used raises an
:class:`~medeq.errors.UnsupportedImageError` or
:class:`~medeq.errors.CorruptPixelDataError` naming the tag and the value; what can be
passed over (an empty LUT sequence or item, an unusable file window under
``window="auto"``, a file window that misses the data) is, with a note
(:mod:`medeq._notes`).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

from ._notes import collecting, note
from .errors import CorruptPixelDataError, ParameterError, UnsupportedImageError
from .reader import DicomImage, Window, rescale_of_frame

__all__ = [
    "MAX_MAGNITUDE",
    "Normalized",
    "Preset",
    "WindowSpec",
    "modality_values",
    "normalize",
]

logger = logging.getLogger(__name__)


class Preset(str, enum.Enum):
    """Named CT windows (center/width in HU)."""

    BRAIN = "brain"
    SUBDURAL = "subdural"
    STROKE = "stroke"
    LUNG = "lung"
    MEDIASTINUM = "mediastinum"
    ABDOMEN = "abdomen"
    LIVER = "liver"
    BONE = "bone"

    @property
    def window(self) -> Window:
        """The preset as a LINEAR window."""
        center, width = _PRESETS[self]
        return Window(center, width, "LINEAR", f"{self.value} preset")


_PRESETS: dict[Preset, tuple[float, float]] = {
    Preset.BRAIN: (40, 80),
    Preset.SUBDURAL: (75, 215),
    Preset.STROKE: (40, 40),
    Preset.LUNG: (-600, 1500),
    Preset.MEDIASTINUM: (50, 350),
    Preset.ABDOMEN: (40, 400),
    Preset.LIVER: (60, 160),
    Preset.BONE: (400, 1800),
}

#: What ``window=`` accepts: "auto", "none", an index, a preset, (center, width), or
#: the strings "INDEX" and "CENTER,WIDTH".
WindowSpec = str | int | Preset | tuple[float, float] | Sequence[float]


@dataclass(frozen=True)
class Normalized:
    """The array handed to the core, with the value range and level count that fit it.

    Attributes
    ----------
    array : (frames, rows, columns) ndarray
        Modality values (or VOI LUT output) in presentation sense. Integer when the
        values are whole numbers (int16, uint16 or int32), else float32.
    value_range : (float, float)
        The span the equalization bins should cover (the window, or the data's range).
    levels : int
        Distinct source levels within ``value_range``: the natural number of bins.
    voi : str
        What VOI was applied, for humans and the derivation description.
    window : Window or None
        The window applied, if any.
    inverted : bool
        True when MONOCHROME1 data was inverted.
    units : str
        (0028,1054) *Rescale Type* or "HU" for CT; "" when unknown or after a VOI LUT.
    """

    array: NDArray[Any]
    value_range: tuple[float, float]
    levels: int
    voi: str
    window: Window | None
    inverted: bool
    units: str

    @property
    def bins(self) -> int:
        """One bin per source level, at most 65536."""
        return int(min(max(self.levels, 1), 65536))


# --------------------------------------------------------------------------- limits

#: The largest magnitude of a modality value or window end that medeq computes with,
#: 2**52 (4.5e15). Integers up to it are exact in float64 (the core bins in float64) and
#: stay one apart (``lo + 1 > lo``), and mirroring MONOCHROME1 values (``lo + hi - v``)
#: stays within int64. Real images are many orders of magnitude below it; beyond it lie
#: only corrupt or hostile headers (a Rescale Intercept of 1e308).
MAX_MAGNITUDE = float(2**52)

#: A cap on :attr:`Normalized.levels` for float values. The count only chooses the
#: default number of bins, which the core caps at 65536, so any larger count gives the
#: same bins; uncapped, a subnormal (0028,1053) Rescale Slope (1e-320) would make it
#: astronomically large or infinite.
_MAX_FLOAT_LEVELS = float(2**52)

_MODALITY_LUT = "(0028,3000) Modality LUT Sequence"
_VOI_LUT = "(0028,3010) VOI LUT Sequence"
_DESCRIPTOR = "(0028,3002) LUT Descriptor"
_DATA = "(0028,3006) LUT Data"
_SLOPE = "(0028,1053) Rescale Slope"
_INTERCEPT = "(0028,1052) Rescale Intercept"


def _who(images: Sequence[DicomImage]) -> str:
    """How a note names what it is about: the file, or (not starting with any file's
    name, so that a batch gives it to every slice) the series."""
    if len(images) == 1:
        return images[0].name
    uid = images[0].info.series_instance_uid
    if uid:
        return f"the {len(images)} images of series {uid}"
    return f"the {len(images)} images from {images[0].name}"


# --------------------------------------------------------------------------- LUT items


@dataclass(frozen=True)
class _Lut:
    """A validated LUT: ``table[k]`` is the output of input value ``first + k``."""

    first: int
    bits: int
    table: NDArray[Any]

    def apply(self, arr: NDArray[Any]) -> NDArray[Any]:
        """Map values through the table; values beyond its ends take the end entries."""
        index = np.clip(arr.astype(np.int64) - self.first, 0, self.table.size - 1)
        mapped: NDArray[Any] = self.table[index]
        return mapped


def _lut_items(image: DicomImage, keyword: str, label: str) -> list[tuple[int, Dataset]]:
    """The items of a LUT sequence that are not empty, with their numbers (from 1).

    An empty sequence or an empty item carries no LUT: it is ignored, with a note, and
    the image is used as if it were absent.
    """
    value = image.dataset.get(keyword)
    if value is None:
        return []
    if not isinstance(value, DicomSequence):
        raise UnsupportedImageError(
            f"{image.name}: {label} is not a sequence of items (VR "
            f"{image.dataset[keyword].VR}); medeq reads the LUT from its first item"
        )
    items = [(n, item) for n, item in enumerate(value, 1) if len(item)]
    if not items:
        state = "is empty" if not len(value) else "has only empty items"
        note(f"{image.name}: {label} {state}: ignored, the image is used as if it had none")
    elif len(items) < len(value):
        empty = ", ".join(str(n) for n, item in enumerate(value, 1) if not len(item))
        note(f"{image.name}: {label} item(s) {empty} empty: ignored")
    return items


def _whole_numbers(value: Any, little_endian: bool) -> NDArray[np.int64] | None:
    """An element's value as whole numbers (16-bit words for bytes), or None."""
    if isinstance(value, (bytes, bytearray)):
        if len(value) % 2:
            return None
        return np.frombuffer(value, "<u2" if little_endian else ">u2").astype(np.int64)
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    if any(isinstance(v, (bool, np.bool_)) for v in values):
        return None
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError):
        return None
    if arr.ndim != 1:
        return None
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            return None
        if arr.size and float(np.abs(arr).max()) > 2.0**62:
            return None
    elif arr.dtype.kind not in "iu":
        return None  # text, or integers too large for int64 (object)
    return arr.astype(np.int64)


def _lut_data(element: Any, little_endian: bool, where: str) -> NDArray[np.int64]:
    """(0028,3006) LUT Data as whole numbers: US/SS values or OW/OB 16-bit words."""
    value = element.value
    if value is None or (hasattr(value, "__len__") and len(value) == 0):
        raise CorruptPixelDataError(f"{where}: {_DATA} is empty")
    if isinstance(value, (bytes, bytearray)) and len(value) % 2:
        raise CorruptPixelDataError(
            f"{where}: {_DATA} ({element.VR}) has an odd length of {len(value)} bytes; "
            "it holds 16-bit words"
        )
    numbers = _whole_numbers(value, little_endian)
    if numbers is None:
        shown = repr(value)[:40]
        raise CorruptPixelDataError(
            f"{where}: {_DATA} ({element.VR}) {shown} is not a list of whole numbers"
        )
    return numbers


def _parse_lut(
    item: Dataset,
    where: str,
    *,
    signed: bool,
    little_endian: bool,
    domain: tuple[float, float],
    what: str,
) -> _Lut:
    """Check a LUT item against itself and the values it maps; make its table.

    ``where`` names the item for messages, ``domain`` is the range of values the LUT
    can be given (``what`` says which), ``signed`` whether they can be negative (then
    the descriptor's second value is read as SS).

    Raises
    ------
    UnsupportedImageError
        For a missing or malformed (0028,3002) LUT Descriptor, bits other than 8 to 16,
        a first value mapped outside ``domain``, or LUT Data values the bits cannot hold.
    CorruptPixelDataError
        For (0028,3006) LUT Data that is missing, empty, of odd byte length, not whole
        numbers, or shorter than the descriptor says.
    """
    if "LUTDescriptor" not in item:
        raise UnsupportedImageError(f"{where} has no {_DESCRIPTOR}")
    raw = item["LUTDescriptor"].value
    numbers = None if raw is None else _whole_numbers(raw, little_endian)
    if numbers is None or numbers.size != 3:
        raise UnsupportedImageError(
            f"{where}: {_DESCRIPTOR} {str(raw)[:40]} must be 3 whole numbers (entries, "
            "first value mapped, bits)"
        )
    entries, first, bits = (int(v) for v in numbers)
    if not 0 <= entries <= 65535:
        raise UnsupportedImageError(
            f"{where}: {_DESCRIPTOR} entries {entries} must be 0 (65536) to 65535"
        )
    entries = entries or 65536
    if signed and first >= 32768:
        first -= 65536  # the descriptor's second value is SS for signed input
    if not 8 <= bits <= 16:
        raise UnsupportedImageError(f"{where}: {_DESCRIPTOR} bits {bits} must be 8 to 16")
    lo, hi = domain
    if not lo <= first <= hi:
        raise UnsupportedImageError(
            f"{where}: {_DESCRIPTOR} first value mapped {first} lies outside the range "
            f"of the {what}, {lo:g} to {hi:g}"
        )
    if "LUTData" not in item:
        raise CorruptPixelDataError(f"{where} has no {_DATA}")
    data = _lut_data(item["LUTData"], little_endian, where)
    if data.size < entries:
        raise CorruptPixelDataError(
            f"{where}: {_DATA} has {data.size} values, fewer than the {entries} entries "
            f"of its {_DESCRIPTOR}"
        )
    if data.size > entries:
        note(
            f"{where}: {_DATA} has {data.size} values, {_DESCRIPTOR} says {entries}: "
            f"the first {entries} are used"
        )
        data = data[:entries]
    top = (1 << bits) - 1
    vmin, vmax = int(data.min()), int(data.max())
    if vmin < 0 or vmax > top:
        raise UnsupportedImageError(
            f"{where}: {_DATA} values {vmin} to {vmax} do not fit the {bits} bits of its "
            f"{_DESCRIPTOR} (0 to {top})"
        )
    return _Lut(first, bits, data.astype(np.uint16 if vmax > 255 else np.uint8))


def _little_endian(image: DicomImage) -> bool:
    return image.info.transfer_syntax != "1.2.840.10008.1.2.2"


def _stored_range(image: DicomImage) -> tuple[int, int]:
    """The values (0028,0101) Bits Stored and (0028,0103) Pixel Representation allow."""
    bits = image.info.bits_stored
    if image.info.signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _modality_lut(image: DicomImage) -> _Lut | None:
    """The image's Modality LUT, checked; None when it has none (or only empty items)."""
    if not image.info.modality_lut:
        return None
    items = _lut_items(image, "ModalityLUTSequence", _MODALITY_LUT)
    if not items:
        return None
    number, item = items[0]  # the module allows one item
    return _parse_lut(
        item,
        f"{image.name}: {_MODALITY_LUT} item {number}",
        signed=image.info.signed,
        little_endian=_little_endian(image),
        domain=_stored_range(image),
        what="stored values",
    )


def _has_modality_lut(image: DicomImage) -> bool:
    return image.info.modality_lut and bool(_lut_items(image, "ModalityLUTSequence", _MODALITY_LUT))


def _voi_lut_items(image: DicomImage) -> list[tuple[int, Dataset]]:
    if not image.info.voi_lut:
        return []
    return _lut_items(image, "VOILUTSequence", _VOI_LUT)


# --------------------------------------------------------------------------- modality LUT


def _smallest_int(lo: float, hi: float) -> np.dtype[Any]:
    for dt in (np.int16, np.uint16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def _is_whole(x: float) -> bool:
    return math.isfinite(x) and x == round(x)


def needs_header(image: DicomImage) -> bool:
    """Whether normalising ``image`` reads its header beyond the info record.

    A Modality LUT, a VOI LUT and per-frame rescale values are read from the header's
    sequences (an empty sequence too: only the header says it is empty); everything
    else normalisation needs is in ``image.info``.
    """
    info = image.info
    return info.modality_lut or info.voi_lut or info.per_frame_rescale


def _rescales(image: DicomImage, frames: int) -> list[tuple[float, float]]:
    """(slope, intercept) of each frame, checked: finite, slope not zero."""
    info = image.info
    if info.per_frame_rescale:
        rescales = []
        for f in range(frames):
            try:
                rescales.append(rescale_of_frame(image.dataset, f)[:2])
            except (TypeError, ValueError) as exc:
                raise UnsupportedImageError(
                    f"{image.name}: frame {f + 1}: unreadable {_SLOPE} / {_INTERCEPT} in "
                    f"(0028,9145) Pixel Value Transformation Sequence: {exc}"
                ) from None
    else:  # every frame has frame 1's, which the info holds
        rescales = [(info.rescale_slope, info.rescale_intercept)] * frames
    for f, (s, i) in enumerate(rescales):
        if s == 0 or not (math.isfinite(s) and math.isfinite(i)):
            frame = f" (frame {f + 1})" if info.per_frame_rescale else ""
            raise UnsupportedImageError(
                f"{image.name}: unusable {_SLOPE} {s:g} / {_INTERCEPT} {i:g}{frame}: "
                "they must be finite and the slope not zero"
            )
    return rescales


def _check_magnitude(
    image: DicomImage, rescales: list[tuple[float, float]], smin: int, smax: int
) -> list[float]:
    """The modality values of the stored extremes, frame by frame, each checked to lie
    within :data:`MAX_MAGNITUDE`."""
    ends = []
    for f, (s, i) in enumerate(rescales):
        a, b = smin * s + i, smax * s + i
        if not (abs(a) <= MAX_MAGNITUDE and abs(b) <= MAX_MAGNITUDE):
            frame = f" (frame {f + 1})" if image.info.per_frame_rescale else ""
            raise UnsupportedImageError(
                f"{image.name}: {_SLOPE} {s:g} and {_INTERCEPT} {i:g}{frame} map the stored "
                f"values {smin} to {smax} to {min(a, b):g} to {max(a, b):g}; medeq takes "
                f"modality values of magnitude up to {MAX_MAGNITUDE:g}"
            )
        ends += [a, b]
    return ends


def modality_values(image: DicomImage) -> NDArray[Any]:
    """Apply the Modality LUT: stored values to modality units (HU for CT).

    Uses (0028,3000) *Modality LUT Sequence* if present, else (0028,1053) *Rescale Slope*
    and (0028,1052) *Rescale Intercept*, read per frame from the functional groups of
    enhanced multi-frame objects. An empty Modality LUT Sequence (or empty item) is
    ignored, with a note.

    Parameters
    ----------
    image : DicomImage

    Returns
    -------
    values : (frames, rows, columns) ndarray
        int16, uint16 or int32 when every value is a whole number (integer slope and
        intercept, or a LUT), else float32.

    Raises
    ------
    UnsupportedImageError, CorruptPixelDataError
        For an inconsistent Modality LUT item, a slope or intercept that is not finite
        (or a zero slope), or modality values beyond :data:`MAX_MAGNITUDE`; the message
        names the tag and the value.
    """
    stored = image.stored
    lut = _modality_lut(image)
    if lut is not None:
        return lut.apply(stored)
    rescales = _rescales(image, stored.shape[0])
    if all(s == 1 and i == 0 for s, i in rescales):
        return stored
    smin, smax = int(stored.min()), int(stored.max())
    ends = _check_magnitude(image, rescales, smin, smax)
    if all(_is_whole(s) and _is_whole(i) for s, i in rescales):
        # Choose the output type from the data's actual range, so CT in HU stays int16.
        dtype = _smallest_int(min(ends), max(ends))
        out = np.empty(stored.shape, dtype)
        for f, (s, i) in enumerate(rescales):
            np.add(stored[f].astype(np.int64) * int(s), int(i), out=out[f], casting="unsafe")
        return out
    out32 = np.empty(stored.shape, np.float32)
    for f, (s, i) in enumerate(rescales):
        out32[f] = stored[f].astype(np.float64) * s + i
    return out32


def _modality_range(image: DicomImage) -> tuple[float, float]:
    """The range of modality values the stored range allows: what a VOI LUT is given."""
    lut = _modality_lut(image)
    if lut is not None:
        return 0.0, float((1 << lut.bits) - 1)
    smin, smax = _stored_range(image)
    ends = [e for s, i in _rescales(image, image.info.frames) for e in (smin * s + i, smax * s + i)]
    return min(ends), max(ends)


# --------------------------------------------------------------------------- VOI


def parse_window(window: WindowSpec) -> str | int | Preset | Window:
    """Turn any accepted ``window`` value into "auto", "none", an index, a Preset or Window."""
    if isinstance(window, Preset):
        return window
    if isinstance(window, (bool, np.bool_)):
        raise ParameterError(
            f"window must be a mode, preset, index or (center, width), got {window!r}"
        )
    if isinstance(window, (int, np.integer)):
        if window < 0:
            raise ParameterError(f"window index must be >= 0, got {window}")
        return int(window)
    if isinstance(window, str):
        text = window.strip().lower()
        if text in ("auto", "none"):
            return text
        if text.isdigit():
            return int(text)
        try:
            return Preset(text)
        except ValueError:
            pass
        match = re.fullmatch(
            r"\s*([-+]?[\d.]+(?:e[-+]?\d+)?)\s*[,/]\s*([-+]?[\d.]+(?:e[-+]?\d+)?)\s*", text
        )
        if match:
            return _explicit(float(match.group(1)), float(match.group(2)))
        presets = ", ".join(p.value for p in Preset)
        raise ParameterError(
            f"window must be 'auto', 'none', an index, a preset ({presets}) or "
            f"'CENTER,WIDTH', got {window!r}"
        )
    if isinstance(window, Sequence) and len(window) == 2:
        try:
            center, width = float(window[0]), float(window[1])
        except (TypeError, ValueError):
            pass
        else:
            return _explicit(center, width)
    raise ParameterError(
        f"window must be 'auto', 'none', an index, a preset name or (center, width), got {window!r}"
    )


def _explicit(center: float, width: float) -> Window:
    if not (math.isfinite(center) and math.isfinite(width)) or width < 1:
        raise ParameterError(
            f"window (center, width) must be finite with width >= 1, got ({center}, {width})"
        )
    window = Window(center, width, "LINEAR", "explicit")
    problem = _window_problem(window)
    if problem:
        raise ParameterError(f"window (center, width) = ({center:g}, {width:g}): {problem}")
    return window


def _window_bounds(w: Window, integer: bool) -> tuple[float, float]:
    """The value span a LINEAR/LINEAR_EXACT window maps between its two clipped ends.

    For integer data the ends are the last level that clips to the minimum and the first
    that clips to the maximum (PS3.3 C.11.2.1.2), so each end bin collects what the window
    clips. The window must have passed :func:`_window_problem`.
    """
    if w.function == "LINEAR_EXACT":
        lo, hi = w.center - w.width / 2, w.center + w.width / 2
    else:
        lo = w.center - 0.5 - (w.width - 1) / 2
        hi = w.center - 0.5 + (w.width - 1) / 2
    if integer:
        return float(math.floor(lo)), float(math.floor(hi) + 1)
    return lo, hi


def _window_problem(w: Window) -> str | None:
    """Why a window's center and width cannot be used, or None when they can."""
    if not (math.isfinite(w.center) and math.isfinite(w.width)):
        return "not finite"
    if not w.width >= 1:
        return "width must be >= 1"
    # Ends beyond MAX_MAGNITUDE overflow (inf) or lose the window to rounding (a center
    # of 1e308 gives both ends the same value).
    lo, hi = _window_bounds(w, integer=False)
    if not (abs(lo) <= MAX_MAGNITUDE and abs(hi) <= MAX_MAGNITUDE):
        return f"its ends {lo:g} and {hi:g} lie beyond the +-{MAX_MAGNITUDE:g} medeq computes with"
    return None


def _window_text(w: Window) -> str:
    return f"(0028,1050) Window Center {w.center:g} / (0028,1051) Window Width {w.width:g}"


def _check_window(w: Window, name: str) -> None:
    if w.function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        raise UnsupportedImageError(
            f"{name}: unsupported (0028,1056) VOI LUT Function value {w.function!r}; "
            "medeq applies LINEAR, LINEAR_EXACT and SIGMOID"
        )
    if not (math.isfinite(w.width) and w.width >= 1):
        raise UnsupportedImageError(
            f"{name}: (0028,1051) Window Width {w.width:g} is invalid (must be >= 1)"
        )
    problem = _window_problem(w)
    if problem:
        raise UnsupportedImageError(f"{name}: {_window_text(w)} unusable: {problem}")


def _file_window(image: DicomImage, index: int) -> Window:
    windows = image.info.windows
    if index >= len(windows):
        raise ParameterError(
            f"window index {index} is out of range: {image.name} has {len(windows)} "
            "window(s) in (0028,1050) Window Center / (0028,1051) Window Width"
        )
    w = windows[index]
    _check_window(w, image.name)
    return w


def _auto_window(image: DicomImage) -> Window | None:
    """The file's first usable window, or None; the windows it skips are noted."""
    for k, w in enumerate(image.info.windows):
        problem = _window_problem(w)
        if problem is None:
            _check_window(w, image.name)
            return w
        note(f"{image.name}: window {k + 1}, {_window_text(w)}, skipped: {problem}")
    return None


def _float_levels(lo: float, hi: float, images: Sequence[DicomImage]) -> int:
    """Stored levels between lo and hi, for float modality values (capped, see
    :data:`_MAX_FLOAT_LEVELS`)."""
    slope = min(abs(im.info.rescale_slope) for im in images) or 1.0
    return math.floor(min((hi - lo) / slope, _MAX_FLOAT_LEVELS) + 1e-9) + 1


def _covers_none(lo: float, hi: float, data_lo: float, data_hi: float) -> bool:
    """Whether every value in [data_lo, data_hi] clips to one end of the window [lo, hi].

    ``lo`` is the last value the window maps to its minimum, ``hi`` the first (integer
    data) or last threshold (float data) beyond which it maps to its maximum: the window
    shows none of the data when all of it lies at or below ``lo``, or at or above ``hi``.
    """
    return data_hi <= lo or data_lo >= hi


def invert_values(arr: NDArray[Any], lo: float, hi: float) -> NDArray[Any]:
    """Mirror values about the middle of [lo, hi]: lo <-> hi, keeping the dtype when it fits."""
    if arr.dtype.kind == "f":
        return (lo + hi - arr.astype(np.float64)).astype(np.float32)
    vmin, vmax = int(arr.min()), int(arr.max())
    total = int(lo + hi)
    dtype = _smallest_int(total - vmax, total - vmin)
    return (total - arr.astype(np.int64)).astype(dtype)


def stack_frames(parts: list[NDArray[Any]]) -> NDArray[Any]:
    """Concatenate frame stacks along axis 0 in their common dtype."""
    if len(parts) == 1:
        return parts[0]
    dtype = np.result_type(*parts)
    return np.concatenate([p.astype(dtype, copy=False) for p in parts])


def _sigmoid(array: NDArray[Any], w: Window) -> NDArray[np.float32]:
    """The SIGMOID VOI function (PS3.3 C.11.2.1.3.1) into [0, 1]."""
    # Far from the center exp() overflows to inf, and 1 / (1 + inf) is the right limit, 0.
    with np.errstate(over="ignore"):
        z = (array.astype(np.float64) - w.center) / w.width
        return (1.0 / (1.0 + np.exp(-4.0 * z))).astype(np.float32)


def normalize(
    image: DicomImage | Any,
    *,
    window: WindowSpec = "auto",
) -> Normalized:
    """Modality LUT, VOI and MONOCHROME1 inversion: the array the core should equalize.

    Parameters
    ----------
    image : DicomImage or Series
        One image, or a series (its images are stacked along the first axis).
    window : str, int, Preset or (float, float)
        ``"auto"``: the file's first usable window, else its VOI LUT Sequence, else the
        full range; a window that covers none of the data's values gives way to the full
        range (with a note). ``"none"``: the data's full range. An int: that window of
        the file's (0028,1050)/(0028,1051) values (or VOI LUT item when the file has no
        windows). A :class:`Preset` or its name (CT only): brain, subdural, stroke, lung,
        mediastinum, abdomen, liver, bone. ``(center, width)`` or ``"C,W"``: an explicit
        LINEAR window in modality units.

    Returns
    -------
    Normalized
        For a series whose images have different windows, ``"auto"`` uses the smallest
        span that covers all of them.

    Raises
    ------
    ParameterError
        For a bad ``window`` (unknown name, index out of range, width < 1, a CT preset on
        an image that is not CT).
    UnsupportedImageError, CorruptPixelDataError
        When the pixels cannot be used (raised as the pixels are decoded), or a header
        value normalisation reads is unusable (a LUT item, rescale values or a window
        asked for by index); the message names the tag and the value.
    """
    images: list[DicomImage] = list(getattr(image, "images", [image]))
    if not images or not all(isinstance(im, DicomImage) for im in images):
        raise ParameterError(f"image must be a DicomImage or a Series, got {type(image).__name__}")
    plan = voi_plan(images, window)
    parts = [plan.values(im) for im in images]
    array = stack_frames(parts)
    integer = array.dtype.kind in "iu"
    if plan.sigmoid is not None:
        w = plan.sigmoid
        mlo, mhi = float(array.min()), float(array.max())
        levels = int(mhi - mlo) + 1 if integer else _float_levels(mlo, mhi, images)
        array = _sigmoid(array, w)
        function = f"window {w.center:g}/{w.width:g} SIGMOID"
        value = float(array.min())
        if value == float(array.max()):
            note(
                f"{_who(images)}: every pixel has the value {value:g} after the {function}: "
                "the output is constant"
            )
        span = Span(0.0, 1.0, levels, function, w)
    else:
        span = plan.span(images, integer, float(array.min()), float(array.max()))
    lo, hi = span.lo, span.hi

    inverted = False
    parts_inv = []
    start = 0
    for im, part in zip(images, parts, strict=True):
        n = part.shape[0]
        chunk = array[start : start + n]
        if im.info.photometric == "MONOCHROME1":
            chunk = invert_values(chunk, lo, hi)
            inverted = True
        parts_inv.append(chunk)
        start += n
    if inverted:
        array = stack_frames(parts_inv)
    return Normalized(
        array=array,
        value_range=(lo, hi),
        levels=max(span.levels, 1),
        voi=span.voi + (", MONOCHROME1 inverted" if inverted else ""),
        window=span.window,
        inverted=inverted,
        units=plan.units,
    )


@dataclass(frozen=True)
class Span:
    """The value range the equalization covers, and how it was chosen."""

    lo: float
    hi: float
    levels: int
    voi: str
    window: Window | None


@dataclass(frozen=True)
class VoiPlan:
    """What :func:`normalize` decides from the headers alone, before any pixel is seen.

    A conversion uses it to normalise a series slice by slice in worker processes: each
    worker computes :meth:`values` of its images, and :meth:`span` is decided from the
    minimum and maximum of all of them, exactly as :func:`normalize` decides it for the
    stacked volume.
    """

    #: The window chosen for each image (None: the data's range or a VOI LUT).
    chosen: tuple[Window | None, ...]
    #: Apply the images' VOI LUT Sequence item ``lut_index`` (counting non-empty items).
    use_lut: bool
    lut_index: int
    units: str
    #: The SIGMOID window, when that VOI function applies (its output is float).
    sigmoid: Window | None
    #: The windows are the files' own, chosen by ``window="auto"``: one that covers none
    #: of the data's values gives way to the data's full range.
    auto: bool = False
    #: The notes made while planning (a window skipped, an empty LUT item ignored), for
    #: whoever plans in one place and equalizes in another.
    notes: tuple[str, ...] = ()

    def values(self, image: DicomImage) -> NDArray[Any]:
        """Modality values of one image, through the VOI LUT when the plan uses one.

        Raises
        ------
        UnsupportedImageError, CorruptPixelDataError
            As :func:`modality_values`, and for an inconsistent VOI LUT item.
        """
        values = modality_values(image)
        if self.use_lut:
            items = _voi_lut_items(image)
            if self.lut_index >= len(items):
                raise UnsupportedImageError(
                    f"{image.name}: {_VOI_LUT} has {len(items)} item(s) that are not empty; "
                    f"item {self.lut_index + 1} is used for the series"
                )
            number, item = items[self.lut_index]
            lut = _parse_lut(
                item,
                f"{image.name}: {_VOI_LUT} item {number}",
                signed=values.dtype.kind == "i",
                little_endian=_little_endian(image),
                domain=_modality_range(image),
                what="modality values",
            )
            values = lut.apply(values)
        return values

    def span(
        self, images: Sequence[DicomImage], integer: bool, data_lo: float, data_hi: float
    ) -> Span:
        """The range to equalize over, given the values' type and their min and max.

        Notes a constant image, and a window of the files' own (``window="auto"``) that
        covers none of the data, which gives way to the data's full range.
        """
        who = _who(images)
        if data_lo == data_hi:
            note(f"{who}: every pixel has the value {data_lo:.15g}: the output is constant")
        if self.use_lut:
            lo, hi = data_lo, data_hi
            span = Span(
                lo, hi, int(hi - lo) + 1, f"VOI LUT Sequence item {self.lut_index + 1}", None
            )
        elif all(w is None for w in self.chosen):
            span = _full_span(images, integer, data_lo, data_hi, "full range")
        else:
            windows = [w for w in self.chosen if w is not None]
            bounds = [_window_bounds(w, integer) for w in windows]
            lo, hi = min(b[0] for b in bounds), max(b[1] for b in bounds)
            if len({(w.center, w.width, w.function) for w in windows}) == 1:
                used = windows[0]
                voi = f"window {used.center:g}/{used.width:g} {used.function}"
            else:
                c, width = (lo + hi) / 2, hi - lo
                used = Window(c, width, "LINEAR", "union of the series' windows")
                voi = f"window {c:g}/{width:g} (union of {len(bounds)} windows)"
            if _covers_none(lo, hi, data_lo, data_hi):
                shown = f"{voi} ({lo:.15g} to {hi:.15g})"
                if self.auto:
                    note(
                        f"{who}: the file's {shown} covers none of the data's values "
                        f"({data_lo:.15g} to {data_hi:.15g}): equalized over the data's full range "
                        "instead"
                    )
                    return _full_span(
                        images, integer, data_lo, data_hi, f"full range ({voi} misses the data)"
                    )
                note(
                    f"{who}: the {shown} covers none of the data's values ({data_lo:.15g} to "
                    f"{data_hi:.15g}): every pixel falls in one end bin"
                )
            levels = int(hi - lo) + 1 if integer else _float_levels(lo, hi, images)
            span = Span(lo, hi, levels, voi, used)
        if span.hi <= span.lo:  # a constant image: give the core a valid, non-empty span
            span = Span(span.lo, span.lo + 1, span.levels, span.voi, span.window)
        return span


def _full_span(images: Sequence[DicomImage], integer: bool, lo: float, hi: float, voi: str) -> Span:
    levels = int(hi - lo) + 1 if integer else _float_levels(lo, hi, images)
    span = Span(lo, hi, levels, voi, None)
    if span.hi <= span.lo:
        span = Span(lo, lo + 1, levels, voi, None)
    return span


def voi_plan(images: Sequence[DicomImage], window: WindowSpec = "auto") -> VoiPlan:
    """The VOI decisions :func:`normalize` makes from the headers of ``images``.

    Raises
    ------
    ParameterError
        As :func:`normalize`.
    UnsupportedImageError
        For a window asked for by index that is unusable, or an unsupported (0028,1056)
        VOI LUT Function.
    """
    with collecting() as notes:
        plan = _voi_plan(images, window)
    return dataclasses.replace(plan, notes=tuple(notes))


def _voi_plan(images: Sequence[DicomImage], window: WindowSpec) -> VoiPlan:
    spec = parse_window(window)
    first = images[0]
    units = _units(first)
    if isinstance(spec, Preset):
        for im in images:
            if im.info.modality != "CT" and im.info.rescale_type.upper() != "HU":
                raise ParameterError(
                    f"window preset {spec.value!r} is in HU, but {im.name} is "
                    f"{im.info.modality or 'not CT'} without (0028,1054) Rescale Type HU"
                )
    chosen: list[Window | None]
    use_lut = False
    if spec == "none":
        chosen = [None] * len(images)
    elif isinstance(spec, Preset):
        chosen = [spec.window] * len(images)
    elif isinstance(spec, Window):
        chosen = [spec] * len(images)
    elif isinstance(spec, int):
        if all(im.info.windows for im in images):
            chosen = [_file_window(im, spec) for im in images]
        elif all(_voi_lut_items(im) for im in images):
            for im in images:
                count = len(_voi_lut_items(im))
                if spec >= count:
                    raise ParameterError(
                        f"window index {spec} is out of range: {im.name} has no windows and "
                        f"{count} item(s) in (0028,3010) VOI LUT Sequence"
                    )
            chosen, use_lut = [None] * len(images), True
        else:
            bare = next(im for im in images if not im.info.windows)
            raise ParameterError(
                f"window index {spec} is out of range: {bare.name} has no windows in "
                "(0028,1050) Window Center and no (0028,3010) VOI LUT Sequence"
            )
    else:  # auto
        autos = [_auto_window(im) for im in images]
        if all(w is not None for w in autos):
            chosen = autos
        elif all(_voi_lut_items(im) for im in images):
            chosen, use_lut = [None] * len(images), True
        else:
            chosen = [None] * len(images)
    windows = [w for w in chosen if w is not None]
    sigmoid = next((w for w in windows if w.function == "SIGMOID"), None)
    if sigmoid is not None:
        sigmoid = windows[0]  # as before: the first window's parameters
    return VoiPlan(
        tuple(chosen),
        use_lut,
        spec if isinstance(spec, int) else 0,
        "" if use_lut else units,
        sigmoid,
        auto=spec == "auto",
    )


def _units(image: DicomImage) -> str:
    if _has_modality_lut(image):
        return ""
    rtype = image.info.rescale_type.strip().upper()
    if rtype:
        return rtype
    return "HU" if image.info.modality == "CT" else ""
