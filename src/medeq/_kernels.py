"""Inner loops of the core: counting bin indices and applying a lookup table.

The core calls only these functions for per-pixel work, so faster implementations can
replace them without touching the formulas in :mod:`medeq.core`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def count(indices: NDArray[np.integer], length: int) -> NDArray[np.int64]:
    """Count how often each value in ``0 .. length-1`` occurs in ``indices``."""
    return np.bincount(indices.ravel(), minlength=length).astype(np.int64, copy=False)


def apply_lut(lut: NDArray[np.generic], indices: NDArray[np.integer]) -> NDArray[np.generic]:
    """Return ``lut[indices]`` with the shape of ``indices``."""
    return np.take(lut, indices)
