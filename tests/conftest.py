"""Shared fixtures: where the real DICOM files are, and seeded generators."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

REPO = Path(__file__).resolve().parents[1]
#: The shared real DICOM files; override with MEDEQ_TEST_DATA.
SHARED_DICOM = Path(
    os.environ.get("MEDEQ_TEST_DATA", REPO.parent / "shared" / "data" / "dicom")
).resolve()


def shared_file(name: str) -> Path:
    """Path of one shared real DICOM file; skips the test (with the reason) when absent."""
    path = SHARED_DICOM / name
    if not path.is_file():
        pytest.skip(f"shared DICOM file {path} is absent (set MEDEQ_TEST_DATA to its folder)")
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261122)


def synthetic_series(folder: Path) -> None:
    """A 4-slice CT series and a 3-image MONOCHROME1 series, slices all different."""
    folder.mkdir()
    rng = np.random.default_rng(5)
    for name, count, mono1 in (("CT_small.dcm", 4, False), ("MR_small.dcm", 3, True)):
        template = pydicom.dcmread(get_testdata_file(name))
        base = template.pixel_array.astype(np.int32)
        for k in range(count):
            ds = template.copy()
            ds.SOPInstanceUID = f"{template.SOPInstanceUID}.{k + 1}"
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = [0.0, 0.0, float(k)]
            shifted = base + int(rng.integers(-200, 200)) + rng.integers(0, 30, base.shape)
            info = np.iinfo(template.pixel_array.dtype)
            ds.PixelData = np.clip(shifted, info.min, info.max).astype(info.dtype).tobytes()
            if mono1:
                ds.PhotometricInterpretation = "MONOCHROME1"
            ds.save_as(folder / f"{Path(name).stem}_{k}.dcm")
