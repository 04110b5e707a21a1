"""medeq: DICOM-aware contrast enhancement by histogram equalization.

The public names live here; the modules behind them follow the pipeline
(read -> normalise -> core -> write/preview -> convert -> cli).
"""

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
from .mask import foreground_mask
from .normalize import Normalized, Preset, modality_values, normalize
from .reader import DicomImage, ImageInfo, Window, read, read_info
from .series import Series, read_series

__version__ = "0.1.0"

__all__ = [
    "CorruptPixelDataError",
    "DicomError",
    "DicomImage",
    "ImageInfo",
    "MedeqError",
    "Normalized",
    "NotDicomError",
    "OutputError",
    "ParameterError",
    "Preset",
    "Series",
    "SeriesError",
    "UnsupportedImageError",
    "Variant",
    "Window",
    "__version__",
    "equalization_lut",
    "equalize",
    "foreground_mask",
    "histogram",
    "modality_values",
    "normalize",
    "read",
    "read_info",
    "read_series",
]
