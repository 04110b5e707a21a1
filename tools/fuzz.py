#!/usr/bin/env python3
"""Fuzz medeq with hostile DICOM files: the library, the ``medeq convert`` command, and
(optionally) coverage-guided with atheris.

Modes
-----
library (default)
    Mutants of a corpus (the shared real files, or ``--corpus DIR``, plus pydicom's bundled
    grey-scale files) each go through ``medeq.read`` -> ``.stored`` -> ``medeq.enhance`` ->
    ``medeq.write(..., preview=True)`` in a forked child process with a time limit and an
    address-space limit. Each outcome is ok, clean (a MedeqError), crash (any other
    exception), hang, abort (killed by a signal) or oom.
``--convert``
    A folder of mutants, healthy files and a text file through the real command
    (``python -m medeq convert IN -o OUT --report R --jobs N``) with ``--jobs 1`` and
    ``--jobs 2``; the batch invariants are checked (exit code, report, outputs, no leftovers).
``--atheris``
    Coverage-guided long runs: libFuzzer's engine (through atheris) plus the structural
    mutators below, keeping inputs that reach new code in ``--grow DIR``.
``--replay SEED:INDEX`` / ``--replay-file PATH``
    One mutant (or file) in a child, with its traceback; ``--keep DIR`` saves the mutant.

Every mutant is a pure function of (seed, index) and the corpus, and is described by a short
recipe (``wg04__CT1_UNC.dcm: Rows=46341``). The parent process never runs medeq on a mutant:
it imports medeq once, warms it up on a healthy bundled file, and forks one child per mutant.
The child builds the mutant (pydicom or raw bytes), sets its limits, runs, reports through a
pipe and ``_exit()``s. Exit status: 0 when nothing crashed, hung, aborted or ran out of memory
(and, for ``--convert``, no invariant was broken); 1 otherwise; 2 for a usage error.

See docs/fuzzing.md.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import importlib
import importlib.util
import io
import json
import math
import os
import random
import re
import resource
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()
#: The shared real DICOM files (as tests/conftest.py finds them).
SHARED_DICOM = Path(
    os.environ.get("MEDEQ_TEST_DATA", REPO.parent / "shared" / "data" / "dicom")
).resolve()
#: pydicom's bundled grey-scale images: the corpus that exists wherever pydicom does.
PYDICOM_GREY = (
    "693_J2KI.dcm",
    "6154",
    "CT_small.dcm",
    "J2K_pixelrep_mismatch.dcm",
    "JPEG-lossy.dcm",
    "JPEG2000.dcm",
    "JPEGLSNearLossless_08.dcm",
    "JPEGLSNearLossless_16.dcm",
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_padded.dcm",
    "MR_truncated.dcm",
    "badVR.dcm",
    "image_dfl.dcm",
    "liver_1frame.dcm",
    "rtdose.dcm",
    "rtdose_1frame.dcm",
)
#: The healthy bundled file the parent warms medeq up on before it forks.
WARM_UP = "CT_small.dcm"
#: Files in a corpus folder that are descriptions, not inputs.
NOT_CORPUS = frozenset({".tsv", ".md", ".txt", ".json"})
#: Default cap on a corpus file's size: larger files cost a second each and add little.
MAX_SIZE = 1_500_000

BAD = ("crash", "hang", "abort", "oom")
KINDS = ("ok", "clean", *BAD, "harness")
#: Time a child may spend building its mutant before the parent calls it a harness hang.
MUTATE_SECONDS = 30.0

# --------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class SeedFile:
    """One corpus file: the name recipes use, and where it is."""

    name: str
    path: Path


def load_corpus(
    dirs: Sequence[Path] | None, *, bundled: bool = True, max_size: int = MAX_SIZE
) -> list[SeedFile]:
    """The corpus, in a fixed order (mutants are reproducible only against the same list).

    ``dirs`` None: the shared files (absent: a note, and the bundled files alone).
    """
    found: list[SeedFile] = []
    for folder in dirs if dirs is not None else [SHARED_DICOM]:
        if not folder.is_dir():
            print(f"fuzz: corpus folder {folder} is absent; skipped", file=sys.stderr)
            continue
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix.lower() not in NOT_CORPUS:
                found.append(SeedFile(str(path.relative_to(folder)), path))
    if bundled:
        from pydicom.data import get_testdata_file

        for name in PYDICOM_GREY:
            where = get_testdata_file(name, download=False)
            if isinstance(where, str):
                found.append(SeedFile(f"pydicom:{name}", Path(where)))
    if max_size > 0:
        found = [s for s in found if s.path.stat().st_size <= max_size]
    return found


def corpus_args(args: argparse.Namespace) -> list[str]:
    """The options that select the corpus, for a replay command line."""
    out = [f"--corpus={c}" for c in args.corpus or []]
    if args.no_bundled:
        out.append("--no-bundled")
    if args.max_size != MAX_SIZE:
        out.append(f"--max-size={args.max_size}")
    return out


# --------------------------------------------------------------------------- locating elements

#: Explicit VRs with a 2-byte reserved field and a 4-byte length.
LONG_VRS = ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV")
SHORT_VRS: tuple[str, ...] = ("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO")
SHORT_VRS += ("LT", "PN", "SH", "SL", "SS", "ST", "TM", "UI", "UL", "US")
TEXT_VRS = frozenset(
    ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR")
) | {"UT"}
PIXEL_DATA = 0x7FE00010
TRANSFER_SYNTAX = 0x00020010
GROUP_LENGTH = 0x00020000
UNDEFINED = 0xFFFFFFFF


@dataclass(frozen=True)
class Loc:
    """Where one top-level (or file meta) element sits in the bytes of a file."""

    tag: int
    start: int  # first byte of the tag
    value: int  # first byte of the value
    length: int  # the length field as written
    len_pos: int
    len_size: int  # 2 or 4 bytes
    vr_pos: int | None  # None in implicit VR
    vr: str
    little: bool
    end: int  # one past the value (an undefined length: where the next element starts)

    @property
    def name(self) -> str:
        return tag_name(self.tag)

    @property
    def meta(self) -> bool:
        return self.tag >> 16 == 2


def tag_name(tag: int) -> str:
    """``Rows``, or ``(0029,1010)`` for tags without a keyword."""
    from pydicom.datadict import keyword_for_tag

    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def parse(data: bytes) -> Dataset:
    """The file as pydicom reads it (forced; warnings silenced)."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data), force=True)


def locate(data: bytes) -> list[Loc]:
    """File meta elements (walked here) and the top-level elements whose place pydicom knows
    and the bytes confirm (pydicom has already converted a few, whose place it forgets)."""
    locs = _meta_locs(data)
    meta_end = locs[-1].end if locs else 0
    ds = parse(data)
    converted = []
    for tag in list(ds.keys()):
        raw: Any = ds.get_item(tag)
        if raw is not None and raw.is_raw and raw.value_tell is not None:
            loc = _loc(data, raw)
            if loc is not None and loc.start >= meta_end:
                locs.append(loc)
        else:
            converted.append(int(tag))
    locs.sort(key=lambda x: x.start)
    body_start = next((x.start for x in locs if x.start >= meta_end), len(data))
    implicit, little = ds.original_encoding
    if converted and implicit is not None and little is not None:
        locs[:0] = _search(data, converted, meta_end, body_start, implicit, little)
        locs.sort(key=lambda x: x.start)
    return _with_ends(locs, len(data))


def _search(
    data: bytes, tags: list[int], lo: int, hi: int, implicit: bool, little: bool
) -> list[Loc]:
    """Elements pydicom converted while reading (the character set, ...), found by their tag
    between the file meta and the first element whose place pydicom kept."""
    order = "<" if little else ">"
    found = []
    for tag in sorted(tags):
        pos = data.find(struct.pack(f"{order}HH", tag >> 16, tag & 0xFFFF), lo, hi)
        if pos < 0:
            continue
        vr = "" if implicit else data[pos + 4 : pos + 6].decode("latin-1")
        if implicit or vr in LONG_VRS:
            len_pos, size, value, vr_pos = (
                pos + (4 if implicit else 8),
                4,
                pos + (8 if implicit else 12),
                None if implicit else pos + 4,
            )
        else:
            len_pos, size, value, vr_pos = pos + 6, 2, pos + 8, pos + 4
        if value > hi:
            continue
        (length,) = struct.unpack_from(order + ("I" if size == 4 else "H"), data, len_pos)
        if length == UNDEFINED or value + length > hi:
            continue
        found.append(
            Loc(tag, pos, value, length, len_pos, size, vr_pos, vr, little, value + length)
        )
        lo = value + length
    return found


def _meta_locs(data: bytes) -> list[Loc]:
    """The (0002,eeee) group: explicit VR little endian after the preamble, if any."""
    pos = 132 if data[128:132] == b"DICM" else 0
    locs: list[Loc] = []
    while pos + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, pos)
        if group != 2:
            break
        vr = data[pos + 4 : pos + 6].decode("latin-1")
        if vr in LONG_VRS:
            (length,) = struct.unpack_from("<I", data, pos + 8)
            value, len_pos, size = pos + 12, pos + 8, 4
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            value, len_pos, size = pos + 8, pos + 6, 2
        if length == UNDEFINED or value > len(data):
            break
        end = min(value + length, len(data))
        tag = (group << 16) | element
        locs.append(Loc(tag, pos, value, length, len_pos, size, pos + 4, vr, True, end))
        pos = end
    return locs


def _loc(data: bytes, raw: Any) -> Loc | None:
    tag, vr, vt = int(raw.tag), str(raw.VR or ""), int(raw.value_tell)
    little = bool(raw.is_little_endian)
    if raw.is_implicit_VR:
        start, len_pos, size, vr_pos = vt - 8, vt - 4, 4, None
    elif vr in LONG_VRS:
        start, len_pos, size, vr_pos = vt - 12, vt - 4, 4, vt - 8
    else:
        start, len_pos, size, vr_pos = vt - 8, vt - 2, 2, vt - 4
    order = "<" if little else ">"
    # Deflated data sets, and anything pydicom re-read, have positions in another stream.
    if start < 0 or data[start : start + 4] != struct.pack(f"{order}HH", tag >> 16, tag & 0xFFFF):
        return None
    if vr_pos is not None and data[vr_pos : vr_pos + 2] != vr.encode("ascii", "replace"):
        return None
    (length,) = struct.unpack(order + ("H" if size == 2 else "I"), data[len_pos : len_pos + size])
    end = min(vt + length, len(data)) if length != UNDEFINED else -1
    return Loc(tag, start, vt, length, len_pos, size, vr_pos, vr, little, end)


def _with_ends(locs: list[Loc], size: int) -> list[Loc]:
    out = []
    for i, loc in enumerate(locs):
        if loc.end < 0:
            nxt = locs[i + 1].start if i + 1 < len(locs) else size
            loc = Loc(**{**loc.__dict__, "end": nxt})
        out.append(loc)
    return out


class Subject:
    """The bytes being mutated, with their element places worked out on first use."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._locs: list[Loc] | None = None

    @property
    def locs(self) -> list[Loc]:
        if self._locs is None:
            try:
                self._locs = locate(self.data)
            except Exception:  # a seed pydicom cannot walk: the raw mutators pass
                self._locs = []
        return self._locs

    def find(self, tag: int) -> Loc | None:
        return next((loc for loc in self.locs if loc.tag == tag), None)

    def body(self) -> list[Loc]:
        """The data set's elements (not the file meta)."""
        return [loc for loc in self.locs if not loc.meta]

    def pixel_start(self) -> int:
        """Where the pixel data's value starts (a guess: half way, when unknown)."""
        loc = self.find(PIXEL_DATA)
        return loc.value if loc is not None else len(self.data) // 2


def splice(subject: Subject, start: int, end: int, new: bytes) -> bytes:
    """``data[start:end]`` replaced by ``new``; inside the file meta, its group length
    follows (so the change is the one the recipe names, not a length lie too)."""
    data = subject.data
    out = data[:start] + new + data[end:]
    group = subject.find(GROUP_LENGTH)
    meta_end = max((loc.end for loc in subject.locs if loc.meta), default=-1)
    if group is not None and group.length == 4 and start < meta_end and start >= group.end:
        (old,) = struct.unpack("<I", data[group.value : group.value + 4])
        fixed = struct.pack("<I", max(0, old + len(new) - (end - start)) & UNDEFINED)
        out = out[: group.value] + fixed + out[group.value + 4 :]
    return out


def header(loc_like: Loc, tag: int, vr: str, length: int) -> bytes:
    """An element header in the encoding of ``loc_like``."""
    order = "<" if loc_like.little else ">"
    head = struct.pack(f"{order}HH", tag >> 16, tag & 0xFFFF)
    if loc_like.vr_pos is None:
        return head + struct.pack(f"{order}I", length)
    if vr in LONG_VRS:
        return head + vr.encode() + b"\0\0" + struct.pack(f"{order}I", length)
    return head + vr.encode() + struct.pack(f"{order}H", length)


# --------------------------------------------------------------------------- hostile values

LONG_TEXT = ("9" * 65, "A" * 1025, "1\\" * 5000, "x" * 65534)
#: The issue's list, in every tag it names.
HOSTILE: tuple[object, ...] = (
    1e308,
    -1e308,
    math.inf,
    -math.inf,
    math.nan,
    1e-320,
    0,
    -1,
    65535,
    46341,
    2**31,
    2**32,
    "",
    "abc",
    "../../x",
    "1\\nan",
    "\xe9\x00\xff",
    *LONG_TEXT,
)
BITS = (0, 1, 7, 8, 12, 15, 16, 17, 24, 31, 32, 33, 64)
#: Plausible values that are wrong for the file at hand, per keyword.
PLAUSIBLE: dict[str, tuple[object, ...]] = {
    "Rows": (1, 2, 3, 4096),
    "Columns": (1, 2, 3, 4096),
    "NumberOfFrames": ("0", "2", "1000000", "-3"),
    "BitsAllocated": BITS,
    "BitsStored": BITS,
    "HighBit": BITS,
    "PixelRepresentation": (0, 1, 2),
    "SamplesPerPixel": (0, 2, 3, 4),
    "PlanarConfiguration": (0, 1, 2),
    "PhotometricInterpretation": ("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR"),
    "RescaleSlope": ("0", "-1", "1e-300", "3.4e38"),
    "RescaleIntercept": ("-1e300", "32768", "-32769"),
    "WindowCenter": ("0", "-1e300", "40\\nan", "1\\2\\3"),
    "WindowWidth": ("0", "-1", "0.5", "1e-300", "400\\0"),
    "VOILUTFunction": ("SIGMOID", "LINEAR_EXACT", "FOO"),
    "SmallestImagePixelValue": (0, 65535, -32768),
    "LargestImagePixelValue": (0, 65535, -32768),
    "PixelPaddingValue": (0, 65535, -32768),
    "LossyImageCompression": ("01", "00", "2"),
}
#: Tags the hostile-value mutator sets (top level, or wherever they sit in sequences).
HOSTILE_TAGS = (
    "Rows",
    "Columns",
    "NumberOfFrames",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PlanarConfiguration",
    "PhotometricInterpretation",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "SOPInstanceUID",
    "SOPClassUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "ImageType",
    "InstanceNumber",
    "SeriesNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "PixelPaddingValue",
    "LossyImageCompression",
    "DerivationDescription",
    "SeriesDescription",
    "PatientID",
    "SpecificCharacterSet",
)
#: Real transfer syntaxes (wrong for most files) and the issue's hostile values.
TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.201",
    "1e308",
    "nan",
    "0",
    "-1",
    "",
    "abc",
    "../../x",
    "9" * 65,
)
#: What the delete and duplicate mutators choose from.
REQUIRED = (
    0x00020010,  # TransferSyntaxUID
    0x00080016,  # SOPClassUID
    0x00080018,  # SOPInstanceUID
    0x00080060,  # Modality
    0x0020000D,  # StudyInstanceUID
    0x0020000E,  # SeriesInstanceUID
    0x00280002,  # SamplesPerPixel
    0x00280004,  # PhotometricInterpretation
    0x00280008,  # NumberOfFrames
    0x00280010,  # Rows
    0x00280011,  # Columns
    0x00280100,  # BitsAllocated
    0x00280101,  # BitsStored
    0x00280102,  # HighBit
    0x00280103,  # PixelRepresentation
    0x00281050,  # WindowCenter
    0x00281051,  # WindowWidth
    0x00281052,  # RescaleIntercept
    0x00281053,  # RescaleSlope
    PIXEL_DATA,
)
#: Sequences the nesting mutator builds deep (one medeq reads, one it copies).
NEST_TAGS = (0x00081140, 0x52009229, 0x00283010)
NEST_DEPTHS = (16, 256, 2000, 20000)


def show(value: object) -> str:
    """A value as a recipe shows it: short, and the same on every run."""
    if isinstance(value, str) and len(value) > 24:
        for unit in (value[:1], value[:2]):
            if value == unit * (len(value) // len(unit)):
                return f"{unit!r}*{len(value) // len(unit)}"
        return f"{value[:12]!r}... ({len(value)} characters)"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def number_text(value: object) -> str:
    """A hostile value as the text of a DS/IS/UI... element."""
    if isinstance(value, str):
        return value
    return repr(value) if isinstance(value, float) else str(value)


def encode(value: object, vr: str, little: bool) -> tuple[str, bytes]:
    """``value`` encoded for a tag whose dictionary VR is ``vr``: (VR written, bytes).

    Text VRs take the value as text. Binary VRs take a number in the first VR that holds
    it (-1 in a US tag is written as SS, 1e308 as FD, text as LO): in an explicit VR file
    the reader then meets a VR it did not expect, in an implicit one bytes of another size.
    """
    order = "<" if little else ">"
    if vr in TEXT_VRS or isinstance(value, str) or vr in ("SQ", ""):
        written = vr if vr in TEXT_VRS else "LO"
        raw = number_text(value).encode("latin-1")
        if len(raw) % 2:
            raw += b"\0" if written == "UI" else b" "
        return written, raw
    if isinstance(value, int):
        spans: list[tuple[str, str, int, int]] = [
            ("US", "H", 0, 2**16 - 1),
            ("SS", "h", -(2**15), 2**15 - 1),
            ("UL", "I", 0, 2**32 - 1),
            ("SL", "i", -(2**31), 2**31 - 1),
            ("SV", "q", -(2**63), 2**63 - 1),
        ]
        fits = [s for s in spans if s[2] <= value <= s[3]]
        own = [s for s in fits if s[0] in vr.split(" or ")]
        name, fmt, _, _ = (own or fits)[0]
        return name, struct.pack(order + fmt, value)
    assert isinstance(value, float)
    if vr == "FL" and (not math.isfinite(value) or abs(value) < 3e38):
        return "FL", struct.pack(order + "f", value)
    return "FD", struct.pack(order + "d", value)


# --------------------------------------------------------------------------- mutators
#
# A mutator takes (rng, subject) and returns (bytes, recipe) or None when it does not
# apply to this file (the driver then draws another). Anything a mutator raises counts
# as "does not apply": seeds include broken files pydicom cannot walk.

Mutation = tuple[bytes, str] | None


def m_truncate(rng: random.Random, s: Subject) -> Mutation:
    if len(s.data) < 2:
        return None
    at = rng.randrange(1, len(s.data))
    return s.data[:at], f"truncate@{at}"


def m_truncate_pixels(rng: random.Random, s: Subject) -> Mutation:
    start = s.pixel_start()
    if start >= len(s.data) - 1:
        return None
    at = rng.randrange(start, len(s.data))
    return s.data[:at], f"truncate@{at} (in Pixel Data)"


def _flip(rng: random.Random, s: Subject, lo: int, hi: int, where: str) -> Mutation:
    if hi - lo < 1:
        return None
    data = bytearray(s.data)
    flips = []
    for _ in range(rng.choice((1, 1, 2, 4, 16))):
        at, mask = rng.randrange(lo, hi), rng.randrange(1, 256)
        data[at] ^= mask
        flips.append(f"{at}^{mask:02x}")
    return bytes(data), f"flip {where} {','.join(flips)}"


def m_flip_header(rng: random.Random, s: Subject) -> Mutation:
    return _flip(rng, s, 0, s.pixel_start(), "header")


def m_flip_pixels(rng: random.Random, s: Subject) -> Mutation:
    return _flip(rng, s, s.pixel_start(), len(s.data), "pixels")


def _holders(ds: Dataset, keyword: str) -> list[tuple[str, Dataset]]:
    """Every data set (top level first, then sequence items) and the path to it, where
    ``keyword`` sits or may be added (only the top level takes a new one)."""
    found: list[tuple[str, Dataset]] = [("", ds)]

    def walk(prefix: str, item: Dataset, depth: int) -> None:
        if depth > 4:
            return
        for elem in item:
            if elem.VR == "SQ" and elem.value:
                for i, sub in enumerate(elem.value[:8]):
                    path = f"{prefix}{elem.keyword or tag_name(elem.tag)}[{i}]>"
                    if keyword in sub:
                        found.append((path, sub))
                    walk(path, sub, depth + 1)

    walk("", ds, 0)
    return found


def _saved(ds: Dataset) -> bytes:
    """The data set written back in its own encoding (preamble and meta as they were)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


def _raw(tag: int, vr: str, value: bytes, ds: Dataset) -> Any:
    """An element pydicom writes back byte for byte, whatever its VR says."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    implicit, little = ds.original_encoding
    return RawDataElement(Tag(tag), vr, len(value), value, 0, bool(implicit), bool(little))


def m_hostile_value(rng: random.Random, s: Subject) -> Mutation:
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    keyword = rng.choice(HOSTILE_TAGS)
    tag = tag_for_keyword(keyword)
    assert tag is not None
    value = rng.choice(HOSTILE + PLAUSIBLE.get(keyword, ()) * 2)
    ds = parse(s.data)
    if None in ds.original_encoding:
        return None
    places = _holders(ds, keyword)
    vr, raw = encode(value, dictionary_VR(tag), bool(ds.original_encoding[1]))
    what = f"{keyword}={show(value)}"
    if vr not in dictionary_VR(tag).split(" or "):
        what += f" [{vr}]"
    if len(places) == 1 or rng.random() < 0.6:
        data = set_top_level(s, tag, vr, raw)
        return None if data is None else (data, what)
    where, holder = rng.choice(places[1:])
    holder[tag] = _raw(tag, vr, raw, ds)
    return _saved(ds), where + what


def set_top_level(s: Subject, tag: int, vr: str, value: bytes) -> bytes | None:
    """The element replaced (or inserted in tag order) as raw bytes: nothing else changes."""
    body = s.body()
    if not body:
        return None
    new = header(body[0], tag, vr, len(value)) + value
    old = next((loc for loc in body if loc.tag == tag), None)
    if old is not None:
        return splice(s, old.start, old.end, new)
    after = next((loc for loc in body if loc.tag > tag), None)
    at = after.start if after is not None else body[-1].end
    return splice(s, at, at, new)


def m_transfer_syntax(rng: random.Random, s: Subject) -> Mutation:
    loc = s.find(TRANSFER_SYNTAX)
    if loc is None:
        return None
    value = rng.choice(TRANSFER_SYNTAXES)
    raw = value.encode("ascii")
    raw += b"\0" * (len(raw) % 2)
    new = header(loc, loc.tag, "UI", len(raw)) + raw
    return splice(s, loc.start, loc.end, new), f"TransferSyntaxUID={show(value)}"


LUT_ENTRIES = (0, 1, 2, 255, 4096, 65535)
LUT_FIRST = (0, -1, 32768, 65535, -32768)
LUT_BITS = (0, 1, 8, 12, 16, 17, 32, 65535)


def m_lut(rng: random.Random, s: Subject) -> Mutation:
    """Empty or short LUT items, and hostile (0028,3002) LUT Descriptor values."""
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset as PydicomDataset
    from pydicom.sequence import Sequence as PydicomSequence

    ds = parse(s.data)
    if None in ds.original_encoding:
        return None
    little = bool(ds.original_encoding[1])
    seq = rng.choice(("ModalityLUTSequence", "VOILUTSequence"))
    tag = 0x00283000 if seq == "ModalityLUTSequence" else 0x00283010
    kind = rng.choice(("no items", "empty item", "descriptor", "descriptor", "short data"))
    items: list[PydicomDataset] = []
    if kind == "short data":
        old = ds.get(seq)
        if not old or "LUTData" not in old[0]:
            return None
        item = old[0]
        data = item.LUTData if isinstance(item.LUTData, bytes) else b""
        keep = rng.choice((0, 2, len(data) // 2))
        item[0x00283006] = _raw(0x00283006, "OW", data[:keep], ds)
        items = list(old)
        what = f"{seq}[0] LUTData cut to {keep} bytes"
    elif kind == "empty item":
        items = [PydicomDataset()]
        what = f"{seq}=[empty item]"
    elif kind == "no items":
        what = f"{seq}=[]"
    else:
        desc = [rng.choice(LUT_ENTRIES), rng.choice(LUT_FIRST), rng.choice(LUT_BITS)]
        desc = desc[: rng.choice((1, 2, 3, 3, 3))]
        count = min(rng.choice((0, 1, 2, desc[0] - 1, desc[0], 2 * desc[0])), 70000)
        fmt = ("<" if little else ">") + "".join("h" if v < 0 else "H" for v in desc)
        item = PydicomDataset()
        item[0x00283002] = _raw(
            0x00283002, "SS" if min(desc) < 0 else "US", struct.pack(fmt, *desc), ds
        )
        if seq == "ModalityLUTSequence":
            item[0x00283004] = _raw(0x00283004, "LO", b"HU", ds)
        item[0x00283006] = _raw(0x00283006, "OW", rng.randbytes(2 * max(count, 0)), ds)
        items = [item]
        what = f"{seq}=[LUTDescriptor={desc} LUTData={max(count, 0)} values]"
    ds[tag] = DataElement(tag, "SQ", PydicomSequence(items))
    return _saved(ds), what


def m_nest(rng: random.Random, s: Subject) -> Mutation:
    """A sequence nested ``depth`` items deep, inserted in tag order."""
    body = s.body()
    if not body:
        return None
    tag, depth = rng.choice(NEST_TAGS), rng.choice(NEST_DEPTHS)
    like = body[0]
    order = "<" if like.little else ">"
    item = struct.pack(f"{order}HHI", 0xFFFE, 0xE000, UNDEFINED)
    closing = struct.pack(f"{order}HHI", 0xFFFE, 0xE00D, 0) + struct.pack(
        f"{order}HHI", 0xFFFE, 0xE0DD, 0
    )
    nest = (header(like, tag, "SQ", UNDEFINED) + item) * depth + closing * depth
    old = next((loc for loc in body if loc.tag == tag), None)
    if old is not None:
        start, end = old.start, old.end
    else:
        after = next((loc for loc in body if loc.tag > tag), None)
        start = end = after.start if after is not None else len(s.data)
    return splice(s, start, end, nest), f"nest {tag_name(tag)} depth={depth}"


def m_lie_length(rng: random.Random, s: Subject) -> Mutation:
    """An element's length field that disagrees with its value."""
    if not s.locs:
        return None
    pixels = s.find(PIXEL_DATA)
    loc = pixels if pixels is not None and rng.random() < 0.3 else rng.choice(s.locs)
    top = 0xFFFF if loc.len_size == 2 else UNDEFINED
    old = loc.length
    choices = [0, old + 1, max(old - 1, 0), 2 * old, old + 2, len(s.data) - loc.value + 2, top]
    if loc.len_size == 4:
        choices += [0x7FFFFFFF, 0xFFFFFFFE]
    new = min(rng.choice(choices), top)
    if new == old:
        return None
    order = "<" if loc.little else ">"
    field_ = struct.pack(order + ("H" if loc.len_size == 2 else "I"), new)
    data = s.data[: loc.len_pos] + field_ + s.data[loc.len_pos + loc.len_size :]
    return data, f"{loc.name} length {old}->{new}"


def m_empty_pixels(rng: random.Random, s: Subject) -> Mutation:
    loc = s.find(PIXEL_DATA)
    if loc is None:
        return None
    if loc.length == UNDEFINED and rng.random() < 0.5:
        order = "<" if loc.little else ">"
        value = struct.pack(f"{order}HHI", 0xFFFE, 0xE000, 0)
        value += struct.pack(f"{order}HHI", 0xFFFE, 0xE0DD, 0)
        new = header(loc, loc.tag, loc.vr or "OB", UNDEFINED) + value
        return splice(s, loc.start, loc.end, new), "PixelData=[offset table only]"
    new = header(loc, loc.tag, loc.vr or "OW", 0)
    return splice(s, loc.start, loc.end, new), "PixelData=empty"


def m_change_vr(rng: random.Random, s: Subject) -> Mutation:
    explicit = [loc for loc in s.locs if loc.vr_pos is not None]
    if not explicit:
        return None
    loc = rng.choice(explicit)
    assert loc.vr_pos is not None
    same = LONG_VRS if loc.vr in LONG_VRS else SHORT_VRS
    pool = same if rng.random() < 0.8 else LONG_VRS + SHORT_VRS
    new = rng.choice([vr for vr in pool if vr != loc.vr])
    data = s.data[: loc.vr_pos] + new.encode() + s.data[loc.vr_pos + 2 :]
    return data, f"{loc.name} VR {loc.vr}->{new}"


def m_duplicate(rng: random.Random, s: Subject) -> Mutation:
    present = [loc for loc in s.locs if loc.tag in REQUIRED and loc.tag != PIXEL_DATA]
    if not present:
        return None
    loc = rng.choice(present)
    copy = s.data[loc.start : loc.end]
    if rng.random() < 0.5 or loc.meta:
        return splice(s, loc.end, loc.end, copy), f"duplicate {loc.name}"
    return s.data + copy, f"{loc.name} again after the last element"


def m_delete(rng: random.Random, s: Subject) -> Mutation:
    present = [loc for loc in s.locs if loc.tag in REQUIRED]
    if not present:
        return None
    loc = rng.choice(present)
    return splice(s, loc.start, loc.end, b""), f"delete {loc.name}"


def _set_raw(ds: Dataset, values: dict[str, object]) -> None:
    """Set top-level elements to ``values`` (keyword -> value), each encoded by ``encode``."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    little = bool(ds.original_encoding[1])
    for keyword, value in values.items():
        tag = tag_for_keyword(keyword)
        assert tag is not None
        vr, raw = encode(value, dictionary_VR(tag), little)
        ds[tag] = _raw(tag, vr, raw, ds)


def m_geometry(rng: random.Random, s: Subject) -> Mutation:
    """Rows, Columns and Number of Frames that multiply out to the same pixel count: an odd
    but consistent image (one row, one column, frames as rows...)."""
    ds = parse(s.data)
    if None in ds.original_encoding or "PixelData" not in ds:
        return None
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    frames = int(ds.get("NumberOfFrames") or 1)
    total = rows * cols * frames
    if total < 2:
        return None
    shapes = [(1, total, 1), (total, 1, 1), (cols, rows, frames), (1, rows * cols, frames)]
    shapes += [(rows, cols * frames, 1), (1, 1, total), (2, total // 2, 1)]
    shapes = [x for x in shapes if x != (rows, cols, frames) and x[0] * x[1] * x[2] == total]
    if not shapes:
        return None
    r, c, f = rng.choice(shapes)
    values: dict[str, object] = {"Rows": r, "Columns": c}
    if f != 1 or "NumberOfFrames" in ds:
        values["NumberOfFrames"] = str(f)
    _set_raw(ds, values)
    return _saved(ds), " ".join(f"{k}={v}" for k, v in values.items())


def m_pixel_fill(rng: random.Random, s: Subject) -> Mutation:
    """Native pixel data made constant, extreme or random (same length)."""
    loc = s.find(PIXEL_DATA)
    if loc is None or loc.length in (0, UNDEFINED):
        return None
    n = loc.end - loc.value
    kind = rng.choice(("zeros", "0xff", "0x80", "alternating", "random"))
    fill = {
        "zeros": b"\0" * n,
        "0xff": b"\xff" * n,
        "0x80": b"\x80" * n,
        "alternating": (b"\x00\x00\xff\xff" * (n // 4 + 1))[:n],
    }.get(kind) or rng.randbytes(n)
    return s.data[: loc.value] + fill + s.data[loc.end :], f"PixelData all {kind}"


def m_retag_pixels(rng: random.Random, s: Subject) -> Mutation:
    """(7FE0,0010) Pixel Data renamed Float / Double Float Pixel Data, or a private tag."""
    loc = s.find(PIXEL_DATA)
    if loc is None:
        return None
    tag, vr = rng.choice(((0x7FE00008, "OF"), (0x7FE00009, "OD"), (0x7FE10010, "OB")))
    order = "<" if loc.little else ">"
    new = struct.pack(f"{order}HH", tag >> 16, tag & 0xFFFF)
    if loc.vr_pos is not None and loc.vr in LONG_VRS:
        new += vr.encode()
    data = s.data[: loc.start] + new + s.data[loc.start + len(new) :]
    return data, f"PixelData retagged {tag_name(tag)}"


#: (mutator, weight): hostile values are the richest vein.
MUTATORS: tuple[tuple[Callable[[random.Random, Subject], Mutation], int], ...] = (
    (m_truncate, 2),
    (m_truncate_pixels, 2),
    (m_flip_header, 3),
    (m_flip_pixels, 1),
    (m_hostile_value, 10),
    (m_transfer_syntax, 2),
    (m_lut, 3),
    (m_nest, 1),
    (m_lie_length, 3),
    (m_empty_pixels, 1),
    (m_change_vr, 2),
    (m_duplicate, 1),
    (m_delete, 2),
    (m_geometry, 2),
    (m_pixel_fill, 1),
    (m_retag_pixels, 1),
)


def mutate_once(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """One mutation of ``data`` drawn with ``rng``: (new bytes, recipe step)."""
    subject = Subject(data)
    functions = [m for m, _ in MUTATORS]
    weights = [w for _, w in MUTATORS]
    for _ in range(12):
        out = apply(rng.choices(functions, weights)[0], rng, subject)
        if out is not None:
            return out
    return data + b"\0\0", "append 2 zero bytes"


def apply(
    mutator: Callable[[random.Random, Subject], Mutation], rng: random.Random, s: Subject
) -> Mutation:
    """``mutator`` on ``s``; None when it does not apply, fails, or changes nothing."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = mutator(rng, s)
    except Exception:  # seeds include files pydicom cannot write back
        return None
    return out if out is not None and out[0] != s.data else None


def make_mutant(corpus: Sequence[SeedFile], seed: int, index: int) -> tuple[bytes, str]:
    """Mutant ``index`` of run ``seed``: its bytes and its recipe (a pure function)."""
    rng = random.Random(f"medeq-fuzz:{seed}:{index}")
    source = corpus[rng.randrange(len(corpus))]
    data = source.path.read_bytes()
    steps = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(1 if rng.random() < 0.8 else 2):
            data, step = mutate_once(rng, data)
            steps.append(step)
    return data, f"{source.name}: {' + '.join(steps)}"


# --------------------------------------------------------------------------- the target


def exercise(path: Path, out: Path, stage: Callable[[str], None]) -> dict[str, Any]:
    """What every mutant goes through: the public API, as a user calls it."""
    import medeq

    stage("read")
    image = medeq.read(path)
    stage("stored")
    _ = image.stored
    stage("enhance")
    derived = medeq.enhance(image)
    stage("write")
    medeq.write(derived, out / "derived.dcm", preview=True)
    return {"series": image.info.series_instance_uid}


Target = Callable[[Path, Path, Callable[[str], None]], "dict[str, Any] | None"]


def innermost_frame(tb: Any) -> str:
    """``src/medeq/reader.py:123 in _decode``: the deepest frame in medeq (else the deepest)."""
    frames = traceback.extract_tb(tb)
    if not frames:
        return "?"
    root = _medeq_root()
    ours = [
        f for f in frames if root is not None and Path(f.filename).resolve().is_relative_to(root)
    ]
    frame = (ours or frames)[-1]
    return f"{_short_path(frame.filename)}:{frame.lineno} in {frame.name}"


def _medeq_root() -> Path | None:
    module = sys.modules.get("medeq")
    file = getattr(module, "__file__", None)
    return Path(file).resolve().parent if file else None


def _short_path(filename: str) -> str:
    path = Path(filename).resolve()
    for base in (REPO, Path(sys.prefix)):
        if path.is_relative_to(base):
            return str(path.relative_to(base))
    return str(path)


def run_target(
    target: Target, path: Path, out: Path, stage: Callable[[str], None]
) -> dict[str, Any]:
    """Run ``target`` and describe how it ended (in the child)."""
    try:
        info = target(path, out, stage) or {}
    except MemoryError as exc:
        return {
            "kind": "oom",
            "error": "MemoryError",
            "message": str(exc)[:300],
            "frame": innermost_frame(exc.__traceback__),
            "traceback": traceback.format_exc(),
        }
    except BaseException as exc:
        name = type(exc).__name__
        if _is_medeq_error(exc):
            return {"kind": "clean", "error": name, "message": str(exc)[:300]}
        return {
            "kind": "crash",
            "error": f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins."),
            "message": str(exc)[:300],
            "frame": innermost_frame(exc.__traceback__),
            "traceback": traceback.format_exc()[-20000:],
        }
    return {"kind": "ok", "info": info}


def _is_medeq_error(exc: BaseException) -> bool:
    errors = sys.modules.get("medeq.errors")
    base = getattr(errors, "MedeqError", None)
    return base is not None and isinstance(exc, base)


# --------------------------------------------------------------------------- children


@dataclass(frozen=True)
class Limits:
    """What every child gets: time (seconds, from the first stage on) and address space."""

    timeout: float = 20.0
    memory: int = 4 << 30  # bytes of address space; 0: no limit
    jobs: int = 2


@dataclass(frozen=True)
class Task:
    """One child's work: mutant ``index`` of ``seed``, or the file ``path`` as it is.

    ``target`` None: build the mutant and stop (the convert mode's folder).
    """

    index: int
    seed: int = 0
    path: Path | None = None
    name: str = ""


@dataclass
class Outcome:
    """How one mutant (or file) ended."""

    index: int
    recipe: str
    kind: str
    stage: str = ""
    error: str = ""
    message: str = ""
    frame: str = ""
    seconds: float = 0.0
    traceback: str = ""
    log: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    mutant: Path | None = None

    @property
    def group(self) -> str:
        """What makes two failures the same bug."""
        if self.kind in ("crash", "oom"):
            return f"{self.kind}: {self.error} at {self.frame or self.stage}"
        if self.kind in ("hang", "abort"):
            where = self.frame or f"stage {self.stage or '?'}"
            return (
                f"{self.kind}: {self.error} at {where}" if self.error else f"{self.kind} at {where}"
            )
        if self.kind == "clean":
            return f"clean: {self.error}"
        return self.kind

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if v not in ("", None, {}) and k != "mutant"}
        return out


@dataclass
class _Running:
    task: Task
    pid: int
    fd: int
    workdir: Path
    started: float
    deadline: float
    buffer: bytearray = field(default_factory=bytearray)
    messages: list[tuple[str, Any]] = field(default_factory=list)
    killed: bool = False


class Runner:
    """Forks one child per task, at most ``limits.jobs`` at a time, and classifies them."""

    def __init__(
        self,
        corpus: Sequence[SeedFile],
        limits: Limits,
        workdir: Path,
        target: Target | None = exercise,
    ) -> None:
        self.corpus = corpus
        self.limits = limits
        self.workdir = workdir
        self.target = target

    def run(self, tasks: Iterable[Task]) -> Iterator[Outcome]:
        pending = iter(tasks)
        running: dict[int, _Running] = {}
        try:
            while True:
                while len(running) < max(self.limits.jobs, 1):
                    task = next(pending, None)
                    if task is None:
                        break
                    child = self._spawn(task)
                    running[child.fd] = child
                if not running:
                    return
                ready, _, _ = select.select(list(running), [], [], 0.05)
                for fd in ready:
                    child = running[fd]
                    chunk = os.read(fd, 1 << 16)
                    if chunk:
                        self._absorb(child, chunk)
                        continue
                    del running[fd]
                    yield self._finish(child)
                now = time.monotonic()
                for child in running.values():
                    if not child.killed and now > child.deadline:
                        _kill(child.pid)
                        child.killed = True
        finally:
            for child in running.values():
                _kill(child.pid)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(child.pid, 0)
                os.close(child.fd)
                shutil.rmtree(child.workdir, ignore_errors=True)

    def _spawn(self, task: Task) -> _Running:
        workdir = self.workdir / f"c{task.index}"
        workdir.mkdir(parents=True, exist_ok=True)
        rfd, wfd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        with warnings.catch_warnings():
            # Python 3.12+ warns about forking with threads: the child uses none of them.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(rfd)
            self._child(task, workdir, wfd)
        # A process group of its own (set on both sides of the fork, whichever runs first):
        # whatever the child may start is killed with it.
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        os.close(wfd)
        now = time.monotonic()
        return _Running(task, pid, rfd, workdir, now, now + MUTATE_SECONDS)

    def _absorb(self, child: _Running, chunk: bytes) -> None:
        child.buffer += chunk
        *lines, rest = bytes(child.buffer).split(b"\n")
        child.buffer = bytearray(rest)
        for line in lines:
            try:
                kind, payload = json.loads(line)
            except ValueError:  # not ours: the classification goes by the rest
                continue
            child.messages.append((kind, payload))
            if kind == "mutant":
                # The time limit runs from here: building a mutant is not medeq's time.
                child.deadline = time.monotonic() + self.limits.timeout + 2.0
            elif kind in ("result", "harness"):
                # Done: if something it started keeps the pipe open, it goes soon.
                child.deadline = min(child.deadline, time.monotonic() + 2.0)

    # -- in the child

    def _child(self, task: Task, workdir: Path, wfd: int) -> NoReturn:
        def send(kind: str, payload: Any) -> None:
            data = (json.dumps([kind, payload]) + "\n").encode()
            while data:
                data = data[os.write(wfd, data) :]

        status = 0
        try:
            with contextlib.suppress(OSError):
                os.setpgid(0, 0)
            log = _limit_this_process(workdir / "log.txt", self.limits)
            path, recipe = self._subject(task, workdir)
            send("mutant", {"recipe": recipe, "path": str(path)})
            if self.target is not None:
                out = workdir / "out"
                out.mkdir()
                faulthandler.dump_traceback_later(max(self.limits.timeout - 0.5, 0.1), file=log)
                signal.alarm(max(math.ceil(self.limits.timeout), 1))
                result = run_target(self.target, path, out, lambda s: send("stage", s))
                signal.alarm(0)
                faulthandler.cancel_dump_traceback_later()
                send("result", result)
        except BaseException as exc:  # the harness's own failure, in this child only
            with contextlib.suppress(BaseException):
                send("harness", f"{type(exc).__name__}: {exc}"[:500])
            status = 3
        finally:
            os._exit(status)

    def _subject(self, task: Task, workdir: Path) -> tuple[Path, str]:
        if task.path is not None:
            return task.path, task.name or str(task.path)
        data, recipe = make_mutant(self.corpus, task.seed, task.index)
        path = workdir / f"m{task.index}.dcm"
        path.write_bytes(data)
        return path, recipe

    # -- back in the parent

    def _finish(self, child: _Running) -> Outcome:
        os.close(child.fd)
        _, status = os.waitpid(child.pid, 0)
        _kill(child.pid, reaped=True)  # anything the child left running
        elapsed = time.monotonic() - child.started
        outcome = classify(child.task, child.messages, status, child.killed, child.workdir)
        outcome.seconds = round(elapsed, 3)
        mutant = next((p["path"] for k, p in child.messages if k == "mutant"), None)
        if mutant and child.task.path is None:
            keep = self.workdir / f"m{child.task.index}.dcm"
            with contextlib.suppress(OSError):
                os.replace(mutant, keep)
                outcome.mutant = keep
        shutil.rmtree(child.workdir, ignore_errors=True)
        return outcome


def _kill(pid: int, *, reaped: bool = False) -> None:
    """Kill a child's process group, and the child unless it was reaped (its pid may then
    be another process's)."""
    for kill in (os.killpg,) if reaped else (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGKILL)


def _limit_this_process(log_path: Path, limits: Limits) -> io.TextIOWrapper:
    """In the child: output to a log, no core files, the address-space limit, alarms that
    kill (a hang in C code is not interrupted by a Python handler), Ctrl-C left to the parent."""
    log = open(log_path, "w", buffering=1)  # noqa: SIM115 (open until _exit)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if limits.memory > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory, limits.memory))
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.enable(file=log)
    return log


_OOM_SIGNS = ("bad_alloc", "Cannot allocate memory", "out of memory", "MemoryError")


def classify(
    task: Task, messages: list[tuple[str, Any]], status: int, killed: bool, workdir: Path
) -> Outcome:
    """The outcome of one child from what it said and how it ended."""
    mutant = next((p for k, p in messages if k == "mutant"), None)
    recipe = mutant["recipe"] if mutant else task.name or f"{task.seed}:{task.index}"
    stages = [p for k, p in messages if k == "stage"]
    out = Outcome(task.index, recipe, "harness", stage=stages[-1] if stages else "")
    log = _tail(workdir / "log.txt")
    result = next((p for k, p in messages if k == "result"), None)
    harness = next((p for k, p in messages if k == "harness"), None)
    if mutant is None or harness is not None:
        out.message = harness or f"no mutant (status {status:#x})"
        out.log = log
        return out
    if result is not None:
        for key in ("kind", "error", "message", "frame", "traceback", "info"):
            if key in result:
                setattr(out, key, result[key])
        return out
    out.log = log
    out.frame = _frame_from_dump(log)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if killed or sig == signal.SIGALRM:
            out.kind, out.error = "hang", ""
        elif any(sign in log for sign in _OOM_SIGNS):
            out.kind, out.error = "oom", signal.Signals(sig).name
        else:
            out.kind, out.error = "abort", signal.Signals(sig).name
    else:
        code = os.WEXITSTATUS(status)
        out.kind = "oom" if any(sign in log for sign in _OOM_SIGNS) else "abort"
        out.error = f"exit {code}"
    return out


def _tail(path: Path, size: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - size, 0))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


_DUMP_LINE = re.compile(r'File "([^"]+)", line (\d+) in (\S+)')


def _frame_from_dump(log: str) -> str:
    """The innermost medeq frame of the main thread in faulthandler's dump (hang, abort).

    The dump lists each thread most recent call first. An abort names the thread that
    died "Current thread"; a timeout dump names none, and the main thread is the one whose
    outermost frame is this script's (the child is a fork of it).
    """
    blocks = re.split(r"\n(?=(?:Current thread|Thread) 0x)", log)
    current = [b for b in blocks if b.startswith("Current thread")]
    main = [b for b in blocks if _DUMP_LINE.findall(b)[-1:] and SCRIPT.name in b]
    block = (current or main or [log])[-1]
    root = _medeq_root()
    for filename, line, name in _DUMP_LINE.findall(block):
        if root is not None and Path(filename).resolve().is_relative_to(root):
            return f"{_short_path(filename)}:{line} in {name}"
    return ""


# --------------------------------------------------------------------------- library mode


def warm_up(workdir: Path) -> None:
    """Load medeq's lazy parts on a healthy bundled file, so that children start warm.

    Not a mutant: the one medeq run the parent makes. A failure here is reported and the
    run goes on (the children would meet the same failure).
    """
    from pydicom.data import get_testdata_file

    import medeq

    where = get_testdata_file(WARM_UP, download=False)
    if not isinstance(where, str):
        return
    out = workdir / "warm-up"
    out.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exercise(Path(where), out, lambda s: None)
    except Exception as exc:
        print(f"fuzz: warm-up on {WARM_UP} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    del medeq


@dataclass
class Summary:
    """Counts and failure groups of a run."""

    outcomes: list[Outcome]
    elapsed: float
    seed: int

    @property
    def counts(self) -> dict[str, int]:
        counted = Counter(o.kind for o in self.outcomes)
        return {k: counted.get(k, 0) for k in KINDS}

    @property
    def bad(self) -> int:
        return sum(self.counts[k] for k in BAD)

    def groups(self) -> list[tuple[str, list[Outcome]]]:
        """Failure groups, largest first; each group's outcomes shortest recipe first."""
        by: dict[str, list[Outcome]] = {}
        for o in self.outcomes:
            if o.kind in BAD:
                by.setdefault(o.group, []).append(o)
        for members in by.values():
            members.sort(key=lambda o: (len(o.recipe), o.index))
        return sorted(by.items(), key=lambda kv: (-len(kv[1]), kv[0]))

    def clean_errors(self) -> dict[str, int]:
        return dict(Counter(o.error for o in self.outcomes if o.kind == "clean").most_common())


def replay_command(seed: int, index: int, extra: Sequence[str]) -> str:
    parts = ["python", "tools/fuzz.py", *extra, "--replay", f"{seed}:{index}"]
    return " ".join(shlex.quote(p) for p in parts)


def print_summary(summary: Summary, limits: Limits, extra: Sequence[str], file: Any) -> None:
    n = len(summary.outcomes)
    rate = n / summary.elapsed if summary.elapsed > 0 else 0.0
    print(
        f"medeq fuzz: seed {summary.seed}, {n} mutants in {summary.elapsed:.1f} s "
        f"({rate:.1f} mutants/s, {limits.jobs} jobs, timeout {limits.timeout:g} s, "
        f"memory {limits.memory >> 20} MiB)",
        file=file,
    )
    print("  " + "  ".join(f"{k} {v}" for k, v in summary.counts.items()), file=file)
    groups = summary.groups()
    if not groups:
        print("no crash, hang, abort or oom", file=file)
        return
    print(f"{len(groups)} failure group(s):", file=file)
    for key, members in groups:
        first = members[0]
        print(f"  [{len(members)}] {key}", file=file)
        if first.message:
            print(f"       message: {first.message[:200]}", file=file)
        print(f"       shortest: {first.recipe}", file=file)
        if first.index >= 0:
            print(f"       replay:   {replay_command(summary.seed, first.index, extra)}", file=file)


def summary_json(summary: Summary, limits: Limits, extra: Sequence[str]) -> dict[str, Any]:
    n = len(summary.outcomes)
    return {
        "mode": "library",
        "seed": summary.seed,
        "count": n,
        "jobs": limits.jobs,
        "timeout": limits.timeout,
        "memory": limits.memory,
        "elapsed_seconds": round(summary.elapsed, 3),
        "mutants_per_second": round(n / summary.elapsed, 2) if summary.elapsed > 0 else None,
        "counts": summary.counts,
        "clean_errors": summary.clean_errors(),
        "groups": [
            {
                "group": key,
                "count": len(members),
                "shortest_recipe": members[0].recipe,
                "index": members[0].index,
                "message": members[0].message,
                "replay": replay_command(summary.seed, members[0].index, extra),
                "indices": [m.index for m in members],
            }
            for key, members in summary.groups()
        ],
        "mutants": [o.as_dict() for o in sorted(summary.outcomes, key=lambda o: o.index)],
    }


def keep_outcome(outcome: Outcome, keep: Path | None, seed: int) -> None:
    """Save a failing mutant and its description in ``keep``."""
    if keep is None or outcome.kind not in BAD or outcome.mutant is None:
        return
    keep.mkdir(parents=True, exist_ok=True)
    stem = f"{seed}-{outcome.index}-{outcome.kind}"
    shutil.copyfile(outcome.mutant, keep / f"{stem}.dcm")
    text = (
        f"{outcome.recipe}\n{outcome.group}\n{outcome.message}\n\n{outcome.traceback}{outcome.log}"
    )
    (keep / f"{stem}.txt").write_text(text)


def library_mode(args: argparse.Namespace, corpus: list[SeedFile], limits: Limits) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="medeq-fuzz-"))
    try:
        warm_up(workdir)
        runner = Runner(corpus, limits, workdir)
        tasks = (Task(i, args.seed) for i in range(args.start, args.start + args.count))
        outcomes: list[Outcome] = []
        started = time.monotonic()
        try:
            for outcome in runner.run(tasks):
                outcomes.append(outcome)
                keep_outcome(outcome, args.keep, args.seed)
                if outcome.mutant is not None:
                    outcome.mutant.unlink(missing_ok=True)
                _progress(len(outcomes), args.count, outcome, args.verbose)
        except KeyboardInterrupt:
            print("\nfuzz: interrupted; summary of the mutants run so far", file=sys.stderr)
        summary = Summary(outcomes, time.monotonic() - started, args.seed)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    extra = corpus_args(args)
    print_summary(summary, limits, extra, sys.stdout)
    if args.json:
        args.json.write_text(json.dumps(summary_json(summary, limits, extra), indent=1))
    return 1 if summary.bad else 0


def _progress(done: int, total: int, outcome: Outcome, verbose: bool) -> None:
    if verbose or outcome.kind in BAD:
        print(
            f"{outcome.index:6} {outcome.kind:7} {outcome.recipe}  {outcome.group}", file=sys.stderr
        )
    elif done % 100 == 0:
        print(f"fuzz: {done}/{total}", file=sys.stderr)


def replay(args: argparse.Namespace, corpus: list[SeedFile], limits: Limits) -> int:
    """One mutant (``--replay SEED:INDEX``) or file (``--replay-file``), told in full."""
    workdir = Path(tempfile.mkdtemp(prefix="medeq-fuzz-"))
    try:
        warm_up(workdir)
        if args.replay_file is not None:
            task = Task(-1, path=args.replay_file.resolve(), name=str(args.replay_file))
            seed = 0
        else:
            seed_text, _, index_text = args.replay.partition(":")
            seed = int(seed_text)
            task = Task(int(index_text), seed)
        (outcome,) = list(Runner(corpus, limits, workdir).run([task]))
        keep_outcome(outcome, args.keep, seed)
        if args.keep is not None and outcome.mutant is not None and outcome.kind not in BAD:
            args.keep.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(outcome.mutant, args.keep / f"{seed}-{outcome.index}.dcm")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"recipe:  {outcome.recipe}")
    print(f"outcome: {outcome.kind}  {outcome.group}")
    if outcome.stage:
        print(f"stage:   {outcome.stage}")
    if outcome.message:
        print(f"message: {outcome.message}")
    if outcome.traceback:
        print(outcome.traceback.rstrip())
    if outcome.log and outcome.kind not in ("ok", "clean"):
        print("-- child output (tail) --\n" + outcome.log.rstrip())
    return 1 if outcome.kind in BAD else 0


# --------------------------------------------------------------------------- convert mode


def check_source(path: Path, out: Path, stage: Callable[[str], None]) -> dict[str, Any]:
    """A corpus file's UIDs (from its header) and whether the library converts it."""
    uids: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        import pydicom

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        uids = {k: str(ds.get(k, "")) for k in ("SeriesInstanceUID", "SOPInstanceUID")}
    try:
        exercise(path, out, stage)
    except Exception:
        return {**uids, "healthy": False}
    return {**uids, "healthy": True}


#: Healthy files for the convert mode are drawn from files up to this size (quick to convert).
HEALTHY_MAX = 600_000


def pick_healthy(
    corpus: Sequence[SeedFile], sources: set[str], limits: Limits, workdir: Path, rng: random.Random
) -> list[SeedFile]:
    """Three corpus files the library converts, in series (and instances) of their own:
    sharing a series with a mutant would let the mutant's failure reach them."""
    facts = _facts([s for s in corpus if s.name in sources], limits, workdir)
    taken = {uid for name in sources for uid in _uids(facts.get(name, {}))}
    others = [s for s in corpus if s.name not in sources and s.path.stat().st_size <= HEALTHY_MAX]
    rng.shuffle(others)
    chosen: list[SeedFile] = []
    for at in range(0, len(others), 12):  # checked a few at a time, until three are found
        chunk = others[at : at + 12]
        facts.update(_facts(chunk, limits, workdir))
        for s in chunk:
            uids = _uids(facts.get(s.name, {}))
            if facts.get(s.name, {}).get("healthy") and not uids & taken and len(chosen) < 3:
                chosen.append(s)
                taken |= uids
        if len(chosen) == 3:
            break
    return chosen


def _facts(files: Sequence[SeedFile], limits: Limits, workdir: Path) -> dict[str, dict[str, Any]]:
    """:func:`check_source` of each file, run in children: {name: facts} of those it ran on."""
    tasks = [Task(-(i + 1), path=s.path, name=s.name) for i, s in enumerate(files)]
    runner = Runner(files, limits, workdir, target=check_source)
    return {o.recipe: o.info for o in runner.run(tasks) if o.kind == "ok"}


def _uids(fact: dict[str, Any]) -> set[str]:
    return {str(fact.get(k)) for k in ("SeriesInstanceUID", "SOPInstanceUID") if fact.get(k)}


@dataclass
class ConvertRun:
    """One ``medeq convert`` run over the folder and what it broke."""

    jobs: int
    exit_code: int | None
    seconds: float
    totals: dict[str, int]
    violations: list[str]
    stderr_tail: str


def run_convert(
    folder: Path, workdir: Path, jobs: int, limits: Limits, healthy: Sequence[Path]
) -> ConvertRun:
    out, report = workdir / f"out-j{jobs}", workdir / f"report-j{jobs}.json"
    cmd = [sys.executable, "-m", "medeq", "convert", str(folder), "-o", str(out)]
    cmd += ["--report", str(report), "--jobs", str(jobs)]
    inputs = sorted(p for p in folder.rglob("*") if p.is_file())
    budget = 60.0 + limits.timeout * len(inputs)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }

    def limit() -> None:
        if limits.memory > 0:
            resource.setrlimit(resource.RLIMIT_AS, (limits.memory, limits.memory))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    started = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=workdir,
        env=env,
        start_new_session=True,
        preexec_fn=limit,
    )
    hung = False
    try:
        _, stderr = proc.communicate(timeout=budget)
    except subprocess.TimeoutExpired:
        hung = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
    seconds = time.monotonic() - started
    violations = [f"did not finish in {budget:.0f} s (killed)"] if hung else []
    violations += check_convert(proc.returncode, stderr, inputs, healthy, out, report, workdir)
    violations = [text.replace(f"{folder}{os.sep}", "") for text in violations]
    totals: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError, AttributeError):
        totals = json.loads(report.read_text()).get("totals", {})
    return ConvertRun(jobs, proc.returncode, round(seconds, 2), totals, violations, stderr[-3000:])


def safe_name(name: str) -> str:
    """A corpus name as a file name (``pydicom:CT_small.dcm`` -> ``pydicom_CT_small.dcm``)."""
    return re.sub(r"[^\w.-]", "_", name)


def _real(path: str | Path, base: Path) -> str:
    p = Path(path)
    return os.path.realpath(p if p.is_absolute() else base / p)


#: How the batch report words a bug of medeq's (a crash) or a process a decoder ended (an
#: abort): the batch isolates both, as it should, but each is still a failure to fix
#: (medeq/_scheduler.py writes these words).
BATCH_CRASH_SIGNS = ("internal error", "worker process died", "ended the process")


def check_convert(
    code: int,
    stderr: str,
    inputs: Sequence[Path],
    healthy: Sequence[Path],
    out: Path,
    report: Path,
    cwd: Path,
) -> list[str]:
    """The batch invariants; each broken one as a sentence."""
    v: list[str] = []
    if code < 0:
        v.append(f"killed by {signal.Signals(-code).name}")
    elif code not in (0, 1):
        v.append(f"exit code {code} (0 or 1 expected)")
    if "Traceback (most recent call last)" in stderr:
        at = stderr.find("Traceback (most recent call last)")
        v.append("traceback on stderr: " + stderr[at : at + 1500])
    if not report.is_file():
        return [*v, "no report written"]
    try:
        rep = json.loads(report.read_text())
    except ValueError as exc:
        return [*v, f"the report is not JSON: {exc}"]
    files = rep.get("files", [])
    entries = {_real(f.get("input", ""), cwd): f for f in files}
    ignored = set()
    for item in rep.get("ignored", []) + rep.get("ignored_not_dicom", []):
        ignored.add(_real(item["path"] if isinstance(item, dict) else item, cwd))
    for path in inputs:
        if _real(path, cwd) not in entries and _real(path, cwd) not in ignored:
            v.append(f"{path.name}: not in the report (neither a file entry nor ignored)")
    failed = False
    for f in files:
        name, status = Path(f.get("input", "?")).name, f.get("status")
        if status not in ("converted", "skipped", "failed"):
            v.append(f"{name}: status {status!r}")
        if status == "failed":
            failed = True
            error = f.get("error") or ""
            if not error:
                v.append(f"{name}: failed without a reason")
            # The batch isolates medeq's own bugs and dying decoders: still crashes.
            if any(sign in error for sign in BATCH_CRASH_SIGNS):
                v.append(f"isolated by the batch, still a failure: {error[:300]}")
        if status == "converted" and not f.get("outputs"):
            v.append(f"{name}: converted but no output listed")
        for output in f.get("outputs", []):
            if not Path(_real(output, cwd)).is_file():
                v.append(f"{name}: output {output} is listed but absent")
    for path in healthy:
        entry = entries.get(_real(path, cwd), {})
        if entry.get("status") != "converted":
            status, error = entry.get("status", "not listed"), entry.get("error") or ""
            v.append(f"healthy {path.name}: {status} {error}".rstrip())
    if out.exists():
        left = [p for p in out.rglob("*") if p.name.endswith(".part") or p.name.startswith(".")]
        v += [f"leftover partial file {p.relative_to(out)}" for p in left]
    if code == 0 and failed:
        v.append("exit code 0 with failed files")
    if code == 1 and not failed and not rep.get("interrupted"):
        v.append("exit code 1 without a failed file")
    return v


def convert_mode(args: argparse.Namespace, corpus: list[SeedFile], limits: Limits) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="medeq-fuzz-convert-"))
    folder = workdir / "in"
    try:
        warm_up(workdir)
        (folder / "mutants").mkdir(parents=True)
        (folder / "healthy").mkdir()
        recipes: dict[str, str] = {}
        builder = Runner(corpus, limits, workdir, target=None)
        tasks = (Task(i, args.seed) for i in range(args.start, args.start + args.count))
        for o in builder.run(tasks):
            if o.mutant is not None:
                name = f"m{o.index}.dcm"
                shutil.move(o.mutant, folder / "mutants" / name)
                recipes[name] = o.recipe
        sources = {r.split(": ", 1)[0] for r in recipes.values()}
        chosen = pick_healthy(corpus, sources, limits, workdir, random.Random(args.seed))
        healthy = []
        for s in chosen:
            target = folder / "healthy" / safe_name(s.name)
            shutil.copyfile(s.path, target)
            healthy.append(target)
        (folder / "notes.txt").write_text("Not DICOM: a text file among the inputs.\n")
        runs = [run_convert(folder, workdir, jobs, limits, healthy) for jobs in (1, 2)]
        if args.keep is not None:
            shutil.copytree(folder, args.keep / "convert-inputs", dirs_exist_ok=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"medeq fuzz --convert: seed {args.seed}, {len(recipes)} mutants, "
        f"{len(healthy)} healthy ({', '.join(s.name for s in chosen)}), 1 text file"
    )
    for run in runs:
        totals = ", ".join(f"{k} {v}" for k, v in run.totals.items() if k != "total")
        state = "invariants hold" if not run.violations else f"{len(run.violations)} violation(s)"
        print(
            f"  --jobs {run.jobs}: exit {run.exit_code} in {run.seconds:.1f} s; {totals}; {state}"
        )
        for text in run.violations:
            print(f"     - {text}")
    named = {n for run in runs for text in run.violations for n in recipes if n in text}
    for name in sorted(named, key=lambda n: int(n[1:-4])):
        print(f"  {name}: {recipes[name]}")
    if len(healthy) < 3:
        print("  (fewer than 3 healthy files found in the corpus)")
    if args.json:
        doc = {
            "mode": "convert",
            "seed": args.seed,
            "mutants": recipes,
            "healthy": [s.name for s in chosen],
            "runs": [run.__dict__ for run in runs],
        }
        args.json.write_text(json.dumps(doc, indent=1))
    return 1 if any(run.violations for run in runs) else 0


# --------------------------------------------------------------------------- atheris mode

#: Share of atheris's mutations that the structural mutators make.
STRUCTURAL_SHARE = 0.3
ARTIFACT_PREFIXES = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")


def have_atheris() -> bool:
    return importlib.util.find_spec("atheris") is not None


def atheris_mode(
    args: argparse.Namespace, corpus: list[SeedFile], limits: Limits, flags: list[str]
) -> int:
    """libFuzzer (fork mode: crashes, timeouts and ooms are noted and the run goes on) in a
    process of its own; then its artifacts are replayed here, in children, and grouped."""
    if not have_atheris():
        print(
            "fuzz: --atheris needs atheris, which is not installed here "
            "(pip install atheris: wheels for CPython 3.10 to 3.13 on Linux x86-64)",
            file=sys.stderr,
        )
        return 2
    if args.grow is None:
        print("fuzz: --atheris needs --grow DIR (the growing corpus)", file=sys.stderr)
        return 2
    grow = args.grow.resolve()
    grow.mkdir(parents=True, exist_ok=True)
    artifacts = (args.keep or grow.with_name(grow.name + "-artifacts")).resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="medeq-fuzz-atheris-"))
    try:
        seeds = workdir / "seeds"
        seeds.mkdir()
        for i, s in enumerate(corpus):
            if 0 < s.path.stat().st_size <= args.max_len:
                (seeds / f"{i:03}-{safe_name(s.name)}").symlink_to(s.path)
        before = {p.name for p in artifacts.iterdir()}
        grown = len(list(grow.iterdir()))
        engine = [sys.executable, str(SCRIPT), "--atheris-engine"]
        engine += [f"--memory={limits.memory}"]  # -timeout below is libFuzzer's
        engine += [
            f"-fork={max(limits.jobs, 1)}",
            "-ignore_crashes=1",
            "-ignore_timeouts=1",
            "-ignore_ooms=1",
            f"-timeout={math.ceil(limits.timeout)}",
            f"-rss_limit_mb={limits.memory >> 20 if limits.memory else 0}",
            f"-max_len={args.max_len}",
            f"-max_total_time={math.ceil(args.max_time)}",
            f"-artifact_prefix={artifacts}/",
            *flags,
            str(grow),
            str(seeds),
        ]
        print("fuzz: " + " ".join(shlex.quote(a) for a in engine), file=sys.stderr)
        started = time.monotonic()
        with contextlib.suppress(KeyboardInterrupt):
            subprocess.run(engine, cwd=workdir, timeout=args.max_time + 300, check=False)
        found = sorted(
            p
            for p in artifacts.iterdir()
            if p.name not in before and p.name.startswith(ARTIFACT_PREFIXES)
        )
        tasks = [Task(-(i + 1), path=p, name=p.name) for i, p in enumerate(found)]
        outcomes = list(Runner(corpus, limits, workdir).run(tasks)) if tasks else []
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = Summary(outcomes, time.monotonic() - started, args.seed)
    now = len(list(grow.iterdir()))
    print(
        f"medeq fuzz --atheris: {now} inputs in {grow} ({now - grown:+} this run), "
        f"{len(found)} new artifact(s) in {artifacts}"
    )
    print("  replayed: " + "  ".join(f"{k} {v}" for k, v in summary.counts.items()))
    for key, members in summary.groups():
        print(f"  [{len(members)}] {key}\n       shortest: {members[0].recipe}")
        print(
            f"       replay:   python tools/fuzz.py --replay-file {artifacts / members[0].recipe}"
        )
    unexplained = [o.recipe for o in outcomes if o.kind not in BAD]
    if unexplained:
        print(
            f"  not reproduced in a child (slow under instrumentation?): {', '.join(unexplained)}"
        )
    if args.json:
        doc = summary_json(summary, limits, [])
        doc.update(mode="atheris", grow=str(grow), artifacts=str(artifacts))
        args.json.write_text(json.dumps(doc, indent=1))
    return 1 if summary.bad else 0


def atheris_engine(limits: Limits) -> NoReturn:
    """The libFuzzer process (and, in fork mode, each of its workers): instruments medeq and
    pydicom, then fuzzes ``exercise``. MedeqErrors are the expected way to refuse a file;
    anything else is a crash for libFuzzer to record."""
    atheris: Any = importlib.import_module("atheris")

    if limits.memory > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory, limits.memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with atheris.instrument_imports(include=["medeq", "pydicom"]):
        import medeq  # noqa: F401
    workdir = Path(tempfile.mkdtemp(prefix="medeq-atheris-"))
    path, out = workdir / "input.dcm", workdir / "out"

    def one_input(data: bytes) -> None:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        path.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                exercise(path, out, lambda s: None)
            except Exception as exc:
                if not _is_medeq_error(exc) or isinstance(exc, MemoryError):
                    raise

    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < STRUCTURAL_SHARE:
            mutated, _ = mutate_once(rng, data)
        else:
            mutated = atheris.Mutate(data, max_size)
        return mutated[:max_size]

    # libFuzzer's fork mode runs argv[0] through the shell to start its workers.
    argv0 = f"{shlex.quote(sys.executable)} {shlex.quote(str(SCRIPT))}"
    atheris.Setup([argv0, *sys.argv[1:]], one_input, custom_mutator=mutator)
    atheris.Fuzz()
    raise SystemExit(0)


# --------------------------------------------------------------------------- command line


def _size(text: str) -> int:
    """``4G``, ``512M``, ``1048576``; 0 means no limit."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tools/fuzz.py",
        description="Fuzz medeq with hostile DICOM files (see docs/fuzzing.md).",
        allow_abbrev=False,  # libFuzzer's -flags must never be taken for ours
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--convert", action="store_true", help="the batch mode: medeq convert")
    mode.add_argument("--atheris", action="store_true", help="coverage-guided (needs atheris)")
    mode.add_argument("--replay", metavar="SEED:INDEX", help="run one mutant and tell all")
    mode.add_argument("--replay-file", type=Path, metavar="PATH", help="run one file as it is")
    mode.add_argument("--atheris-engine", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=1, help="run seed (default %(default)s)")
    p.add_argument("--count", type=int, help="mutants (default 1000; --convert 10)")
    p.add_argument("--start", type=int, default=0, help="first mutant index (default 0)")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds per mutant (20)")
    p.add_argument(
        "--memory", type=_size, default=4 << 30, help="address space per child (4G; 0: none)"
    )
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="children at once")
    p.add_argument(
        "--corpus", type=Path, action="append", metavar="DIR", help="corpus folder (repeatable)"
    )
    p.add_argument("--no-bundled", action="store_true", help="leave pydicom's bundled files out")
    p.add_argument(
        "--max-size", type=int, default=MAX_SIZE, help="largest corpus file, bytes (0: any)"
    )
    p.add_argument(
        "--keep", type=Path, metavar="DIR", help="save failing mutants (and artifacts) here"
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON")
    p.add_argument("--grow", type=Path, metavar="DIR", help="--atheris: the growing corpus folder")
    p.add_argument("--max-time", type=float, default=600.0, help="--atheris: seconds (600)")
    p.add_argument("--max-len", type=int, default=1 << 20, help="--atheris: largest input (1 MiB)")
    p.add_argument("--verbose", action="store_true", help="one line per mutant")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    limits = Limits(args.timeout, args.memory, args.jobs)
    if (REPO / "src" / "medeq").is_dir() and str(REPO / "src") not in sys.path:
        sys.path.insert(0, str(REPO / "src"))  # fuzz this tree's medeq
    if args.atheris_engine:
        atheris_engine(limits)
    flags = [a for a in extra if a != "--"]
    if flags and not args.atheris:
        parser.error(f"unrecognized arguments: {' '.join(flags)}")
    if args.timeout <= 0 or args.jobs < 1:
        parser.error("--timeout must be > 0 and --jobs >= 1")
    corpus = load_corpus(args.corpus, bundled=not args.no_bundled, max_size=args.max_size)
    if not corpus and args.replay_file is None:
        parser.error("the corpus is empty (see --corpus, --max-size)")
    if args.count is None:
        args.count = 10 if args.convert else 1000
    if args.replay or args.replay_file:
        return replay(args, corpus, limits)
    if args.convert:
        return convert_mode(args, corpus, limits)
    if args.atheris:
        return atheris_mode(args, corpus, limits, flags)
    return library_mode(args, corpus, limits)


if __name__ == "__main__":
    sys.exit(main())
