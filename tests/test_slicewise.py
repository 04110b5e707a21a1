"""Slice-wise global equalization from value counts equals enhance() of the volume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import medeq
from medeq._slicewise import MAX_SPAN, count_values, equalize_counted
from medeq.normalize import voi_plan

from .conftest import SHARED_DICOM, synthetic_series


def _counted(series: medeq.Series, **options: Any) -> Any:
    window = options.get("window", "auto")
    plan = voi_plan(series.images, window)
    counts = []
    for image in series.images:
        c = count_values(plan.values(image))
        assert c is not None
        counts.append(c)
    return plan, equalize_counted(series.images, plan, counts, **options)


def _assert_same_as_enhance(series: medeq.Series, **options: Any) -> None:
    plan, counted = _counted(series, **options)
    assert counted is not None
    derived = medeq.enhance(series, **options)
    for n, image in enumerate(series.images):
        np.testing.assert_array_equal(
            counted.map(image, plan.values(image)), derived.image_pixels(n), err_msg=image.name
        )
    assert counted.header_options == derived.header_options
    assert counted.series_uid == derived.series_uid
    assert counted.before == derived.before
    assert counted.after == derived.after
    assert counted.window() == derived.window()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"window": "none"},
        {"window": "none", "bins": 7},
        {"variant": "seed", "levels": 256},
        {"window": (40.0, 400.0), "bins": 100, "levels": 4096},
        {"window": "-100,50", "variant": "seed"},
    ],
)
def test_counted_equalization_equals_enhance(tmp_path: Path, options: dict[str, Any]) -> None:
    synthetic_series(tmp_path / "in")
    series_list = medeq.read_series(tmp_path / "in")
    assert sorted(len(s.images) for s in series_list) == [3, 4]
    inverted = [s for s in series_list if s.images[0].info.photometric == "MONOCHROME1"]
    assert len(inverted) == 1  # MONOCHROME1 is mirrored before its counts are added up
    for series in series_list:
        _assert_same_as_enhance(series, **options)


def test_real_ct_series_counted_equal_enhance() -> None:
    if not SHARED_DICOM.is_dir():
        pytest.skip(f"shared DICOM folder {SHARED_DICOM} is absent (set MEDEQ_TEST_DATA)")
    (series,) = medeq.read_series(sorted(SHARED_DICOM.glob("dcmqi__ct-3slice_*.dcm")))
    assert len(series.images) == 3
    _assert_same_as_enhance(series)
    _assert_same_as_enhance(series, window="none", bins=256)
    _assert_same_as_enhance(series, window="lung", levels=256, variant="seed")


def test_fractional_modality_values_are_not_counted() -> None:
    """The 11-slice MR has a fractional (0028,1053) Rescale Slope: equalized as a volume."""
    if not SHARED_DICOM.is_dir():
        pytest.skip(f"shared DICOM folder {SHARED_DICOM} is absent (set MEDEQ_TEST_DATA)")
    (series,) = medeq.read_series(sorted(SHARED_DICOM.glob("fodicom__abd1_*.dcm")))
    plan = voi_plan(series.images)
    assert count_values(plan.values(series.images[0])) is None


def test_count_values_refuses_what_it_cannot_count() -> None:
    assert count_values(np.zeros((2, 3), np.float32)) is None
    assert count_values(np.array([[0, MAX_SPAN]], np.int32)) is None
    counted = count_values(np.array([[-3, -3], [0, 2]], np.int16))
    assert counted is not None
    assert (counted.lo, counted.hi) == (-3, 2)
    assert counted.counts.tolist() == [2, 0, 0, 1, 0, 1]


def test_constant_series_is_left_to_the_volume_path(tmp_path: Path) -> None:
    """A single non-empty bin: equalize() keeps the image; that depends on the dtype."""
    import pydicom
    from pydicom.data import get_testdata_file

    folder = tmp_path / "flat"
    folder.mkdir()
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for k in range(2):
        ds = template.copy()
        ds.SOPInstanceUID = f"{template.SOPInstanceUID}.{k + 1}"
        ds.ImagePositionPatient = [0.0, 0.0, float(k)]
        ds.PixelData = np.full_like(template.pixel_array, 100).tobytes()
        ds.save_as(folder / f"{k}.dcm")
    (series,) = medeq.read_series(folder)
    _, counted = _counted(series, window="none")
    assert counted is None


STORED_COUNTABLE = [
    "wg04__CT1_UNC.dcm",  # CT, rescale to HU
    "wg04__MR1_UNC.dcm",
    "pydicomdata__mlut_18.dcm",  # Modality LUT Sequence
    "pydicomdata__vlut_04.dcm",  # VOI LUT Sequence
    "dcmqa12bit__In_12bitSigned_0x0F0F.dcm",  # garbage high bits, signed
    "wg04__RG2_UNC.dcm",  # MONOCHROME1
    "pydicom__CT_small.dcm",
]


@pytest.mark.parametrize("name", STORED_COUNTABLE)
@pytest.mark.parametrize("window", ["auto", "none", "lung", 0, "40,400"])
def test_counts_of_stored_values_give_the_counts_of_normalised_values(
    name: str, window: object
) -> None:
    # A conversion's scan counts each slice's stored values; pushed through the VOI plan
    # they must be exactly what counting the normalised pixels gives.
    from medeq._slicewise import count_stored, counts_through

    from .conftest import shared_file

    image = medeq.read(shared_file(name))
    try:
        plan = voi_plan([image], window)  # type: ignore[arg-type]
    except medeq.MedeqError:
        pytest.skip(f"window {window!r} does not apply to {name}")
    stored = count_stored(image)
    assert stored is not None
    assert image._stored is None  # the pixels are not kept
    expected = count_values(plan.values(image))
    got = counts_through(image, plan, stored)
    if expected is None:
        assert got is None
        return
    assert got is not None
    assert (got.lo, got.hi) == (expected.lo, expected.hi)
    np.testing.assert_array_equal(got.counts, expected.counts)


def test_stored_values_of_compressed_or_multiframe_images_are_not_counted() -> None:
    from medeq._slicewise import count_stored

    from .conftest import shared_file

    for name in ("wg04__CT1_J2KR.dcm", "pydicomdata__eCT_Supplemental.dcm"):
        image = medeq.read(shared_file(name))
        assert count_stored(image) is None
        assert image._stored is None  # nothing was decoded


def _dx_series(folder: Path, window: tuple[str, str]) -> medeq.Series:
    """Two DX-like slices whose data (32744 to 65535) lie wholly above ``window``."""
    import warnings

    import pydicom
    from pydicom.data import get_testdata_file

    folder.mkdir()
    rng = np.random.default_rng(11)
    for k in range(2):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{k + 1}"
        ds.ImagePositionPatient = [0.0, 0.0, float(k)]
        ds.PixelRepresentation = 0
        del ds.RescaleSlope, ds.RescaleIntercept
        ds.PixelData = rng.integers(32744, 65536, (128, 128), dtype=np.uint16).tobytes()
        with warnings.catch_warnings():  # pydicom warns of a DS "nan": a hostile file has it
            warnings.simplefilter("ignore")
            ds.WindowCenter, ds.WindowWidth = window
            ds.save_as(folder / f"{k}.dcm")
    (series,) = medeq.read_series(folder)
    return series


@pytest.mark.parametrize("window", ["auto", "none"])
def test_a_file_window_that_misses_the_data_is_decided_alike(
    tmp_path: Path, window: object
) -> None:
    """With "auto", the slice-wise span falls back to the data's range as normalize() does."""
    series = _dx_series(tmp_path / "dx", ("2725", "5310"))
    _assert_same_as_enhance(series, window=window)
    _, counted = _counted(series, window=window)
    derived = medeq.enhance(series, window=window)
    assert counted.notes == derived.notes
    if window == "auto":
        assert derived.normalized.voi == "full range (window 2725/5310 LINEAR misses the data)"
        assert len(derived.notes) == 1
        assert "covers none of the data's values (32744 to 65535)" in derived.notes[0]
        # A note about the series names no single file: a batch gives it to every slice.
        assert derived.notes[0].startswith("the 2 images of series ")
    else:
        assert derived.notes == []


def test_a_window_asked_for_that_misses_the_data_is_kept(tmp_path: Path) -> None:
    """By index the window stays: every value in one end bin, which the counts leave to
    the volume path (as a constant image), with the same note."""
    series = _dx_series(tmp_path / "dx", ("2725", "5310"))
    _, counted = _counted(series, window=0)
    assert counted is None
    derived = medeq.enhance(series, window=0)
    assert derived.normalized.value_range == (70, 5380)
    assert len(derived.notes) == 1
    assert "every pixel falls in one end bin" in derived.notes[0]


def test_plan_notes_reach_the_counted_equalization(tmp_path: Path) -> None:
    """A window skipped while planning (where the batch plans, outside any collector) is
    among the notes of the result."""
    series = _dx_series(tmp_path / "dx", ("40000", "0.5"))
    plan, counted = _counted(series)
    assert len(plan.notes) == 2  # one per slice
    assert all("Window Width 0.5, skipped: width must be >= 1" in n for n in plan.notes)
    assert counted.notes == list(plan.notes)
    assert counted.notes == medeq.enhance(series).notes
