"""Compiled inner loops of CLAHE: tile histograms and mappings, and the interpolated mapping.

These are the per-pixel and per-bin loops of :mod:`medeq.clahe`; the binning they use
comes from :mod:`medeq.core`. numba compiles each function on its first call for the
argument types it sees (never at import) and caches the machine code on disk (see
``medeq._jit._jit``, which also copes with a read-only install), so later processes start
at once. The functions release the GIL and each works on a band
of rows, so callers can run bands on several threads; every output element is written by
exactly one band, so the result does not depend on the split.

Every pixel reaches its histogram bin through a table: ``bin = table[src[y, x]]``. For 8-
and 16-bit images ``src`` holds the raw bit patterns and ``table`` the bin of every possible
pattern; for other dtypes ``src`` already holds bin indices and ``table`` is the identity.
Both are unsigned, which spares the loops numba's wrap-around test for negative indices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._jit import _jit

__all__ = ["interpolate", "tile_mappings"]


def _compiled(func: Callable[..., Any]) -> Any:
    """Compile ``func`` with the kernels' disk-cached jit; the loops stay untyped for mypy."""
    return _jit()(func)


@_compiled
def _histogram(src, table, mask, y0, y1, x0, x1, hist):  # type: ignore[no-untyped-def]
    # Rows and columns past the image's end are mirrored about its last pixel (OpenCV's
    # BORDER_REFLECT_101: ..., n-2, n-1, n-2, n-3, ...), read in place.
    height, width = src.shape
    last_y = 2 * (height - 1)
    last_x = 2 * (width - 1)
    inside = min(x1, width)
    outside = max(x0, width)
    for y in range(y0, y1):
        yy = y if y < height else last_y - y
        row = src[yy]
        if mask is None:
            for x in range(x0, inside):
                hist[table[row[x]]] += 1
            for x in range(outside, x1):
                hist[table[row[last_x - x]]] += 1
        else:
            keep = mask[yy]
            for x in range(x0, inside):
                if keep[x]:
                    hist[table[row[x]]] += 1
            for x in range(outside, x1):
                if keep[last_x - x]:
                    hist[table[row[last_x - x]]] += 1


@_compiled
def _clip(hist, total, clip_limit, uniform):  # type: ignore[no-untyped-def]
    nbins = hist.size
    limit = max(int(np.floor(clip_limit * total)), 1)
    if not uniform:
        # Below N / B the pixels cannot fit under the limit: the flattest histogram can.
        limit = max(limit, -(-total // nbins))
    excess = 0
    for k in range(nbins):
        if hist[k] > limit:
            excess += hist[k] - limit
            hist[k] = limit
    if excess == 0:
        return
    batch = excess // nbins
    if uniform:
        # OpenCV's scheme: an equal share to every bin, full ones included, and the
        # residual (fewer than B counts) one each to bins 0, s, 2s, ... (s = B // residual).
        residual = excess - batch * nbins
        for k in range(nbins):
            hist[k] += batch
        if residual > 0:
            step = max(nbins // residual, 1)
            for k in range(0, residual * step, step):
                hist[k] += 1
        return
    # Zuiderveld's scheme as scikit-image runs it: no bin rises above the limit.
    under = 0
    for k in range(nbins):
        give = min(batch, limit - hist[k])
        hist[k] += give
        excess -= give
        if hist[k] < limit:
            under += 1
    # The rest one count at a time to every step-th bin still below the limit, the
    # step being the number of such bins over the counts left (scikit-image's rule; it
    # also gives to the whole stride, which can hand out more than the excess: here
    # the giving stops when the excess is spent). Sweeps start at bin 0, then 1, 2, ...
    offset = 0
    while excess > 0:
        step = max(under // excess, 1)
        for k in range(offset, nbins, step):
            if hist[k] < limit:
                hist[k] += 1
                excess -= 1
                if hist[k] == limit:
                    under -= 1
                if excess == 0:
                    break
        offset = (offset + 1) % nbins


@_compiled
def _clip_and_map(hist, clip_limit, uniform, top, lut):  # type: ignore[no-untyped-def]
    total = 0
    for k in range(hist.size):
        total += hist[k]
    if total == 0:
        return False
    if clip_limit < 1.0:
        _clip(hist, total, clip_limit, uniform)
    # The running sum of count / N, in this order, is exactly what numpy's
    # cumsum(counts / N) computes: the mapping is bit for bit
    # equalization_lut(clipped, top + 1 or None, variant="seed"), and the tests hold them
    # together. Calling that function per tile costs more than all of OpenCV's CLAHE on
    # 16-bit data.
    position = 0.0
    for k in range(hist.size):
        position += hist[k] / total
        if top:
            lut[k] = np.rint(min(position, 1.0) * top)
        else:
            lut[k] = min(position, 1.0)
    return True


@_compiled
def _tile_mappings(  # type: ignore[no-untyped-def]
    src, table, mask, row_edges, col_edges, clip_limit, uniform, top, hist, luts, filled, ty0, ty1
):
    # Tile by tile, so one histogram (not a whole row of them) is hot in the cache.
    for ty in range(ty0, ty1):
        for tx in range(col_edges.size - 1):
            hist[:] = 0
            y0, y1 = row_edges[ty], row_edges[ty + 1]
            _histogram(src, table, mask, y0, y1, col_edges[tx], col_edges[tx + 1], hist)
            filled[ty, tx] = _clip_and_map(hist, clip_limit, uniform, top, luts[ty, tx])


def tile_mappings(
    src: NDArray[np.unsignedinteger],
    table: NDArray[np.unsignedinteger],
    mask: NDArray[np.bool_] | None,
    edges: tuple[NDArray[np.intp], NDArray[np.intp]],
    clip: tuple[float, bool],
    levels: int | None,
    out: tuple[NDArray[Any], NDArray[np.bool_]],
    scratch: NDArray[np.integer],
    tile_rows: tuple[int, int],
) -> None:
    """Histogram, clip and map the tiles in rows ``tile_rows[0] <= ty < tile_rows[1]``.

    Tile ``(ty, tx)`` holds the pixels ``row_edges[ty] <= y < row_edges[ty + 1]`` and
    ``col_edges[tx] <= x < col_edges[tx + 1]`` (with ``mask``, only those where it is
    True); edges may run past the image by less than its size, where the image is
    mirrored about its last row or column. ``out`` is ``(luts, filled)``: ``luts``
    (shape ``(tiles_y, tiles_x, B)``) receives the mappings, in [0, 1] when ``levels`` is
    None, else rounded to output levels ``0 .. levels - 1``; ``filled`` tells whether the
    tile has any pixel (its ``luts`` entry is left alone when not).
    ``scratch`` (``B`` integers wide enough for a tile's pixel count) holds one histogram
    at a time and ends with the last tile's clipped histogram.

    ``clip`` is ``(clip_limit, uniform)``. For a tile of ``N`` pixels and ``B`` bins the
    limit is ``c = max(floor(clip_limit * N), 1)``, every bin above it is cut to ``c``,
    and the ``E`` counts cut off go back so that the total stays ``N``:

    - ``uniform`` (OpenCV's scheme): ``E // B`` to every bin, then one each to the bins
      ``0, s, 2s, ...`` for the ``r = E % B`` left (``s = B // r``). Full bins end above
      ``c``.
    - otherwise (Zuiderveld's scheme, as scikit-image runs it): ``c`` is at least
      ``ceil(N / B)``, and no bin rises above it: first ``min(E // B, c - h)`` to every
      bin ``h``, then the rest one at a time to the bins ``o, o + s, o + 2s, ...`` still
      below ``c``, with ``s = max(U // E_left, 1)`` for ``U`` bins below ``c`` and
      ``o = 0, 1, 2, ...`` for the successive sweeps, until nothing is left.

    ``clip_limit = 1`` clips nothing. The mapping is
    ``equalization_lut(clipped, levels, variant="seed")``: ``cumsum(clipped / N)``,
    times ``levels - 1`` and rounded half to even when ``levels`` is given.
    """
    luts, filled = out
    row_edges, col_edges = edges
    clip_limit, uniform = clip
    top = 0 if levels is None else levels - 1
    first, stop = tile_rows
    _tile_mappings(
        src,
        table,
        mask,
        row_edges,
        col_edges,
        clip_limit,
        uniform,
        top,
        scratch,
        luts,
        filled,
        first,
        stop,
    )


@_compiled
def _interpolate(  # type: ignore[no-untyped-def]
    src, table, luts, row_lo, row_hi, row_w, col_lo, col_hi, col_w, top, out, y0, y1
):
    for y in range(y0, y1):
        upper = luts[row_lo[y]]
        lower = luts[row_hi[y]]
        wy = row_w[y]
        row = src[y]
        out_row = out[y]
        for x in range(row.size):
            b = table[row[x]]
            lo_x = col_lo[x]
            hi_x = col_hi[x]
            wx = col_w[x]
            # a + w * (b - a) rather than (1 - w) * a + w * b: equal mappings then give
            # back exactly that mapping (one tile, or a pixel beyond the outer centres).
            a = float(upper[lo_x, b])
            upper_value = a + wx * (upper[hi_x, b] - a)
            a = float(lower[lo_x, b])
            lower_value = a + wx * (lower[hi_x, b] - a)
            value = upper_value + wy * (lower_value - upper_value)
            # No clamp needed: with weights in [0, 1], a + w * (b - a) stays between a
            # and b in floating point too, so the blend stays within the mappings' range.
            out_row[x] = np.rint(value) if top else value


def interpolate(
    src: NDArray[np.unsignedinteger],
    table: NDArray[np.unsignedinteger],
    luts: NDArray[Any],
    rows: tuple[NDArray[np.uintp], NDArray[np.uintp], NDArray[np.floating]],
    cols: tuple[NDArray[np.uintp], NDArray[np.uintp], NDArray[np.floating]],
    levels: int | None,
    out: NDArray[Any],
    band: tuple[int, int],
) -> None:
    """Map the pixels of rows ``band[0] <= y < band[1]`` through their tiles' mappings.

    Each pixel gets the bilinear blend of its bin's entry in the mappings of the four
    tiles around it: ``luts`` has shape ``(tiles_y, tiles_x, B)``; ``rows`` and ``cols``
    give, for each row (column), the tile before and after it and the weight of the one
    after. With ``levels`` (the mappings then hold output levels) the blend is rounded
    half to even.
    """
    top = 0 if levels is None else levels - 1
    row_lo, row_hi, row_w = rows
    col_lo, col_hi, col_w = cols
    _interpolate(
        src, table, luts, row_lo, row_hi, row_w, col_lo, col_hi, col_w, top, out, band[0], band[1]
    )
