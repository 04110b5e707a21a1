"""Read a DICOM file's header, up to its pixel data, faster than pydicom's reader.

``pydicom.dcmread(path, stop_before_pixels=True)`` spends 3-4 us of Python on every
element (a CT header has 250-300); this reader about 1.2 us.
:func:`read_header` makes the same dataset, the same ``RawDataElement`` values at the
same file offsets, the same file meta, encoding and file attributes, from one buffer and
one ``struct`` unpack an element. It takes only the plain layout: a preamble with
'DICM', a file meta group in explicit VR little endian with a Transfer Syntax UID, and a
little-endian data set whose elements before the pixel data have known VRs and defined
lengths, or are sequences of undefined length (parsed by pydicom's own sequence reader,
as pydicom's reader does). Anything else (no preamble, a command set, big endian,
deflated data, an undefined-length UN or private element, an element cut short by the
end of the file, a data set not in its transfer syntax's VR encoding) returns None, and
the caller reads the file with pydicom. The tests compare both readers on every test
file.
"""

from __future__ import annotations

import functools
import math
import re
import struct
from typing import Any, BinaryIO

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_description, dictionary_VR, tag_for_keyword
from pydicom.dataelem import (
    DataElement,
    RawDataElement,
    convert_raw_data_element,
    empty_value_for_VR,
)
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import read_sequence
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    PrivateTransferSyntaxes,
)
from pydicom.valuerep import VR
from pydicom.values import convert_string

from ._filewalk import LONG_VRS, PIXEL_TAGS, UNDEFINED, BoundedReader

__all__ = [
    "dictionary_entry",
    "file_text",
    "finite_number",
    "header_value",
    "read_header",
    "tag_name",
    "whole_number",
]

#: The first read: most headers end within it; a longer one is read on in bigger steps.
FIRST_READ = 1 << 16
_CHARSET = 0x00080005
_ITEM_END = 0xFFFEE00D
_GROUP_LENGTH, _TRANSFER_SYNTAX = 0x00020000, 0x00020010
#: Known VRs as they appear in the file, mapped to the str pydicom gives them: those
#: with a 16-bit length and those with a 32-bit one.
_SHORT_VRS = {v.value.encode(): str(v.value) for v in VR if v.value.encode() not in LONG_VRS}
_LONG_VRS = {v.value.encode(): str(v.value) for v in VR if v.value.encode() in LONG_VRS}
_FIRST_PIXELS = min(PIXEL_TAGS)
#: The tags met so far, as pydicom's tag objects (made once each, not once an element);
#: at most _TAGS_KEPT of them.
_TAGS: dict[int, BaseTag] = {}
_TAGS_KEPT = 1 << 16
#: RawDataElement's fields, in order; elements are made as tuples of them (without the
#: namedtuple's Python-level constructor) while pydicom's class has exactly these.
_FIELDS = (
    "tag",
    "VR",
    "length",
    "value",
    "value_tell",
    "is_implicit_VR",
    "is_little_endian",
    "is_raw",
    "is_buffered",
)
_raw_element: Any = (
    functools.partial(tuple.__new__, RawDataElement)
    if RawDataElement._fields == _FIELDS
    else lambda fields: RawDataElement(*fields)
)
_explicit = struct.Struct("<HH2sH").unpack_from
_implicit = struct.Struct("<HHL").unpack_from
_length32 = struct.Struct("<L").unpack_from
#: Transfer syntaxes whose data sets pydicom reads other than as explicit VR little endian.
_NOT_EXPLICIT_LITTLE = frozenset((ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian))


class _Buffer:
    """The bytes of a file from its start, read on demand."""

    def __init__(self, fp: BinaryIO) -> None:
        self.fp = fp
        self.data = fp.read(FIRST_READ)
        self.eof = len(self.data) < FIRST_READ

    def has(self, end: int) -> bool:
        """Whether the file has bytes up to ``end`` (reading on as needed)."""
        while end > len(self.data) and not self.eof:
            want = max(end - len(self.data), len(self.data))
            self.fp.seek(len(self.data))
            more = self.fp.read(want)
            self.eof = len(more) < want
            self.data += more
        return end <= len(self.data)


def read_header(path: str) -> FileDataset | None:
    """The file's header as ``dcmread(path, stop_before_pixels=True)`` reads it.

    None when the file is not laid out as this reader expects (see the module's text),
    and for any damage this reader meets on the way: pydicom then reads the file and
    says what it makes of it (a read that fails fails again there). ``OSError`` when
    the file cannot be opened.
    """
    with BoundedReader(path) as fp:
        try:
            return _read_header(path, fp)
        except Exception:
            # pydicom's sequence reader raises OSError, struct.error, ValueError... on
            # damaged items: the file is left to pydicom's reader, the reference.
            return None


def _read_header(path: str, fp: BinaryIO) -> FileDataset | None:
    buf = _Buffer(fp)
    if not buf.has(132) or buf.data[128:132] != b"DICM":
        return None
    meta = _elements(buf, 132, implicit=False, meta=True)
    if meta is None:
        return None
    meta_elements, pos = meta
    file_meta = _file_meta(meta_elements)
    if file_meta is None:
        return None
    syntax = _transfer_syntax(file_meta)
    if syntax is None or syntax in _NOT_EXPLICIT_LITTLE or syntax in PrivateTransferSyntaxes:
        return None
    implicit = syntax == ImplicitVRLittleEndian
    if not buf.has(pos + 8):
        return None  # no data set: pydicom's odd cases are its own
    group = buf.data[pos] | buf.data[pos + 1] << 8
    if group == 0 or _looks_explicit(buf.data, pos) == implicit:
        return None  # a command set, or a data set not in its transfer syntax
    found = _elements(buf, pos, implicit=implicit, meta=False)
    if found is None:
        return None
    elements, _ = found
    dataset = Dataset(elements, parent_encoding=default_encoding)
    encoding: str | list[str] = default_encoding
    charset = elements.get(BaseTag(_CHARSET))
    if isinstance(charset, RawDataElement):  # as pydicom's read_dataset decides it
        encoding = convert_encodings(convert_raw_data_element(charset).value)
    dataset.set_original_encoding(implicit, True, encoding)
    ds = FileDataset(path, dataset, buf.data[:128], file_meta, implicit, True)
    ds.set_original_encoding(implicit, True, dataset._character_set)
    return ds


def _file_meta(elements: dict[BaseTag, RawDataElement | DataElement]) -> FileMetaDataset | None:
    """The file meta group, with the elements decoded that pydicom's reader decodes.

    None when its lowest element cannot be decoded as explicit VR (pydicom then reads
    the group again as implicit VR).
    """
    meta = FileMetaDataset(elements)
    meta.set_original_encoding(False, True, default_encoding)
    if elements:
        try:
            meta[min(elements)]
        except NotImplementedError:
            return None
    for tag in (_GROUP_LENGTH, _TRANSFER_SYNTAX):
        if tag in elements:
            meta[tag]
    return meta


def _transfer_syntax(meta: FileMetaDataset) -> str | None:
    """The Transfer Syntax UID as pydicom's reader takes it; None if absent or not a UI."""
    elem = meta._dict.get(BaseTag(_TRANSFER_SYNTAX))
    if elem is None or elem.VR != "UI":
        return None
    value = meta.get("TransferSyntaxUID")
    return value if isinstance(value, str) and value else None


def _is_sequence(tag: int, vr: str | None) -> bool:
    """Whether an undefined-length element is a sequence this reader parses as pydicom would.

    Explicit VR says so; an implicit VR element must be a sequence in the dictionary.
    UN, private tags and the like are left to pydicom's own rules.
    """
    if vr is not None:
        return vr == "SQ"
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:  # private: pydicom looks at what follows
        return False


def _looks_explicit(data: bytes, pos: int) -> bool:
    """Whether the element at ``pos`` has two capital letters where an explicit VR goes."""
    return 0x40 < data[pos + 4] < 0x5B and 0x40 < data[pos + 5] < 0x5B


def _elements(
    buf: _Buffer, pos: int, *, implicit: bool, meta: bool
) -> tuple[dict[BaseTag, RawDataElement | DataElement], int] | None:
    """The elements from ``pos`` on: the file meta group, or the data set up to its pixels.

    Returns them and the offset after the last, or None for a layout left to pydicom.
    """
    elements: dict[BaseTag, RawDataElement | DataElement] = {}
    data = buf.data
    end = len(data)
    short_vrs, long_vrs, raw, tags = _SHORT_VRS, _LONG_VRS, _raw_element, _TAGS
    vr: str | None = None
    while True:
        if pos + 12 > end:  # near the end of what is read so far: read on
            buf.has(pos + 12)
            data, end = buf.data, len(buf.data)
            if pos + 8 > end:
                return (elements, pos) if pos == end else None
        start = pos + 8
        if implicit:
            group, number, length = _implicit(data, pos)
        else:
            group, number, code, length = _explicit(data, pos)
            vr = short_vrs.get(code)
            if vr is None:
                vr = long_vrs.get(code)
                if vr is None:
                    # An unknown VR: the data set's first element (judged later) or a
                    # layout left to pydicom.
                    return (elements, pos) if (meta and group != 2) else None
                if start + 4 > end:
                    return None
                (length,) = _length32(data, start)
                start += 4
        if meta and group != 2:
            return elements, pos
        tag = group << 16 | number
        if tag >= _FIRST_PIXELS or length == UNDEFINED:
            if tag in PIXEL_TAGS:
                return elements, pos
            if tag == _ITEM_END:
                return None
            if length == UNDEFINED:
                if meta or not _is_sequence(tag, vr):
                    return None
                # As pydicom does: the items are parsed now; they say where they end.
                buf.fp.seek(start)
                sq = BaseTag(tag)
                items = read_sequence(buf.fp, implicit, True, length, _encoding(elements))
                elements[sq] = DataElement(sq, "SQ", items, start, is_undefined_length=True)
                pos = buf.fp.tell()
                continue
        stop = start + length
        if stop > end:
            if not buf.has(stop):
                return None  # cut short: pydicom warns or raises
            data, end = buf.data, len(buf.data)
        key = tags.get(tag)
        if key is None:
            key = BaseTag(tag)
            if len(tags) < _TAGS_KEPT:
                tags[tag] = key
        value = data[start:stop] if length else empty_value_for_VR(vr, raw=True)
        elements[key] = raw((key, vr, length, value, start, implicit, True, True, False))
        pos = stop


def _encoding(elements: dict[BaseTag, RawDataElement | DataElement]) -> str | list[str]:
    """The character set of the elements read so far, as pydicom's reader tracks it."""
    elem = elements.get(BaseTag(_CHARSET))
    if not isinstance(elem, RawDataElement):
        return default_encoding
    return convert_encodings(convert_string(elem.value or b"", True))


# --------------------------------------------------------------------------- values

_INTEGER = re.compile(r" *[+-]?\d+ *")
_DECIMAL = re.compile(r" *[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)? *")


def header_value(ds: Dataset, keyword: str) -> Any:
    """``ds.get(keyword)``, decoded straight from the file's bytes where that is simple.

    pydicom spends 15-25 us on each element it decodes (the data set's bookkeeping, the
    conversion, validation). Reading an image's info takes some 25 of them. Still
    undecoded little-endian elements of the VRs below, with the VR the dictionary gives,
    are decoded here to the same values as Python numbers, lists of numbers and strings:
    US and SS (one value), IS and DS (plain numbers, one or more), CS and UI (one value).
    Every other element, and any value that does not look plain (empty, multi-valued
    strings, NaN, IS written as a decimal), goes to pydicom, which decodes, validates and
    warns as it always does. The element itself stays undecoded in ``ds``. Values decoded
    here are not validated: a UID with a leading zero comes back as it is, without the
    warning pydicom would log.
    """
    entry = dictionary_entry(keyword)
    if entry is None:
        return ds.get(keyword)
    tag, vr = entry
    elem = ds._dict.get(tag)
    if not isinstance(elem, RawDataElement) or not elem.is_little_endian:
        return ds.get(keyword)
    data = elem.value
    value = _decode(vr, data) if data and elem.VR in (None, vr) else None
    return ds.get(keyword) if value is None else value


@functools.cache
def dictionary_entry(keyword: str) -> tuple[BaseTag, str] | None:
    """The tag and dictionary VR of a public keyword (None for others), looked up once."""
    tag = tag_for_keyword(keyword)
    return None if tag is None else (BaseTag(tag), dictionary_VR(tag))


def _decode(vr: str, data: bytes) -> Any:
    """The value of a plain element, or None to leave it to pydicom."""
    if vr == "US" or vr == "SS":
        return int.from_bytes(data, "little", signed=vr == "SS") if len(data) == 2 else None
    if vr == "CS" or vr == "UI":
        text = data.decode("iso8859").rstrip(" \0")
        if vr == "UI":
            text = text.strip()  # pydicom's UID strips white space at both ends
        return None if not text or "\\" in text else text
    if vr == "IS" or vr == "DS":
        parts = data.decode("iso8859").rstrip(" \0").split("\\")
        pattern, kind, longest = (_INTEGER, int, 12) if vr == "IS" else (_DECIMAL, float, 16)
        if not all(len(part) <= longest and pattern.fullmatch(part) for part in parts):
            return None  # over-long values: pydicom's rules (and its warning)
        numbers = [kind(part) for part in parts]
        return numbers[0] if len(numbers) == 1 else numbers
    return None


# --------------------------------------------------------------------------- checked values


def whole_number(value: Any) -> int | None:
    """``value`` as an int if it is one whole number, else None.

    One whole number is an int, a finite float without a fraction, or text that reads as
    one of these (IS and DS values pydicom could not convert come back as text). Lists
    of one value are that value; anything else (several values, NaN, "abc") is None.
    """
    if type(value) is int:  # the usual case, as header_value decodes US and IS
        return value
    value = _single(value)
    if value is None:
        return None
    if isinstance(value, int):
        return int(value)
    number = finite_number(value)
    if number is None or not number.is_integer():
        return None
    return int(number)


def _single(value: Any) -> Any:
    """The one value of ``value`` (a list of one is that value); None for several values
    or a bool (True is no number of a header)."""
    if isinstance(value, (list, tuple, MultiValue)):
        if len(value) != 1:
            return None
        value = value[0]
    return None if isinstance(value, bool) else value


def finite_number(value: Any) -> float | None:
    """``value`` as a finite float (from a number or its text), else None."""
    if type(value) is float:  # the usual case, as header_value decodes DS
        return value if math.isfinite(value) else None
    value = _single(value)
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("iso8859")
    try:
        # Python's int() refuses text over 4300 digits: such text is no number here.
        number = float(value.strip(" \0") if isinstance(value, str) else value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def tag_name(keyword: str) -> str:
    """A tag as messages name it: ``(0028,0010) Rows``."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        return keyword
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {dictionary_description(tag)}"


def file_text(ds: Dataset, keyword: str, longest: int = 40) -> str:
    """The value of ``ds``'s element as messages show it: quoted, as the file gives it.

    An element not yet decoded shows its bytes as text (``'1e308'``, not the 309-digit
    number pydicom makes of it); a decoded one its value. Long values are cut.
    """
    entry = dictionary_entry(keyword)
    elem = ds._dict.get(entry[0]) if entry is not None else None
    raw = elem.value if isinstance(elem, RawDataElement) else None
    text = raw.decode("iso8859", "replace").rstrip(" \0") if isinstance(raw, bytes) else ""
    # Implicit VR elements carry no VR: the dictionary's says whether the bytes are text.
    vr = (elem.VR or entry[1]) if isinstance(elem, RawDataElement) and entry else None
    if not isinstance(raw, bytes) or vr not in _TEXT_VRS or not text.isprintable():
        try:  # binary values as pydicom decodes them
            value = ds.get(keyword)
            many = isinstance(value, (list, MultiValue))
            text = "\\".join(map(str, value)) if many else str(value)
        except Exception:
            text = raw.hex(" ") if isinstance(raw, bytes) else "?"
    return repr(text if len(text) <= longest else text[: longest - 3] + "...")


#: VRs whose bytes are text: shown as the file has them.
_TEXT_VRS = frozenset(
    ["AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "SH", "ST", "TM", "UI"]
)
