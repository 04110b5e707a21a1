"""Derived DICOM: the written object, checked attribute by attribute and by real tools."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import medeq
import medeq.derive
from medeq import OutputError
from medeq._notes import collecting
from medeq.enhance import canonical_parameters, quality_of

from .conftest import shared_file, synthetic_series
from .test_reader import EXPECTED

READABLE = sorted(name for name, outcome in EXPECTED.items() if not isinstance(outcome, type))


@pytest.fixture
def ct_path() -> str:
    return get_testdata_file("CT_small.dcm")


def written(image: medeq.DicomImage, tmp_path: Path, **kwargs: object) -> pydicom.Dataset:
    derived = medeq.enhance(image, **kwargs)  # type: ignore[arg-type]
    [path] = medeq.write(derived, tmp_path / "out.dcm")
    return pydicom.dcmread(path)


# --------------------------------------------------------------------------- the object


def test_new_uids_and_kept_identity(ct_path: str, tmp_path: Path) -> None:
    src = pydicom.dcmread(ct_path)
    out = written(medeq.read(ct_path), tmp_path)
    assert out.SOPInstanceUID != src.SOPInstanceUID
    assert out.SeriesInstanceUID != src.SeriesInstanceUID
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    for keyword in (
        "StudyInstanceUID",
        "FrameOfReferenceUID",
        "PatientID",
        "PatientName",
        "SOPClassUID",
        "ImagePositionPatient",
        "PixelSpacing",
    ):
        assert out[keyword].value == src[keyword].value, keyword
    assert out.SeriesNumber == int(src.SeriesNumber) + 1000
    assert out.SeriesDescription.endswith("EQ")


def test_uids_are_deterministic(ct_path: str) -> None:
    image = medeq.read(ct_path)
    a, b = medeq.enhance(image), medeq.enhance(medeq.read(ct_path))
    assert a.dataset.SOPInstanceUID == b.dataset.SOPInstanceUID
    assert a.series_uid == b.series_uid
    c = medeq.enhance(image, bins=64)
    d = medeq.enhance(image, window="lung")
    uids = {x.dataset.SOPInstanceUID for x in (a, c, d)}
    assert len(uids) == 3
    assert len({a.series_uid, c.series_uid, d.series_uid}) == 3


def test_uids_depend_on_the_images_equalized_together(tmp_path: Path) -> None:
    # One histogram per batch: a slice equalized with its series gets other values than
    # the same slice alone, so it must get other UIDs.
    synthetic_series(tmp_path / "in")
    files = sorted((tmp_path / "in").glob("CT_small_*.dcm"))
    [series] = medeq.read_series(files)
    together = medeq.enhance(series)
    alone = medeq.enhance(medeq.read(files[1]))
    index = [Path(str(im.info.path)).name for im in series.images].index(files[1].name)
    assert not np.array_equal(together.image_pixels(index), alone.pixels)
    assert together.headers[index].SOPInstanceUID != alone.dataset.SOPInstanceUID
    assert together.series_uid != alone.series_uid
    # The same batch again (read afresh) gives the same UIDs.
    [again] = medeq.read_series(files)
    repeat = medeq.enhance(again)
    assert [h.SOPInstanceUID for h in repeat.headers] == [
        h.SOPInstanceUID for h in together.headers
    ]
    assert repeat.series_uid == together.series_uid
    # The batch is a set: the order the images come in does not matter.
    images = list(series.images)
    assert canonical_parameters(images) == canonical_parameters(images[::-1])
    assert canonical_parameters(images) != canonical_parameters(images[:-1])


def test_uids_alone_and_in_series_on_real_slices() -> None:
    files = [shared_file(f"fodicom__abd1_adb1_{i}.dcm") for i in range(1, 12)]
    [series] = medeq.read_series(files)
    together = medeq.enhance(series)
    alone = medeq.enhance(medeq.read(files[2]))
    [header] = [
        h
        for h, im in zip(together.headers, series.images, strict=True)
        if im.info.path == str(files[2])
    ]
    assert header.SOPInstanceUID != alone.dataset.SOPInstanceUID
    assert together.series_uid != alone.series_uid


def test_keep_private_changes_the_uids(ct_path: str) -> None:
    image = medeq.read(ct_path)
    full, stripped = medeq.enhance(image), medeq.enhance(image, keep_private=False)
    assert full.dataset.SOPInstanceUID != stripped.dataset.SOPInstanceUID
    assert full.series_uid != stripped.series_uid
    assert medeq.enhance(image, keep_private=True).series_uid == full.series_uid
    text = canonical_parameters([image], keep_private=False)
    assert "keep_private=False" in text


def test_uids_are_the_same_in_another_process(ct_path: str) -> None:
    """No per-process salt (such as str hashing) may enter the UIDs."""
    code = (
        "import medeq, sys; d = medeq.enhance(medeq.read(sys.argv[1]), bins=64); "
        "print(d.dataset.SOPInstanceUID, d.series_uid)"
    )
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, "-c", code, ct_path],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        outputs.add(run.stdout.strip())
    here = medeq.enhance(medeq.read(ct_path), bins=64)
    assert outputs == {f"{here.dataset.SOPInstanceUID} {here.series_uid}"}


def test_single_valued_image_type_is_one_value(tmp_path: Path) -> None:
    # pydicom gives a single value as a str, which must not be split into letters.
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.ImageType = "ORIGINAL"
    assert isinstance(ds.ImageType, str)
    out = written(medeq.read(ds), tmp_path)
    assert list(out.ImageType) == ["DERIVED", "SECONDARY"]
    del ds.ImageType
    assert list(written(medeq.read(ds), tmp_path).ImageType) == ["DERIVED", "SECONDARY"]


def test_single_valued_image_type_of_a_real_file() -> None:
    # This CR stores "ORIGINAL PRIMARY" as ONE value (a space, not a backslash).
    image = medeq.read(shared_file("fodicom__CR-MONO1-10-chest.dcm"))
    assert isinstance(image.dataset.ImageType, str)
    assert list(medeq.enhance(image).dataset.ImageType) == ["DERIVED", "SECONDARY"]


def test_derivation_attributes(ct_path: str, tmp_path: Path) -> None:
    out = written(medeq.read(ct_path), tmp_path, window="abdomen")
    assert list(out.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert list(out.ImageType)[2:] == list(pydicom.dcmread(ct_path).ImageType)[2:]
    text = out.DerivationDescription
    assert len(text) <= 1024
    for part in (
        "medeq",
        "global",
        "401 bins",
        "window 40/400",
        "mask none",
        "65536 output levels",
    ):
        assert part in text
    [ref] = out.SourceImageSequence
    assert ref.ReferencedSOPInstanceUID == pydicom.dcmread(ct_path).SOPInstanceUID
    assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert ref.SpatialLocationsPreserved == "YES"
    equipment = out.ContributingEquipmentSequence[-1]
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109103"
    assert equipment.Manufacturer == "medeq"
    assert equipment.SoftwareVersions == medeq.__version__
    assert "DerivationCodeSequence" not in out


def test_derived_header_values_have_pydicom_types(ct_path: str) -> None:
    """What a library user reads from Derived headers: the types pydicom's setattr gives."""
    from pydicom.valuerep import IS, DSfloat

    header = medeq.enhance(medeq.read(ct_path)).dataset
    assert type(header.WindowCenter) is DSfloat and type(header.WindowWidth) is DSfloat
    assert type(header.RescaleSlope) is DSfloat
    assert type(header.SeriesNumber) is IS
    assert type(header.SOPInstanceUID) is pydicom.uid.UID
    assert type(header.file_meta.MediaStorageSOPInstanceUID) is pydicom.uid.UID
    assert header.file_meta.MediaStorageSOPInstanceUID == header.SOPInstanceUID
    assert isinstance(header.SourceImageSequence, pydicom.Sequence)
    assert header["ContributingEquipmentSequence"].VR == "SQ"
    assert isinstance(header.InstanceCreationDate, str)


@pytest.mark.parametrize(
    ("keyword", "odd_vr", "value"),
    [
        ("WindowCenter", "US", 40),
        ("WindowCenter", "IS", 40),
        ("WindowCenter", "FD", 40.0),
        ("RescaleSlope", "FD", 1.0),
        ("RescaleIntercept", "SS", -1024),
        ("SeriesNumber", "LO", "7"),
    ],
)
def test_values_medeq_computes_get_the_dictionary_vr(
    tmp_path: Path, keyword: str, odd_vr: str, value: object
) -> None:
    """A source storing an element medeq rewrites under another VR (as odd files do) gets
    the standard VR in the output: the window of 255 levels, 127.5, fits neither US nor IS."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.add_new(keyword, odd_vr, value)
    ds.save_as(tmp_path / "odd.dcm")
    source = medeq.read(tmp_path / "odd.dcm")
    stored_as = source.dataset[keyword].VR
    assert stored_as == odd_vr
    derived = medeq.enhance(source, levels=255)
    [path] = medeq.write(derived, tmp_path / "out.dcm")
    out = pydicom.dcmread(path)
    written_as = out[keyword].VR
    assert written_as == pydicom.datadict.dictionary_VR(keyword)
    assert float(out.WindowCenter) == derived.window()[0] == 127.5
    assert int(out.SeriesNumber) == int(derived.dataset.SeriesNumber)


def test_dates_follow_pydicom_datetime_conversion(
    ct_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydicom.valuerep import DA, TM

    monkeypatch.setattr(pydicom.config, "datetime_conversion", True)
    header = medeq.enhance(medeq.read(ct_path)).dataset
    assert isinstance(header.InstanceCreationDate, DA)
    assert isinstance(header.InstanceCreationTime, TM)


def test_multi_valued_series_description_is_joined(tmp_path: Path) -> None:
    """An LO with a backslash (invalid, but found in the wild) is kept as text, not a list."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SeriesDescription = "AXIAL\\BONE"
    ds.save_as(tmp_path / "two.dcm")
    header = medeq.enhance(medeq.read(tmp_path / "two.dcm")).dataset
    assert header.SeriesDescription == "AXIAL\\BONE EQ"


def test_pixel_module_rescale_and_window(ct_path: str, tmp_path: Path) -> None:
    image = medeq.read(ct_path)
    derived = medeq.enhance(image, levels=4096)
    [path] = medeq.write(derived, tmp_path / "o.dcm")
    out = pydicom.dcmread(path)
    assert (out.BitsAllocated, out.BitsStored, out.HighBit) == (16, 12, 11)
    assert out.PixelRepresentation == 0
    assert out.PhotometricInterpretation == "MONOCHROME2"
    assert out.SamplesPerPixel == 1
    assert (float(out.RescaleSlope), float(out.RescaleIntercept), out.RescaleType) == (1, 0, "US")
    lo, hi = int(derived.pixels.min()), int(derived.pixels.max())
    assert (lo, hi) == (0, 4095)
    assert float(out.WindowCenter) == (lo + hi + 1) / 2
    assert float(out.WindowWidth) == hi - lo + 1
    np.testing.assert_array_equal(out.pixel_array, derived.pixels[0])
    for element in out.iterall():
        if element.VR == "DS":
            values = element.value if element.VM > 1 else [element.value]
            assert all(len(str(v)) <= 16 for v in values), element


def test_monochrome1_and_lut_sequences_become_monochrome2(tmp_path: Path) -> None:
    out = written(medeq.read(shared_file("fodicom__CR-ModalitySequenceLUT.dcm")), tmp_path)
    assert out.PhotometricInterpretation == "MONOCHROME2"
    assert "ModalityLUTSequence" not in out
    out = written(medeq.read(shared_file("pydicomdata__vlut_04.dcm")), tmp_path)
    assert "VOILUTSequence" not in out
    assert "WindowCenter" in out


def test_lossy_history_is_kept_and_added(tmp_path: Path) -> None:
    source = pydicom.dcmread(shared_file("wg04__CT1_J2KI.dcm"))
    assert source.LossyImageCompression == "01"
    assert written(medeq.read(source), tmp_path).LossyImageCompression == "01"
    # A lossy transfer syntax without the history: medeq records it.
    del source.LossyImageCompression
    out = written(medeq.read(source), tmp_path)
    assert out.LossyImageCompression == "01"
    assert out.LossyImageCompressionMethod == "ISO_15444_1"
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.LossyImageCompression, ds.LossyImageCompressionRatio = "01", 8
    out = written(medeq.read(ds), tmp_path)
    assert out.LossyImageCompression == "01"
    assert float(out.LossyImageCompressionRatio) == 8


def test_earlier_derivation_and_private_tags(tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.DerivationDescription = "earlier step"
    block = ds.private_block(0x0041, "MEDEQ TEST", create=True)
    block.add_new(0x01, "LO", "keep me")
    out = written(medeq.read(ds), tmp_path)
    assert out.DerivationDescription.startswith("earlier step; Histogram equalization")
    assert out[0x0041, 0x1001].value == "keep me"
    stripped = written(medeq.read(ds), tmp_path, keep_private=False)
    assert (0x0041, 0x1001) not in stripped


def _with_element_after_pixels(
    path: Path, source: str, transfer_syntax: str | None, *, padding: bool = True
) -> Path:
    ds = pydicom.dcmread(get_testdata_file(source))
    if not padding and "DataSetTrailingPadding" in ds:
        del ds.DataSetTrailingPadding
    block = ds.private_block(0xE029, "MEDEQ TEST", create=True)
    block.add_new(0x01, "LO", "after the pixels")
    if transfer_syntax is not None:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.save_as(path, enforce_file_format=True)
    return path


def _text(value: object) -> str:
    return value.decode().rstrip() if isinstance(value, bytes) else str(value)


@pytest.mark.parametrize(
    ("source", "transfer_syntax"),
    [
        ("CT_small.dcm", None),
        ("CT_small.dcm", pydicom.uid.ImplicitVRLittleEndian),
        ("CT_small.dcm", pydicom.uid.DeflatedExplicitVRLittleEndian),
        ("MR_small_bigendian.dcm", None),
        ("MR_small_RLE.dcm", None),
    ],
)
def test_elements_after_pixel_data_are_copied(
    source: str, transfer_syntax: str | None, tmp_path: Path
) -> None:
    path = _with_element_after_pixels(tmp_path / "src.dcm", source, transfer_syntax)
    # Written in tag order: after (7FE0,0010), before (FFFC,FFFC) padding if any.
    assert _text(pydicom.dcmread(path)[0xE029, 0x1001].value) == "after the pixels"
    image = medeq.read(path)
    assert (0xE029, 0x1001) not in image.dataset  # the header read stops at the pixels
    out = written(image, tmp_path)
    # Implicit VR sources leave a private element's VR unknown: it stays UN, bytes unchanged.
    assert _text(out[0xE029, 0x1001].value) == "after the pixels"
    assert out[0xE029, 0x0010].value == "MEDEQ TEST"
    assert "DataSetTrailingPadding" not in out
    np.testing.assert_array_equal(out.pixel_array, medeq.enhance(image).pixels[0])
    # A file object is read into memory: the same elements come from its bytes.
    with open(path, "rb") as f:
        from_memory = medeq.read(io.BytesIO(f.read()))
    assert _text(written(from_memory, tmp_path)[0xE029, 0x1001].value) == "after the pixels"
    stripped = written(image, tmp_path, keep_private=False)
    assert (0xE029, 0x1001) not in stripped and (0xE029, 0x0010) not in stripped


def test_a_truncated_element_after_the_pixels_is_left_out(tmp_path: Path) -> None:
    path = _with_element_after_pixels(tmp_path / "src.dcm", "CT_small.dcm", None, padding=False)
    path.write_bytes(path.read_bytes()[:-3])
    out = written(medeq.read(path), tmp_path)
    assert out[0xE029, 0x0010].value == "MEDEQ TEST"
    assert (0xE029, 0x1001) not in out


def test_pixel_data_group_is_not_copied(tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.ExtendedOffsetTable = b"\0" * 8
    ds.ExtendedOffsetTableLengths = b"\0" * 8
    out = written(medeq.read(ds), tmp_path)
    assert [e.tag for e in out if e.tag.group == 0x7FE0] == [0x7FE00010]


def test_implicit_vr_items_in_an_explicit_vr_file_are_written_explicit(tmp_path: Path) -> None:
    # Some writers encode a sequence's items in implicit VR inside an explicit VR file;
    # the derived file holds them in explicit VR, as its transfer syntax says.
    data = bytearray(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    body = struct.pack("<HHL", 0x0008, 0x1150, 5) + b"1.2.3"
    body += struct.pack("<HHL", 0x0008, 0x1155, 7) + b"1.2.3.4"
    item = struct.pack("<HHL", 0xFFFE, 0xE000, len(body)) + body
    sequence = struct.pack("<HH2sxxL", 0x0008, 0x1140, b"SQ", len(item)) + item
    at = data.index(b"\x10\x00\x10\x00PN")  # before (0010,0010) Patient's Name
    data[at:at] = sequence
    source = tmp_path / "mixed.dcm"
    source.write_bytes(data)
    [out_path] = medeq.write(medeq.enhance(medeq.read(source)), tmp_path / "out.dcm")
    raw = Path(out_path).read_bytes()
    start = raw.index(b"\x08\x00\x40\x11SQ")
    assert b"\x08\x00\x50\x11UI\x06\x001.2.3\x00" in raw[start : start + 64]
    out = pydicom.dcmread(out_path)
    assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID == "1.2.3.4"


def test_private_elements_after_pixel_data_of_a_real_file(tmp_path: Path) -> None:
    image = medeq.read(shared_file("dcm4che__NM-MONO2-16-13x-heart.dcm"))
    out = written(image, tmp_path)
    assert out[0xE029, 0x0010].value == "TEST"
    assert out[0xE029, 0x1001].value == "Value"
    # Group lengths are not written (retired, PS3.5 7.2).
    assert (0xE029, 0x0000) not in out
    assert (0xE029, 0x1001) not in written(image, tmp_path, keep_private=False)


def test_enhanced_multiframe_functional_groups(tmp_path: Path) -> None:
    image = medeq.read(shared_file("pydicomdata__eCT_Supplemental.dcm"))
    derived = medeq.enhance(image)
    [path] = medeq.write(derived, tmp_path / "e.dcm")
    out = pydicom.dcmread(path)
    shared = out.SharedFunctionalGroupsSequence[0]
    pvt = shared.PixelValueTransformationSequence[0]
    assert (float(pvt.RescaleSlope), float(pvt.RescaleIntercept), pvt.RescaleType) == (1, 0, "US")
    voi = (
        shared.get("FrameVOILUTSequence")
        or out.PerFrameFunctionalGroupsSequence[0].FrameVOILUTSequence
    )[0]
    center, width = derived.window()
    assert float(voi.WindowCenter) == center and float(voi.WindowWidth) == width
    assert "RedPaletteColorLookupTableDescriptor" not in out
    assert out.NumberOfFrames == 2
    # The derivation goes into the Derivation Image functional group (C.7.6.16.2.6).
    for keyword in ("SourceImageSequence", "DerivationDescription"):
        assert keyword not in out
    [macro] = shared.DerivationImageSequence
    assert macro.DerivationDescription == derived.description
    assert macro.DerivationCodeSequence[0].CodingSchemeDesignator == "99MEDEQ"
    [ref] = macro.SourceImageSequence
    assert ref.ReferencedSOPInstanceUID == image.info.sop_instance_uid
    assert list(ref.ReferencedFrameNumber) == [1, 2]
    assert ref.SpatialLocationsPreserved == "YES"
    [study] = out.SourceImageEvidenceSequence
    assert study.StudyInstanceUID == image.info.study_instance_uid
    [series] = study.ReferencedSeriesSequence
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ref.ReferencedSOPInstanceUID
    assert shared.CTImageFrameTypeSequence[0].PixelPresentation == "MONOCHROME"
    np.testing.assert_array_equal(out.pixel_array, derived.pixels)


def test_series_share_a_new_series_uid(tmp_path: Path) -> None:
    [series] = medeq.read_series([shared_file(f"fodicom__abd1_adb1_{i}.dcm") for i in range(1, 6)])
    derived = medeq.enhance(series)
    files = medeq.write(derived, tmp_path / "series")
    outs = [pydicom.dcmread(f) for f in files]
    assert len({o.SeriesInstanceUID for o in outs}) == 1
    assert outs[0].SeriesInstanceUID == derived.series_uid
    assert len({o.SOPInstanceUID for o in outs}) == 5
    assert [f.name for f in files] == [f"fodicom__abd1_adb1_{i}.dcm" for i in range(1, 6)]
    # One histogram over the volume: the window is the same on every slice.
    assert len({(o.WindowCenter, o.WindowWidth) for o in outs}) == 1


@pytest.mark.parametrize(
    "ts", ["explicit-little", "rle", "jpeg-ls", "jpeg2000", pydicom.uid.RLELossless]
)
def test_round_trip_in_every_written_transfer_syntax(ts: str, ct_path: str, tmp_path: Path) -> None:
    derived = medeq.enhance(medeq.read(ct_path))
    [path] = medeq.write(derived, tmp_path / "t.dcm", transfer_syntax=ts)
    out = pydicom.dcmread(path)
    assert out.file_meta.TransferSyntaxUID == medeq.TransferSyntax.parse(ts).uid
    assert out.SOPInstanceUID == derived.dataset.SOPInstanceUID
    np.testing.assert_array_equal(out.pixel_array, derived.pixels[0])


def test_bad_transfer_syntax(ct_path: str, tmp_path: Path) -> None:
    derived = medeq.enhance(medeq.read(ct_path))
    with pytest.raises(
        medeq.ParameterError, match="transfer_syntax must be one of 'explicit-little'"
    ):
        medeq.write(derived, tmp_path / "x.dcm", transfer_syntax="jpeg-lossy")


# --------------------------------------------------------------------------- safety


def test_source_file_and_dataset_are_never_modified(tmp_path: Path) -> None:
    src = tmp_path / "src.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    image = medeq.read(src)
    before = image.dataset.to_json()
    medeq.write(medeq.enhance(image), tmp_path / "out.dcm", preview=True)
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest
    assert image.dataset.to_json() == before
    with pytest.raises(OutputError, match="refusing to write over a source file"):
        medeq.write(medeq.enhance(image), src)


def test_changing_a_derived_header_leaves_the_source_alone(ct_path: str) -> None:
    """Derived headers share the source's values only where those cannot change."""
    image = medeq.read(ct_path)
    before = image.dataset.to_json()
    header = medeq.enhance(image).dataset
    # Elements the reader decoded (numbers, UIDs, strings, multiple values), and others.
    header.Rows = 7
    header.Modality = "OT"
    header.StudyInstanceUID = "1.2.3"
    header.ImagePositionPatient[0] = 999.0
    header.ImageOrientationPatient = [0, 1, 0, 1, 0, 0]
    header.PatientName = "Changed^Name"
    header.SliceThickness = 9
    assert image.dataset.to_json() == before


def test_overwrite_false_refuses_existing(ct_path: str, tmp_path: Path) -> None:
    derived = medeq.enhance(medeq.read(ct_path))
    target = tmp_path / "o.dcm"
    medeq.write(derived, target)
    with pytest.raises(OutputError, match=r"o.dcm: exists"):
        medeq.write(derived, target, overwrite=False)


def test_a_crash_while_writing_leaves_nothing(
    ct_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    derived = medeq.enhance(medeq.read(ct_path))

    def crash(fd: int) -> None:  # the data are in the temporary file, not yet on disk
        raise KeyboardInterrupt

    monkeypatch.setattr(medeq._atomic.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        medeq.write(derived, tmp_path / "o.dcm")
    assert list(tmp_path.iterdir()) == []


def test_output_file_mode_follows_umask(ct_path: str, tmp_path: Path) -> None:
    import os

    [path] = medeq.write(medeq.enhance(medeq.read(ct_path)), tmp_path / "o.dcm")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# --------------------------------------------------------------------------- real tools


def _error_lines(path: Path) -> set[str]:
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return {
        re.sub(r"\s+", " ", line.strip())
        for line in (run.stdout + run.stderr).splitlines()
        if line.startswith("Error")
    }


def _inherited(line: str, baseline: set[str]) -> bool:
    """An error about a value (such as an invalid UID) the source already carried."""
    values = re.findall(r"[<\"]([0-9][0-9.]{8,})[>\"]", line)
    return any(v in base for v in values for base in baseline)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
@pytest.mark.parametrize("name", READABLE)
def test_outputs_add_no_validator_error_and_dcmtk_reads_them(name: str, tmp_path: Path) -> None:
    source = shared_file(name)
    derived = medeq.enhance(medeq.read(source), mask="auto" if "RG" in name else None)
    [out] = medeq.write(derived, tmp_path / "out.dcm")
    # The baseline is the source as it is and, where DCMTK can, the source re-encoded
    # unchanged in explicit VR little endian (dciodvfy cannot read deflated files).
    baseline = _error_lines(source)
    plain = tmp_path / "plain.dcm"
    if shutil.which("dcmconv"):
        subprocess.run(
            ["dcmconv", "+te", str(source), str(plain)], capture_output=True, check=False
        )
        if plain.exists():
            baseline |= _error_lines(plain)
    new = {line for line in _error_lines(out) - baseline if not _inherited(line, baseline)}
    assert not new, f"{name}: the output adds validator errors:\n" + "\n".join(sorted(new))
    if shutil.which("dcmdump"):
        dump = subprocess.run(["dcmdump", str(out)], capture_output=True, text=True, check=False)
        assert dump.returncode == 0, dump.stderr
        assert "DERIVED" in dump.stdout
    if shutil.which("dcmj2pnm"):
        png = tmp_path / "out.png"
        # Enhanced objects keep their window in the functional groups, which dcmj2pnm
        # does not look into; the others are rendered through the written window.
        window = ["--use-window", "1"] if "WindowCenter" in pydicom.dcmread(out) else []
        render = subprocess.run(
            ["dcmj2pnm", "--write-png", *window, str(out), str(png)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert render.returncode == 0, render.stderr
        assert png.stat().st_size > 0


@pytest.mark.parametrize(
    "name", ["fodicom__CR-MONO1-10-chest.dcm", "wg04__CT1_JLSL.dcm", "pylibjpeg__966_fixed.dcm"]
)
def test_clahe_method_on_real_files(name: str, tmp_path: Path) -> None:
    image = medeq.read(shared_file(name))
    glob = medeq.enhance(image)
    local = medeq.enhance(image, method="clahe", clip_limit=0.02)
    assert local.parameters["method"] == "clahe"
    assert "clip limit 0.02" in local.description
    assert local.dataset.SOPInstanceUID != glob.dataset.SOPInstanceUID
    assert local.pixels.shape == glob.pixels.shape
    assert local.pixels.min() >= 0 and local.pixels.max() <= local.levels - 1
    # Adaptive equalization differs from global, and still spreads the values.
    assert not np.array_equal(local.pixels, glob.pixels)
    assert local.after.rms_contrast > 0.5 * local.before.rms_contrast
    [path] = medeq.write(local, tmp_path / "c.dcm")
    np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array, local.pixels[0])


#: For each compressed transfer syntax: the DCMTK or GDCM tool that decompresses it to
#: explicit VR little endian (DCMTK has no JPEG 2000 decoder), and DCMTK's renderer.
_DECOMPRESS = {
    "rle": (["dcmdrle"], "dcmj2pnm"),
    "jpeg-ls": (["dcmdjpls"], "dcml2pnm"),
    "jpeg2000": (["gdcmconv", "--raw"], "dcmj2pnm"),
}


@pytest.mark.parametrize("ts", sorted(_DECOMPRESS))
@pytest.mark.parametrize(
    "name",
    ["wg04__CT1_UNC.dcm", "fodicom__CR-MONO1-10-chest.dcm", "pydicom__MR_small_bigendian.dcm"],
)
def test_compressed_outputs_decode_in_other_toolkits(ts: str, name: str, tmp_path: Path) -> None:
    """DCMTK (and GDCM for JPEG 2000) decode what medeq encoded to the very same pixels."""
    decompress, renderer = _DECOMPRESS[ts]
    missing = [tool for tool in ("dcmdump", decompress[0], renderer) if not shutil.which(tool)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (dcmtk, libgdcm-tools)")
    derived = medeq.enhance(medeq.read(shared_file(name)))
    [out] = medeq.write(derived, tmp_path / "out.dcm", transfer_syntax=ts)
    dump = subprocess.run(["dcmdump", str(out)], capture_output=True, text=True, check=False)
    assert dump.returncode == 0, dump.stderr
    raw = tmp_path / "raw.dcm"
    run = subprocess.run(
        [*decompress, str(out), str(raw)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
    decoded = pydicom.dcmread(raw)
    assert decoded.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    np.testing.assert_array_equal(decoded.pixel_array.reshape(derived.pixels.shape), derived.pixels)
    png = tmp_path / "out.png"
    render = subprocess.run(
        [
            renderer,
            "--write-png",
            "--use-window",
            "1",
            str(out if ts != "jpeg2000" else raw),
            str(png),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert render.returncode == 0 and png.stat().st_size > 0, render.stderr


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"mask": "auto"},
        {"variant": "seed", "bins": 256},
        {"levels": 256, "window": "lung"},
        {"per_slice": True},
        {"method": "clahe"},
    ],
)
def test_quality_figures_and_window_match_the_pixels(
    tmp_path: Path, options: dict[str, object]
) -> None:
    # enhance() derives the counts after equalization, and the written window, from the
    # histogram and its LUT: they must be what counting the output pixels gives.
    synthetic_series(tmp_path / "in")
    [series] = medeq.read_series(sorted((tmp_path / "in").glob("CT_small_*.dcm")))
    derived = medeq.enhance(series, **options)  # type: ignore[arg-type]
    norm = derived.normalized
    nbins = options.get("bins") or norm.bins
    before, _ = medeq.histogram(norm.array, nbins, value_range=norm.value_range, mask=derived.mask)
    top = derived.levels - 1
    after, _ = medeq.histogram(
        derived.pixels, derived.levels, value_range=(0, top), mask=derived.mask
    )
    assert derived.before == quality_of(before)
    assert derived.after == quality_of(after)
    lo, hi = int(derived.pixels.min()), int(derived.pixels.max())
    assert derived.header_options["value_span"] == (lo, hi)


# --------------------------------------------------------------------------- odd sources


def _explicit_with(tmp_path: Path, transform: Callable[[bytearray], None]) -> Path:
    """pydicom's CT_small (explicit VR little endian) with its bytes changed."""
    data = bytearray(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    transform(data)
    path = tmp_path / "odd.dcm"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_a_lut_descriptor_pydicom_cannot_pickle_is_copied(tmp_path: Path, implicit: bool) -> None:
    """A LUT Descriptor's values carry a local converter function: the header copy must
    not fail on it (it did, with "Can't pickle local object")."""
    ds = pydicom.dcmread(get_testdata_file("MR_small_implicit.dcm"))
    item = pydicom.Dataset()
    item.add_new(0x00283002, "US", [256, 65535, 8])
    item.ModalityLUTType = "US"
    item.add_new(0x00283006, "US", list(range(256)))
    ds.ModalityLUTSequence = [item]
    if not implicit:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(tmp_path / "lut.dcm", implicit_vr=implicit, little_endian=True)
    image = medeq.read(tmp_path / "lut.dcm")
    derived = medeq.enhance(image)
    [path] = medeq.write(derived, tmp_path / "out.dcm")
    out = pydicom.dcmread(path)
    assert "ModalityLUTSequence" not in out
    np.testing.assert_array_equal(out.pixel_array, derived.pixels[0])
    assert "ModalityLUTSequence" in image.dataset  # the source's header is left alone


def test_an_undefined_vr_on_image_type_is_left_out(tmp_path: Path) -> None:
    """(0008,0008) Image Type read with the VR 'TS' (one flipped byte): pydicom cannot
    decode it; the output gets a new Image Type, and the note says what was dropped."""

    def flip(data: bytearray) -> None:
        at = data.index(b"\x08\x00\x08\x00CS")
        data[at + 4 : at + 6] = b"TS"

    source = _explicit_with(tmp_path, flip)
    with collecting() as notes:
        [path] = medeq.write(medeq.enhance(medeq.read(source)), tmp_path / "out.dcm")
    out = pydicom.dcmread(path)
    assert list(out.ImageType) == ["DERIVED", "SECONDARY"]
    assert out["ImageType"].VR == "CS"
    [message] = [n for n in notes if "(0008,0008) Image Type" in n]
    assert str(source) in message and "'TS'" in message and "left out" in message


@pytest.mark.parametrize(
    ("tag", "vr", "value", "named"),
    [
        (b"\x10\x00\x10\x00", b"QN", None, "(0010,0010) Patient's Name"),  # undefined VR
        (b"\x18\x00\x10\x13", b"US", b"\x01\x00\x02", "(0018,1310) Acquisition Matrix"),
        (b"\x08\x00\x08\x00", b"US", None, "(0008,0008) Image Type"),  # medeq reads it
        (b"\x08\x00\x3e\x10", b"FD", b"AXIAL", "(0008,103E) Series Description"),
    ],
)
def test_elements_that_cannot_be_written_are_left_out(
    tmp_path: Path, tag: bytes, vr: bytes, value: bytes | None, named: str
) -> None:
    def change(data: bytearray) -> None:
        at = data.find(tag)
        if at < 0:  # add the element before (0020,000D) Study Instance UID
            at = data.index(b"\x20\x00\x0d\x00UI")
            assert value is not None
            data[at:at] = tag + vr + struct.pack("<H", len(value)) + value
            return
        data[at + 4 : at + 6] = vr
        if value is not None:
            old = struct.unpack("<H", data[at + 6 : at + 8])[0]
            data[at + 6 : at + 8 + old] = struct.pack("<H", len(value)) + value

    source = _explicit_with(tmp_path, change)
    with collecting() as notes:
        [path] = medeq.write(medeq.enhance(medeq.read(source)), tmp_path / "out.dcm")
    out = pydicom.dcmread(path)
    number = int(named[1:5], 16) << 16 | int(named[6:10], 16)
    if number in (0x00080008, 0x0008103E):  # written anew, under their own VR
        assert pydicom.datadict.dictionary_VR(number) == out[number].VR
    else:
        assert number not in out
    assert any(named in n and "left out" in n for n in notes), notes
    np.testing.assert_array_equal(out.pixel_array, medeq.enhance(medeq.read(source)).pixels[0])


def test_a_nested_number_of_the_wrong_length_is_left_out(tmp_path: Path) -> None:
    """A UL of 2 bytes inside a sequence item (pydicom: BytesLengthException)."""

    def insert(data: bytearray) -> None:
        body = struct.pack("<HH2sH", 0x0008, 0x1150, b"UI", 6) + b"1.2.3\0"
        body += struct.pack("<HH2sH", 0x0008, 0x1160, b"IS", 2) + b"1 "
        body += struct.pack("<HH2sH", 0x0018, 0x9219, b"UL", 2) + b"\x01\x00"
        item = struct.pack("<HHL", 0xFFFE, 0xE000, len(body)) + body
        sequence = struct.pack("<HH2sxxL", 0x0008, 0x1140, b"SQ", len(item)) + item
        at = data.index(b"\x10\x00\x10\x00PN")
        data[at:at] = sequence

    source = _explicit_with(tmp_path, insert)
    with collecting() as notes:
        [path] = medeq.write(medeq.enhance(medeq.read(source)), tmp_path / "out.dcm")
    [item] = pydicom.dcmread(path).ReferencedImageSequence
    assert item.ReferencedSOPClassUID == "1.2.3"
    assert 0x00189219 not in item
    assert any("(0008,1140) Referenced Image Sequence > (0018,9219)" in n for n in notes), notes


def test_group_0002_and_0000_elements_in_the_data_set_are_left_out(tmp_path: Path) -> None:
    def insert(data: bytearray) -> None:
        at = data.index(b"\x08\x00\x05\x00CS")  # the first data set element
        data[at:at] = struct.pack("<HH2sH", 0x0000, 0x0100, b"US", 2) + b"\x01\x00"
        at = data.index(b"\x08\x00\x05\x00CS")
        data[at:at] = struct.pack("<HH2sH", 0x0002, 0x0100, b"UI", 4) + b"1.2\0"

    source = _explicit_with(tmp_path, insert)
    with collecting() as notes:
        [path] = medeq.write(medeq.enhance(medeq.read(source)), tmp_path / "out.dcm")
    assert pydicom.dcmread(path).SOPInstanceUID
    assert any("(0000,0100)" in n for n in notes) and any("(0002,0100)" in n for n in notes)


def _fuzzed(data: bytes, positions: Iterable[int], masks: Iterable[int]) -> Iterator[bytes]:
    for position in positions:
        for mask in masks:
            changed = bytearray(data)
            changed[position] ^= mask
            yield bytes(changed)


@pytest.mark.parametrize(
    ("name", "stride", "masks"),
    [("CT_small.dcm", 29, (0x01, 0x20)), ("MR_small_implicit.dcm", 3, (0x20,))],
)
def test_a_flipped_header_byte_never_stops_the_output(
    name: str, stride: int, masks: tuple[int, ...]
) -> None:
    """Every header that reads and equalizes gives an output, one byte flipped at a time
    (VRs, lengths, tags, values): what cannot be written is left out. Only the source's
    own fault (no SOP Class UID) refuses it, with a DicomError; never a pydicom
    exception, and never an OutputError for an element that could have been dropped."""
    from medeq.writer import encode_image

    data = Path(get_testdata_file(name)).read_bytes()
    end = data.index(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data
    outcomes = {"written": 0, "refused": 0}
    for changed in _fuzzed(data, range(132, end, stride), masks):
        try:
            with warnings.catch_warnings():  # the reader's own warnings on odd values
                warnings.simplefilter("ignore")
                derived = medeq.enhance(medeq.read(io.BytesIO(changed)))
        except Exception:  # the reader's and the core's business, not the writer's
            continue
        try:
            header = derived.dataset
            encode_image(header, derived.pixels[:1], Path("unused.dcm"))
        except medeq.DicomError as exc:
            assert "(0008,0016) SOP Class UID" in str(exc)
            outcomes["refused"] += 1
            continue
        outcomes["written"] += 1
    assert outcomes["written"] > 30, outcomes


def test_curve_data_and_nested_lut_data_of_an_implicit_rt_image(tmp_path: Path) -> None:
    """Ambiguous VRs pydicom's writer cannot resolve ("Cannot write ambiguous VR"), at
    the top level and in sequence items, are written as implicit VR reads them: OW."""
    ds = pydicom.dcmread(get_testdata_file("MR_small_implicit.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.1"
    ds.Modality = "RTIMAGE"
    ds.add_new(0x50003000, "OW", b"\x01\x02" * 8)  # Curve Data (retired)
    ds.add_new(0x60003000, "OW", b"\x03\x04" * 8)  # Overlay Data
    for element, vr, value in (
        (0x0010, "US", 8),  # Overlay Rows
        (0x0011, "US", 8),  # Overlay Columns
        (0x0040, "CS", "G"),  # Overlay Type
        (0x0050, "SS", [1, 1]),  # Overlay Origin
        (0x0100, "US", 1),  # Overlay Bits Allocated
        (0x0102, "US", 0),  # Overlay Bit Position
    ):
        ds.add_new(0x60000000 | element, vr, value)
    lut = pydicom.Dataset()
    lut.add_new(0x00283006, "OW", b"\x00\x01" * 4)  # LUT Data without its descriptor
    ds.PresentationLUTSequence = [lut]
    reference = pydicom.Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = "1.2.3", "1.2.3.4"
    reference.add_new(0x50023000, "OW", b"\x05\x06" * 4)
    ds.ReferencedImageSequence = [reference]
    ds.save_as(tmp_path / "rt.dcm", implicit_vr=True, little_endian=True)
    assert pydicom.dcmread(tmp_path / "rt.dcm")[0x50003000].VR == "OB or OW"
    with collecting() as notes:
        [path] = medeq.write(medeq.enhance(medeq.read(tmp_path / "rt.dcm")), tmp_path / "o.dcm")
    out = pydicom.dcmread(path)
    assert out.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert (out[0x50003000].VR, out[0x50003000].value) == ("OW", b"\x01\x02" * 8)
    assert (out[0x60003000].VR, out[0x60003000].value) == ("OW", b"\x03\x04" * 8)
    assert out.PresentationLUTSequence[0][0x00283006].VR == "OW"
    assert out.ReferencedImageSequence[0][0x50023000].VR == "OW"
    assert any("(5000,3000) Curve Data has the ambiguous VR 'OB or OW'" in n for n in notes)
    if shutil.which("dciodvfy"):
        baseline = _error_lines(tmp_path / "rt.dcm")
        new = {line for line in _error_lines(path) - baseline if not _inherited(line, baseline)}
        assert not new, "\n".join(sorted(new))


# --------------------------------------------------------------------------- names


def _in_memory(sop_instance_uid: str) -> medeq.DicomImage:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    with warnings.catch_warnings():  # pydicom warns as an invalid UID is set
        warnings.simplefilter("ignore")
        ds.SOPInstanceUID = sop_instance_uid
        data = io.BytesIO()
        ds.save_as(data)
    image = medeq.read(io.BytesIO(data.getvalue()))
    assert image.info.path is None
    return image


@pytest.mark.parametrize(
    "uid",
    ["../../x", "/etc/passwd", "..", ".", "", "9" * 300, "a\0b/../c", ".hidden", "x\\..\\y"],
    ids=["parent", "absolute", "dotdot", "dot", "empty", "long", "nul", "hidden", "backslash"],
)
def test_no_dicom_value_steers_an_output_path(tmp_path: Path, uid: str) -> None:
    target = tmp_path / "a" / "b" / "out"
    target.mkdir(parents=True)
    [path] = medeq.write(medeq.enhance(_in_memory(uid)), target)
    assert path.parent == target
    assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*\.dcm", path.name), path.name
    assert len(path.name.encode()) < 255
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [path]


def test_safe_names_stay_distinct() -> None:
    from medeq.writer import safe_name

    assert safe_name("1.2.840.10008", "x") == "1.2.840.10008"  # a valid UID is kept
    assert safe_name("..", "7") == "7" and safe_name("", "") == "image"
    long_a, long_b = safe_name("1" * 300, "x"), safe_name("1" * 299 + "2", "x")
    assert long_a != long_b and len(long_a) <= 200
    images = [_in_memory("../x"), _in_memory("/x")]  # both "_x" once made safe
    names = medeq.writer.source_names(images)
    assert len(set(names)) == 2


def test_an_output_name_near_the_length_limit_is_written(ct_path: str, tmp_path: Path) -> None:
    """The temporary file's name repeats only part of the target's (255-byte limit)."""
    target = tmp_path / ("n" * 245 + ".dcm")
    [path] = medeq.write(medeq.enhance(medeq.read(ct_path)), target)
    assert path.stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


# --------------------------------------------------------------------------- reproducible


def test_source_date_epoch_makes_outputs_byte_identical(
    ct_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    first = medeq.write(medeq.enhance(medeq.read(ct_path)), tmp_path / "a.dcm")[0].read_bytes()
    time.sleep(1.1)  # the clock moves on; the outputs must not
    second = medeq.write(medeq.enhance(medeq.read(ct_path)), tmp_path / "b.dcm")[0].read_bytes()
    assert first == second
    out = pydicom.dcmread(tmp_path / "a.dcm")
    assert (out.InstanceCreationDate, out.InstanceCreationTime) == ("19700101", "000000")
    assert out.ContributingEquipmentSequence[-1].ContributionDateTime == (
        "19700101000000.000000+0000"
    )
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    out = pydicom.dcmread(medeq.write(medeq.enhance(medeq.read(ct_path)), tmp_path / "c.dcm")[0])
    assert (out.InstanceCreationDate, out.InstanceCreationTime) == ("20231114", "221320")


@pytest.mark.parametrize("value", ["soon", "-5", "1.5", "1e9", "99999999999999999999"])
def test_a_malformed_source_date_epoch_is_refused(
    ct_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    derived = medeq.enhance(medeq.read(ct_path))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    with pytest.raises(medeq.ParameterError, match="SOURCE_DATE_EPOCH") as caught:
        medeq.write(derived, tmp_path / "out.dcm")
    assert value[:20] in str(caught.value)
    assert not (tmp_path / "out.dcm").exists()


def test_source_date_epoch_through_the_command_line(tmp_path: Path) -> None:
    synthetic_series(tmp_path / "in")
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1234567890"}
    outputs = []
    for run in ("1", "2"):
        out = tmp_path / f"out{run}"
        subprocess.run(
            [sys.executable, "-m", "medeq", "convert", str(tmp_path / "in"), "-o", str(out)],
            env=env,
            capture_output=True,
            check=True,
        )
        outputs.append({p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*.dcm"))})
    assert outputs[0] and outputs[0] == outputs[1]
    for data in outputs[0].values():
        assert pydicom.dcmread(io.BytesIO(data)).InstanceCreationDate == "20090213"


def test_an_unwritable_value_names_the_file_and_the_element(ct_path: str, tmp_path: Path) -> None:
    from medeq.writer import encode_image

    derived = medeq.enhance(medeq.read(ct_path))
    header = derived.dataset.copy()
    item = pydicom.Dataset()
    with warnings.catch_warnings():  # pydicom warns as the value is set
        warnings.simplefilter("ignore")
        item.add_new(0x00283002, "US", [1, 70000, 3])  # beyond US
    header.ReferencedImageSequence = [item]
    target = tmp_path / "x.dcm"
    with pytest.raises(OutputError) as caught:
        encode_image(header, derived.pixels, target)
    message = str(caught.value)
    assert message.startswith(f"{target}: cannot write DICOM: (0008,1140) Referenced Image")
    assert "> (0028,3002) LUT Descriptor: " in message and "Traceback" not in message


def test_an_unforeseen_failure_while_deriving_names_the_file(
    ct_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(ds: pydicom.Dataset) -> str:
        raise KeyError("something no check foresaw")

    monkeypatch.setattr(medeq.derive, "_earlier_description", broken)
    with pytest.raises(OutputError, match=r"CT_small.dcm: cannot derive the output header: "):
        _ = medeq.enhance(medeq.read(ct_path)).dataset
