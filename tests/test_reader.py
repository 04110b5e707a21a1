"""Reading real DICOM: every shared file has a tested outcome; values, errors, laziness."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import struct
import subprocess
import sys
import tempfile
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.encaps import encapsulate
from pydicom.pixels.utils import pixel_array
from pydicom.tag import BaseTag

import medeq
from medeq import CorruptPixelDataError, NotDicomError, UnsupportedImageError
from medeq._notes import collecting

from .conftest import SHARED_DICOM, shared_file

# Every file of the shared set: (frames, rows, columns), stored dtype, min, max -- or the
# medeq error it must raise. Shapes and dtypes come from the headers; value ranges were
# checked against pydicom's own decoding where that works.
EXPECTED: dict[str, tuple[tuple[int, int, int], str, int, int] | type[Exception]] = {
    "dcm4che__NM-MONO2-16-13x-heart.dcm": ((13, 64, 64), "uint16", 0, 141),
    "dcm4che__US-RGB-8-esopecho.dcm": UnsupportedImageError,
    "dcmqa12bit__In_12bitSigned_0x0F0F.dcm": ((1, 384, 384), "int16", -2048, 2047),
    "dcmqa12bit__In_12bitUnsigned_0x0F0F.dcm": ((1, 384, 384), "uint16", 0, 4095),
    "dcmqats__In_1.dcm": ((1, 384, 384), "uint16", 0, 2362),
    "dcmqats__In_2.dcm": ((1, 384, 384), "uint16", 0, 2362),
    "dcmqats__In_3.dcm": ((1, 384, 384), "uint16", 0, 2362),
    "dcmqats__In_4.dcm": ((1, 384, 384), "uint16", 0, 2362),
    "dcmqats__In_5.dcm": ((1, 384, 384), "uint16", 0, 2362),
    "dcmqats__In_7.dcm": ((1, 384, 384), "uint16", 0, 2362),
    "dcmqats__In_9.dcm": ((1, 384, 384), "uint16", 0, 2362),
    "dcmqi__ct-3slice_01.dcm": ((1, 512, 512), "int16", -2000, 2405),
    "dcmqi__ct-3slice_02.dcm": ((1, 512, 512), "int16", -2000, 2364),
    "dcmqi__ct-3slice_03.dcm": ((1, 512, 512), "int16", -2000, 2390),
    "derived__CT1_J2KR_truncated_codestream.dcm": CorruptPixelDataError,
    "derived__CT1_JPLL_corrupted_bytes.dcm": CorruptPixelDataError,
    "derived__CT1_UNC_rows_mismatch.dcm": CorruptPixelDataError,
    "derived__CT1_UNC_truncated_in_header.dcm": NotDicomError,
    "derived__CT1_UNC_truncated_in_pixeldata.dcm": CorruptPixelDataError,
    "derived__empty_zero_bytes.dcm": NotDicomError,
    "derived__not_dicom_text.dcm": NotDicomError,
    "fodicom__CR-MONO1-10-chest.dcm": ((1, 440, 440), "uint16", 0, 979),
    "fodicom__CR-ModalitySequenceLUT.dcm": ((1, 1576, 1976), "uint16", 0, 1023),
    "fodicom__D_CLUNIE_CT1_RLE_FRAGS.dcm": ((1, 512, 512), "int16", -2000, 2278),
    "fodicom__GH133.dcm": ((1, 3062, 2394), "uint16", 0, 3471),
    "fodicom__GH1376.dcm": CorruptPixelDataError,
    "fodicom__GH177_D_CLUNIE_CT1_IVRLE_BigEndian_undefined_length.dcm": NotDicomError,
    "fodicom__HasFragmentSequence.dcm": ((96, 512, 512), "uint8", 0, 255),
    "fodicom__JPEGwithIcon.dcm": UnsupportedImageError,
    "fodicom__abd1_adb1_1.dcm": ((1, 256, 256), "uint16", 0, 678),
    "fodicom__abd1_adb1_10.dcm": ((1, 256, 256), "uint16", 0, 1105),
    "fodicom__abd1_adb1_11.dcm": ((1, 256, 256), "uint16", 0, 1089),
    "fodicom__abd1_adb1_2.dcm": ((1, 256, 256), "uint16", 0, 832),
    "fodicom__abd1_adb1_3.dcm": ((1, 256, 256), "uint16", 0, 787),
    "fodicom__abd1_adb1_4.dcm": ((1, 256, 256), "uint16", 0, 831),
    "fodicom__abd1_adb1_5.dcm": ((1, 256, 256), "uint16", 0, 962),
    "fodicom__abd1_adb1_6.dcm": ((1, 256, 256), "uint16", 0, 1638),
    "fodicom__abd1_adb1_7.dcm": ((1, 256, 256), "uint16", 0, 1721),
    "fodicom__abd1_adb1_8.dcm": ((1, 256, 256), "uint16", 0, 1469),
    "fodicom__abd1_adb1_9.dcm": ((1, 256, 256), "uint16", 0, 1282),
    "pydicom__CR1_6154.dcm": ((1, 16, 16), "uint16", 1994, 2802),
    "pydicom__CT_small.dcm": ((1, 128, 128), "int16", 128, 2191),
    "pydicom__JPEG2000-embedded-sequence-delimiter.dcm": CorruptPixelDataError,
    "pydicom__MR_small_bigendian.dcm": ((1, 64, 64), "int16", 127, 2145),
    "pydicom__MR_small_implicit.dcm": ((1, 64, 64), "int16", 127, 2145),
    "pydicom__MR_truncated.dcm": CorruptPixelDataError,
    "pydicom__examples_palette.dcm": UnsupportedImageError,
    "pydicom__examples_ybr_color.dcm": UnsupportedImageError,
    "pydicom__image_dfl.dcm": ((1, 512, 512), "uint8", 0, 255),
    "pydicomdata__eCT_Supplemental.dcm": ((2, 512, 512), "uint16", 0, 1196),
    "pydicomdata__emri_small.dcm": ((10, 64, 64), "uint16", 0, 467),
    "pydicomdata__emri_small_RLE.dcm": ((10, 64, 64), "uint16", 0, 467),
    "pydicomdata__emri_small_jpeg_2k_lossless_too_short.dcm": CorruptPixelDataError,
    "pydicomdata__mlut_18.dcm": ((1, 512, 512), "int16", -2048, 2047),
    "pydicomdata__vlut_04.dcm": ((1, 512, 512), "uint8", 0, 255),
    "pylibjpeg__966_fixed.dcm": ((1, 2128, 2000), "uint16", 0, 4095),
    "pylibjpeg__JPEGBaseline_1s_1f_u_08_08.dcm": ((1, 100, 100), "uint8", 0, 255),
    "pylibjpeg__JPEGLossless_1s_1f_u_16_12.dcm": ((1, 1024, 1024), "uint16", 0, 595),
    "pylibjpeg__RG2_JPLY_fixed.dcm": ((1, 2140, 1760), "uint16", 0, 960),
    "wg04__CT1_J2KI.dcm": ((1, 512, 512), "int16", -2315, 2409),
    "wg04__CT1_J2KR.dcm": ((1, 512, 512), "int16", -2000, 2278),
    "wg04__CT1_JLSL.dcm": ((1, 512, 512), "int16", -2000, 2278),
    "wg04__CT1_JLSN.dcm": ((1, 512, 512), "int16", -2004, 2278),
    "wg04__CT1_JPLL.dcm": ((1, 512, 512), "int16", -2000, 2278),
    "wg04__CT1_RLE.dcm": ((1, 512, 512), "int16", -2000, 2278),
    "wg04__CT1_UNC.dcm": ((1, 512, 512), "int16", -2000, 2278),
    "wg04__MR1_UNC.dcm": ((1, 512, 512), "int16", 0, 4000),
    "wg04__NM1_JPLY.dcm": CorruptPixelDataError,
    "wg04__RG2_UNC.dcm": ((1, 2140, 1760), "uint16", 0, 893),
    "wg04__RG3_UNC.dcm": ((1, 1760, 1760), "uint16", 0, 1023),
}


def test_the_table_covers_the_manifest() -> None:
    manifest = SHARED_DICOM / "MANIFEST.tsv"
    if not manifest.is_file():
        pytest.skip(f"{manifest} is absent (set MEDEQ_TEST_DATA)")
    with manifest.open() as f:
        names = {row["file"] for row in csv.DictReader(f, delimiter="\t")}
    assert names == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_shared_file_reads_or_fails_cleanly(name: str) -> None:
    path = shared_file(name)
    expected = EXPECTED[name]
    if isinstance(expected, type):
        with pytest.raises(expected, match=rf"^{path}: \S"):
            medeq.normalize(medeq.read(path))
        return
    shape, dtype, lo, hi = expected
    image = medeq.read(path)
    stored = image.stored
    assert stored.shape == shape
    assert stored.dtype == np.dtype(dtype)
    assert (int(stored.min()), int(stored.max())) == (lo, hi)
    assert not stored.flags.writeable
    norm = medeq.normalize(image)
    assert norm.array.shape == shape
    assert norm.levels >= 1
    assert norm.value_range[0] < norm.value_range[1]


LOSSLESS_CT1 = [
    "wg04__CT1_UNC.dcm",
    "wg04__CT1_RLE.dcm",
    "fodicom__D_CLUNIE_CT1_RLE_FRAGS.dcm",
    "wg04__CT1_JPLL.dcm",
    "wg04__CT1_JLSL.dcm",
    "wg04__CT1_J2KR.dcm",
]


def test_ct1_lossless_transfer_syntaxes_give_identical_hu() -> None:
    reference = medeq.modality_values(medeq.read(shared_file(LOSSLESS_CT1[0])))
    for name in LOSSLESS_CT1[1:]:
        np.testing.assert_array_equal(
            medeq.modality_values(medeq.read(shared_file(name))), reference, err_msg=name
        )
    # Padding outside the field of view is stored -2000: -3024 HU with intercept -1024.
    assert reference.min() == -3024


def test_ct1_lossy_transfer_syntaxes_are_close() -> None:
    reference = medeq.modality_values(medeq.read(shared_file("wg04__CT1_UNC.dcm"))).astype(int)
    near = medeq.modality_values(medeq.read(shared_file("wg04__CT1_JLSN.dcm"))).astype(int)
    lossy = medeq.modality_values(medeq.read(shared_file("wg04__CT1_J2KI.dcm"))).astype(int)
    assert 0 < np.abs(near - reference).max() <= 10  # near-lossless: bounded error
    assert np.abs(lossy - reference).mean() < 50


def test_ct_values_are_hounsfield_units() -> None:
    hu = medeq.modality_values(medeq.read(shared_file("dcmqi__ct-3slice_01.dcm")))[0]
    assert hu.dtype == np.int16
    body = hu[(hu > -3000)]
    air = body[body < -500]
    soft = body[(body > -200) & (body < 200)]
    air_mode = np.bincount(air - air.min()).argmax() + air.min()
    soft_mode = np.bincount(soft - soft.min()).argmax() + soft.min()
    assert -1050 <= air_mode <= -950  # air
    assert -100 <= soft_mode <= 100  # water and soft tissue


def test_same_mr_in_seven_transfer_syntaxes_decodes_identically() -> None:
    names = [f"dcmqats__In_{i}.dcm" for i in (1, 2, 3, 4, 5, 7, 9)]
    images = [medeq.read(shared_file(n)) for n in names]
    syntaxes = {im.info.transfer_syntax for im in images}
    assert len(syntaxes) == 7
    for im in images[1:]:
        np.testing.assert_array_equal(im.stored, images[0].stored, err_msg=im.name)


def test_garbage_high_bits_are_masked_and_signed_values_extended() -> None:
    for name, signed in [
        ("dcmqa12bit__In_12bitUnsigned_0x0F0F.dcm", False),
        ("dcmqa12bit__In_12bitSigned_0x0F0F.dcm", True),
    ]:
        path = shared_file(name)
        raw = np.frombuffer(pydicom.dcmread(path).PixelData, "<u2").reshape(1, 384, 384)
        assert (raw >> 12).any(), "the file should carry garbage in its high bits"
        low = (raw & 0x0FFF).astype(np.int32)
        expected = np.where(low >= 2048, low - 4096, low) if signed else low
        np.testing.assert_array_equal(medeq.read(path).stored, expected)


def test_monochrome1_comes_out_with_dense_structures_bright() -> None:
    path = shared_file("fodicom__CR-MONO1-10-chest.dcm")
    image = medeq.read(path)
    assert image.info.photometric == "MONOCHROME1"
    stored = image.stored[0].astype(float)
    shown = medeq.normalize(image).array[0].astype(float)
    rows = slice(150, 300)
    spine = np.s_[rows, 200:240]  # mediastinum and spine: dense
    lung = np.s_[rows, 90:130]  # right lung: air
    assert stored[spine].mean() < stored[lung].mean()  # MONOCHROME1: dense is dark
    assert shown[spine].mean() > shown[lung].mean()  # presentation sense: dense is bright
    assert medeq.normalize(image).inverted


def test_file_without_meta_header_is_read_with_inferred_syntax() -> None:
    image = medeq.read(shared_file("fodicom__CR-MONO1-10-chest.dcm"))
    assert image.info.transfer_syntax_inferred
    assert image.info.transfer_syntax == pydicom.uid.ImplicitVRLittleEndian
    assert image.stored.shape == (1, 440, 440)


def test_enhanced_ct_uses_per_frame_rescale() -> None:
    image = medeq.read(shared_file("pydicomdata__eCT_Supplemental.dcm"))
    ds = image.dataset
    assert "RescaleSlope" not in ds
    groups = ds.SharedFunctionalGroupsSequence[0]
    item = groups.PixelValueTransformationSequence[0]
    hu = medeq.modality_values(image)
    expected = image.stored.astype(float) * float(item.RescaleSlope) + float(item.RescaleIntercept)
    np.testing.assert_array_equal(hu, expected)
    assert hu.min() < -900  # air in HU, not raw stored values


def test_modality_lut_sequence_is_applied() -> None:
    image = medeq.read(shared_file("pydicomdata__mlut_18.dcm"))
    assert image.info.modality_lut
    values = medeq.modality_values(image)
    ref = pydicom.pixels.apply_modality_lut(image.stored[0], image.dataset)
    np.testing.assert_array_equal(values[0], ref)


def test_voi_lut_sequence_is_used_by_auto() -> None:
    image = medeq.read(shared_file("pydicomdata__vlut_04.dcm"))
    norm = medeq.normalize(image)
    assert norm.voi == "VOI LUT Sequence item 1"
    ref = pydicom.pixels.apply_voi(image.stored[0], image.dataset)
    np.testing.assert_array_equal(norm.array[0], ref)


# --------------------------------------------------------------------------- API behaviour


def test_read_does_not_decode_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr("medeq.reader._decode", boom)
    image = medeq.read(get_testdata_file("CT_small.dcm"))
    assert image.info.rows == 128
    assert "PixelData" not in image.dataset
    info = medeq.read_info(get_testdata_file("CT_small.dcm"))
    assert info.modality == "CT"


def test_read_from_file_object_and_dataset_without_modifying_it() -> None:
    path = get_testdata_file("MR_small.dcm")
    from_path = medeq.read(path).stored
    with open(path, "rb") as f:
        from_file = medeq.read(f).stored
    ds = pydicom.dcmread(path)
    before = ds.to_json()
    from_ds = medeq.read(ds).stored
    np.testing.assert_array_equal(from_file, from_path)
    np.testing.assert_array_equal(from_ds, from_path)
    assert ds.to_json() == before
    assert medeq.read(io.BytesIO(Path(path).read_bytes())).info.rows == 64


def test_info_record_is_complete() -> None:
    info = medeq.read_info(get_testdata_file("CT_small.dcm"))
    assert (info.rows, info.columns, info.frames) == (128, 128, 1)
    assert (info.bits_allocated, info.bits_stored, info.signed) == (16, 16, True)
    assert info.rescale_intercept == -1024.0
    assert info.transfer_syntax_name == "Explicit VR Little Endian"
    assert info.as_dict()["transfer_syntax_name"] == "Explicit VR Little Endian"


def test_colour_info_is_readable_but_read_refuses() -> None:
    path = get_testdata_file("SC_rgb_small_odd.dcm")
    assert medeq.read_info(path).photometric == "RGB"
    with pytest.raises(UnsupportedImageError, match=r"Photometric Interpretation 'RGB'"):
        medeq.read(path)


def test_non_image_objects_are_refused() -> None:
    path = get_testdata_file("rtstruct.dcm")
    with pytest.raises(UnsupportedImageError, match=r"not an image: SOP Class 'RT Structure"):
        medeq.read(path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty file"),
        (b"hello, this is a text file\n" * 20, "not DICOM"),
    ],
)
def test_non_dicom_files(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(content)
    with pytest.raises(NotDicomError, match=rf"^{path}: {match}"):
        medeq.read(path)


def test_missing_path_and_folder(tmp_path: Path) -> None:
    with pytest.raises(NotDicomError, match="no such file"):
        medeq.read(tmp_path / "nope.dcm")
    with pytest.raises(NotDicomError, match="is a folder"):
        medeq.read(tmp_path)
    with pytest.raises(NotDicomError, match="cannot read 'int'"):
        medeq.read(42)  # type: ignore[arg-type]


def test_truncated_pixel_data_from_pydicom_bundle(tmp_path: Path) -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    path = tmp_path / "short.dcm"
    path.write_bytes(data[: len(data) - 5000])
    with pytest.raises(CorruptPixelDataError, match=r"Pixel Data is shorter than the header"):
        _ = medeq.read(path).stored


def test_pixel_data_longer_than_the_header_says(tmp_path: Path) -> None:
    # One column short: pydicom would take the extra 256 bytes for padding and shear the image.
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Columns = 127
    path = tmp_path / "cols127.dcm"
    ds.save_as(path)
    message = (
        f"{path}: (7FE0,0010) Pixel Data is longer than the header says: (0028,0010) Rows 128 "
        "x (0028,0011) Columns 127 x (0028,0008) Number of Frames 1 x (0028,0100) Bits "
        "Allocated 16 / 8 = 32512 bytes expected, but it holds 32768 bytes"
    )
    with pytest.raises(CorruptPixelDataError, match=f"^{re.escape(message)}$"):
        _ = medeq.read(path).stored
    with pytest.raises(CorruptPixelDataError, match=r"^<memory>: .* holds 32768 bytes$"):
        _ = medeq.read(io.BytesIO(path.read_bytes())).stored


@pytest.mark.parametrize(("extra", "ok"), [(b"", True), (b"\0\0\0", False)])
def test_only_the_even_length_pad_may_follow_native_pixels(
    tmp_path: Path, extra: bytes, ok: bool
) -> None:
    # 3 x 3 8-bit pixels are 9 bytes: the one byte pydicom adds to make it even is allowed.
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Columns = 3
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(1, 10)) + extra
    path = tmp_path / "odd.dcm"
    ds.save_as(path)
    assert len(pydicom.dcmread(path).PixelData) == (10 if ok else 12)
    if ok:
        np.testing.assert_array_equal(medeq.read(path).stored.ravel(), np.arange(1, 10))
        return
    with pytest.raises(
        CorruptPixelDataError, match=r"9 bytes expected, 10 with the padding .* holds 12 bytes$"
    ):
        _ = medeq.read(path).stored


def test_file_object_errors_name_the_file(tmp_path: Path) -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    path = tmp_path / "short.dcm"
    path.write_bytes(data[: len(data) - 5000])
    with open(path, "rb") as f:
        image = medeq.read(f)
    assert image.info.path == str(path)
    with pytest.raises(CorruptPixelDataError, match=rf"^{re.escape(str(path))}: \S"):
        medeq.normalize(image)
    with pytest.raises(CorruptPixelDataError, match=r"^<memory>: \S"):
        medeq.normalize(medeq.read(io.BytesIO(path.read_bytes())))


def test_header_that_ends_before_rows_is_refused_by_read_info_too(tmp_path: Path) -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: data.index(b"\x28\x00\x10\x00US")])  # (0028,0010) Rows, explicit VR
    match = rf"^{re.escape(str(path))}: header ends early: CT Image Storage object without"
    with pytest.raises(NotDicomError, match=match):
        medeq.read_info(path)
    with pytest.raises(NotDicomError, match=match):
        medeq.read(path)
    # Objects that have no pixels at all are still described.
    assert medeq.read_info(get_testdata_file("rtstruct.dcm")).rows == 0


def test_undecodable_codestream_lists_each_decoder() -> None:
    path = shared_file("wg04__NM1_JPLY.dcm")
    with pytest.raises(CorruptPixelDataError) as caught:
        _ = medeq.read(path).stored
    message = str(caught.value)
    assert "\n" not in message
    assert re.fullmatch(
        rf"{re.escape(str(path))}: cannot decode \(7FE0,0010\) Pixel Data \(JPEG Extended "
        r"\(Process 2 and 4\)\): the codestream could not be decoded by any installed decoder"
        r"( \[[\w-]+: .+\])+",
        message,
    ), message


@pytest.mark.parametrize(
    "name",
    [
        "wg04__CT1_UNC.dcm",
        "wg04__CT1_J2KR.dcm",
        "fodicom__CR-MONO1-10-chest.dcm",  # no preamble: transfer syntax inferred
        "pydicom__MR_small_bigendian.dcm",
        "dcmqa12bit__In_12bitSigned_0x0F0F.dcm",
    ],
)
def test_read_whole_equals_read(name: str) -> None:
    from medeq.reader import read_whole

    path = shared_file(name)
    a, b = medeq.read(path), read_whole(path)
    assert a.info == b.info
    np.testing.assert_array_equal(a.stored, b.stored)


NATIVE_LITTLE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_native_pixels_read_in_place_equal_a_full_parse(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Native little-endian pixel data are read from where the header read ended, without
    # parsing the file again; a full parse (the reader's other path) must agree, errors
    # included. The in-place read must be the path taken wherever it applies.
    from medeq import reader

    path = shared_file(name)
    try:
        image = medeq.read(path)
    except medeq.DicomError:
        return  # refused from the header: pixels are never read
    in_place = reader._native_pixel_data(image) is not None
    try:
        fast: np.ndarray | Exception = image.stored.copy()
    except medeq.DicomError as exc:
        fast = exc
    image.release()
    monkeypatch.setattr(reader, "_native_pixel_data", lambda image: None)
    try:
        slow: np.ndarray | Exception = image.stored.copy()
    except medeq.DicomError as exc:
        slow = exc
    if isinstance(slow, Exception):
        assert type(fast) is type(slow)
        assert str(fast) == str(slow)
    else:
        assert isinstance(fast, np.ndarray)
        assert fast.dtype == slow.dtype
        np.testing.assert_array_equal(fast, slow)
        # Both paths read native bytes without a decoder: pydicom's decoding is the oracle.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            decoded = pixel_array(reader._full_dataset(image), raw=True)
        info = image.info
        shape = (info.frames, info.rows, info.columns)
        np.testing.assert_array_equal(fast, reader._stored_values(decoded.reshape(shape), info))
        native = (
            image.info.transfer_syntax in NATIVE_LITTLE
            and not image.info.transfer_syntax_inferred
            and not pydicom.dcmread(path)["PixelData"].is_undefined_length
        )
        assert in_place == native


def test_native_pixels_in_place_of_a_file_that_changed(tmp_path: Path) -> None:
    # The header was read, then the file was replaced: the place no longer holds the
    # element it held, and the file is parsed again.
    src = Path(get_testdata_file("CT_small.dcm"))
    path = tmp_path / "ct.dcm"
    path.write_bytes(src.read_bytes())
    image = medeq.read(path)
    expected = image.stored.copy()
    image.release()
    ds = pydicom.dcmread(src)
    ds.PatientComments = "x" * 101  # shifts every later element
    ds.save_as(path)
    from medeq import reader

    assert reader._native_pixel_data(image) is None
    np.testing.assert_array_equal(image.stored, expected)


def test_an_image_without_its_header_reads_it_again_when_asked(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "ct.dcm"
    path.write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    image = medeq.read(path)
    light = image.without_header()
    assert light.info == image.info
    # What travels between processes: the info and the header's end, not the header.
    assert len(pickle.dumps(light)) * 4 < len(pickle.dumps(image))
    copy = pickle.loads(pickle.dumps(light))
    np.testing.assert_array_equal(copy.stored, image.stored)
    assert copy.dataset == image.dataset
    assert copy.dataset.filename == image.dataset.filename
    # In-memory images have nothing to read again: they keep their header.
    with path.open("rb") as fp:
        from_file_object = medeq.read(fp)
    assert from_file_object.without_header() is from_file_object


def test_an_image_without_its_header_refuses_another_instance(tmp_path: Path) -> None:
    path = tmp_path / "ct.dcm"
    src = Path(get_testdata_file("CT_small.dcm"))
    path.write_bytes(src.read_bytes())
    light = medeq.read(path).without_header()
    ds = pydicom.dcmread(src)
    # Rewritten with another comment: the same instance and image facts, accepted.
    ds.PatientComments = "changed"
    ds.save_as(path)
    assert light.dataset.PatientComments == "changed"
    light = medeq.read(path).without_header()
    ds.SOPInstanceUID = "1.2.3.4"
    ds.save_as(path)
    with pytest.raises(
        medeq.DicomError, match=r"ct\.dcm: the file changed after its header.*1\.2\.3\.4"
    ):
        _ = light.dataset
    light = medeq.read(path).without_header()
    ds.Rows = ds.Columns = 64
    ds.PixelData = bytes(64 * 64 * 2)
    ds.save_as(path)
    with pytest.raises(medeq.DicomError, match="its image attributes differ"):
        _ = light.dataset
    path.unlink()
    with pytest.raises(medeq.DicomError, match="no such file"):
        _ = light.dataset


def test_read_whole_refuses_what_decoding_refuses() -> None:
    from medeq.reader import read_whole

    with pytest.raises(medeq.CorruptPixelDataError, match="Pixel Data"):
        _ = read_whole(shared_file("derived__CT1_UNC_truncated_in_pixeldata.dcm")).stored
    with pytest.raises(medeq.UnsupportedImageError, match="colour image"):
        read_whole(shared_file("pydicom__examples_palette.dcm"))


@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.203"])
@pytest.mark.parametrize("name", ["wg04__CT1_UNC.dcm", "wg04__MR1_UNC.dcm"])
def test_real_htj2k_codestreams_decode_to_the_source_pixels(
    name: str, ts: str, tmp_path: Path
) -> None:
    """HTJ2K (Part 15) codestreams made by OpenJPH, through imagecodecs, read losslessly."""
    imagecodecs = pytest.importorskip("imagecodecs")
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(shared_file(name))
    pixels = ds.pixel_array
    codestream = imagecodecs.htj2k_encode(pixels, level=0)
    cap = codestream.find(b"\xff\x50")  # the CAP marker segment: Part 15 capabilities
    assert 0 < cap < 200 and codestream[cap + 5] & 0x02  # Pcap bit 15: HTJ2K
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = ts
    ds.save_as(tmp_path / "ht.dcm", enforce_file_format=True)
    image = medeq.read(tmp_path / "ht.dcm")
    assert image.info.transfer_syntax == ts
    np.testing.assert_array_equal(image.stored[0], pixels)


@pytest.mark.parametrize("shape", [(130, 130), (25, 679)])
def test_explicit_data_labelled_implicit_reads_as_pydicom_reads_it(
    tmp_path: Path, shape: tuple[int, int]
) -> None:
    # The file meta says Implicit VR Little Endian, the body is explicit (mislabelled
    # files exist): read in place as implicit, Pixel Data's "OB\0\0" would pass for its
    # length. The reader must leave such a file to pydicom, which detects the encoding.
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    rows, columns = shape
    pixels = (np.arange(rows * columns) % 251).astype(np.uint8).reshape(shape)
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OB"
    path = tmp_path / "mislabelled.dcm"
    ds.save_as(path, enforce_file_format=True)  # explicit VR little endian
    data = bytearray(path.read_bytes())
    explicit, implicit = b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2\0\0\0"
    at = data.index(explicit)
    data[at : at + len(explicit)] = implicit  # same length: the meta stays consistent
    path.write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = medeq.read(path)
        np.testing.assert_array_equal(image.stored[0], pixels)


# --------------------------------------------------------------------------- hostile files


def _raw(ds: pydicom.Dataset, keyword: str, value: bytes, vr: str | None = None) -> None:
    """Put ``value`` in the element as the file's bytes, unchecked (as a damaged file has it)."""
    tag = BaseTag(tag_for_keyword(keyword))
    target = ds.file_meta if tag.group == 2 else ds
    vr = vr or dictionary_VR(tag)
    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB") else b" "
    target._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def _dataset(name: str) -> pydicom.Dataset:
    path = get_testdata_file(name) if "__" not in name else shared_file(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _saved(ds: pydicom.Dataset, path: Path) -> Path:
    # The file meta's transfer syntax is written as it is (pydicom refuses unknown ones).
    implicit = ds.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
    pydicom.dcmwrite(path, ds, implicit_vr=implicit, little_endian=True)
    return path


def _with_transfer_syntax(path: Path, uid: bytes) -> None:
    """Rewrite (0002,0010) in the file's bytes, its length and the group length with it."""
    data = bytearray(path.read_bytes())
    at = data.index(b"\x02\x00\x10\x00UI")
    old = struct.unpack_from("<H", data, at + 6)[0]
    new = uid + b"\0" * (len(uid) % 2)
    data[at + 6 : at + 8 + old] = struct.pack("<H", len(new)) + new
    group = data.index(b"\x02\x00\x00\x00UL")
    length = struct.unpack_from("<I", data, group + 8)[0] + len(new) - old
    data[group + 8 : group + 12] = struct.pack("<I", length)
    path.write_bytes(bytes(data))


def test_empty_pixel_data_is_refused_naming_the_element(tmp_path: Path) -> None:
    ds = _dataset("CT_small.dcm")
    ds.PixelData = b""
    path = _saved(ds, tmp_path / "empty.dcm")
    with pytest.raises(CorruptPixelDataError, match=r"\(7FE0,0010\) Pixel Data .* 32768 bytes"):
        _ = medeq.read(path).stored
    # A Dataset whose element has no value, or an empty one: said as such.
    for value in (None, b""):
        ds.PixelData = value
        with pytest.raises(
            CorruptPixelDataError,
            match=r"^\S+CT_small\.dcm: \(7FE0,0010\) Pixel Data is empty \(length 0\); .* = 32768",
        ):
            _ = medeq.read(ds).stored
    # Encapsulated data without a frame.
    j2k = _dataset("MR_small_jp2klossless.dcm")
    j2k.PixelData = encapsulate([])
    path = _saved(j2k, tmp_path / "no_frames.dcm")
    with pytest.raises(CorruptPixelDataError, match=r"frame 1 of \(7FE0,0010\) Pixel Data is corr"):
        _ = medeq.read(path).stored


@pytest.mark.parametrize(
    ("uid", "error", "message"),
    [
        (
            b"1.2.3.4",
            UnsupportedImageError,
            r"'1\.2\.3\.4' is not one medeq can read pixels of",
        ),
        (b"1.3.6.1.4.1.5962.300.1", UnsupportedImageError, r"'1\.3\.6\.1\.4\.1\.5962\.300\.1' is"),
        (b"1.2.840.10008.5.1.4.1.1.2", UnsupportedImageError, r"\(CT Image Storage\) is not one"),
        (b"1.2.840.10008.1.2.4.100", UnsupportedImageError, r"\(MPEG2 Main Profile / Main"),
        (b"1.2.840.10008.1.2.4.92", UnsupportedImageError, r"\(JPEG 2000 Part 2 Multi-compo"),
        (b"1.2.abc", NotDicomError, r"'1\.2\.abc' is not a UID"),
        (b"1.2 .3", NotDicomError, r"'1\.2 \.3' is not a UID"),
        (b"1." + b"2" * 70, NotDicomError, r"'1\.2222.*' is not a UID"),
        (b"\xff\xfe1.2", NotDicomError, r"is not a UID"),
    ],
)
def test_transfer_syntax_uids_medeq_cannot_read(
    tmp_path: Path, uid: bytes, error: type[Exception], message: str
) -> None:
    path = _saved(_dataset("CT_small.dcm"), tmp_path / "ts.dcm")
    _with_transfer_syntax(path, uid)
    with pytest.raises(
        error, match=rf"^{re.escape(str(path))}: \(0002,0010\) Transfer Syntax UID .*{message}"
    ):
        medeq.read(path)
    # The header is still described as it is.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = medeq.read_info(path)
        expected = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert info.transfer_syntax == expected
    assert info.as_dict()["transfer_syntax_name"]


def test_an_empty_transfer_syntax_is_inferred_with_a_note(tmp_path: Path) -> None:
    path = _saved(_dataset("CT_small.dcm"), tmp_path / "ts.dcm")
    expected = medeq.read(path).stored.copy()
    _with_transfer_syntax(path, b"")
    with collecting() as notes:
        image = medeq.read(path)
        np.testing.assert_array_equal(image.stored, expected)
    assert image.info.transfer_syntax_inferred
    assert image.info.transfer_syntax == pydicom.uid.ExplicitVRLittleEndian
    assert notes == [
        f"{path}: (0002,0010) Transfer Syntax UID is empty; the data set reads as Explicit VR "
        "Little Endian, and its pixels are read as such"
    ]


def test_a_panicking_rle_decoder_gives_corrupt_pixel_data(tmp_path: Path) -> None:
    # pylibjpeg-rle panics (pyo3's PanicException, a BaseException) when the segments
    # decode to more than Rows x Columns.
    ds = _dataset("MR_small_RLE.dcm")
    ds.Rows = 24
    path = _saved(ds, tmp_path / "rows24.dcm")
    with pytest.raises(
        CorruptPixelDataError,
        match=r"cannot decode \(7FE0,0010\) Pixel Data \(RLE Lossless\): .*PanicException.*out of",
    ):
        _ = medeq.read(path).stored


class _Panic(BaseException):
    """What a Rust decoder's panic looks like from Python (pyo3's PanicException)."""


@pytest.mark.parametrize(
    ("raised", "caught"),
    [
        (_Panic("index out of bounds"), r"the decoder failed \(_Panic\): index out of bounds"),
        (MemoryError(), r"MemoryError"),
        (RuntimeError("bad\nstream"), r"bad stream$"),
    ],
)
def test_any_decoder_failure_becomes_corrupt_pixel_data(
    monkeypatch: pytest.MonkeyPatch, raised: BaseException, caught: str
) -> None:
    def decoder(*args: object, **kwargs: object) -> None:
        raise raised

    monkeypatch.setattr("medeq.reader.pixel_array", decoder)
    with pytest.raises(CorruptPixelDataError, match=r"cannot decode \(7FE0,0010\) .*" + caught):
        _ = medeq.read(get_testdata_file("MR_small_RLE.dcm")).stored


def test_a_decoder_interrupted_by_the_user_is_not_corrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    def decoder(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("medeq.reader.pixel_array", decoder)
    with pytest.raises(KeyboardInterrupt):
        _ = medeq.read(get_testdata_file("MR_small_RLE.dcm")).stored


def test_a_deflate_bomb_is_refused_before_pydicom_inflates_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medeq import reader

    # 16 MB of zeros deflate to some 16 KB; pydicom would inflate it whole, even to
    # read the header. The inflated size is counted first, a MiB at a time.
    ds = _dataset("image_dfl.dcm")
    ds.Rows = ds.Columns = 4000
    ds.PixelData = bytes(4000 * 4000)
    path = tmp_path / "bomb.dcm"
    ds.save_as(path)
    assert path.stat().st_size < 100_000
    monkeypatch.setattr(reader, "MAX_DECODED_BYTES", 8 * 2**20)
    tracemalloc.start()
    try:
        for read in (medeq.read_info, medeq.read, lambda p: medeq.read(io.BytesIO(p.read_bytes()))):
            with pytest.raises(
                UnsupportedImageError,
                match=r": the deflated data set \(\(0002,0010\) Transfer Syntax UID "
                r"1\.2\.840\.10008\.1\.2\.1\.99\) inflates to more than 8388608 bytes",
            ):
                read(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 6 * 2**20
    # Below the limit it reads as before.
    monkeypatch.setattr(reader, "MAX_DECODED_BYTES", 1 << 32)
    assert medeq.read(path).stored.shape == (1, 4000, 4000)


def _never_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("a decoder was called")

    monkeypatch.setattr("medeq.reader.pixel_array", boom)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7},
            r"frame 1 of \(7FE0,0010\) Pixel Data does not match the header: its RLE header "
            r"gives 2 segments; \(0028,0002\) Samples per Pixel 1 x \(0028,0100\) Bits "
            r"Allocated 8 / 8 = 1 \(RLE Lossless\)$",
        ),
        (
            {"Rows": 4096},
            r"an RLE segment of 1884 bytes decodes to 120576 bytes at most, fewer than "
            r"\(0028,0010\) Rows 4096 x \(0028,0011\) Columns 64 = 262144",
        ),
    ],
)
def test_rle_headers_are_checked_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, changes: dict[str, int], message: str
) -> None:
    ds = _dataset("MR_small_RLE.dcm")
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    path = _saved(ds, tmp_path / "rle.dcm")
    _never_decoded(monkeypatch)
    with pytest.raises(CorruptPixelDataError, match=message):
        _ = medeq.read(path).stored


HOSTILE_FRAMES = [b"1e308", b"-1e308", b"-1", b"0", b"2147483648", b"abc", b"1.5", b"nan", b"inf"]


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_jp2klossless.dcm"])
@pytest.mark.parametrize("value", HOSTILE_FRAMES)
def test_number_of_frames_out_of_range_is_refused(tmp_path: Path, name: str, value: bytes) -> None:
    ds = _dataset(name)
    _raw(ds, "NumberOfFrames", value)
    path = _saved(ds, tmp_path / "frames.dcm")
    message = (
        rf"^{re.escape(str(path))}: \(0028,0008\) Number of Frames '{re.escape(value.decode())}'"
    )
    with pytest.raises(
        medeq.DicomError, match=message + r" is not a whole number from 1 to 2147483647$"
    ):
        medeq.read_info(path)
    with pytest.raises(medeq.DicomError, match=message):
        medeq.read(path)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("CT_small.dcm", r"\(0028,0008\) Number of Frames 2147483647 x \(0028,0100\) Bits"),
        ("MR_small_jp2klossless.dcm", r"\(0028,0008\) Number of Frames 2147483647 cannot be in a"),
    ],
)
def test_more_frames_than_the_file_can_hold_are_refused_at_once(
    tmp_path: Path, name: str, message: str
) -> None:
    ds = _dataset(name)
    ds.NumberOfFrames = 2**31 - 1
    path = _saved(ds, tmp_path / "frames.dcm")
    assert medeq.read_info(path).frames == 2**31 - 1
    with pytest.raises(CorruptPixelDataError, match=message):
        medeq.read(path)


def test_the_command_line_refuses_a_hostile_number_of_frames(tmp_path: Path) -> None:
    ds = _dataset("CT_small.dcm")
    _raw(ds, "NumberOfFrames", b"1e308")
    path = _saved(ds, tmp_path / "frames.dcm")
    for command in (["info", str(path)], ["convert", str(path), "-o", str(tmp_path / "out")]):
        done = subprocess.run(
            [sys.executable, "-m", "medeq", *command], capture_output=True, text=True, timeout=120
        )
        assert done.returncode in (1, 2), (command, done.stderr)
        assert "Traceback" not in done.stderr
        assert "(0028,0008) Number of Frames '1e308'" in done.stdout + done.stderr


#: Files whose decoder aborted the process (GDCM, CharLS) when the header lied about
#: the size: each case is (file, changes); every one must now be a CorruptPixelDataError.
DECODER_CASES = [
    ("wg04__CT1_JLSL.dcm", {"Rows": 46341}),
    ("wg04__CT1_JLSL.dcm", {"Rows": 65535}),
    ("wg04__CT1_JLSL.dcm", {"Columns": 65535}),
    ("wg04__CT1_JLSL.dcm", {"Rows": 256}),
    ("wg04__CT1_JLSL.dcm", {"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7}),
    ("MR_small_jpeg_ls_lossless.dcm", {"Rows": 46341}),
    ("MR_small_jp2klossless.dcm", {"Rows": 46341}),
    ("MR_small_jp2klossless.dcm", {"Columns": 32}),
    ("wg04__CT1_JPLL.dcm", {"Rows": 46341}),
    ("wg04__CT1_J2KR.dcm", {"Columns": 1024}),
    ("JPGExtended.dcm", {"Rows": 2048}),
    # JPEG under Bits Allocated 32: GDCM aborted.
    ("fodicom__CR-ModalitySequenceLUT.dcm", {"BitsAllocated": 32}),
    ("wg04__CT1_JPLL.dcm", {"BitsAllocated": 32}),
    ("pylibjpeg__JPEGBaseline_1s_1f_u_08_08.dcm", {"BitsAllocated": 32}),
    ("JPGExtended.dcm", {"BitsAllocated": 32}),
]


def test_size_lies_give_a_clean_error_and_never_abort(tmp_path: Path) -> None:
    cases = []
    for index, (name, changes) in enumerate(DECODER_CASES):
        if "__" in name and not (SHARED_DICOM / name).is_file():
            continue
        ds = _dataset(name)
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        cases.append(str(_saved(ds, tmp_path / f"case{index}.dcm")))
    # In a child process: a regression aborts the child, not pytest.
    child = (
        "import json, sys, medeq\n"
        "out = []\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        medeq.read(path).stored\n"
        "        out.append(['decoded', ''])\n"
        "    except medeq.MedeqError as exc:\n"
        "        out.append([type(exc).__name__, str(exc)])\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", child, *cases], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    outcomes = json.loads(done.stdout)
    assert len(outcomes) == len(cases)
    for path, (kind, message) in zip(cases, outcomes, strict=True):
        assert kind == "CorruptPixelDataError", (path, kind, message)
        assert re.match(
            rf"{re.escape(path)}: frame 1 of \(7FE0,0010\) Pixel Data does not match the header: "
            r"its codestream holds \d+ rows x \d+ columns, 1 component\(s\) of \d+ bits; the "
            r"header gives \(0028,0010\) Rows \d+, \(0028,0011\) Columns \d+, \(0028,0002\) "
            r"Samples per Pixel 1, \(0028,0100\) Bits Allocated \d+ \(",
            message,
        ), message


def test_a_huge_declared_image_is_refused_before_any_allocation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medeq import reader

    native = _dataset("CT_small.dcm")
    native.Rows = native.Columns = 65535
    native.NumberOfFrames = 1000
    path = _saved(native, tmp_path / "native.dcm")
    with pytest.raises(
        CorruptPixelDataError,
        match=r"\(0028,0010\) Rows 65535 x \(0028,0011\) Columns 65535 x \(0028,0008\) Number of "
        r"Frames 1000 x \(0028,0100\) Bits Allocated 16 / 8 = 8589672450000 bytes, more than",
    ):
        medeq.read(path)
    encapsulated = _dataset("MR_small_jp2klossless.dcm")
    encapsulated.Rows = encapsulated.Columns = 65535
    encapsulated.NumberOfFrames = 100  # a file of 6 KB can hold 100 (empty) frames
    path = _saved(encapsulated, tmp_path / "j2k.dcm")
    with pytest.raises(
        UnsupportedImageError,
        match=r"Frames 100 x \(0028,0100\) Bits Allocated 16 / 8 = 858967245000 bytes decoded, "
        r"more than the 4294967296 bytes medeq decodes from compressed pixel data",
    ):
        medeq.read(path)
    # The cap is one constant: a healthy 64 x 64 image is refused below it.
    monkeypatch.setattr(reader, "MAX_DECODED_BYTES", 8191)
    with pytest.raises(UnsupportedImageError, match=r"= 8192 bytes decoded, more than the 8191"):
        medeq.read(get_testdata_file("MR_small_jp2klossless.dcm"))


def test_a_frame_count_that_disagrees_with_the_encoded_frames(tmp_path: Path) -> None:
    ds = _dataset("fodicom__HasFragmentSequence.dcm")  # 96 frames, with an offset table
    for frames in (95, 97):
        ds.NumberOfFrames = frames
        path = _saved(ds, tmp_path / f"{frames}.dcm")
        with pytest.raises(
            CorruptPixelDataError,
            match=rf"Pixel Data holds 96 encoded frame\(s\), but \(0028,0008\) Number of Frames "
            rf"is {frames}$",
        ):
            _ = medeq.read(path).stored


def test_a_length_that_lies_allocates_nothing_of_it(tmp_path: Path) -> None:
    # Pixel Data's length field says 4 GB in a 40 KB file: reads ask for what is there.
    data = bytearray(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    at = data.rfind(b"\xe0\x7f\x10\x00OW\x00\x00")
    data[at + 8 : at + 12] = struct.pack("<I", 0xFFFFFFF0)
    path = tmp_path / "long.dcm"
    path.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        with pytest.raises(medeq.DicomError, match=r"Pixel Data"):
            _ = medeq.read(path).stored
        with pytest.raises(medeq.DicomError):
            _ = medeq.reader.read_whole(path).stored
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20


# (keyword, file value, VR to write it with (None: the dictionary's), error, message)
BAD_REQUIRED = [
    ("Rows", _us(512) + _us(512), None, NotDicomError, r"\(0028,0010\) Rows '512\\\\512' is"),
    ("Rows", b"1e308", "DS", UnsupportedImageError, r"\(0028,0010\) Rows '1e308' is not a whole"),
    ("Columns", b"-5", "IS", UnsupportedImageError, r"\(0028,0011\) Columns '-5' is not a whole"),
    ("BitsAllocated", b"abc", "IS", NotDicomError, r"\(0028,0100\) Bits Allocated 'abc' is not"),
    ("PixelRepresentation", _us(2), None, UnsupportedImageError, r"\(0028,0103\) Pixel Repre"),
    (
        "SamplesPerPixel",
        _us(0),
        None,
        UnsupportedImageError,
        r"\(0028,0002\) Samples per Pixel '0'",
    ),
    ("RescaleSlope", b"abc", None, NotDicomError, r"\(0028,1053\) Rescale Slope 'abc' is not a"),
    ("RescaleIntercept", b"1+2", None, NotDicomError, r"\(0028,1052\) Rescale Intercept '1\+2'"),
]


@pytest.mark.parametrize(("keyword", "value", "vr", "error", "message"), BAD_REQUIRED)
def test_a_bad_required_value_is_refused_naming_it(
    tmp_path: Path, keyword: str, value: bytes, vr: str | None, error: type[Exception], message: str
) -> None:
    ds = _dataset("CT_small.dcm")
    _raw(ds, keyword, value, vr)
    path = _saved(ds, tmp_path / "bad.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the value it cannot convert
        with pytest.raises(error, match=rf"^{re.escape(str(path))}: {message}"):
            medeq.read(path)


# (keyword, file value, the info field, what it must be, the note)
BAD_OPTIONAL = [
    (
        "InstanceNumber",
        b"abc",
        "instance_number",
        None,
        r"\(0020,0013\) Instance Number 'abc' is ig",
    ),
    ("SeriesNumber", b"1e308", "series_number", None, r"\(0020,0011\) Series Number '1e308' is ig"),
    ("ImagePositionPatient", b"nan\\0\\0", "image_position", None, r"Image Position \(Patient\)"),
    ("ImagePositionPatient", b"1\\2", "image_position", None, r"not 3 finite numbers"),
    ("ImagePositionPatient", b"1e308\\0\\0", "image_position", None, r"not 3 finite numbers"),
    ("ImageOrientationPatient", b"0\\0\\0\\0\\0\\0", "image_orientation", None, r"two unit vec"),
    ("ImageOrientationPatient", b"1\\0\\0\\0\\inf\\0", "image_orientation", None, r"6 finite"),
    ("HighBit", _us(20), "high_bit", 20, r"\(0028,0102\) High Bit 20 is not \(0028,0101\) Bits"),
]


@pytest.mark.parametrize(("keyword", "value", "field", "expected", "message"), BAD_OPTIONAL)
def test_a_bad_optional_value_is_dropped_with_a_note(
    tmp_path: Path, keyword: str, value: bytes, field: str, expected: object, message: str
) -> None:
    ds = _dataset("CT_small.dcm")
    _raw(ds, keyword, value)
    path = _saved(ds, tmp_path / "bad.dcm")
    with warnings.catch_warnings(), collecting() as notes:
        warnings.simplefilter("ignore")
        image = medeq.read(path)
        stored = image.stored
    assert getattr(image.info, field) == expected
    assert stored.shape == (1, 128, 128)
    assert len(notes) == 1 and re.match(rf"^{re.escape(str(path))}: .*{message}", notes[0]), notes


def test_unusable_windows_are_left_out_with_a_note(tmp_path: Path) -> None:
    ds = _dataset("CT_small.dcm")
    _raw(ds, "WindowCenter", b"40\\inf\\1e308\\nan\\50")
    _raw(ds, "WindowWidth", b"400\\80\\10\\20\\-1e400")
    _raw(ds, "WindowCenterWidthExplanation", b"A\\B\\C\\D\\E")
    path = _saved(ds, tmp_path / "windows.dcm")
    with warnings.catch_warnings(), collecting() as notes:
        warnings.simplefilter("ignore")
        info = medeq.read_info(path)
    assert info.windows == (medeq.Window(40.0, 400.0, "LINEAR", "A"),)
    assert len(notes) == 4
    assert notes[0] == (
        f"{path}: window 2 of 5, (0028,1050) Window Center 'inf' / (0028,1051) Window Width "
        "'80.0', is ignored: both must be finite numbers within ±2**53 (the windows after it "
        "move up one place)"
    )
    assert "window 5 of 5" in notes[3] and "move up" not in notes[3]
    # The usable ones stay, in order.
    _raw(ds, "WindowCenter", b"40\\1e308\\50")
    _raw(ds, "WindowWidth", b"400\\10\\350")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = medeq.read_info(_saved(ds, tmp_path / "windows2.dcm"))
    assert [(w.center, w.width) for w in info.windows] == [(40.0, 400.0), (50.0, 350.0)]


# --------------------------------------------------------------------------- damaged files

#: Native files (no decoder that could abort): explicit and implicit VR, big endian,
#: a non-image with sequences.
NATIVE_SEEDS = ("CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "rtplan.dcm")


def _outcome(path: Path) -> None:
    """Read ``path`` every way the reader offers; anything but a MedeqError fails the test."""
    from medeq.reader import read_whole

    for step in (
        lambda: medeq.read_info(path),
        lambda: medeq.read(path).stored,
        lambda: read_whole(path).stored,
        lambda: medeq.read(io.BytesIO(path.read_bytes())).stored,
    ):
        with contextlib.suppress(medeq.MedeqError):
            step()


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_damaged_native_files_read_or_fail_cleanly(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(NATIVE_SEEDS), label="file")
    original = Path(get_testdata_file(name)).read_bytes()
    damaged = original
    header = damaged.rfind(b"\xe0\x7f\x10\x00")
    header = len(original) if header < 0 else header + 12
    for _ in range(data.draw(st.integers(1, 4), label="changes")):
        at = data.draw(st.integers(0, header - 1), label="offset")
        patch = data.draw(st.binary(min_size=1, max_size=4), label="bytes")
        damaged = damaged[:at] + patch + damaged[at + len(patch) :]
    cut = data.draw(st.one_of(st.just(len(damaged)), st.integers(0, len(damaged))), label="cut")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "damaged.dcm"
        path.write_bytes(damaged[:cut])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _outcome(path)


#: Compressed seeds for the mutation loop run in a child process.
LOOP_SEEDS = (
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEG2000.dcm",
    "JPGExtended.dcm",
    "JPEGLSNearLossless_16.dcm",
)
HOSTILE_VALUES = (b"1e308", b"-1e308", b"inf", b"nan", b"1e-320", b"", b"abc", b"0", b"-1")
HOSTILE_US = (0, 1, 7, 8, 12, 16, 17, 32, 64, 255, 4096, 46341, 65535)


def _mutant(rng: np.random.Generator, folder: Path, index: int) -> tuple[Path, str]:
    """One reproducible mutant of a compressed seed, and its recipe."""
    name = LOOP_SEEDS[int(rng.integers(len(LOOP_SEEDS)))]
    ds = _dataset(name)
    recipe = []
    for _ in range(int(rng.integers(1, 3))):
        keyword = str(
            rng.choice(
                [
                    "Rows",
                    "Columns",
                    "BitsAllocated",
                    "BitsStored",
                    "HighBit",
                    "SamplesPerPixel",
                    "PixelRepresentation",
                    "NumberOfFrames",
                    "WindowCenter",
                    "RescaleSlope",
                ]
            )
        )
        if dictionary_VR(tag_for_keyword(keyword)) == "US":
            value = int(rng.choice(HOSTILE_US))
            _raw(ds, keyword, _us(value))
        else:
            value = HOSTILE_VALUES[int(rng.integers(len(HOSTILE_VALUES)))]
            _raw(ds, keyword, value)
        recipe.append(f"{keyword}={value!r}")
    path = _saved(ds, folder / f"m{index}.dcm")
    data = bytearray(path.read_bytes())
    if rng.random() < 0.5:  # damage the first frame's header too
        start = data.rfind(b"\xe0\x7f\x10\x00") + 12
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(start, min(len(data), start + 120)))
            data[at] = int(rng.integers(256))
            recipe.append(f"byte {at}={data[at]}")
    if rng.random() < 0.2:
        del data[int(rng.integers(len(data) // 2, len(data))) :]
        recipe.append(f"cut at {len(data)}")
    path.write_bytes(bytes(data))
    return path, f"{name}: {', '.join(recipe)}"


def test_a_fixed_seed_mutation_loop_over_compressed_files(tmp_path: Path) -> None:
    # Hostile header values and damaged codestream headers, decoded in a child process:
    # every mutant reads or fails with a MedeqError; no other exception, hang or abort.
    rng = np.random.default_rng(20261207)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mutants = [_mutant(rng, tmp_path, index) for index in range(120)]
    child = (
        "import json, sys, warnings, medeq\n"
        "warnings.simplefilter('ignore')\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        medeq.read_info(path)\n"
        "        medeq.read(path).stored\n"
        "        print('ok', flush=True)\n"
        "    except medeq.MedeqError:\n"
        "        print('error', flush=True)\n"
        "    except BaseException as exc:\n"
        "        text = str(exc)[:200].replace(chr(10), ' ')\n"
        "        print('crash', type(exc).__name__, text, flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", child, *(str(p) for p, _ in mutants)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = done.stdout.splitlines()
    last = mutants[len(lines)][1] if len(lines) < len(mutants) else ""
    assert done.returncode == 0, f"child died ({done.returncode}) on {last}: {done.stderr[-1500:]}"
    crashes = [
        f"{recipe}: {line}"
        for (_, recipe), line in zip(mutants, lines, strict=True)
        if line.startswith("crash")
    ]
    assert not crashes, "\n".join(crashes)
    assert {"ok", "error"} <= set(lines)


def test_a_length_that_swallows_the_pixel_data_header_is_a_clean_error(tmp_path: Path) -> None:
    # (0028,2114) Lossy Image Compression Method said 24 bytes instead of 12: pydicom
    # then reads an item delimiter of the encapsulated data as an element. Found by
    # tools/fuzz.py; it raised NotImplementedError in _filewalk.last_place.
    source = shared_file("pylibjpeg__JPEGBaseline_1s_1f_u_08_08.dcm")
    data = bytearray(source.read_bytes())
    at = data.index(b"\x28\x00\x14\x21CS")  # (0028,2114), explicit VR little endian
    assert data[at + 6 : at + 8] == (12).to_bytes(2, "little")
    data[at + 6 : at + 8] = (24).to_bytes(2, "little")
    lie = tmp_path / "lie.dcm"
    lie.write_bytes(bytes(data))
    with pytest.raises(medeq.MedeqError, match="Pixel Data"):
        _ = medeq.read(lie).stored
