"""The exceptions medeq raises.

Every error medeq raises on purpose derives from :class:`MedeqError`, so callers
(and the command line) can catch the library's own failures and let real bugs show
their traceback. Each subclass also derives from the builtin that fits it, so a
plain ``except ValueError`` keeps working::

    MedeqError(Exception)
     ├── ParameterError(ValueError)          a bad argument: names the parameter and value
     ├── DicomError(ValueError)              a DICOM input medeq cannot use
     │    ├── NotDicomError                  not DICOM at all (empty, text, truncated header)
     │    ├── UnsupportedImageError          valid DICOM, but not a grey-scale image medeq takes
     │    └── CorruptPixelDataError          pixel data missing, short, too long, or undecodable
     ├── SeriesError(ValueError)             slices that do not form one volume
     └── OutputError(OSError)                an output that cannot or may not be written

Messages name the file, the DICOM tag or the parameter, the bad value, and what would be
accepted.
"""

from __future__ import annotations

__all__ = [
    "CorruptPixelDataError",
    "DicomError",
    "MedeqError",
    "NotDicomError",
    "OutputError",
    "ParameterError",
    "SeriesError",
    "UnsupportedImageError",
]


class MedeqError(Exception):
    """Base class of every error medeq raises on purpose."""


class ParameterError(MedeqError, ValueError):
    """An argument has a value (or type) medeq does not accept."""


class DicomError(MedeqError, ValueError):
    """A DICOM input medeq cannot use."""


class NotDicomError(DicomError):
    """The input is not a readable DICOM object (empty, not DICOM, truncated header)."""


class UnsupportedImageError(DicomError):
    """Valid DICOM, but not an image medeq equalizes (colour, non-image, odd pixel module)."""


class CorruptPixelDataError(DicomError):
    """Pixel data that is missing, shorter or longer than the header says, or undecodable."""


class SeriesError(MedeqError, ValueError):
    """Slices that cannot be stacked into one volume (mixed sizes, duplicates, gaps)."""


class OutputError(MedeqError, OSError):
    """An output that cannot be written, or may not be (it exists, or it is an input)."""
