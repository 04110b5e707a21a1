"""Make docs/gallery/ and docs/gallery.md from the shared real DICOM files.

Run from the repository root:  python docs/make_gallery.py [DICOM_FOLDER]
(default folder: $MEDEQ_TEST_DATA, else ../shared/data/dicom). Every picture is produced
by medeq from a real file; nothing is drawn by hand.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import medeq

HERE = Path(__file__).resolve().parent
OUT = HERE / "gallery"

# (file, title, enhance options)
CASES: list[tuple[str, str, dict[str, object]]] = [
    ("dcmqi__ct-3slice_01.dcm", "CT abdomen, file window 40/400", {}),
    ("dcmqi__ct-3slice_01.dcm", "CT, lung preset, body mask", {"window": "lung", "mask": "auto"}),
    ("fodicom__CR-MONO1-10-chest.dcm", "CR chest, MONOCHROME1, 10-bit", {}),
    ("wg04__RG2_UNC.dcm", "CR pelvis, body mask", {"mask": "auto"}),
    ("pylibjpeg__966_fixed.dcm", "DX chest, MONOCHROME1, JPEG 2000", {"mask": "auto"}),
    ("wg04__MR1_UNC.dcm", "MR head, full range", {"window": "none"}),
    ("fodicom__GH133.dcm", "MG, SIGMOID window 1 of 3", {}),
    (
        "fodicom__CR-MONO1-10-chest.dcm",
        "CR chest, CLAHE clip 0.01 (compare with 3)",
        {"method": "clahe"},
    ),
    (
        "fodicom__CR-MONO1-10-chest.dcm",
        "CR chest, CLAHE clip 0.03",
        {"method": "clahe", "clip_limit": 0.03},
    ),
    (
        "dcmqi__ct-3slice_01.dcm",
        "CT, CLAHE clip 0.01, lung preset (compare with 2)",
        {"method": "clahe", "window": "lung", "mask": "auto"},
    ),
]


def main() -> int:
    folder = Path(
        sys.argv[1]
        if len(sys.argv) > 1
        else os.environ.get("MEDEQ_TEST_DATA", HERE.parent.parent / "shared" / "data" / "dicom")
    )
    if not folder.is_dir():
        print(f"no DICOM folder at {folder}", file=sys.stderr)
        return 2
    OUT.mkdir(exist_ok=True)
    lines = [
        "# Gallery",
        "",
        "Made by `python docs/make_gallery.py` from the shared real DICOM files. Each figure",
        "shows the original through its VOI (presentation sense) and the equalized output",
        "through the window written into it, with the normalised histograms (bars) and CDFs",
        "(red) of both. Quality figures: entropy (bits), RMS contrast, and the",
        "Kolmogorov-Smirnov distance of the histogram from flat (lower is flatter).",
        "",
    ]
    series = medeq.read_series([folder / f"fodicom__abd1_adb1_{i}.dcm" for i in range(1, 6)])
    for n, (name, title, options) in enumerate(CASES, start=1):
        image = medeq.read(folder / name)
        derived = medeq.enhance(image, **options)  # type: ignore[arg-type]
        png = OUT / f"{n:02d}_{Path(name).stem}.png"
        medeq.plot_comparison(image, derived, png, dpi=60)
        before, after = derived.before, derived.after
        lines += [
            f"## {title}",
            "",
            f"`{name}`, options {options or '{}'}: {derived.description}.",
            f"Uniformity (KS from flat) {before.uniformity:.3f} -> {after.uniformity:.3f}, "
            f"RMS contrast {before.rms_contrast:.3f} -> {after.rms_contrast:.3f}.",
            "",
            f"![{title}](gallery/{png.name})",
            "",
        ]
    derived = medeq.enhance(series[0])
    png = OUT / "series_abd1_sheet.jpg"
    medeq.preview(derived, png, frame="sheet", size=640)
    before = OUT / "series_abd1_sheet_original.jpg"
    medeq.preview(series[0], before, frame="sheet", size=640)
    lines += [
        "## MR series, one histogram over the volume",
        "",
        "Five coronal slices of `fodicom__abd1_adb1_*`: originals through the union of their",
        "per-slice windows, then equalized with one histogram for the whole stack (contact",
        "sheets, `medeq.preview(..., frame='sheet')`).",
        "",
        f"![original](gallery/{before.name}) ![equalized](gallery/{png.name})",
        "",
    ]
    (HERE / "gallery.md").write_text("\n".join(lines))
    print(f"wrote {len(CASES) + 2} pictures to {OUT} and {HERE / 'gallery.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
