"""medeq.clahe against OpenCV and scikit-image CLAHE: median times and ratios.

Run by hand (never a timed assert in the tests)::

    python benchmarks/clahe.py            # 2048 x 2048, 8 x 8 tiles
    python benchmarks/clahe.py --size 1024 --rounds 5

Inputs are seeded synthetic images: a 12-bit CT-like slice in uint16 (air, body, organs,
bone, noise), the same scaled to 8 bits, and full-range 16-bit noise (the worst case for
the cache: every tile touches every bin). "As cv2" is medeq with OpenCV's bins, clip limit
and redistribution, which reproduce OpenCV's result (docs/clahe.md). The calls are
interleaved round by round, so load from other processes hits every library alike; the
table shows medians. The first medeq call (numba compiling, or loading its cache) is
timed on its own.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np
from skimage import exposure

import medeq


def ct_like(size: int, seed: int) -> np.ndarray:
    """A 12-bit CT-like slice (values 0..4095, air at 24), uint16."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    img = np.full((size, size), 24.0)  # air: -1000 HU with a 1024 offset
    body = (y / 0.42) ** 2 + (x / 0.36) ** 2 < 1
    img[body] = 1064 + 30 * np.sin(9 * x[body]) * np.cos(7 * y[body])  # soft tissue
    for _ in range(6):
        cy, cx = rng.uniform(-0.25, 0.25, 2)
        ry, rx = rng.uniform(0.03, 0.12, 2)
        img[((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1] += rng.uniform(-80, 120)
    spine = ((y - 0.25) / 0.05) ** 2 + (x / 0.05) ** 2 < 1
    img[spine] = 1024 + 900  # bone
    img += rng.normal(0, 12, img.shape)
    return np.clip(np.rint(img), 0, 4095).astype(np.uint16)


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="image side (default 2048)")
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds (default 9)")
    parser.add_argument(
        "--skimage-rounds", type=int, default=3, help="rounds for scikit-image (slow)"
    )
    args = parser.parse_args()
    size, grid = args.size, 8
    tile = size // grid

    u16 = ct_like(size, seed=1)
    u8 = (u16 >> 4).astype(np.uint8)
    noise = np.random.default_rng(2).integers(0, 65536, (size, size), dtype=np.uint16)
    cv_clip = 40.0  # OpenCV's default clipLimit

    first = timed(lambda: medeq.clahe(u16))
    cases: list[tuple[str, np.ndarray, int]] = [
        ("uint16 CT-like 12-bit", u16, 65536),
        ("uint8", u8, 256),
        ("uint16 full-range noise", noise, 65536),
    ]
    print(f"{size} x {size}, {grid} x {grid} tiles of {tile} px; medians of {args.rounds} rounds")
    print(f"first medeq call (compile or load the numba cache): {first * 1e3:.0f} ms")
    for name, img, cv_bins in cases:
        clahe_cv = cv2.createCLAHE(clipLimit=cv_clip, tileGridSize=(grid, grid))
        calls: dict[str, Callable[[], object]] = {
            f"cv2 (clipLimit {cv_clip:g})": lambda img=img, c=clahe_cv: c.apply(img),
            "medeq (defaults: bins over the data range)": lambda img=img: medeq.clahe(
                img, kernel_size=tile
            ),
            f"medeq (as cv2: {cv_bins} bins, uniform)": lambda img=img, b=cv_bins: medeq.clahe(
                img,
                b,
                value_range=(0, b - 1),
                kernel_size=tile,
                clip_limit=cv_clip / b,
                redistribution="uniform",
            ),
            "medeq (bins=256, as skimage)": lambda img=img: medeq.clahe(img, 256, kernel_size=tile),
        }
        for call in calls.values():
            call()  # warm up caches and thread pools
        times: dict[str, list[float]] = {key: [] for key in calls}
        for _ in range(args.rounds):
            for key, call in calls.items():
                times[key].append(timed(call))
        sk = statistics.median(
            timed(lambda img=img: exposure.equalize_adapthist(img, kernel_size=tile))
            for _ in range(args.skimage_rounds)
        )
        med = {key: statistics.median(v) for key, v in times.items()}
        cv = next(iter(med.values()))
        print(f"\n{name}")
        print(f"  {'':44s} {'median ms':>10s} {'/ cv2':>7s} {'skimage /':>10s}")
        for key, value in med.items():
            print(f"  {key:44s} {value * 1e3:10.1f} {value / cv:7.2f} {sk / value:10.1f}")
        print(f"  {'skimage (defaults: nbins 256, clip 0.01)':44s} {sk * 1e3:10.1f} {sk / cv:7.2f}")


if __name__ == "__main__":
    main()
