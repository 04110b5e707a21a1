"""Structural checks of JPEG and JPEG-LS codestreams.

Some decoders turn a damaged JPEG codestream into an image of plausible-looking garbage
without a word. These checks catch the damage that shows in the marker structure: a marker
that may not appear inside entropy-coded data, or a stream that ends without its EOI
marker. Damage that leaves the marker structure intact cannot be seen without a checksum,
which DICOM does not carry.
"""

from __future__ import annotations

import numpy as np

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
    sos = _first_marker(data, 0xDA)
    if sos is None:
        return "the codestream has no SOS (start of scan) marker"
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


def _first_marker(data: np.ndarray, marker: int) -> int | None:
    """Offset of the first ``0xFF marker`` pair found by walking the header segments."""
    pos = 2
    while pos + 4 <= data.size:
        if data[pos] != 0xFF:
            return None
        code = int(data[pos + 1])
        if code == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if code == marker:
            return pos
        length = (int(data[pos + 2]) << 8) | int(data[pos + 3])
        pos += 2 + length
    return None
