"""Shared fixtures: where the real DICOM files are, and seeded generators."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PACS: Orthanc on 127.0.0.1 with a config written here; its REST base URL.

    Started from the Debian package's binary, stopped by its PID. Skips with the reason
    when Orthanc is not installed (``.ci/run`` installs it).
    """
    binary = shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if os.path.exists("/usr/sbin/Orthanc") else None
    )
    if binary is None:
        pytest.skip("Orthanc is not installed (Debian package orthanc)")
    home = tmp_path_factory.mktemp("orthanc")
    http, dicom = _free_port(), _free_port()
    config = {
        "Name": "MEDEQTEST",
        "StorageDirectory": str(home / "storage"),
        "IndexDirectory": str(home / "index"),
        "HttpPort": http,
        "DicomPort": dicom,
        "DicomAet": "MEDEQTEST",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
    }
    (home / "orthanc.json").write_text(json.dumps(config))
    with open(home / "orthanc.log", "wb") as log:
        proc = subprocess.Popen([binary, str(home / "orthanc.json")], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/system", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log_text = (home / "orthanc.log").read_text(errors="replace")[-2000:]
                    pytest.fail(f"Orthanc did not start: {log_text}")
                time.sleep(0.1)
        yield url
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def store_in_orthanc(url: str, data: bytes) -> tuple[int, dict[str, object]]:
    """POST one DICOM file to Orthanc's /instances: (HTTP status, its JSON answer)."""
    request = urllib.request.Request(
        f"{url}/instances", data=data, method="POST", headers={"Content-Type": "application/dicom"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            answer = json.loads(body or b"{}")
        except ValueError:
            answer = {"body": body.decode(errors="replace")}
        return exc.code, answer
