"""The scripts medeq's series conversion is measured against, and the test series.

    python benchmarks/convert_peers.py make SLICES FOLDER   # synthetic CT series
    python benchmarks/convert_peers.py naive SRC OUT        # what a pydicom user writes
    python benchmarks/convert_peers.py floor SRC OUT        # read + write, no processing

``make`` writes SLICES real DICOM files (512 x 512, int16 Hounsfield units with rescale,
one series, positions along z), using pydicom's bundled CT header as the template.
``naive`` is the script a researcher writes from the tutorial: pydicom reads each file,
skimage.exposure.equalize_hist equalizes it, new UIDs are set, pydicom saves it and
Pillow writes a JPEG. ``floor`` reads each file, decodes its pixels and writes them back
unchanged: the cost of touching the files at all, which no converter can go below.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid


def make_series(slices: int, folder: Path, size: int = 512, seed: int = 0) -> list[Path]:
    """Write a synthetic CT series; return the files in slice order."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    series_uid = pydicom.uid.UID(f"1.2.826.0.1.3680043.10.1419.{seed}.{slices}")
    files = []
    for k in range(slices):
        z = k / max(slices - 1, 1) - 0.5
        img = np.full((size, size), -1000.0)
        body = (y / (0.42 - 0.1 * z * z)) ** 2 + (x / 0.36) ** 2 < 1
        img[body] = 40 + 30 * np.sin(9 * x[body] + z) * np.cos(7 * y[body])
        img[((y - 0.25) / 0.05) ** 2 + (x / 0.05) ** 2 < 1] = 900  # spine
        img += rng.normal(0, 12, img.shape)
        ds = template.copy()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = f"{series_uid}.{k + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-160.0, -160.0, float(k)]
        ds.Rows = ds.Columns = size
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.clip(np.rint(img), -1024, 3071).astype(np.int16).tobytes()
        path = folder / f"{k:04d}.dcm"
        ds.save_as(path)
        files.append(path)
    return files


def naive(src: Path, out: Path) -> None:
    from PIL import Image
    from skimage import exposure

    out.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    for path in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        equalized = exposure.equalize_hist(ds.pixel_array)  # float64 in [0, 1]
        pixels = np.rint(equalized * 4095).astype(np.uint16)
        ds.PixelData = pixels.tobytes()
        ds.PixelRepresentation = 0
        ds.BitsStored, ds.HighBit = 12, 11
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.WindowCenter, ds.WindowWidth = 2047.5, 4096
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = series_uid
        ds.save_as(out / path.name)
        Image.fromarray((pixels >> 4).astype(np.uint8)).save(out / f"{path.stem}.jpg", quality=90)


def floor(src: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.PixelData = ds.pixel_array.tobytes()
        ds.save_as(out / path.name)


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "make":
        make_series(int(argv[1]), Path(argv[2]))
    elif len(argv) == 3 and argv[0] in ("naive", "floor"):
        (naive if argv[0] == "naive" else floor)(Path(argv[1]), Path(argv[2]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
