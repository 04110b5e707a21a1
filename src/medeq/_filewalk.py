"""Step over the encoded elements of a DICOM file by their lengths (PS3.5 7.1, 7.5).

The reader uses it to find native pixel data without parsing the header again, the
writer to find the elements stored after the pixel data.
"""

from __future__ import annotations

import io
import os
import struct
from typing import BinaryIO, cast

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

__all__ = [
    "LONG_VRS",
    "PIXEL_DATA",
    "PIXEL_TAGS",
    "TRANSFER_SYNTAX",
    "UNDEFINED",
    "BoundedReader",
    "Place",
    "Skipper",
    "last_place",
    "resume",
    "skip_file_meta",
]

PIXEL_DATA = 0x7FE00010
TRANSFER_SYNTAX = 0x00020010
UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
#: Where a header read with ``stop_before_pixels`` stops.
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
#: Explicit VRs with a 4-byte length (PS3.5 Table 7.1-1), as pydicom lists them: the
#: reader, the walker and the encoder take them from here.
LONG_VRS = frozenset(str(vr).encode() for vr in EXPLICIT_VR_LENGTH_32)


class BoundedReader(io.BufferedReader):
    """A file opened for binary reading whose reads never ask for more than it holds.

    A length field of a damaged file can say 4 GB in a file of 4 KB; pydicom (and
    Python's own ``read(n)``) allocate the ``n`` bytes asked for before reading, so such
    a file would cost 4 GB of memory, or a MemoryError, to find out it is short. Reads
    here ask for what is left in the file at most, and come back short as usual.
    """

    def __init__(self, path: str | os.PathLike[str], mode: str = "rb") -> None:
        if mode != "rb":
            raise ValueError(f"BoundedReader reads only ('rb'), not {mode!r}")
        raw = io.FileIO(os.fspath(path), "rb")
        try:
            self._size = os.fstat(raw.fileno()).st_size
            super().__init__(raw)
        except BaseException:
            raw.close()
            raise

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all that is left for None or a negative size)."""
        # Only large requests are cut: asking where the file is costs a system call,
        # and a small request allocates little whatever is left.
        if size is not None and size > _SMALL_READ:
            size = min(size, max(self._size - self.tell(), 0))
        return super().read(size)


#: Reads up to this size go to the file as asked (see :meth:`BoundedReader.read`).
_SMALL_READ = 1 << 20


class Skipper:
    """Steps over encoded elements by their lengths, reading no value (PS3.5 7.1, 7.5)."""

    def __init__(self, fp: BinaryIO, *, implicit: bool, little: bool) -> None:
        self.fp = fp
        self.implicit = implicit
        self.order = "<" if little else ">"

    def header(self) -> tuple[int, bytes | None, int] | None:
        """(tag, explicit VR or None, value length) of the next element; None at the end."""
        data = self.fp.read(8)
        if len(data) < 8:
            return None
        group, element = struct.unpack(self.order + "HH", data[:4])
        vr = data[4:6]
        # Items and delimiters carry no VR; some writers switch to implicit VR inside
        # explicit data, which shows as a "VR" that is not two capital letters.
        if group == 0xFFFE or self.implicit or not (vr.isalpha() and vr.isupper()):
            return group << 16 | element, None, struct.unpack(self.order + "L", data[4:])[0]
        if vr in LONG_VRS:
            return group << 16 | element, vr, struct.unpack(self.order + "L", self.fp.read(4))[0]
        return group << 16 | element, vr, struct.unpack(self.order + "H", data[6:])[0]

    def skip(self, vr: bytes | None, length: int) -> None:
        """Step over a value; one of undefined length is a run of items up to a delimiter."""
        if length != UNDEFINED:
            self.fp.seek(length, os.SEEK_CUR)
            return
        # An undefined-length UN value is encoded in implicit VR little endian (PS3.5 6.2.2).
        inner = Skipper(self.fp, implicit=True, little=True) if vr == b"UN" else self
        while True:
            item = inner.header()
            if item is None or item[0] not in (_ITEM, _SEQUENCE_END):
                raise ValueError("undefined-length value without its sequence delimiter")
            tag, _, item_length = item
            if tag == _SEQUENCE_END:
                return
            if item_length != UNDEFINED:
                self.fp.seek(item_length, os.SEEK_CUR)
                continue
            while True:
                nested = inner.header()
                if nested is None:
                    raise ValueError("undefined-length item without its delimiter")
                if nested[0] == _ITEM_END:
                    break
                inner.skip(nested[1], nested[2])

    def find(self, tags: frozenset[int]) -> tuple[int, int, bytes | None, int] | None:
        """Step over elements up to the first whose tag is in ``tags``.

        Returns its offset in the file, tag, VR and value length, with the file left at
        its value; None at the end of the file.
        """
        while True:
            start = self.fp.tell()
            element = self.header()
            if element is None:
                return None
            tag, vr, length = element
            if tag in tags:
                return start, tag, vr, length
            self.skip(vr, length)


def skip_file_meta(fp: BinaryIO) -> bytes | None:
    """Leave ``fp`` at the start of the data set: past the preamble and group 0002.

    Returns the bytes of (0002,0010) *Transfer Syntax UID* on the way (None if absent).
    """
    if fp.read(132)[128:] != b"DICM":
        fp.seek(0)
    meta = Skipper(fp, implicit=False, little=True)
    syntax = None
    while True:
        start = fp.tell()
        element = meta.header()
        if element is None or element[0] >> 16 != 0x0002:
            fp.seek(start)
            return syntax
        tag, vr, length = element
        if tag == TRANSFER_SYNTAX and vr is not None and length < 256:
            syntax = fp.read(length)
            continue
        meta.skip(vr, length)


#: Where a file's element sits: (tag, offset of the element, offset past its value).
Place = tuple[int, int, int]


def last_place(header: Dataset, implicit: bool) -> Place | None:
    """The place in the file of the last element of ``header`` that still knows it.

    Elements not yet converted keep their place in the file and their length: the end of
    the last one read is where the pixel data starts (or close before it).
    """
    # The last few suffice: past them, walking from the start costs no more.
    for tag in reversed(list(header.keys())[-8:]):
        # keep_deferred: an element whose value was not read (a length that lies made
        # pydicom defer it, or an item delimiter read as an element) must not be
        # converted here; pydicom's annotation omits that get_item returns raw elements.
        raw = cast(DataElement | RawDataElement, header.get_item(tag, keep_deferred=True))
        if (
            not isinstance(raw, RawDataElement)
            or raw.length == UNDEFINED
            or raw.value_tell is None
            or int(tag) >> 16 == 0xFFFE
        ):
            continue
        long_length = not implicit and str(raw.VR).encode() in LONG_VRS
        return int(tag), raw.value_tell - (12 if long_length else 8), raw.value_tell + raw.length
    return None


def resume(walker: Skipper, place: Place | None) -> bool:
    """Seek past the element at ``place``, once the tag found there confirms it.

    That spares walking the whole header again; False when the place is unknown or the
    file holds something else there.
    """
    if place is None:
        return False
    tag, start, end = place
    walker.fp.seek(start)
    if walker.fp.read(4) != struct.pack(walker.order + "HH", tag >> 16, tag & 0xFFFF):
        return False
    walker.fp.seek(end)
    return True
