"""CLAHE: an independent transcription, OpenCV and scikit-image parity, properties, errors."""

from __future__ import annotations

import importlib
import subprocess
import sys

import cv2
import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from skimage import exposure

import medeq
from medeq import ParameterError, _clahe_kernels, _threads

from .conftest import shared_file

clahe_module = importlib.import_module("medeq.clahe")

# --------------------------------------------------------------------------- oracles


def phantom(shape: tuple[int, int], low: float, high: float, seed: int) -> np.ndarray:
    """A seeded stand-in for a radiograph: soft gradient, a few ellipses, noise; float64."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]] / max(shape)
    f = 0.4 + 0.2 * np.sin(6 * x + rng.uniform(0, 6)) * np.cos(5 * y)
    for _ in range(4):
        cy, cx, ry, rx = rng.uniform(0.2, 0.8, 2).tolist() + rng.uniform(0.05, 0.25, 2).tolist()
        f += rng.uniform(-0.2, 0.3) * (((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1)
    f += rng.normal(0, 0.02, shape)
    f = (f - f.min()) / (f.max() - f.min())
    return low + f * (high - low)


def clip_reference(
    hist: np.ndarray, clip_limit: float | None, redistribution: str = "limited"
) -> np.ndarray:
    """The documented clipping, transcribed with plain Python loops."""
    h = [int(v) for v in hist]
    n, nbins = sum(h), len(h)
    if clip_limit is None:
        return np.array(h)
    limit = max(int(np.floor(clip_limit * n)), 1)
    if redistribution == "limited":
        limit = max(limit, -(-n // nbins))
    excess = sum(max(v - limit, 0) for v in h)
    h = [min(v, limit) for v in h]
    batch = excess // nbins
    if redistribution == "uniform":
        h = [v + batch for v in h]
        rest = excess - batch * nbins
        for i in range(rest):
            h[i * max(nbins // rest, 1)] += 1
        return np.array(h)
    for k in range(nbins):
        give = min(batch, limit - h[k])
        h[k] += give
        excess -= give
    offset = 0
    while excess:
        step = max(sum(v < limit for v in h) // excess, 1)
        for k in range(offset, nbins, step):
            if excess and h[k] < limit:
                h[k] += 1
                excess -= 1
        offset = (offset + 1) % nbins
    return np.array(h)


def axis_weights(size: int, kernel: int, tiles: int) -> tuple[np.ndarray, ...]:
    centres = np.arange(tiles) * kernel + kernel / 2
    lo = np.zeros(size, int)
    hi = np.zeros(size, int)
    w = np.zeros(size)
    for p in range(size):
        below = np.flatnonzero(centres <= p)
        if below.size == 0:
            continue  # before the first centre: tile 0 alone
        i = below[-1]
        lo[p] = hi[p] = i
        if i + 1 < tiles:
            hi[p] = i + 1
            w[p] = (p - centres[i]) / (centres[i + 1] - centres[i])
    return lo, hi, w


def reference(
    bin_image: np.ndarray,
    nbins: int,
    kernel: tuple[int, int],
    clip_limit: float | None,
    levels: int | None,
    redistribution: str = "limited",
) -> np.ndarray:
    """CLAHE of an image of bin indices, straight from the docs: output levels rounded
    half to even with ``levels``, else positions in [0, 1]."""
    rows, cols = bin_image.shape
    ty, tx = -(-rows // kernel[0]), -(-cols // kernel[1])
    padded = np.pad(
        bin_image, ((0, ty * kernel[0] - rows), (0, tx * kernel[1] - cols)), mode="reflect"
    )
    luts = np.zeros((ty, tx, nbins))
    for i in range(ty):
        for j in range(tx):
            tile = padded[i * kernel[0] : (i + 1) * kernel[0], j * kernel[1] : (j + 1) * kernel[1]]
            counts = np.bincount(tile.ravel(), minlength=nbins)
            hist = clip_reference(counts, clip_limit, redistribution)
            luts[i, j] = medeq.equalization_lut(hist, levels, variant="seed")
    ylo, yhi, wy = axis_weights(rows, kernel[0], ty)
    xlo, xhi, wx = axis_weights(cols, kernel[1], tx)
    yy, xx = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    b = bin_image
    a = luts[ylo[yy], xlo[xx], b]
    top = a + wx[xx] * (luts[ylo[yy], xhi[xx], b] - a)
    a = luts[yhi[yy], xlo[xx], b]
    bottom = a + wx[xx] * (luts[yhi[yy], xhi[xx], b] - a)
    blend = top + wy[yy] * (bottom - top)
    return blend if levels is None else np.rint(blend)


def integer_bins(img: np.ndarray, nbins: int) -> np.ndarray:
    lo, hi = int(img.min()), int(img.max())
    return (img.astype(np.int64) - lo) * nbins // (hi - lo + 1)


def opencv_tile(shape: tuple[int, int], grid: int) -> tuple[int, int]:
    """The tile size cv2.createCLAHE uses: unless both sides divide by the grid it pads
    both, by ``grid - size % grid`` (a whole extra tile row when a side divides)."""
    if shape[0] % grid == 0 and shape[1] % grid == 0:
        return shape[0] // grid, shape[1] // grid
    return (shape[0] // grid + 1, shape[1] // grid + 1)


def difference(ours: np.ndarray, theirs: np.ndarray, span: float) -> tuple[float, float]:
    """Mean absolute and mean signed difference, as fractions of the output range."""
    d = ours.astype(np.float64) - theirs.astype(np.float64)
    return float(np.abs(d).mean() / span), float(d.mean() / span)


# --------------------------------------------------------------------------- the algorithm


@settings(max_examples=120, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 40),
    st.integers(1, 45),
    st.integers(1, 45),
    st.sampled_from([None, 1.0, 0.3, 0.05, 0.01, 0.001]),
    st.sampled_from(["limited", "uniform"]),
    st.integers(0, 2**32 - 1),
)
def test_matches_a_transcription_of_the_documented_algorithm(
    rows: int, cols: int, ky: int, kx: int, clip: float | None, redistribution: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, rng.integers(2, 256, endpoint=True), (rows, cols), dtype=np.uint8)
    out = medeq.clahe(img, kernel_size=(ky, kx), clip_limit=clip, redistribution=redistribution)
    if img.min() == img.max():
        np.testing.assert_array_equal(out, img)
        return
    nbins = int(img.max()) - int(img.min()) + 1
    kernel = (min(ky, rows), min(kx, cols))
    expected = reference(integer_bins(img, nbins), nbins, kernel, clip, 256, redistribution)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("bins", [7, 64, 300])
def test_transcription_holds_for_signed_and_float_data_and_any_bins(
    rng: np.random.Generator, bins: int
) -> None:
    hu = np.rint(phantom((70, 90), -1000, 1500, seed=bins)).astype(np.int16)
    out = medeq.clahe(hu, bins, kernel_size=(20, 25), clip_limit=0.02)
    expected = reference(integer_bins(hu, bins), bins, (20, 25), 0.02, 65536)
    np.testing.assert_array_equal(out, expected)
    out = medeq.clahe(hu, bins, kernel_size=(20, 25), clip_limit=0.02, levels=1000)
    expected = reference(integer_bins(hu, bins), bins, (20, 25), 0.02, 1000)
    np.testing.assert_array_equal(out, expected)
    out = medeq.clahe(hu, bins, kernel_size=(20, 25), clip_limit=0.02, redistribution="uniform")
    expected = reference(integer_bins(hu, bins), bins, (20, 25), 0.02, 65536, "uniform")
    np.testing.assert_array_equal(out, expected)

    f = rng.normal(size=(50, 60)).astype(np.float32)
    f64, lo, hi = f.astype(np.float64), float(f.min()), float(f.max())
    idx = np.minimum(np.floor((f64 - lo) * (bins / (hi - lo))).astype(int), bins - 1)
    expected = reference(idx, bins, (16, 16), 0.02, None)
    out = medeq.clahe(f, bins, kernel_size=16, clip_limit=0.02)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-7)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 500), min_size=1, max_size=300),
    st.sampled_from([1.0, 0.2, 0.05, 0.01, 0.003]),
    st.booleans(),
)
def test_tile_mapping_is_equalization_lut_of_the_clipped_histogram(
    counts: list[int], clip: float, uniform: bool
) -> None:
    # One tile whose pixels are the bins 0..B-1 repeated by `counts`.
    nbins = len(counts)
    if sum(counts) == 0:
        counts[0] = 1
    pixels = np.repeat(np.arange(nbins, dtype=np.uint16), counts)[None, :]
    table = np.arange(nbins, dtype=np.uint16)
    edges = (np.array([0, 1]), np.array([0, pixels.shape[1]]))
    luts = np.empty((1, 1, nbins))
    levels = np.empty((1, 1, nbins), np.uint8)
    filled = np.zeros((1, 1), bool)
    scratch = np.empty(nbins, np.int32)
    for out, levels_ in (((levels, filled), 256), ((luts, filled), None)):
        _clahe_kernels.tile_mappings(
            pixels, table, None, edges, (clip, uniform), levels_, out, scratch, (0, 1)
        )
    clipped = scratch
    total = sum(counts)
    limit = max(int(np.floor(clip * total)), 1)
    assert filled[0, 0]
    assert clipped.sum() == total
    if uniform:
        # Every bin got the same share of the excess, give or take one count.
        assert np.ptp(clipped - np.minimum(counts, limit)) <= 1
    else:
        assert clipped.max() <= max(limit, -(-total // nbins))
    expected = clip_reference(np.array(counts), clip, "uniform" if uniform else "limited")
    np.testing.assert_array_equal(clipped, expected)
    # Bit for bit the core's LUT builder, so the compiled loop duplicates no formula.
    np.testing.assert_array_equal(luts[0, 0], medeq.equalization_lut(clipped, None, variant="seed"))
    assert np.all(np.diff(luts[0, 0]) >= 0)
    assert luts[0, 0, -1] == pytest.approx(1.0)


# --------------------------------------------------------------------------- peers' inputs


def ct_phantom(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A seeded 12-bit CT-like slice in uint16: air, a body of soft tissue with organs, a
    bone, noise. Most of each tile's pixels sit in a few bins, so clipping bites."""
    rng = np.random.default_rng(seed)
    y, x = (np.mgrid[0 : shape[0], 0 : shape[1]] - np.array(shape)[:, None, None] / 2) / max(shape)
    img = np.full(shape, 24.0)  # air: -1000 HU plus 1024
    body = (y / 0.4) ** 2 + (x / 0.45) ** 2 < 1
    img[body] = 1064 + 40 * np.sin(8 * x[body] + rng.uniform(0, 6))
    for _ in range(5):
        cy, cx, ry, rx = rng.uniform(-0.2, 0.2, 2).tolist() + rng.uniform(0.03, 0.1, 2).tolist()
        img[((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1] += rng.uniform(-80, 120)
    img[((y - 0.22) / 0.05) ** 2 + (x / 0.06) ** 2 < 1] = 1924  # bone
    img += rng.normal(0, 12, shape)
    return np.clip(np.rint(img), 0, 4095).astype(np.uint16)


def real_image(name: str) -> np.ndarray:
    """A real slice shifted to non-negative values (uint16): pydicom's bundled CT_small,
    or a shared file (the test skips when the shared files are absent)."""
    if name == "CT_small":
        stored = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array
    else:
        stored = np.asarray(medeq.read(shared_file(name)).stored)[0]
    values = stored.astype(np.int64)
    return (values - values.min()).astype(np.uint16)


REAL = ["CT_small", "wg04__CT1_UNC.dcm", "fodicom__CR-MONO1-10-chest.dcm", "wg04__MR1_UNC.dcm"]


def peer_input(name: str, dtype: type) -> np.ndarray:
    """Seeded or real input for the parity tests, in uint16 or scaled to uint8."""
    rng = np.random.default_rng(31)
    if name == "smooth":
        img = np.rint(phantom((384, 500), 300, 3800, seed=7)).astype(np.uint16)
    elif name == "noise":
        img = rng.integers(0, 4096, (250, 333)).astype(np.uint16)
    elif name == "CT-like":
        img = ct_phantom((300, 420), seed=3)
    else:
        img = real_image(name)
    if dtype == np.uint8:
        return np.rint(img * (255 / img.max())).astype(np.uint8)
    return img


# --------------------------------------------------------------------------- OpenCV parity


def opencv_recipe(
    img: np.ndarray, grid: int, clip_limit: float, redistribution: str = "uniform"
) -> np.ndarray:
    """``cv2.createCLAHE(clip_limit, (grid, grid)).apply(img)`` as docs/clahe.md spells it
    for medeq: every level of the dtype a bin, OpenCV's tile size, clipLimit over bins."""
    nbins = 256 if img.dtype == np.uint8 else 65536
    return medeq.clahe(
        img,
        nbins,
        value_range=(0, nbins - 1),
        kernel_size=opencv_tile(img.shape, grid),
        clip_limit=clip_limit / nbins,
        redistribution=redistribution,
    )


@pytest.mark.parametrize("name", ["smooth", "noise", "CT-like", *REAL])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_uniform_redistribution_is_opencv(name: str, dtype: type) -> None:
    img = peer_input(name, dtype)
    span = np.iinfo(dtype).max
    for grid, clip_limit in ((8, 2.0), (8, 10.0), (8, 40.0), (4, 3.0)):
        theirs = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(grid, grid)).apply(img)
        ours = opencv_recipe(img, grid, clip_limit)
        mad, bias = difference(ours, theirs, span)
        # Same limit, redistribution, tiles, padding, centres and table rounding: only
        # OpenCV's single-precision arithmetic can tip a rounding by one level
        # (measured: at most 0.001 % of the range).
        assert mad < 5e-5, (grid, clip_limit)
        assert abs(bias) < 2e-5, (grid, clip_limit)
        assert np.abs(ours.astype(np.int64) - theirs).max() <= 1


@pytest.mark.parametrize("shape", [(512, 512), (333, 250)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_without_clipping_is_opencv_up_to_rounding(shape: tuple[int, int], dtype: type) -> None:
    # Same tiles, centres, padding, mapping and rounding of each tile's table to output
    # levels: only OpenCV's single-precision blend can tip a rounding (measured: up to
    # 0.6 % of the pixels, by one level).
    top = np.iinfo(dtype).max
    img = np.rint(phantom(shape, 0, top, seed=12)).astype(dtype)
    theirs = cv2.createCLAHE(clipLimit=0, tileGridSize=(8, 8)).apply(img)
    ours = medeq.clahe(
        img, top + 1, value_range=(0, top), kernel_size=opencv_tile(shape, 8), clip_limit=None
    )
    assert np.abs(ours.astype(np.int64) - theirs).max() <= 1
    assert np.mean(ours != theirs) < 0.01


def test_limited_redistribution_parts_from_opencv_where_clipping_bites() -> None:
    # The default keeps every bin at or below the limit, so the counts OpenCV leaves on
    # the full bins (air, soft tissue) go to the sparse and empty ones instead; on this CT
    # at clipLimit 2 that darkens the result by 3 % of the range (docs/clahe.md).
    img = peer_input("CT_small", np.uint8)
    theirs = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(img)
    mad, bias = difference(opencv_recipe(img, 8, 2.0, "limited"), theirs, 255)
    assert mad > 0.03
    assert bias < -0.02
    mad, bias = difference(opencv_recipe(img, 8, 2.0), theirs, 255)
    assert mad == bias == 0.0


# --------------------------------------------------------------------------- scikit-image


def skimage_recipe(img: np.ndarray, clip_limit: float) -> np.ndarray:
    """``equalize_adapthist(img, clip_limit=clip_limit)`` (nbins=256) as docs/clahe.md
    spells it for medeq: bins of 65 of scikit-image's 2**14 levels over the data's range,
    256 of them, the last three above the data."""
    f = np.asarray(img, dtype=np.float64)
    level = (f.max() - f.min()) / (2**14 - 1)
    start = f.min() - level / 2
    return medeq.clahe(f, 256, value_range=(start, start + 256 * 65 * level), clip_limit=clip_limit)


def rescaled(out: np.ndarray) -> np.ndarray:
    """scikit-image's last step: the output stretched from its own minimum and maximum."""
    return (out - out.min()) / (out.max() - out.min())


@pytest.mark.parametrize("name", ["CT-like", *REAL])
def test_realistic_images_are_close_to_scikit_image(name: str) -> None:
    img = peer_input(name, np.uint16)
    for clip_limit in (0.01, 0.02, 0.05):
        theirs = exposure.equalize_adapthist(img, clip_limit=clip_limit)
        ours = skimage_recipe(img, clip_limit)
        mad, bias = difference(ours, theirs, 1.0)
        if clip_limit == 0.01:
            # scikit-image's default (measured: 0.2 to 0.65 %).
            assert mad < 0.0075
        else:
            # Its final stretch grows with the limit (the darkest mapped value rises).
            assert mad < 0.025
        # With that stretch done to medeq's output too (measured: at most 0.4 %).
        mad, bias = difference(rescaled(ours), theirs, 1.0)
        assert mad < 0.005, clip_limit
        assert abs(bias) < 0.004, clip_limit


@pytest.mark.parametrize("shape", [(256, 256), (300, 200)])
@pytest.mark.parametrize("clip_limit", [0.01, 0.02, 0.05])
def test_float_is_close_to_scikit_image(shape: tuple[int, int], clip_limit: float) -> None:
    # On a smooth image the plain 252 bins over the data's range do nearly as well
    # (measured: MAD 0.19 to 0.75 %, bias up to 0.47 %; recipe: bias up to 0.17 %).
    img = phantom(shape, 0.0, 1.0, seed=11)
    theirs = exposure.equalize_adapthist(img, clip_limit=clip_limit)
    mad, bias = difference(medeq.clahe(img, 252, clip_limit=clip_limit), theirs, 1.0)
    assert mad < 0.008
    assert abs(bias) < 0.005
    mad, bias = difference(skimage_recipe(img, clip_limit), theirs, 1.0)
    assert mad < 0.008
    assert abs(bias) < 0.002


def test_uint16_is_close_to_scikit_image() -> None:
    img = np.rint(phantom((256, 320), 0, 4095, seed=5)).astype(np.uint16)
    theirs = exposure.equalize_adapthist(img)
    ours = medeq.clahe(img, 252)
    mad, bias = difference(ours, theirs.astype(np.float64) * 65535, 65535)
    assert mad < 0.01
    assert abs(bias) < 0.004


# --------------------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 60), st.integers(2, 60), st.integers(0, 2**32 - 1))
def test_one_tile_without_clipping_is_global_equalization(rows: int, cols: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    img = rng.integers(-2000, 3000, (rows, cols)).astype(np.int16)
    expected = medeq.equalize(img, 100, variant="seed")
    np.testing.assert_array_equal(
        medeq.clahe(img, 100, kernel_size=10**6, clip_limit=None), expected
    )
    np.testing.assert_array_equal(
        medeq.clahe(img, 100, kernel_size=10**6, clip_limit=1.0), expected
    )
    np.testing.assert_array_equal(
        medeq.clahe(img, 100, kernel_size=10**6, clip_limit=None, redistribution="uniform"),
        expected,
    )


def test_one_tile_without_clipping_matches_equalize_for_every_dtype_and_mask(
    rng: np.random.Generator,
) -> None:
    mask = rng.random((48, 64)) < 0.6
    for img in (
        rng.integers(0, 256, (48, 64), dtype=np.uint8),
        rng.integers(0, 4096, (48, 64)).astype(np.uint16),
        rng.normal(size=(48, 64)).astype(np.float32),
        rng.normal(size=(48, 64)),
        rng.integers(-(2**40), 2**40, (48, 64)),
    ):
        for m in (None, mask):
            for levels in (None, 256, 4096):
                np.testing.assert_array_equal(
                    medeq.clahe(img, 97, kernel_size=64, clip_limit=None, mask=m, levels=levels),
                    medeq.equalize(img, 97, mask=m, levels=levels, variant="seed"),
                )


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 50),
    st.integers(2, 50),
    st.integers(2, 65536),
    st.sampled_from([None, 0.01, 0.1]),
    st.integers(0, 2**32 - 1),
)
def test_output_is_within_the_levels(
    rows: int, cols: int, levels: int, clip: float | None, seed: int
) -> None:
    img = np.random.default_rng(seed).normal(size=(rows, cols))
    out = medeq.clahe(img, kernel_size=7, clip_limit=clip, levels=levels)
    assert out.dtype == (np.uint8 if levels <= 256 else np.uint16)
    assert out.min() >= 0
    assert out.max() <= levels - 1


def test_mapping_is_monotone_within_a_tile(rng: np.random.Generator) -> None:
    img = np.rint(phantom((128, 96), 0, 4000, seed=2)).astype(np.uint16)
    out = medeq.clahe(img, kernel_size=(128, 96))
    order = np.argsort(img, axis=None, kind="stable")
    assert np.all(np.diff(out.ravel()[order].astype(np.int64)) >= 0)
    # ... and every pixel of every tile: its tile mappings are non-decreasing.
    for clip in (None, 0.01):
        src, table = clahe_module._bin_source(
            img, medeq.core.make_binning(img, None, None, (0, 4000))
        )
        edges = (clahe_module._tile_edges(128, 20), clahe_module._tile_edges(96, 20))
        luts = clahe_module._tile_mappings(
            src, table, None, edges, 4001, (clip, clahe_module.Redistribution.LIMITED), None
        )
        assert luts is not None
        assert np.all(np.diff(luts, axis=2) >= 0)
        np.testing.assert_allclose(luts[..., -1], 1.0)


@pytest.mark.parametrize(
    "img",
    [
        np.full((40, 50), 9, np.uint8),
        np.full((40, 50), -700, np.int16),
        np.full((3, 20, 20), 0.25, np.float32),
        np.full((1, 1), 1234, np.uint16),
    ],
    ids=["uint8", "int16", "float32 volume", "one pixel"],
)
def test_constant_image_stays_constant(img: np.ndarray) -> None:
    out = medeq.clahe(img)
    assert np.unique(out).size == 1
    np.testing.assert_array_equal(out, medeq.equalize(img))


@pytest.mark.parametrize("redistribution", ["limited", "uniform"])
def test_clip_limit_limits_contrast(redistribution: str) -> None:
    img = np.rint(phantom((256, 256), 1000, 1400, seed=4)).astype(np.uint16)
    loose = medeq.clahe(img, 256, clip_limit=1.0, redistribution=redistribution)
    tight = medeq.clahe(img, 256, clip_limit=0.01, redistribution=redistribution)
    loose, tight = loose.astype(np.float64), tight.astype(np.float64)
    np.testing.assert_array_equal(loose, medeq.clahe(img, 256, clip_limit=None))
    # Local contrast (neighbour differences) and the spread grow with the limit ...
    assert np.abs(np.diff(loose, axis=1)).mean() > 1.5 * np.abs(np.diff(tight, axis=1)).mean()
    # ... and a tighter limit keeps the mapping closer to a linear stretch.
    linear = (img - img.min()) / (img.max() - img.min()) * 65535.0
    assert np.abs(tight - linear).mean() < np.abs(loose - linear).mean()


def test_signed_data_keeps_its_negative_values(rng: np.random.Generator) -> None:
    hu = np.rint(phantom((96, 128), -1024, 2000, seed=8)).astype(np.int16)
    shifted = (hu.astype(np.int32) + 1024).astype(np.uint16)
    out = medeq.clahe(hu)
    np.testing.assert_array_equal(out, medeq.clahe(shifted))
    # Every distinct negative value stays distinguishable (scikit-image clips them all).
    negative = hu < 0
    assert np.unique(out[negative]).size > 0.5 * np.unique(hu[negative]).size


def test_dtypes_follow_the_equalize_policy(rng: np.random.Generator) -> None:
    cases = {
        np.uint8: np.uint8,
        np.int8: np.uint8,
        np.uint16: np.uint16,
        np.int16: np.uint16,
        np.uint32: np.uint32,
        np.int64: np.uint64,
        np.float16: np.float64,
        np.float32: np.float32,
        np.float64: np.float64,
    }
    for dtype, out_dtype in cases.items():
        img = (rng.random((33, 41)) * 100).astype(dtype)
        out = medeq.clahe(img, kernel_size=10)
        assert out.dtype == out_dtype, dtype
        if out.dtype.kind == "u":
            assert out.max() == np.iinfo(out.dtype).max or out.dtype.itemsize == 8
        else:
            assert out.min() >= 0.0 and out.max() <= 1.0


def test_input_is_not_modified(rng: np.random.Generator) -> None:
    img = rng.integers(0, 4096, (64, 64)).astype(np.uint16)
    mask = rng.random((64, 64)) < 0.5
    before, mask_before = img.copy(), mask.copy()
    medeq.clahe(img, mask=mask)
    np.testing.assert_array_equal(img, before)
    np.testing.assert_array_equal(mask, mask_before)


def test_non_contiguous_input_gives_the_same_result(rng: np.random.Generator) -> None:
    img = rng.integers(0, 4096, (64, 80)).astype(np.uint16)
    np.testing.assert_array_equal(medeq.clahe(np.asfortranarray(img)), medeq.clahe(img))
    np.testing.assert_array_equal(medeq.clahe(img.T), medeq.clahe(img.T.copy()))


def test_threads_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    img = np.rint(phantom((300, 260), 0, 4095, seed=6)).astype(np.uint16)
    single = medeq.clahe(img, kernel_size=37)
    monkeypatch.setattr(_threads, "MIN_PIXELS_PER_THREAD", 1)
    monkeypatch.setattr(_threads, "cpus", lambda: 3)
    np.testing.assert_array_equal(medeq.clahe(img, kernel_size=37), single)


def test_importing_medeq_compiles_nothing() -> None:
    code = (
        "import medeq, medeq._clahe_kernels as k; "
        "assert not any(f.signatures for f in "
        "(k._histogram, k._clip, k._clip_and_map, k._tile_mappings, k._interpolate))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize("redistribution", ["limited", "uniform"])
def test_pixels_outside_the_mask_do_not_change_the_mappings(
    rng: np.random.Generator, redistribution: str
) -> None:
    img = np.rint(phantom((96, 96), 0, 4000, seed=9)).astype(np.uint16)
    mask = np.zeros(img.shape, bool)
    mask[10:90, 20:80] = True
    other = img.copy()
    other[~mask] = rng.integers(0, 4000, int((~mask).sum()))
    a = medeq.clahe(img, mask=mask, kernel_size=24, redistribution=redistribution)
    b = medeq.clahe(other, mask=mask, kernel_size=24, redistribution=redistribution)
    np.testing.assert_array_equal(a[mask], b[mask])
    assert not np.array_equal(a, medeq.clahe(img, kernel_size=24, redistribution=redistribution))


def test_tiles_without_masked_pixels_borrow_their_neighbours_mapping(
    rng: np.random.Generator,
) -> None:
    img = rng.integers(0, 1000, (40, 80)).astype(np.uint16)
    mask = np.zeros(img.shape, bool)
    mask[:, :40] = True  # the left tile only
    out = medeq.clahe(img, mask=mask, kernel_size=(40, 40), clip_limit=None)
    # The right tile takes the left tile's mapping, so one mapping covers the image.
    np.testing.assert_array_equal(out, medeq.equalize(img, mask=mask, variant="seed"))


def test_borrowed_mappings_are_means_of_the_nearest_filled_tiles() -> None:
    luts = np.zeros((3, 4, 2))
    filled = np.zeros((3, 4), bool)
    luts[0, 0] = [0.2, 1.0]
    luts[2, 3] = [0.6, 1.0]
    filled[0, 0] = filled[2, 3] = True
    clahe_module._borrow_mappings(luts, filled)
    assert filled.all()
    np.testing.assert_allclose(luts[0, 1], [0.2, 1.0])  # next to (0, 0) only
    np.testing.assert_allclose(luts[1, 2], [0.6, 1.0])  # next to (2, 3) only
    np.testing.assert_allclose(luts[1, 1], [0.2, 1.0])  # ring 1 of (0, 0) only
    # Ring 2 averages the ring-1 tiles around it.
    np.testing.assert_allclose(luts[0, 2], [0.4, 1.0])  # (0, 1), (1, 1), (1, 2), (1, 3)
    np.testing.assert_allclose(luts[0, 3], [0.6, 1.0])  # (1, 2), (1, 3)
    np.testing.assert_allclose(luts[2, 0], [0.2, 1.0])  # (1, 0), (1, 1)
    np.testing.assert_allclose(luts[2, 1], [0.4, 1.0])  # (1, 0), (1, 1), (1, 2), (2, 2)
    assert np.all(np.diff(luts, axis=2) >= 0)


def test_volume_slices_use_the_volume_binning(rng: np.random.Generator) -> None:
    vol = np.rint(
        np.stack([phantom((60, 70), -500 + 300 * i, 800 + 200 * i, seed=i) for i in range(3)])
    ).astype(np.int16)
    out = medeq.clahe(vol, kernel_size=20)
    lo, hi = int(vol.min()), int(vol.max())
    for i in range(3):
        np.testing.assert_array_equal(
            out[i], medeq.clahe(vol[i], kernel_size=20, value_range=(lo, hi))
        )


def test_volume_slice_without_masked_pixels_is_left_as_it_is(rng: np.random.Generator) -> None:
    vol = rng.integers(0, 256, (2, 30, 30), dtype=np.uint8)
    mask = np.zeros(vol.shape, bool)
    mask[1] = True
    out = medeq.clahe(vol, mask=mask, kernel_size=10)
    np.testing.assert_array_equal(out[0], vol[0])
    np.testing.assert_array_equal(out[1], medeq.clahe(vol[1], kernel_size=10))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kernel_size": 0}, r"kernel_size must hold whole numbers >= 1, got 0"),
        ({"kernel_size": (8, -1)}, r"kernel_size must hold whole numbers >= 1, got \(8, -1\)"),
        ({"kernel_size": 2.5}, r"kernel_size must be a whole number or a pair .*got 2\.5"),
        ({"kernel_size": True}, "kernel_size must be a whole number or a pair, got True"),
        ({"kernel_size": "8"}, r"kernel_size must be a whole number or a pair .*got '8'"),
        ({"kernel_size": (4, 4, 4)}, r"slice by slice\), got \(4, 4, 4\)"),
        ({"clip_limit": 0}, r"clip_limit must be in \(0, 1\] .*got 0; .* medeq spells that None"),
        ({"clip_limit": 1.5}, r"clip_limit must be in \(0, 1\] .*got 1\.5$"),
        ({"clip_limit": -0.1}, r"clip_limit must be in \(0, 1\]"),
        ({"clip_limit": float("nan")}, r"clip_limit must be in \(0, 1\]"),
        ({"clip_limit": "0.01"}, r"clip_limit must be a number in \(0, 1\] or None, got '0\.01'"),
        ({"clip_limit": True}, "clip_limit must be a number"),
        (
            {"redistribution": "opencv"},
            r"redistribution must be one of 'limited', 'uniform', got 'opencv'",
        ),
        ({"bins": 0}, r"bins must be between 1 and \d+, got 0"),
        ({"levels": 1}, "levels must be between 2 and 65536, got 1"),
        ({"value_range": (5, 5)}, r"value_range must be finite with low < high"),
        ({"mask": np.ones((3, 3), bool)}, r"mask shape \(3, 3\) does not match image shape"),
        ({"mask": np.zeros((16, 16), bool)}, r"mask selects no pixels"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, match: str) -> None:
    img = np.arange(256, dtype=np.uint8).reshape(16, 16)
    with pytest.raises(ParameterError, match=match):
        medeq.clahe(img, **kwargs)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((2, 2, 2, 2), np.uint8), r"2-D .* or 3-D .* for clahe, got shape \(2, 2, 2, 2\)"),
        (np.zeros(10, np.uint8), r"at least 2 dimensions"),
        (np.zeros((4, 4), bool), "dtype bool"),
        (np.array([[1.0, np.nan]]), "non-finite value"),
    ],
)
def test_bad_images_are_refused(image: np.ndarray, match: str) -> None:
    with pytest.raises(ParameterError, match=f"^image.*{match}"):
        medeq.clahe(image)


def test_too_many_tile_entries_are_refused() -> None:
    img = np.zeros((2048, 2048), np.uint16)
    img[0, 0] = 65535
    with pytest.raises(ParameterError, match=r"kernel_size=8 gives 65536 tiles of 65536 bins"):
        medeq.clahe(img, kernel_size=8)
