"""Derived DICOM: the written object, checked attribute by attribute and by real tools."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import medeq
from medeq import OutputError

from .conftest import shared_file
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
    assert list(out.SourceImageSequence[0].ReferencedFrameNumber) == [1, 2]
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

    def half_then_crash(self: pydicom.Dataset, f: object, **kwargs: object) -> None:
        f.write(b"\0" * 1000)  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    monkeypatch.setattr(pydicom.Dataset, "save_as", half_then_crash)
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
