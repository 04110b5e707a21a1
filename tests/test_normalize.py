"""Normalisation: Modality LUT, windows and presets, MONOCHROME1, and bad window arguments."""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from typing import Any

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

import medeq
from medeq import ParameterError, Preset, Window

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


# --------------------------------------------------------------------------- hostile headers


def _dataset(name: str = "CT_small.dcm") -> Any:
    import pydicom

    return pydicom.dcmread(get_testdata_file(name))


def _put(ds: Any, **values: Any) -> None:
    """Set values pydicom warns about (a DS of inf or nan): what a hostile file holds."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword, value in values.items():
            setattr(ds, keyword, value)


def _lut_item(descriptor: Any, data: Any, vr: str = "US") -> Dataset:
    item = Dataset()
    if descriptor is not None:
        item.add_new(0x00283002, "US", descriptor)
    if data is not None:
        item.add_new(0x00283006, vr, data)
    return item


def _with_lut(keyword: str, items: list[Dataset]) -> medeq.DicomImage:
    """CT_small (stored values 128 to 2191, signed) with a Modality or VOI LUT Sequence."""
    ds = _dataset()
    if keyword == "VOILUTSequence":
        del ds.RescaleSlope, ds.RescaleIntercept  # the VOI LUT maps stored values
    ds.add_new(0x00283000 if keyword == "ModalityLUTSequence" else 0x00283010, "SQ", items)
    return medeq.read(ds)


@pytest.mark.parametrize("keyword", ["ModalityLUTSequence", "VOILUTSequence"])
@pytest.mark.parametrize("items", [0, 1, 2], ids=["empty-sequence", "empty-item", "two-empty"])
def test_an_empty_lut_sequence_or_item_is_ignored_with_a_note(keyword: str, items: int) -> None:
    from medeq._notes import collecting

    image = _with_lut(keyword, [Dataset() for _ in range(items)])
    ds = _dataset()
    if keyword == "VOILUTSequence":
        del ds.RescaleSlope, ds.RescaleIntercept
    plain = medeq.normalize(medeq.read(ds))
    with collecting() as notes:
        norm = medeq.normalize(image)
    np.testing.assert_array_equal(norm.array, plain.array)
    assert (norm.value_range, norm.voi, norm.units) == (plain.value_range, plain.voi, plain.units)
    tag = (
        "(0028,3000) Modality LUT Sequence"
        if keyword == "ModalityLUTSequence"
        else ("(0028,3010) VOI LUT Sequence")
    )
    assert notes == [
        f"{image.name}: {tag} {'is empty' if not items else 'has only empty items'}: "
        "ignored, the image is used as if it had none"
    ]


def test_empty_lut_items_beside_a_real_one_are_skipped() -> None:
    from medeq._notes import collecting

    lut = _lut_item([4096, 0, 16], list(range(0, 4096 * 8, 8)))
    image = _with_lut("ModalityLUTSequence", [Dataset(), lut])
    with collecting() as notes:
        values = medeq.modality_values(image)
    np.testing.assert_array_equal(values, np.minimum(image.stored, 4095) * 8)
    assert notes == [f"{image.name}: (0028,3000) Modality LUT Sequence item(s) 1 empty: ignored"]


_FULL = list(range(0, 4096 * 8, 8))


@pytest.mark.parametrize("keyword", ["ModalityLUTSequence", "VOILUTSequence"])
@pytest.mark.parametrize(
    ("item", "error", "match"),
    [
        (_lut_item(None, _FULL), medeq.UnsupportedImageError, r"has no \(0028,3002\) LUT Descr"),
        (
            _lut_item([4096, 0], _FULL),
            medeq.UnsupportedImageError,
            r"\(0028,3002\) LUT Descriptor \[4096, 0\] must be 3 whole numbers",
        ),
        (
            _lut_item([4096, 0, 16, 1], _FULL),
            medeq.UnsupportedImageError,
            r"LUT Descriptor \[4096, 0, 16, 1\] must be 3",
        ),
        (_lut_item(4096, _FULL), medeq.UnsupportedImageError, "LUT Descriptor 4096 must be 3"),
        (_lut_item([4096, 0, 7], _FULL), medeq.UnsupportedImageError, "bits 7 must be 8 to 16"),
        (_lut_item([4096, 0, 17], _FULL), medeq.UnsupportedImageError, "bits 17 must be 8 to"),
        (_lut_item([4096, 0, 16], None), medeq.CorruptPixelDataError, r"has no \(0028,3006\)"),
        (_lut_item([4096, 0, 16], []), medeq.CorruptPixelDataError, r"LUT Data is empty"),
        (_lut_item([4096, 0, 16], b"", "OW"), medeq.CorruptPixelDataError, "LUT Data is empty"),
        (
            _lut_item([4096, 0, 16], _FULL[:10]),
            medeq.CorruptPixelDataError,
            r"\(0028,3006\) LUT Data has 10 values, fewer than the 4096 entries",
        ),
        (
            _lut_item([0, 0, 16], _FULL),
            medeq.CorruptPixelDataError,
            "LUT Data has 4096 values, fewer than the 65536 entries",
        ),
        (
            _lut_item([3, 0, 16], b"\x01\x00\x02\x00\x03", "OW"),
            medeq.CorruptPixelDataError,
            r"\(0028,3006\) LUT Data \(OW\) has an odd length of 5 bytes",
        ),
        (
            _lut_item([4096, 0, 8], _FULL),
            medeq.UnsupportedImageError,
            r"LUT Data values 0 to 32760 do not fit the 8 bits of its \(0028,3002\) LUT "
            r"Descriptor \(0 to 255\)",
        ),
        (
            _lut_item([4096, 0, 12], [4096] * 4096),
            medeq.UnsupportedImageError,
            r"values 4096 to 4096 do not fit the 12 bits",
        ),
        (
            _lut_item([3, 0, 16], "abc", "LO"),
            medeq.CorruptPixelDataError,
            r"LUT Data \(LO\) 'abc' is not a list of whole numbers",
        ),
    ],
)
def test_an_inconsistent_lut_item_is_refused(
    keyword: str, item: Dataset, error: type[Exception], match: str
) -> None:
    import copy

    image = _with_lut(keyword, [copy.deepcopy(item)])
    sequence = "Modality LUT" if keyword == "ModalityLUTSequence" else "VOI LUT"
    with pytest.raises(
        error,
        match=rf"{re.escape(image.name)}: \(0028,30[01]0\) {sequence} Sequence item 1.*{match}",
    ):
        medeq.normalize(image)


def test_a_modality_lut_first_value_outside_the_stored_range_is_refused() -> None:
    ds = _dataset()
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
    ds.PixelData = ds.pixel_array.clip(0, 4095).astype(np.uint16).tobytes()
    ds.ModalityLUTSequence = [_lut_item([16, 4096, 16], _FULL[:16])]
    with pytest.raises(
        medeq.UnsupportedImageError,
        match=r"first value mapped 4096 lies outside the range of the stored values, 0 to 4095",
    ):
        medeq.modality_values(medeq.read(ds))


@pytest.mark.parametrize("keyword", ["RescaleSlope", "RescaleIntercept"])
@pytest.mark.parametrize("value", ["1e308", "-1e308", "inf", "nan", "3.5e38", "1e20"])
def test_hostile_rescale_values_are_refused(keyword: str, value: str) -> None:
    ds = _dataset()
    _put(ds, **{keyword: value})
    tag = (
        "(0028,1053) Rescale Slope"
        if keyword == "RescaleSlope"
        else ("(0028,1052) Rescale Intercept")
    )
    shown = re.escape(f"{tag} {float(value):g}")
    with pytest.raises(medeq.UnsupportedImageError, match=rf"CT_small.dcm: .*{shown}"):
        medeq.enhance(medeq.read(ds))


def test_a_zero_slope_is_refused() -> None:
    ds = _dataset()
    ds.RescaleSlope = 0
    with pytest.raises(medeq.UnsupportedImageError, match=r"\(0028,1053\) Rescale Slope 0 "):
        medeq.normalize(medeq.read(ds))


def test_a_subnormal_slope_gives_a_bounded_level_count() -> None:
    # 1e-320 * 2191 is subnormal in float64 and 0 in float32: the values are the
    # intercept; levels over a window would be (width / 1e-320): infinite, uncapped.
    ds = _dataset()
    ds.RescaleSlope, ds.RescaleIntercept = "1e-320", 0
    norm = medeq.normalize(medeq.read(ds), window=(0, 400))
    assert norm.levels == 2**52 + 1
    assert norm.bins == 65536
    assert np.all(norm.array == 0)


def test_per_frame_rescale_values_are_checked() -> None:
    import pydicom

    ds = pydicom.dcmread(shared_file("pydicomdata__eCT_Supplemental.dcm"))
    groups = ds.PerFrameFunctionalGroupsSequence
    for n, group in enumerate(groups):  # per frame, frame 2 hostile
        item = Dataset()
        item.RescaleSlope, item.RescaleIntercept, item.RescaleType = 1, -1024, "HU"
        if n == 1:
            item.RescaleIntercept = "1e300"
        group.PixelValueTransformationSequence = [item]
    for shared in ds.SharedFunctionalGroupsSequence:
        if "PixelValueTransformationSequence" in shared:
            del shared.PixelValueTransformationSequence
    image = medeq.read(ds)
    assert image.info.per_frame_rescale
    with pytest.raises(
        medeq.UnsupportedImageError,
        match=r"\(0028,1052\) Rescale Intercept 1e\+300 \(frame 2\) map the stored values",
    ):
        medeq.normalize(image)


def test_empty_or_missing_functional_group_items_fall_back_to_the_shared_values() -> None:
    import pydicom

    ds = pydicom.dcmread(shared_file("pydicomdata__eCT_Supplemental.dcm"))
    expected = medeq.normalize(medeq.read(ds))
    ds.PerFrameFunctionalGroupsSequence[0] = Dataset()
    for group in ds.PerFrameFunctionalGroupsSequence:
        if "PixelValueTransformationSequence" in group:
            group.PixelValueTransformationSequence = [Dataset()]
    norm = medeq.normalize(medeq.read(ds))
    np.testing.assert_array_equal(norm.array, expected.array)


def _with_windows(*windows: Window) -> medeq.DicomImage:
    """CT_small as if its header gave ``windows``. Built past the reader, which may leave
    out values that are not finite numbers itself: normalize must not rely on that."""
    ds = _dataset()
    info = dataclasses.replace(medeq.read(ds).info, windows=windows)
    return medeq.DicomImage(ds, info, ds)


@pytest.mark.parametrize(
    ("center", "width", "problem"),
    [
        (1e308, 400, "its ends 1e\\+308 and 1e\\+308 lie beyond"),
        (40, 1e308, "its ends -5e\\+307 and 5e\\+307 lie beyond"),
        (1.7e308, 1.7e308, "its ends 8.5e\\+307 and inf lie beyond"),
        (2.0**52, 400, "its ends 4.5036e\\+15 and 4.5036e\\+15 lie beyond"),
        (math.inf, 400, "not finite"),
        (math.nan, 400, "not finite"),
        (40, -math.inf, "not finite"),
        (40, 0.5, "width must be >= 1"),
    ],
)
def test_an_unusable_file_window_is_skipped_by_auto_and_refused_by_index(
    center: float, width: float, problem: str
) -> None:
    from medeq._notes import collecting

    image = _with_windows(Window(center, width), Window(40, 400))
    with collecting() as notes:
        norm = medeq.normalize(image)
    assert norm.voi == "window 40/400 LINEAR"
    assert len(notes) == 1
    assert re.match(
        rf"{re.escape(image.name)}: window 1, \(0028,1050\) Window Center .* / "
        rf"\(0028,1051\) Window Width .*, skipped: {problem}",
        notes[0],
    )
    with pytest.raises(medeq.UnsupportedImageError, match=r"\(0028,1051\) Window Width"):
        medeq.normalize(image, window=0)
    # With no usable window left, the data's full range.
    assert medeq.normalize(_with_windows(Window(center, width))).voi == "full range"


def test_a_file_window_of_width_below_1_is_skipped_through_the_reader() -> None:
    from medeq._notes import collecting

    ds = _dataset()
    ds.WindowCenter, ds.WindowWidth = ["40", "40"], ["0.5", "400"]
    image = medeq.read(ds)
    with collecting() as notes:
        assert medeq.normalize(image).voi == "window 40/400 LINEAR"
    assert notes == [
        f"{image.name}: window 1, (0028,1050) Window Center 40 / (0028,1051) Window Width "
        "0.5, skipped: width must be >= 1"
    ]


def test_an_explicit_window_beyond_the_limits_is_refused(ct: medeq.DicomImage) -> None:
    with pytest.raises(ParameterError, match=r"window \(center, width\) = \(1e\+300, 10\): its"):
        medeq.normalize(ct, window=(1e300, 10))


@pytest.mark.parametrize(("center", "width"), [("1e15", "400"), ("40", "1e15"), ("-1e15", "1")])
def test_a_sigmoid_window_far_from_the_data_gives_a_constant_image(center: str, width: str) -> None:
    from medeq._notes import collecting

    ds = _dataset()
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, "SIGMOID"
    image = medeq.read(ds)
    with collecting() as notes:  # exp() overflows: no warning (they are errors here)
        derived = medeq.enhance(image)
    assert derived.pixels.min() == derived.pixels.max()
    assert len(notes) == 1
    expected = re.escape(f"after the window {float(center):g}/{float(width):g} SIGMOID")
    assert re.fullmatch(
        rf"{re.escape(image.name)}: every pixel has the value [01.5]+ {expected}: the output "
        "is constant",
        notes[0],
    )


def _dx(window: tuple[str, str] = ("2725", "5310")) -> Any:
    """A DX whose file window lies wholly below its data (as a real one had it)."""
    ds = _dataset()
    rng = np.random.default_rng(3)
    ds.PixelRepresentation, ds.Modality = 0, "DX"
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.PixelData = rng.integers(32744, 65536, (128, 128), dtype=np.uint16).tobytes()
    ds.WindowCenter, ds.WindowWidth = window
    return ds


def test_a_file_window_that_misses_the_data_gives_way_to_the_full_range() -> None:
    from medeq._notes import collecting

    image = medeq.read(_dx())
    with collecting() as notes:
        norm = medeq.normalize(image)
    assert norm.value_range == (float(image.stored.min()), float(image.stored.max()))
    assert norm.window is None
    assert norm.voi == "full range (window 2725/5310 LINEAR misses the data)"
    lo, hi = image.stored.min(), image.stored.max()
    assert notes == [
        f"{image.name}: the file's window 2725/5310 LINEAR (70 to 5380) covers none of the "
        f"data's values ({lo} to {hi}): equalized over the data's full range instead"
    ]
    # Asked for by index (or given), the window is kept: the note says what it does.
    with collecting() as notes:
        kept = medeq.normalize(image, window=0)
    assert kept.value_range == (70, 5380)
    assert notes == [
        f"{image.name}: the window 2725/5310 LINEAR (70 to 5380) covers none of the data's "
        f"values ({lo} to {hi}): every pixel falls in one end bin"
    ]
    # A window that covers some of the data is used.
    assert medeq.normalize(medeq.read(_dx(("40000", "1000")))).voi == "window 40000/1000 LINEAR"


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_a_constant_image_is_noted_and_stays_constant(photometric: str) -> None:
    from medeq._notes import collecting

    ds = _dataset()
    ds.PixelData = np.full((128, 128), 1000, np.int16).tobytes()
    ds.PhotometricInterpretation = photometric
    image = medeq.read(ds)
    with collecting() as notes:
        derived = medeq.enhance(image)
    assert derived.pixels.min() == derived.pixels.max()
    assert notes == [f"{image.name}: every pixel has the value -24: the output is constant"]
    assert derived.notes == notes


def test_a_voi_lut_first_value_outside_the_modality_range_is_refused() -> None:
    ds = _dataset()
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
    ds.PixelData = ds.pixel_array.clip(0, 4095).astype(np.uint16).tobytes()
    ds.VOILUTSequence = [_lut_item([16, 5000, 16], _FULL[:16])]
    with pytest.raises(
        medeq.UnsupportedImageError,
        match=r"\(0028,3010\) VOI LUT Sequence item 1: \(0028,3002\) LUT Descriptor first value "
        r"mapped 5000 lies outside the range of the modality values, 0 to 4095",
    ):
        medeq.normalize(medeq.read(ds))
