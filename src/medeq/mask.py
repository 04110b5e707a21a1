"""Automatic foreground mask: the body or object, without air and collimator borders.

This is what ``mask="auto"`` means. Equalizing with a histogram that is mostly air (CT) or
unexposed collimator border (X-ray) spends most output levels on them; the mask keeps the
histogram to the anatomy.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import ParameterError

__all__ = ["foreground_mask"]

logger = logging.getLogger(__name__)

#: A border row/column is collimator when its spread is below this fraction of the image's.
_FLAT = 0.15
#: Where the threshold sits between the background's peak (0) and Otsu's threshold (1).
_FRACTION = 0.2
# 4-connected cross (what scipy.ndimage.generate_binary_structure(2, 1) gives).
_DISK = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)


def foreground_mask(image: Any) -> NDArray[np.bool_]:
    """Boolean mask of the body or object in an image, volume, DicomImage or Series.

    Steps: one Otsu threshold over all the data (air and background below it); on each
    slice, flat bands along the borders (collimator shutters: nearly constant rows or
    columns) are removed, the largest connected region is kept, and holes in it are
    filled (lungs, bowel gas and dark structures inside the body stay in the mask).

    Parameters
    ----------
    image : (M, N) or (P, M, N) array_like, DicomImage or Series
        Arrays are used as they are; DICOM images are first brought to presentation
        sense (Modality LUT, full range, MONOCHROME1 inverted).

    Returns
    -------
    mask : ndarray of bool, the image's shape
        ``(frames, rows, columns)`` for DICOM input. If nothing stands out (a constant
        image) every pixel is selected.

    Raises
    ------
    ParameterError
        For arrays that are not 2-D or 3-D, empty, or not numeric.
    """
    if hasattr(image, "info") or hasattr(image, "images"):
        from .normalize import normalize

        arr = normalize(image, window="none").array
    else:
        arr = np.asarray(image)
    if arr.dtype.kind not in "iuf" or arr.ndim not in (2, 3) or arr.size == 0:
        raise ParameterError(
            f"image must be a non-empty 2-D or 3-D numeric array, got shape {arr.shape} "
            f"dtype {arr.dtype}"
        )
    volume = arr if arr.ndim == 3 else arr[np.newaxis]
    finite = volume[np.isfinite(volume)] if volume.dtype.kind == "f" else volume
    if finite.size == 0 or finite.min() == finite.max():
        return np.ones(arr.shape, dtype=bool)
    sample = _sample(finite)
    # Padding outside a CT's field of view (one extreme value) would pull the threshold
    # towards itself: leave the extremes out when they are a spike.
    lo, hi = sample.min(), sample.max()
    core = sample[(sample > lo) & (sample < hi)]
    if core.size > sample.size // 4 and core.min() < core.max():
        sample = core
    threshold = _background_threshold(sample)
    spread = float(np.std(sample))
    masks = np.stack([_slice_mask(s, threshold, spread) for s in volume])
    if not masks.any():
        logger.warning("foreground mask found nothing; using every pixel")
        masks[...] = True
    return masks if arr.ndim == 3 else masks[0]


def _background_threshold(sample: NDArray[Any]) -> float:
    """A threshold a fifth of the way from the background's peak to Otsu's threshold.

    Otsu alone splits bright from dark tissue in MR and keeps only part of the body; the
    background (air, direct exposure) is the darkest mode, and a threshold just above its
    peak separates it from the dimmest tissue in CT, MR and X-ray alike.
    """
    from skimage.filters import threshold_otsu

    otsu = float(threshold_otsu(sample))
    below = sample[sample <= otsu]
    counts, edges = np.histogram(below, bins=256)
    peak = float(edges[int(np.argmax(counts))])
    return peak + _FRACTION * (otsu - peak)


def _sample(values: NDArray[Any], limit: int = 4_000_000) -> NDArray[Any]:
    """A regular subsample: Otsu on millions of pixels gains nothing over a few million."""
    flat = values.ravel()
    step = max(1, flat.size // limit)
    return flat[::step]


def _slice_mask(plane: NDArray[Any], threshold: float, spread: float) -> NDArray[np.bool_]:
    from scipy import ndimage

    inside = _inner_box(plane, spread)
    mask = np.zeros(plane.shape, dtype=bool)
    r0, r1, c0, c1 = inside
    region = plane[r0:r1, c0:c1] > threshold
    # Opening breaks thin bright lines (a CT's field-of-view ring, the table's edge) that
    # would otherwise join the body or enclose air that fill-holes then swallows.
    region = ndimage.binary_opening(region, structure=_DISK, iterations=2)
    labels, count = ndimage.label(region)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = labels == int(np.argmax(sizes))
    body = ndimage.binary_dilation(largest, structure=_DISK, iterations=2) & (
        plane[r0:r1, c0:c1] > threshold
    )
    mask[r0:r1, c0:c1] = ndimage.binary_fill_holes(body | largest)
    return mask


def _inner_box(plane: NDArray[Any], spread: float) -> tuple[int, int, int, int]:
    """The rectangle left after peeling nearly constant rows/columns off each border."""
    values = plane.astype(np.float64, copy=False)
    flat = _FLAT * spread
    row_std = values.std(axis=1)
    col_std = values.std(axis=0)
    r0, r1 = _peel(row_std, flat)
    c0, c1 = _peel(col_std, flat)
    if r1 - r0 < plane.shape[0] // 4 or c1 - c0 < plane.shape[1] // 4:
        # Peeling that would leave a sliver means the image is flat, not collimated.
        return 0, plane.shape[0], 0, plane.shape[1]
    return r0, r1, c0, c1


def _peel(std: NDArray[np.float64], flat: float) -> tuple[int, int]:
    lo, hi = 0, std.size
    while lo < hi and std[lo] < flat:
        lo += 1
    while hi > lo and std[hi - 1] < flat:
        hi -= 1
    return lo, hi
