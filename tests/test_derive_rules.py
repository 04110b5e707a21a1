"""The derived object per IOD: Image Type value 2, and what a PACS needs to store it."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import UID

import medeq
from medeq._notes import collecting
from medeq.derive import IMAGE_TYPE_VALUE_2, PRESENTATION_INTENT, image_type_value_2

from .conftest import shared_file
from .test_writer import _error_lines, _inherited

STORAGE = "1.2.840.10008.5.1.4.1.1."

#: (SOP Class UID suffix, Modality, Image Type value 2 of the output), one per IOD:
#: DERIVED\SECONDARY where the IOD allows it, DERIVED\PRIMARY where it allows only
#: PRIMARY (PET, NM, the enhanced multi-frame IODs).
IODS = [
    ("2", "CT", "SECONDARY"),
    ("4", "MR", "SECONDARY"),
    ("1", "CR", "SECONDARY"),
    ("1.1", "DX", "SECONDARY"),
    ("1.1.1", "DX", "SECONDARY"),
    ("1.2", "MG", "SECONDARY"),
    ("1.3", "IO", "SECONDARY"),
    ("12.1", "XA", "SECONDARY"),
    ("12.2", "RF", "SECONDARY"),
    ("7", "OT", "SECONDARY"),
    ("7.3", "OT", "SECONDARY"),
    ("6.1", "US", "SECONDARY"),
    ("3.1", "US", "SECONDARY"),
    ("128", "PT", "PRIMARY"),
    ("20", "NM", "PRIMARY"),
    ("2.1", "CT", "PRIMARY"),
    ("2.2", "CT", "PRIMARY"),
    ("4.1", "MR", "PRIMARY"),
    ("4.4", "MR", "PRIMARY"),
    ("12.1.1", "XA", "PRIMARY"),
    ("12.2.1", "RF", "PRIMARY"),
    ("13.1.3", "MG", "PRIMARY"),
    ("128.1", "PT", "PRIMARY"),
    ("130", "PT", "PRIMARY"),
]


def _source_of_class(tmp_path: Path, sop_class: str, modality: str) -> Path:
    """pydicom's CT_small as an object of another SOP Class (ORIGINAL\\PRIMARY\\AXIAL)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.Modality = modality
    if sop_class in PRESENTATION_INTENT:  # Type 1 in the digital X-ray IODs
        ds.PresentationIntentType = PRESENTATION_INTENT[sop_class]
    path = tmp_path / "source.dcm"
    ds.save_as(path)
    return path


@pytest.mark.parametrize(("suffix", "modality", "second"), IODS, ids=[i[0] for i in IODS])
def test_image_type_value_2_follows_the_iod(
    suffix: str, modality: str, second: str, tmp_path: Path
) -> None:
    sop_class = STORAGE + suffix
    assert IMAGE_TYPE_VALUE_2[sop_class] == second, UID(sop_class).name
    source = _source_of_class(tmp_path, sop_class, modality)
    assert list(pydicom.dcmread(source).ImageType)[:2] == ["ORIGINAL", "PRIMARY"]
    [out] = medeq.write(medeq.enhance(medeq.read(source)), tmp_path / "out.dcm")
    written = pydicom.dcmread(out)
    assert written.SOPClassUID == sop_class
    assert list(written.ImageType)[:3] == ["DERIVED", second, "AXIAL"]
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) not installed: the validator check is skipped")
    baseline = _error_lines(source)
    new = {line for line in _error_lines(out) - baseline if not _inherited(line, baseline)}
    assert not new, f"{UID(sop_class).name}: the output adds validator errors:\n" + "\n".join(
        sorted(new)
    )


def test_classes_outside_the_table() -> None:
    # The enhanced pattern (functional groups) asks for PRIMARY; anything else SECONDARY.
    assert image_type_value_2("1.2.3.4") == "SECONDARY"
    assert image_type_value_2("1.2.3.4", functional_groups=True) == "PRIMARY"
    # The table decides for a class it lists, groups or not.
    assert image_type_value_2(STORAGE + "7", functional_groups=True) == "SECONDARY"


def test_a_secondary_enhanced_source_becomes_primary(tmp_path: Path) -> None:
    """The enhanced IODs enumerate PRIMARY only: a source's other value is not kept."""
    ds = pydicom.dcmread(shared_file("pydicomdata__eCT_Supplemental.dcm"))
    ds.ImageType = ["ORIGINAL", "SECONDARY", "AXIAL", "NONE"]
    out = medeq.enhance(medeq.read(ds)).dataset
    assert list(out.ImageType) == ["DERIVED", "PRIMARY", "AXIAL", "NONE"]


def test_real_nm_and_enhanced_mr_keep_primary() -> None:
    for name in ("dcm4che__NM-MONO2-16-13x-heart.dcm", "pydicomdata__emri_small.dcm"):
        header = medeq.enhance(medeq.read(shared_file(name))).dataset
        assert list(header.ImageType)[:2] == ["DERIVED", "PRIMARY"], name


# --------------------------------------------------------------------------- identity


def _without(tmp_path: Path, *keywords: str, empty: bool = False, name: str = "src.dcm") -> Path:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for keyword in keywords:
        if empty:
            setattr(ds, keyword, "")
        else:
            delattr(ds, keyword)
        if keyword == "SOPInstanceUID":
            ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"  # the file meta needs one
    path = tmp_path / name
    ds.save_as(path)
    return path


@pytest.mark.parametrize("empty", [False, True], ids=["missing", "empty"])
def test_missing_study_and_patient_are_filled_deterministically(
    tmp_path: Path, empty: bool
) -> None:
    source = _without(tmp_path, "StudyInstanceUID", "PatientID", empty=empty)
    with collecting() as notes:
        [out] = medeq.write(medeq.enhance(medeq.read(source)), tmp_path / "out.dcm")
    written = pydicom.dcmread(out)
    study, patient = written.StudyInstanceUID, written.PatientID
    assert pydicom.uid.UID(study).is_valid and len(study) <= 64
    assert patient.startswith("MEDEQ-") and len(patient) <= 64
    assert any("(0020,000D) Study Instance UID" in n and study in n for n in notes), notes
    assert any("(0010,0020) Patient ID" in n and patient in n for n in notes), notes
    # The same source again gives the same values (a re-run files into the same study).
    again = pydicom.dcmread(medeq.write(medeq.enhance(medeq.read(source)), tmp_path / "b.dcm")[0])
    assert (again.StudyInstanceUID, again.PatientID) == (study, patient)
    # Every image of one series lands in one study.
    other = _without(tmp_path, "StudyInstanceUID", "PatientID", empty=empty, name="o.dcm")
    ds = pydicom.dcmread(other)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID + ".2"
    ds.save_as(other)
    sibling = medeq.enhance(medeq.read(other)).dataset
    assert (sibling.StudyInstanceUID, sibling.PatientID) == (study, patient)


def test_a_healthy_source_keeps_its_identity_and_gets_no_note(tmp_path: Path) -> None:
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    with collecting() as notes:
        header = medeq.enhance(medeq.read(get_testdata_file("CT_small.dcm"))).dataset
    assert (header.StudyInstanceUID, header.PatientID) == (src.StudyInstanceUID, src.PatientID)
    assert notes == []


@pytest.mark.parametrize("empty", [False, True], ids=["missing", "empty"])
def test_a_source_without_instance_uid(tmp_path: Path, empty: bool) -> None:
    source = _without(tmp_path, "SOPInstanceUID", empty=empty)
    with collecting() as notes:
        derived = medeq.enhance(medeq.read(source))
        [out] = medeq.write(derived, tmp_path / "out.dcm")
    written = pydicom.dcmread(out)
    uid = written.SOPInstanceUID
    assert pydicom.uid.UID(uid).is_valid
    assert written.file_meta.MediaStorageSOPInstanceUID == uid
    # Nothing can refer to a source without a UID: no reference with an empty one.
    assert "SourceImageSequence" not in written
    assert any("(0008,0018) SOP Instance UID" in n and uid in n for n in notes), notes
    # Fixed by the file's content: the same file gives the same UID, another file another.
    assert medeq.enhance(medeq.read(source)).dataset.SOPInstanceUID == uid
    ds = pydicom.dcmread(source)
    ds.PatientName = "Other^Patient"
    ds.save_as(tmp_path / "other.dcm")
    assert medeq.enhance(medeq.read(tmp_path / "other.dcm")).dataset.SOPInstanceUID != uid
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert medeq.derive.content_digest(medeq.read(source)) == f"sha256:{digest}"


def test_an_enhanced_source_without_instance_uid(tmp_path: Path) -> None:
    ds = pydicom.dcmread(shared_file("pydicomdata__eCT_Supplemental.dcm"))
    del ds.SOPInstanceUID
    header = medeq.enhance(medeq.read(ds)).dataset
    [macro] = header.SharedFunctionalGroupsSequence[0].DerivationImageSequence
    assert len(macro.SourceImageSequence) == 0  # Type 2: present, empty
    assert "SourceImageEvidenceSequence" not in header
    assert pydicom.uid.UID(header.SOPInstanceUID).is_valid


@pytest.mark.parametrize(
    "bad_uid", ["1.2." + "9" * 80, "1.2.abc.3", "1.02.3", "../../x", "1.2.3 4"]
)
def test_invalid_source_uids_give_valid_output_uids(tmp_path: Path, bad_uid: str) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    with warnings.catch_warnings():  # pydicom warns as the bad UIDs are set
        warnings.simplefilter("ignore")
        for keyword in ("SOPInstanceUID", "SeriesInstanceUID"):
            setattr(ds, keyword, bad_uid)
        ds.file_meta.MediaStorageSOPInstanceUID = bad_uid
        ds.save_as(tmp_path / "bad.dcm")
    [out] = medeq.write(medeq.enhance(medeq.read(tmp_path / "bad.dcm")), f"{tmp_path}/out/")
    written = pydicom.dcmread(out)
    for uid in (written.SOPInstanceUID, written.SeriesInstanceUID):
        assert pydicom.uid.UID(uid).is_valid, uid
    assert out.parent == tmp_path / "out"


def test_a_source_without_sop_class_is_refused(tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.SOPClassUID
    del ds.file_meta.MediaStorageSOPClassUID
    ds.save_as(tmp_path / "noclass.dcm")
    derived = medeq.enhance(medeq.read(tmp_path / "noclass.dcm"))
    with pytest.raises(medeq.DicomError, match=r"noclass.dcm: \(0008,0016\) SOP Class UID"):
        medeq.write(derived, tmp_path / "out.dcm")
    assert not (tmp_path / "out.dcm").exists()


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_filled_outputs_add_no_validator_error(tmp_path: Path) -> None:
    source = _without(tmp_path, "StudyInstanceUID", "PatientID", "SOPInstanceUID")
    [out] = medeq.write(medeq.enhance(medeq.read(source)), tmp_path / "out.dcm")
    baseline = _error_lines(source)
    new = {line for line in _error_lines(out) - baseline if not _inherited(line, baseline)}
    assert not new, "\n".join(sorted(new))
    assert not [line for line in _error_lines(out) if "StudyInstanceUID" in line]


def test_dcmdump_reads_the_filled_identity(tmp_path: Path) -> None:
    if shutil.which("dcmdump") is None:
        pytest.skip("dcmdump (dcmtk) not installed")
    source = _without(tmp_path, "StudyInstanceUID", "PatientID")
    [out] = medeq.write(medeq.enhance(medeq.read(source)), tmp_path / "out.dcm")
    dump = subprocess.run(["dcmdump", str(out)], capture_output=True, text=True, check=True)
    assert "StudyInstanceUID" in dump.stdout and "MEDEQ-" in dump.stdout


@pytest.mark.parametrize(
    ("suffix", "intent", "window"),
    [("1.1", "FOR PRESENTATION", True), ("1.1.1", "FOR PROCESSING", False)],
)
def test_digital_x_ray_windows_follow_the_presentation_intent(
    tmp_path: Path, suffix: str, intent: str, window: bool
) -> None:
    """DX FOR PROCESSING may not carry a VOI LUT module (a window); a missing (0008,0068)
    Presentation Intent Type (Type 1) is filled in from the SOP Class, with a note."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = STORAGE + suffix
    ds.Modality = "DX"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.save_as(tmp_path / "dx.dcm")
    with collecting() as notes:
        header = medeq.enhance(medeq.read(tmp_path / "dx.dcm")).dataset
    assert header.PresentationIntentType == intent
    assert ("WindowCenter" in header) is window and ("WindowWidth" in header) is window
    assert any("(0008,0068) Presentation Intent Type" in n and intent in n for n in notes)
