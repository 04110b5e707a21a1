"""The fast file encoder writes exactly the bytes pydicom's writer writes."""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

import medeq
from medeq._encode import copy_elements, copy_file_meta, element_name, encode_file
from medeq.writer import TransferSyntax, with_pixels

from .conftest import shared_file
from .test_writer import READABLE


def pydicom_bytes(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def same_as_pydicom(ds: Dataset) -> None:
    # Each writer gets its own copy: both may complete the dataset (Pixel Data's length).
    # Odd source values (an invalid UID) make pydicom warn as it copies and writes them:
    # not the point here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = pickle.loads(pickle.dumps(ds)), pickle.loads(pickle.dumps(ds))
        try:
            expected = pydicom_bytes(a)
        except Exception as exc:  # pydicom refuses it: so must the encoder, the same way
            with pytest.raises(type(exc)):
                encode_file(b)
            return
        assert encode_file(b) == expected


# The files pydicom installs (get_testdata_files would also try to download others).
PYDICOM_FILES = sorted(
    (p.name, str(p)) for p in (Path(pydicom.data.__file__).parent / "test_files").glob("*.dcm")
)


@pytest.mark.parametrize("name, path", PYDICOM_FILES, ids=[n for n, _ in PYDICOM_FILES])
def test_files_as_read(name: str, path: str) -> None:
    # Every encoding pydicom ships a test file for: implicit VR, big endian, deflated,
    # encapsulated, odd character sets, undefined-length sequences, private elements.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True)
    except Exception:
        pytest.skip(f"pydicom cannot read {name}")
    same_as_pydicom(ds)


@pytest.mark.parametrize("name", READABLE)
def test_derived_objects_of_real_files(name: str) -> None:
    derived = medeq.enhance(medeq.read(shared_file(name)))
    for n, header in enumerate(derived.headers):
        same_as_pydicom(
            with_pixels(header, derived.image_pixels(n), TransferSyntax.EXPLICIT_LITTLE)
        )


@pytest.mark.parametrize("ts", ["explicit-little", "rle", "jpeg-ls", "jpeg2000"])
@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm"]
)
def test_derived_objects_in_every_written_syntax(name: str, ts: str) -> None:
    derived = medeq.enhance(medeq.read(get_testdata_file(name)))
    syntax = TransferSyntax.parse(ts)
    for n, header in enumerate(derived.headers):
        same_as_pydicom(with_pixels(header, derived.image_pixels(n), syntax))


def test_edited_values_nested_items_and_a_new_character_set() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName = "Müller^Jörg"
    ds.SpecificCharacterSet = "ISO_IR 100"  # every element is then re-encoded
    same_as_pydicom(ds)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "113072", "DCM", "x"
    ds.DerivationCodeSequence = [item]
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.WindowCenter, ds.WindowWidth = "2048", "4096"
    ds.PixelData = np.arange(128 * 128, dtype="<u2").tobytes()
    same_as_pydicom(ds)
    del ds.file_meta
    same_as_pydicom(ds)  # no file meta: pydicom's own writer decides (and refuses)


def test_a_derived_header_is_encoded_without_pydicom_writer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The point of the encoder: a derived object of an explicit VR little endian source
    # (every element copied, edited or added by medeq) needs no element-by-element call
    # into pydicom's writer, yet makes the same bytes.
    import medeq._encode as encode

    calls: list[str] = []

    def counted(name: str, real: object) -> object:
        def call(*args: object) -> object:
            calls.append(name)
            return real(*args)  # type: ignore[operator]

        return call

    monkeypatch.setattr(encode, "_pydicom_element", counted("element", encode._pydicom_element))
    monkeypatch.setattr(encode, "_pydicom_dataset", counted("dataset", encode._pydicom_dataset))
    derived = medeq.enhance(medeq.read(get_testdata_file("CT_small.dcm")))
    ds = with_pixels(derived.dataset, derived.image_pixels(0), TransferSyntax.EXPLICIT_LITTLE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = pydicom_bytes(pickle.loads(pickle.dumps(ds)))
    assert encode_file(ds) == expected
    assert calls == []


def test_file_meta_copies_are_independent() -> None:
    """with_pixels and encode_file change their copy of the file meta, never the header's."""
    header = medeq.enhance(medeq.read(get_testdata_file("CT_small.dcm"))).dataset
    before = {tag: (e.VR, e.value) for tag, e in header.file_meta.items()}
    copy = copy_file_meta(header.file_meta)
    copy.TransferSyntaxUID = pydicom.uid.RLELossless
    copy.MediaStorageSOPInstanceUID = "1.2.3"
    copy.ImplementationVersionName = "OTHER"
    pixels = np.zeros((1, int(header.Rows), int(header.Columns)), np.uint16)
    written = with_pixels(header, pixels, TransferSyntax.RLE)
    assert written.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    encode_file(written)
    assert {tag: (e.VR, e.value) for tag, e in header.file_meta.items()} == before
    assert header.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


@pytest.mark.parametrize(
    ("keyword", "raw"),
    [
        ("ImplementationVersionName", b"ABC\0"),
        ("ImplementationVersionName", b"AB    "),
        ("SourceApplicationEntityTitle", b" AE1  "),
        ("SendingApplicationEntityTitle", b"SEND  "),
    ],
)
def test_file_meta_read_from_a_file_is_written_as_read(
    tmp_path: Path, keyword: str, raw: bytes
) -> None:
    """Odd padding in a file's meta (a NUL, extra spaces) is kept, as pydicom keeps it."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta.add_new(keyword, pydicom.datadict.dictionary_VR(keyword), raw.decode())
    path = tmp_path / "meta.dcm"
    ds.save_as(path)
    data = path.read_bytes()
    assert raw in data  # pydicom wrote the value as given
    same_as_pydicom(pydicom.dcmread(path))


# --------------------------------------------------------------------------- copies


def test_values_pydicom_cannot_pickle_are_copied_one_by_one(tmp_path: Path) -> None:
    """A LUT Descriptor's values hold a local function (pydicom's converter): the whole
    dict no longer pickles, and each element is copied by itself instead."""
    ds = pydicom.dcmread(get_testdata_file("MR_small_implicit.dcm"))
    item = Dataset()
    item.add_new(0x00283002, "US", [256, 0, 8])
    ds.ModalityLUTSequence = [item]
    ds.save_as(tmp_path / "lut.dcm", implicit_vr=True, little_endian=True)
    read = pydicom.dcmread(tmp_path / "lut.dcm")
    _ = read.ModalityLUTSequence[0].LUTDescriptor  # decoded: its values now hold the function
    _ = read.ImageType  # decoded: multiple values, deep-copied
    with pytest.raises(Exception, match="pickle"):
        pickle.dumps(read["ModalityLUTSequence"])
    copied = copy_elements(read._dict, name="lut.dcm")
    assert list(copied[0x00283000].value[0].LUTDescriptor) == [256, 0, 8]
    copied[0x00283000].value[0].LUTDescriptor = [1, 0, 8]
    copied[0x00080008].value[0] = "CHANGED"
    assert list(read.ModalityLUTSequence[0].LUTDescriptor) == [256, 0, 8]
    assert read.ImageType[0] != "CHANGED"


def test_a_value_no_copy_can_take_is_left_out_with_a_note(tmp_path: Path) -> None:
    import threading

    from medeq._notes import collecting

    lock = DataElement(0x00104000, "LT", threading.Lock(), already_converted=True)
    comments = DataElement(0x00204000, "LT", ["kept"], already_converted=True)
    with collecting() as notes:
        copied = copy_elements({lock.tag: lock, comments.tag: comments}, name="odd.dcm")
    assert list(copied) == [comments.tag]
    [message] = notes
    assert message.startswith("odd.dcm: (0010,4000) Patient Comments cannot be copied")
    assert message.endswith("left out")


def test_a_buffered_value_is_copied_as_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "value.bin"
    path.write_bytes(b"\x01\x02\x03\x04")
    with path.open("rb") as f:
        element = DataElement(0x00091010, "OB", f)
        assert element.is_buffered
        other = DataElement(0x00204000, "LT", ["x"], already_converted=True)
        copied = copy_elements({element.tag: element, other.tag: other})
        assert copied[element.tag].value == b"\x01\x02\x03\x04"
        assert f.tell() == 0  # the source's buffer is where it was


def test_element_names_for_messages() -> None:
    assert element_name(0x00283002) == "(0028,3002) LUT Descriptor"
    assert element_name(0x00291010) == "(0029,1010) private"
