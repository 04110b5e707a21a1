"""medeq: DICOM-aware contrast enhancement by histogram equalization.

The public names live here; the modules behind them follow the pipeline
(read -> normalise -> core -> write/preview -> convert -> cli).
"""

from .clahe import clahe
from .core import Variant, equalization_lut, equalize, histogram
from .errors import (
    CorruptPixelDataError,
    DicomError,
    MedeqError,
    NotDicomError,
    OutputError,
    ParameterError,
    SeriesError,
    UnsupportedImageError,
)

__version__ = "0.1.0"

__all__ = [
    "CorruptPixelDataError",
    "DicomError",
    "MedeqError",
    "NotDicomError",
    "OutputError",
    "ParameterError",
    "SeriesError",
    "UnsupportedImageError",
    "Variant",
    "__version__",
    "clahe",
    "equalization_lut",
    "equalize",
    "histogram",
]
