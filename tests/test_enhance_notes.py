"""Notes on results, and hostile header values that normalisation reads.

Every mutation of a header value that normalising reads (rescale, windows, VOI LUT
Function, Modality/VOI LUT Sequences, functional groups, photometric interpretation)
ends in success or in a :class:`medeq.MedeqError` that names the DICOM tag: never in
another exception, a warning, or a NaN. Each case runs the whole way: enhance, write with
a preview, the slice-wise counting of a conversion, and a preview of the source.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

import medeq
from medeq._notes import collecting
from medeq._slicewise import count_values, equalize_counted
from medeq.normalize import voi_plan

Mutation = Callable[[Dataset], None]


def _dataset(name: str = "CT_small.dcm") -> Dataset:
    return pydicom.dcmread(get_testdata_file(name))


def _as_file(ds: Dataset) -> medeq.DicomImage:
    """``ds`` written and read back, as medeq would meet it in a file."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # pydicom warns of a DS "nan": a hostile file has it
        warnings.simplefilter("ignore")
        ds.save_as(buffer, enforce_file_format=False)
    return medeq.read(io.BytesIO(buffer.getvalue()))


def _put(**values: Any) -> Mutation:
    def mutate(ds: Dataset) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for keyword, value in values.items():
                setattr(ds, keyword, value)

    return mutate


def _lut(keyword: str, descriptor: list[int] | None, data: Any, vr: str = "US") -> Mutation:
    def mutate(ds: Dataset) -> None:
        item = Dataset()
        if descriptor is not None:
            item.add_new(0x00283002, "US", descriptor)
        if data is not None:
            item.add_new(0x00283006, vr, data)
        if keyword == "VOILUTSequence":
            for window in ("WindowCenter", "WindowWidth"):
                if window in ds:
                    del ds[window]
        setattr(ds, keyword, [item] if descriptor is not None or data is not None else [])

    return mutate


def _constant(photometric: str) -> Mutation:
    def mutate(ds: Dataset) -> None:
        ds.PixelData = np.full_like(ds.pixel_array, ds.pixel_array.flat[0]).tobytes()
        ds.PhotometricInterpretation = photometric

    return mutate


_HOSTILE = ["1e308", "-1e308", "inf", "nan", "1e-320", "0", "1e15", "3.5e38"]
_RAMP = list(range(0, 4096 * 8, 8))

MUTATIONS: dict[str, Mutation] = {
    **{f"slope {v}": _put(RescaleSlope=v) for v in _HOSTILE},
    **{f"intercept {v}": _put(RescaleIntercept=v) for v in _HOSTILE},
    **{
        f"{function} center {v}": _put(WindowCenter=v, WindowWidth="400", VOILUTFunction=function)
        for v in _HOSTILE
        for function in ("LINEAR", "SIGMOID")
    },
    **{
        f"{function} width {v}": _put(WindowCenter="40", WindowWidth=v, VOILUTFunction=function)
        for v in _HOSTILE
        for function in ("LINEAR_EXACT", "SIGMOID")
    },
    "window missing the data": _put(WindowCenter="-100000", WindowWidth="10"),
    "first window bad": _put(WindowCenter=["1e308", "40"], WindowWidth=["1e308", "400"]),
    "VOI LUT Function junk": _put(WindowCenter="40", WindowWidth="400", VOILUTFunction="FOO"),
    "VOI LUT Function empty": _put(WindowCenter="40", WindowWidth="400", VOILUTFunction=""),
    "VOI LUT Function two": _put(
        WindowCenter="40", WindowWidth="400", VOILUTFunction=["LINEAR", "SIGMOID"]
    ),
    "constant": _constant("MONOCHROME2"),
    "constant MONOCHROME1": _constant("MONOCHROME1"),
    "MONOCHROME1 far intercept": lambda ds: (
        _constant("MONOCHROME1")(ds),
        _put(RescaleIntercept="4e15")(ds),
    ),
    **{
        f"{kw} {case}": _lut(kw, descriptor, data, vr)
        for kw in ("ModalityLUTSequence", "VOILUTSequence")
        for case, descriptor, data, vr in (
            ("empty sequence", None, None, "US"),
            ("no descriptor", None, _RAMP, "US"),
            ("no data", [4096, 0, 16], None, "US"),
            ("empty data", [4096, 0, 16], [], "US"),
            ("short data", [4096, 0, 16], _RAMP[:10], "US"),
            ("bits 7", [4096, 0, 7], _RAMP, "US"),
            ("bits 17", [4096, 0, 17], _RAMP, "US"),
            ("values beyond bits", [4096, 0, 8], _RAMP, "US"),
            ("first beyond range", [16, 40000, 16], _RAMP[:16], "US"),
            ("one entry", [1, 0, 16], [5], "US"),
            ("descriptor of 2", [4096, 0], _RAMP, "US"),
            ("OW words", [4, 0, 16], b"\x01\x00\x02\x00\x03\x00\x04\x00", "OW"),
            ("text data", [3, 0, 16], "abc", "LO"),
        )
    },
}


def _run(image: medeq.DicomImage, out: Path) -> list[str]:
    with collecting() as notes:
        derived = medeq.enhance(image)
        medeq.write(derived, out / "o.dcm", preview=True)
        assert derived.notes == notes
        # The conversion's slice-wise path: plan, count, map.
        plan = voi_plan([image])
        counted = count_values(plan.values(image))
        if counted is not None and plan.sigmoid is None:
            equalize_counted([image], plan, [counted])
        medeq.preview(image, out / "source.jpg")
    return notes


@pytest.mark.parametrize("base", ["CT_small.dcm", "MR_small.dcm"])
@pytest.mark.parametrize("case", list(MUTATIONS))
def test_hostile_header_values_end_in_success_or_a_named_error(
    base: str, case: str, tmp_path: Path
) -> None:
    ds = _dataset(base)
    MUTATIONS[case](ds)
    try:
        image = _as_file(ds)
    except medeq.MedeqError as exc:  # the reader's part, tested with it
        pytest.skip(f"the reader refuses it: {exc}")
    try:
        notes = _run(image, tmp_path)
    except medeq.MedeqError as exc:
        assert re.search(r"\((0028|7FE0),[0-9A-F]{4}\) [A-Z]", str(exc)), str(exc)
        assert str(exc).startswith(image.name)
        return
    for text in notes:
        assert text.startswith(f"{image.name}: "), text
    pixels = medeq.read(tmp_path / "o.dcm").stored
    assert pixels.size == image.stored.size


def test_clean_images_have_no_notes() -> None:
    derived = medeq.enhance(medeq.read(get_testdata_file("CT_small.dcm")))
    assert derived.notes == []
    assert derived.as_dict()["notes"] == []


def test_notes_are_those_of_their_own_result() -> None:
    ds = _dataset()
    ds.ModalityLUTSequence = []
    image = medeq.read(ds)
    first = medeq.enhance(image)
    expected = (
        f"{image.name}: (0028,3000) Modality LUT Sequence is empty: ignored, the image is "
        "used as if it had none"
    )
    assert first.notes == [expected]
    assert first.as_dict()["notes"] == [expected]
    clean = medeq.enhance(medeq.read(get_testdata_file("CT_small.dcm")))
    assert clean.notes == []  # nothing carried over from the call before
    # A caller collecting around enhance() hears the same notes.
    with collecting() as outer:
        again = medeq.enhance(image)
    assert outer == again.notes == [expected]


def test_the_auto_mask_of_values_far_from_zero() -> None:
    """Values near 1e15 (a hostile intercept) give the mask their order gives near zero."""
    ds = _dataset()
    near = medeq.foreground_mask(medeq.read(ds))
    ds.RescaleIntercept = "1000000000000000"
    far_image = medeq.read(ds)
    far = medeq.foreground_mask(far_image)
    assert far.shape == near.shape
    assert np.mean(far == near) > 0.99
    derived = medeq.enhance(far_image, mask="auto")
    assert derived.pixels.max() > derived.pixels.min()


def test_an_auto_mask_that_finds_nothing_is_noted() -> None:
    ds = _dataset()
    stripes = np.zeros((128, 128), np.int16)
    stripes[:, ::2] = 1000  # one-pixel lines: the mask's opening removes them all
    ds.PixelData = stripes.tobytes()
    image = medeq.read(ds)
    derived = medeq.enhance(image, mask="auto")
    assert derived.mask is not None and derived.mask.all()
    assert derived.notes == [
        f"{image.name}: the automatic foreground mask found nothing: every pixel is used"
    ]
