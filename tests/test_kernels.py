"""The compiled kernels against a plain numpy oracle, and the numpy fallback against both.

Every kernel is run on both bodies (numba and numpy) for every dtype, 2-D to 4-D, masked
and unmasked, contiguous, Fortran-ordered and strided, on the serial path and on the
parallel one (forced on small arrays by lowering the size threshold).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import medeq
from medeq import _kernels, _parallel

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- oracle


def oracle_index(values: np.ndarray, lo: float, hi: float, bins: int, integer: bool) -> np.ndarray:
    """Bin of every value, straight from the definition (Python integers for integer data)."""
    if integer:
        lo, hi = int(lo), int(hi)
        span = hi - lo + 1
        flat = [(min(max(int(v), lo), hi) - lo) * bins // span for v in values.ravel().tolist()]
        return np.array(flat, dtype=np.int64).reshape(values.shape)
    scaled = (values.astype(np.float64) - lo) / (hi - lo) * bins
    return np.clip(np.floor(scaled), 0, bins - 1).astype(np.int64)


def oracle_counts(values: np.ndarray, mask: np.ndarray | None, *binning: object) -> np.ndarray:
    index = oracle_index(values, *binning)  # type: ignore[arg-type]
    bins = int(binning[2])  # type: ignore[call-overload]
    return np.bincount(index.ravel() if mask is None else index[mask], minlength=bins)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(params=["numba", "numpy"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "numpy":
        monkeypatch.setattr(_kernels, "_jit_module", None)
    else:
        pytest.importorskip("numba")
        if _kernels.jit() is None:
            pytest.skip("numba kernels are disabled (MEDEQ_DISABLE_JIT)")
    yield request.param


@pytest.fixture(params=["serial", "parallel", "pieces"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The serial path; chunks on the pool's threads; images done in several pieces."""
    pool = _parallel.WorkSharing(2)
    if request.param != "serial":
        monkeypatch.setattr(_kernels, "SERIAL_BELOW", 0)
        monkeypatch.setattr(_kernels, "MIN_CHUNK", 3)
        monkeypatch.setattr(_parallel, "_pool", pool)
    if request.param == "pieces":
        monkeypatch.setattr(_kernels, "MAX_SPAN", 97)
        monkeypatch.setattr(_kernels, "NUMPY_PIECE", 5)
        # 8-bit data by byte pairs (drained after every piece), at any size.
        monkeypatch.setattr(_kernels, "PAIRS_FROM", 0)
        monkeypatch.setattr(_kernels, "COUNT_PAIRS_FROM", 0)
    yield str(request.param)
    pool.close()


DTYPES = [
    "uint8",
    "int8",
    "uint16",
    "int16",
    "uint32",
    "int32",
    "uint64",
    "int64",
    "float16",
    "float32",
    "float64",
]


def make_image(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "f":
        img = rng.normal(0, 300, shape)
    else:
        info = np.iinfo(dt)
        lo, hi = max(int(info.min), -3000), min(int(info.max), 3000)
        img = rng.integers(lo, hi + 1, shape)
        # Runs of one value, as air or background make them.
        img.reshape(-1)[: img.size // 3] = lo + 7
    return img.astype(dt)


def layouts(img: np.ndarray) -> dict[str, np.ndarray]:
    """The same kind of data in several memory layouts (views, never copies of the values)."""
    big = np.repeat(np.repeat(img, 2, axis=-1), 2, axis=-2)
    return {
        "C": img,
        "F": np.asfortranarray(img),
        "transposed": img.T,
        "strided": big[..., ::2, 1::2],
        "reversed": img[..., ::-1, :],
    }


SHAPES = [(5, 7), (3, 4, 9), (2, 3, 4, 5), (1, 1)]


# --------------------------------------------------------------------------- kernels vs oracle


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("masked", [False, True])
def test_value_counts_and_map_values(
    dtype: str,
    shape: tuple[int, ...],
    masked: bool,
    backend: str,
    path: str,
    rng: np.random.Generator,
) -> None:
    base = int(np.iinfo(dtype).min)
    for name, img in layouts(make_image(dtype, shape, rng)).items():
        mask = rng.random(img.shape) < 0.6 if masked else None
        if mask is not None:
            mask.flat[0] = True
        first, counts = _kernels.value_counts(img, mask)
        selected = img.ravel() if mask is None else img[mask]
        expected = np.bincount(selected.astype(np.int64) - base)
        # The run may be longer than the data's range (all pixels of a span, masked or
        # not, bound it), but must hold every count and nothing else.
        full = np.zeros(2 ** (8 * img.dtype.itemsize) + 1, np.int64)
        full[first - base : first - base + counts.size] = counts
        np.testing.assert_array_equal(full[: expected.size], expected, err_msg=name)
        assert full[expected.size :].sum() == 0, name
        assert counts.dtype == np.int64

        table = rng.integers(0, 60000, 2 ** (8 * img.dtype.itemsize)).astype(np.uint16)
        out = _kernels.map_values(table, img)
        np.testing.assert_array_equal(out, table[img.astype(np.int64) - base], err_msg=name)
        assert out.flags.c_contiguous
        assert out.dtype == np.uint16


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("start", range(8))
@pytest.mark.parametrize("pairs", [False, True], ids=["bytes", "pairs"])
def test_8bit_values_at_every_alignment(
    dtype: str,
    start: int,
    pairs: bool,
    backend: str,
    path: str,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """8-bit rows are read as aligned 64-bit words, the bytes around them one at a time.

    Views that start at every byte of a word, lengths around a word's multiples, rows
    long and short, and (on the parallel path) chunks that end mid-word; words taken
    byte by byte and by byte pairs (counters of pairs, a table of pairs).
    """
    monkeypatch.setattr(_kernels, "PAIRS_FROM", 0 if pairs else 1 << 62)
    monkeypatch.setattr(_kernels, "COUNT_PAIRS_FROM", 0 if pairs else 1 << 62)
    base = int(np.iinfo(dtype).min)
    flat = make_image(dtype, (3000,), rng)
    table = rng.integers(0, 256, 256).astype(np.uint8)
    views = [flat[start : start + n] for n in (15, 16, 17, 23, 24, 25, 64, 999, 2990)]
    views += [
        flat[start : start + 40 * 61].reshape(40, 61),
        flat[start : start + 2 * 31 * 45].reshape(2, 31, 45),
        flat[start : start + 60 * 48].reshape(60, 48)[:, ::2],  # rows that are strided
    ]
    for img in views:
        first, counts = _kernels.value_counts(img, None)
        expected = np.bincount(img.ravel().astype(np.int64) - base, minlength=256)
        full = np.zeros(256, np.int64)
        full[first - base : first - base + counts.size] = counts
        np.testing.assert_array_equal(full, expected, err_msg=f"{img.shape}")
        out = _kernels.map_values(table, img)
        np.testing.assert_array_equal(out, table[img.astype(np.int64) - base])
        assert out.dtype == np.uint8
    if backend == "numba":
        # A new output is aligned to 16 bytes: rows are mapped word by word only when
        # input and output share their offset in a word, which here they do.
        module = _kernels.jit()
        pair_table = np.empty(module.PAIRS if pairs else 0, np.uint16)
        if pairs:
            module.pair_table(table, -base, pair_table)
        for n in (15, 16, 17, 23, 24, 25, 64, 999, 2990):
            row = flat[start : start + n]
            out_buffer = np.zeros(3008, np.uint8)
            module._map_raw_row(row, table, pair_table, out_buffer[start : start + n], base)
            np.testing.assert_array_equal(
                out_buffer[start : start + n], table[row.astype(np.int64) - base]
            )
            assert not out_buffer[:start].any() and not out_buffer[start + n :].any()


@st.composite
def level_images(draw: st.DrawFn) -> np.ndarray:
    """uint8, uint16 and int16 images of few values or many, in every layout."""
    dtype = np.dtype(draw(st.sampled_from(["uint8", "uint16", "int16"])))
    info = np.iinfo(dtype)
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=40))
    low = draw(st.integers(int(info.min), int(info.max)))
    span = draw(st.sampled_from([0, 1, 3, 255, 4095, 65535]))
    high = draw(st.integers(low, min(int(info.max), low + span)))
    return some_view(draw, draw(hnp.arrays(dtype, shape, elements=st.integers(low, high))))


@settings(max_examples=400, deadline=None)
@given(
    level_images(),
    st.sampled_from([None, 256]),
    st.sampled_from([None, 2, 17, 256, 4096]),
    st.sampled_from(["standard", "seed"]),
    st.sampled_from(["serial", "serial-pairs", "parallel"]),
)
def test_short_path_equals_the_general_path(
    img: np.ndarray, bins: int | None, levels: int | None, variant: str, path: str
) -> None:
    """Unmasked 8/16-bit images with one bin per level: small ones take one compiled
    call (count, LUT, map), larger ones have their LUT made by the same code between
    the threaded count and map. Both give what the general path gives, bit for bit,
    constant images included."""
    if _kernels.jit() is None:
        pytest.skip("numba kernels are unavailable")
    general = medeq.core.equalize_from_counts(
        img, bins, None, None, levels, medeq.core.Variant(variant)
    )[0]
    saved = _kernels.SERIAL_BELOW, _kernels.PAIRS_FROM, _kernels.MIN_CHUNK
    try:
        if path == "serial-pairs":
            _kernels.PAIRS_FROM = 0
        if path == "parallel":
            _kernels.SERIAL_BELOW, _kernels.MIN_CHUNK = 0, 3
        got = medeq.equalize(img, bins, levels=levels, variant=variant)
    finally:
        _kernels.SERIAL_BELOW, _kernels.PAIRS_FROM, _kernels.MIN_CHUNK = saved
    assert got.dtype == general.dtype
    assert got.shape == img.shape and got.flags.c_contiguous == general.flags.c_contiguous
    np.testing.assert_array_equal(got, general)


def test_short_path_is_opencv_and_leaves_other_cases_alone(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    cv2 = pytest.importorskip("cv2")
    if _kernels.jit() is None:
        pytest.skip("numba kernels are unavailable")
    taken: list[bool] = []
    short = _kernels.equalize_levels

    def spy(*args: object) -> np.ndarray | None:
        out = short(*args)  # type: ignore[arg-type]
        taken.append(out is not None)
        return out

    monkeypatch.setattr(_kernels, "equalize_levels", spy)
    for shape in [(1, 1), (7, 9), (512, 512), (725, 725)]:  # serial, pairs, threads
        img = make_image("uint8", shape, rng)
        np.testing.assert_array_equal(medeq.equalize(img), cv2.equalizeHist(img))
        np.testing.assert_array_equal(medeq.equalize(img, 256), cv2.equalizeHist(img))
    assert taken == [False, False] + [True] * 6  # one pixel: a single level, handed back
    # Single precision, as OpenCV: with value counts 1, 7, 7 the middle level is 127
    # (double precision would give 128).
    img = np.array([0] + [1] * 7 + [2] * 7, np.uint8).reshape(3, 5)
    np.testing.assert_array_equal(medeq.equalize(img), cv2.equalizeHist(img))
    assert medeq.equalize(img)[0, 1] == 127
    # A single level: the standard formula hands the image back (as OpenCV does).
    taken.clear()
    flat = np.full((30, 20), 77, np.uint8)
    np.testing.assert_array_equal(medeq.equalize(flat), flat)
    np.testing.assert_array_equal(medeq.equalize(flat, levels=2), np.zeros_like(flat))
    assert (
        _kernels.equalize_levels(flat.astype(np.int16), 65536, np.dtype(np.uint16), False) is None
    )
    assert taken == [False, False, False]
    # The seed formula has no such rule: every pixel gets round(1.0 * (L - 1)).
    np.testing.assert_array_equal(medeq.equalize(flat, variant="seed"), flat * 0 + 255)
    # Other bins, masks and value ranges go the general way; any levels the short one.
    img = make_image("uint8", (40, 30), rng)
    for kwargs, short_path in [
        ({"bins": 5}, False),
        ({"mask": img > 100}, False),
        ({"value_range": (0, 200)}, False),
        ({"levels": 4096}, True),
    ]:
        taken.clear()
        general = medeq.core.equalize_from_counts(
            img,
            kwargs.get("bins"),
            kwargs.get("value_range"),
            kwargs.get("mask"),
            kwargs.get("levels"),
            medeq.core.Variant.STANDARD,
        )[0]
        np.testing.assert_array_equal(medeq.equalize(img, **kwargs), general)
        assert taken == ([True] if short_path else [])


def test_level_lut_is_the_lut_formula(rng: np.random.Generator) -> None:
    """The compiled LUT against medeq.core._lut, counts beyond float32's exact integers."""
    module = _kernels.jit()
    if module is None:
        pytest.skip("numba kernels are unavailable")
    for trial in range(3000):
        n = int(rng.integers(2, 300))
        counts = rng.integers(0, [8, 2**12, 2**25][trial % 3], n).astype(np.int64)
        counts[0] = max(counts[0], 1)  # the general path's bins start at a value present
        counts[-1] = max(counts[-1], 1)
        levels = int(rng.choice([2, 3, 17, 255, 256, 257, 4096, 65536]))
        for variant in medeq.core.Variant:
            expected = medeq.core._lut(counts, levels, variant)
            got = np.empty(n, expected.dtype)
            if not module.level_lut(counts, levels, variant is medeq.core.Variant.SEED, got):
                assert variant is medeq.core.Variant.STANDARD and np.count_nonzero(counts) == 1
                continue
            np.testing.assert_array_equal(got, expected, err_msg=f"{counts}, {levels}, {variant}")


def test_short_path_counts_at_most_max_span_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """One call counts in one piece, into uint32 counters: larger images on one thread
    go the general way, which counts in pieces of MAX_SPAN."""
    if _kernels.jit() is None:
        pytest.skip("numba kernels are unavailable")
    img = np.arange(2000, dtype=np.uint16).reshape(40, 50) % 300
    monkeypatch.setattr(_kernels, "MAX_SPAN", 1000)
    assert (
        _kernels.equalize_levels(img, 65536, np.dtype(np.uint16), False) is None
    )  # serial: too large
    expected = medeq.core.equalize_from_counts(
        img, None, None, None, None, medeq.core.Variant.STANDARD
    )
    np.testing.assert_array_equal(medeq.equalize(img), expected[0])
    monkeypatch.setattr(_kernels, "SERIAL_BELOW", 0)
    monkeypatch.setattr(_parallel, "_pool", _parallel.WorkSharing(2))
    out = _kernels.equalize_levels(
        img, 65536, np.dtype(np.uint16), False
    )  # threaded: counted in pieces
    assert out is not None
    np.testing.assert_array_equal(out, expected[0])
    _parallel.pool().close()


@pytest.mark.parametrize("table_dtype", ["int8", "bool"])
@pytest.mark.parametrize("pairs", [False, True], ids=["bytes", "pairs"])
def test_8bit_tables_of_any_byte_type(
    table_dtype: str,
    pairs: bool,
    backend: str,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A signed (or bool) one-byte table maps each byte alone: no sign spills over."""
    monkeypatch.setattr(_kernels, "PAIRS_FROM", 0 if pairs else 1 << 62)
    for dtype in ("uint8", "int8"):
        img = make_image(dtype, (100, 64), rng)
        base = int(np.iinfo(dtype).min)
        table = rng.integers(-128, 128, 256).astype(table_dtype)
        out = _kernels.map_values(table, img)
        np.testing.assert_array_equal(out, table[img.astype(np.int64) - base])
        assert out.dtype == np.dtype(table_dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("masked", [False, True])
def test_bin_counts_and_map_bins(
    dtype: str,
    shape: tuple[int, ...],
    masked: bool,
    backend: str,
    path: str,
    rng: np.random.Generator,
) -> None:
    integer = np.dtype(dtype).kind in "iu"
    for name, img in layouts(make_image(dtype, shape, rng)).items():
        mask = rng.random(img.shape) < 0.6 if masked else None
        if mask is not None:
            mask.flat[-1] = True
        data = img if mask is None else img[mask]
        lo, hi = (int if integer else float)(data.min()), (int if integer else float)(data.max())
        for lo_, hi_, bins in [
            (lo, hi, 7),  # bins narrower than the levels: exact integer scaling
            (lo, hi, 300),
            (lo + (hi - lo) / 4, lo + (hi - lo) / 2, 64),  # values outside go to the end bins
        ]:
            if integer:
                lo_, hi_ = int(np.floor(lo_)), int(np.floor(hi_))
                if lo_ >= hi_:
                    continue
            else:
                lo_, hi_ = float(lo_), float(hi_)
                if lo_ == hi_:
                    continue
            binning = (lo_, hi_, bins, integer)
            counts = _kernels.bin_counts(img, mask, *binning)
            np.testing.assert_array_equal(
                counts, oracle_counts(img, mask, *binning), err_msg=f"{name} {binning}"
            )
            lut = rng.permutation(bins).astype(np.float32)
            out = _kernels.map_bins(img, lut, lo_, hi_, integer)
            np.testing.assert_array_equal(
                out, lut[oracle_index(img, *binning)], err_msg=f"{name} {binning}"
            )
            assert out.flags.c_contiguous


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masked", [False, True])
def test_min_max(
    dtype: str, masked: bool, backend: str, path: str, rng: np.random.Generator
) -> None:
    for name, img in layouts(make_image(dtype, (6, 5, 11), rng)).items():
        mask = None
        if masked:
            mask = np.zeros(img.shape, bool)
            mask[2:4, 1:3, 5:] = True  # leaves whole spans without a masked pixel
        data = img if mask is None else img[mask]
        lo, hi = _kernels.min_max(img, mask)
        assert (lo, hi) == (data.min(), data.max()), name


@pytest.mark.parametrize(
    ("dtype", "value_range", "expected"),
    [
        (np.int32, (3_000_000_000, 4_000_000_000), [12, 0, 0, 0]),
        (np.int32, (-4_000_000_000, -3_000_000_000), [0, 0, 0, 12]),
        (np.uint8, (300, 400), [12, 0, 0, 0]),
        (np.uint64, (2**63 + 5, 2**64 - 1), [12, 0, 0, 0]),
    ],
)
def test_value_range_beyond_the_dtype(
    dtype: type, value_range: tuple[int, int], expected: list[int], backend: str
) -> None:
    img = np.arange(12).astype(dtype).reshape(3, 4)
    counts, _ = medeq.histogram(img, 4, value_range=value_range)
    np.testing.assert_array_equal(counts, expected)


@pytest.mark.parametrize("threshold", [0, 1 << 30])
def test_scaling_is_exact_near_bin_boundaries(
    threshold: int, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_kernels, "SERIAL_BELOW", threshold)
    # A wide span and many bins: the float estimate of the quotient must be corrected.
    img = np.arange(-(2**31) + 1, 2**31 - 2, 65521, dtype=np.int64).astype(np.int32)
    img = np.stack([img, img + 1, img - 1], axis=1)
    binning = (-(2**31), 2**31 - 1, 2**24 - 3, True)
    np.testing.assert_array_equal(
        _kernels.bin_counts(img, None, *binning), oracle_counts(img, None, *binning)
    )
    lut = np.arange(2**24 - 3, dtype=np.uint32)
    np.testing.assert_array_equal(
        _kernels.map_bins(img, lut, *binning[:2], True), oracle_index(img, *binning)
    )


def test_count_and_apply_lut_keep_their_meaning(backend: str, path: str) -> None:
    idx = np.array([[0, 3, 3], [9, 2, 3]], np.intp)
    np.testing.assert_array_equal(_kernels.count(idx, 10), np.bincount(idx.ravel(), minlength=10))
    lut = np.arange(10, dtype=np.uint8) * 3
    np.testing.assert_array_equal(_kernels.apply_lut(lut, idx), lut[idx])
    np.testing.assert_array_equal(_kernels.apply_lut(lut, idx[:, ::2]), lut[idx[:, ::2]])


def test_counters_are_left_clean_for_the_next_call(backend: str, path: str) -> None:
    first = np.full((40, 40), 1000, np.uint16)
    second = np.arange(1600, dtype=np.uint16).reshape(40, 40)
    for _ in range(2):
        _kernels.value_counts(first, None)
        start, counts = _kernels.value_counts(second, None)
        assert start == 0
        np.testing.assert_array_equal(counts[:1600], np.ones(1600, np.int64))
        assert counts[1600:].sum() == 0
        _kernels.bin_counts(first.astype(np.int32), None, 0, 2000, 50, True)
        np.testing.assert_array_equal(
            _kernels.bin_counts(second.astype(np.int32), None, 0, 1599, 50, True),
            np.full(50, 32),
        )


# --------------------------------------------------------------------------- end to end


def reference_equalize(img: np.ndarray, bins: int | None, levels: int | None) -> np.ndarray | None:
    """Plain numpy: data range, bins, counts, the core's LUT, then ``lut[bin(img)]``.

    None for a flat histogram, which has a rule of its own (tested in test_core).
    """
    integer = img.dtype.kind in "iu"
    lo, hi = (int(img.min()), int(img.max())) if integer else (float(img.min()), float(img.max()))
    if lo == hi:
        return None
    if bins is None:
        bins = min(hi - lo + 1, 65536) if integer else 256
    binning = (lo, hi, bins, integer)
    counts = oracle_counts(img, None, *binning)
    if np.count_nonzero(counts) < 2:
        return None
    if levels is None and integer:
        levels = 2 ** (8 * img.dtype.itemsize)
    lut = medeq.equalization_lut(counts, levels)
    if levels is None:
        lut = lut.astype(np.float32 if img.dtype == np.float32 else np.float64)
    return lut[oracle_index(img, *binning)]


@st.composite
def images(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    if dtype.kind == "f":
        elements = st.floats(-1e4, 1e4, width=min(32, 8 * dtype.itemsize))
    else:
        info = np.iinfo(dtype)
        elements = st.integers(max(int(info.min), -5000), min(int(info.max), 5000))
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=9))
    return some_view(draw, draw(hnp.arrays(dtype, shape, elements=elements)))


def some_view(draw: st.DrawFn, img: np.ndarray) -> np.ndarray:
    """``img`` as it is, transposed, or every other column (a strided view)."""
    view = draw(st.sampled_from(["C", "T", "step"]))
    if view == "T":
        return img.T
    if view == "step":
        return img[..., ::2]
    return img


@settings(max_examples=300, deadline=None)
@given(images(), st.sampled_from([None, 2, 5, 256]), st.sampled_from([None, 256, 4096]))
def test_equalize_matches_the_plain_numpy_oracle(
    img: np.ndarray, bins: int | None, levels: int | None
) -> None:
    expected = reference_equalize(img, bins, levels)
    got = medeq.equalize(img, bins, levels=levels)
    if expected is not None:
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


@settings(max_examples=150, deadline=None)
@given(
    images(),
    st.sampled_from([None, 3, 300]),
    st.sampled_from([None, 256, 4096]),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_numba_and_numpy_bodies_agree(
    img: np.ndarray, bins: int | None, levels: int | None, masked: bool, seed: int
) -> None:
    if _kernels.jit() is None:
        pytest.skip("numba kernels are unavailable")
    mask = None
    if masked:
        mask = np.random.default_rng(seed).random(img.shape) < 0.5
        mask.flat[0] = True
    results = []
    saved = _kernels._jit_module, _kernels.SERIAL_BELOW
    try:
        for module, threshold in [(saved[0], 1 << 30), (saved[0], 0), (None, 0)]:
            _kernels._jit_module, _kernels.SERIAL_BELOW = module, threshold
            results.append(
                (
                    medeq.equalize(img, bins, levels=levels, mask=mask),
                    *medeq.histogram(img, bins, mask=mask),
                )
            )
    finally:
        _kernels._jit_module, _kernels.SERIAL_BELOW = saved
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- loading


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
        check=False,
    )


def test_import_compiles_nothing_and_loads_no_numba() -> None:
    res = run_python(
        """
        import sys
        import medeq
        assert "numba" not in sys.modules
        assert "medeq._jit" not in sys.modules
        """
    )
    assert res.returncode == 0, res.stderr


def test_without_numba_the_numpy_bodies_give_the_same_results(tmp_path: Path) -> None:
    saved = tmp_path / "out.npy"
    res = run_python(
        f"""
        import sys
        sys.modules["numba"] = None  # as if numba were not installed
        import numpy as np
        import medeq
        from medeq import _kernels, _parallel
        img = np.arange(5000, dtype=np.int16).reshape(50, 100) % 777 - 300
        np.save({str(saved)!r}, medeq.equalize(img, mask=img > 0))
        assert _kernels.jit() is None
        """
    )
    assert res.returncode == 0, res.stderr
    img = np.arange(5000, dtype=np.int16).reshape(50, 100) % 777 - 300
    np.testing.assert_array_equal(np.load(saved), medeq.equalize(img, mask=img > 0))


def test_medeq_disable_jit_selects_numpy() -> None:
    res = run_python(
        """
        import numpy as np, medeq, sys
        from medeq import _kernels, _parallel
        medeq.equalize(np.eye(4, dtype=np.uint8))
        assert _kernels.jit() is None
        assert "numba" not in sys.modules
        """,
        MEDEQ_DISABLE_JIT="1",
    )
    assert res.returncode == 0, res.stderr


def test_uncachable_kernels_still_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    numba = pytest.importorskip("numba")
    from medeq import _jit

    real = numba.njit
    calls = []

    def refusing(**kwargs: object) -> object:
        calls.append(kwargs["cache"])
        if kwargs["cache"]:
            raise RuntimeError("cannot cache function 'f': no locator available for file 'x'")
        return real(**kwargs)

    monkeypatch.setattr(numba, "njit", refusing)

    def triple(x: int) -> int:
        return 3 * x

    jitted = _jit._jit()(triple)
    assert jitted(5) == 15
    assert calls == [True, False]


def test_subnormal_float_span(backend: str, path: str) -> None:
    img = np.array([[0.0, 5e-324, 1e-323], [1e-323, 0.0, 1.5e-323]])
    lo, hi = float(img.min()), float(img.max())
    np.testing.assert_array_equal(
        _kernels.bin_counts(img, None, lo, hi, 4, False), oracle_counts(img, None, lo, hi, 4, False)
    )
    lut = np.arange(4, dtype=np.float64)
    np.testing.assert_array_equal(
        _kernels.map_bins(img, lut, lo, hi, False), oracle_index(img, lo, hi, 4, False)
    )


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["uint8", "int8", "uint16", "int16"]),
    st.integers(0, 2**32 - 1),
    st.integers(-70000, 70000),
    st.integers(1, 3000),
    st.sampled_from([None, 1, 7]),
)
def test_small_int_histogram_with_any_value_range_matches_the_oracle(
    dtype: str, seed: int, lo: int, width: int, bins_factor: int | None
) -> None:
    rng = np.random.default_rng(seed)
    img = make_image(dtype, (9, 13), rng)
    hi = lo + width
    bins = None if bins_factor is None else max(1, (width + 1) // bins_factor)
    counts, _ = medeq.histogram(img, bins, value_range=(lo, hi))
    np.testing.assert_array_equal(counts, oracle_counts(img, None, lo, hi, bins or width + 1, True))


def test_numpy_kernels_block_gives_identical_results() -> None:
    rng = np.random.default_rng(11)
    volume = rng.integers(-1024, 3072, (4, 300, 400)).astype(np.int16)
    compiled = medeq.equalize(volume, levels=4096)
    with _kernels.numpy_kernels():
        assert _kernels.jit() is None
        plain = medeq.equalize(volume, levels=4096)
    np.testing.assert_array_equal(plain, compiled)
    assert _kernels.jit() is not None or os.environ.get("MEDEQ_DISABLE_JIT")
