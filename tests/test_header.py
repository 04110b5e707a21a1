"""The fast header reader gives what pydicom's reader gives, or leaves the file to it."""

from __future__ import annotations

import math
import struct
import tempfile
import tracemalloc
import warnings
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

import medeq
from medeq import _header
from medeq._header import header_value, read_header

from .conftest import SHARED_DICOM
from .test_encode import PYDICOM_FILES


def _state(ds: pydicom.FileDataset) -> tuple[object, ...]:
    """Everything a reader decides: elements as read, file meta, encoding, file facts."""
    return (
        type(ds),
        dict(ds._dict),
        dict(ds.file_meta._dict),
        ds.file_meta.original_encoding,
        ds.preamble,
        ds.filename,
        ds.fileobj_type,
        ds.timestamp,
        ds.buffer,
        ds.original_encoding,
        ds.original_character_set,
        ds._character_set,
        ds.is_implicit_VR,
        ds.is_little_endian,
    )


def _pydicom_header(path: str | Path, force: bool = False) -> pydicom.FileDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, stop_before_pixels=True, force=force)


def same_or_left(path: str | Path) -> bool:
    """Assert the fast read equals pydicom's when it takes the file; True if it did."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # odd values warn as pydicom decodes them
        fast = read_header(str(path))
    if fast is None:
        return False
    assert _state(fast) == _state(_pydicom_header(path))
    return True


SHARED = sorted(SHARED_DICOM.glob("*.dcm")) if SHARED_DICOM.is_dir() else []
#: Every file pydicom installs, and the shared real files where they are.
FILES = [path for _, path in PYDICOM_FILES] + [str(p) for p in SHARED]
FILE_IDS = [Path(p).name for p in FILES]


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_files_read_as_pydicom_reads_them(path: str) -> None:
    same_or_left(path)


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",  # explicit VR little endian
        "MR_small.dcm",
        "rtplan.dcm",  # implicit VR little endian
        "JPEG2000.dcm",  # encapsulated, undefined-length sequences before the pixels
        "liver_1frame.dcm",  # nested undefined-length sequences
        "SC_rgb_rle_2frame.dcm",  # multi-frame, RLE
    ],
)
def test_plain_layouts_take_the_fast_path(name: str) -> None:
    assert same_or_left(get_testdata_file(name))


@pytest.mark.parametrize(
    "name",
    [
        "no_meta.dcm",  # no preamble
        "MR_small_bigendian.dcm",
        "image_dfl.dcm",  # deflated
        "meta_missing_tsyntax.dcm",
        "UN_sequence.dcm",  # an undefined-length UN element
        "SC_rgb_jpeg.dcm",  # says explicit VR, is implicit
        "rtplan_truncated.dcm",  # ends inside an element
    ],
)
def test_other_layouts_are_left_to_pydicom(name: str) -> None:
    assert read_header(get_testdata_file(name)) is None


def _ct_bytes() -> bytes:
    return Path(get_testdata_file("CT_small.dcm")).read_bytes()


def _pixel_offset(data: bytes) -> int:
    return data.index(b"\xe0\x7f\x10\x00OW")


def test_a_file_cut_inside_an_element_is_left_to_pydicom(tmp_path: Path) -> None:
    data = _ct_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: _pixel_offset(data) // 2])
    assert read_header(str(cut)) is None


def test_a_file_that_ends_before_the_pixels_is_read_whole(tmp_path: Path) -> None:
    data = _ct_bytes()
    head = tmp_path / "head.dcm"
    head.write_bytes(data[: _pixel_offset(data)])
    assert same_or_left(head)


def _with_elements(tmp_path: Path, name: str, *elements: tuple[int, str, object]) -> Path:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for tag, vr, value in elements:
        ds.add_new(tag, vr, value)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_header_longer_than_the_first_read(tmp_path: Path) -> None:
    blob = bytes(range(256)) * (3 * _header.FIRST_READ // 256)
    path = _with_elements(
        tmp_path, "long.dcm", (0x00091010, "LO", "CREATOR"), (0x00091011, "OB", blob)
    )
    assert same_or_left(path)
    assert read_header(str(path))[0x00091011].value == blob  # type: ignore[index]


def test_an_undefined_length_sequence_beyond_the_first_read(tmp_path: Path) -> None:
    item = Dataset()
    item.CodeValue = "113076"
    item.CodingSchemeDesignator = "DCM"
    blob = b"\x01\x02" * _header.FIRST_READ
    path = _with_elements(
        tmp_path,
        "sequence.dcm",
        (0x00091010, "LO", "CREATOR"),
        (0x00091011, "OB", blob),
        (0x00089215, "SQ", Sequence([item])),  # Derivation Code Sequence
    )
    ds = pydicom.dcmread(path)
    ds[0x00089215].is_undefined_length = True
    ds.save_as(path)
    fast = read_header(str(path))
    assert fast is not None and fast[0x00089215].is_undefined_length
    assert fast.DerivationCodeSequence[0].CodeValue == "113076"
    assert fast.Rows == 128  # read on after the sequence
    assert same_or_left(path)


def test_an_implicit_vr_undefined_length_sequence(tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    item = Dataset()
    item.CodeValue = "113076"
    ds.DerivationCodeSequence = Sequence([item])
    ds[0x00089215].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    path = tmp_path / "implicit.dcm"
    ds.save_as(path, implicit_vr=True, little_endian=True)
    assert same_or_left(path)


def _meta_element(tag: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _with_meta(tmp_path: Path, name: str, source: str, *meta: bytes) -> Path:
    """``source``'s data set behind a preamble and the given file meta elements."""
    data = Path(get_testdata_file(source)).read_bytes()
    (length,) = struct.unpack_from("<L", data, 140)  # (0002,0000) Group Length
    path = tmp_path / name
    path.write_bytes(b"\0" * 128 + b"DICM" + b"".join(meta) + data[144 + length :])
    return path


def test_file_meta_out_of_order(tmp_path: Path) -> None:
    # pydicom decodes the lowest meta tag, wherever it is in the file: a broken element
    # that comes first in the file but is not the lowest is no error.
    path = _with_meta(
        tmp_path,
        "meta.dcm",
        "CT_small.dcm",
        _meta_element(0x00020013, b"US", b"\x01\x02\x03"),
        struct.pack("<HH2sxxL", 0x0002, 0x0001, b"OB", 2) + b"\x00\x01",
        _meta_element(0x00020010, b"UI", b"1.2.840.10008.1.2.1\x00"),
    )
    assert same_or_left(path)
    assert medeq.read_info(path).rows == 128


@pytest.mark.parametrize(
    "value,vr",
    [
        (b" 1.2.840.10008.1.2.2", b"UI"),  # big endian, with a leading space
        (b"1.2.840.10008.1.2.2\x00", b"SH"),  # not a UI
        (b"\t1.2.840.10008.1.2.1", b"UI"),  # explicit little endian, with a tab
    ],
)
def test_transfer_syntax_as_pydicom_reads_it(tmp_path: Path, value: bytes, vr: bytes) -> None:
    source = "MR_small_bigendian.dcm" if b"1.2.2" in value else "CT_small.dcm"
    path = _with_meta(tmp_path, "ts.dcm", source, _meta_element(0x00020010, vr, value))
    same_or_left(path)


def test_a_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        read_header(str(tmp_path / "absent.dcm"))


# --------------------------------------------------------------------------- values

KEYWORDS = [
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SamplesPerPixel",
    "NumberOfFrames",
    "InstanceNumber",
    "SeriesNumber",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "Modality",
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "PhotometricInterpretation",
    "LossyImageCompression",
    "PatientName",  # not decoded here: always pydicom's
]


def _plain(value: object) -> object:
    """pydicom's value as plain Python: numbers, lists of numbers, strings."""
    if isinstance(value, (list, pydicom.multival.MultiValue)):
        return [_plain(v) for v in value]
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else float(value)
    if isinstance(value, str):
        return str(value)
    return value


def _values_agree(path: str | Path) -> None:
    try:
        reference = _pydicom_header(path, force=True)
    except Exception:
        pytest.skip("not readable by pydicom at all")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = read_header(str(path))
        fast = _pydicom_header(path, force=True) if fast is None else fast
        for keyword in KEYWORDS:
            got, expected = header_value(fast, keyword), reference.get(keyword)
            assert _plain(got) == _plain(expected), (path, keyword)


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_values_as_pydicom_decodes_them(path: str) -> None:
    _values_agree(path)


def test_a_decoded_value_leaves_the_element_undecoded() -> None:
    ds = read_header(get_testdata_file("CT_small.dcm"))
    assert ds is not None
    assert header_value(ds, "Rows") == 128
    assert isinstance(ds._dict[0x00280010], RawDataElement)


def _raw(tag: int, vr: str | None, value: bytes) -> Dataset:
    ds = Dataset()
    ds._dict[pydicom.tag.BaseTag(tag)] = RawDataElement(
        pydicom.tag.BaseTag(tag), vr, len(value), value, 0, vr is None, True
    )
    return ds


@pytest.mark.parametrize(
    "tag,vr,value,expected",
    [
        (0x00281050, "DS", b"40\\400 ", [40.0, 400.0]),  # Window Center, two values
        (0x00281050, None, b"-1.5e2", -150.0),  # implicit VR: the dictionary's DS
        (0x00200013, "IS", b" 7 ", 7),
        (0x00200013, "IS", b"1.0 ", None),  # a decimal IS: pydicom decides
        (0x00281050, "DS", b"nan ", None),  # pydicom's rule, whatever it decides
        (0x00080060, "CS", b"CT\\MR ", None),  # several strings: pydicom's MultiValue
        (0x00280010, "US", b"\x00\x02", 512),
        (0x00280010, "US", b"\x00\x02\x00\x01", None),  # two values: pydicom's
        (0x00280010, "OB", b"\x00\x02", None),  # not the dictionary's VR: pydicom's
        (0x00080018, "UI", b"1.2.3\x00", "1.2.3"),
        (0x00080018, "UI", b" 1.2.3\x00", "1.2.3"),  # pydicom's UID strips both ends
        (0x0020000E, "UI", b"\t1.2.3.9", "1.2.3.9"),
        (0x00080060, "CS", b" CT ", " CT"),  # CS keeps leading spaces, as in pydicom
        (0x00200013, "IS", b"1234567890123 ", None),  # over 12 characters: pydicom's
        (0x00281050, "DS", b"12345678901234567 ", None),  # over 16 characters
    ],
)
def test_value_rules(tag: int, vr: str | None, value: bytes, expected: object) -> None:
    ds = _raw(tag, vr, value)
    keyword = pydicom.datadict.keyword_for_tag(tag)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = _plain(_raw(tag, vr, value).get(keyword))
        got = header_value(ds, keyword)
    assert _plain(got) == reference
    if expected is not None:
        assert got == expected
        assert isinstance(ds._dict[tag], RawDataElement)


def test_unknown_keywords_are_pydicoms() -> None:
    ds = Dataset()
    assert header_value(ds, "NotAKeyword") is None
    assert header_value(FileMetaDataset(), "TransferSyntaxUID") is None


_numbers = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: f"{f:.6g}"),
    st.from_regex(r"[ +\-0-9.eE]{1,16}", fullmatch=True),
)


@given(values=st.lists(_numbers, min_size=1, max_size=4), vr=st.sampled_from(["DS", "IS"]))
def test_numbers_decode_as_pydicom_decodes_them(values: list[str], vr: str) -> None:
    text = "\\".join(values)
    data = (text + " " * (len(text) % 2)).encode()
    tag = 0x00281050 if vr == "DS" else 0x00200013
    keyword = pydicom.datadict.keyword_for_tag(tag)
    decoded = _header._decode(vr, data)
    if decoded is None:
        return  # left to pydicom
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = _raw(tag, vr, data).get(keyword)
    assert _plain(decoded) == _plain(expected)


#: Explicit VR, implicit VR (no pixels), and undefined-length sequences before the pixels.
DAMAGED_SOURCES = ("CT_small.dcm", "rtplan.dcm", "JPEG2000.dcm")


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_damaged_headers_read_as_pydicom_reads_them(data: st.DataObject) -> None:
    # A few bytes of a real header overwritten anywhere before the pixels: the fast
    # reader gives pydicom's dataset, or leaves the file to it.
    name = data.draw(st.sampled_from(DAMAGED_SOURCES), label="file")
    original = Path(get_testdata_file(name)).read_bytes()
    pixels = original.rfind(b"\xe0\x7f\x10\x00")
    at = data.draw(st.integers(0, (len(original) if pixels < 0 else pixels) - 1), label="offset")
    patch = data.draw(st.binary(min_size=1, max_size=4), label="bytes")
    damaged = original[:at] + patch + original[at + len(patch) :]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "damaged.dcm"
        path.write_bytes(damaged)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                expected: object = _state(pydicom.dcmread(path, stop_before_pixels=True))
            except Exception as exc:
                expected = type(exc)
            # Any damage the fast reader meets leaves the file to pydicom: no exception.
            fast = read_header(str(path))
            got: object = None if fast is None else _state(fast)
            # Comparing sequences decodes their items' elements: damaged ones warn.
            assert got is None or got == expected


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_damage_gives_a_header_or_none(data: st.DataObject) -> None:
    # Cut anywhere, overwritten anywhere (the file meta, lengths, sequence delimiters),
    # or any bytes after a preamble: a dataset or None, never an exception.
    name = data.draw(st.sampled_from(DAMAGED_SOURCES), label="file")
    damaged = Path(get_testdata_file(name)).read_bytes()
    if data.draw(st.booleans(), label="random body"):
        damaged = damaged[:132] + data.draw(st.binary(max_size=400), label="body")
    for _ in range(data.draw(st.integers(0, 6), label="changes")):
        at = data.draw(st.integers(0, len(damaged)), label="offset")
        patch = data.draw(st.binary(min_size=1, max_size=6), label="bytes")
        damaged = damaged[:at] + patch + damaged[at + len(patch) :]
    damaged = damaged[: data.draw(st.integers(0, len(damaged)), label="length")]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "damaged.dcm"
        path.write_bytes(damaged)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fast = read_header(str(path))
    assert fast is None or isinstance(fast, pydicom.FileDataset)


def test_a_length_that_lies_costs_no_memory(tmp_path: Path) -> None:
    # An element before the pixels says it holds 4 GB: the reader asks the file for what
    # it has, finds it short, and leaves the file to pydicom, which reads it the same way.
    data = bytearray(_ct_bytes())
    at = data.index(b"\x10\x00\x10\x00PN")  # (0010,0010) Patient's Name
    data[at + 4 : at + 8] = b"UN\0\0"
    data[at + 8 : at + 8] = struct.pack("<I", 0xFFFFFFF0)
    path = tmp_path / "long.dcm"
    path.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        assert read_header(str(path)) is None
        with pytest.raises(medeq.DicomError):
            medeq.read(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20
