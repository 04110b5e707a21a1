"""Derived DICOM objects: a new header from the source's, and atomic writing.

What changes in an output, and why (PS3.3 C.7.6.1, C.12.1, C.11; docs/conformance.md):

- New SOP Instance UID and a new series (UID, number, description); Patient, Study and
  Frame of Reference are kept, since the geometry is unchanged. UIDs are derived from the
  source UIDs and the processing parameters, so a re-run gives the same UIDs.
- Image Type DERIVED\\SECONDARY (other values kept); Derivation Description appended;
  Source Image Sequence (121322) and Contributing Equipment Sequence (109103) items added.
- The pixel module describes the new data (unsigned, MONOCHROME2, Bits Stored for the
  output levels); the values are no longer in physical units, so Rescale Slope 1,
  Intercept 0, Type US; Modality and VOI LUT Sequences are removed and one window showing
  the output range is written. Enhanced multi-frame objects get the same inside their
  functional groups.
- Everything else is copied unchanged (private tags too, unless asked otherwise),
  including the elements a source stores after (7FE0,0010) *Pixel Data*, which the
  header read (it stops at the pixels) does not see: they are read from the file here.
"""

from __future__ import annotations

import copy
import datetime
import enum
import functools
import logging
import math
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import data_element_generator
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, generate_uid
from pydicom.valuerep import DS, IS, format_number_as_ds

from . import _atomic
from ._encode import copy_elements, copy_file_meta, encode_file
from ._filewalk import PIXEL_TAGS, UNDEFINED, Skipper, last_place, resume, skip_file_meta
from ._header import dictionary_entry
from .errors import OutputError, ParameterError
from .reader import DicomImage, logged_warnings

__all__ = [
    "TransferSyntax",
    "derive_header",
    "derived_uid",
    "encode_image",
    "sidecar",
    "write",
    "write_dataset",
    "write_image",
]

logger = logging.getLogger(__name__)

MANUFACTURER = "medeq"
#: (Code Value, Coding Scheme Designator, Code Meaning) of the derivation, in a private
#: coding scheme ("99" prefix, PS3.16 8.2): CID 7203 has no histogram equalization.
DERIVATION_CODE = ("HISTEQ", "99MEDEQ", "Histogram equalization")
#: Constant implementation UID of medeq, derived under pydicom's root.
IMPLEMENTATION_UID = generate_uid(entropy_srcs=["medeq implementation"])

_LOSSY_METHOD = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",
}

# Enhanced MR Pulse Sequence attributes are Type 1C "required if Image Type value 1 is
# ORIGINAL or MIXED, may not be present otherwise" (PS3.3 C.8.13.4): a DERIVED object
# must drop them.
_MR_ORIGINAL_ONLY = (
    "PulseSequenceName",
    "MRAcquisitionType",
    "EchoPulseSequence",
    "MultipleSpinEcho",
    "MultiPlanarExcitation",
    "PhaseContrast",
    "VelocityEncodingAcquisitionSequence",
    "TimeOfFlightContrast",
    "ArterialSpinLabelingContrast",
    "SteadyStatePulseSequence",
    "EchoPlanarPulseSequence",
    "SaturationRecovery",
    "SpectrallySelectedSuppression",
    "OversamplingPhase",
    "GeometryOfKSpaceTraversal",
    "RectilinearPhaseEncodeReordering",
    "SegmentedKSpaceTraversal",
    "CoverageOfKSpace",
    "NumberOfKSpaceTrajectories",
    "BulkMotionCompensationTechnique",
)
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
#: Multi-frame IODs built from functional groups (PS3.3 C.7.6.16).
ENHANCED_CLASSES = frozenset(
    "1.2.840.10008.5.1.4.1.1." + suffix
    for suffix in (
        "2.1",
        "2.2",
        "4.1",
        "4.3",
        "4.4",
        "12.1.1",
        "12.2.1",
        "13.1.1",
        "13.1.2",
        "13.1.3",
        "128.1",
        "128.2",
        "130",
    )
)

# Attributes that describe the source's pixel values and no longer apply to the output.
_STALE = (
    "ModalityLUTSequence",
    "VOILUTSequence",
    "VOILUTFunction",
    "WindowCenterWidthExplanation",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "PlanarConfiguration",
    "IconImageSequence",
    # A Supplemental Palette maps stored values to colour; the values have changed.
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "PaletteColorLookupTableUID",
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "DataSetTrailingPadding",
)


class TransferSyntax(str, enum.Enum):
    """Transfer syntaxes medeq writes (all lossless)."""

    EXPLICIT_LITTLE = "explicit-little"
    RLE = "rle"
    JPEG_LS = "jpeg-ls"
    JPEG2000 = "jpeg2000"

    @property
    def uid(self) -> UID:
        """The transfer syntax UID."""
        return UID(_TS_UID[self])

    @classmethod
    def parse(cls, value: str | TransferSyntax) -> TransferSyntax:
        """Accept a name (``"rle"``) or a UID; raise ParameterError otherwise."""
        if isinstance(value, TransferSyntax):
            return value
        for ts in cls:
            if value in (ts.value, _TS_UID[ts]):
                return ts
        names = ", ".join(repr(t.value) for t in cls)
        raise ParameterError(f"transfer_syntax must be one of {names} (or its UID), got {value!r}")


_TS_UID = {
    TransferSyntax.EXPLICIT_LITTLE: pydicom.uid.ExplicitVRLittleEndian,
    TransferSyntax.RLE: pydicom.uid.RLELossless,
    TransferSyntax.JPEG_LS: pydicom.uid.JPEGLSLossless,
    TransferSyntax.JPEG2000: pydicom.uid.JPEG2000Lossless,
}


def derived_uid(source_uid: str, parameters: str, kind: str) -> str:
    """A UID fixed by the source UID and the processing parameters (same inputs, same UID)."""
    return str(generate_uid(entropy_srcs=[kind, source_uid, parameters]))


def _ds(value: float) -> str:
    """A DS value that fits 16 characters."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return format_number_as_ds(float(value))


def _entry(keyword: str) -> tuple[int, str]:
    """Tag and dictionary VR of a keyword medeq itself sets (always a public one)."""
    entry = dictionary_entry(keyword)
    assert entry is not None, keyword
    return entry


def _put(ds: Dataset, keyword: str, value: Any) -> None:
    """``setattr(ds, keyword, value)`` for one value medeq made itself, five times faster.

    The element is built as pydicom converts it (UI a UID, DS and IS their number
    types) and stored without pydicom's per-set lookups and validation, which cost
    about 10 us an element, a third of deriving a header. It always has the dictionary's
    VR: setattr would keep the VR of the element it replaces, and a source that stores,
    say, Window Center as US or IS cannot hold the window medeq computes (127.5). A
    replaced element keeps its length encoding, as with setattr. Dates and times go
    through setattr when ``pydicom.config.datetime_conversion`` asks pydicom to convert
    them. Only for public keywords, and single values or sequences.
    """
    tag, vr = _entry(keyword)
    if vr in ("DA", "TM", "DT") and pydicom.config.datetime_conversion:
        setattr(ds, keyword, value)
        return
    replaced = ds._dict.get(tag)  # type: ignore[call-overload]
    if isinstance(replaced, RawDataElement):
        undefined = replaced.length == UNDEFINED
    else:
        undefined = bool(replaced is not None and replaced.is_undefined_length)
    if vr == "UI":
        value = UID(value)
    elif vr == "DS" and isinstance(value, str):
        value = DS(value)
    elif vr == "IS" and isinstance(value, int | np.integer | str):
        value = IS(value if isinstance(value, str) else int(value))
    element = DataElement(tag, vr, value, is_undefined_length=undefined, already_converted=True)
    ds._dict[element.tag] = element


def _code(value: str, meaning: str, scheme: str = "DCM") -> Dataset:
    item = Dataset()
    _put(item, "CodeValue", value)
    _put(item, "CodingSchemeDesignator", scheme)
    _put(item, "CodeMeaning", meaning)
    return item


def output_bits(levels: int) -> tuple[int, int]:
    """(Bits Allocated, Bits Stored) for ``levels`` output levels."""
    stored = max(1, math.ceil(math.log2(levels)))
    return (8 if stored <= 8 else 16), stored


# --------------------------------------------------------------------------- after the pixels


def _copyable(tag: int) -> bool:
    """Not command/meta groups, group lengths, pixel data (7FE0), padding or delimiters."""
    group = tag >> 16
    return group >= 0x0008 and tag & 0xFFFF != 0 and group not in (0x7FE0, 0xFFFC, 0xFFFE)


def trailing_elements(source: DicomImage) -> list[DataElement | RawDataElement]:
    """Top-level elements stored after the pixel data of a file source.

    A header read with ``stop_before_pixels`` never sees them (vendors put private
    groups there). The file is walked element by element, each value stepped over by its
    length (the pixel data's fragments too), and only what follows the pixel data is
    parsed; a source that is a Dataset already holds them, and gives none here. Elements
    of group 7FE0, (FFFC,FFFC) *Data Set Trailing Padding* and group lengths are left
    out. A file that cannot be walked gives what could be read, and a debug log line.
    """
    stored = getattr(source, "_source", None)
    if isinstance(stored, Dataset):
        return []
    found: list[DataElement | RawDataElement] = []
    try:
        if isinstance(stored, bytes):
            fp: BinaryIO = BytesIO(stored)
        elif source.info.path:
            fp = open(source.info.path, "rb")  # noqa: SIM115 - closed by the with below
        else:
            return []
        with fp:
            for element in _after_pixels(fp, source):
                if _copyable(element.tag):
                    found.append(element)
    except Exception as exc:  # a malformed or changed file: keep what was read
        logger.debug("%s: elements after (7FE0,0010) Pixel Data not read: %s", source.name, exc)
    return found


def _after_pixels(fp: BinaryIO, source: DicomImage) -> Iterator[DataElement | RawDataElement]:
    implicit, little = source.dataset.original_encoding
    if implicit is None or little is None:
        return
    walker = Skipper(fp, implicit=implicit, little=little)
    if source.info.transfer_syntax == pydicom.uid.DeflatedExplicitVRLittleEndian:
        skip_file_meta(fp)
        walker.fp = fp = BytesIO(zlib.decompress(fp.read(), -zlib.MAX_WBITS))
    elif not resume(walker, last_place(source.dataset, implicit)):
        skip_file_meta(fp)
    found = walker.find(PIXEL_TAGS)
    if found is None:
        return  # no pixel data: the header read saw every element
    walker.skip(found[2], found[3])
    charset = source.dataset.get("SpecificCharacterSet") or "ISO_IR 6"
    for raw in data_element_generator(fp, implicit, little, encoding=convert_encodings(charset)):
        truncated = (
            isinstance(raw, RawDataElement)
            and raw.length != UNDEFINED
            and raw.value is not None
            and len(raw.value) < raw.length
        )
        if truncated:
            return  # the file ends inside this value
        yield raw


def derive_header(
    source: DicomImage,
    *,
    levels: int,
    value_span: tuple[int, int],
    description: str,
    parameters: str,
    series_uid: str,
    series_number: int,
    series_suffix: str = "EQ",
    keep_private: bool = True,
    now: datetime.datetime | None = None,
) -> Dataset:
    """The header of the derived object for one source image (no pixel data yet).

    Parameters
    ----------
    source : DicomImage
        The source; its dataset is deep-copied, never modified.
    levels : int
        Output levels (2 to 65536): sets Bits Allocated/Stored and High Bit.
    value_span : (int, int)
        Lowest and highest output value used: the written window covers exactly these.
    description : str
        What was done, appended to (0008,2111) Derivation Description.
    parameters : str
        Canonical parameter text; with the source UIDs it fixes the new UIDs.
    series_uid, series_number : str, int
        The new series (shared by every output of one source series).
    """
    # pydicom warns when it re-validates odd source values (an invalid UID copied into
    # Referenced SOP Instance UID); the source's flaws are not ours to fix.
    with logged_warnings(source.name):
        src = source.dataset
        ds = _copy_header(src)
        # The output is explicit VR little endian. Elements read from such a source are
        # written back byte for byte; any other source encoding is re-encoded by pydicom's
        # writer, which needs the original encoding forgotten.
        if tuple(src.original_encoding) != (False, True):
            ds.set_original_encoding(None, None)
        for element in trailing_elements(source):
            if element.tag not in ds:
                ds[element.tag] = element
        now = now or datetime.datetime.now().astimezone()
        for tag in _stale_tags():
            if tag in ds._dict:
                del ds[tag]
        # Pixel data and what describes its encoding (Extended Offset Table) are rewritten.
        for tag in [t for t in ds._dict if t >> 16 == 0x7FE0]:
            del ds[tag]
        if str(ds.get("PixelPresentation") or "") in ("COLOR", "MIXED"):
            ds.PixelPresentation = "MONOCHROME"
        if source.info.sop_class_uid == ENHANCED_MR:
            for keyword in _MR_ORIGINAL_ONLY:
                if keyword in ds:
                    del ds[keyword]
        _drop_nested_images(ds)
        if not keep_private:
            ds.remove_private_tags()

        bits_allocated, bits_stored = output_bits(levels)
        _put(ds, "SamplesPerPixel", 1)
        _put(ds, "PhotometricInterpretation", "MONOCHROME2")
        _put(ds, "BitsAllocated", bits_allocated)
        _put(ds, "BitsStored", bits_stored)
        _put(ds, "HighBit", bits_stored - 1)
        _put(ds, "PixelRepresentation", 0)
        if "PresentationLUTShape" in ds:
            _put(ds, "PresentationLUTShape", "IDENTITY")

        lo, hi = value_span
        center, width = (lo + hi + 1) / 2, hi - lo + 1
        has_groups = (
            "SharedFunctionalGroupsSequence" in ds or "PerFrameFunctionalGroupsSequence" in ds
        )
        enhanced = has_groups or source.info.sop_class_uid in ENHANCED_CLASSES
        if has_groups:
            for name in (
                "RescaleSlope",
                "RescaleIntercept",
                "RescaleType",
                "WindowCenter",
                "WindowWidth",
            ):
                if name in ds:
                    del ds[name]
            _update_functional_groups(ds, center, width)
        else:
            if "RescaleSlope" in src or "RescaleIntercept" in src or source.info.modality == "CT":
                _put(ds, "RescaleIntercept", "0")
                _put(ds, "RescaleSlope", "1")
                _put(ds, "RescaleType", "US")
            _put(ds, "WindowCenter", _ds(center))
            _put(ds, "WindowWidth", _ds(width))
            _put(ds, "WindowCenterWidthExplanation", "EQUALIZED")

        image_type = _values(src.get("ImageType"))
        ds.ImageType = ["DERIVED", _second_value(image_type, source, enhanced), *image_type[2:]]
        text = _derivation_text(_earlier_description(src), description)
        frames = list(range(1, source.info.frames + 1))
        if has_groups:
            # Enhanced objects record the derivation per frame, in the Derivation Image
            # functional group (C.7.6.16.2.6); their IODs have no top-level place for it.
            for name in ("DerivationDescription", "SourceImageSequence"):
                if name in ds:
                    del ds[name]
            _set_derivation_group(ds, text, source)
            # Earlier evidence listed the source's own sources, no longer referenced.
            ds.SourceImageEvidenceSequence = _source_evidence(source)
        else:
            _put(ds, "DerivationDescription", text)
            _put(ds, "SourceImageSequence", DicomSequence([_source_reference(source, frames)]))

        equipment = Dataset()
        _put(
            equipment,
            "PurposeOfReferenceCodeSequence",
            DicomSequence([_code("109103", "Modifying Equipment")]),
        )
        _put(equipment, "Manufacturer", MANUFACTURER)
        _put(equipment, "SoftwareVersions", _version())
        _put(equipment, "ContributionDateTime", now.strftime("%Y%m%d%H%M%S.%f%z"))
        _put(equipment, "ContributionDescription", "Histogram equalization")
        _put(
            ds,
            "ContributingEquipmentSequence",
            DicomSequence([*(src.get("ContributingEquipmentSequence") or []), equipment]),
        )

        ts = source.info.transfer_syntax
        if ts in _LOSSY_METHOD and str(src.get("LossyImageCompression") or "") != "01":
            ds.LossyImageCompression = "01"
            ds.LossyImageCompressionMethod = _LOSSY_METHOD[ts]

        instance_uid = derived_uid(source.info.sop_instance_uid, parameters, "instance")
        _put(ds, "SOPInstanceUID", instance_uid)
        _put(ds, "SeriesInstanceUID", series_uid)
        _put(ds, "SeriesNumber", series_number)
        base = "\\".join(_values(src.get("SeriesDescription"))).strip()
        _put(ds, "SeriesDescription", (f"{base} {series_suffix}" if base else series_suffix)[-64:])
        _put(ds, "InstanceCreationDate", now.strftime("%Y%m%d"))
        _put(ds, "InstanceCreationTime", now.strftime("%H%M%S"))

        meta = FileMetaDataset()
        _put(meta, "MediaStorageSOPClassUID", source.info.sop_class_uid)
        _put(meta, "MediaStorageSOPInstanceUID", instance_uid)
        _put(meta, "TransferSyntaxUID", pydicom.uid.ExplicitVRLittleEndian)
        _put(meta, "ImplementationClassUID", IMPLEMENTATION_UID)
        _put(meta, "ImplementationVersionName", f"MEDEQ_{_version()}"[:16])
        ds.file_meta = meta
        return ds


def _copy_header(src: Dataset) -> Dataset:
    """A deep copy of ``src`` that shares what cannot change (:func:`copy_elements`).

    0.15 ms for a CT header, where pickling every decoded element took 0.26 ms.
    """
    ds = copy.copy(src)
    ds._dict = copy_elements(src._dict)
    ds._private_blocks = {}
    return ds


@functools.lru_cache(maxsize=1)
def _stale_tags() -> tuple[int, ...]:
    return tuple(_entry(keyword)[0] for keyword in _STALE)


def _earlier_description(src: Dataset) -> str:
    """The source's own Derivation Description, top-level or in its functional groups."""
    text = str(src.get("DerivationDescription") or "").strip()
    if text:
        return text
    for group in _groups(src)[:2]:  # the shared item, else the first frame's
        for item in group.get("DerivationImageSequence") or []:
            text = str(item.get("DerivationDescription") or "").strip()
            if text:
                return text
    return ""


def _derivation_text(earlier: str, description: str) -> str:
    """``description`` after any earlier text, within the 1024 characters of ST."""
    text = f"{earlier}; {description}" if earlier else description
    if len(text) > 1024:
        keep = 1024 - len(description) - 5
        text = (f"{earlier[:keep]}...; {description}" if keep > 0 else description)[:1024]
    return text


def _source_reference(source: DicomImage, frames: list[int]) -> Dataset:
    """A Source Image Sequence item: the source (and its frames), purpose 121322."""
    reference = Dataset()
    _put(reference, "ReferencedSOPClassUID", source.info.sop_class_uid)
    _put(reference, "ReferencedSOPInstanceUID", source.info.sop_instance_uid)
    if source.info.frames > 1:
        reference.ReferencedFrameNumber = frames
    _put(
        reference,
        "PurposeOfReferenceCodeSequence",
        DicomSequence([_code("121322", "Source image for image processing operation")]),
    )
    _put(reference, "SpatialLocationsPreserved", "YES")
    return reference


def _set_derivation_group(ds: Dataset, text: str, source: DicomImage) -> None:
    """Write the Derivation Image functional group: shared, or per frame if it was so.

    Its (0008,9215) Derivation Code Sequence is Type 1, and CID 7203 has no code for
    histogram equalization, so a code of medeq's private scheme is used.
    """

    def macro(frames: list[int]) -> DicomSequence:
        item = Dataset()
        item.DerivationDescription = text
        value, scheme, meaning = DERIVATION_CODE
        item.DerivationCodeSequence = DicomSequence([_code(value, meaning, scheme)])
        item.SourceImageSequence = DicomSequence([_source_reference(source, frames)])
        return DicomSequence([item])

    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    # A macro sits in the shared item or in every per-frame item, never both.
    if per_frame and all("DerivationImageSequence" in group for group in per_frame):
        for number, group in enumerate(per_frame, start=1):
            group.DerivationImageSequence = macro([number])
        return
    for group in per_frame:
        if "DerivationImageSequence" in group:
            del group.DerivationImageSequence
    frames = list(range(1, source.info.frames + 1))
    ds.SharedFunctionalGroupsSequence[0].DerivationImageSequence = macro(frames)


def _source_evidence(source: DicomImage) -> DicomSequence:
    """(0008,9154) Source Image Evidence Sequence: the source, by study and series.

    It lists every instance the derivation functional groups reference, here the one
    source; the enhanced image modules require it (Type 1C) once they reference any.
    """
    sop = Dataset()
    sop.ReferencedSOPClassUID = source.info.sop_class_uid
    sop.ReferencedSOPInstanceUID = source.info.sop_instance_uid
    series = Dataset()
    series.SeriesInstanceUID = source.info.series_instance_uid
    series.ReferencedSOPSequence = DicomSequence([sop])
    study = Dataset()
    study.StudyInstanceUID = source.info.study_instance_uid
    study.ReferencedSeriesSequence = DicomSequence([series])
    return DicomSequence([study])


def _values(value: Any) -> list[str]:
    """The values of a string element: a single value is a ``str``, not a list of letters."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _second_value(values: list[str], source: DicomImage, enhanced: bool) -> str:
    """Image Type value 2: SECONDARY, except where the IOD enumerates PRIMARY only.

    NM (PS3.3 C.8.4.6.1.1) and the enhanced multi-frame IODs (C.8.16.1) allow only
    PRIMARY there, so the source's value is kept.
    """
    if source.info.modality == "NM" or enhanced:
        return values[1] if len(values) > 1 else "PRIMARY"
    return "SECONDARY"


def _drop_nested_images(ds: Dataset) -> None:
    """Remove top-level elements whose sequences carry encapsulated pixel data.

    Vendors keep compressed thumbnails of the source inside private sequences; they show
    the source, not the output, and encapsulated data is illegal once the object is
    written in a native transfer syntax.
    """
    doomed = []
    for tag, raw in list(ds._dict.items()):
        # Only sequences are looked into (converting every element costs more than the
        # rest of the header work): explicit SQ, or anything of undefined length. Decoded
        # here, a sequence's items are encoded afresh, in explicit VR: some writers put
        # implicit VR items in explicit VR files, and copying their bytes would carry
        # them into the output.
        if not (raw.VR == "SQ" or raw.VR is None or raw.VR == "UN"):
            continue
        element = ds[tag]
        if element.VR == "SQ" and _holds_encapsulated(element.value):
            doomed.append(tag)
    for tag in doomed:
        del ds[tag]


def _holds_encapsulated(items: DicomSequence) -> bool:
    for item in items:
        for element in item:
            if element.tag == 0x7FE00010 and (
                element.is_undefined_length or _is_encapsulated(element.value)
            ):
                return True
            if element.VR == "SQ" and _holds_encapsulated(element.value):
                return True
    return False


def _is_encapsulated(value: Any) -> bool:
    return isinstance(value, bytes) and value[:4] == b"\xfe\xff\x00\xe0"


def _version() -> str:
    from . import __version__

    return __version__


def _groups(ds: Dataset) -> list[Dataset]:
    shared = list(ds.get("SharedFunctionalGroupsSequence") or [])
    return [*shared, *(ds.get("PerFrameFunctionalGroupsSequence") or [])]


def _update_functional_groups(ds: Dataset, center: float, width: float) -> None:
    """Rescale, window and frame type inside the functional groups of enhanced objects."""
    if not ds.get("SharedFunctionalGroupsSequence"):
        ds.SharedFunctionalGroupsSequence = DicomSequence([Dataset()])
    shared = ds.SharedFunctionalGroupsSequence[0]
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    for macro, fill in (
        ("PixelValueTransformationSequence", _fill_rescale),
        ("FrameVOILUTSequence", lambda item: _fill_window(item, center, width)),
    ):
        # A macro sits either in the shared group or in every per-frame group, never both.
        holders = [g for g in per_frame if macro in g] or [shared]
        for group in holders:
            if not group.get(macro):
                setattr(group, macro, DicomSequence([Dataset()]))
            fill(group[macro].value[0])
    for group in _groups(ds):
        for element in group:
            if element.keyword.endswith("FrameTypeSequence") and element.value:
                item = element.value[0]
                if "FrameType" in item:
                    item.FrameType = ["DERIVED", *_values(item.FrameType)[1:]]
                if str(item.get("PixelPresentation") or "") in ("COLOR", "MIXED"):
                    item.PixelPresentation = "MONOCHROME"


def _fill_rescale(item: Dataset) -> None:
    item.RescaleIntercept = "0"
    item.RescaleSlope = "1"
    item.RescaleType = "US"


def _fill_window(item: Dataset, center: float, width: float) -> None:
    for name in ("VOILUTFunction", "WindowCenterWidthExplanation"):
        if name in item:
            del item[name]
    item.WindowCenter = _ds(center)
    item.WindowWidth = _ds(width)
    item.WindowCenterWidthExplanation = "EQUALIZED"


# --------------------------------------------------------------------------- writing


def with_pixels(header: Dataset, pixels: NDArray[Any], transfer_syntax: TransferSyntax) -> Dataset:
    """A shallow copy of ``header`` carrying ``pixels``, encoded in ``transfer_syntax``."""
    ds = copy.copy(header)
    ds.file_meta = copy_file_meta(header.file_meta)
    frames = pixels.shape[0]
    dtype = np.uint8 if int(header.BitsAllocated) == 8 else np.dtype("<u2")
    data = np.ascontiguousarray(pixels, dtype=dtype)
    ds.PixelData = data.tobytes()
    ds["PixelData"].VR = "OB" if int(header.BitsAllocated) == 8 else "OW"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    if "NumberOfFrames" in header or frames > 1:
        ds.NumberOfFrames = frames
    if transfer_syntax is not TransferSyntax.EXPLICIT_LITTLE:
        arr = data if frames > 1 else data[0]
        try:
            ds.compress(transfer_syntax.uid, arr, generate_instance_uid=False)
        except Exception as exc:  # encoder plugins raise many types
            raise OutputError(f"cannot encode as {transfer_syntax.uid.name}: {exc}") from exc
    return ds


def write_dataset(
    ds: Dataset,
    path: Path,
    *,
    overwrite: bool = True,
) -> Path:
    """Write a complete dataset to ``path`` atomically (DICOM file format)."""
    _write_bytes(path, _encoded(ds, path), overwrite)
    return path


def _encoded(ds: Dataset, path: Path) -> bytes:
    """The DICOM file of ``ds``; pydicom's warnings are logged against ``path``."""
    # Values copied from the source (an invalid UID) make pydicom warn again.
    with logged_warnings(str(path)):
        return encode_file(ds)


def _write_bytes(path: Path, data: bytes, overwrite: bool) -> None:
    _atomic.atomic_write(path, lambda f: f.write(data), overwrite=overwrite)


def source_names(images: Sequence[DicomImage]) -> list[str]:
    """Output file names for a series: the source's file names, made unique."""
    names: list[str] = []
    seen: set[str] = set()
    for i, im in enumerate(images):
        stem = Path(im.info.path).stem if im.info.path else im.info.sop_instance_uid or f"{i}"
        name = f"{stem}.dcm"
        n = 1
        while name in seen:
            n += 1
            name = f"{stem}_{n}.dcm"
        seen.add(name)
        names.append(name)
    return names


def write(
    derived: Any,
    path: str | os.PathLike[str],
    *,
    transfer_syntax: TransferSyntax | str = "explicit-little",
    preview: bool = False,
    overwrite: bool = True,
) -> list[Path]:
    """Write a derived image or series as DICOM, each file atomically.

    Parameters
    ----------
    derived : Derived
        The result of :func:`medeq.enhance`.
    path : path
        For one image: the output file (or a folder, existing or ending in "/", to put
        it in, named after the source). For a series: the folder; each file is named
        after its source.
    transfer_syntax : {"explicit-little", "rle", "jpeg-ls", "jpeg2000"} or a UID
        Explicit VR Little Endian (default) or a lossless compressed syntax.
    preview : bool
        Also write an 8-bit JPEG beside each DICOM file (same name, ``.jpg``; see
        :func:`sidecar`), rendered through the written window.
    overwrite : bool
        Replace existing files (default); with False an existing output is an error.

    Returns
    -------
    list of Path
        The DICOM files written, in slice order.

    Raises
    ------
    OutputError
        When a file cannot be written, exists (``overwrite=False``), or would replace a
        source file.
    ParameterError
        For an unknown transfer syntax.
    """
    ts = TransferSyntax.parse(transfer_syntax)
    target = Path(path)
    sources: list[DicomImage] = derived.sources
    folder = target.is_dir() or str(path).endswith(("/", os.sep))
    if len(sources) == 1 and not folder:
        files = [target]
    else:
        files = [target / name for name in source_names(sources)]
    inputs = {Path(s.info.path).resolve() for s in sources if s.info.path}
    for f in files:
        if f.resolve() in inputs:
            raise OutputError(f"{f}: refusing to write over a source file")
    window = derived.window() if preview else None
    for index, f in enumerate(files):
        write_image(
            derived.headers[index],
            derived.image_pixels(index),
            f,
            transfer_syntax=ts,
            overwrite=overwrite,
            preview_window=window,
        )
    return files


def sidecar(path: Path, extension: str) -> Path:
    """The path of a file that sits beside a DICOM file (``x.dcm`` -> ``x.jpg``).

    DICOM files are often named without an extension or after a UID ("1.2.840..."), so
    only a DICOM extension is replaced; other names get the extension appended.
    """
    if path.suffix.lower() in (".dcm", ".dicom", ".ima"):
        return path.with_suffix(extension)
    return path.with_name(path.name + extension)


def write_image(
    header: Dataset,
    pixels: NDArray[Any],
    path: Path,
    *,
    transfer_syntax: TransferSyntax = TransferSyntax.EXPLICIT_LITTLE,
    overwrite: bool = True,
    preview_window: tuple[float, float] | None = None,
) -> list[Path]:
    """Write one derived image (and, given its window, its JPEG preview) atomically.

    Returns the files written: the DICOM file, then the preview if any.
    """
    return encode_image(
        header,
        pixels,
        path,
        transfer_syntax=transfer_syntax,
        overwrite=overwrite,
        preview_window=preview_window,
    )()


def encode_image(
    header: Dataset,
    pixels: NDArray[Any],
    path: Path,
    *,
    transfer_syntax: TransferSyntax = TransferSyntax.EXPLICIT_LITTLE,
    overwrite: bool = True,
    preview_window: tuple[float, float] | None = None,
) -> Callable[[], list[Path]]:
    """:func:`write_image` in two steps: encode the DICOM file now, write it later.

    Returns the second step, which writes the file and the preview (if any) and returns
    their paths. That step spends its time where Python lets other threads run (writing
    files, the preview's table lookup and JPEG encoding): a conversion in one process
    runs it on a thread while it prepares the next image.
    """
    ds = with_pixels(header, pixels, transfer_syntax)
    try:
        data = _encoded(ds, path)
    except Exception as exc:  # pydicom's writer raises many types on odd values
        raise OutputError(f"{path}: cannot write DICOM: {exc}") from exc

    def finish() -> list[Path]:
        _write_bytes(path, data, overwrite)
        written = [path]
        if preview_window is not None:
            from .preview import save_preview

            jpeg = sidecar(path, ".jpg")
            save_preview(pixels, preview_window, jpeg, overwrite=overwrite)
            written.append(jpeg)
        return written

    return finish
