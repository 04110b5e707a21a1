"""Shared fixtures: where the real DICOM files are, and seeded generators."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

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
