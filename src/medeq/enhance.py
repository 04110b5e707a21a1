"""Equalize a DICOM image or series into a derived object (not yet written).

:func:`enhance` runs the pipeline: normalise (Modality LUT, VOI, MONOCHROME1), optional
foreground mask, the core equalizer (or CLAHE), then builds the derived headers and the
quality figures. :func:`medeq.write` writes the result.
"""

from __future__ import annotations

import enum
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydicom.dataset import Dataset

from . import core
from ._notes import collecting
from .derive import derive_header, output_series_uid
from .errors import ParameterError
from .normalize import Normalized, Preset, WindowSpec, normalize, parse_window
from .reader import DicomImage, Window

__all__ = ["Derived", "Method", "Quality", "enhance"]


class Method(str, enum.Enum):
    """Equalization method: one global mapping, or contrast-limited adaptive (CLAHE)."""

    GLOBAL = "global"
    CLAHE = "clahe"


@dataclass(frozen=True)
class Quality:
    """Figures of one histogram, all computed over the (masked) pixels.

    Attributes
    ----------
    entropy : float
        Shannon entropy of the level histogram, in bits.
    rms_contrast : float
        Standard deviation of the intensities scaled to [0, 1].
    uniformity : float
        Distance of the histogram from a flat one: the largest gap between its cumulative
        distribution and the uniform one (Kolmogorov-Smirnov), 0 for perfectly flat.
    """

    entropy: float
    rms_contrast: float
    uniformity: float

    def as_dict(self) -> dict[str, float]:
        """The figures as a plain dict, rounded for reports."""
        return {k: round(float(v), 6) for k, v in self.__dict__.items()}


def quality_of(counts: NDArray[np.integer]) -> Quality:
    """Quality figures of a histogram whose bins are equally spaced levels."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        return Quality(0.0, 0.0, 1.0)
    p = c / total
    nz = p[p > 0]
    entropy = float(-(nz * np.log2(nz)).sum())
    position = np.arange(c.size) / max(c.size - 1, 1)
    mean = float((p * position).sum())
    rms = math.sqrt(max(float((p * (position - mean) ** 2).sum()), 0.0))
    uniform = np.arange(1, c.size + 1) / c.size
    ks = float(np.abs(np.cumsum(p) - uniform).max())
    return Quality(entropy, rms, ks)


@dataclass
class Derived:
    """The result of :func:`enhance`: new pixels and headers, quality figures, parameters.

    Attributes
    ----------
    sources : list of DicomImage
        The source images, in slice order.
    headers : list of pydicom.dataset.Dataset
        The derived header of each source image (pixel data is added when written),
        built on first use from ``header_options``.
    header_options : dict
        The arguments of :func:`medeq.derive.derive_header` besides the source image,
        so that headers can also be built where the files are written.
    pixels : (frames, rows, columns) ndarray of uint8 or uint16
        Equalized values in ``[0, levels - 1]``, all frames of all images.
    levels : int
        Number of output levels.
    normalized : Normalized
        What the equalizer was given (for figures and checks).
    mask : ndarray of bool or None
        The mask the histogram was built from.
    parameters : dict
        The processing parameters, as written to reports.
    description : str
        The text added to (0008,2111) Derivation Description.
    series_uid : str
        The new (0020,000E) Series Instance UID.
    before, after : Quality
        Figures of the normalised input and of the output.
    notes : list of str
        What medeq repaired, assumed or chose while equalizing (an empty LUT item
        ignored, a file window that missed the data, a constant image), each naming the
        file or series, the tag and the value; see :mod:`medeq._notes`.
    """

    sources: list[DicomImage]
    header_options: dict[str, Any]
    pixels: NDArray[Any]
    levels: int
    normalized: Normalized
    mask: NDArray[np.bool_] | None
    parameters: dict[str, Any]
    description: str
    series_uid: str
    before: Quality
    after: Quality
    frame_counts: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _headers: list[Dataset] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.sources)

    def __repr__(self) -> str:
        return (
            f"<Derived {len(self.sources)} image(s), {self.pixels.shape[0]} frame(s), "
            f"{self.levels} levels: {self.description}>"
        )

    @property
    def headers(self) -> list[Dataset]:
        """The derived header of each source image."""
        if self._headers is None:
            # What deriving fills in or leaves out (a missing Patient ID) is noted too.
            with collecting() as notes:
                self._headers = [derive_header(im, **self.header_options) for im in self.sources]
            self.notes.extend(n for n in notes if n not in self.notes)
        return self._headers

    @property
    def dataset(self) -> Dataset:
        """The header of the first (usually only) image."""
        return self.headers[0]

    def image_pixels(self, index: int) -> NDArray[Any]:
        """The ``(frames, rows, columns)`` pixels of image ``index``."""
        start = sum(self.frame_counts[:index])
        return self.pixels[start : start + self.frame_counts[index]]

    def window(self) -> tuple[float, float]:
        """(center, width) of the window written to the outputs."""
        lo, hi = int(self.pixels.min()), int(self.pixels.max())
        return (lo + hi + 1) / 2, hi - lo + 1

    def as_dict(self) -> dict[str, Any]:
        """Parameters, UIDs and quality figures, for JSON reports."""
        return {
            "parameters": self.parameters,
            "description": self.description,
            "series_uid_in": self.sources[0].info.series_instance_uid,
            "series_uid_out": self.series_uid,
            "sop_instance_uids_out": [str(h.SOPInstanceUID) for h in self.headers],
            "quality_before": self.before.as_dict(),
            "quality_after": self.after.as_dict(),
            "notes": list(self.notes),
        }


def canonical_parameters(
    images: list[DicomImage],
    *,
    method: Method | str = "global",
    bins: int | None = None,
    window: WindowSpec = "auto",
    mask: str | ArrayLike | None = None,
    levels: int | None = None,
    per_slice: bool = False,
    variant: core.Variant | str = "standard",
    clip_limit: float = 0.01,
    kernel_size: int | tuple[int, int] | None = None,
    keep_private: bool = True,
    redistribution: str = "limited",
) -> str:
    """The parameters as one canonical text, from the arguments and headers alone.

    With the source UIDs it fixes the derived UIDs, so they can be predicted without
    decoding a pixel (a resumed batch recognises its own outputs). Besides the options it
    holds what else decides an output's content: which images were equalized together
    (one histogram over a series gives a slice other values than its own histogram) and
    ``keep_private`` (which decides the header).
    """
    spec = parse_window(window)
    if isinstance(spec, Window):
        window_text = f"{spec.center:g},{spec.width:g}"
    elif isinstance(spec, Preset):
        window_text = spec.value
    else:
        window_text = str(spec)
    if mask is None or (isinstance(mask, str) and mask.strip().lower() == "none"):
        mask_text = "none"
    elif isinstance(mask, str):
        mask_text = mask.strip().lower()
    else:
        packed = np.packbits(np.asarray(mask, dtype=bool)).tobytes()
        mask_text = "array:" + hashlib.sha256(packed).hexdigest()[:16]
    how = Method(method)
    fields: dict[str, Any] = {
        "method": how.value,
        "bins": bins if bins is not None else "auto",
        "window": window_text,
        "mask": mask_text,
        "levels": levels or default_levels(images),
        "per_slice": bool(per_slice),
        "variant": core.Variant(variant).value,
        "images": batch_digest(images),
        "keep_private": bool(keep_private),
    }
    if how is Method.CLAHE:
        fields["clip_limit"] = f"{float(clip_limit):g}"
        fields["kernel_size"] = kernel_size
        from .clahe import as_redistribution

        redist = as_redistribution(redistribution).value
        if redist != "limited":
            fields["redistribution"] = redist
    return ";".join(f"{k}={v}" for k, v in sorted(fields.items()))


def batch_digest(images: list[DicomImage]) -> str:
    """A digest of the set of images equalized together: their sorted SOP Instance UIDs.

    Sorted, so that the order the images come in does not matter; hashed, so that the
    canonical text stays short for a series of any length.
    """
    uids = sorted(im.info.sop_instance_uid for im in images)
    return hashlib.sha256("\n".join(uids).encode()).hexdigest()[:16]


def default_levels(images: list[DicomImage]) -> int:
    """2 ** Bits Stored of the sources, kept between 8 and 16 bits."""
    bits = max(im.info.bits_stored for im in images)
    return int(2 ** min(max(bits, 8), 16))


def _mask_for(
    mask: str | ArrayLike | None, source: Any, norm: Normalized
) -> tuple[NDArray[np.bool_] | None, str]:
    if mask is None:
        return None, "none"
    if isinstance(mask, str):
        if mask.strip().lower() == "none":
            return None, "none"
        if mask.strip().lower() != "auto":
            raise ParameterError(f"mask must be None, 'auto', 'none' or a bool array, got {mask!r}")
        from .mask import foreground_mask  # scikit-image and scipy load only when asked

        return foreground_mask(source), "auto"
    arr = np.asarray(mask)
    shape = norm.array.shape
    if arr.dtype != np.bool_:
        raise ParameterError(f"mask must have dtype bool, got {arr.dtype}")
    if arr.shape == shape[1:]:
        arr = np.broadcast_to(arr, shape)
    if arr.shape != shape:
        raise ParameterError(
            f"mask shape {arr.shape} does not match the image: (frames, rows, columns) = "
            f"{shape} or (rows, columns) = {shape[1:]}"
        )
    return arr, "array"


def describe(
    images: list[DicomImage],
    *,
    method: Method,
    variant: core.Variant,
    bins: int | None,
    nbins: int,
    value_range: tuple[float, float],
    voi: str,
    window: WindowSpec,
    mask: str | ArrayLike | None,
    mask_text: str,
    levels: int | None,
    out_levels: int,
    per_slice: bool,
    clip_limit: float,
    kernel_size: int | tuple[int, int] | None,
    keep_private: bool,
    value_span: tuple[int, int],
    redistribution: str = "limited",
) -> tuple[dict[str, Any], dict[str, Any], str, str]:
    """What a derived object records of its making.

    Returns ``(header_options, parameters, description, series_uid)``: the arguments of
    :func:`medeq.derive.derive_header`, the parameters for reports, the text for
    (0008,2111) Derivation Description, and the new series UID. ``bins``, ``window``,
    ``mask`` and ``levels`` are the caller's arguments (they fix the UIDs); ``nbins``,
    ``value_range``, ``voi`` and ``out_levels`` what they resolved to.
    """
    lo, hi = value_range
    parameters: dict[str, Any] = {
        "method": method.value,
        "variant": variant.value,
        "bins": nbins,
        "value_range": [lo, hi],
        "window": voi,
        "mask": mask_text,
        "levels": out_levels,
        "per_slice": per_slice,
    }
    if method is Method.CLAHE:
        parameters["clip_limit"] = clip_limit
        parameters["kernel_size"] = kernel_size
        parameters["redistribution"] = redistribution
    canonical = canonical_parameters(
        images,
        method=method,
        bins=bins,
        window=window,
        mask=mask,
        levels=levels,
        per_slice=per_slice,
        variant=variant,
        clip_limit=clip_limit,
        kernel_size=kernel_size,
        keep_private=keep_private,
        redistribution=redistribution,
    )
    from . import __version__

    description = (
        f"Histogram equalization by medeq {__version__}: {method.value}"
        f"{', seed formula' if variant is core.Variant.SEED else ''}"
        f"{', per slice' if per_slice else ''}, {nbins} bins over [{lo:g}, {hi:g}], "
        f"{voi}, mask {mask_text}, {out_levels} output levels"
        + (f", clip limit {clip_limit:g}" if method is Method.CLAHE else "")
        + (
            f", {redistribution} redistribution"
            if method is Method.CLAHE and redistribution != "limited"
            else ""
        )
    )
    first = images[0].info
    series_uid = output_series_uid(images[0], canonical)
    series_number = min((first.series_number or 0) + 1000, 2**31 - 1)
    header_options: dict[str, Any] = {
        "levels": out_levels,
        "value_span": value_span,
        "description": description,
        "parameters": canonical,
        "series_uid": series_uid,
        "series_number": series_number,
        "keep_private": keep_private,
    }
    return header_options, parameters, description, series_uid


def _value_span(
    pixels: NDArray[Any],
    counts: NDArray[np.int64] | None,
    lut: NDArray[Any] | None,
    mask: NDArray[np.bool_] | None,
) -> tuple[int, int]:
    """The lowest and highest output value (of every pixel, masked or not)."""
    if counts is None or lut is None or mask is not None:
        return int(pixels.min()), int(pixels.max())
    used = lut[counts > 0]
    return int(used.min()), int(used.max())


def enhance(
    image: DicomImage | Any,
    *,
    method: Method | str = "global",
    bins: int | None = None,
    window: WindowSpec = "auto",
    mask: str | ArrayLike | None = None,
    levels: int | None = None,
    per_slice: bool = False,
    variant: core.Variant | str = "standard",
    clip_limit: float = 0.01,
    kernel_size: int | tuple[int, int] | None = None,
    keep_private: bool = True,
    redistribution: str = "limited",
) -> Derived:
    """Equalize a DICOM image or series into a derived object, ready to write.

    Parameters
    ----------
    image : DicomImage or Series
        A series is equalized as one volume (one histogram) unless ``per_slice``.
    method : {"global", "clahe"}
        Global histogram equalization, or CLAHE (per slice, with ``clip_limit`` and
        ``kernel_size``; see :func:`medeq.clahe`).
    bins : int, optional
        Histogram bins. Default: one per source level within the window (at most 65536).
    window : str, int, Preset or (float, float)
        VOI before equalizing; see :func:`medeq.normalize`.
    mask : None, "auto" or ndarray of bool
        Build the histogram from these pixels only; "auto" uses
        :func:`medeq.foreground_mask`. An array has the shape ``(frames, rows, columns)``
        or ``(rows, columns)`` (applied to every frame).
    levels : int, optional
        Output levels, 2 to 65536. Default: ``2 ** BitsStored`` of the source, kept
        between 256 and 65536.
    per_slice : bool
        Equalize every frame (slice) with its own histogram.
    variant : {"standard", "seed"}
        The LUT formula; see :func:`medeq.equalization_lut`.
    clip_limit, kernel_size, redistribution
        CLAHE parameters (ignored by the global method); ``redistribution="uniform"``
        with OpenCV's bins and clip gives OpenCV's result (see :func:`medeq.clahe`).
    keep_private : bool
        Copy private attributes into the derived headers (default True).

    Returns
    -------
    Derived

    Raises
    ------
    ParameterError
        For a bad argument (the message names it).
    DicomError
        When the source's pixels cannot be used.
    """
    images: list[DicomImage] = list(getattr(image, "images", [image]))
    if not images or not all(isinstance(im, DicomImage) for im in images):
        raise ParameterError(f"image must be a DicomImage or a Series, got {type(image).__name__}")
    try:
        how = Method(method)
    except ValueError:
        raise ParameterError(f"method must be 'global' or 'clahe', got {method!r}") from None
    var = core.as_variant(variant)
    bins_ = core.check_bins(bins)
    levels_ = core.check_levels(levels) or default_levels(images)
    if not isinstance(per_slice, (bool, np.bool_)):
        raise ParameterError(f"per_slice must be True or False, got {per_slice!r}")
    from .clahe import as_redistribution

    redist = as_redistribution(redistribution)

    # The notes made from here on (by normalize, the mask) belong to this result.
    with collecting() as notes:
        norm = normalize(image, window=window)
        mask_arr, mask_text = _mask_for(mask, image, norm)
        nbins = bins_ or norm.bins
        # With one histogram for the whole image, the counts after follow from it and the LUT.
        counts: NDArray[np.int64] | None = None
        lut: NDArray[Any] | None = None
        if how is Method.GLOBAL and per_slice:
            pixels = core.equalize(
                norm.array,
                nbins,
                value_range=norm.value_range,
                mask=mask_arr,
                levels=levels_,
                variant=var,
                per_slice=True,
            )
        elif how is Method.GLOBAL:
            arr = core.check_image(norm.array)
            pixels, counts, lut = core.equalize_from_counts(
                arr,
                nbins,
                core.check_range(norm.value_range, arr.dtype.kind in "iu"),
                core.check_mask(mask_arr, arr.shape),
                levels_,
                var,
            )
        else:
            from .clahe import clahe  # numba loads only when CLAHE is asked for

            # Slice by slice, with the volume's binning (see medeq.clahe).
            pixels = clahe(
                norm.array,
                nbins,
                kernel_size=kernel_size,
                clip_limit=clip_limit,
                value_range=norm.value_range,
                mask=mask_arr,
                levels=levels_,
                redistribution=redist,
            )

        header_options, parameters, description, series_uid = describe(
            images,
            method=how,
            variant=var,
            bins=bins_,
            nbins=nbins,
            value_range=norm.value_range,
            voi=norm.voi,
            window=window,
            mask=mask,
            mask_text=mask_text,
            levels=levels,
            out_levels=levels_,
            per_slice=bool(per_slice),
            clip_limit=clip_limit,
            kernel_size=kernel_size,
            keep_private=keep_private,
            value_span=_value_span(pixels, counts, lut, mask_arr),
            redistribution=redist.value,
        )
        if counts is None or lut is None:
            before_counts, _ = core.histogram(
                norm.array, nbins, value_range=norm.value_range, mask=mask_arr
            )
            after_counts, _ = core.histogram(
                pixels, levels_, value_range=(0, levels_ - 1), mask=mask_arr
            )
        else:
            # Every counted pixel of bin k became lut[k]: the same counts as histogramming
            # the output, without another pass over the pixels.
            before_counts = counts
            after_counts = np.zeros(levels_, np.int64)
            np.add.at(after_counts, lut.astype(np.intp), counts)
        return Derived(
            sources=images,
            header_options=header_options,
            pixels=pixels,
            levels=levels_,
            normalized=norm,
            mask=mask_arr,
            parameters=parameters,
            description=description,
            series_uid=series_uid,
            before=quality_of(before_counts),
            after=quality_of(after_counts),
            frame_counts=[im.info.frames for im in images],
            notes=notes,
        )
