"""numba bodies of the kernels in :mod:`medeq._kernels`; imported on the first kernel call.

Importing this module imports numba but compiles nothing: numba compiles each function for
the argument types of its first call and caches the machine code on disk (see ``_jit``).

Conventions shared by every function here:

- Arrays are 3-D: :mod:`medeq._kernels` presents a contiguous array of any shape as
  ``(1, 1, size)`` and a strided one as ``(P, M, N)``, so one body serves both.
- Work is split into chunks of the flat index range, ``bounds[c] .. bounds[c + 1]``.
  The public functions are workers: every thread that takes part calls the same one,
  and each call takes chunks from the shared counter ``work[0]`` (an atomic add) until
  none are left, counting finished ones in ``work[1]``. A thread thus needs the GIL once
  per call, not once per chunk, and the functions release it (``nogil``). Helper
  threads then linger (``control``, ``generation``, ``spins``: see ``_linger``).
- Counting adds to ``NSUB`` sub-histograms of uint32 ``h`` (one set per thread, fewer
  than 2**32 pixels each) that the caller allocates once and that are zero on entry;
  ``drain`` adds them up and leaves them zero again. Allocating them per call would cost
  more than counting a small image.
- Results a thread must hand back (the bins it used, its minimum and maximum) are written
  to its own slot of an array before its chunk counts as finished.
- Masks arrive as uint8 (0 or 1).
- Indices are cast to unsigned before they index an array: numba then skips its test
  for negative (from-the-end) indices, which costs a third of the counting loop.

Binning is written out here and in numpy in :mod:`medeq._kernels`; the tests hold the
two to identical results.

The exceptions are the functions of the short path (``equalize_values``, ``level_lut``):
they run on the calling thread alone, from counting to mapping, and hold the
equalization LUT of :func:`medeq.core._lut` written out (the tests hold it to that
function too).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

_log = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])

#: Sub-histograms per span. Counting consecutive pixels into different copies breaks the
#: store-to-load dependency that a run of equal values (air, background) would otherwise
#: put on a single counter.
NSUB = 4
#: Padding (uint32 counters) after each sub-histogram: with 65536 bins the copies would
#: otherwise sit 256 KiB apart, and the CPU mistakes equal low address bits for a
#: dependency between them (4 KiB aliasing).
PAD = 16
#: The low byte of a 64-bit word.
_BYTE = np.uint64(0xFF)
#: Byte pairs: 8-bit data are counted and mapped two bytes at a time, as 16-bit
#: patterns. Counting halves the counter updates (the pair counts are then folded into
#: byte counts); mapping goes through a table of 65536 byte pairs (built from the 256
#: entries) and halves the table lookups. Pair counters come in two copies of
#: ``PAIR_BINS`` (the pairs, then 256 for the odd bytes at the ends of a row).
PAIRS = 65536
PAIR_BINS = PAIRS + 256
PAIR_SUB = 2
_PAIR = np.uint64(0xFFFF)


def _jit() -> Callable[[_F], _F]:
    """``numba.njit`` with an on-disk cache, or without one when no folder is writable.

    numba writes the cache to ``__pycache__`` beside this file; when that folder is
    read-only (a system-wide install) it uses ``$NUMBA_CACHE_DIR`` or the user's cache
    folder (``~/.cache/numba``). When neither is writable numba refuses ``cache=True``;
    the kernels then compile in every new process instead of failing.
    """

    def decorate(func: _F) -> _F:
        jitted: Any
        try:
            jitted = numba.njit(cache=True, nogil=True)(func)
        except RuntimeError as exc:  # "cannot cache function ...: no locator available"
            _log.warning("medeq kernels are not cached on disk (%s); set NUMBA_CACHE_DIR", exc)
            jitted = numba.njit(cache=False, nogil=True)(func)
        return jitted  # type: ignore[no-any-return]

    return decorate


# --------------------------------------------------------------------------- sharing work


def _fetch_add_impl(typingctx: Any, counters: Any, index: Any) -> Any:
    """Atomically add 1 to ``counters[index]`` (int64) and return the value before."""
    if not (isinstance(counters, types.Array) and counters.dtype == types.int64):
        return None
    signature = types.int64(counters, index)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        array = context.make_array(sig.args[0])(context, builder, value=args[0])
        position = context.cast(builder, args[1], sig.args[1], types.intp)
        pointer = builder.gep(array.data, [position], inbounds=True)
        one = context.get_constant(types.int64, 1)
        return builder.atomic_rmw("add", pointer, one, "seq_cst")

    return signature, codegen


_fetch_add: Any = intrinsic(_fetch_add_impl)


def _load_impl(typingctx: Any, counters: Any) -> Any:
    """Read ``counters[0]`` (int64) afresh on every call, as another thread may change it."""
    if not (isinstance(counters, types.Array) and counters.dtype == types.int64):
        return None
    signature = types.int64(counters)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        array = context.make_array(sig.args[0])(context, builder, value=args[0])
        return builder.load_atomic(array.data, "acquire", 8)

    return signature, codegen


_load: Any = intrinsic(_load_impl)


@_jit()
def _claim(bounds: Any, work: Any) -> int:
    """The next chunk for this thread, or -1 when none is left."""
    chunk = _fetch_add(work, 0)
    return chunk if chunk < bounds.size - 1 else -1


@_jit()
def _finished(work: Any) -> None:
    _fetch_add(work, 1)


@_jit()
def _linger(control: Any, generation: int, spins: int) -> None:
    """Stay in compiled code, without the GIL, until the pool hands out another job.

    For helper threads (``spins`` > 0; the caller passes 0). A helper returning to Python
    at once would queue for the GIL while the caller runs the Python between two jobs
    (the LUT between counting and mapping), and every hand-over of the GIL costs a
    thread wake-up. ``generation`` is this job's number, ``control[0]`` the newest job's.
    """
    for _ in range(spins):
        if _load(control) != generation:
            return


# --------------------------------------------------------------------------- per value


@_jit()
def _int_bin(v: Any, a: Any, b: Any, lo: int, span: int, bins: int, inv: float) -> int:
    """Bin of integer ``v``: clipped to ``[a, b]`` in its own dtype, offset, scaled exactly."""
    if v < a:
        v = a
    elif v > b:
        v = b
    off = np.int64(v) - lo
    # Only a value range beyond the dtype's own range leaves the offset outside.
    if off < 0:
        off = 0
    elif off >= span:
        off = span - 1
    if bins == span:
        return np.uint64(off)  # type: ignore[no-any-return]
    # floor(off * bins / span) without a 64-bit division per pixel: the float estimate is
    # off by at most one (the quotient is below 2**24), and one exact check corrects it.
    t = off * bins
    q = np.int64(t * inv)
    if q * span > t:
        q -= 1
    elif (q + 1) * span <= t:
        q += 1
    return np.uint64(q)  # type: ignore[no-any-return]


@_jit()
def _float_bin(v: Any, lo: float, span: float, fbins: float, last: int) -> int:
    """Bin of float ``v``, clipped to ``[0, last]``."""
    # Dividing first, as the core does: bins / span would overflow for a subnormal span.
    x = np.floor((np.float64(v) - lo) / span * fbins)
    if x <= 0.0:
        return np.uint64(0)  # type: ignore[no-any-return]
    if x >= last:
        return np.uint64(last)  # type: ignore[no-any-return]
    return np.uint64(x)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- per row


@_jit()
def _byte_words(row: Any) -> tuple[int, int]:
    """Where the 64-bit words of a row of bytes begin and end: ``(head, stop)``.

    ``row[head:stop]`` is a whole number of 8-byte-aligned words, or empty when the row
    is strided or too short to hold one.
    """
    n = row.size
    if n < 16 or row.strides[0] != 1:
        return 0, 0
    head = (8 - row.ctypes.data % 8) % 8
    return head, head + (n - head) // 8 * 8


@_jit()
def _count_byte_words(words: Any, h: Any, flip: int) -> None:
    """Count the eight 8-bit values of each word (bin: bit pattern ^ ``flip``).

    One 64-bit load and shifts instead of eight byte loads: about 15% faster than
    :func:`_count_raw_row` on 8-bit images.
    """
    f = np.uint64(flip) * np.uint64(0x0101010101010101)
    for i in range(words.size):
        x = words[i] ^ f
        h[0, x & _BYTE] += 1
        h[1, (x >> np.uint64(8)) & _BYTE] += 1
        h[2, (x >> np.uint64(16)) & _BYTE] += 1
        h[3, (x >> np.uint64(24)) & _BYTE] += 1
        h[0, (x >> np.uint64(32)) & _BYTE] += 1
        h[1, (x >> np.uint64(40)) & _BYTE] += 1
        h[2, (x >> np.uint64(48)) & _BYTE] += 1
        h[3, x >> np.uint64(56)] += 1


@_jit()
def _map_byte_words(words: Any, table: Any, out: Any, flip: int) -> None:
    """``out = table[bit pattern ^ flip]`` for 8-bit values and output, a word at a time.

    Entries are taken as bytes (a signed entry would otherwise spill its sign into the
    neighbouring bytes of the word).
    """
    f = np.uint64(flip) * np.uint64(0x0101010101010101)
    for i in range(words.size):
        x = words[i] ^ f
        y = np.uint64(np.uint8(table[x & _BYTE]))
        y |= np.uint64(np.uint8(table[(x >> np.uint64(8)) & _BYTE])) << np.uint64(8)
        y |= np.uint64(np.uint8(table[(x >> np.uint64(16)) & _BYTE])) << np.uint64(16)
        y |= np.uint64(np.uint8(table[(x >> np.uint64(24)) & _BYTE])) << np.uint64(24)
        y |= np.uint64(np.uint8(table[(x >> np.uint64(32)) & _BYTE])) << np.uint64(32)
        y |= np.uint64(np.uint8(table[(x >> np.uint64(40)) & _BYTE])) << np.uint64(40)
        y |= np.uint64(np.uint8(table[(x >> np.uint64(48)) & _BYTE])) << np.uint64(48)
        y |= np.uint64(np.uint8(table[x >> np.uint64(56)])) << np.uint64(56)
        out[i] = y


@_jit()
def _count_byte_pairs(words: Any, h: Any, flip: int) -> None:
    """Count the four byte pairs of each word into pair counters ``h`` (see ``PAIRS``).

    Two copies take alternate pairs, so that a run of equal pairs (a flat background)
    does not make each update wait for the one before.
    """
    f = np.uint64(flip) * np.uint64(0x0101010101010101)
    for i in range(words.size):
        x = words[i] ^ f
        h[0, x & _PAIR] += 1
        h[1, (x >> np.uint64(16)) & _PAIR] += 1
        h[0, (x >> np.uint64(32)) & _PAIR] += 1
        h[1, x >> np.uint64(48)] += 1


@_jit()
def _count_odd_bytes(row: Any, mrow: Any, h: Any, base: int) -> None:
    """Count 8-bit values (masked ones only) into the byte counters after the pairs."""
    for i in range(row.size):
        if mrow is None or mrow[i]:
            h[0, PAIRS + np.uint64(np.int64(row[i]) - base)] += 1


@_jit()
def drain_pairs(h: Any, out: Any) -> None:
    """Add the byte counts held in pair counters ``h`` to ``out`` (256 bins); zero them."""
    for s in range(h.shape[0]):
        for hi in range(256):
            pairs = h[s, hi * 256 : hi * 256 + 256]
            total = 0
            for lo in range(256):
                c = pairs[lo]
                total += c
                out[lo] += c
                pairs[lo] = 0
            out[hi] += total
        odd = h[s, PAIRS : PAIRS + 256]
        for v in range(256):
            out[v] += odd[v]
            odd[v] = 0


@_jit()
def _count_raw_row(row: Any, mrow: Any, h: Any, base: int) -> None:
    if row.itemsize == 1 and h.shape[1] == PAIR_BINS + PAD:  # pair counters
        head, stop = _byte_words(row) if mrow is None else (0, 0)
        if stop > head:
            _count_odd_bytes(row[:head], None, h, base)
            _count_byte_pairs(row[head:stop].view(np.uint64), h, -base)
            _count_odd_bytes(row[stop:], None, h, base)
        else:
            _count_odd_bytes(row, mrow, h, base)
        return
    if row.itemsize == 1 and mrow is None:
        head, stop = _byte_words(row)
        if stop > head:
            _count_values(row[:head], None, h, base)
            _count_byte_words(row[head:stop].view(np.uint64), h, -base)
            _count_values(row[stop:], None, h, base)
            return
    _count_values(row, mrow, h, base)


@_jit()
def _count_values(row: Any, mrow: Any, h: Any, base: int) -> None:
    n = row.size
    n4 = n - n % NSUB
    if mrow is None:
        for i in range(0, n4, NSUB):
            h[0, np.uint64(np.int64(row[i]) - base)] += 1
            h[1, np.uint64(np.int64(row[i + 1]) - base)] += 1
            h[2, np.uint64(np.int64(row[i + 2]) - base)] += 1
            h[3, np.uint64(np.int64(row[i + 3]) - base)] += 1
        for i in range(n4, n):
            h[0, np.uint64(np.int64(row[i]) - base)] += 1
    else:
        # Adding the mask value instead of branching on it: masks have long runs of both.
        for i in range(0, n4, NSUB):
            h[0, np.uint64(np.int64(row[i]) - base)] += mrow[i]
            h[1, np.uint64(np.int64(row[i + 1]) - base)] += mrow[i + 1]
            h[2, np.uint64(np.int64(row[i + 2]) - base)] += mrow[i + 2]
            h[3, np.uint64(np.int64(row[i + 3]) - base)] += mrow[i + 3]
        for i in range(n4, n):
            h[0, np.uint64(np.int64(row[i]) - base)] += mrow[i]


@_jit()
def _count_int_row(
    row: Any, mrow: Any, h: Any, a: Any, b: Any, lo: int, span: int, bins: int, inv: float
) -> None:
    n = row.size
    n4 = n - n % NSUB if h.shape[0] == NSUB else 0
    if mrow is None:
        for i in range(0, n4, NSUB):
            h[0, _int_bin(row[i], a, b, lo, span, bins, inv)] += 1
            h[1, _int_bin(row[i + 1], a, b, lo, span, bins, inv)] += 1
            h[2, _int_bin(row[i + 2], a, b, lo, span, bins, inv)] += 1
            h[3, _int_bin(row[i + 3], a, b, lo, span, bins, inv)] += 1
        for i in range(n4, n):
            h[0, _int_bin(row[i], a, b, lo, span, bins, inv)] += 1
    else:
        for i in range(0, n4, NSUB):
            h[0, _int_bin(row[i], a, b, lo, span, bins, inv)] += mrow[i]
            h[1, _int_bin(row[i + 1], a, b, lo, span, bins, inv)] += mrow[i + 1]
            h[2, _int_bin(row[i + 2], a, b, lo, span, bins, inv)] += mrow[i + 2]
            h[3, _int_bin(row[i + 3], a, b, lo, span, bins, inv)] += mrow[i + 3]
        for i in range(n4, n):
            h[0, _int_bin(row[i], a, b, lo, span, bins, inv)] += mrow[i]


@_jit()
def _count_float_row(
    row: Any, mrow: Any, h: Any, lo: float, span: float, fbins: float, last: int
) -> None:
    n = row.size
    n4 = n - n % NSUB if h.shape[0] == NSUB else 0
    if mrow is None:
        for i in range(0, n4, NSUB):
            h[0, _float_bin(row[i], lo, span, fbins, last)] += 1
            h[1, _float_bin(row[i + 1], lo, span, fbins, last)] += 1
            h[2, _float_bin(row[i + 2], lo, span, fbins, last)] += 1
            h[3, _float_bin(row[i + 3], lo, span, fbins, last)] += 1
        for i in range(n4, n):
            h[0, _float_bin(row[i], lo, span, fbins, last)] += 1
    else:
        for i in range(0, n4, NSUB):
            h[0, _float_bin(row[i], lo, span, fbins, last)] += mrow[i]
            h[1, _float_bin(row[i + 1], lo, span, fbins, last)] += mrow[i + 1]
            h[2, _float_bin(row[i + 2], lo, span, fbins, last)] += mrow[i + 2]
            h[3, _float_bin(row[i + 3], lo, span, fbins, last)] += mrow[i + 3]
        for i in range(n4, n):
            h[0, _float_bin(row[i], lo, span, fbins, last)] += mrow[i]


@_jit()
def pair_table(table: Any, flip: int, pairs: Any) -> None:
    """``pairs[p]``: the two output bytes of 16-bit pattern ``p`` of two input bytes.

    ``table`` has one byte per value (bin ``k`` is bit pattern ``k ^ flip``); the low byte
    of a pair maps to the low byte of its entry, the high to the high.
    """
    for hi in range(256):
        high = np.uint16(np.uint8(table[hi ^ flip])) << np.uint16(8)
        for lo in range(256):
            pairs[hi * 256 + lo] = high | np.uint16(np.uint8(table[lo ^ flip]))


@_jit()
def _map_pair_words(words: Any, pairs: Any, out: Any) -> None:
    """``out`` = each word's four byte pairs through ``pairs`` (see :func:`pair_table`)."""
    for i in range(words.size):
        x = words[i]
        y = np.uint64(pairs[x & _PAIR])
        y |= np.uint64(pairs[(x >> np.uint64(16)) & _PAIR]) << np.uint64(16)
        y |= np.uint64(pairs[(x >> np.uint64(32)) & _PAIR]) << np.uint64(32)
        y |= np.uint64(pairs[x >> np.uint64(48)]) << np.uint64(48)
        out[i] = y


@_jit()
def _map_raw_row(row: Any, table: Any, pairs: Any, orow: Any, base: int) -> None:
    if row.itemsize == 1 and orow.itemsize == 1:
        head, stop = _byte_words(row)
        if stop > head and orow.strides[0] == 1 and orow.ctypes.data % 8 == row.ctypes.data % 8:
            _map_values(row[:head], table, orow[:head], base)
            words = row[head:stop].view(np.uint64)
            out = orow[head:stop].view(np.uint64)
            if pairs.size == PAIRS:
                _map_pair_words(words, pairs, out)
            else:
                _map_byte_words(words, table, out, -base)
            _map_values(row[stop:], table, orow[stop:], base)
            return
    _map_values(row, table, orow, base)


@_jit()
def _map_values(row: Any, table: Any, orow: Any, base: int) -> None:
    for i in range(row.size):
        orow[i] = table[np.uint64(np.int64(row[i]) - base)]


@_jit()
def _map_int_row(
    row: Any, lut: Any, orow: Any, a: Any, b: Any, lo: int, span: int, bins: int, inv: float
) -> None:
    for i in range(row.size):
        orow[i] = lut[_int_bin(row[i], a, b, lo, span, bins, inv)]


@_jit()
def _map_float_row(
    row: Any, lut: Any, orow: Any, lo: float, span: float, fbins: float, last: int
) -> None:
    for i in range(row.size):
        orow[i] = lut[_float_bin(row[i], lo, span, fbins, last)]


# --------------------------------------------------------------------------- span helpers


@_jit()
def _row_at(d: Any, k: int, stop: int) -> tuple[int, int, int, int]:
    """The row holding flat index ``k``, and its columns that lie in ``[k, stop)``."""
    ncol = d.shape[2]
    r = k // ncol
    c0 = k - r * ncol
    c1 = min(ncol, c0 + (stop - k))
    p = r // d.shape[1]
    return p, r - p * d.shape[1], c0, c1


@_jit()
def drain(h: Any, first: int, out: Any) -> None:
    """Add bins ``first .. first + out.size - 1`` of the sub-histograms to ``out``; zero them."""
    for s in range(h.shape[0]):
        for k in range(out.size):
            out[k] += h[s, first + k]
            h[s, first + k] = 0


@_jit()
def _min_max_all(d: Any, start: int, stop: int) -> tuple[Any, Any]:
    """Minimum and maximum of every value in ``[start, stop)`` (not empty)."""
    p, q, c0, _ = _row_at(d, start, stop)
    lo = d[p, q, c0]
    hi = lo
    k = start
    while k < stop:
        p, q, c0, c1 = _row_at(d, k, stop)
        row = d[p, q, c0:c1]
        for i in range(row.size):
            v = row[i]
            if v < lo:
                lo = v
            if v > hi:
                hi = v
        k += c1 - c0
    return lo, hi


@_jit()
def _count_raw_chunk(d: Any, m: Any, base: int, h: Any, start: int, stop: int) -> tuple[int, int]:
    """Count 8/16-bit values into ``h`` (bin ``k`` is the value ``base + k``).

    Returns the range of bins that may have been used: for 16-bit data those between the
    chunk's minimum and maximum, masked or not.
    """
    if d.itemsize == 1:
        # 256 bins: draining them all costs less than finding the range.
        first, last = 0, 255
    else:
        lo, hi = _min_max_all(d, start, stop)
        first, last = np.int64(lo) - base, np.int64(hi) - base
    k = start
    while k < stop:
        p, q, c0, c1 = _row_at(d, k, stop)
        if m is None:
            _count_raw_row(d[p, q, c0:c1], None, h, base)
        else:
            _count_raw_row(d[p, q, c0:c1], m[p, q, c0:c1], h, base)
        k += c1 - c0
    return first, last


@_jit()
def _count_int_chunk(
    d: Any,
    m: Any,
    a: Any,
    b: Any,
    lo: int,
    span: int,
    bins: int,
    inv: float,
    h: Any,
    start: int,
    stop: int,
) -> None:
    k = start
    while k < stop:
        p, q, c0, c1 = _row_at(d, k, stop)
        if m is None:
            _count_int_row(d[p, q, c0:c1], None, h, a, b, lo, span, bins, inv)
        else:
            _count_int_row(d[p, q, c0:c1], m[p, q, c0:c1], h, a, b, lo, span, bins, inv)
        k += c1 - c0


@_jit()
def _count_float_chunk(
    d: Any, m: Any, lo: float, span: float, fbins: float, last: int, h: Any, start: int, stop: int
) -> None:
    k = start
    while k < stop:
        p, q, c0, c1 = _row_at(d, k, stop)
        if m is None:
            _count_float_row(d[p, q, c0:c1], None, h, lo, span, fbins, last)
        else:
            _count_float_row(d[p, q, c0:c1], m[p, q, c0:c1], h, lo, span, fbins, last)
        k += c1 - c0


# --------------------------------------------------------------------------- maps and ranges


@_jit()
def _map_raw_chunk(
    d: Any, table: Any, pairs: Any, out: Any, base: int, start: int, stop: int
) -> None:
    """``out = table[d - base]`` over ``[start, stop)``."""
    k = start
    while k < stop:
        p, q, c0, c1 = _row_at(d, k, stop)
        _map_raw_row(d[p, q, c0:c1], table, pairs, out[p, q, c0:c1], base)
        k += c1 - c0


@_jit()
def _map_int_chunk(
    d: Any,
    lut: Any,
    out: Any,
    a: Any,
    b: Any,
    lo: int,
    span: int,
    bins: int,
    inv: float,
    start: int,
    stop: int,
) -> None:
    """``out = lut[bin(d)]`` for integer data over ``[start, stop)``."""
    k = start
    while k < stop:
        p, q, c0, c1 = _row_at(d, k, stop)
        _map_int_row(d[p, q, c0:c1], lut, out[p, q, c0:c1], a, b, lo, span, bins, inv)
        k += c1 - c0


@_jit()
def _map_float_chunk(
    d: Any, lut: Any, out: Any, lo: float, span: float, fbins: float, start: int, stop: int
) -> None:
    """``out = lut[bin(d)]`` for float data over ``[start, stop)``."""
    last = lut.size - 1
    k = start
    while k < stop:
        p, q, c0, c1 = _row_at(d, k, stop)
        _map_float_row(d[p, q, c0:c1], lut, out[p, q, c0:c1], lo, span, fbins, last)
        k += c1 - c0


@_jit()
def _min_max_chunk(d: Any, m: Any, start: int, stop: int) -> tuple[bool, Any, Any]:
    """``(found, min, max)`` of the (masked) values in ``[start, stop)`` (not empty)."""
    if m is None:
        lo, hi = _min_max_all(d, start, stop)
        return True, lo, hi
    found = False
    lo = d[0, 0, 0]
    hi = lo
    k = start
    while k < stop:
        p, q, c0, c1 = _row_at(d, k, stop)
        row = d[p, q, c0:c1]
        mrow = m[p, q, c0:c1]
        for i in range(row.size):
            if mrow[i]:
                v = row[i]
                if not found:
                    lo = v
                    hi = v
                    found = True
                elif v < lo:
                    lo = v
                elif v > hi:
                    hi = v
        k += c1 - c0
    return found, lo, hi


# --------------------------------------------------------------------------- workers


@_jit()
def count_raw(
    d: Any,
    m: Any,
    base: int,
    h: Any,
    used: Any,
    bounds: Any,
    work: Any,
    control: Any,
    generation: int,
    spins: int,
) -> None:
    """Count 8/16-bit values (bin ``k`` is the value ``base + k``) into ``h``.

    ``used`` (``[first, last]``, start it empty) grows to the bins this thread may have
    used.
    """
    while True:
        c = _claim(bounds, work)
        if c < 0:
            _linger(control, generation, spins)
            return
        first, last = _count_raw_chunk(d, m, base, h, bounds[c], bounds[c + 1])
        used[0] = min(used[0], first)
        used[1] = max(used[1], last)
        _finished(work)


@_jit()
def count_int(
    d: Any,
    m: Any,
    a: Any,
    b: Any,
    lo: int,
    span: int,
    bins: int,
    inv: float,
    h: Any,
    used: Any,
    bounds: Any,
    work: Any,
    control: Any,
    generation: int,
    spins: int,
) -> None:
    """Count integer data into ``bins`` bins (see ``_int_bin``); ``used`` as ``count_raw``."""
    while True:
        c = _claim(bounds, work)
        if c < 0:
            _linger(control, generation, spins)
            return
        _count_int_chunk(d, m, a, b, lo, span, bins, inv, h, bounds[c], bounds[c + 1])
        used[0] = 0
        used[1] = bins - 1
        _finished(work)


@_jit()
def count_float(
    d: Any,
    m: Any,
    lo: float,
    span: float,
    fbins: float,
    last: int,
    h: Any,
    used: Any,
    bounds: Any,
    work: Any,
    control: Any,
    generation: int,
    spins: int,
) -> None:
    """Count float data into ``last + 1`` bins (see ``_float_bin``); ``used`` as above."""
    while True:
        c = _claim(bounds, work)
        if c < 0:
            _linger(control, generation, spins)
            return
        _count_float_chunk(d, m, lo, span, fbins, last, h, bounds[c], bounds[c + 1])
        used[0] = 0
        used[1] = last
        _finished(work)


@_jit()
def map_raw(
    d: Any,
    table: Any,
    pairs: Any,
    out: Any,
    base: int,
    bounds: Any,
    work: Any,
    control: Any,
    generation: int,
    spins: int,
) -> None:
    """``out = table[d - base]``; for 8-bit data and output through ``pairs`` when it holds
    :func:`pair_table` (else it is empty)."""
    while True:
        c = _claim(bounds, work)
        if c < 0:
            _linger(control, generation, spins)
            return
        _map_raw_chunk(d, table, pairs, out, base, bounds[c], bounds[c + 1])
        _finished(work)


@_jit()
def map_int(
    d: Any,
    lut: Any,
    out: Any,
    a: Any,
    b: Any,
    lo: int,
    span: int,
    bins: int,
    inv: float,
    bounds: Any,
    work: Any,
    control: Any,
    generation: int,
    spins: int,
) -> None:
    """``out = lut[bin(d)]`` for integer data."""
    while True:
        c = _claim(bounds, work)
        if c < 0:
            _linger(control, generation, spins)
            return
        _map_int_chunk(d, lut, out, a, b, lo, span, bins, inv, bounds[c], bounds[c + 1])
        _finished(work)


@_jit()
def map_float(
    d: Any,
    lut: Any,
    out: Any,
    lo: float,
    span: float,
    fbins: float,
    bounds: Any,
    work: Any,
    control: Any,
    generation: int,
    spins: int,
) -> None:
    """``out = lut[bin(d)]`` for float data."""
    while True:
        c = _claim(bounds, work)
        if c < 0:
            _linger(control, generation, spins)
            return
        _map_float_chunk(d, lut, out, lo, span, fbins, bounds[c], bounds[c + 1])
        _finished(work)


@_jit()
def level_lut(counts: Any, levels: int, seed: bool, lut: Any) -> bool:
    """The equalization LUT of integer values from the counts of consecutive values.

    ``medeq.core._lut`` for one bin per level, written out for the one-call paths:
    the standard formula in single precision for ``levels`` <= 256 (as OpenCV evaluates
    it), in double precision above; the seed formula in double. ``lut`` (uint8 or
    uint16, ``counts.size`` entries) is written. Empty bins before the first non-empty
    one get entries no pixel uses. Returns False, with ``lut`` unwritten, when the
    standard formula meets a single non-empty bin (the image then comes back as it is).
    The tests hold this to the general path.
    """
    n = counts.size
    size = 0
    for v in range(n):
        size += counts[v]
    top = levels - 1
    if seed:
        running = 0.0
        for v in range(n):
            running += counts[v] / size
            lut[v] = min(max(np.rint(running * top), 0.0), top)
        return True
    first = 0
    while counts[first] == 0:
        first += 1
    cdf_min = counts[first]
    if cdf_min == size:
        return False
    cdf = 0
    if levels <= 256:
        scale = np.float32(top) / np.float32(size - cdf_min)
        for v in range(n):
            cdf += counts[v]
            level32 = np.rint(np.float32(cdf - cdf_min) * scale)
            lut[v] = min(max(level32, np.float32(0.0)), np.float32(top))
    else:
        denom = size - cdf_min
        for v in range(n):
            cdf += counts[v]
            level = np.rint(np.float64(cdf - cdf_min) * top / denom)
            lut[v] = min(max(level, 0.0), top)
    return True


@_jit()
def equalize_values(
    d: Any, base: int, levels: int, seed: bool, pairs: bool, h: Any, out: Any
) -> bool:
    """Global equalization of 8/16-bit values ``d`` into ``out``, in one serial call.

    Counting (bin ``k`` of ``h`` is value ``base + k``), :func:`level_lut` over the
    values from the smallest to the largest present, and mapping through that LUT (8-bit
    data: through byte pairs when ``pairs``; 8-bit output only), without a return to
    Python in between. ``h``: zeroed sub-histograms of the dtype's bins, left zeroed;
    empty for 8-bit data, whose 256 bins are cheaper made here than fetched from the
    caller's cache. False, with ``out`` unwritten, when :func:`level_lut` is.
    """
    size = d.size
    if h.size == 0:
        h = np.zeros((NSUB, 256 + PAD), np.uint32)
    first, last = _count_raw_chunk(d, None, base, h, 0, size)
    counts = np.zeros(last - first + 1, np.int64)
    drain(h, first, counts)
    lut = np.empty(counts.size, out.dtype)
    if not level_lut(counts, levels, seed, lut):
        return False
    if pairs:
        # Only unsigned 8-bit data (base 0) go by pairs: counted over all 256 values, the
        # LUT has an entry for each. A constant flip lets the table be built as copies.
        by_pair = np.empty(PAIRS, np.uint16)
        pair_table(lut, 0, by_pair)
    else:
        by_pair = np.empty(0, np.uint16)
    _map_raw_chunk(d, lut, by_pair, out, base + first, 0, size)
    return True


@_jit()
def min_max(
    d: Any,
    m: Any,
    found: Any,
    los: Any,
    his: Any,
    slot: int,
    bounds: Any,
    work: Any,
    control: Any,
    generation: int,
    spins: int,
) -> None:
    """Minimum and maximum of the (masked) values, into ``los[slot]`` and ``his[slot]``.

    ``found[slot]`` (start it 0) becomes 1 when this thread saw a (masked) value.
    """
    while True:
        c = _claim(bounds, work)
        if c < 0:
            _linger(control, generation, spins)
            return
        any_, lo, hi = _min_max_chunk(d, m, bounds[c], bounds[c + 1])
        if any_:
            if found[slot]:
                lo = min(lo, los[slot])
                hi = max(hi, his[slot])
            los[slot] = lo
            his[slot] = hi
            found[slot] = 1
        _finished(work)
