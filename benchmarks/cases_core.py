"""Array-level cases: global equalization of an 8-bit image and of 12-bit volumes.

Every input is generated here from a fixed seed. Each case also reports the memory
bandwidth floor: the time to read the input twice (count, then map) and write the
output once at the copy bandwidth measured in the same run (the ``bandwidth`` case).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from _harness import CaseResult, Context, Peer, Row, rows_for, target, time_peers

import medeq

# --------------------------------------------------------------------------- inputs


def radiograph_8bit(rows: int, cols: int, seed: int) -> np.ndarray:
    """An 8-bit radiograph-like image: smooth anatomy in a narrow band of levels, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    y = y / rows - 0.5
    x = x / cols - 0.5
    img = 60 + 50 * np.exp(-((x / 0.3) ** 2 + (y / 0.4) ** 2))  # soft tissue
    for _ in range(12):
        cy, cx, r = rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), rng.uniform(0.02, 0.1)
        img += rng.uniform(-25, 40) * np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / r**2))
    img += 18 * (np.abs(x) < 0.03)  # a spine-like band
    img += rng.normal(0, 4, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def ct_volume_12bit(slices: int, size: int, seed: int, signed: bool) -> np.ndarray:
    """A 12-bit CT-like volume: air, a body, organs and bone, noise.

    Unsigned: stored values 0..4095 with air at 24 (HU + 1024). Signed: Hounsfield units
    (air at -1000), the same levels shifted by -1024.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    out = np.empty((slices, size, size), np.int16 if signed else np.uint16)
    for k in range(slices):
        z = k / max(slices - 1, 1) - 0.5
        img = np.full((size, size), 24.0)
        body = (y / (0.42 - 0.1 * z * z)) ** 2 + (x / 0.36) ** 2 < 1
        img[body] = 1064 + 30 * np.sin(9 * x[body] + z) * np.cos(7 * y[body])
        for _ in range(5):
            cy, cx = rng.uniform(-0.25, 0.25, 2)
            ry, rx = rng.uniform(0.03, 0.12, 2)
            img[((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1] += rng.uniform(-80, 120)
        img[((y - 0.25) / 0.05) ** 2 + (x / 0.05) ** 2 < 1] = 1924  # bone
        img += rng.normal(0, 12, img.shape)
        img = np.clip(np.rint(img), 0, 4095)
        out[k] = img - 1024 if signed else img
    return out


# --------------------------------------------------------------------------- peers


def numpy_equalize_8bit(img: np.ndarray) -> np.ndarray:
    """What a numpy user writes: bincount, cdf, OpenCV's LUT formula, fancy indexing."""
    hist = np.bincount(img.ravel(), minlength=256)
    cdf = np.cumsum(hist)
    cdf_min = hist[np.flatnonzero(hist)[0]]
    scale = np.float32(255) / np.float32(img.size - cdf_min)
    lut = np.clip(np.rint((cdf - cdf_min).astype(np.float32) * scale), 0, 255).astype(np.uint8)
    return lut[img]


def numpy_equalize_bins(vol: np.ndarray, bins: int) -> np.ndarray:
    """The same with ``bins`` equal bins over the data's range, output uint16 0..65535."""
    lo, hi = int(vol.min()), int(vol.max())
    index = (vol.astype(np.int64) - lo) * bins // (hi - lo + 1)
    hist = np.bincount(index.ravel(), minlength=bins)
    cdf = np.cumsum(hist)
    cdf_min = hist[np.flatnonzero(hist)[0]]
    lut = np.rint((cdf - cdf_min) * 65535 / (vol.size - cdf_min))
    return np.clip(lut, 0, 65535).astype(np.uint16)[index]


def tutorial_equalize(img: np.ndarray) -> np.ndarray:
    """The tutorial's seed: histogram, pdf, cdf, round(cdf * 255), a per-pixel Python loop."""
    hist, _ = np.histogram(img.flatten(), 256, [0, 256])
    pdf = hist / img.size
    cdf = np.cumsum(pdf)
    lut = np.round(cdf * 255)
    out = np.zeros_like(img)
    for i in range(img.shape[0]):
        for j in range(img.shape[1]):
            out[i, j] = lut[img[i, j]]
    return out


def _optional(name: str) -> Any:
    try:
        if name == "cv2":
            import cv2

            return cv2
        from skimage import exposure

        return exposure
    except ImportError:
        return None


def _floor_row(ctx: Context, result: CaseResult, in_bytes: int, out_bytes: int) -> None:
    """Add the bandwidth floor as a row, and medeq's distance from it as a fact."""
    bandwidth = ctx.store.get("copy_bandwidth")
    if bandwidth is None:
        return
    floor = (2 * in_bytes + out_bytes) / bandwidth
    medeq_s = result.rows[0].median_s
    result.rows.append(
        Row(
            peer="memory-bandwidth floor",
            median_s=floor,
            mpix_s=result.pixels / floor / 1e6,
            vs_medeq=floor / medeq_s,
            runs=0,
            note=f"read input twice + write output once at {bandwidth / 1e9:.1f} GB/s",
        )
    )
    result.facts["medeq / bandwidth floor"] = f"{medeq_s / floor:.2f}x"


# --------------------------------------------------------------------------- cases


def bandwidth(ctx: Context) -> CaseResult:
    """Copy bandwidth of this machine, one thread and all of medeq's threads."""
    nbytes = (32 if ctx.quick else 256) << 20
    src = np.random.default_rng(1).integers(0, 255, nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    threads = medeq_threads()

    def copy_threads() -> None:
        bounds = [(nbytes * k // threads, nbytes * (k + 1) // threads) for k in range(threads)]
        workers = [threading.Thread(target=np.copyto, args=(dst[a:b], src[a:b])) for a, b in bounds]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    peers = [Peer("np.copyto, 1 thread", lambda: np.copyto(dst, src), nbytes)]
    if threads > 1:
        peers.append(Peer(f"np.copyto, {threads} threads", copy_threads, nbytes))
    timings = time_peers(peers, rounds=ctx.rounds, budget_s=ctx.budget_s)
    result = CaseResult("bandwidth", f"Copy bandwidth ({nbytes >> 20} MiB buffer)", nbytes)
    best = 0.0
    for p in peers:
        t, runs = timings[p.name]
        gbs = 2 * nbytes / t
        best = max(best, gbs)
        result.rows.append(Row(p.name, t, nbytes / t / 1e6, None, runs, f"{gbs / 1e9:.1f} GB/s"))
    # Mpix/s of this case are MB/s: one byte a "pixel".
    ctx.store["copy_bandwidth"] = best
    result.facts["copy bandwidth (read + write bytes per second)"] = f"{best / 1e9:.1f} GB/s"
    return result


def medeq_threads() -> int:
    from medeq import _parallel

    return _parallel.pool().threads


def global_8bit(ctx: Context) -> CaseResult:
    """8-bit image, global equalization (one histogram of 256 levels)."""
    side = 512 if ctx.quick else 2048
    crop = 32 if ctx.quick else 256
    img = radiograph_8bit(side, side, seed=8)
    cv2, exposure = _optional("cv2"), _optional("skimage")
    peers = [Peer("medeq.equalize", lambda: medeq.equalize(img), img.size)]
    if cv2 is not None:
        peers.append(Peer("cv2.equalizeHist", lambda: cv2.equalizeHist(img), img.size))
    if exposure is not None:
        peers.append(
            Peer(
                "skimage.exposure.equalize_hist",
                lambda: exposure.equalize_hist(img),
                img.size,
                note="float64 output",
            )
        )
    peers.append(Peer("numpy bincount + LUT", lambda: numpy_equalize_8bit(img), img.size))
    part = img[:crop, :crop].copy()
    peers.append(
        Peer(
            "tutorial per-pixel loop",
            lambda: tutorial_equalize(part),
            part.size,
            scale=img.size / part.size,
            note=f"{crop}x{crop} crop, extrapolated",
            max_runs=3,
        )
    )
    timings = time_peers(peers, rounds=ctx.rounds, budget_s=ctx.budget_s)
    result = CaseResult("global-8bit", f"8-bit {side}x{side}, global", img.size)
    result.rows = rows_for(peers, timings, img.size, "medeq.equalize")
    out = medeq.equalize(img)
    if cv2 is not None:
        result.facts["medeq output == cv2.equalizeHist output"] = bool(
            np.array_equal(out, cv2.equalizeHist(img))
        )
        ratio = timings["medeq.equalize"][0] / timings["cv2.equalizeHist"][0]
        target(result, "medeq / cv2.equalizeHist", ratio, 1.25, at_most=True)
    result.facts["medeq output == tutorial output (variant='seed', crop)"] = bool(
        np.array_equal(medeq.equalize(part, variant="seed"), tutorial_equalize(part))
    )
    _floor_row(ctx, result, img.nbytes, out.nbytes)
    return result


def sizes_8bit(ctx: Context) -> CaseResult:
    """8-bit images of common sizes (256x256 to 1024x1024): medeq against OpenCV.

    The sizes take medeq's three paths: one compiled call (256), the same with byte
    pairs (512), counting and mapping on the threads (1024).
    """
    cv2 = _optional("cv2")
    sides = [64, 512, 1024] if ctx.quick else [256, 512, 1024]
    images = {side: radiograph_8bit(side, side, seed=side) for side in sides}
    for img in images.values():
        # Each path's compiled code is loaded on its first call: not part of a call's time,
        # nor of the harness's first calls (the second of which sizes the number of runs).
        medeq.equalize(img)
    peers = []
    for side, img in images.items():
        peers.append(
            Peer(f"medeq.equalize {side}x{side}", lambda img=img: medeq.equalize(img), img.size)
        )
        if cv2 is not None:
            peers.append(
                Peer(
                    f"cv2.equalizeHist {side}x{side}",
                    lambda img=img: cv2.equalizeHist(img),
                    img.size,
                )
            )
    timings = time_peers(peers, rounds=ctx.rounds, budget_s=ctx.budget_s)
    result = CaseResult(
        "sizes-8bit",
        "8-bit images of common sizes, global",
        sum(img.size for img in images.values()),
    )
    for p in peers:
        side = int(p.name.rsplit("x", 1)[1])
        t, runs = timings[p.name]
        base = timings[f"medeq.equalize {side}x{side}"][0]
        result.rows.append(Row(p.name, t, p.pixels / t / 1e6, t / base, runs, p.note))
    if cv2 is not None:
        for side, img in images.items():
            ratio = (
                timings[f"medeq.equalize {side}x{side}"][0]
                / timings[f"cv2.equalizeHist {side}x{side}"][0]
            )
            result.facts[f"{side}x{side}: medeq / cv2.equalizeHist"] = f"{ratio:.2f}"
            result.facts[f"{side}x{side}: output == cv2.equalizeHist output"] = bool(
                np.array_equal(medeq.equalize(img), cv2.equalizeHist(img))
            )
    return result


def _volume_12bit(ctx: Context, signed: bool) -> CaseResult:
    slices, size = (16, 128) if ctx.quick else (64, 512)
    bins = 4096
    vol = ct_volume_12bit(slices, size, seed=12, signed=signed)
    exposure = _optional("skimage")
    peers = [Peer("medeq.equalize", lambda: medeq.equalize(vol, bins), vol.size)]
    if exposure is not None:
        peers.append(
            Peer(
                "skimage.exposure.equalize_hist",
                lambda: exposure.equalize_hist(vol, nbins=bins),
                vol.size,
                note="float64 output; ignores nbins for integers",
                max_runs=5,
            )
        )
    peers.append(
        Peer("numpy bincount + LUT", lambda: numpy_equalize_bins(vol, bins), vol.size, max_runs=9)
    )
    timings = time_peers(peers, rounds=ctx.rounds, budget_s=ctx.budget_s)
    dtype = "int16" if signed else "uint16"
    result = CaseResult(
        f"volume-12bit-{dtype}",
        f"12-bit {dtype} volume {size}x{size}x{slices}, {bins} bins",
        vol.size,
    )
    result.rows = rows_for(peers, timings, vol.size, "medeq.equalize")
    out = medeq.equalize(vol, bins)
    result.facts["medeq output == numpy script output"] = bool(
        np.array_equal(out, numpy_equalize_bins(vol, bins))
    )
    medeq_s = timings["medeq.equalize"][0]
    if exposure is not None:
        speedup = timings["skimage.exposure.equalize_hist"][0] / medeq_s
        target(result, "speed-up over skimage.exposure.equalize_hist", speedup, 50, at_most=False)
    speedup = timings["numpy bincount + LUT"][0] / medeq_s
    target(result, "speed-up over numpy bincount + LUT", speedup, 5, at_most=False)
    _floor_row(ctx, result, vol.nbytes, out.nbytes)
    return result


def volume_12bit_uint16(ctx: Context) -> CaseResult:
    """12-bit data stored as uint16, one histogram of 4096 bins over the volume."""
    return _volume_12bit(ctx, signed=False)


def volume_12bit_int16(ctx: Context) -> CaseResult:
    """12-bit data in Hounsfield units (int16), one histogram of 4096 bins."""
    return _volume_12bit(ctx, signed=True)


#: Name -> case, in the order they run (bandwidth first: the others use it).
CASES = {
    "bandwidth": bandwidth,
    "global-8bit": global_8bit,
    "sizes-8bit": sizes_8bit,
    "volume-12bit-uint16": volume_12bit_uint16,
    "volume-12bit-int16": volume_12bit_int16,
}
