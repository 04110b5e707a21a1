"""One file never spoils a batch: failures are isolated, the report always lands.

Each test here failed on the code before the batch guarded its tasks (see
medeq._scheduler.guarded) or broke a promise of the report.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
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

from .conftest import store_in_orthanc, synthetic_series
from .test_cli import interrupted, make_series
from .test_cli import medeq as run_medeq


class Panic(BaseException):
    """What a native decoder's panic looks like from Python (pyo3: not an Exception)."""


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("kind", [TypeError, Panic])
def test_a_bug_in_one_file_fails_that_file_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs: int, kind: type[BaseException]
) -> None:
    # A bug of medeq's (or a native panic) while normalising one file: that file fails
    # with the class, message and medeq frame; every other file is converted.
    synthetic_series(tmp_path / "in")
    module = sys.modules["medeq.normalize"]  # medeq.normalize is the function
    real = module.modality_values

    def flaky(image: medeq.DicomImage) -> object:
        if image.name.endswith("CT_small_2.dcm"):
            raise kind("boom in the middle")
        return real(image)

    monkeypatch.setattr(module, "modality_values", flaky)
    report_path = tmp_path / "report.json"
    report = medeq.convert(tmp_path / "in", tmp_path / "out", jobs=jobs, report=report_path)
    failed = [r for r in report.files if r.status == "failed"]
    # Slice-wise, the whole series' mapping needs every slice: the bad slice fails and
    # its series is still converted from the others.
    assert [Path(r.input).name for r in failed] == ["CT_small_2.dcm"]
    error = str(failed[0].error)
    assert error.startswith(str(tmp_path / "in" / "CT_small_2.dcm"))
    assert f"internal error {kind.__name__}" in error and "boom in the middle" in error
    assert "at medeq/" in error and "\n" not in error
    assert report.totals["converted"] == 6 and report.exit_code == 1
    written = json.loads(report_path.read_text())
    assert written["totals"]["failed"] == 1 and written["files"][0]["notes"] == []


def test_the_report_is_written_when_the_run_is_interrupted(tmp_path: Path) -> None:
    synthetic_series(tmp_path / "in")
    seen: list[medeq.FileResult] = []

    def progress(result: medeq.FileResult) -> None:
        seen.append(result)
        if len(seen) == 2:
            raise KeyboardInterrupt

    report_path = tmp_path / "report.json"
    with pytest.raises(KeyboardInterrupt):
        medeq.convert(
            [tmp_path / "in"], tmp_path / "out", jobs=1, progress=progress, report=report_path
        )
    report = json.loads(report_path.read_text())
    assert report["interrupted"] is True
    assert len(report["files"]) == 2
    for f in report["files"]:
        assert all(Path(p).is_file() for p in f["outputs"])


def test_one_path_is_one_input(tmp_path: Path) -> None:
    # A str was iterated character by character (and so converted the current folder).
    ct = get_testdata_file("CT_small.dcm")
    report = medeq.convert(ct, tmp_path / "out", jobs=1)
    assert [r.input for r in report.files] == [ct]
    assert report.totals["converted"] == 1
    assert medeq.convert(Path(ct), tmp_path / "out", jobs=1).totals["skipped"] == 1


def test_a_bad_clahe_parameter_is_a_usage_error(tmp_path: Path) -> None:
    ct = get_testdata_file("CT_small.dcm")
    with pytest.raises(medeq.ParameterError, match="clip_limit must be in"):
        medeq.convert(ct, tmp_path / "out", method="clahe", clip_limit=0)
    assert not (tmp_path / "out").exists()
    run = run_medeq(
        "convert", ct, "-o", str(tmp_path / "out"), "--method", "clahe", "--clip-limit", "0"
    )
    assert run.returncode == 2 and "clip_limit must be in" in run.stderr


def _copy_with_pixels(source: Path, target: Path, change: int) -> None:
    ds = pydicom.dcmread(source)
    pixels = ds.pixel_array.copy()
    pixels[0, 0] += change
    ds.PixelData = pixels.tobytes()
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)


@pytest.mark.parametrize("jobs", [1, 2])
def test_same_instance_with_other_pixels_is_a_conflict(tmp_path: Path, jobs: int) -> None:
    ct = Path(get_testdata_file("CT_small.dcm"))
    (tmp_path / "in").mkdir()
    shutil.copy(ct, tmp_path / "in" / "a.dcm")
    shutil.copy(ct, tmp_path / "in" / "b.dcm")  # the same instance again: skipped
    _copy_with_pixels(ct, tmp_path / "in" / "c.dcm", 7)  # same UID, other pixels
    report = medeq.convert(tmp_path / "in", tmp_path / "out", jobs=jobs)
    status = {Path(r.input).name: r for r in report.files}
    assert status["a.dcm"].status == "converted"
    assert status["b.dcm"].status == "skipped"
    assert status["c.dcm"].status == "failed" and report.exit_code == 1
    error = str(status["c.dcm"].error)
    assert "conflict" in error and "a.dcm" in error and "c.dcm" in error


def test_a_broken_copy_fails_on_every_run(tmp_path: Path) -> None:
    # It shares its SOP Instance UID with a good file: the rerun must not call it done,
    # nor list an output that does not exist.
    ct = Path(get_testdata_file("CT_small.dcm"))
    (tmp_path / "in").mkdir()
    shutil.copy(ct, tmp_path / "in" / "a.dcm")
    data = ct.read_bytes()
    (tmp_path / "in" / "b.dcm").write_bytes(data[: len(data) - 5000])
    for _ in range(2):
        report = medeq.convert(tmp_path / "in", tmp_path / "out", jobs=1)
        status = {Path(r.input).name: r for r in report.files}
        assert status["b.dcm"].status == "failed" and report.exit_code == 1
        assert status["b.dcm"].outputs == []
        for r in report.files:
            assert all(Path(p).is_file() for p in r.outputs)


def test_output_names_are_unique_by_construction(tmp_path: Path) -> None:
    # in/x and in/x.dcm would both preview as out/x.jpg.
    ct = Path(get_testdata_file("CT_small.dcm"))
    (tmp_path / "in").mkdir()
    shutil.copy(ct, tmp_path / "in" / "x")
    _copy_with_pixels(ct, tmp_path / "in" / "x.dcm", 3)
    ds = pydicom.dcmread(tmp_path / "in" / "x.dcm")
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "in" / "x.dcm")
    report = medeq.convert(tmp_path / "in", tmp_path / "out", jobs=1)
    assert report.totals["converted"] == 2 and report.exit_code == 0
    outputs = [p for r in report.files for p in r.outputs]
    assert len(outputs) == len(set(outputs)) == 4
    assert all(Path(p).is_file() for p in outputs)


def test_what_a_folder_holds_besides_files_is_listed(tmp_path: Path) -> None:
    ct = Path(get_testdata_file("CT_small.dcm"))
    inputs = tmp_path / "in"
    (inputs / "empty.dcm").mkdir(parents=True)  # a folder named like a file
    shutil.copy(ct, inputs / "ct.dcm")
    (inputs / "loop").symlink_to(inputs / "loop")  # a link to itself
    (inputs / "gone.dcm").symlink_to(tmp_path / "nowhere.dcm")
    (inputs / "sub").symlink_to(inputs)  # the folder again, through a link
    elsewhere = tmp_path / "archive"
    make_series(elsewhere, 1)
    (inputs / "linked").symlink_to(elsewhere)  # followed, as DCMTK does
    report = medeq.convert(inputs, tmp_path / "out", jobs=1, report=tmp_path / "r.json")
    ignored = dict(report.ignored)
    assert ignored[str(inputs / "empty.dcm")].startswith("a folder named like a DICOM file")
    assert ignored[str(inputs / "loop")] == "symbolic link loop"
    assert ignored[str(inputs / "gone.dcm")] == "broken symbolic link"
    assert "already read" in ignored[str(inputs / "sub")]
    assert report.totals["converted"] == 2 and report.exit_code == 0
    [linked] = [r for r in report.files if "linked" in r.input]
    assert linked.notes == [
        f"{linked.input}: read through a symbolic link, from {elsewhere / 'slice000.dcm'}"
    ]
    listed = json.loads((tmp_path / "r.json").read_text())["ignored"]
    assert {"path": str(inputs / "loop"), "reason": "symbolic link loop"} in listed


def test_two_runs_into_one_folder_at_once_both_succeed(tmp_path: Path) -> None:
    # A file the other run has just finished counts as done, whichever run gets there
    # first; neither speaks of the library's overwrite=True.
    for k in range(8):
        make_series(tmp_path / "in" / f"s{k}", 2)
    command = [sys.executable, "-m", "medeq", "convert", str(tmp_path / "in")]
    command += ["-o", str(tmp_path / "out"), "--jobs", "1"]
    runs = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    stderrs = [run.communicate(timeout=300)[1] for run in runs]  # both, before any assert
    for run, stderr in zip(runs, stderrs, strict=True):
        assert run.returncode == 0, stderr
        assert "overwrite=True" not in stderr
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 16
    assert not list((tmp_path / "out").rglob("*.part"))


def test_sigterm_writes_the_report_and_exits_143(tmp_path: Path) -> None:
    for k in range(4):
        make_series(tmp_path / "in" / f"s{k}", 2)
    report_path = tmp_path / "r.json"
    run = interrupted(
        "SIGTERM", 1, "convert", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
        "--jobs", "1", "--report", str(report_path),
    )  # fmt: skip
    assert run.returncode == 143, run.stderr
    assert "Traceback" not in run.stderr and "terminated" in run.stderr
    report = json.loads(report_path.read_text())
    assert report["interrupted"] is True and report["totals"]["converted"] >= 1


def test_a_closed_pipe_is_no_traceback(tmp_path: Path) -> None:
    # More output than a pipe holds, so the writer meets the closed pipe for certain.
    ct = get_testdata_file("CT_small.dcm")
    files = " ".join([ct] * 1000)  # 100 kB of output from either command
    for command in (f"info --json {files}", f"convert --dry-run {files} -o {tmp_path}/o"):
        run = subprocess.run(
            ["bash", "-c", f"set -o pipefail; {sys.executable} -m medeq {command} | head -2"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert "Traceback" not in run.stderr and "BrokenPipe" not in run.stderr, run.stderr
        assert run.returncode == 141
        assert len(run.stdout.splitlines()) == 2


def test_every_failure_of_a_mixed_folder_is_in_the_report(tmp_path: Path) -> None:
    # Healthy files, files that are not DICOM, truncated and empty DICOM: exit 1, every
    # healthy file converted, every other one in the report with a reason, no traceback.
    synthetic_series(tmp_path / "in")
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    (tmp_path / "in" / "cut.dcm").write_bytes(ct[:1000])
    (tmp_path / "in" / "empty.dcm").write_bytes(b"")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    (tmp_path / "in" / "noise.dcm").write_bytes(np.random.default_rng(1).bytes(5000))
    for jobs in ("1", "2"):
        out = tmp_path / f"out{jobs}"
        run = run_medeq(
            "convert", str(tmp_path / "in"), "-o", str(out), "--jobs", jobs,
            "--report", str(out / "report.json"),
        )  # fmt: skip
        assert run.returncode == 1 and "Traceback" not in run.stderr
        report = json.loads((out / "report.json").read_text())
        status = {Path(f["input"]).name: f for f in report["files"]}
        assert sum(f["status"] == "converted" for f in report["files"]) == 7
        for name in ("cut.dcm", "empty.dcm", "noise.dcm"):
            assert status[name]["status"] == "failed" and status[name]["error"]
        assert [Path(i["path"]).name for i in report["ignored"]] == ["notes.txt"]
        assert len(report["files"]) == 10
        assert not [p for p in out.rglob("*") if p.name.endswith(".part")]
        assert os.path.isfile(out / "CT_small_0.jpg")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 600 kB file system (tmpfs), mounted for the test: a disk that fills up."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_the_report_lands_on_a_full_disk(tmp_path: Path, small_disk: Path, jobs: str) -> None:
    # The outputs fill the disk the report goes to: files fail one by one, the report
    # still lands (its room was taken first) and lists every file.
    for k in range(6):
        make_series(tmp_path / "in" / f"s{k}", 4, size=128)
    report_path = small_disk / "report.json"
    run = run_medeq(
        "convert", str(tmp_path / "in"), "-o", str(small_disk / "out"), "--jobs", jobs,
        "--report", str(report_path),
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr and "No space left" in run.stderr
    report = json.loads(report_path.read_text())
    assert len(report["files"]) == 24
    assert report["totals"]["failed"] > 0 and report["totals"]["converted"] > 0
    for f in report["files"]:
        assert all(Path(p).is_file() for p in f["outputs"])
        assert f["status"] == "converted" or "No space left" in f["error"]
    assert not [p for p in small_disk.rglob("*") if p.name.endswith(".part")]


def test_info_goes_on_after_a_file_it_cannot_describe(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from medeq import cli

    reader = sys.modules["medeq.reader"]
    real = reader.read_info
    ct, mr = get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")

    def flaky(name: str) -> medeq.ImageInfo:
        if name == ct:
            raise IndexError("list index out of range")
        return real(name)

    monkeypatch.setattr(reader, "read_info", flaky)
    assert cli.main(["info", ct, mr]) == 1
    out, err = capsys.readouterr()
    assert mr in out and "MR" in out
    assert f"medeq: error: {ct}: internal error IndexError" in err


@pytest.mark.parametrize("jobs", [1, 2])
def test_notes_reach_the_report(tmp_path: Path, jobs: int) -> None:
    # Made in a worker (a window that misses the data, found slice-wise) or in this
    # process (the volume's decision): each lands on the files it is about.
    synthetic_series(tmp_path / "in")
    for path in sorted((tmp_path / "in").glob("CT_small_*.dcm")):
        ds = pydicom.dcmread(path)
        ds.WindowCenter, ds.WindowWidth = 30000, 100  # far above the data
        ds.save_as(path)
    report = medeq.convert(tmp_path / "in", tmp_path / "out", jobs=jobs)
    assert report.exit_code == 0
    for r in report.files:
        if "CT_small" in r.input:
            assert any("covers none of the data's values" in n for n in r.notes), r.notes
        else:
            assert r.notes == []


def aborts_on_b(info: ImageInfo, place: Any, quiet: bool) -> Any:
    """A codec that aborts the process on the file b.dcm, as CharLS does on bad sizes."""
    if Path(str(info.path)).name == "b.dcm":
        os.abort()
    return _decode_task(info, place, quiet)


def test_with_one_worker_a_codec_runs_in_a_process_of_its_own(tmp_path: Path) -> None:
    # jobs=1 runs in this process; a task that runs a codec library on a file's data
    # (Task.isolate) runs in a process of its own, so an abort there fails one file.
    images = []
    for name in ("a.dcm", "b.dcm", "c.dcm"):
        shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / name)
        images.append(medeq.read(tmp_path / name))
    jobs = [
        Job([im], [tmp_path / "o.dcm"], [False], [FileResult(im.name, "planned")]) for im in images
    ]
    seen: dict[str, tuple[Any, str | None]] = {}

    def second_pass(job: Job, outcomes: list[Any], submit: Any) -> int:
        seen[Path(job.images[0].name).name] = outcomes[0]
        return 0

    def first_pass(job: Job) -> list[Task]:
        im = job.images[0]
        return [Task("decode", job, 0, aborts_on_b, (im.info, im.place, True), isolate=True)]

    scheduler = Scheduler(1, first_pass, second_pass, lambda r: None)
    scheduler.isolate()
    try:
        scheduler.run(jobs)
    finally:
        scheduler.close()
    assert seen["a.dcm"][0].shape == seen["c.dcm"][0].shape == (1, 128, 128)
    assert seen["b.dcm"][0] is None
    assert "the codec library ended the process decoding it" in str(seen["b.dcm"][1])


def test_sources_without_uids_convert_and_resume(tmp_path: Path) -> None:
    # No SOP Instance UID and no Series Instance UID: the outputs' UIDs come from each
    # file's content, so two such files do not collide and a rerun finds its outputs.
    (tmp_path / "in").mkdir()
    for name, change in (("a.dcm", 0), ("b.dcm", 5)):
        _copy_with_pixels(Path(get_testdata_file("CT_small.dcm")), tmp_path / "in" / name, change)
        ds = pydicom.dcmread(tmp_path / "in" / name)
        del ds.SOPInstanceUID, ds.SeriesInstanceUID
        del ds.file_meta.MediaStorageSOPInstanceUID
        ds.save_as(tmp_path / "in" / name, enforce_file_format=False)
    first = medeq.convert(tmp_path / "in", tmp_path / "out", jobs=1)
    assert first.totals["converted"] == 2, [r.error for r in first.files]
    outputs = [pydicom.dcmread(r.outputs[0]) for r in first.files]
    assert outputs[0].SOPInstanceUID != outputs[1].SOPInstanceUID
    assert outputs[0].SeriesInstanceUID != outputs[1].SeriesInstanceUID
    again = medeq.convert(tmp_path / "in", tmp_path / "out", jobs=1)
    assert again.totals["skipped"] == 2 and again.exit_code == 0


def test_a_malformed_source_date_epoch_is_a_usage_error(tmp_path: Path) -> None:
    ct = get_testdata_file("CT_small.dcm")
    run = subprocess.run(
        [sys.executable, "-m", "medeq", "convert", ct, "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env={**os.environ, "SOURCE_DATE_EPOCH": "yesterday"},
        check=False,
    )
    assert run.returncode == 2 and "SOURCE_DATE_EPOCH must be a whole number" in run.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_workers_end_with_a_main_process_killed_outright(tmp_path: Path, jobs: str) -> None:
    # kill -9 of the main process (the OOM killer does the same): its worker processes
    # (or, with --jobs 1, the process decoding compressed data) must not live on.
    for k in range(6):
        make_series(tmp_path / "in" / f"s{k}", 3)
    source = tmp_path / "in" / "s0" / "slice000.dcm"
    ds = pydicom.dcmread(source)
    ds.compress(pydicom.uid.RLELossless)  # compressed: --jobs 1 decodes it aside
    ds.save_as(source)
    argv = ["convert", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--jobs", jobs]
    run = interrupted("SIGKILL", 2, *argv, capture=False)
    assert run.returncode == -9
    # Workers are forked: they keep the command line of the run that made them.
    deadline = time.monotonic() + 20
    left = _group_members(run.args)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = _group_members(run.args)
    assert not left, left


def _group_members(args: Any) -> list[int]:
    """Processes still running the given command line (a killed run's workers)."""
    wanted = "\0".join(str(a) for a in args).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().split(") ")[-1].split()[0]
        except OSError:
            continue
        if wanted in cmdline and state != "Z":
            found.append(int(proc.name))
    return found


@pytest.mark.parametrize("missing", ["StudyInstanceUID", "PatientID"])
def test_a_pacs_accepts_the_output_of_a_source_missing_what_it_needs(
    tmp_path: Path, orthanc: str, missing: str
) -> None:
    # Orthanc refuses the source itself; the output, with its derived fill-in (noted in
    # the report), is stored.
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    delattr(ds, missing)
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "ct.dcm")
    status, _ = store_in_orthanc(orthanc, (tmp_path / "in" / "ct.dcm").read_bytes())
    if missing == "StudyInstanceUID":
        assert status >= 400  # the fixture's PACS is a real check
    report = medeq.convert(tmp_path / "in", tmp_path / "out", jobs=1)
    [result] = report.files
    tag = {
        "StudyInstanceUID": "(0020,000D) Study Instance UID",
        "PatientID": "(0010,0020) Patient ID",
    }
    assert result.status == "converted" and any(tag[missing] in n for n in result.notes)
    status, answer = store_in_orthanc(orthanc, Path(result.outputs[0]).read_bytes())
    assert status == 200 and answer.get("Status") == "Success", answer


def test_derived_notes_include_what_deriving_filled_in(tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PatientID
    ds.save_as(tmp_path / "ct.dcm")
    derived = medeq.enhance(medeq.read(tmp_path / "ct.dcm"))
    medeq.write(derived, tmp_path / "out.dcm")
    assert any("(0010,0020) Patient ID is missing" in n for n in derived.notes)
    assert derived.as_dict()["notes"] == derived.notes


def test_statuses_are_an_enum_that_reads_as_text(tmp_path: Path) -> None:
    report_path = tmp_path / "r.json"
    report = medeq.convert(get_testdata_file("CT_small.dcm"), tmp_path / "o", report=report_path)
    [result] = report.files
    assert result.status is medeq.Status.CONVERTED and result.status == "converted"
    assert f"{result.status:>10}|{result.status}" == " converted|converted"
    assert json.loads(report_path.read_text())["files"][0]["status"] == "converted"
    assert report.totals == {"converted": 1, "skipped": 0, "failed": 0, "planned": 0, "total": 1}
