"""N-bin histogram equalization of numpy arrays (no DICOM here).

The pipeline is the classic one: histogram -> cumulative distribution -> lookup table
(LUT) -> apply the LUT to every pixel. Two LUT formulas are offered:

``"standard"`` (the default, OpenCV's form)::

    lut[k] = round((cdf[k] - cdf_min) * (L - 1) / (N - cdf_min))

``"seed"`` (the tutorial's form)::

    lut[k] = round(cumsum(counts / N)[k] * (L - 1))

where ``cdf[k]`` counts the (masked) pixels in bins ``0..k``, ``cdf_min`` is the count of
the first non-empty bin, ``N`` the number of (masked) pixels and ``L`` the number of output
levels. Rounding is half to even. With ``L <= 256`` the standard form is evaluated in single
precision exactly as OpenCV does, so ``equalize`` on uint8 is bit-identical to
``cv2.equalizeHist``; with more levels it is evaluated in double precision.
"""

from __future__ import annotations

import enum
import functools
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _kernels
from .errors import ParameterError

__all__ = ["Variant", "equalization_lut", "equalize", "histogram"]

#: Integer data without ``bins`` gets one bin per level, up to this many bins.
MAX_DEFAULT_BINS = 65536
#: Float data without ``bins`` gets this many bins.
DEFAULT_FLOAT_BINS = 256
#: Upper bound on ``bins``, which keeps the histogram and LUT in memory.
MAX_BINS = 2**24
#: Upper bound on ``levels`` (output is uint8 up to 256 levels, else uint16).
MAX_LEVELS = 65536

_SUPPORTED = "uint8, int8, uint16, int16, uint32, int32, uint64, int64, float16, float32, float64"


class Variant(str, enum.Enum):
    """The LUT formula: ``"standard"`` (OpenCV's cdf_min form) or ``"seed"`` (the tutorial's)."""

    STANDARD = "standard"
    SEED = "seed"


# --------------------------------------------------------------------------- validation


def as_variant(variant: Variant | str) -> Variant:
    try:
        return Variant(variant)
    except ValueError:
        allowed = ", ".join(repr(v.value) for v in Variant)
        raise ParameterError(f"variant must be one of {allowed}, got {variant!r}") from None


def check_image(image: ArrayLike, name: str = "image") -> NDArray[Any]:
    arr = np.asarray(image)
    kind = arr.dtype.kind
    if kind == "b":
        raise ParameterError(f"{name} has dtype bool; equalization needs integer or float data")
    if kind not in "iuf":
        raise ParameterError(f"{name} has unsupported dtype {arr.dtype}; supported: {_SUPPORTED}")
    if arr.ndim < 2:
        raise ParameterError(
            f"{name} must have at least 2 dimensions (rows, columns), got shape {arr.shape}"
        )
    if arr.size == 0:
        raise ParameterError(f"{name} is empty (shape {arr.shape})")
    if not arr.dtype.isnative:
        # Big-endian data (from a file, say): the kernels work in this machine's order.
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if kind == "f" and not np.isfinite(arr).all():
        bad = arr[~np.isfinite(arr)]
        raise ParameterError(
            f"{name} contains {bad.size} non-finite value(s) (NaN or inf, first: {bad.flat[0]}); "
            "replace them (for example with np.nan_to_num) or cast to an integer type first"
        )
    return arr


def check_mask(mask: ArrayLike | None, shape: tuple[int, ...]) -> NDArray[np.bool_] | None:
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        raise ParameterError(f"mask must have dtype bool, got {m.dtype}")
    if m.shape != shape:
        raise ParameterError(f"mask shape {m.shape} does not match image shape {shape}")
    if not m.any():
        raise ParameterError("mask selects no pixels (it is all False)")
    return m


def _whole_number(value: object, name: str, low: int, high: int | None) -> int | None:
    """Validate an optional whole-number argument in ``[low, high]``."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ParameterError(f"{name} must be a whole number or None, got {value!r}")
    number = int(value)
    if number < low or (high is not None and number > high):
        allowed = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ParameterError(f"{name} must be {allowed}, got {value!r}")
    return number


def check_bins(bins: object) -> int | None:
    return _whole_number(bins, "bins", 1, MAX_BINS)


def check_levels(levels: object) -> int | None:
    return _whole_number(levels, "levels", 2, MAX_LEVELS)


def check_range(
    value_range: tuple[float, float] | None, integer: bool
) -> tuple[float, float] | None:
    if value_range is None:
        return None
    try:
        lo, hi = value_range
        lo_f, hi_f = float(lo), float(hi)
    except (TypeError, ValueError):
        raise ParameterError(
            f"value_range must be a pair (low, high) of numbers, got {value_range!r}"
        ) from None
    if not (np.isfinite(lo_f) and np.isfinite(hi_f)) or lo_f >= hi_f:
        raise ParameterError(f"value_range must be finite with low < high, got {value_range!r}")
    if integer:
        if lo_f != int(lo_f) or hi_f != int(hi_f):
            raise ParameterError(
                f"value_range for integer images must be whole numbers, got {value_range!r}"
            )
        return int(lo_f), int(hi_f)
    return lo_f, hi_f


# --------------------------------------------------------------------------- binning


@dataclass(frozen=True)
class Binning:
    """How values map to ``bins`` equal bins over ``[lo, hi]``.

    Integer data: the bins cover the levels ``lo .. hi`` inclusive (``hi - lo + 1``
    levels), so with ``bins == hi - lo + 1`` each level has a bin of its own. Float data:
    the bins cover ``[lo, hi]`` and the last bin includes ``hi``. Values outside go to the
    end bins.
    """

    lo: float
    hi: float
    bins: int
    integer: bool

    @property
    def span(self) -> float:
        """Width of the covered interval (number of levels for integer data)."""
        return self.hi - self.lo + 1 if self.integer else self.hi - self.lo

    def edges(self) -> NDArray[np.float64]:
        """Bin edges, ``bins + 1`` of them; integer levels sit at bin centres."""
        steps = np.arange(self.bins + 1, dtype=np.float64)
        if self.integer:
            return (self.lo - 0.5) + steps * (self.span / self.bins)
        if self.span == 0:
            return np.linspace(self.lo - 0.5, self.hi + 0.5, self.bins + 1)
        return np.linspace(self.lo, self.hi, self.bins + 1)

    def index(self, values: NDArray[Any]) -> NDArray[np.intp]:
        """Bin index of every value, as intp with the shape of ``values``."""
        return _kernels.bin_index(values, self.lo, self.hi, self.bins, self.integer)


def _small_int(dtype: np.dtype[Any]) -> bool:
    return dtype.kind in "iu" and dtype.itemsize <= 2


def masked_range(image: NDArray[Any], mask: NDArray[np.bool_] | None) -> tuple[float, float]:
    lo, hi = _kernels.min_max(image, mask)
    if image.dtype.kind in "iu":
        return int(lo), int(hi)
    # + 0.0 turns -0.0 into 0.0: which of the two zeros a minimum returns is not defined.
    return float(lo) + 0.0, float(hi) + 0.0


def make_binning(
    image: NDArray[Any],
    bins: int | None,
    value_range: tuple[float, float] | None,
    data_range: tuple[float, float],
) -> Binning:
    integer = image.dtype.kind in "iu"
    lo, hi = value_range if value_range is not None else data_range
    if not integer and not np.isfinite(float(hi) - float(lo)):
        what = "value_range" if value_range is not None else "the image's values"
        raise ParameterError(
            f"{what} span {lo:g} to {hi:g}, wider than float64 can hold; scale the data "
            "down (divide it by 2, say) or choose a narrower value_range"
        )
    if bins is None:
        bins = min(int(hi - lo + 1), MAX_DEFAULT_BINS) if integer else DEFAULT_FLOAT_BINS
    return Binning(lo, hi, bins, integer)


@dataclass(frozen=True)
class _Histogram:
    """A histogram together with how its LUT is to be applied."""

    binning: Binning
    counts: NDArray[np.int64]
    #: 8/16-bit integers are mapped through a table indexed by value; other dtypes are
    #: binned again, pixel by pixel, as they are mapped.
    by_value: bool = False
    #: For mapping by value with bins other than one per level: the bin of every value
    #: from ``value_bins_from`` on (covering the counted values and the binning's
    #: ``[lo, hi]`` within the dtype).
    value_bins: NDArray[np.intp] | None = None
    value_bins_from: int = 0


def _clamped_range(dtype: np.dtype[Any], binning: Binning) -> tuple[int, int]:
    """The binning's ``[lo, hi]`` clamped to the dtype: values beyond share an end's bin."""
    vmin, vmax = _kernels.dtype_limits(dtype)
    return min(max(int(binning.lo), vmin), vmax), max(min(int(binning.hi), vmax), vmin)


def _compute_histogram(
    image: NDArray[Any],
    bins: int | None,
    value_range: tuple[float, float] | None,
    mask: NDArray[np.bool_] | None,
) -> _Histogram:
    if _small_int(image.dtype):
        # Count the (at most 65536) values once, then bin the table of values: no
        # per-pixel arithmetic is needed.
        first, vcounts = _kernels.value_counts(image, mask)
        last = first + vcounts.size - 1
        nz = np.flatnonzero(vcounts)
        binning = make_binning(image, bins, value_range, (first + int(nz[0]), first + int(nz[-1])))
        lo, hi = int(binning.lo), int(binning.hi)
        if binning.bins == hi - lo + 1:
            return _Histogram(binning, _level_counts(vcounts, first, lo, hi), True)
        a, b = _clamped_range(image.dtype, binning)
        start, stop = min(first, a), max(last, b)
        value_bins = binning.index(np.arange(start, stop + 1, dtype=np.int64))
        counted = value_bins[first - start : last - start + 1]
        counts = np.bincount(counted, weights=vcounts, minlength=binning.bins)
        return _Histogram(binning, np.rint(counts).astype(np.int64), True, value_bins, start)
    binning = make_binning(image, bins, value_range, masked_range(image, mask))
    # Binning and counting in one pass: no per-pixel index array.
    counts = _kernels.bin_counts(image, mask, binning.lo, binning.hi, binning.bins, binning.integer)
    return _Histogram(binning, counts)


def _level_counts(vcounts: NDArray[np.int64], first: int, lo: int, hi: int) -> NDArray[np.int64]:
    """Counts of one bin per level ``lo .. hi`` from counts of the values ``first ..``.

    The same as binning the values and adding their counts per bin, in a few slices:
    values below ``lo`` (above ``hi``) belong in the first (last) bin.
    """
    last = first + vcounts.size - 1
    if first >= lo and last <= hi:
        counts = np.zeros(hi - lo + 1, np.int64)
        counts[first - lo : last - lo + 1] = vcounts
        return counts
    counts = np.zeros(hi - lo + 1, np.int64)
    a, b = max(first, lo), min(last, hi)
    if a <= b:
        counts[a - lo : b - lo + 1] = vcounts[a - first : b - first + 1]
    counts[0] += vcounts[: max(0, min(lo, last + 1) - first)].sum()
    counts[-1] += vcounts[max(0, hi + 1 - first) :].sum()
    return counts


def _value_table(dtype: np.dtype[Any], h: _Histogram, lut: NDArray[Any]) -> NDArray[Any]:
    """The LUT entry of every value of an 8/16-bit dtype, in value order."""
    vmin, vmax = _kernels.dtype_limits(dtype)
    a, b = _clamped_range(dtype, h.binning)
    if h.value_bins is None:
        # One bin per level: value v (clipped to [lo, hi]) is in bin v - lo.
        lo = int(h.binning.lo)
        inner = lut[a - lo : b - lo + 1]
    else:
        inner = lut[h.value_bins[a - h.value_bins_from : b - h.value_bins_from + 1]]
    table = np.empty(vmax - vmin + 1, lut.dtype)
    table[: a - vmin] = inner[0]
    table[a - vmin : b - vmin + 1] = inner
    table[b - vmin + 1 :] = inner[-1]
    return table


@dataclass(frozen=True)
class ValueMapping:
    """Global equalization of integer data known only by the counts of its values.

    What :func:`equalize` computes for an integer image (no mask, one histogram), from
    counts that may have been added up slice by slice elsewhere: the histogram over the
    bins and the output level of every value in ``first .. first + table.size - 1``.
    """

    #: The histogram over the bins (what :func:`histogram` gives for the same image).
    counts: NDArray[np.int64]
    #: The value of ``table[0]``.
    first: int
    #: Output level of each value, uint8 or uint16.
    table: NDArray[Any]
    _raw_tables: dict[str, NDArray[Any]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def apply(self, values: NDArray[np.integer]) -> NDArray[Any]:
        """Map integer values to their output levels.

        Raises
        ------
        ParameterError
            When a value lies outside the counted span.
        """
        if values.size == 0:
            return self.table[:0].reshape(values.shape)
        lo, hi, last = int(values.min()), int(values.max()), self.first + self.table.size - 1
        if lo < self.first or hi > last:
            raise ParameterError(
                f"values {lo}..{hi} lie outside the counted span {self.first}..{last}"
            )
        if _small_int(values.dtype) and values.dtype.isnative:
            # A table over the dtype's every bit pattern: one np.take, no index array.
            raw = values.view(np.dtype(f"u{values.dtype.itemsize}"))
            return np.take(self._raw_table(values.dtype), raw)
        return self.table[values.astype(np.int64) - self.first]

    def _raw_table(self, dtype: np.dtype[Any]) -> NDArray[Any]:
        """The output level for each bit pattern of an 8/16-bit dtype (0 outside the span)."""
        found = self._raw_tables.get(dtype.str)
        if found is None:
            vmin, vmax = _kernels.dtype_limits(dtype)
            by_value = np.zeros(vmax - vmin + 1, self.table.dtype)
            a, b = max(self.first, vmin), min(self.first + self.table.size - 1, vmax)
            if a <= b:
                by_value[a - vmin : b - vmin + 1] = self.table[a - self.first : b - self.first + 1]
            # Negative values' bit patterns follow the positive ones.
            found = np.roll(by_value, vmin)
            self._raw_tables[dtype.str] = found
        return found


def value_mapping(
    first: int,
    value_counts: NDArray[np.int64],
    bins: int | None,
    value_range: tuple[float, float] | None,
    levels: int,
    variant: Variant | str = "standard",
) -> ValueMapping | None:
    """The mapping :func:`equalize` applies to integer data whose values have these counts.

    ``value_counts[k]`` is the number of pixels of value ``first + k``. Applying the
    result to the pixels gives exactly ``equalize(image, bins, value_range=value_range,
    levels=levels, variant=variant)``. Returns None where :func:`equalize` would hand the
    image back unchanged (a single non-empty bin with the standard formula), since that
    answer depends on the image's dtype rather than on its values.
    """
    var = as_variant(variant)
    vcounts = np.asarray(value_counts, dtype=np.int64)
    nz = np.flatnonzero(vcounts)
    if nz.size == 0:
        raise ParameterError("value_counts must count at least one pixel")
    last = first + vcounts.size - 1
    vr = check_range(value_range, True)
    lo, hi = (
        (int(vr[0]), int(vr[1])) if vr is not None else (first + int(nz[0]), first + int(nz[-1]))
    )
    nbins = check_bins(bins) or min(hi - lo + 1, MAX_DEFAULT_BINS)
    binning = Binning(lo, hi, nbins, True)
    index = binning.index(np.arange(first, last + 1, dtype=np.int64))
    if nbins == hi - lo + 1:
        counts = _level_counts(vcounts, first, lo, hi)
    else:
        counts = np.rint(np.bincount(index, weights=vcounts, minlength=nbins)).astype(np.int64)
    if var is Variant.STANDARD and np.count_nonzero(counts) == 1:
        return None
    lut = _lut(counts, check_levels(levels), var)
    return ValueMapping(counts, first, lut[index])


# --------------------------------------------------------------------------- public API


def histogram(
    image: ArrayLike,
    bins: int | None = None,
    *,
    value_range: tuple[float, float] | None = None,
    mask: ArrayLike | None = None,
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Histogram of an image with a given number of equal bins, for any dtype.

    Parameters
    ----------
    image : (M, N[, P, ...]) ndarray
        Integer or float data. Float data must be finite.
    bins : int, optional
        Number of equal bins. Default: one bin per level over the data's range for
        integer data (at most 65536 bins), 256 for float data.
    value_range : (float, float), optional
        The interval the bins cover; integer data counts ``low .. high`` inclusive and
        needs whole numbers. Values outside go to the first or last bin. Default: the
        (masked) data's minimum and maximum.
    mask : (M, N[, P, ...]) ndarray of bool, optional
        Count only the pixels where ``mask`` is True.

    Returns
    -------
    counts : (bins,) ndarray of int64
        Number of (masked) pixels in each bin.
    edges : (bins + 1,) ndarray of float64
        Bin edges. For integer data the levels sit at the bin centres (edges at
        half-integers when each level has a bin of its own).

    Raises
    ------
    ParameterError
        For an unsupported image (dtype, shape, non-finite values) or a bad argument.
    """
    arr = check_image(image)
    bins_ = check_bins(bins)
    vr = check_range(value_range, arr.dtype.kind in "iu")
    m = check_mask(mask, arr.shape)
    h = _compute_histogram(arr, bins_, vr, m)
    return h.counts, h.binning.edges()


@functools.lru_cache(maxsize=64)
def lut_dtype_for(levels: int) -> np.dtype[Any]:
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if levels - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ParameterError(f"levels={levels} does not fit a 64-bit unsigned integer")


def round_to_levels(values: NDArray[np.floating], levels: int) -> NDArray[Any]:
    """Round half to even, clip to ``[0, levels - 1]`` and cast to the output dtype."""
    dtype = lut_dtype_for(levels)
    top = levels - 1
    rounded = np.clip(np.rint(values), 0, float(top))
    if top > 2**53:
        # float64 cannot hold the top level of a 64-bit output: cast the rest, then set
        # the saturated entries exactly.
        full = rounded >= float(top)
        out = np.where(full, 0.0, rounded).astype(dtype)
        out[full] = top
        return out
    result: NDArray[Any] = rounded.astype(dtype)
    return result


def _identity_lut(nbins: int, levels: int | None) -> NDArray[Any]:
    position = np.arange(nbins, dtype=np.float64) / max(nbins - 1, 1)
    return position if levels is None else round_to_levels(position * (levels - 1), levels)


def equalization_lut(
    counts: ArrayLike, levels: int | None, *, variant: Variant | str = "standard"
) -> NDArray[Any]:
    """Lookup table that equalizes a histogram.

    Parameters
    ----------
    counts : (B,) array_like of non-negative integers
        A histogram, as from :func:`histogram`. At least one count must be positive.
    levels : int or None
        Number of output levels ``L`` (2 to 2**64). None gives a float LUT in [0, 1]
        without rounding.
    variant : {"standard", "seed"}
        ``"standard"``: ``round((cdf - cdf_min) * (L - 1) / (N - cdf_min))``, as OpenCV.
        ``"seed"``: ``round(cumsum(counts / N) * (L - 1))``, the tutorial's formula.

    Returns
    -------
    lut : (B,) ndarray
        Output level of each bin: uint8 for ``L <= 256``, else the smallest of uint16,
        uint32 and uint64 that holds ``L - 1``; float64 in [0, 1] when ``levels`` is None.
        Monotone non-decreasing.

    Notes
    -----
    With one non-empty bin the standard formula is undefined (0 / 0); the LUT then maps
    bin ``k`` to its own position, ``round(k * (L - 1) / (B - 1))``, which for 256 bins
    and 256 levels is the identity, as in OpenCV. With ``L <= 256`` the standard formula
    is evaluated in single precision exactly as ``cv2.equalizeHist`` does (its error is
    below 3e-5 of a level); otherwise in double precision.
    """
    var = as_variant(variant)
    c = np.asarray(counts)
    if c.ndim != 1 or c.size == 0:
        raise ParameterError(f"counts must be a non-empty 1-D array, got shape {c.shape}")
    if c.dtype.kind not in "iuf" or (c.dtype.kind == "f" and not np.all(c == np.floor(c))):
        raise ParameterError(f"counts must hold whole numbers, got dtype {c.dtype}")
    if (c < 0).any():
        raise ParameterError("counts must not be negative")
    levels = _whole_number(levels, "levels", 2, None)
    c64 = c.astype(np.int64)
    if not c64.any():
        raise ParameterError("counts are all zero: there is nothing to equalize")
    return _lut(c64, levels, var)


def _lut(c64: NDArray[np.int64], levels: int | None, var: Variant) -> NDArray[Any]:
    """:func:`equalization_lut` of validated counts (not all zero)."""
    cdf = np.cumsum(c64)
    total = int(cdf[-1])
    if var is Variant.SEED:
        # Exactly the tutorial's steps: pdf, then its running sum, then scale and round.
        frac = np.cumsum(c64 / total)
        if levels is None:
            return np.clip(frac, 0.0, 1.0)
        return round_to_levels(frac * (levels - 1), levels)

    nonzero = np.flatnonzero(c64)
    if nonzero.size == 1:
        return _identity_lut(c64.size, levels)
    cdf_min = int(c64[nonzero[0]])
    above = cdf - cdf_min
    denom = total - cdf_min
    if levels is None:
        return np.clip(above / denom, 0.0, 1.0)
    if levels <= 256:
        scale = np.float32(levels - 1) / np.float32(denom)
        return round_to_levels(above.astype(np.float32) * scale, levels)
    return round_to_levels(above.astype(np.float64) * (levels - 1) / denom, levels)


def output_levels(dtype: np.dtype[Any], levels: int | None) -> int | None:
    """Levels of the default output: the full width of an integer dtype; None for floats."""
    if levels is not None:
        return levels
    if dtype.kind in "iu":
        return int(2 ** (8 * dtype.itemsize))
    return None


def identity_output(image: NDArray[Any], levels: int | None) -> NDArray[Any]:
    """The image unchanged, moved into the output domain (OpenCV's answer for a flat histogram).

    Integer values keep their relative place in their dtype's range; float values are
    clipped to [0, 1].
    """
    if image.dtype.kind in "iu":
        nbits = 8 * image.dtype.itemsize
        unsigned = np.dtype(f"u{image.dtype.itemsize}")
        raw = image.view(unsigned)
        if image.dtype.kind == "i":
            raw = raw ^ unsigned.type(1 << (nbits - 1))
        assert levels is not None
        if levels == 2**nbits:
            return raw.astype(lut_dtype_for(levels), copy=True)
        return round_to_levels(raw.astype(np.float64) * ((levels - 1) / (2**nbits - 1)), levels)
    position = np.clip(image.astype(np.float64), 0.0, 1.0)
    if levels is None:
        return position.astype(float_output_dtype(image.dtype))
    return round_to_levels(position * (levels - 1), levels)


def float_output_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    return np.dtype(np.float32) if dtype == np.float32 else np.dtype(np.float64)


def equalize_from_counts(
    image: NDArray[Any],
    bins: int | None,
    value_range: tuple[float, float] | None,
    mask: NDArray[np.bool_] | None,
    levels: int | None,
    variant: Variant,
) -> tuple[NDArray[Any], NDArray[np.int64] | None, NDArray[Any] | None]:
    """Equalized pixels, with the histogram and the LUT that made them.

    The histogram is what :func:`histogram` gives for the same arguments; the pixels of
    bin ``k`` became ``lut[k]``. Both are None when the image came back unchanged.
    """
    out_levels = output_levels(image.dtype, levels)
    if mask is not None and not mask.any():
        return identity_output(image, out_levels), None, None
    h = _compute_histogram(image, bins, value_range, mask)
    if variant is Variant.STANDARD and np.count_nonzero(h.counts) == 1:
        return identity_output(image, out_levels), None, None
    lut = _lut(h.counts, out_levels, variant)
    if out_levels is None:
        lut = lut.astype(float_output_dtype(image.dtype))
    if h.by_value:
        return _kernels.map_values(_value_table(image.dtype, h, lut), image), h.counts, lut
    b = h.binning
    return _kernels.map_bins(image, lut, b.lo, b.hi, b.integer), h.counts, lut


def equalize(
    image: ArrayLike,
    bins: int | None = None,
    *,
    value_range: tuple[float, float] | None = None,
    mask: ArrayLike | None = None,
    levels: int | None = None,
    variant: Variant | str = "standard",
    per_slice: bool = False,
) -> NDArray[Any]:
    """Histogram-equalize an image or volume with ``bins`` equal bins, for any dtype.

    Parameters
    ----------
    image : (M, N[, P, ...]) ndarray
        uint8, int8, uint16, int16, uint32, int32, uint64, int64 or float data; float
        data must be finite. Never modified.
    bins : int, optional
        Number of equal histogram bins; honoured for every dtype, so the output has at
        most ``bins`` distinct values. Default: one bin per level over the data's range
        for integer data (at most 65536 bins), 256 for float data.
    value_range : (float, float), optional
        The interval the bins cover (whole numbers, inclusive, for integer data). Values
        outside go to the end bins. Default: the (masked) data's minimum and maximum.
    mask : (M, N[, P, ...]) ndarray of bool, optional
        Build the histogram from the pixels where ``mask`` is True; every pixel is mapped.
    levels : int, optional
        Number of output levels ``L`` (2 to 65536): the output is in ``[0, L - 1]``,
        uint8 for ``L <= 256``, else uint16.
    variant : {"standard", "seed"}
        The LUT formula; see :func:`equalization_lut`.
    per_slice : bool
        Equalize each slice along axis 0 with its own histogram. Default: one histogram
        for the whole array. A slice whose mask selects nothing is left as it is.

    Returns
    -------
    out : ndarray, same shape as ``image``
        With ``levels``: uint8 or uint16 in ``[0, L - 1]``. Otherwise integer input
        gives the unsigned integer of the same width spanning its full range (uint8
        0..255, uint16 0..65535 for uint16 and int16, uint32 for 32-bit input, uint64 for
        64-bit input), and float input gives float in [0, 1] (float32 stays float32,
        other floats give float64).

    Raises
    ------
    ParameterError
        For an unsupported image (bool, complex or object dtype, fewer than 2
        dimensions, empty, NaN or inf) or a bad argument; the message names it.

    Notes
    -----
    An image whose (masked) histogram has a single non-empty bin, such as a constant
    image, comes back unchanged (as ``cv2.equalizeHist`` returns it) in the output type:
    integer values keep their place in their dtype's range, float values are clipped to
    [0, 1]. The ``"seed"`` variant has no such rule and follows its formula.
    """
    arr = check_image(image)
    bins_ = check_bins(bins)
    levels_ = check_levels(levels)
    var = as_variant(variant)
    vr = check_range(value_range, arr.dtype.kind in "iu")
    m = check_mask(mask, arr.shape)
    if not isinstance(per_slice, (bool, np.bool_)):
        raise ParameterError(f"per_slice must be True or False, got {per_slice!r}")
    if not per_slice:
        return _equalized(arr, bins_, vr, m, levels_, var)
    if arr.ndim < 3:
        raise ParameterError(
            f"per_slice=True needs an array with at least 3 dimensions, got shape {arr.shape}"
        )
    slices = [
        _equalized(arr[i], bins_, vr, None if m is None else m[i], levels_, var)
        for i in range(arr.shape[0])
    ]
    return np.stack(slices)


#: Dtypes :func:`_equalized` may hand to the kernels' short path.
_LEVEL_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int16))


def _equalized(
    image: NDArray[Any],
    bins: int | None,
    value_range: tuple[float, float] | None,
    mask: NDArray[np.bool_] | None,
    levels: int | None,
    variant: Variant,
) -> NDArray[Any]:
    """:func:`equalize` of one array (validated arguments).

    Unmasked 8/16-bit data with one bin per level take the kernels' short path
    (:func:`medeq._kernels.equalize_levels`): the same numbers with fewer steps.
    """
    if (
        image.dtype in _LEVEL_DTYPES
        and mask is None
        and value_range is None
        and (bins is None or (bins == 256 and image.dtype == np.uint8))
    ):
        # Without bins: one bin per level over the data's range. 256 bins over an 8-bit
        # range keep every level apart: the same LUT entry for each level present.
        out_levels = output_levels(image.dtype, levels)
        assert out_levels is not None
        done = _kernels.equalize_levels(
            image, out_levels, lut_dtype_for(out_levels), variant is Variant.SEED
        )
        if done is not None:
            return done
    return equalize_from_counts(image, bins, value_range, mask, levels, variant)[0]
