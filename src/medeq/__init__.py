"""medeq: DICOM-aware contrast enhancement by histogram equalization.

The public names live here; the modules behind them follow the pipeline
(read -> normalise -> core -> write/preview -> convert -> cli). Heavy optional
machinery (numba for CLAHE, scikit-image and scipy for the foreground mask, matplotlib
for figures) loads on first use, so `import medeq` and the worker processes of
`medeq convert` stay quick.
"""

import gc as _gc

# Importing medeq (numpy, pydicom and its codecs) makes some 40,000 objects
# that live as long as the process; the collections during the imports walk them
# again and again (about 15 ms). Collections resume once medeq is imported.
_collecting = _gc.isenabled()
_gc.disable()

try:
    from .clahe import clahe
    from .convert import FileResult, Report, Status, convert
    from .core import Variant, equalization_lut, equalize, histogram
    from .enhance import Derived, Method, Quality, enhance
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
    from .preview import plot_comparison, preview
    from .reader import DicomImage, ImageInfo, Window, read, read_info
    from .series import Series, read_series
    from .writer import TransferSyntax, write
finally:
    if _collecting:
        _gc.enable()

__version__ = "0.1.0"

__all__ = [
    "CorruptPixelDataError",
    "Derived",
    "DicomError",
    "DicomImage",
    "FileResult",
    "ImageInfo",
    "MedeqError",
    "Method",
    "Normalized",
    "NotDicomError",
    "OutputError",
    "ParameterError",
    "Preset",
    "Quality",
    "Report",
    "Series",
    "SeriesError",
    "Status",
    "TransferSyntax",
    "UnsupportedImageError",
    "Variant",
    "Window",
    "__version__",
    "clahe",
    "convert",
    "enhance",
    "equalization_lut",
    "equalize",
    "foreground_mask",
    "histogram",
    "modality_values",
    "normalize",
    "plot_comparison",
    "preview",
    "read",
    "read_info",
    "read_series",
    "write",
]
