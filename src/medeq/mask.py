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

from ._notes import note
from .errors import ParameterError

__all__ = ["foreground_mask"]

logger = logging.getLogger(__name__)

#: A border row/column is collimator when its spread is below this fraction of the image's.
_FLAT = 0.15
#: Where the threshold sits between the background's peak (0) and Otsu's threshold (1).
_FRACTION = 0.2
#: Connected regions at least this fraction of the largest one's area are all kept.
_KEEP = 0.1
#: A shutter band starts this far from the threshold (0) towards the brightest values
#: (1, the 99.9th percentile): behind a shutter the detector sees the least exposure.
_BRIGHT = 0.8
#: A rise (as a fraction of threshold..brightest) that ends a shutter band's ramp. After
#: smoothing, grain is far below it, while anatomy past the band's edge soon rises more;
#: a larger tolerance lets a ramp run on into anatomy that darkens away from the border.
_RISE = 0.01
#: The fraction of the lines along a border that a shutter band must cross.
_ALONG = 0.9
#: Values farther from zero than this are taken relative to their minimum (see _near_zero).
_FAR = float(2**24)
# 4-connected cross (what scipy.ndimage.generate_binary_structure(2, 1) gives).
_DISK = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)


def foreground_mask(image: Any) -> NDArray[np.bool_]:
    """Boolean mask of the body or object in an image, volume, DicomImage or Series.

    Steps: one Otsu threshold over all the data (air and background below it); on each
    slice, collimator shutters along the borders are removed (flat bands: nearly constant
    rows or columns; and bright bands that fall away from the border in a ramp, crossing
    at least 90% of it), every connected region at least a tenth as large as the largest
    is kept (the tiles of a mosaic, two legs), and holes are filled (lungs, bowel gas and
    dark structures inside the body stay in the mask).

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
    volume, finite = _near_zero(volume, finite)
    sample = _sample(finite)
    # Padding outside a CT's field of view (one extreme value) would pull the threshold
    # towards itself: leave the extremes out when they are a spike.
    lo, hi = sample.min(), sample.max()
    core = sample[(sample > lo) & (sample < hi)]
    if core.size > sample.size // 4 and core.min() < core.max():
        sample = core
    threshold = _background_threshold(sample)
    spread = float(np.std(sample))
    top = float(np.percentile(sample, 99.9))
    masks = np.stack([_slice_mask(s, threshold, spread, top) for s in volume])
    if not masks.any():
        masks[...] = True
        what = _named(image)
        if what is None:
            logger.warning("foreground mask found nothing; using every pixel")
        else:  # a choice made for a file: its report entry says so
            note(f"{what}: the automatic foreground mask found nothing: every pixel is used")
    return masks if arr.ndim == 3 else masks[0]


def _named(image: Any) -> str | None:
    """How a note names a DicomImage or Series (None for arrays, which have no file)."""
    images = getattr(image, "images", None)
    if images is None:
        return getattr(image, "name", None)
    if len(images) == 1:
        return str(images[0].name)
    return f"the {len(images)} images of series {images[0].info.series_instance_uid}"


def _near_zero(volume: NDArray[Any], finite: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any]]:
    """The values relative to their minimum, when they lie far from zero.

    scikit-image's Otsu counts integers in one bin per level from zero (values near 1e15
    would need petabytes), and 256 histogram bins cannot be told apart over a narrow span
    far from zero. A mask does not depend on where the values lie, only on their order
    and spacing; values within :data:`_FAR` of zero (every real image's) are left as
    they are, so their masks stay what they were.
    """
    lo, hi = finite.min(), finite.max()
    if max(abs(float(lo)), abs(float(hi))) <= _FAR:
        return volume, finite
    if volume.dtype.kind in "iu" and int(hi) - int(lo) <= _FAR:
        # Exact, and still one bin per level.
        return volume.astype(np.int64) - int(lo), finite.astype(np.int64) - int(lo)
    return volume.astype(np.float64) - float(lo), finite.astype(np.float64) - float(lo)


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


def _slice_mask(
    plane: NDArray[Any], threshold: float, spread: float, top: float
) -> NDArray[np.bool_]:
    from scipy import ndimage

    inside = _inner_box(plane, spread)
    mask = np.zeros(plane.shape, dtype=bool)
    r0, r1, c0, c1 = inside
    above = plane[r0:r1, c0:c1] > threshold
    if top > threshold:
        # On the whole plane: a shutter starts at the image's border, and peeling may
        # have taken its brightest, flat part and left a ramp that no longer looks it.
        bands = _shutter_bands(
            plane, threshold + _BRIGHT * (top - threshold), _RISE * (top - threshold)
        )
        above &= ~bands[r0:r1, c0:c1]
    # Opening breaks thin bright lines (a CT's field-of-view ring, the table's edge) that
    # would otherwise join the body or enclose air that fill-holes then swallows.
    region = ndimage.binary_opening(above, structure=_DISK, iterations=2)
    labels, count = ndimage.label(region)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    # Not only the largest region: a mosaic (MR slices packed as tiles in one image), two
    # legs or two hands are several bodies. Labels, markers and specks of noise are far
    # smaller than the largest region and still go.
    keep = sizes >= _KEEP * sizes.max()
    keep[0] = False
    kept = keep[labels]
    body = ndimage.binary_dilation(kept, structure=_DISK, iterations=2) & above
    mask[r0:r1, c0:c1] = ndimage.binary_fill_holes(body | kept)
    return mask


def _shutter_bands(plane: NDArray[Any], bright: float, rise: float) -> NDArray[np.bool_]:
    """Collimator bands along the borders that are not flat: a ramp or a blurred edge.

    A shutter stops the beam, so the detector behind it records the least exposure of the
    image: in presentation sense a band as bright as the brightest values, which the
    penumbra and scatter turn into a ramp that falls away from the border. Seen from a
    border, each line across such a band starts bright and never rises by more than
    ``rise`` before the band ends. Anatomy fails that along almost every line, so a band
    must span the whole border: its width is what 90% of the lines reach (a straight
    edge parallel to the border), and no line loses more than its own ramp, so a body
    that comes closer to the border on some lines is never cut.
    """
    from scipy import ndimage

    # Smoothing keeps noise and grain from ending a ramp early.
    size = max(3, min(plane.shape) // 100)
    bands = np.zeros(plane.shape, dtype=bool)
    # A smoothed border value is a mean of pixels less than ``size`` from the border: when
    # none of them is bright there is no band (CT, MR, most fluoroscopy), and no filtering.
    strips = (plane[:size], plane[-size:], plane[:, :size], plane[:, -size:])
    if max(float(strip.max()) for strip in strips) < bright:
        return bands
    smooth = ndimage.uniform_filter(plane.astype(np.float32), size=size)
    for turns in range(4):
        # Rotated views put each border at column 0; writing into ``side`` writes ``bands``.
        # A band wider than half the image would be the image, not a band.
        lines = np.rot90(smooth, turns)
        lines = lines[:, : lines.shape[1] // 2]
        side = np.rot90(bands, turns)[:, : lines.shape[1]]
        starts = lines[:, 0] >= bright
        if starts.mean() < _ALONG:
            continue
        lowest = np.minimum.accumulate(lines, axis=1)
        ends = lines > lowest + rise
        runs = np.where(ends.any(axis=1), ends.argmax(axis=1), lines.shape[1])
        runs[~starts] = 0
        width = int(np.percentile(runs, 100 * (1 - _ALONG)))
        if width > 0:
            reach = np.minimum(runs, width)
            side |= np.arange(lines.shape[1])[np.newaxis, :] < reach[:, np.newaxis]
    return bands


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
