"""The N-bin equalizer core: parity with OpenCV and the tutorial, properties, errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import medeq
from medeq import ParameterError

# --------------------------------------------------------------------------- oracles


def tutorial_equalize(img: np.ndarray) -> np.ndarray:
    """The tutorial's steps, transcribed: histogram, pdf, cdf, round(cdf*255), per-pixel map."""
    hist, _ = np.histogram(img.flatten(), 256, [0, 256])
    pdf = hist / img.size
    cdf = np.cumsum(pdf)
    lut = np.round(cdf * 255)
    out = np.zeros_like(img)
    for i in range(img.shape[0]):
        for j in range(img.shape[1]):
            out[i, j] = lut[img[i, j]]
    return out


def reference_standard(values: np.ndarray, levels: int) -> np.ndarray:
    """Plain numpy transcription of the standard formula, one bin per level, float64."""
    uniq, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    cdf = np.cumsum(counts)
    if len(uniq) == 1:
        return None  # degenerate: defined separately
    lut = np.rint((cdf - cdf[0]) * (levels - 1) / (values.size - cdf[0]))
    return lut[inverse].reshape(values.shape)


uint8_images = hnp.arrays(
    np.uint8,
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=64),
    elements=st.integers(0, 255),
)


# --------------------------------------------------------------------------- OpenCV parity


@settings(max_examples=400, deadline=None)
@given(uint8_images)
def test_uint8_matches_opencv(img: np.ndarray) -> None:
    np.testing.assert_array_equal(medeq.equalize(img), cv2.equalizeHist(img))


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 400),
    st.integers(1, 400),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 2**32 - 1),
)
def test_uint8_matches_opencv_narrow_and_wide_ranges(
    rows: int, cols: int, a: int, b: int, seed: int
) -> None:
    lo, hi = min(a, b), max(a, b)
    img = np.random.default_rng(seed).integers(lo, hi + 1, (rows, cols), dtype=np.uint8)
    np.testing.assert_array_equal(medeq.equalize(img), cv2.equalizeHist(img))


@pytest.mark.parametrize(
    "img",
    [
        np.full((7, 9), 0, np.uint8),
        np.full((7, 9), 137, np.uint8),
        np.full((1, 1), 255, np.uint8),
        np.array([[3]], np.uint8),
        np.array([[0, 255]], np.uint8),
        np.arange(256, dtype=np.uint8).reshape(16, 16),
        np.repeat(np.arange(256, dtype=np.uint8), 3).reshape(24, 32),
    ],
    ids=["zeros", "constant", "one-pixel-255", "one-pixel", "two-pixels", "ramp", "ramp3"],
)
def test_uint8_edge_cases_match_opencv(img: np.ndarray) -> None:
    np.testing.assert_array_equal(medeq.equalize(img), cv2.equalizeHist(img))


def test_uint8_huge_image_matches_opencv(rng: np.random.Generator) -> None:
    # More pixels than float32 holds exactly (2**24), skewed so that ties are likely.
    img = np.clip(rng.normal(90, 25, (4200, 4200)), 0, 255).astype(np.uint8)
    assert img.size > 2**24
    np.testing.assert_array_equal(medeq.equalize(img), cv2.equalizeHist(img))


def test_real_image_matches_opencv() -> None:
    pydicom_data = pytest.importorskip("pydicom.data")
    import pydicom

    ds = pydicom.dcmread(pydicom_data.get_testdata_file("CT_small.dcm"))
    arr = ds.pixel_array.astype(np.float64)
    img = np.rint((arr - arr.min()) / (arr.max() - arr.min()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(medeq.equalize(img), cv2.equalizeHist(img))


# --------------------------------------------------------------------------- the seed formula


@settings(max_examples=100, deadline=None)
@given(uint8_images)
def test_seed_variant_reproduces_the_tutorial(img: np.ndarray) -> None:
    np.testing.assert_array_equal(medeq.equalize(img, variant="seed"), tutorial_equalize(img))


def test_seed_differs_from_standard_where_expected(rng: np.random.Generator) -> None:
    img = rng.integers(100, 120, (50, 50), dtype=np.uint8)
    seed = medeq.equalize(img, variant="seed")
    std = medeq.equalize(img)
    # The tutorial's lowest level is round(cdf_min / N * 255) > 0; the standard one is 0.
    assert std.min() == 0
    assert seed.min() > 0
    assert seed.max() == std.max() == 255


def test_seed_constant_image_follows_its_formula() -> None:
    img = np.full((4, 4), 9, np.uint8)
    np.testing.assert_array_equal(medeq.equalize(img, variant="seed"), tutorial_equalize(img))


# --------------------------------------------------------------------------- the formula in general


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.int32, np.uint32, np.int8])
def test_one_bin_per_level_matches_reference(dtype: type, rng: np.random.Generator) -> None:
    info = np.iinfo(dtype)
    lo = max(info.min, -3000)
    hi = min(info.max, 3000)
    img = rng.integers(lo, hi + 1, (40, 70)).astype(dtype)
    levels = 2 ** (8 * np.dtype(dtype).itemsize)
    expected = reference_standard(img, levels)
    got = medeq.equalize(img)
    assert got.dtype == np.dtype(f"u{np.dtype(dtype).itemsize}")
    if levels <= 2**16:
        np.testing.assert_array_equal(got, expected)
    else:
        # 2**32 levels: double precision may round the last place differently.
        assert np.abs(got.astype(np.float64) - expected).max() <= 1


def test_levels_with_many_levels_matches_reference(rng: np.random.Generator) -> None:
    img = rng.integers(0, 4096, (64, 64)).astype(np.uint16)
    np.testing.assert_array_equal(medeq.equalize(img, levels=4096), reference_standard(img, 4096))


@pytest.mark.parametrize(
    ("dtype", "out"),
    [
        (np.uint8, np.uint8),
        (np.int8, np.uint8),
        (np.uint16, np.uint16),
        (np.int16, np.uint16),
        (np.int32, np.uint32),
        (np.uint32, np.uint32),
        (np.int64, np.uint64),
        (np.float32, np.float32),
        (np.float64, np.float64),
        (np.float16, np.float64),
    ],
)
def test_default_output_dtype_spans_its_range(
    dtype: type, out: type, rng: np.random.Generator
) -> None:
    img = (rng.normal(size=(30, 30)) * 40 + 50).astype(dtype)
    res = medeq.equalize(img)
    assert res.dtype == out
    assert res.shape == img.shape
    if np.dtype(out).kind == "u":
        assert res.min() == 0
        assert res.max() == np.iinfo(out).max
    else:
        assert res.min() == 0.0
        assert res.max() == 1.0


@pytest.mark.parametrize(
    ("levels", "out"),
    [(2, np.uint8), (256, np.uint8), (257, np.uint16), (4096, np.uint16), (65536, np.uint16)],
)
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_levels_sets_range_and_dtype(
    levels: int, out: type, dtype: type, rng: np.random.Generator
) -> None:
    img = (rng.normal(size=(40, 40)) * 30 + 60).astype(dtype)
    res = medeq.equalize(img, levels=levels)
    assert res.dtype == out
    assert res.min() == 0
    assert res.max() == levels - 1


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("bins", [2, 16, 100])
def test_bins_is_honoured_for_every_dtype(dtype: type, bins: int, rng: np.random.Generator) -> None:
    img = (rng.normal(size=(64, 64)) * 900 + (0 if np.dtype(dtype).kind in "if" else 2000)).astype(
        dtype
    )
    res = medeq.equalize(img, bins)
    assert 2 <= np.unique(res).size <= bins
    counts, edges = medeq.histogram(img, bins)
    assert counts.shape == (bins,)
    assert edges.shape == (bins + 1,)
    assert counts.sum() == img.size


def test_uint16_bins16_has_at_most_16_values(rng: np.random.Generator) -> None:
    x = rng.integers(0, 4096, (128, 128)).astype(np.uint16)
    assert np.unique(medeq.equalize(x, bins=16)).size <= 16


def test_value_range_sends_outliers_to_the_end_bins() -> None:
    img = np.array([[-1000, -50, 0, 10, 20, 30, 40, 5000]], np.int16)
    counts, edges = medeq.histogram(img, value_range=(0, 40))
    assert counts.size == 41
    assert counts[0] == 3  # -1000, -50 and 0
    assert counts[-1] == 2  # 40 and 5000
    assert edges[0] == -0.5
    assert edges[-1] == 40.5
    out = medeq.equalize(img, value_range=(0, 40), levels=256)
    assert out[0, 0] == out[0, 1] == out[0, 2]
    assert out[0, -1] == out[0, -2] == 255


def test_histogram_integer_levels_sit_at_bin_centres() -> None:
    img = np.array([[5, 6, 6, 7, 7, 7]], np.uint8)
    counts, edges = medeq.histogram(img)
    np.testing.assert_array_equal(counts, [1, 2, 3])
    np.testing.assert_allclose(edges, [4.5, 5.5, 6.5, 7.5])


def test_histogram_float_matches_numpy(rng: np.random.Generator) -> None:
    img = rng.normal(size=(100, 100))
    counts, edges = medeq.histogram(img, 50)
    ref, ref_edges = np.histogram(img, 50)
    np.testing.assert_allclose(edges, ref_edges)
    # The two may disagree on a value sitting exactly on an edge; none does here.
    np.testing.assert_array_equal(counts, ref)


def test_integer_data_over_65536_levels_gets_65536_bins(rng: np.random.Generator) -> None:
    img = rng.integers(-(10**6), 10**6, (100, 100)).astype(np.int32)
    counts, _ = medeq.histogram(img)
    assert counts.size == 65536


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_volume_uses_one_histogram(dtype: type, rng: np.random.Generator) -> None:
    vol = (rng.normal(size=(4, 20, 20)) * 20 + 100).astype(dtype)
    vol[0] = vol[0] // 2  # a darker first slice
    res = medeq.equalize(vol)
    flat = medeq.equalize(vol.reshape(4 * 20, 20)).reshape(vol.shape)
    np.testing.assert_array_equal(res, flat)
    assert res[0].mean() < res[1:].mean()


def test_per_slice_equalizes_each_slice(rng: np.random.Generator) -> None:
    vol = rng.integers(0, 200, (3, 32, 32), dtype=np.uint8)
    vol[1] //= 4
    res = medeq.equalize(vol, per_slice=True)
    for i in range(3):
        np.testing.assert_array_equal(res[i], cv2.equalizeHist(vol[i]))


def test_4d_array_is_accepted(rng: np.random.Generator) -> None:
    arr = rng.integers(0, 1000, (2, 3, 8, 8)).astype(np.uint16)
    res = medeq.equalize(arr)
    assert res.shape == arr.shape
    assert res.max() == 65535


def test_input_is_never_modified(rng: np.random.Generator) -> None:
    for dtype in (np.uint8, np.int16, np.int32, np.float32):
        img = (rng.normal(size=(16, 16)) * 50).astype(dtype)
        mask = img > img.mean()
        before, mbefore = img.copy(), mask.copy()
        medeq.equalize(img, 10, mask=mask)
        medeq.histogram(img, mask=mask)
        np.testing.assert_array_equal(img, before)
        np.testing.assert_array_equal(mask, mbefore)


def test_non_contiguous_views(rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    view = img[::2, 1::3]
    np.testing.assert_array_equal(
        medeq.equalize(view), cv2.equalizeHist(np.ascontiguousarray(view))
    )
    arr16 = rng.integers(-500, 500, (20, 30)).astype(np.int16).T
    np.testing.assert_array_equal(medeq.equalize(arr16), medeq.equalize(arr16.copy()))


# --------------------------------------------------------------------------- properties


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 1000), min_size=1, max_size=300),
    st.sampled_from([2, 7, 256, 4096, 65536, None]),
    st.sampled_from(["standard", "seed"]),
)
def test_lut_is_monotone_and_in_range(counts: list[int], levels: int | None, variant: str) -> None:
    if sum(counts) == 0:
        counts[0] = 1
    lut = medeq.equalization_lut(np.array(counts), levels, variant=variant)
    assert lut.shape == (len(counts),)
    assert np.all(np.diff(lut.astype(np.float64)) >= 0)
    top = 1.0 if levels is None else levels - 1
    assert lut.min() >= 0
    assert lut.max() <= top


@st.composite
def any_images(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(
        draw(st.sampled_from(["uint8", "uint16", "int16", "int32", "float32", "float64"]))
    )
    if dtype.kind == "f":
        elements = st.floats(-3e4, 3e4, width=8 * dtype.itemsize)
    else:
        info = np.iinfo(dtype)
        elements = st.integers(max(int(info.min), -30000), min(int(info.max), 30000))
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=12))
    return draw(hnp.arrays(dtype, shape, elements=elements))


@settings(max_examples=200, deadline=None)
@given(any_images(), st.sampled_from([None, 3, 64]), st.sampled_from([None, 2, 256, 1000]))
def test_output_invariants(img: np.ndarray, bins: int | None, levels: int | None) -> None:
    out = medeq.equalize(img, bins, levels=levels)
    assert out.shape == img.shape
    if levels is not None:
        top = levels - 1
    elif img.dtype.kind == "f":
        top = 1.0
    else:
        top = np.iinfo(out.dtype).max
    assert out.min() >= 0
    assert out.max() <= top
    # Monotone: a larger input never gets a smaller output.
    order = np.argsort(img, axis=None, kind="stable")
    assert np.all(np.diff(out.ravel()[order].astype(np.float64)) >= 0)
    distinct = np.unique(img).size
    # Spans [0, L-1] unless the bins merge every value into one.
    if distinct >= 2 and np.count_nonzero(medeq.histogram(img, bins)[0]) >= 2:
        assert out.min() == 0
        assert out.max() == top
    if distinct == 1:
        assert np.unique(out).size == 1


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float64])
def test_constant_image_maps_to_a_constant(dtype: type) -> None:
    img = np.full((5, 6), 42, dtype)
    out = medeq.equalize(img)
    assert np.unique(out).size == 1
    if dtype in (np.uint8, np.uint16):
        np.testing.assert_array_equal(out, img)  # unchanged, as OpenCV returns it
    if dtype is np.int16:
        assert out[0, 0] == 42 + 32768


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32])
def test_equalized_cdf_has_unit_slope(dtype: type, rng: np.random.Generator) -> None:
    img = (rng.gamma(2.0, 600.0, (256, 256)) - (1000 if dtype is np.int16 else 0)).astype(dtype)
    out = medeq.equalize(img, levels=4096).astype(np.float64) / 4095
    counts, edges = np.histogram(out, 64, (0, 1))
    cdf = np.cumsum(counts) / out.size
    slope = np.polyfit(edges[1:], cdf, 1)[0]
    assert 0.9 <= slope <= 1.1


def test_pixels_outside_the_mask_do_not_change_the_lut(rng: np.random.Generator) -> None:
    img = rng.integers(0, 4000, (64, 64)).astype(np.uint16)
    mask = np.zeros(img.shape, bool)
    mask[16:48, 16:48] = True
    other = img.copy()
    other[~mask] = rng.integers(0, 4000, int((~mask).sum()))
    a = medeq.equalize(img, mask=mask)
    b = medeq.equalize(other, mask=mask)
    np.testing.assert_array_equal(a[mask], b[mask])
    # ... and the histogram is that of the masked pixels alone.
    np.testing.assert_array_equal(
        medeq.histogram(img, mask=mask)[0], medeq.histogram(img[16:48, 16:48])[0]
    )
    # Every pixel is mapped, inside and outside the mask.
    np.testing.assert_array_equal(a[mask], medeq.equalize(img[16:48, 16:48]).ravel())
    assert a[~mask].max() > 0


def test_mask_equals_cropping_for_float(rng: np.random.Generator) -> None:
    img = rng.normal(size=(40, 40)).astype(np.float32)
    mask = np.zeros(img.shape, bool)
    mask[:20] = True
    np.testing.assert_array_equal(medeq.equalize(img, mask=mask)[:20], medeq.equalize(img[:20]))


def test_per_slice_with_an_empty_slice_mask_keeps_that_slice(rng: np.random.Generator) -> None:
    vol = rng.integers(0, 256, (2, 10, 10), dtype=np.uint8)
    mask = np.zeros(vol.shape, bool)
    mask[1] = True
    out = medeq.equalize(vol, mask=mask, per_slice=True)
    np.testing.assert_array_equal(out[0], vol[0])
    np.testing.assert_array_equal(out[1], cv2.equalizeHist(vol[1]))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((4, 4), bool), "dtype bool"),
        (np.zeros((4, 4), complex), "unsupported dtype complex128"),
        (np.array([[object(), 1]], dtype=object), "unsupported dtype object"),
        (np.zeros(10, np.uint8), r"at least 2 dimensions.*\(10,\)"),
        (np.zeros((0, 5), np.uint8), r"empty \(shape \(0, 5\)\)"),
        (np.array([[1.0, np.nan]]), "non-finite value"),
        (np.array([[1.0, np.inf]], np.float32), "non-finite value"),
        (np.array([["a", "b"]]), "unsupported dtype"),
    ],
    ids=["bool", "complex", "object", "1-D", "empty", "nan", "inf", "str"],
)
def test_bad_images_are_refused(image: np.ndarray, match: str) -> None:
    with pytest.raises(ParameterError, match=f"^image.*{match}"):
        medeq.equalize(image)
    with pytest.raises(ParameterError, match=r"^image"):
        medeq.histogram(image)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bins": 0}, r"bins must be between 1 and \d+, got 0"),
        ({"bins": 2.5}, r"bins must be a whole number or None, got 2\.5"),
        ({"bins": True}, "bins must be a whole number"),
        ({"levels": 1}, "levels must be between 2 and 65536, got 1"),
        ({"levels": 70000}, "levels must be between 2 and 65536, got 70000"),
        ({"levels": "256"}, "levels must be a whole number or None, got '256'"),
        ({"variant": "fancy"}, r"variant must be one of 'standard', 'seed', got 'fancy'"),
        ({"value_range": (5, 5)}, r"value_range must be finite with low < high, got \(5, 5\)"),
        ({"value_range": (0, np.inf)}, "value_range must be finite"),
        ({"value_range": 7}, r"value_range must be a pair \(low, high\) of numbers, got 7"),
        ({"value_range": (0.5, 9)}, "value_range for integer images must be whole numbers"),
        ({"mask": np.ones((3, 3), bool)}, r"mask shape \(3, 3\) does not match image shape"),
        ({"mask": np.ones((8, 8), np.uint8)}, "mask must have dtype bool, got uint8"),
        ({"mask": np.zeros((8, 8), bool)}, r"mask selects no pixels \(it is all False\)"),
        ({"per_slice": True}, r"per_slice=True needs an array with at least 3 dimensions"),
        ({"per_slice": "yes"}, "per_slice must be True or False"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, match: str) -> None:
    img = np.arange(64, dtype=np.uint8).reshape(8, 8)
    with pytest.raises(ParameterError, match=match):
        medeq.equalize(img, **kwargs)


@pytest.mark.parametrize(
    ("counts", "levels", "match"),
    [
        (np.zeros(4, int), 256, "counts are all zero"),
        (np.array([1, -1, 3]), 256, "counts must not be negative"),
        (np.ones((2, 2), int), 256, r"counts must be a non-empty 1-D array, got shape \(2, 2\)"),
        (np.array([0.5, 1]), 256, "counts must hold whole numbers"),
        (np.ones(3, int), 1, "levels must be >= 2, got 1"),
    ],
)
def test_bad_lut_arguments_are_refused(counts: np.ndarray, levels: int, match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        medeq.equalization_lut(counts, levels)


def test_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="bins"):
        medeq.equalize(np.ones((2, 2), np.uint8), bins=-1)


@settings(max_examples=120, deadline=None)
@given(
    st.sampled_from([np.int16, np.uint16, np.int32, np.uint8]),
    st.integers(1, 4),
    st.integers(-3000, 3000),
    st.integers(0, 5000),
    st.sampled_from([None, 7, 256, 4096]),
    st.sampled_from([None, "inside", "wide"]),
    st.sampled_from([256, 4096, 65536]),
    st.sampled_from(["standard", "seed"]),
    st.integers(0, 2**16),
)
def test_value_mapping_from_summed_slice_counts_is_equalize(
    dtype: type,
    slices: int,
    low: int,
    span: int,
    bins: int | None,
    vr: str | None,
    levels: int,
    variant: str,
    seed: int,
) -> None:
    """Counting slice by slice, adding the counts, then mapping each slice: same pixels."""
    info = np.iinfo(dtype)
    low = int(np.clip(low, info.min, info.max))
    high = int(np.clip(low + span, info.min, info.max))
    rng = np.random.default_rng(seed)
    volume = rng.integers(low, high, (slices, 9, 11), endpoint=True).astype(dtype)
    value_range = None
    if vr == "inside" and high - low >= 4:
        value_range = (float(low + (high - low) // 4), float(high - (high - low) // 4))
    elif vr == "wide":
        value_range = (float(low - 50), float(high + 50))
    first = int(volume.min())
    counts = np.zeros(int(volume.max()) - first + 1, np.int64)
    for part in volume:  # as the workers of a conversion count them
        lo = int(part.min())
        counts[lo - first : lo - first + int(part.max()) - lo + 1] += np.bincount(
            (part.astype(np.int64) - lo).ravel()
        )
    mapping = medeq.core.value_mapping(first, counts, bins, value_range, levels, variant)
    expected = medeq.equalize(volume, bins, value_range=value_range, levels=levels, variant=variant)
    if mapping is None:
        assert variant == "standard"
        assert np.count_nonzero(medeq.histogram(volume, bins, value_range=value_range)[0]) == 1
        return
    mapped = np.stack([mapping.apply(part) for part in volume])
    np.testing.assert_array_equal(mapped, expected)
    assert mapped.dtype == expected.dtype
    hist, _ = medeq.histogram(volume, bins, value_range=value_range)
    np.testing.assert_array_equal(mapping.counts, hist)


@pytest.mark.parametrize("dtype", ["u2", "i2", "i4", "f4", "f8"])
@pytest.mark.parametrize("compiled", [True, False])
def test_big_endian_input_equals_native(dtype: str, compiled: bool) -> None:
    """Arrays in the other byte order (big-endian files) give the same result."""
    import contextlib

    from medeq import _kernels

    rng = np.random.default_rng(7)
    native = rng.integers(-500, 3000, (64, 48)).astype(f"={dtype}")
    if dtype.startswith("u"):
        native = np.abs(native)
    swapped = native.astype(f">{dtype}" if np.little_endian else f"<{dtype}")
    assert not swapped.dtype.isnative
    use = contextlib.nullcontext() if compiled else _kernels.numpy_kernels()
    with use:
        np.testing.assert_array_equal(medeq.equalize(swapped), medeq.equalize(native))
        np.testing.assert_array_equal(
            medeq.equalize(swapped, 16, mask=native > 0),
            medeq.equalize(native, 16, mask=native > 0),
        )
        a, _ = medeq.histogram(swapped, 10)
        b, _ = medeq.histogram(native, 10)
        np.testing.assert_array_equal(a, b)


def test_float_span_beyond_float64_is_refused() -> None:
    image = np.array([[-1e308, 1e308], [0.0, 1.0]])
    with pytest.raises(ParameterError, match=r"the image's values span -1e\+308 to 1e\+308"):
        medeq.equalize(image)
    with pytest.raises(ParameterError, match="wider than float64 can hold"):
        medeq.histogram(image)
    with pytest.raises(ParameterError, match=r"value_range span -1e\+308 to 1e\+308"):
        medeq.equalize(np.ones((2, 2)), value_range=(-1e308, 1e308))


@pytest.mark.parametrize("dtype", ["u1", "i2", "u2", "i4"])
def test_value_mapping_refuses_values_it_did_not_count(dtype: str) -> None:
    # A slice that changed between counting and mapping must not map silently (a negative
    # offset would index the table from its end).
    volume = np.arange(10, 60, dtype=dtype).reshape(5, 10)
    counts = np.bincount((volume - 10).ravel().astype(np.int64))
    mapping = medeq.core.value_mapping(10, counts, None, None, 256)
    assert mapping is not None
    np.testing.assert_array_equal(mapping.apply(volume), medeq.equalize(volume, levels=256))
    for bad in (volume - 1, volume + 1):
        with pytest.raises(medeq.ParameterError, match=r"outside the counted span 10\.\.59"):
            mapping.apply(bad.astype(dtype))
