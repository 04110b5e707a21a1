"""Global equalization of a series known only by its slices' value counts.

:func:`medeq.enhance` decodes a series into one volume, normalises it and equalizes it.
A conversion of a big series does the same work without ever holding the volume: each
worker normalises one slice (the same :class:`~medeq.normalize.VoiPlan` for all) and
counts its values (:func:`count_values`); this process adds the counts up and derives one
mapping (:func:`equalize_counted`); then each worker maps its slice again and writes it
(:meth:`CountedEqualization.map`). The outputs, headers and quality figures are
identical to those of :func:`medeq.enhance` on the volume; the tests compare them.

It covers the common case: the global method, one histogram for the series, no mask,
integer modality values (or VOI LUT output) in a span of at most :data:`MAX_SPAN`
levels, no SIGMOID window. Anything else is equalized as a volume.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import _kernels, core
from ._notes import collecting
from .enhance import Method, Quality, default_levels, describe, quality_of
from .normalize import VoiPlan, WindowSpec, invert_values
from .reader import DicomImage, native_little

__all__ = [
    "MAX_SPAN",
    "CountedEqualization",
    "SliceCounts",
    "StoredCounts",
    "count_stored",
    "count_values",
    "counts_through",
    "equalize_counted",
    "stored_countable",
]

#: Slices whose values span more levels than this are equalized as a volume (the mapping
#: has one entry per level and travels to every worker that writes a slice).
MAX_SPAN = 1 << 17


@dataclass(frozen=True)
class SliceCounts:
    """The values of one normalised slice: ``counts[k]`` pixels have value ``lo + k``."""

    lo: int
    hi: int
    counts: NDArray[np.int64]


def count_values(
    values: NDArray[Any], weights: NDArray[np.integer] | None = None
) -> SliceCounts | None:
    """Count the values of one normalised slice; None when they are not countable.

    With ``weights``, ``values[k]`` stands for ``weights[k]`` pixels. Values that are not
    integers, or that span more than :data:`MAX_SPAN` levels, are not counted: the
    series is then equalized as a volume.
    """
    if values.dtype.kind not in "iu" or values.size == 0:
        return None
    lo, hi = int(values.min()), int(values.max())
    if hi - lo >= MAX_SPAN:
        return None
    offsets = (values.astype(np.int64) - lo).ravel()
    if weights is None:
        counts = np.bincount(offsets, minlength=hi - lo + 1).astype(np.int64, copy=False)
    else:
        counts = np.zeros(hi - lo + 1, np.int64)
        np.add.at(counts, offsets, weights.astype(np.int64))
    return SliceCounts(lo, hi, counts)


@dataclass(frozen=True)
class StoredCounts:
    """The stored values of one single-frame image: ``counts[k]`` pixels hold ``values[k]``.

    Only the values present are kept (a CT slice has a few thousand, even when its
    padding value lies far below the rest), with 32-bit counts: a few KiB a slice.
    """

    values: NDArray[Any]
    counts: NDArray[np.uint32]


def stored_countable(image: DicomImage) -> bool:
    """Whether :func:`count_stored` applies: one frame of native 8/16-bit pixel data
    whose place in the file the header read found."""
    info = image.info
    return (
        info.frames == 1
        and info.bits_allocated <= 16
        and image.place is not None
        and native_little(info)
    )


def count_stored(image: DicomImage) -> StoredCounts | None:
    """Count the stored values of a single-frame image whose pixels are read in place.

    A conversion's worker does this without parsing the header again (the native pixel
    data are read from where the header ended); :func:`counts_through` then turns these
    counts into those of the normalised values for any VOI plan, in the process that
    has the header. None (and nothing read) for other images (:func:`stored_countable`),
    which a worker reads, decodes and normalises.
    """
    if not stored_countable(image):
        return None
    stored = image.stored
    image.release()
    # A worker that has not loaded numba's kernels counts with numpy's: loading them
    # costs more than they save on one slice.
    kernels = contextlib.nullcontext() if _kernels.loaded() else _kernels.numpy_kernels()
    with kernels:
        first, counts = _kernels.value_counts(stored, None)
    used = np.flatnonzero(counts)
    return StoredCounts((used + first).astype(stored.dtype), counts[used].astype(np.uint32))


def counts_through(image: DicomImage, plan: VoiPlan, stored: StoredCounts) -> SliceCounts | None:
    """What :func:`count_values` gives for ``plan.values(image)``, from its stored counts.

    The plan maps each stored value on its own (Modality LUT or rescale, VOI LUT), so
    mapping each distinct stored value once and adding up their counts gives the same
    numbers as mapping and counting every pixel. None when :func:`count_values` would
    give None.
    """
    alone = image.with_stored(stored.values.reshape(1, 1, -1))  # one frame: frame 1's rescale
    return count_values(plan.values(alone).ravel(), stored.counts)


@dataclass(frozen=True)
class CountedEqualization:
    """One mapping for a whole series, and what its derived objects record.

    Attributes
    ----------
    plan : VoiPlan
        How each slice's values are normalised before they are mapped.
    invert_span : (float, float)
        The span MONOCHROME1 values are mirrored about.
    mapping : medeq.core.ValueMapping
        Normalised value -> output level.
    header_options : dict
        The arguments of :func:`medeq.derive.derive_header` besides the source image.
    series_uid : str
        The new (0020,000E) Series Instance UID.
    before, after : Quality
        Figures of the normalised series and of the output.
    notes : list of str
        The plan's notes and those made deciding the mapping (a file window that missed
        the data, a constant series), as :attr:`medeq.Derived.notes` has them. Notes made
        normalising each slice (an empty LUT item ignored) are made where that runs.
    """

    plan: VoiPlan
    invert_span: tuple[float, float]
    mapping: core.ValueMapping
    header_options: dict[str, Any]
    series_uid: str
    before: Quality
    after: Quality
    notes: list[str] = field(default_factory=list)

    def window(self) -> tuple[float, float]:
        """(center, width) of the window written to the outputs."""
        lo, hi = self.header_options["value_span"]
        return (lo + hi + 1) / 2, hi - lo + 1

    def map(self, image: DicomImage, values: NDArray[Any]) -> NDArray[Any]:
        """The output levels of one image, from its values as ``plan.values`` gives them."""
        if image.info.photometric == "MONOCHROME1":
            values = invert_values(values, *self.invert_span)
        return self.mapping.apply(values)


def equalize_counted(
    images: Sequence[DicomImage],
    plan: VoiPlan,
    counted: Sequence[SliceCounts],
    *,
    bins: int | None = None,
    window: WindowSpec = "auto",
    levels: int | None = None,
    variant: core.Variant | str = "standard",
    keep_private: bool = True,
) -> CountedEqualization | None:
    """What :func:`medeq.enhance` computes for the series, from its slices' value counts.

    ``counted[i]`` counts the values ``plan.values(images[i])``. The arguments mean what
    they mean for :func:`medeq.enhance` (method "global", no mask, one histogram).
    Returns None where the counts do not decide the result (a single non-empty bin, which
    :func:`medeq.equalize` hands back unchanged) or the plan has a SIGMOID window: the
    caller then equalizes the volume.

    Raises
    ------
    ParameterError
        For a bad argument, as :func:`medeq.enhance`.
    """
    if plan.sigmoid is not None:
        return None
    bins_ = core.check_bins(bins)
    out_levels = core.check_levels(levels) or default_levels(list(images))
    var = core.as_variant(variant)
    with collecting() as notes:
        span = plan.span(
            images, True, float(min(c.lo for c in counted)), float(max(c.hi for c in counted))
        )
    inverted = [im.info.photometric == "MONOCHROME1" for im in images]
    # MONOCHROME1 slices are mirrored about the span: value v becomes lo + hi - v.
    total = int(span.lo + span.hi)
    parts = [
        (total - c.hi, c.counts[::-1]) if inv else (c.lo, c.counts)
        for c, inv in zip(counted, inverted, strict=True)
    ]
    first = min(lo for lo, _ in parts)
    summed = np.zeros(max(lo + c.size for lo, c in parts) - first, np.int64)
    for lo, c in parts:
        summed[lo - first : lo - first + c.size] += c
    nbins = bins_ or int(min(max(span.levels, 1), 65536))
    mapping = core.value_mapping(first, summed, nbins, (span.lo, span.hi), out_levels, var)
    if mapping is None:
        return None
    used = mapping.table[summed > 0]
    header_options, _, _, series_uid = describe(
        list(images),
        method=Method.GLOBAL,
        variant=var,
        bins=bins_,
        nbins=nbins,
        value_range=(span.lo, span.hi),
        voi=span.voi + (", MONOCHROME1 inverted" if any(inverted) else ""),
        window=window,
        mask=None,
        mask_text="none",
        levels=levels,
        out_levels=out_levels,
        per_slice=False,
        clip_limit=0.01,
        kernel_size=None,
        keep_private=keep_private,
        value_span=(int(used.min()), int(used.max())),
    )
    after = np.bincount(mapping.table, weights=summed, minlength=out_levels)
    return CountedEqualization(
        plan=plan,
        invert_span=(span.lo, span.hi),
        mapping=mapping,
        header_options=header_options,
        series_uid=series_uid,
        before=quality_of(mapping.counts),
        after=quality_of(np.rint(after).astype(np.int64)),
        notes=list(dict.fromkeys([*plan.notes, *notes])),
    )
