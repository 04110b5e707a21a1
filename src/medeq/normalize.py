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
"""

from __future__ import annotations

import enum
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from struct import unpack_from
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from .errors import ParameterError, UnsupportedImageError
from .reader import DicomImage, Window, rescale_of_frame

__all__ = ["Normalized", "Preset", "WindowSpec", "modality_values", "normalize"]

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


# --------------------------------------------------------------------------- modality LUT


def _apply_lut(arr: NDArray[Any], item: Dataset, little_endian: bool, signed: bool) -> NDArray[Any]:
    """Map values through a LUT item ((0028,3002) LUT Descriptor, (0028,3006) LUT Data)."""
    entries, first, _bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536
    if signed and first >= 32768:
        first -= 65536  # the descriptor's second value is SS for signed pixel data
    element = item["LUTData"]
    if element.VR == "OW" or isinstance(element.value, bytes):
        raw = element.value
        data = np.array(unpack_from(f"{'<' if little_endian else '>'}{entries}H", raw))
    else:
        data = np.asarray(element.value if isinstance(element.value, list) else [element.value])
    lut = data.astype(np.uint16 if data.max(initial=0) > 255 else np.uint8)
    index = np.clip(arr.astype(np.int64) - first, 0, entries - 1)
    return lut[index]


def _little_endian(image: DicomImage) -> bool:
    return image.info.transfer_syntax != "1.2.840.10008.1.2.2"


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
    sequences; everything else normalisation needs is in ``image.info``.
    """
    info = image.info
    return info.modality_lut or info.voi_lut or info.per_frame_rescale


def modality_values(image: DicomImage) -> NDArray[Any]:
    """Apply the Modality LUT: stored values to modality units (HU for CT).

    Uses (0028,3000) *Modality LUT Sequence* if present, else (0028,1053) *Rescale Slope*
    and (0028,1052) *Rescale Intercept*, read per frame from the functional groups of
    enhanced multi-frame objects.

    Parameters
    ----------
    image : DicomImage

    Returns
    -------
    values : (frames, rows, columns) ndarray
        int16, uint16 or int32 when every value is a whole number (integer slope and
        intercept, or a LUT), else float32.
    """
    stored = image.stored
    info = image.info
    if info.modality_lut:
        item = image.dataset.ModalityLUTSequence[0]
        return _apply_lut(stored, item, _little_endian(image), info.signed)
    frames = stored.shape[0]
    if info.per_frame_rescale:
        rescales = [rescale_of_frame(image.dataset, f)[:2] for f in range(frames)]
    else:  # every frame has frame 1's, which the info holds
        rescales = [(info.rescale_slope, info.rescale_intercept)] * frames
    for s, i in rescales:
        if s == 0 or not (math.isfinite(s) and math.isfinite(i)):
            raise UnsupportedImageError(
                f"{image.name}: unusable (0028,1053) Rescale Slope {s:g} / "
                f"(0028,1052) Rescale Intercept {i:g}"
            )
    if all(s == 1 and i == 0 for s, i in rescales):
        return stored
    if all(_is_whole(s) and _is_whole(i) for s, i in rescales):
        # Choose the output type from the data's actual range, so CT in HU stays int16.
        smin, smax = int(stored.min()), int(stored.max())
        ends = [e for s, i in rescales for e in (smin * s + i, smax * s + i)]
        dtype = _smallest_int(min(ends), max(ends))
        out = np.empty(stored.shape, dtype)
        for f, (s, i) in enumerate(rescales):
            np.add(stored[f].astype(np.int64) * int(s), int(i), out=out[f], casting="unsafe")
        return out
    out32 = np.empty(stored.shape, np.float32)
    for f, (s, i) in enumerate(rescales):
        out32[f] = stored[f].astype(np.float64) * s + i
    return out32


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
    return Window(center, width, "LINEAR", "explicit")


def _window_bounds(w: Window, integer: bool) -> tuple[float, float]:
    """The value span a LINEAR/LINEAR_EXACT window maps between its two clipped ends.

    For integer data the ends are the last level that clips to the minimum and the first
    that clips to the maximum (PS3.3 C.11.2.1.2), so each end bin collects what the window
    clips.
    """
    if w.function == "LINEAR_EXACT":
        lo, hi = w.center - w.width / 2, w.center + w.width / 2
    else:
        lo = w.center - 0.5 - (w.width - 1) / 2
        hi = w.center - 0.5 + (w.width - 1) / 2
    if integer:
        return float(math.floor(lo)), float(math.floor(hi) + 1)
    return lo, hi


def _check_window(w: Window, name: str) -> None:
    if w.function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        raise UnsupportedImageError(
            f"{name}: unsupported (0028,1056) VOI LUT Function value {w.function!r}; "
            "medeq applies LINEAR, LINEAR_EXACT and SIGMOID"
        )
    if not w.width >= 1:
        raise UnsupportedImageError(
            f"{name}: (0028,1051) Window Width {w.width:g} is invalid (must be >= 1)"
        )


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
    """The file's first usable window, or None."""
    for w in image.info.windows:
        if w.width >= 1:
            _check_window(w, image.name)
            return w
        logger.warning("%s: skipping window %g/%g: width < 1", image.name, w.center, w.width)
    return None


def _float_levels(lo: float, hi: float, images: Sequence[DicomImage]) -> int:
    """Stored levels between lo and hi, for float modality values."""
    slope = min(abs(im.info.rescale_slope) for im in images) or 1.0
    return math.floor((hi - lo) / slope + 1e-9) + 1


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
        ``"auto"``: the file's first window, else its VOI LUT Sequence, else the full
        range. ``"none"``: the data's full range. An int: that window of the file's
        (0028,1050)/(0028,1051) values (or VOI LUT item when the file has no windows). A
        :class:`Preset` or its name (CT only): brain, subdural, stroke, lung,
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
        When the pixels cannot be used (raised as the pixels are decoded).
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
        z = (array.astype(np.float64) - w.center) / w.width
        array = (1.0 / (1.0 + np.exp(-4.0 * z))).astype(np.float32)
        span = Span(0.0, 1.0, levels, f"window {w.center:g}/{w.width:g} SIGMOID", w)
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
    #: Apply the images' VOI LUT Sequence item ``lut_index``.
    use_lut: bool
    lut_index: int
    units: str
    #: The SIGMOID window, when that VOI function applies (its output is float).
    sigmoid: Window | None

    def values(self, image: DicomImage) -> NDArray[Any]:
        """Modality values of one image, through the VOI LUT when the plan uses one."""
        values = modality_values(image)
        if self.use_lut:
            item = image.dataset.VOILUTSequence[self.lut_index]
            values = _apply_lut(values, item, _little_endian(image), values.dtype.kind == "i")
        return values

    def span(
        self, images: Sequence[DicomImage], integer: bool, data_lo: float, data_hi: float
    ) -> Span:
        """The range to equalize over, given the values' type and their min and max."""
        if self.use_lut:
            lo, hi = data_lo, data_hi
            span = Span(
                lo, hi, int(hi - lo) + 1, f"VOI LUT Sequence item {self.lut_index + 1}", None
            )
        elif all(w is None for w in self.chosen):
            lo, hi = data_lo, data_hi
            levels = int(hi - lo) + 1 if integer else _float_levels(lo, hi, images)
            span = Span(lo, hi, levels, "full range", None)
        else:
            windows = [w for w in self.chosen if w is not None]
            bounds = [_window_bounds(w, integer) for w in windows]
            lo, hi = min(b[0] for b in bounds), max(b[1] for b in bounds)
            levels = int(hi - lo) + 1 if integer else _float_levels(lo, hi, images)
            if len({(w.center, w.width, w.function) for w in windows}) == 1:
                used = windows[0]
                voi = f"window {used.center:g}/{used.width:g} {used.function}"
            else:
                c, width = (lo + hi) / 2, hi - lo
                used = Window(c, width, "LINEAR", "union of the series' windows")
                voi = f"window {c:g}/{width:g} (union of {len(bounds)} windows)"
            span = Span(lo, hi, levels, voi, used)
        if span.hi <= span.lo:  # a constant image: give the core a valid, non-empty span
            span = Span(span.lo, span.lo + 1, span.levels, span.voi, span.window)
        return span


def voi_plan(images: Sequence[DicomImage], window: WindowSpec = "auto") -> VoiPlan:
    """The VOI decisions :func:`normalize` makes from the headers of ``images``.

    Raises
    ------
    ParameterError
        As :func:`normalize`.
    """
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
        elif all(im.info.voi_lut for im in images):
            for im in images:
                count = len(im.dataset.VOILUTSequence)
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
        elif all(im.info.voi_lut for im in images):
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
    )


def _units(image: DicomImage) -> str:
    if image.info.modality_lut:
        return ""
    rtype = image.info.rescale_type.strip().upper()
    if rtype:
        return rtype
    return "HU" if image.info.modality == "CT" else ""
