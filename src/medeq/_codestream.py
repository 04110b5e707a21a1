"""What an encoded frame says about itself, read before any decoder sees it.

Decoders trust the codestream and the DICOM header they are given. When the two disagree
(a header that says 46341 rows over a codestream of 512) some of them abort the process
(GDCM throws a C++ exception through C, CharLS asserts) or panic (pylibjpeg-rle), so the
reader compares them first: :func:`frame_header` reads the frame header of a JPEG
(T.81 SOFn), JPEG-LS (T.87 SOF55) or JPEG 2000 / HTJ2K (T.800 SIZ, in a bare codestream or
a JP2 file) frame, :func:`rle_segments` the 64-byte header of an RLE frame (PS3.5 G.3).

Some decoders also turn a damaged JPEG codestream into plausible-looking garbage without a
word. :func:`codestream_problem` catches the damage that shows in the marker structure: a
marker that may not appear inside entropy-coded data, or a stream that ends without its
EOI marker. Damage that leaves the marker structure intact cannot be seen without a
checksum, which DICOM does not carry.

Every function here takes any bytes: it returns its result, or a sentence saying what is
wrong (a ``str``), and raises nothing.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

__all__ = [
    "J2K",
    "JPEG_FAMILY",
    "JPEG_LS",
    "RLE",
    "RLE_MOST_BYTES_PER_BYTE",
    "FrameHeader",
    "codestream_problem",
    "frame_header",
    "rle_segments",
]

# Markers that may follow a scan's entropy-coded data (ITU T.81 Table B.1):
# DHT, DAC, DQT, DNL, DRI, SOS, EOI, COM, APPn, and RSTn inside the scan.
_JPEG_AFTER_SCAN = frozenset(
    [0xC4, 0xCC, 0xDB, 0xDC, 0xDD, 0xDA, 0xD9, 0xFE, *range(0xE0, 0xF0), *range(0xD0, 0xD8)]
)
# JPEG-LS (ITU T.87) adds LSE (0xF8) and drops DHT/DAC.
_JPEGLS_AFTER_SCAN = frozenset(
    [0xDB, 0xDC, 0xDD, 0xDA, 0xD9, 0xFE, 0xF8, *range(0xE0, 0xF0), *range(0xD0, 0xD8)]
)

JPEG_FAMILY = frozenset(
    [
        "1.2.840.10008.1.2.4.50",  # Baseline (Process 1)
        "1.2.840.10008.1.2.4.51",  # Extended (Process 2 & 4)
        "1.2.840.10008.1.2.4.57",  # Lossless (Process 14)
        "1.2.840.10008.1.2.4.70",  # Lossless SV1
    ]
)
JPEG_LS = frozenset(["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"])
#: JPEG 2000 (Part 1) and High-Throughput JPEG 2000 (Part 15): the same SIZ marker segment.
J2K = frozenset(
    [
        "1.2.840.10008.1.2.4.90",  # Lossless Only
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless Only
        "1.2.840.10008.1.2.4.202",  # HTJ2K with RPCL Options Lossless Only
        "1.2.840.10008.1.2.4.203",  # HTJ2K
    ]
)
RLE = "1.2.840.10008.1.2.5"

#: An RLE segment of n bytes decodes to at most 64 n bytes: its longest run, a
#: replicate run, is 2 bytes (header and value) for 128 (PS3.5 G.3.1).
RLE_MOST_BYTES_PER_BYTE = 64

# T.81 Table B.1: the start-of-frame markers (C4 DHT, C8 JPG and CC DAC are not).
_SOF = frozenset([0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF])
_SOF55, _LSE, _SOS, _EOI, _DNL = 0xF7, 0xF8, 0xDA, 0xD9, 0xDC
# Markers without a length: TEM and RST0-7 (SOI is only the first).
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


@dataclass(frozen=True)
class FrameHeader:
    """The image one encoded frame holds, as its own header says.

    ``precision`` is the bits a sample (the most over the components); ``signed`` is
    what a JPEG 2000 SIZ says of the first component, None for JPEG and JPEG-LS, which
    do not say.
    """

    rows: int
    columns: int
    components: int
    precision: int
    signed: bool | None = None


def frame_header(frame: bytes, transfer_syntax: str) -> FrameHeader | str | None:
    """The frame header of one encoded frame of ``transfer_syntax``.

    Returns
    -------
    FrameHeader, str or None
        The header; a sentence saying why there is none (no SOF or SIZ, a header cut
        short, impossible values); None for a transfer syntax without a frame header
        read here (native, RLE: see :func:`rle_segments`).
    """
    if transfer_syntax in JPEG_FAMILY:
        return _jpeg_header(frame, ls=False)
    if transfer_syntax in JPEG_LS:
        return _jpeg_header(frame, ls=True)
    if transfer_syntax in J2K:
        return _j2k_header(frame)
    return None


def _u16(data: bytes, at: int) -> int:
    return (data[at] << 8) | data[at + 1]


def _u32(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 4], "big")


def _jpeg_header(frame: bytes, *, ls: bool) -> FrameHeader | str:
    """The SOFn (T.81 B.2.2) or SOF55 (T.87 C.2.2) frame header of a JPEG or JPEG-LS frame."""
    if len(frame) < 4 or frame[0] != 0xFF or frame[1] != 0xD8:
        return "the codestream does not start with an SOI marker"
    header: FrameHeader | None = None
    sizes: tuple[int, int] | None = None  # JPEG-LS LSE id 4: rows and columns over 65535
    for code, at, length in _jpeg_segments(frame):
        if code < 0:
            return _SEGMENT_PROBLEMS[code]
        payload = frame[at + 4 : at + 2 + length]
        if code == _SOS:
            break
        if (code == _SOF55 if ls else code in _SOF) and header is None:
            if len(payload) < 6:
                return "the frame header (SOF) is cut short"
            components = payload[5]
            if components == 0 or len(payload) < 6 + 3 * components:
                return f"the frame header (SOF) lists {components} components in {length} bytes"
            rows, columns = _u16(payload, 1), _u16(payload, 3)
            header = FrameHeader(rows, columns, components, payload[0])
        elif ls and code == _LSE and len(payload) >= 2 and payload[0] == 4:
            width = payload[1]
            if 1 <= width <= 4 and len(payload) >= 2 + 2 * width:
                ends = (2, 2 + width, 2 + 2 * width)
                sizes = (
                    int.from_bytes(payload[ends[0] : ends[1]], "big"),
                    int.from_bytes(payload[ends[1] : ends[2]], "big"),
                )
    else:
        return "the codestream has no SOS (start of scan) marker"
    if header is None:
        return f"the codestream has no {'SOF55' if ls else 'SOF'} frame header before its scan"
    rows, columns = header.rows, header.columns
    if ls and sizes is not None and (rows == 0 or columns == 0):
        rows, columns = rows or sizes[0], columns or sizes[1]
    if not ls and rows == 0:
        # T.81 B.2.5: the number of lines may be given after the first scan, by DNL.
        at = frame.find(b"\xff\xdc\x00\x04")
        if 0 < at <= len(frame) - 6:
            rows = _u16(frame, at + 4)
    if rows == 0 or columns == 0 or header.precision == 0:
        return (
            f"the frame header gives {rows} rows, {columns} columns, {header.precision}-bit samples"
        )
    return FrameHeader(rows, columns, header.components, header.precision)


_SEGMENT_PROBLEMS = {
    -1: "the codestream's header segments do not start with a marker (0xFF)",
    -2: "the codestream's header is cut short inside a marker segment",
    -3: "the codestream ends (EOI) before its scan",
    -4: "a marker segment of the codestream's header has a length below 2",
}


def _jpeg_segments(frame: bytes) -> list[tuple[int, int, int]]:
    """(marker, offset of its 0xFF, segment length) of each header segment after SOI.

    Stops at the first SOS (included). A negative marker ends the list with a flaw:
    a key of ``_SEGMENT_PROBLEMS``.
    """
    out: list[tuple[int, int, int]] = []
    pos, end = 2, len(frame)
    while pos + 2 <= end:
        if frame[pos] != 0xFF:
            return [*out, (-1, pos, 0)]
        code = frame[pos + 1]
        if code == 0xFF:  # a fill byte before a marker (T.81 B.1.1.2)
            pos += 1
            continue
        if code in _STANDALONE:
            pos += 2
            continue
        if code == _EOI:
            return [*out, (-3, pos, 0)]
        if pos + 4 > end:
            break
        length = _u16(frame, pos + 2)
        if length < 2:
            return [*out, (-4, pos, 0)]
        if pos + 2 + length > end:
            break
        out.append((code, pos, length))
        if code == _SOS:
            return out
        pos += 2 + length
    return [*out, (-2, pos, 0)]


def _j2k_header(frame: bytes) -> FrameHeader | str:
    """The SIZ marker segment (T.800 A.5.1) of a J2K codestream, bare or in a JP2 file."""
    if frame.startswith(_JP2_SIGNATURE):
        return _jp2_header(frame)
    return _siz(frame, 0)


def _siz(data: bytes, at: int) -> FrameHeader | str:
    """The image of the codestream that starts at ``at``: SOC, then SIZ (T.800 A.4.1, A.5.1)."""
    if data[at : at + 4] != b"\xff\x4f\xff\x51":
        return "the codestream does not start with SOC and SIZ markers"
    if len(data) < at + 4 + 38:
        return "the codestream's SIZ marker segment is cut short"
    p = at + 4  # Lsiz
    length = _u16(data, p)
    x, y, x0, y0 = (_u32(data, p + k) for k in (4, 8, 12, 16))
    components = _u16(data, p + 36)
    if components == 0 or length != 38 + 3 * components or len(data) < p + length:
        return (
            f"the codestream's SIZ marker segment lists {components} components in {length} bytes"
        )
    ssiz, xr, yr = data[p + 38], data[p + 39], data[p + 40]
    if xr == 0 or yr == 0 or x <= x0 or y <= y0:
        return (
            f"the codestream's SIZ gives an empty image: {x} x {y} from offset {x0}, {y0} "
            f"with subsampling {xr} x {yr}"
        )
    # A component's size: the grid points of its subsampling inside the image area.
    columns, rows = -(-x // xr) - -(-x0 // xr), -(-y // yr) - -(-y0 // yr)
    precision = max((data[p + 38 + 3 * k] & 0x7F) + 1 for k in range(components))
    return FrameHeader(rows, columns, components, precision, bool(ssiz & 0x80))


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]] | str:
    """(type, payload start, payload end) of the JP2 boxes in ``data[start:end]`` (T.800 I.4)."""
    out: list[tuple[bytes, int, int]] = []
    pos = start
    # Fragments are padded to even length: a byte or so after the last box is no box.
    while pos + 8 <= end:
        size, kind, body = _u32(data, pos), data[pos + 4 : pos + 8], pos + 8
        if size == 1:  # the length follows as 8 bytes
            if pos + 16 > end:
                return "a JP2 box header is cut short"
            size, body = int.from_bytes(data[pos + 8 : pos + 16], "big"), pos + 16
        elif size == 0:  # the last box: up to the end
            size = end - pos
        if size < body - pos or pos + size > end:
            return f"the JP2 box {kind!r} has an impossible length {size}"
        out.append((kind, body, pos + size))
        pos += size
    return out


def _jp2_header(frame: bytes) -> FrameHeader | str:
    """The codestream's header of a JP2 file; its image header box (ihdr) must agree."""
    boxes = _boxes(frame, 0, len(frame))
    if isinstance(boxes, str):
        return boxes
    found = {kind: (start, end) for kind, start, end in reversed(boxes)}
    if b"jp2c" not in found:
        return "the JP2 file has no contiguous codestream box (jp2c)"
    header = _siz(frame, found[b"jp2c"][0])
    if isinstance(header, str) or b"jp2h" not in found:
        return header
    inner = _boxes(frame, *found[b"jp2h"])
    if isinstance(inner, str):
        return inner
    for kind, start, end in inner:
        if kind == b"ihdr" and end - start >= 10:
            rows, columns = _u32(frame, start), _u32(frame, start + 4)
            components = _u16(frame, start + 8)
            if (rows, columns, components) != (header.rows, header.columns, header.components):
                return (
                    f"the JP2 image header (ihdr) gives {rows} x {columns} x {components}, "
                    f"its codestream {header.rows} x {header.columns} x {header.components}"
                )
    return header


def rle_segments(frame: bytes) -> tuple[int, ...] | str:
    """The byte length of each segment of an RLE frame, from its header (PS3.5 G.5).

    The header is 16 little-endian 32-bit values: the number of segments (1 to 15)
    and their offsets, the first 64 (just past the header), each past the one before,
    all inside the frame.
    """
    if len(frame) < 64:
        return f"the RLE header is cut short: the frame holds {len(frame)} bytes, not 64"
    values = np.frombuffer(frame[:64], "<u4").tolist()
    count, offsets = values[0], values[1:]
    if not 1 <= count <= 15:
        return f"the RLE header gives {count} segments; 1 to 15 are possible"
    starts = [*offsets[:count], len(frame)]
    if starts[0] != 64:
        return f"the RLE header puts the first segment at offset {starts[0]}, not 64"
    lengths = tuple(b - a for a, b in itertools.pairwise(starts))
    if any(n <= 0 for n in lengths):
        return (
            f"the RLE header's segment offsets {offsets[:count]} do not rise inside "
            f"the frame of {len(frame)} bytes"
        )
    return lengths


def codestream_problem(frame: bytes, transfer_syntax: str) -> str | None:
    """Describe what is structurally wrong with one encoded frame, or None if nothing is."""
    if transfer_syntax in JPEG_FAMILY:
        return _scan_markers(frame, _JPEG_AFTER_SCAN, ls=False)
    if transfer_syntax in JPEG_LS:
        return _scan_markers(frame, _JPEGLS_AFTER_SCAN, ls=True)
    return None


def _scan_markers(frame: bytes, allowed: frozenset[int], *, ls: bool) -> str | None:
    data = np.frombuffer(frame, dtype=np.uint8)
    if data.size < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return "the codestream does not start with an SOI marker"
    segments = _jpeg_segments(frame)
    if not segments or segments[-1][0] != _SOS:
        return "the codestream has no SOS (start of scan) marker"
    sos = segments[-1][1]
    # Encoders pad fragments after EOI (0x00, 0xFF, even stray bytes): ignore the tail.
    # Inside entropy-coded data 0xFF 0xD9 can only be the EOI marker itself.
    end = frame.rfind(b"\xff\xd9") + 2
    if end <= sos:
        return "the codestream has no EOI marker after its scan (truncated?)"
    scan = data[sos:end]
    ff = np.flatnonzero(scan[:-1] == 0xFF)
    following = scan[ff + 1]
    # Inside entropy-coded data 0xFF is followed by a stuffed 0x00 (JPEG), by a byte
    # below 0x80 (JPEG-LS bit stuffing), by another 0xFF (fill), or by a marker.
    stuffed = following < 0x80 if ls else following == 0x00
    candidates = ff[~stuffed & (following != 0xFF)]
    skip_until = 0
    for pos in candidates.tolist():
        if pos < skip_until:
            continue  # inside a marker segment's payload, where any byte may appear
        code = int(scan[pos + 1])
        if code not in allowed:
            return f"the entropy-coded data holds an invalid marker 0xFF{code:02X}"
        if code == 0xD9 or 0xD0 <= code <= 0xD7 or pos + 4 > scan.size:
            continue
        skip_until = pos + 2 + ((int(scan[pos + 2]) << 8) | int(scan[pos + 3]))
    return None
