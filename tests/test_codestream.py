"""Frame headers read from real codestreams, and no exception on any bytes."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from medeq import _codestream
from medeq._codestream import FrameHeader, codestream_problem, frame_header, rle_segments

from .conftest import SHARED_DICOM

#: Encapsulated files of every compressed transfer syntax medeq reads: pydicom's (always
#: there) and the shared real ones (where they are).
PYDICOM_ENCAPSULATED = [
    "JPEG2000.dcm",  # J2K lossy, 16-bit signed
    "MR_small_jp2klossless.dcm",
    "GDCMJ2K_TextGBR.dcm",  # a JP2 file (boxes around the codestream), colour
    "examples_jpeg2k.dcm",
    "J2K_pixelrep_mismatch.dcm",
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS with an LSE preset segment
    "JPEGLSNearLossless_08.dcm",
    "JPEGLSNearLossless_16.dcm",
    "JPGExtended.dcm",  # SOF1, 12-bit
    "SC_rgb_jpeg_dcmtk.dcm",  # SOF0 after an APP0 segment, 3 components
    "SC_rgb_jpeg_gdcm.dcm",  # lossless SOF3
    "MR_small_RLE.dcm",
    "SC_rgb_rle_16bit.dcm",
    "rtdose_rle.dcm",  # 15 frames, 32-bit
]
SHARED_ENCAPSULATED = [
    "wg04__CT1_J2KR.dcm",
    "wg04__CT1_J2KI.dcm",
    "wg04__CT1_JLSL.dcm",
    "wg04__CT1_JLSN.dcm",
    "wg04__CT1_JPLL.dcm",
    "wg04__CT1_RLE.dcm",
    "fodicom__D_CLUNIE_CT1_RLE_FRAGS.dcm",
    "fodicom__HasFragmentSequence.dcm",
    "pylibjpeg__JPEGLossless_1s_1f_u_16_12.dcm",
    "pylibjpeg__RG2_JPLY_fixed.dcm",
    "pylibjpeg__966_fixed.dcm",
    "dcmqats__In_4.dcm",
    "dcmqats__In_5.dcm",
    "dcmqats__In_7.dcm",
    "dcmqats__In_9.dcm",
]


def _path(name: str) -> str:
    if "__" not in name:
        return str(get_testdata_file(name))
    path = SHARED_DICOM / name
    if not path.is_file():
        pytest.skip(f"shared DICOM file {path} is absent (set MEDEQ_TEST_DATA)")
    return str(path)


def _frames(name: str) -> tuple[pydicom.Dataset, list[bytes]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(_path(name))
    frames = int(ds.get("NumberOfFrames") or 1)
    return ds, list(generate_frames(ds.PixelData, number_of_frames=frames))


@pytest.mark.parametrize("name", PYDICOM_ENCAPSULATED + SHARED_ENCAPSULATED)
def test_real_frame_headers_agree_with_their_dicom_header(name: str) -> None:
    ds, frames = _frames(name)
    ts = str(ds.file_meta.TransferSyntaxUID)
    assert len(frames) == int(ds.get("NumberOfFrames") or 1)
    for frame in frames:
        if ts == _codestream.RLE:
            lengths = rle_segments(frame)
            assert isinstance(lengths, tuple), lengths
            assert len(lengths) == ds.SamplesPerPixel * ds.BitsAllocated // 8
            assert sum(lengths) + 64 == len(frame)
            continue
        header = frame_header(frame, ts)
        assert isinstance(header, FrameHeader), header
        assert (header.rows, header.columns) == (ds.Rows, ds.Columns)
        assert header.components == ds.SamplesPerPixel
        assert 2 <= header.precision <= ds.BitsAllocated
        assert codestream_problem(frame, ts) is None


def test_precision_and_sign_as_the_codestreams_give_them() -> None:
    # 12 of 16 bits stored, but the JPEG-LS codestream says 16 (dcmtk writes so): the
    # reader compares precision with Bits Allocated, not Bits Stored.
    _, (frame,) = _frames("MR_small_jpeg_ls_lossless.dcm")
    assert frame_header(frame, "1.2.840.10008.1.2.4.80") == FrameHeader(64, 64, 1, 16)
    _, (frame,) = _frames("JPGExtended.dcm")
    assert frame_header(frame, "1.2.840.10008.1.2.4.51") == FrameHeader(1024, 256, 1, 12)
    _, (frame,) = _frames("J2K_pixelrep_mismatch.dcm")
    assert frame_header(frame, "1.2.840.10008.1.2.4.90") == FrameHeader(512, 512, 1, 13, False)
    _, (frame,) = _frames("JPEG2000.dcm")
    assert frame_header(frame, "1.2.840.10008.1.2.4.91") == FrameHeader(1024, 256, 1, 16, True)


def test_transfer_syntaxes_without_a_frame_header_here() -> None:
    assert frame_header(b"\xff\xd8anything", "1.2.840.10008.1.2.1") is None
    assert frame_header(b"", _codestream.RLE) is None
    assert codestream_problem(b"", "1.2.840.10008.1.2.4.90") is None


def _replace(frame: bytes, at: int, new: bytes) -> bytes:
    return frame[:at] + new + frame[at + len(new) :]


def test_jpeg_rows_given_by_a_dnl_marker() -> None:
    # T.81 B.2.5: a frame header with 0 lines; the DNL segment after the first scan says.
    _, (frame,) = _frames("JPGExtended.dcm")
    sof = frame.index(b"\xff\xc1")
    no_lines = _replace(frame, sof + 5, b"\0\0")
    assert isinstance(frame_header(no_lines, "1.2.840.10008.1.2.4.51"), str)
    end = no_lines.rindex(b"\xff\xd9")
    with_dnl = no_lines[:end] + b"\xff\xdc\x00\x04\x04\x00" + no_lines[end:]
    header = frame_header(with_dnl, "1.2.840.10008.1.2.4.51")
    assert header == FrameHeader(1024, 256, 1, 12)


def test_jpeg_ls_sizes_given_by_an_lse_segment() -> None:
    # T.87 C.2.4.1.4: sizes over 65535 go in an LSE segment of id 4 (here 3 bytes each).
    _, (frame,) = _frames("JPEGLSNearLossless_08.dcm")
    sof = frame.index(b"\xff\xf7")
    zeroed = _replace(frame, sof + 5, b"\0\0\0\0")
    assert isinstance(frame_header(zeroed, "1.2.840.10008.1.2.4.81"), str)
    lse = b"\xff\xf8\x00\x0a\x04\x03" + (70000).to_bytes(3, "big") + (9).to_bytes(3, "big")
    sos = zeroed.index(b"\xff\xda")
    sized = zeroed[:sos] + lse + zeroed[sos:]
    assert frame_header(sized, "1.2.840.10008.1.2.4.81") == FrameHeader(70000, 9, 1, 8)


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _jp2(codestream: bytes, rows: int, columns: int, components: int = 1) -> bytes:
    ihdr = _box(b"ihdr", struct.pack(">IIHBBBB", rows, columns, components, 15, 7, 0, 0))
    return (
        _box(b"jP  ", b"\r\n\x87\n")
        + _box(b"ftyp", b"jp2 \0\0\0\0jp2 ")
        + _box(b"jp2h", ihdr)
        + _box(b"jp2c", codestream)
        + b"\0"  # the pad byte to even length a DICOM fragment may carry
    )


def test_a_jp2_file_is_read_through_its_boxes() -> None:
    ts = "1.2.840.10008.1.2.4.91"
    _, (codestream,) = _frames("JPEG2000.dcm")
    bare = frame_header(codestream, ts)
    assert frame_header(_jp2(codestream, 1024, 256), ts) == bare
    problem = frame_header(_jp2(codestream, 46341, 256), ts)
    assert problem == (
        "the JP2 image header (ihdr) gives 46341 x 256 x 1, its codestream 1024 x 256 x 1"
    )
    # A box longer than the file, and a file without its codestream box.
    broken = _jp2(codestream, 1024, 256)
    assert "impossible length" in str(frame_header(broken[:-40], ts))
    no_jp2c = broken[: broken.index(b"jp2c") - 4]
    assert frame_header(no_jp2c, ts) == "the JP2 file has no contiguous codestream box (jp2c)"


def test_j2k_size_with_image_offset_and_subsampling() -> None:
    # T.800 B.2: a component covers ceil(X/XR) - ceil(X0/XR) columns.
    ts = "1.2.840.10008.1.2.4.90"
    siz = struct.pack(">HHIIIIIIIIH", 41, 0, 1000, 600, 10, 100, 1000, 600, 0, 0, 1)
    codestream = b"\xff\x4f\xff\x51" + siz + bytes([0x8B, 3, 2])
    assert frame_header(codestream, ts) == FrameHeader(250, 330, 1, 12, True)
    siz = struct.pack(">HHIIIIIIIIH", 41, 0, 10, 10, 10, 0, 10, 10, 0, 0, 1)
    empty = b"\xff\x4f\xff\x51" + siz + bytes([7, 1, 1])
    assert frame_header(empty, ts) == (
        "the codestream's SIZ gives an empty image: 10 x 10 from offset 10, 0 "
        "with subsampling 1 x 1"
    )


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (b"", "the RLE header is cut short: the frame holds 0 bytes, not 64"),
        (
            struct.pack("<16I", 0, *[0] * 15),
            "the RLE header gives 0 segments; 1 to 15 are possible",
        ),
        (
            struct.pack("<16I", 16, *[64] * 15),
            "the RLE header gives 16 segments; 1 to 15 are possible",
        ),
        (
            struct.pack("<16I", 1, 60, *[0] * 14) + bytes(10),
            "the RLE header puts the first segment at offset 60, not 64",
        ),
        (
            struct.pack("<16I", 2, 64, 200, *[0] * 13) + bytes(10),
            "the RLE header's segment offsets [64, 200] do not rise inside the frame of 74 bytes",
        ),
    ],
)
def test_rle_headers_that_cannot_be(frame: bytes, problem: str) -> None:
    assert rle_segments(frame) == problem


def test_rle_segment_lengths() -> None:
    frame = struct.pack("<16I", 2, 64, 70, *[0] * 13) + bytes(16)
    assert rle_segments(frame) == (6, 10)


@pytest.mark.parametrize(
    "name", ["JPGExtended.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPEG2000.dcm"]
)
def test_every_truncation_of_a_header_is_a_sentence(name: str) -> None:
    ds, (frame,) = _frames(name)
    ts = str(ds.file_meta.TransferSyntaxUID)
    full = frame_header(frame, ts)
    assert isinstance(full, FrameHeader)
    for end in range(min(len(frame), 400)):
        cut = frame_header(frame[:end], ts)
        # A prefix holds the whole header, or says why not: never an exception.
        assert cut == full or isinstance(cut, str), (end, cut)


ALL_SYNTAXES = sorted(
    _codestream.JPEG_FAMILY | _codestream.JPEG_LS | _codestream.J2K | {_codestream.RLE}
)
SEED_FRAMES = {
    name: _frames(name)[1][0]
    for name in (
        "JPGExtended.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "JPEG2000.dcm",
        "MR_small_RLE.dcm",
    )
}


def _assert_clean(frame: bytes) -> None:
    for ts in ALL_SYNTAXES:
        header = frame_header(frame, ts)
        assert header is None or isinstance(header, (FrameHeader, str))
        problem = codestream_problem(frame, ts)
        assert problem is None or isinstance(problem, str)
    segments = rle_segments(frame)
    assert isinstance(segments, (tuple, str))


@settings(max_examples=300, deadline=None)
@given(frame=st.binary(max_size=300))
def test_any_bytes_give_a_result_or_a_sentence(frame: bytes) -> None:
    _assert_clean(frame)
    _assert_clean(b"\xff\xd8" + frame)
    _assert_clean(b"\xff\x4f\xff\x51" + frame)
    _assert_clean(b"\0\0\0\x0cjP  \r\n\x87\n" + frame)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_damaged_real_codestreams_give_a_result_or_a_sentence(data: st.DataObject) -> None:
    frame = SEED_FRAMES[data.draw(st.sampled_from(sorted(SEED_FRAMES)), label="file")]
    head = min(len(frame), 200)  # where the headers are
    for _ in range(data.draw(st.integers(1, 4), label="changes")):
        at = data.draw(st.integers(0, head - 1), label="offset")
        patch = data.draw(st.binary(min_size=1, max_size=4), label="bytes")
        frame = frame[:at] + patch + frame[at + len(patch) :]
    cut = data.draw(st.integers(0, len(frame)), label="length")
    _assert_clean(frame[:cut])


def test_seed_files_are_where_expected() -> None:
    # The hypothesis tests start from these codestreams: they must parse cleanly.
    for name, frame in SEED_FRAMES.items():
        ts = str(
            pydicom.dcmread(
                get_testdata_file(name), stop_before_pixels=True
            ).file_meta.TransferSyntaxUID
        )
        parsed = rle_segments(frame) if ts == _codestream.RLE else frame_header(frame, ts)
        assert not isinstance(parsed, str), (name, parsed)
    assert Path(get_testdata_file("JPEG2000.dcm")).is_file()


@pytest.mark.parametrize(("dtype", "shape"), [("uint16", (37, 53)), ("uint8", (64, 9))])
def test_htj2k_codestreams_have_the_j2k_frame_header(dtype: str, shape: tuple[int, int]) -> None:
    imagecodecs = pytest.importorskip("imagecodecs")
    import numpy as np

    pixels = np.arange(shape[0] * shape[1], dtype=dtype).reshape(shape)
    codestream = bytes(imagecodecs.htj2k_encode(pixels, level=0))
    bits = 8 * np.dtype(dtype).itemsize
    for ts in ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.203"):
        assert frame_header(codestream, ts) == FrameHeader(*shape, 1, bits, False)
