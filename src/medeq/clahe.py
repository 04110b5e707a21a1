"""Contrast-limited adaptive histogram equalization (CLAHE) on the N-bin core.

The image is cut into contextual regions (tiles) of ``kernel_size`` pixels. Each tile gets
a histogram with the global binning of :func:`medeq.equalize` (the same ``bins`` over the
same value range for every tile), clipped at ``clip_limit`` with the excess spread back
over the bins (``redistribution``: below the limit, as Zuiderveld and scikit-image, or
over all bins, as OpenCV), and the mapping ``cumsum(clipped / N)``. Every pixel is then
mapped through the bilinear blend of the mappings of the four tiles whose centres surround
it. 3-D input is a stack of 2-D slices along axis 0, each with its own tiles and the
volume's binning.

The tile mapping is the classic CLAHE one (Zuiderveld 1994, OpenCV, scikit-image),
``lut[k] = cdf[k] * (L - 1) / N``: the ``"seed"`` variant of
:func:`medeq.equalization_lut`. After clipping nearly every bin is occupied, so the
``cdf_min`` term of the standard form would only bend the mapping away from its peers.
The compiled loop evaluates that formula itself, bit for bit as ``equalization_lut``
(the tests hold the two together), because one call per tile would cost more than all of
OpenCV's CLAHE on 16-bit data.
"""

from __future__ import annotations

import enum
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._threads import in_bands, parts_for
from .core import (
    Binning,
    check_bins,
    check_image,
    check_levels,
    check_mask,
    check_range,
    float_output_dtype,
    identity_output,
    lut_dtype_for,
    make_binning,
    masked_range,
    output_levels,
    round_to_levels,
)
from .errors import ParameterError

__all__ = ["Redistribution", "check_parameters", "clahe"]

#: Upper bound on tiles x bins per slice, which keeps the tile mappings in memory
#: (at most 8 bytes an entry: 256 MB at the bound).
MAX_TILE_ENTRIES = 2**25
#: Up to this many output levels, tile mappings hold levels and the loop rounds.
_KERNEL_LEVELS = 65536


class Redistribution(str, enum.Enum):
    """Where the counts clipped off a tile's histogram go: ``"limited"`` (no bin rises
    above the limit: Zuiderveld, scikit-image) or ``"uniform"`` (an equal share to every
    bin: OpenCV)."""

    LIMITED = "limited"
    UNIFORM = "uniform"


# --------------------------------------------------------------------------- validation


def _check_kernel_size(kernel_size: object, shape: tuple[int, int]) -> tuple[int, int]:
    """Tile size (rows, columns), clamped to the slice: a tile is never larger than it."""
    if kernel_size is None:
        # scikit-image's default: an eighth of each dimension, so 8 x 8 tiles.
        return max(shape[0] // 8, 1), max(shape[1] // 8, 1)
    if isinstance(kernel_size, (bool, np.bool_)):
        raise ParameterError(f"kernel_size must be a whole number or a pair, got {kernel_size!r}")
    if isinstance(kernel_size, numbers.Integral):
        pair: tuple[object, ...] = (kernel_size, kernel_size)
    else:
        if not isinstance(kernel_size, Iterable) or isinstance(kernel_size, (str, bytes)):
            raise ParameterError(
                f"kernel_size must be a whole number or a pair (rows, columns) of them, "
                f"got {kernel_size!r}"
            )
        pair = tuple(kernel_size)
        if len(pair) != 2:
            raise ParameterError(
                f"kernel_size must be a whole number or a pair (rows, columns); tiles are "
                f"2-D (volumes are processed slice by slice), got {kernel_size!r}"
            )
    sizes = []
    for k in pair:
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral) or k < 1:
            raise ParameterError(f"kernel_size must hold whole numbers >= 1, got {kernel_size!r}")
        sizes.append(int(k))
    return min(sizes[0], shape[0]), min(sizes[1], shape[1])


def _check_clip_limit(clip_limit: object) -> float | None:
    if clip_limit is None:
        return None
    if isinstance(clip_limit, (bool, np.bool_)) or not isinstance(clip_limit, numbers.Real):
        raise ParameterError(f"clip_limit must be a number in (0, 1] or None, got {clip_limit!r}")
    value = float(clip_limit)
    if not 0.0 < value <= 1.0:
        hint = (
            "; scikit-image and OpenCV read 0 as 'no clipping', medeq spells that None"
            if value == 0.0
            else ""
        )
        raise ParameterError(
            f"clip_limit must be in (0, 1] (a fraction of the tile's pixels per bin) or None "
            f"(no clipping), got {clip_limit!r}{hint}"
        )
    return value


def check_parameters(clip_limit: object, kernel_size: object, redistribution: object) -> None:
    """Refuse bad CLAHE parameters (ParameterError) before any image is read.

    For a batch, which checks them once at the door rather than per image.
    """
    _check_clip_limit(clip_limit)
    _check_kernel_size(kernel_size, (1 << 16, 1 << 16))
    as_redistribution(redistribution)


def as_redistribution(redistribution: object) -> Redistribution:
    try:
        return Redistribution(redistribution)
    except ValueError:
        allowed = ", ".join(repr(v.value) for v in Redistribution)
        raise ParameterError(
            f"redistribution must be one of {allowed}, got {redistribution!r}"
        ) from None


# --------------------------------------------------------------------------- geometry


def _tile_edges(size: int, kernel: int) -> NDArray[np.intp]:
    """Edges of the ``ceil(size / kernel)`` tiles of ``kernel`` pixels from the first pixel.

    The last tile may run past the image (by less than ``kernel`` pixels); the kernels
    fill that part by mirroring the image about its last pixel, as OpenCV and
    scikit-image pad.
    """
    n = -(-size // kernel)
    return np.arange(n + 1, dtype=np.intp) * kernel


def _axis_weights(
    edges: NDArray[np.intp], size: int
) -> tuple[NDArray[np.uintp], NDArray[np.uintp], NDArray[np.float64]]:
    """For each of ``size`` pixels along an axis: the tiles whose centres surround it and
    the weight of the second. Pixels beyond the first or last centre take that tile alone.

    A tile's centre is ``start + kernel / 2`` in pixel indices (half a pixel past the
    middle of its pixels), where OpenCV puts it; scikit-image puts it at
    ``start + ceil(kernel / 2)``, the same for even kernels and half a pixel further for
    odd ones.
    """
    centres = (edges[:-1] + edges[1:]) / 2.0
    pos = np.arange(size, dtype=np.float64)
    hi = np.searchsorted(centres, pos, side="right")
    lo = hi - 1
    inside = (lo >= 0) & (hi < centres.size)
    lo = np.clip(lo, 0, centres.size - 1)
    hi = np.clip(hi, 0, centres.size - 1)
    weight = np.zeros(size, dtype=np.float64)
    weight[inside] = (pos[inside] - centres[lo[inside]]) / (
        centres[hi[inside]] - centres[lo[inside]]
    )
    return lo.astype(np.uintp), hi.astype(np.uintp), weight


# --------------------------------------------------------------------------- mappings


def _borrow_mappings(luts: NDArray[Any], filled: NDArray[np.bool_]) -> None:
    """Give every tile without (masked) pixels a mapping from its neighbours, in place.

    Rings grow outward from the filled tiles: an empty tile next to (8-neighbourhood)
    filled ones takes the mean of their mappings (rounded, for mappings in output
    levels), and counts as filled for the next ring. A mean of non-decreasing mappings
    is non-decreasing, and so is its rounding.
    """
    ny, nx = filled.shape
    luts[~filled] = 0.0  # never read uninitialised memory below
    while not filled.all():
        total = np.zeros(luts.shape, dtype=np.float64)
        count = np.zeros(filled.shape, dtype=np.int64)
        weighted = luts * filled[..., None]
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy == 0 and dx == 0:
                    continue
                dst_y = slice(max(dy, 0), ny + min(dy, 0))
                src_y = slice(max(-dy, 0), ny + min(-dy, 0))
                dst_x = slice(max(dx, 0), nx + min(dx, 0))
                src_x = slice(max(-dx, 0), nx + min(-dx, 0))
                total[dst_y, dst_x] += weighted[src_y, src_x]
                count[dst_y, dst_x] += filled[src_y, src_x]
        ring = ~filled & (count > 0)
        mean = total[ring] / count[ring][:, None]
        luts[ring] = mean if luts.dtype.kind == "f" else np.rint(mean)
        filled |= ring


def _tile_mappings(
    src: NDArray[np.unsignedinteger],
    table: NDArray[np.unsignedinteger],
    mask: NDArray[np.bool_] | None,
    edges: tuple[NDArray[np.intp], NDArray[np.intp]],
    nbins: int,
    clip: tuple[float | None, Redistribution],
    levels: int | None,
) -> NDArray[Any] | None:
    """Mappings of every tile of one slice; None when the mask selects nothing.

    With ``levels`` the mappings hold output levels (uint8 or uint16): four of them per
    pixel stay in the cache far better than doubles, which is most of the speed on
    16-bit data. Otherwise they hold positions in [0, 1] (float64).
    """
    row_edges, col_edges = edges
    shape = (row_edges.size - 1, col_edges.size - 1)
    largest = int(np.diff(row_edges).max()) * int(np.diff(col_edges).max())
    lut_dtype = np.dtype(np.float64) if levels is None else lut_dtype_for(levels)
    luts = np.empty((*shape, nbins), dtype=lut_dtype)
    filled = np.zeros(shape, dtype=np.bool_)
    # A limit of all of a tile's pixels clips nothing.
    limit = 1.0 if clip[0] is None else clip[0]
    uniform = clip[1] is Redistribution.UNIFORM
    parts = parts_for(src.size, shape[0])
    # One histogram per thread, reused tile after tile; int32 halves its cache footprint.
    scratch = np.empty((parts, nbins), dtype=np.int32 if largest < 2**31 else np.int64)
    in_bands(
        lambda part, band: _kernels().tile_mappings(
            src, table, mask, edges, (limit, uniform), levels, (luts, filled), scratch[part], band
        ),
        shape[0],
        parts,
    )
    if not filled.any():
        return None
    if not filled.all():
        _borrow_mappings(luts, filled)
    return luts


def _map_pixels(
    src: NDArray[np.unsignedinteger],
    table: NDArray[np.unsignedinteger],
    luts: NDArray[Any],
    weights: tuple[
        tuple[NDArray[np.uintp], NDArray[np.uintp], NDArray[np.float64]],
        tuple[NDArray[np.uintp], NDArray[np.uintp], NDArray[np.float64]],
    ],
    levels: int | None,
    out: NDArray[Any],
) -> None:
    rows, cols = weights
    in_bands(
        lambda _, band: _kernels().interpolate(src, table, luts, rows, cols, levels, out, band),
        src.shape[0],
        parts_for(src.size, src.shape[0]),
    )


# --------------------------------------------------------------------------- public API


def _bin_source(image: NDArray[Any], binning: Binning) -> tuple[NDArray[Any], NDArray[Any]]:
    """What the kernels read per pixel, and the table from it to the bin (see _clahe_kernels).

    Both are unsigned: signed indices cost the compiled loops a wrap-around test per read.
    """
    index_dtype = np.dtype(np.uint16) if binning.bins <= 2**16 else np.dtype(np.uint32)
    if image.dtype.kind in "iu" and image.dtype.itemsize <= 2:
        raw_dtype = np.dtype(f"u{image.dtype.itemsize}")
        patterns = np.arange(2 ** (8 * image.dtype.itemsize), dtype=raw_dtype)
        table = binning.index(patterns.view(image.dtype)).astype(index_dtype)
        return np.ascontiguousarray(image).view(raw_dtype), table
    bins = binning.index(image).astype(index_dtype)
    return bins, np.arange(binning.bins, dtype=index_dtype)


def clahe(
    image: ArrayLike,
    bins: int | None = None,
    *,
    kernel_size: int | tuple[int, int] | None = None,
    clip_limit: float | None = 0.01,
    value_range: tuple[float, float] | None = None,
    mask: ArrayLike | None = None,
    levels: int | None = None,
    redistribution: Redistribution | str = "limited",
) -> NDArray[Any]:
    """Contrast-limited adaptive histogram equalization with ``bins`` equal bins, any dtype.

    Parameters
    ----------
    image : (M, N) or (P, M, N) ndarray
        uint8, int8, uint16, int16, uint32, int32, uint64, int64 or float data; float data
        must be finite. A 3-D array is a stack of slices along axis 0, each equalized with
        its own tiles (the binning is the volume's). Never modified.
    bins : int, optional
        Number of equal histogram bins, the same for every tile, as in
        :func:`medeq.equalize`. Default: one bin per level over the data's range for
        integer data (at most 65536 bins), 256 for float data.
    kernel_size : int or (int, int), optional
        Tile size in pixels (rows, columns); larger than the image means one tile. The
        tiles start at the first row and column; where the last ones run past the image,
        the image is mirrored about its last pixel. Default: an eighth of each dimension
        (8 x 8 tiles), as scikit-image.
    clip_limit : float or None
        Largest share of a tile's (masked) pixels one bin may hold, in (0, 1]; the counts
        above it are spread back over the bins (see ``redistribution``). Smaller values
        limit contrast more. None (or 1) does not clip: plain adaptive histogram
        equalization. The same normalisation as scikit-image; OpenCV's ``clipLimit`` is
        ``clip_limit * bins``.
    value_range : (float, float), optional
        The interval the bins cover (whole numbers, inclusive, for integer data). Values
        outside go to the end bins. Default: the (masked) data's minimum and maximum.
    mask : ndarray of bool, optional
        Same shape as ``image``. Tile histograms count only the pixels where it is True;
        every pixel is mapped. A tile without masked pixels borrows the mean mapping of its
        nearest tiles that have some; a slice without masked pixels is left as it is.
    levels : int, optional
        Number of output levels ``L`` (2 to 65536): the output is in ``[0, L - 1]``,
        uint8 for ``L <= 256``, else uint16.
    redistribution : {"limited", "uniform"}
        Where the clipped counts go. ``"limited"``: to the bins below the limit, never
        lifting one above it (Zuiderveld's scheme, as scikit-image). ``"uniform"``: an
        equal share to every bin, so the full bins end above the limit (OpenCV's
        scheme; with OpenCV's bins, tiles and clip it gives OpenCV's result).

    Returns
    -------
    out : ndarray, same shape as ``image``
        With ``levels``: uint8 or uint16 in ``[0, L - 1]``. Otherwise integer input gives
        the unsigned integer of the same width spanning its full range (uint8 0..255,
        uint16 0..65535 for uint16 and int16, uint32 or uint64 for wider input), and float
        input gives float in [0, 1] (float32 stays float32, other floats give float64).

    Raises
    ------
    ParameterError
        For an unsupported image (dtype, fewer than 2 or more than 3 dimensions, empty,
        NaN or inf) or a bad argument; the message names it.

    Notes
    -----
    A tile with ``N`` (masked) pixels gets the histogram ``h`` of its pixels over the
    ``B`` common bins. With a clip limit, the limit is ``c = max(floor(clip_limit * N),
    1)`` and every bin is cut to ``c``. The ``E`` counts cut off go back, the total
    staying ``N``:

    - ``"limited"``: ``c`` is raised to ``ceil(N / B)`` if below (else the pixels would
      not fit); ``min(E // B, c - h[k])`` to every bin, then the rest one at a time to
      every ``s``-th bin still below ``c``, ``s = max(U // E_left, 1)`` for ``U`` such
      bins, the sweeps starting at bin 0, 1, 2, ... until none is left.
    - ``"uniform"``: ``E // B`` to every bin, then one each to bins ``0, s, 2s, ...``
      for the ``r = E % B`` left (``s = B // r``).

    The tile's mapping is ``lut[k] = cdf[k] / N``: :func:`medeq.equalization_lut` with
    ``variant="seed"``. A pixel in bin ``k`` gets the bilinear blend of ``lut[k]`` of the
    four tiles whose centres surround it (a tile starting at pixel ``s`` has its centre at
    ``s + kernel_size / 2``, as in OpenCV; beyond the outermost centres, of the two or one
    nearest), times ``L - 1``, rounded half to even.

    An image whose (masked) values all fall in one bin, such as a constant image, comes
    back unchanged in the output type, as from :func:`medeq.equalize`.
    """
    arr = check_image(image)
    if arr.ndim > 3:
        raise ParameterError(
            f"image must be 2-D (rows, columns) or 3-D (slices, rows, columns) for clahe, "
            f"got shape {arr.shape}"
        )
    bins_ = check_bins(bins)
    levels_ = check_levels(levels)
    vr = check_range(value_range, arr.dtype.kind in "iu")
    m = check_mask(mask, arr.shape)
    if m is not None:
        m = np.ascontiguousarray(m)
    kernel = _check_kernel_size(kernel_size, (arr.shape[-2], arr.shape[-1]))
    clip = (_check_clip_limit(clip_limit), as_redistribution(redistribution))

    data_range = masked_range(arr, m)
    binning = make_binning(arr, bins_, vr, data_range)
    edges = (_tile_edges(arr.shape[-2], kernel[0]), _tile_edges(arr.shape[-1], kernel[1]))
    entries = (edges[0].size - 1) * (edges[1].size - 1) * binning.bins
    if entries > MAX_TILE_ENTRIES:
        raise ParameterError(
            f"kernel_size={kernel_size!r} gives {(edges[0].size - 1) * (edges[1].size - 1)} "
            f"tiles of {binning.bins} bins, more than {MAX_TILE_ENTRIES} mapping entries in "
            "all; use a larger kernel_size or fewer bins"
        )

    out_levels = output_levels(arr.dtype, levels_)
    ends = binning.index(np.array(data_range, dtype=arr.dtype))
    if ends[0] == ends[1]:
        return identity_output(arr, out_levels)

    out_dtype = float_output_dtype(arr.dtype) if out_levels is None else lut_dtype_for(out_levels)
    # Mappings in output levels for up to 65536 levels; wider outputs (32/64-bit input)
    # keep positions in [0, 1], which core's rounding (exact up to 2**64) finishes.
    wide = out_levels is not None and out_levels > _KERNEL_LEVELS
    lut_levels = None if wide else out_levels

    src, table = _bin_source(arr, binning)
    stack = arr.ndim == 3
    out = np.empty(arr.shape, dtype=out_dtype)
    rows = _axis_weights(edges[0], arr.shape[-2])
    cols = _axis_weights(edges[1], arr.shape[-1])
    for i in range(arr.shape[0] if stack else 1):
        src_i = src[i] if stack else src
        mask_i = None if m is None else (m[i] if stack else m)
        out_i = out[i] if stack else out
        luts = _tile_mappings(src_i, table, mask_i, edges, binning.bins, clip, lut_levels)
        if luts is None:
            out_i[...] = identity_output(arr[i] if stack else arr, out_levels)
        elif wide:
            assert out_levels is not None
            position = np.empty(out_i.shape, dtype=np.float64)
            _map_pixels(src_i, table, luts, (rows, cols), None, position)
            out_i[...] = round_to_levels(position * (out_levels - 1), out_levels)
        else:
            _map_pixels(src_i, table, luts, (rows, cols), lut_levels, out_i)
    return out


def _kernels() -> Any:
    """The compiled loops; numba is imported on the first CLAHE call, not with medeq."""
    from . import _clahe_kernels

    return _clahe_kernels
