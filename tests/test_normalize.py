"""Normalisation: Modality LUT, windows and presets, MONOCHROME1, and bad window arguments."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.data import get_testdata_file

import medeq
from medeq import ParameterError, Preset

from .conftest import shared_file


@pytest.fixture
def ct() -> medeq.DicomImage:
    return medeq.read(get_testdata_file("CT_small.dcm"))


def test_full_range_keeps_hu_as_int16(ct: medeq.DicomImage) -> None:
    norm = medeq.normalize(ct, window="none")
    assert norm.array.dtype == np.int16
    assert norm.value_range == (norm.array.min(), norm.array.max())
    assert norm.levels == int(norm.array.max()) - int(norm.array.min()) + 1
    assert norm.units == "HU"
    assert norm.voi == "full range"
    np.testing.assert_array_equal(norm.array, ct.stored.astype(int) - 1024)


@pytest.mark.parametrize(
    ("preset", "lo", "hi"),
    [("brain", 0, 80), ("lung", -1350, 150), ("bone", -500, 1300), ("abdomen", -160, 240)],
)
def test_presets_cover_their_window(ct: medeq.DicomImage, preset: str, lo: int, hi: int) -> None:
    norm = medeq.normalize(ct, window=preset)
    assert norm.value_range == (lo, hi)
    assert norm.levels == hi - lo + 1
    assert norm.window == Preset(preset).window
    assert norm.voi.startswith(f"window {Preset(preset).window.center:g}/")


def test_linear_window_bounds_follow_the_standard() -> None:
    # PS3.3 C.11.2.1.2.1: x <= c - 0.5 - (w-1)/2 -> min; x > c - 0.5 + (w-1)/2 -> max.
    image = medeq.read(get_testdata_file("MR_small.dcm"))  # window 600/1600
    norm = medeq.normalize(image)
    c, w = 600, 1600
    assert norm.value_range == (
        np.floor(c - 0.5 - (w - 1) / 2),
        np.floor(c - 0.5 + (w - 1) / 2) + 1,
    )


def test_linear_exact_window_bounds_follow_the_standard() -> None:
    # PS3.3 C.11.2.1.3.2: x <= c - w/2 -> min; x > c + w/2 -> max. For 40/401 in HU:
    # -160.5 and 240.5, so -161 is the last level at the minimum and 241 the first at the
    # maximum (LINEAR would give -161 and 240: the two functions differ by half a level).
    import pydicom

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 40, 401, "LINEAR_EXACT"
    norm = medeq.normalize(medeq.read(ds))
    assert norm.window is not None and norm.window.function == "LINEAR_EXACT"
    assert norm.value_range == (-161, 241)
    assert norm.levels == 241 - (-161) + 1
    ds.VOILUTFunction = "LINEAR"
    assert medeq.normalize(medeq.read(ds)).value_range == (-161, 240)


@pytest.mark.parametrize("spec", [(40, 400), [40, 400], "40,400", " 40 / 400 ", (40.0, 400.0)])
def test_explicit_window_spellings(ct: medeq.DicomImage, spec: object) -> None:
    assert medeq.normalize(ct, window=spec).value_range == (-160, 240)  # type: ignore[arg-type]


def test_window_index_picks_among_several() -> None:
    image = medeq.read(shared_file("fodicom__GH133.dcm"))
    assert len(image.info.windows) == 3
    spans = {medeq.normalize(image, window=i).window for i in range(3)}
    assert len(spans) == 3
    with pytest.raises(ParameterError, match=r"window index 3 is out of range: .*has 3 window"):
        medeq.normalize(image, window=3)


def test_sigmoid_window_is_monotone_in_modality_values() -> None:
    image = medeq.read(shared_file("fodicom__GH133.dcm"))
    assert image.info.windows[0].function == "SIGMOID"
    norm = medeq.normalize(image)
    values = image.stored[0, ::16, ::16].ravel()
    mapped = norm.array[0, ::16, ::16].ravel()
    order = np.argsort(values, kind="stable")
    assert np.all(np.diff(mapped[order]) >= 0)
    assert norm.value_range == (0.0, 1.0)


def test_float_rescale_gives_float32_and_stored_level_count() -> None:
    image = medeq.read(shared_file("fodicom__abd1_adb1_1.dcm"))
    slope = image.info.rescale_slope
    norm = medeq.normalize(image, window="none")
    assert norm.array.dtype == np.float32
    np.testing.assert_allclose(norm.array, image.stored * slope, rtol=1e-6)
    assert norm.levels == int(image.stored.max()) + 1


def test_monochrome1_inversion_mirrors_the_window() -> None:
    image = medeq.read(shared_file("wg04__RG3_UNC.dcm"))
    norm = medeq.normalize(image)
    lo, hi = norm.value_range
    np.testing.assert_array_equal(norm.array.astype(int), int(lo + hi) - image.stored.astype(int))
    assert "MONOCHROME1 inverted" in norm.voi


def test_series_auto_window_is_the_union_of_slice_windows() -> None:
    series = medeq.read_series([shared_file(f"fodicom__abd1_adb1_{i}.dcm") for i in (1, 6)])[0]
    norm = medeq.normalize(series)
    assert norm.array.shape == (2, 256, 256)
    singles = [medeq.normalize(im).value_range for im in series.images]
    assert norm.value_range == (min(s[0] for s in singles), max(s[1] for s in singles))
    assert "union of 2 windows" in norm.voi


@pytest.mark.parametrize(
    ("window", "match"),
    [
        ("soft", r"window must be 'auto', 'none', an index, a preset \(brain.*got 'soft'"),
        (-1, "window index must be >= 0, got -1"),
        ((40, 0), r"width >= 1, got \(40.0, 0.0\)"),
        ((40, float("nan")), "must be finite"),
        ("40,0", "width >= 1"),
        (True, "window must be a mode"),
        ({"c": 1}, "window must be"),
        (5, r"window index 5 is out of range: .* has no windows"),
    ],
)
def test_bad_windows(ct: medeq.DicomImage, window: object, match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        medeq.normalize(ct, window=window)  # type: ignore[arg-type]


def test_ct_preset_on_mr_is_refused() -> None:
    image = medeq.read(get_testdata_file("MR_small.dcm"))
    with pytest.raises(ParameterError, match=r"preset 'lung' is in HU, but .*MR_small.dcm is MR"):
        medeq.normalize(image, window="lung")


def test_normalize_rejects_other_objects() -> None:
    with pytest.raises(ParameterError, match="image must be a DicomImage or a Series, got ndarray"):
        medeq.normalize(np.zeros((4, 4)))


def test_unsupported_voi_function(ct: medeq.DicomImage) -> None:
    import pydicom

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 40, 400, "FOO"
    with pytest.raises(
        medeq.UnsupportedImageError, match=r"unsupported \(0028,1056\) VOI LUT Function value 'FOO'"
    ):
        medeq.normalize(medeq.read(ds))
