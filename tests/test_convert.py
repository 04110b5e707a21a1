"""medeq.convert as a library call, and its scheduler's recovery from dying workers."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import medeq
from medeq._scheduler import Scheduler, Task
from medeq.convert import FileResult, Job, _decode_task
from medeq.reader import ImageInfo

from .conftest import synthetic_series


def dies_on_b(info: ImageInfo, place: Any, quiet: bool) -> Any:
    """A decoder that kills its worker process on the file b.dcm, like a crashing codec."""
    if Path(str(info.path)).name == "b.dcm":
        os._exit(3)
    return _decode_task(info, place, quiet)


def test_a_dying_worker_fails_its_file_and_the_batch_goes_on(tmp_path: Path) -> None:
    images = []
    for name in ("a.dcm", "b.dcm", "c.dcm"):
        path = tmp_path / name
        shutil.copy(get_testdata_file("CT_small.dcm"), path)
        images.append(medeq.read(path))
    jobs = [
        Job(
            [im],
            [tmp_path / "out" / Path(str(im.info.path)).name],
            [False],
            [FileResult(str(im.info.path), "planned")],
        )
        for im in images
    ]
    settled: list[FileResult] = []
    decoded: list[str] = []

    def make_write(job: Job, arrays: list[Any], submit: Any) -> int:
        arr, error = arrays[0]
        result = job.results[0]
        if error:
            result.status, result.error = "failed", error
        else:
            assert isinstance(arr, np.ndarray) and arr.shape == (1, 128, 128)
            result.status = "converted"
            decoded.append(result.input)
        settled.append(result)
        return 0

    def first_pass(job: Job) -> list[Task]:
        image = job.images[0]
        return [Task("decode", job, 0, dies_on_b, (image.info, image.place, True))]

    Scheduler(2, first_pass, make_write, settled.append).run(jobs)
    by_name = {Path(r.input).name: r for r in settled}
    assert set(by_name) == {"a.dcm", "b.dcm", "c.dcm"}
    assert by_name["b.dcm"].status == "failed"
    assert "a worker process died while decoding it" in str(by_name["b.dcm"].error)
    assert by_name["a.dcm"].status == "converted"
    assert by_name["c.dcm"].status == "converted"


def test_convert_library_call(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), src / "mr.dcm")
    seen: list[int] = []
    report = medeq.convert([src], tmp_path / "out", jobs=1, preview=False, on_start=seen.append)
    assert seen == [1]
    assert report.exit_code == 0
    assert report.totals["converted"] == 1
    assert (tmp_path / "out" / "mr.dcm").is_file()
    assert not (tmp_path / "out" / "mr.jpg").exists()
    assert report.as_dict()["files"][0]["status"] == "converted"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "fancy"}, "method must be 'global' or 'clahe'"),
        ({"jobs": 0}, "jobs must be a whole number >= 1, got 0"),
        ({"mask": "body"}, "mask must be 'none' or 'auto', got 'body'"),
        ({"transfer_syntax": "jpeg"}, "transfer_syntax must be one of"),
        ({"bins": -3}, "bins must be between 1"),
    ],
)
def test_bad_parameters_fail_before_anything_is_written(
    tmp_path: Path, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(medeq.ParameterError, match=match):
        medeq.convert([get_testdata_file("CT_small.dcm")], tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_small_conversion_uses_numpy_kernels_and_same_pixels(tmp_path: Path) -> None:
    """A fresh process converting a few slices never loads numba (it would cost more)."""
    import subprocess
    import sys

    ct = get_testdata_file("CT_small.dcm")
    script = (
        "import sys, medeq\n"
        "report = medeq.convert([sys.argv[1]], sys.argv[2], jobs=1)\n"
        "assert report.exit_code == 0, report.as_dict()\n"
        "print('numba' in sys.modules)\n"
    )
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-c", script, ct, str(out)], capture_output=True, text=True, check=True
    )
    assert run.stdout.strip() == "False"
    written = medeq.read(next(out.rglob("*.dcm")))
    expected = medeq.enhance(medeq.read(ct))  # this process: whichever kernels it has
    np.testing.assert_array_equal(written.stored[0], expected.pixels[0])


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_forked_and_spawned_workers_write_what_one_process_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start: str
) -> None:
    import importlib

    if start not in __import__("multiprocessing").get_all_start_methods():
        pytest.skip(f"no {start!r} start method on this platform")
    src = tmp_path / "in"
    src.mkdir()
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "JPEGLSNearLossless_16.dcm"):
        shutil.copy(get_testdata_file(name), src / name)
    one = medeq.convert([src], tmp_path / "one", jobs=1, preview=False)
    monkeypatch.setattr(importlib.import_module("medeq._scheduler"), "start_method", lambda: start)
    two = medeq.convert([src], tmp_path / "two", jobs=2, preview=False)
    assert one.totals == two.totals
    assert one.totals["converted"] == 4
    for out in sorted((tmp_path / "one").rglob("*.dcm")):
        a = medeq.read(out)
        b = medeq.read(tmp_path / "two" / out.relative_to(tmp_path / "one"))
        assert a.dataset.SOPInstanceUID == b.dataset.SOPInstanceUID
        np.testing.assert_array_equal(a.stored, b.stored)


def test_default_jobs_use_fewer_workers_for_small_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    convert_module = importlib.import_module("medeq.convert")
    seen: list[int] = []
    real = convert_module.Scheduler

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, workers: int, *args: Any, **kwargs: Any) -> None:
            seen.append(workers)
            super().__init__(workers, *args, **kwargs)

    monkeypatch.setattr(convert_module, "Scheduler", Recording)
    monkeypatch.setattr(convert_module.os, "cpu_count", lambda: 8)
    ct = get_testdata_file("CT_small.dcm")
    medeq.convert([ct], tmp_path / "a", preview=False)  # 1 file: in this process
    medeq.convert([ct], tmp_path / "b", jobs=3, preview=False)  # never more than files
    assert seen == [1, 1]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"window": "none", "bins": 256},
        {"variant": "seed", "levels": 256},
        {"window": (40.0, 400.0), "bins": 100},
    ],
)
@pytest.mark.parametrize("jobs", [1, 2])
def test_slice_wise_conversion_equals_enhance_of_the_volume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any], jobs: int
) -> None:
    """Workers read each file again; one process (jobs=1) uses the headers of its scan."""
    import importlib

    convert_module = importlib.import_module("medeq.convert")
    streamed: list[int] = []
    real = convert_module._stream_job

    def counting(job: Any, *args: Any) -> int:
        streamed.append(len(job.images))
        return real(job, *args)  # type: ignore[no-any-return]

    monkeypatch.setattr(convert_module, "_stream_job", counting)
    src = tmp_path / "in"
    synthetic_series(src)
    report = medeq.convert([src], tmp_path / "out", jobs=jobs, preview=True, **options)
    assert report.exit_code == 0, report.as_dict()
    assert sorted(streamed) == [3, 4]  # both series went slice-wise
    by_source = {Path(f.input).name: f for f in report.files}
    for series in medeq.read_series(src):
        derived = medeq.enhance(series, **options)
        for n, image in enumerate(series.images):
            name = Path(str(image.info.path)).name
            written = medeq.read(tmp_path / "out" / name)
            np.testing.assert_array_equal(written.stored, derived.image_pixels(n), err_msg=name)
            header = derived.headers[n]
            for keyword in (
                "SOPInstanceUID",
                "SeriesInstanceUID",
                "WindowCenter",
                "WindowWidth",
                "BitsStored",
                "DerivationDescription",
            ):
                assert str(written.dataset.get(keyword)) == str(header.get(keyword)), keyword
            result = by_source[name]
            assert result.quality_before == derived.before.as_dict()
            assert result.quality_after == derived.after.as_dict()
            assert (tmp_path / "out" / name).with_suffix(".jpg").is_file()


def converted_with_a_change(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    jobs: int,
    change: Callable[[Any], None],
    stage: str = "_stream_job",
    message: str = "changed during the conversion",
    make: Callable[[Path], None] = synthetic_series,
    **options: Any,
) -> tuple[medeq.Report, Path]:
    """Convert the synthetic series, applying ``change`` to one slice's dataset (saved
    back to its file) after the first pass (before ``stage`` decides the series); return
    the report and that file's path, which failed with ``message``. ``make(folder)``
    writes the inputs (by default the synthetic series).
    """
    import importlib

    import pydicom

    convert_module = importlib.import_module("medeq.convert")
    real = getattr(convert_module, stage)
    src = tmp_path / "in"
    make(src)
    victim = src / "CT_small_2.dcm"

    def change_then_write(job: Any, *args: Any) -> int:
        if any(str(im.info.path) == str(victim) for im in job.images):
            ds = pydicom.dcmread(victim)
            change(ds)
            ds.save_as(victim)
        return real(job, *args)  # type: ignore[no-any-return]

    monkeypatch.setattr(convert_module, stage, change_then_write)
    report = medeq.convert([src], tmp_path / "out", jobs=jobs, preview=False, **options)
    assert report.exit_code == 1
    assert report.totals["converted"] == 6
    failed = [f for f in report.files if f.status == "failed"]
    assert [Path(f.input).name for f in failed] == [victim.name]
    assert message in str(failed[0].error)
    assert not (tmp_path / "out" / victim.name).exists()
    return report, victim


@pytest.mark.parametrize("jobs", [1, 2])
def test_slice_changed_between_the_passes_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs: int
) -> None:
    """A slice whose values changed after they were counted fails; the series goes on."""

    def new_value(ds: Any) -> None:
        pixels = ds.pixel_array.copy()
        pixels[0, 0] = np.iinfo(pixels.dtype).max  # beyond every counted value
        ds.PixelData = pixels.tobytes()

    # No window: it would clip the new value into the counted span.
    report, victim = converted_with_a_change(tmp_path, monkeypatch, jobs, new_value, window="none")
    [failed] = [f for f in report.files if f.status == "failed"]
    assert str(victim) in str(failed.error)


@pytest.mark.parametrize("jobs", [1, 2])
def test_slice_replaced_by_another_instance_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs: int
) -> None:
    """Another instance (a longer header) at a slice's path after counting: refused."""

    def another(ds: Any) -> None:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.999"
        ds.StudyDescription = "moved " * 40  # the pixel data now start elsewhere

    report, _ = converted_with_a_change(tmp_path, monkeypatch, jobs, another)
    [failed] = [f for f in report.files if f.status == "failed"]
    assert "1.2.3.999" in str(failed.error)


@pytest.mark.parametrize("jobs", [1, 2])
def test_slice_replaced_with_the_same_layout_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs: int
) -> None:
    """Another instance whose header has the same length (pixels at the same place)."""

    def same_length(ds: Any) -> None:
        uid = str(ds.SOPInstanceUID)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid[:-1] + (
            "7" if uid[-1] != "7" else "8"
        )

    report, _ = converted_with_a_change(tmp_path, monkeypatch, jobs, same_length)
    [failed] = [f for f in report.files if f.status == "failed"]
    assert "SOP Instance UID is now" in str(failed.error)


@pytest.mark.parametrize("lut", [False, True], ids=["rescale", "modality-lut"])
def test_volume_slice_changed_before_its_write_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lut: bool
) -> None:
    """Workers send back images without headers: the header is read again where it is
    needed (here, for a Modality LUT; else by the worker writing the slice), and another
    instance at the path fails that file alone."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    def with_modality_lut(src: Path) -> None:
        synthetic_series(src)
        for path in src.glob("CT_small_*.dcm"):
            ds = pydicom.dcmread(path)
            item = Dataset()
            item.LUTDescriptor = [4096, 0, 16]
            item.ModalityLUTType = "HU"
            item.add_new(0x00283006, "US", list(range(0, 4096 * 8, 8)))
            del ds.RescaleSlope, ds.RescaleIntercept
            ds.ModalityLUTSequence = Sequence([item])
            ds.PixelRepresentation = 0
            ds.PixelData = ds.pixel_array.clip(0, 4095).astype(np.uint16).tobytes()
            ds.save_as(path)

    def another(ds: Any) -> None:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.999"

    # Per-slice equalization goes as a volume: decoded in the workers, equalized here.
    converted_with_a_change(
        tmp_path,
        monkeypatch,
        2,
        another,
        stage="_equalize_job",
        message="the file changed after its header was read ((0008,0018) SOP Instance UID "
        "is now 1.2.3.999",
        make=with_modality_lut if lut else synthetic_series,
        per_slice=True,
    )


def test_series_that_cannot_go_slice_wise_is_equalized_as_a_volume(tmp_path: Path) -> None:
    """Float modality values (a fractional slope) fall back to the volume path: same result."""
    import pydicom

    src = tmp_path / "in"
    synthetic_series(src)
    for path in src.glob("CT_small_*.dcm"):
        ds = pydicom.dcmread(path)
        ds.RescaleSlope = "0.5"
        ds.save_as(path)
    report = medeq.convert([src], tmp_path / "out", jobs=2, preview=False)
    assert report.exit_code == 0, report.as_dict()
    for series in medeq.read_series(src):
        derived = medeq.enhance(series)
        for n, image in enumerate(series.images):
            written = medeq.read(tmp_path / "out" / Path(str(image.info.path)).name)
            np.testing.assert_array_equal(written.stored, derived.image_pixels(n))


def test_real_series_slice_wise_equal_enhance(tmp_path: Path) -> None:
    """Every multi-image series of the shared real files: conversion == enhance."""
    from .conftest import SHARED_DICOM

    if not SHARED_DICOM.is_dir():
        pytest.skip(f"shared DICOM folder {SHARED_DICOM} is absent (set MEDEQ_TEST_DATA)")
    report = medeq.convert([SHARED_DICOM], tmp_path / "out", jobs=2, preview=False)
    assert report.exit_code == 1  # the broken files fail; the rest is checked below
    outputs = {Path(f.input).name: f for f in report.files}
    checked = 0
    for series in medeq.read_series(SHARED_DICOM):
        if len(series.images) < 2 or not series.stackable:
            continue
        try:
            derived = medeq.enhance(series)
        except medeq.MedeqError:
            continue
        for n, image in enumerate(series.images):
            result = outputs[Path(str(image.info.path)).name]
            assert result.status == "converted", result
            written = medeq.read(result.outputs[0])
            np.testing.assert_array_equal(written.stored, derived.image_pixels(n))
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_broken_copy_never_stands_in_for_a_good_one(tmp_path: Path, jobs: int) -> None:
    """Two files of one instance (same SOP Instance UID): the one that decodes is converted."""
    import pydicom

    src = tmp_path / "in"
    src.mkdir()
    for k in range(3):  # a 3-slice series, so that both the volume and slice-wise paths run
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{k + 1}"
        ds.ImagePositionPatient = [0.0, 0.0, float(k)]
        ds.save_as(src / f"b{k}.dcm")
        if k == 1:
            ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # scanned first: a0.dcm
            ds.save_as(src / "a0.dcm")
    report = medeq.convert([src], tmp_path / "out", jobs=jobs, preview=False)
    status = {Path(f.input).name: (f.status, f.error) for f in report.files}
    assert status["a0.dcm"][0] == "failed"
    assert "(7FE0,0010) Pixel Data" in str(status["a0.dcm"][1])
    assert [status[f"b{k}.dcm"][0] for k in range(3)] == ["converted"] * 3
    assert report.exit_code == 1
    # What was written equals the series without the broken copy.
    (series,) = medeq.read_series(sorted(src.glob("b*.dcm")))
    derived = medeq.enhance(series)
    for n, image in enumerate(series.images):
        written = medeq.read(tmp_path / "out" / Path(str(image.info.path)).name)
        np.testing.assert_array_equal(written.stored, derived.image_pixels(n))
    # Both copies decoding: the first is converted, the other is skipped as a copy.
    ds = pydicom.dcmread(src / "b1.dcm")
    ds.save_as(src / "a0.dcm")
    again = medeq.convert([src], tmp_path / "again", jobs=jobs, preview=False)
    status = {Path(f.input).name: (f.status, f.error) for f in again.files}
    assert status["a0.dcm"][0] == "converted"
    assert status["b1.dcm"] == (
        "skipped",
        f"same (0008,0018) SOP Instance UID as {src / 'a0.dcm'}: converted once",
    )
    assert again.exit_code == 0


def test_rerun_without_private_attributes_recognises_its_outputs(tmp_path: Path) -> None:
    ct = get_testdata_file("CT_small.dcm")
    first = medeq.convert([ct], tmp_path / "out", jobs=1, keep_private=False)
    assert first.totals["converted"] == 1
    again = medeq.convert([ct], tmp_path / "out", jobs=1, keep_private=False)
    assert again.totals["skipped"] == 1 and again.exit_code == 0
    # The same folder with private attributes kept is another output: it is not replaced.
    other = medeq.convert([ct], tmp_path / "out", jobs=1)
    assert other.totals["failed"] == 1
    assert "is not this command's output for these parameters" in str(other.files[0].error)


def test_bad_redistribution_is_refused_by_the_library(tmp_path: Path) -> None:
    ct = get_testdata_file("CT_small.dcm")
    with pytest.raises(medeq.ParameterError, match="redistribution must be one of"):
        medeq.enhance(medeq.read(ct), method="clahe", redistribution="even")
    with pytest.raises(medeq.ParameterError, match="redistribution must be one of"):
        medeq.convert([ct], tmp_path / "out", redistribution="even")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("jobs", [1, 2])
def test_outputs_are_flushed_by_the_run_not_by_each_write(
    tmp_path: Path, jobs: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer does not wait for the disk: a thread of the run flushes every DICOM file
    # and preview as it is finished, and the run waits for it before it reports.
    import medeq._atomic as atomic

    synthetic_series(tmp_path / "in")
    flushed: list[str] = []
    fsyncs = [0]
    real_fsync, real_path = os.fsync, atomic._fsync_path

    def counting_fsync(fd: int) -> None:
        fsyncs[0] += 1
        real_fsync(fd)

    def recording(path: str) -> None:
        flushed.append(str(path))
        real_path(path)

    monkeypatch.setattr(atomic.os, "fsync", counting_fsync)
    monkeypatch.setattr(atomic, "_fsync_path", recording)
    report = medeq.convert([tmp_path / "in"], tmp_path / "out", jobs=jobs)
    outputs = [p for r in report.files for p in r.outputs]
    assert report.totals["converted"] == 7 and len(outputs) == 14
    assert set(outputs) <= set(flushed)
    assert str(tmp_path / "out") in flushed  # the folder, for the renames
    if jobs == 1:  # the workers of jobs=2 are other processes: not counted here
        assert fsyncs[0] == len(flushed)
    if jobs == 1:
        # Replacing files (--overwrite): each is flushed before its rename, so that a
        # power cut leaves the old file or the new one; the run flushes them again.
        fsyncs[0] = 0
        flushed.clear()
        medeq.convert([tmp_path / "in"], tmp_path / "out", jobs=1, overwrite=True)
        assert fsyncs[0] == 14 + len(flushed)
    flushed.clear()
    unsynced = medeq.convert([tmp_path / "in"], tmp_path / "out2", jobs=jobs, sync=False)
    assert unsynced.totals["converted"] == 7 and unsynced.parameters["sync"] is False
    assert flushed == []


def test_a_file_that_cannot_be_flushed_has_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import medeq._atomic as atomic

    synthetic_series(tmp_path / "in")
    real_path = atomic._fsync_path

    def failing(path: str) -> None:
        if str(path).endswith("CT_small_2.dcm"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_path(path)

    monkeypatch.setattr(atomic, "_fsync_path", failing)
    seen: list[tuple[str, str]] = []
    report = medeq.convert(
        [tmp_path / "in"],
        tmp_path / "out",
        jobs=1,
        progress=lambda r: seen.append((Path(r.input).name, r.status)),
    )
    [bad] = [r for r in report.files if r.status == "failed"]
    assert seen[-1] == ("CT_small_2.dcm", "failed")  # told again, after "converted"
    assert bad.outputs == []
    # Its files are gone: what is on disk may not be what was written.
    assert not (tmp_path / "out" / "CT_small_2.dcm").exists()
    assert not (tmp_path / "out" / "CT_small_2.jpg").exists()
    assert (tmp_path / "out" / "CT_small_1.dcm").exists()
    assert bad.input.endswith("CT_small_2.dcm")
    target = tmp_path / "out" / "CT_small_2.dcm"
    assert bad.error == f"{target}: cannot flush to disk: {os.strerror(errno.EIO)}"
    assert report.exit_code == 1


def test_a_rerun_remakes_outputs_cut_short(tmp_path: Path) -> None:
    # What a power cut before the run's flush can leave: a DICOM file or a preview whose
    # end never reached the disk. The rerun must not take it for done: it makes it again
    # (it is this command's own output, by its SOP Instance UID) and says so.
    synthetic_series(tmp_path / "in")
    first = medeq.convert([tmp_path / "in"], tmp_path / "out", jobs=1)
    assert first.exit_code == 0
    dicom = tmp_path / "out" / "CT_small_2.dcm"
    whole_dicom = dicom.read_bytes()
    dicom.write_bytes(whole_dicom[: dicom.stat().st_size // 2])
    jpeg = tmp_path / "out" / "MR_small_1.jpg"
    whole_jpeg = jpeg.read_bytes()
    jpeg.write_bytes(whole_jpeg[:100])
    again = medeq.convert([tmp_path / "in"], tmp_path / "out", jobs=1)
    assert again.exit_code == 0
    remade = {Path(r.input).name: r for r in again.files if r.status == "converted"}
    assert set(remade) == {"CT_small_2.dcm", "MR_small_1.dcm"}
    [ct_note] = remade["CT_small_2.dcm"].notes
    assert "an earlier output of this command was incomplete" in ct_note
    assert "Pixel Data" in ct_note and ct_note.endswith("made again")
    assert f"its preview {jpeg} is cut short" in remade["MR_small_1.dcm"].notes[0]
    assert again.totals["skipped"] == 5
    was, now = (pydicom.dcmread(io.BytesIO(d)) for d in (whole_dicom, dicom.read_bytes()))
    assert now.SOPInstanceUID == was.SOPInstanceUID and now.PixelData == was.PixelData
    assert jpeg.read_bytes() == whole_jpeg
    assert medeq.convert([tmp_path / "in"], tmp_path / "out", jobs=1).totals["skipped"] == 7


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_rerun_remakes_a_missing_preview(tmp_path: Path, jobs: int) -> None:
    # A kill -9 between a DICOM file and its preview leaves the DICOM file alone: the
    # rerun must make the preview, not take the file for done.
    synthetic_series(tmp_path / "in")
    assert medeq.convert([tmp_path / "in"], tmp_path / "out", jobs=jobs).exit_code == 0
    jpeg = tmp_path / "out" / "CT_small_0.jpg"
    jpeg.unlink()
    again = medeq.convert([tmp_path / "in"], tmp_path / "out", jobs=jobs)
    assert again.exit_code == 0 and jpeg.is_file()
    [remade] = [r for r in again.files if r.status == "converted"]
    assert remade.input.endswith("CT_small_0.dcm")
    assert f"its preview {jpeg} is missing" in remade.notes[0]


def test_a_rerun_finds_compressed_outputs_cut_short(tmp_path: Path) -> None:
    # Compressed outputs are checked by parsing them whole (a cut file ends inside its
    # fragments), not by decoding every one on each rerun.
    synthetic_series(tmp_path / "in")
    options: dict[str, Any] = {"jobs": 1, "transfer_syntax": "jpeg-ls", "preview": False}
    assert medeq.convert([tmp_path / "in"], tmp_path / "out", **options).exit_code == 0
    dicom = tmp_path / "out" / "CT_small_3.dcm"
    dicom.write_bytes(dicom.read_bytes()[:-100])
    again = medeq.convert([tmp_path / "in"], tmp_path / "out", **options)
    [remade] = [r for r in again.files if r.status == "converted"]
    assert remade.input.endswith("CT_small_3.dcm") and again.exit_code == 0
    assert "an earlier output of this command was incomplete" in remade.notes[0]
    assert "Pixel Data is truncated" in remade.notes[0]
    assert again.totals["skipped"] == 6
    assert medeq.read(dicom).stored.shape == (1, 128, 128)


KEEP_FREED = """
import resource, sys
import numpy as np
import pydicom
from medeq._scheduler import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
# A mapped 1 MiB block freed: glibc's own thresholds become 1 MiB (map) and 2 MiB (trim).
warm = np.ones(1 << 18, np.float32)
del warm
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    # A slice's worth: five 0.8 MB blocks from the heap, touched, then freed.
    blocks = [np.ones(200_000, np.float32) for _ in range(5)]
    del blocks
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(kept, sum(faults[2:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_workers_keep_freed_memory_for_the_next_slice() -> None:
    """A worker's allocator keeps what a slice freed: the next slice faults no pages in.

    Without it glibc, whose thresholds grow with what a process happened to free before,
    here gives the freed 4 MB back to the system and faults its pages in again every time.
    """
    runs = {}
    for mode in ("default", "keep"):
        res = subprocess.run(
            [sys.executable, "-c", KEEP_FREED, mode],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        kept, faults = res.stdout.split()
        runs[mode] = (kept == "True", int(faults))
    if not runs["keep"][0]:
        pytest.skip("not glibc: mallopt is unavailable")
    assert runs["default"][1] > 2500  # pages faulted in again, 550 each time here
    assert runs["keep"][1] < 200


def test_inline_tasks_finish_on_one_thread_in_order() -> None:
    # jobs=1: a task that returns Later has its rest run on the executor's one thread,
    # in the order handed over; its future gives what the rest returns, or raises.
    import threading

    from medeq._scheduler import Inline, Later

    pool = Inline()
    ran: list[tuple[int, str]] = []
    gate = threading.Event()

    def finish(n: int) -> int:
        gate.wait(10)
        ran.append((n, threading.current_thread().name))
        if n == 3:
            raise OSError("disk full")
        return n * 10

    futures = [pool.submit(lambda n=n: Later(lambda: finish(n))) for n in range(5)]
    plain = pool.submit(lambda: "at once")
    assert plain.done() and plain.result() == "at once"
    assert not any(f.done() for f in futures)  # the caller went on meanwhile
    gate.set()
    assert [f.result(10) for f in futures[:3]] == [0, 10, 20]
    with pytest.raises(OSError, match="disk full"):
        futures[3].result(10)
    assert futures[4].result(10) == 40
    pool.shutdown()
    assert [n for n, _ in ran] == [0, 1, 2, 3, 4]
    assert {name for _, name in ran} != {threading.current_thread().name}
    assert len({name for _, name in ran}) == 1


def test_an_aborted_run_finishes_the_file_being_written_and_drops_the_rest() -> None:
    # Ctrl-C or an error with jobs=1: the file on the thread is finished before abort
    # returns (nothing appears after the run has ended), the rest is never written.
    import threading

    from medeq._scheduler import Later

    scheduler = Scheduler(1, lambda job: [], lambda job, outcomes, submit: 0, lambda r: None)
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        assert release.wait(30)  # held until the abort has dropped the rest
        return "written"

    first = scheduler.pool.submit(lambda: Later(slow))
    rest = [scheduler.pool.submit(lambda: Later(lambda: "never")) for _ in range(3)]
    assert started.wait(10)
    aborting = threading.Thread(target=scheduler.abort)
    aborting.start()
    deadline = time.monotonic() + 30
    while not all(f.cancelled() for f in rest) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not first.done()  # the abort waits for the file being written
    release.set()
    aborting.join(30)
    assert not aborting.is_alive()
    assert first.done() and first.result() == "written"
    assert all(f.cancelled() for f in rest)


def test_inline_finishes_in_place_while_the_interpreter_shuts_down() -> None:
    # A conversion called from an atexit handler: no new threads can start then.
    script = (
        "import atexit\n"
        "from medeq._scheduler import Inline, Later\n"
        "def late():\n"
        "    print(Inline().submit(lambda: Later(lambda: 'finished')).result())\n"
        "atexit.register(late)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "finished", done.stderr


def test_deferred_flushing_holds_only_in_its_own_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The in-process run writes on a thread of its own, inside its own deferral; a
    # write on another thread meanwhile is flushed as usual.
    import threading

    import medeq._atomic as atomic

    fsynced: list[str] = []
    real = os.fsync

    def recording(fd: int) -> None:
        fsynced.append(threading.current_thread().name)
        real(fd)

    monkeypatch.setattr(atomic.os, "fsync", recording)
    with atomic.deferred_sync():
        atomic.atomic_write(tmp_path / "a", lambda f: f.write(b"a"))
        other = threading.Thread(
            target=atomic.atomic_write, args=(tmp_path / "b", lambda f: f.write(b"b")), name="other"
        )
        other.start()
        other.join()
    atomic.atomic_write(tmp_path / "c", lambda f: f.write(b"c"))
    assert fsynced == ["other", threading.current_thread().name]
    assert [(tmp_path / n).read_bytes() for n in "abc"] == [b"a", b"b", b"c"]


def test_one_process_writes_on_its_thread_what_workers_write(tmp_path: Path) -> None:
    # The same outputs (pixels, previews) and each series' files in input order, whether the
    # files are written on the in-process thread (jobs=1) or by workers (jobs=2).
    import pydicom

    synthetic_series(tmp_path / "in")
    one = medeq.convert([tmp_path / "in"], tmp_path / "one", jobs=1)
    two = medeq.convert([tmp_path / "in"], tmp_path / "two", jobs=2)
    assert one.totals["converted"] == two.totals["converted"] == 7
    for name in ("CT_small", "MR_small"):  # each series in input order
        inputs = [r.input for r in one.files if name in r.input]
        assert inputs == sorted(inputs)
    for result in one.files:
        dcm = Path(result.outputs[0])
        other = tmp_path / "two" / dcm.name
        a, b = pydicom.dcmread(dcm), pydicom.dcmread(other)
        assert a.SOPInstanceUID == b.SOPInstanceUID and a.PixelData == b.PixelData
        assert dcm.with_suffix(".jpg").read_bytes() == other.with_suffix(".jpg").read_bytes()


def test_a_file_that_cannot_be_written_on_the_thread_fails_alone(tmp_path: Path) -> None:
    synthetic_series(tmp_path / "in")
    (tmp_path / "out" / "CT_small_3.jpg").mkdir(parents=True)  # the preview's place
    report = medeq.convert([tmp_path / "in"], tmp_path / "out", jobs=1)
    [bad] = [r for r in report.files if r.status == "failed"]
    assert bad.input.endswith("CT_small_3.dcm")
    assert str(tmp_path / "out" / "CT_small_3.jpg") in str(bad.error)
    assert report.totals["converted"] == 6 and report.exit_code == 1
    assert not list((tmp_path / "out").rglob("*.part"))
    assert not (tmp_path / "out" / "CT_small_3.dcm").exists()  # nothing left half-written


def test_a_batch_whose_worker_dies_is_rerun_file_by_file(tmp_path: Path) -> None:
    # First-pass tasks travel in batches (40 files, 2 workers: batches of 2); when one
    # kills its worker, the batches in flight run again one task at a time, and only
    # the file that kills a worker alone fails (the eighth, named b.dcm).
    from medeq._scheduler import _batched

    images = []
    for k in range(40):
        path = tmp_path / ("b.dcm" if k == 7 else f"{k}.dcm")
        shutil.copy(get_testdata_file("CT_small.dcm"), path)
        images.append(medeq.read(path))
    job = Job(
        images,
        [tmp_path / "out" / f"{k}.dcm" for k in range(40)],
        [False] * 40,
        [FileResult(str(im.info.path), "planned") for im in images],
    )
    outcomes: list[Any] = []

    def first_pass(job: Job) -> list[Task]:
        return [
            Task("decode", job, i, dies_on_b, (im.info, im.place, True))
            for i, im in enumerate(job.images)
        ]

    def second_pass(job: Job, decoded: list[Any], submit: Any) -> int:
        outcomes.extend(decoded)
        return 0

    assert [len(t.parts or []) for t in _batched(first_pass(job), 2)] == [2] * 20
    Scheduler(2, first_pass, second_pass, lambda r: None).run([job])
    assert len(outcomes) == 40
    errors = {k: error for k, (_, error) in enumerate(outcomes) if error}
    assert list(errors) == [7]
    assert "a worker process died while decoding it" in errors[7]
    assert all(arr.shape == (1, 128, 128) for k, (arr, _) in enumerate(outcomes) if k != 7)
