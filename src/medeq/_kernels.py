"""Inner loops of the core: counting values into bins and mapping them through a table.

The core calls only these functions for per-pixel work. Each has two bodies with identical
results: compiled numba kernels (:mod:`medeq._jit`) and plain numpy. The numba ones are
used when numba imports; they are loaded on the first call, not at ``import medeq``, and
compiled once per argument type, then cached on disk. Setting the environment variable
``MEDEQ_DISABLE_JIT=1`` (before the first call) selects the numpy bodies.

Binning follows :class:`medeq.core.Binning`: integer data clipped to ``[lo, hi]``, offset
by ``lo`` and scaled exactly (``floor(offset * bins / span)``); float data scaled in
double precision and floored, clipped to the end bins.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import _parallel

_log = logging.getLogger(__name__)

#: Images with fewer pixels are done by the calling thread alone: handing out work costs
#: more than it saves there (measured on 2 cores; see docs/performance.md).
SERIAL_BELOW = 1 << 19
#: Smallest chunk on the parallel path. Chunks shrink as the work runs out (each takes
#: a share of what is left), so a thread that starts late or shares its core with
#: another process holds the others up by one small chunk at most; each chunk costs
#: about a microsecond to hand out.
MIN_CHUNK = 1 << 16
#: Images are counted in pieces of at most this many pixels, drained between pieces,
#: so the uint32 counters of one thread cannot wrap.
MAX_SPAN = 1 << 31

#: The numpy bodies work on pieces of this many pixels, so that the index arrays numpy
#: makes internally (8 bytes a pixel) stay small next to the image.
NUMPY_PIECE = 1 << 18
#: 8-bit images of at least this many pixels are mapped by byte pairs (see
#: medeq._jit.PAIRS): a quarter to 40% faster from 512x512 on, whatever the content; the
#: pair table costs about 10 us to build.
PAIRS_FROM = 1 << 18
#: ... and counted by byte pairs from this many pixels (1448x1448). Pair counters are
#: 512 KiB a thread, folded at the end: on smooth images (radiographs) counting is 15-30%
#: faster from about 2 Mpix on, at 1 Mpix no faster, and on noise that uses every pair
#: 20-65% slower below 2 Mpix (docs/performance.md).
COUNT_PAIRS_FROM = 1 << 21

_UNSET: Any = object()
_jit_module: Any = _UNSET
_numpy_only: ContextVar[bool] = ContextVar("medeq_numpy_kernels", default=False)


def loaded() -> bool:
    """Whether this process has already loaded the numba kernels."""
    return _jit_module is not _UNSET and _jit_module is not None


@contextlib.contextmanager
def numpy_kernels() -> Iterator[None]:
    """Use the numpy bodies within this block (in this thread), even if numba is loaded.

    Results are identical; only the speed differs. Loading numba's kernels costs about a
    second in a fresh process, more than the numpy bodies need for a few hundred
    CT slices, so a short-lived process with little to equalize is faster without them.
    """
    token = _numpy_only.set(True)
    try:
        yield
    finally:
        _numpy_only.reset(token)


def jit() -> ModuleType | None:
    """The numba kernels, imported on first use; None when numba is unavailable or disabled."""
    global _jit_module
    if _numpy_only.get():
        return None
    if _jit_module is _UNSET:
        if os.environ.get("MEDEQ_DISABLE_JIT", "").strip() not in ("", "0"):
            _jit_module = None
        else:
            module: ModuleType | None
            try:
                from . import _jit as module
            except ImportError as exc:
                _log.info("numba is unavailable (%s); using the numpy kernels", exc)
                module = None
            _jit_module = module
    return _jit_module  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- layout


def _as3d(a: NDArray[Any], flat: bool) -> NDArray[Any]:
    """``a`` as the 3-D array the kernels walk: ``(1, 1, size)`` when contiguous."""
    if flat:
        return a.reshape(1, 1, a.size)
    if a.ndim == 2:
        return a[np.newaxis]
    if a.ndim == 3:
        return a
    return a.reshape(-1, *a.shape[-2:])  # a copy only for a strided array of 4+ dimensions


def _count_layout(
    image: NDArray[Any], mask: NDArray[np.bool_] | None
) -> tuple[NDArray[Any], NDArray[np.uint8] | None]:
    """Image and mask (as uint8) presented alike; counting may visit pixels in any order."""
    arrays = [image] if mask is None else [image, mask]
    if not all(a.flags.c_contiguous for a in arrays) and all(a.flags.f_contiguous for a in arrays):
        arrays = [a.T for a in arrays]
    flat = all(a.flags.c_contiguous for a in arrays)
    d = _as3d(arrays[0], flat)
    # A strided mask is copied (one byte a pixel): one mask layout halves the variants
    # numba compiles.
    m = None if mask is None else np.ascontiguousarray(_as3d(arrays[1], flat)).view(np.uint8)
    return d, m


def _map_layout(image: NDArray[Any], dtype: np.dtype[Any]) -> tuple[NDArray[Any], NDArray[Any]]:
    """Input as 3-D and a new C-ordered output of the same shape, with its 3-D view."""
    out = np.empty(image.shape, dtype)
    d = _as3d(image, image.flags.c_contiguous)
    return d, out


_scratch = threading.local()
#: Sub-histogram buffers up to this size are kept for the next call (per thread).
_KEEP_SCRATCH = 16 << 20


def _sub_histograms(threads: int, nbins: int, nsub: int = 0) -> NDArray[np.uint32]:
    """Zeroed counters for the kernels, ``(threads, nsub, nbins + PAD)``; reused when small.

    The kernels leave them zero again. Keeping them saves allocating (and the operating
    system zeroing) up to 1 MiB per thread on every call, which costs more than counting
    a 512x512 slice. ``nsub`` 0: as many copies as suit ``nbins``.
    """
    from ._jit import NSUB, PAD

    if not nsub:
        nsub = NSUB if nbins <= 65536 else 1  # four copies of a huge histogram would thrash
    shape = (threads, nsub, nbins + PAD)
    cache: dict[tuple[int, ...], NDArray[np.uint32]] = _scratch.__dict__.setdefault("bufs", {})
    buf = cache.pop(shape, None)
    return np.zeros(shape, np.uint32) if buf is None else buf


def _keep(buf: NDArray[np.uint32]) -> None:
    """Hand counters that the kernels left zeroed back for reuse."""
    if buf.nbytes <= _KEEP_SCRATCH:
        cache: dict[tuple[int, ...], NDArray[np.uint32]] = _scratch.__dict__.setdefault("bufs", {})
        if len(cache) >= 4:
            cache.pop(next(iter(cache)))
        cache[buf.shape] = buf


# --------------------------------------------------------------------------- binning (numpy)


@functools.lru_cache(maxsize=32)
def dtype_limits(dtype: np.dtype[Any]) -> tuple[int, int]:
    """Smallest and largest value of an integer dtype (np.iinfo is slow to construct)."""
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def int_exact(lo: int, hi: int, bins: int) -> bool:
    """Whether integer binning over ``lo .. hi`` can be done in exact 64-bit arithmetic."""
    return hi < 2**63 and lo >= -(2**63) and (hi - lo + 1) * bins < 2**63


def bin_index(
    values: NDArray[Any], lo: float, hi: float, bins: int, integer: bool
) -> NDArray[np.intp]:
    """Bin index of every value (numpy), as intp with the shape of ``values``."""
    last = bins - 1
    if integer:
        ilo, ihi = int(lo), int(hi)
        span = ihi - ilo + 1
        # Clip in the native dtype first so the offset below cannot overflow.
        dmin, dmax = dtype_limits(values.dtype)
        a = min(max(ilo, dmin), dmax)
        b = max(min(ihi, dmax), dmin)
        clipped = np.clip(values, values.dtype.type(a), values.dtype.type(b))
        if int_exact(ilo, ihi, bins):
            offset = clipped.astype(np.int64) - np.int64(ilo)
            if ilo > dmax or ihi < dmin:
                # A value range beyond the dtype's own range: every value is below (or
                # above) it, and belongs in the first (or last) bin.
                np.clip(offset, 0, span - 1, out=offset)
            if bins != span:
                offset = (offset * bins) // span
            exact: NDArray[np.intp] = offset.astype(np.intp, copy=False)
            return exact
        # Spans near 2**64 only arise with 64-bit data: double precision is the best
        # available without a per-pixel Python integer.
        scaled = (clipped.astype(np.float64) - ilo) * (bins / span)
    elif hi == lo:
        return np.full(values.shape, bins // 2, dtype=np.intp)
    else:
        # Divide first: a subnormal span would make bins / span overflow to inf.
        scaled = (values.astype(np.float64) - lo) / (hi - lo) * bins
    index: NDArray[np.intp] = np.clip(np.floor(scaled), 0, last).astype(np.intp)
    return index


def _int_params(dtype: np.dtype[Any], lo: int, hi: int, bins: int) -> tuple[Any, ...]:
    """Arguments of the compiled integer binning: clip bounds in the data's dtype, etc."""
    dmin, dmax = dtype_limits(dtype)
    a = min(max(lo, dmin), dmax)
    b = max(min(hi, dmax), dmin)
    span = hi - lo + 1
    return dtype.type(a), dtype.type(b), lo, span, bins, 1.0 / span


def _jit_bins(
    image: NDArray[Any], lo: float, hi: float, bins: int, integer: bool
) -> tuple[ModuleType | None, NDArray[Any]]:
    """The kernels (None: use numpy) and the image in a dtype they take."""
    module = jit()
    if module is None:
        return None, image
    if integer:
        return (module if int_exact(int(lo), int(hi), bins) else None), image
    if hi == lo:
        return None, image
    # float16 widens to float32 exactly; numba has no float16 arithmetic on the CPU.
    return module, image.astype(np.float32) if image.dtype == np.float16 else image


# --------------------------------------------------------------------------- running chunks


def _chunks(start: int, stop: int) -> list[int]:
    """Chunk boundaries over ``[start, stop)``: one chunk, or shrinking ones for threads."""
    threads = _parallel.pool().threads
    size = stop - start
    if size < SERIAL_BELOW or threads == 1:
        return [start, stop]
    bounds = [start]
    while bounds[-1] < stop:
        step = max(MIN_CHUNK, (stop - bounds[-1]) // (2 * threads))
        bounds.append(min(stop, bounds[-1] + step))
    return bounds


def _share(bounds: list[int], call: Callable[..., None]) -> None:
    """Run the worker ``call(bounds, work, slot, *linger)`` on the pool's threads.

    See :mod:`medeq._jit` for the worker protocol and :mod:`medeq._parallel` for the
    threads.
    """
    edges = np.asarray(bounds, np.int64)
    work = np.zeros(2, np.int64)  # next chunk to claim, chunks finished
    nchunks = len(bounds) - 1
    workers = _parallel.pool()
    control = workers.control
    if nchunks == 1:
        call(edges, work, 0, control, -1, 0)
        return
    workers.run(
        lambda slot, generation, spins: call(edges, work, slot, control, generation, spins),
        lambda: int(work[1]) >= nchunks,
    )


def _count(
    module: ModuleType,
    size: int,
    nbins: int,
    count: Callable[..., None],
    pairs: bool = False,
) -> tuple[int, NDArray[np.int64]]:
    """Counts into ``nbins`` bins by the worker ``count(h, used, bounds, work, *linger)``.

    ``h`` is a thread's set of sub-histograms and ``used`` the range of bins it may have
    used. Returns ``(first, counts)`` for the bins used. ``pairs``: 8-bit values counted
    by byte pairs (``nbins`` 256; the counters are pair counters, see medeq._jit.PAIRS).
    """
    # After an exception the counters may not be zero: they are then not kept.
    threads = _parallel.pool().threads
    if pairs:
        from ._jit import PAIR_BINS, PAIR_SUB

        hs = _sub_histograms(threads, PAIR_BINS, PAIR_SUB)
    else:
        hs = _sub_histograms(threads, nbins)
    if size <= MAX_SPAN:
        result = _count_piece(module, hs, 0, size, count, pairs)
    else:
        total = np.zeros(nbins, np.int64)
        for piece in range(0, size, MAX_SPAN):
            length = min(MAX_SPAN, size - piece)
            first, counts = _count_piece(module, hs, piece, length, count, pairs)
            total[first : first + counts.size] += counts
        result = 0, total
    _keep(hs)
    return result


def _count_piece(
    module: ModuleType,
    hs: NDArray[np.uint32],
    piece: int,
    length: int,
    count: Callable[..., None],
    pairs: bool,
) -> tuple[int, NDArray[np.int64]]:
    """Count the pixels ``piece .. piece + length - 1``, then drain the counters."""
    used = np.empty((hs.shape[0], 2), np.int64)
    used[:, 0] = nbins_of(hs)
    used[:, 1] = -1
    _share(
        _chunks(piece, piece + length),
        lambda b, w, slot, *linger: count(hs[slot], used[slot], b, w, *linger),
    )
    ranges = [(slot, lo, hi) for slot, (lo, hi) in enumerate(used.tolist()) if lo <= hi]
    first = min(lo for _, lo, _ in ranges)
    counts = np.zeros(max(hi for _, _, hi in ranges) - first + 1, np.int64)
    for slot, lo, hi in ranges:
        if pairs:  # 8-bit values: bins 0 .. 255, as the kernel reports
            module.drain_pairs(hs[slot], counts)
        else:
            module.drain(hs[slot], lo, counts[lo - first : hi - first + 1])
    return first, counts


def nbins_of(hs: NDArray[np.uint32]) -> int:
    """Number of bins of a set of sub-histograms (they carry PAD spare counters)."""
    from ._jit import PAD

    return int(hs.shape[2]) - PAD


# --------------------------------------------------------------------------- kernels


def value_counts(
    image: NDArray[Any], mask: NDArray[np.bool_] | None
) -> tuple[int, NDArray[np.int64]]:
    """Counts of the values of 8/16-bit integer data (masked pixels only).

    Returns ``(first, counts)``: ``counts[k]`` is the number of pixels of value
    ``first + k``; values outside the returned run are absent.
    """
    base = dtype_limits(image.dtype)[0]
    module = jit()
    if module is None:
        # Raw bit patterns of negative values follow the positive ones; rolling the
        # counts puts them in value order.
        raw = image.view(np.dtype(f"u{image.dtype.itemsize}"))
        data = raw.ravel() if mask is None else raw[mask]
        nbins = 1 << (8 * image.dtype.itemsize)
        counts = np.zeros(nbins, np.int64)
        for start in range(0, data.size, NUMPY_PIECE):
            # Without minlength: the counts end at the piece's largest value.
            found = np.bincount(data[start : start + NUMPY_PIECE])
            counts[: found.size] += found
        if base:
            counts = np.roll(counts, -base)
        return base, counts.astype(np.int64, copy=False)
    d, m = _count_layout(image, mask)
    nbins = 1 << (8 * image.dtype.itemsize)
    # Pairs only for contiguous data (one long row): strided rows would take the single
    # counters for odd bytes, which a run of equal values slows down.
    pairs = nbins == 256 and m is None and d.flags.c_contiguous and image.size >= COUNT_PAIRS_FROM
    first, counts = _count(
        module, image.size, nbins, lambda h, *rest: module.count_raw(d, m, base, h, *rest), pairs
    )
    return base + first, counts


def map_values(table: NDArray[Any], image: NDArray[Any]) -> NDArray[Any]:
    """``table[image - min]`` for 8/16-bit integer data, ``min`` being the dtype's minimum.

    ``table`` has one entry per value of the dtype, in value order. Returns a new
    C-ordered array with the shape of ``image`` and the dtype of ``table``.
    """
    base = dtype_limits(image.dtype)[0]
    module = jit()
    if module is None:
        raw = image.view(np.dtype(f"u{image.dtype.itemsize}")).ravel()
        flat = np.empty(raw.size, table.dtype)
        # Indexed by bit pattern: negative values' patterns follow the positive ones.
        by_pattern = np.roll(table, base) if base else table
        for start in range(0, raw.size, NUMPY_PIECE):
            np.take(
                by_pattern, raw[start : start + NUMPY_PIECE], out=flat[start : start + NUMPY_PIECE]
            )
        return flat.reshape(image.shape)
    return _map_raw(module, image, table, base)


def _map_raw(
    module: ModuleType, image: NDArray[Any], table: NDArray[Any], base: int
) -> NDArray[Any]:
    """``table[image - base]`` by the compiled kernels, on the pool's threads when large."""
    d, out = _map_layout(image, table.dtype)
    o = out.reshape(d.shape)
    pairs = _NO_PAIRS
    if table.size == 256 and _by_pairs(d, table.dtype):
        pairs = np.empty(module.PAIRS, np.uint16)
        module.pair_table(table, -base, pairs)
    _share(
        _chunks(0, image.size),
        lambda b, w, _, *linger: module.map_raw(d, table, pairs, o, base, b, w, *linger),
    )
    return out


def _by_pairs(d: NDArray[Any], out_dtype: np.dtype[Any]) -> bool:
    """Whether the kernels map ``d`` (their 3-D view of an image) by byte pairs."""
    return (
        d.itemsize == 1
        and out_dtype.itemsize == 1
        and d.flags.c_contiguous  # rows of strided data are mapped byte by byte
        and d.size >= PAIRS_FROM
    )


#: ``map_raw``'s pair table when it maps without one.
_NO_PAIRS = np.empty(0, np.uint16)
#: ``equalize_values``' counters for 8-bit data, which it makes itself.
_NO_COUNTERS = np.empty((1, 0, 0), np.uint32)


def equalize_levels(
    image: NDArray[Any], levels: int, out_dtype: np.dtype[Any], seed: bool
) -> NDArray[Any] | None:
    """Global equalization, one bin per level, of unmasked uint8, uint16 or int16 data.

    The general path (:mod:`medeq.core`) makes a dozen numpy calls on the counts and a
    table of every value between its kernels: about 90 us a call for 8-bit data and
    110-220 us for 16-bit, which on a 512x512 image is a third of the time. Here an image
    the calling thread does alone (fewer than ``SERIAL_BELOW`` pixels, or one thread)
    is counted, given its LUT and mapped in one compiled call
    (``medeq._jit.equalize_values``); a larger one is counted and mapped on all threads,
    its LUT made in between by the same compiled code (``medeq._jit.level_lut``). The
    output has ``out_dtype`` (the LUT's, which ``levels`` decides). None when the kernels
    are not loaded, or when a single level is present and the standard formula applies
    (the general path then hands the image back as it is).
    """
    module = jit()
    if module is None:
        return None
    base = dtype_limits(image.dtype)[0]
    if image.size < SERIAL_BELOW or _parallel.pool().threads == 1:
        if image.size > MAX_SPAN:
            # One call counts in one piece: beyond this its uint32 counters could wrap.
            return None
        d, out = _map_layout(image, out_dtype)
        words = image.dtype.itemsize == 2
        h = _sub_histograms(1, 65536) if words else _NO_COUNTERS
        done = module.equalize_values(
            d, base, levels, seed, _by_pairs(d, out_dtype), h[0], out.reshape(d.shape)
        )
        if words:
            _keep(h)
        return out if done else None
    first, counts = value_counts(image, None)
    lut = np.empty(counts.size, out_dtype)
    if not module.level_lut(counts, levels, seed, lut):
        return None
    return _map_raw(module, image, lut, first)


def bin_counts(
    image: NDArray[Any],
    mask: NDArray[np.bool_] | None,
    lo: float,
    hi: float,
    bins: int,
    integer: bool,
) -> NDArray[np.int64]:
    """Counts of the (masked) pixels in each of ``bins`` bins over ``[lo, hi]``."""
    module, data = _jit_bins(image, lo, hi, bins, integer)
    if module is None:
        index = bin_index(image, lo, hi, bins, integer)
        selected = index.ravel() if mask is None else index[mask]
        return np.bincount(selected, minlength=bins).astype(np.int64, copy=False)
    d, m = _count_layout(data, mask)
    if integer:
        args = _int_params(data.dtype, int(lo), int(hi), bins)

        def count_chunk(h: Any, *rest: Any) -> None:
            module.count_int(d, m, *args, h, *rest)

    else:
        fargs = (float(lo), float(hi) - float(lo), float(bins))

        def count_chunk(h: Any, *rest: Any) -> None:
            module.count_float(d, m, *fargs, bins - 1, h, *rest)

    first, counts = _count(module, data.size, bins, count_chunk)
    if first != 0 or counts.size != bins:
        full = np.zeros(bins, np.int64)
        full[first : first + counts.size] = counts
        return full
    return counts


def map_bins(
    image: NDArray[Any], lut: NDArray[Any], lo: float, hi: float, integer: bool
) -> NDArray[Any]:
    """``lut[bin(image)]`` with ``lut.size`` bins over ``[lo, hi]``, as a new C-ordered array."""
    bins = lut.size
    module, data = _jit_bins(image, lo, hi, bins, integer)
    if module is None:
        return np.take(lut, bin_index(image, lo, hi, bins, integer))
    d, out = _map_layout(data, lut.dtype)
    o = out.reshape(d.shape)
    if integer:
        args = _int_params(data.dtype, int(lo), int(hi), bins)
        _share(
            _chunks(0, data.size),
            lambda b, w, _, *linger: module.map_int(d, lut, o, *args, b, w, *linger),
        )
    else:
        fargs = (float(lo), float(hi) - float(lo), float(bins))
        _share(
            _chunks(0, data.size),
            lambda b, w, _, *linger: module.map_float(d, lut, o, *fargs, b, w, *linger),
        )
    return out


def min_max(image: NDArray[Any], mask: NDArray[np.bool_] | None) -> tuple[Any, Any]:
    """Minimum and maximum of the (masked) pixels, as scalars of the image's dtype.

    ``mask`` must select at least one pixel.
    """
    module = jit()
    if module is None or image.dtype == np.float16:
        data = image if mask is None else image[mask]
        return data.min(), data.max()
    d, m = _count_layout(image, mask)
    threads = _parallel.pool().threads
    found = np.zeros(threads, np.uint8)
    los = np.empty(threads, image.dtype)
    his = np.empty(threads, image.dtype)
    _share(
        _chunks(0, image.size),
        lambda b, w, slot, *linger: module.min_max(d, m, found, los, his, slot, b, w, *linger),
    )
    assert found.any(), "min_max needs a mask that selects a pixel"
    return los[found == 1].min(), his[found == 1].max()


def count(indices: NDArray[np.integer], length: int) -> NDArray[np.int64]:
    """Count how often each value in ``0 .. length-1`` occurs in ``indices``.

    Indices outside that range are counted in the end bins.
    """
    if indices.dtype.kind not in "iu" or indices.dtype.itemsize > 8 or jit() is None:
        clipped = np.clip(indices.ravel(), 0, length - 1)
        return np.bincount(clipped, minlength=length).astype(np.int64, copy=False)
    return bin_counts(indices, None, 0, length - 1, length, True)


def apply_lut(lut: NDArray[np.generic], indices: NDArray[np.integer]) -> NDArray[np.generic]:
    """Return ``lut[indices]`` with the shape of ``indices``; indices outside are clipped."""
    if indices.dtype.kind not in "iu" or jit() is None:
        return np.take(lut, indices, mode="clip")
    return map_bins(indices, lut, 0, lut.size - 1, True)


def warm_up(dtypes: tuple[type[np.integer], ...] = (np.int16, np.uint16)) -> None:
    """Load (or compile) the kernels that equalizing images of ``dtypes`` will call.

    Loading the compiled kernels from numba's disk cache takes about a second in a fresh
    process. A caller that knows equalization is coming (a conversion, which reads and
    decodes files first) runs this on a background thread so that the second overlaps
    with its file work. With the numpy bodies selected this does nothing.
    """
    module = jit()
    if module is None:
        return
    pixels = SERIAL_BELOW + 1
    for dtype in dtypes:
        lo, hi = dtype_limits(np.dtype(dtype))
        image = np.linspace(max(lo, -1024), min(hi, 4095), pixels).astype(dtype)
        min_max(image, None)
        value_counts(image, None)
        map_values(np.zeros(hi - lo + 1, np.uint16), image)
    for lut_dtype in (np.uint8, np.uint16):  # the LUT of equalize_levels' threaded path
        module.level_lut(np.ones(2, np.int64), 256, False, np.empty(2, lut_dtype))
