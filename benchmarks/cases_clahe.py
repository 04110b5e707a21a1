"""CLAHE: medeq.clahe against OpenCV and scikit-image on a 2048 x 2048 12-bit image.

OpenCV's CLAHE takes ``clipLimit`` as a multiple of the mean bin count, counts all 65536
bins of uint16 data and spreads the clipped counts over every bin; medeq is timed with its
defaults (bins over the data's range) and with OpenCV's bins, clip and redistribution
(``clip_limit = clipLimit / bins``, ``redistribution="uniform"``), which reproduces
OpenCV's result. scikit-image is timed with its defaults (256 bins, clip 0.01). All use
8 x 8 tiles.
"""

from __future__ import annotations

import numpy as np
from _harness import CaseResult, Context, Peer, rows_for, target, time_peers
from cases_core import _optional, ct_volume_12bit

import medeq


def as_cv2(img: np.ndarray, grid: int = 8, cv_clip: float = 40.0) -> np.ndarray:
    """medeq.clahe with cv2.createCLAHE(cv_clip, (grid, grid))'s parameters, for a side
    that divides by ``grid`` (docs/clahe.md has the general tile size)."""
    return medeq.clahe(
        img,
        65536,
        value_range=(0, 65535),
        kernel_size=img.shape[0] // grid,
        clip_limit=cv_clip / 65536,
        redistribution="uniform",
    )


def clahe_16bit(ctx: Context) -> CaseResult:
    """12-bit CT-like image in uint16, CLAHE with 8x8 tiles."""
    side = 512 if ctx.quick else 2048
    tile, cv_clip = side // 8, 40.0
    img = ct_volume_12bit(1, side, seed=5, signed=False)[0]
    cv2, exposure = _optional("cv2"), _optional("skimage")
    peers = [
        Peer("medeq.clahe", lambda: medeq.clahe(img, kernel_size=tile), img.size),
        Peer("medeq.clahe, cv2's bins and clip", lambda: as_cv2(img), img.size),
    ]
    if cv2 is not None:
        clahe = cv2.createCLAHE(clipLimit=cv_clip, tileGridSize=(8, 8))
        peers.append(Peer("cv2 CLAHE", lambda: clahe.apply(img), img.size, note="clipLimit 40"))
    if exposure is not None:
        peers.append(
            Peer(
                "skimage equalize_adapthist",
                lambda: exposure.equalize_adapthist(img, kernel_size=tile),
                img.size,
                note="float64 output",
                max_runs=3,
            )
        )
    timings = time_peers(peers, rounds=ctx.rounds, budget_s=ctx.budget_s)
    result = CaseResult("clahe-16bit", f"12-bit {side}x{side} uint16, CLAHE 8x8 tiles", img.size)
    result.rows = rows_for(peers, timings, img.size, "medeq.clahe")
    med = timings["medeq.clahe"][0]
    if cv2 is not None:
        target(result, "medeq / cv2 CLAHE", med / timings["cv2 CLAHE"][0], 1.5, at_most=True)
        diff = as_cv2(img).astype(np.float64) - clahe.apply(img).astype(np.float64)
        result.facts["mean |medeq - cv2| / 65535 (cv2's bins and clip)"] = round(
            float(np.abs(diff).mean() / 65535), 6
        )
        result.facts["mean (medeq - cv2) / 65535 (cv2's bins and clip)"] = round(
            float(diff.mean() / 65535), 6
        )
    if exposure is not None:
        target(
            result,
            "skimage / medeq",
            timings["skimage equalize_adapthist"][0] / med,
            10.0,
            at_most=False,
        )
    return result


CASES = {"clahe-16bit": clahe_16bit}
