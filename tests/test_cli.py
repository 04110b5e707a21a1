"""The medeq command, run as a user runs it: a real subprocess on real files."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

import medeq as lib

from .conftest import shared_file

GOOD = ["wg04__CT1_RLE.dcm", "wg04__RG3_UNC.dcm", "pydicom__MR_small_bigendian.dcm"]
BAD = [
    "derived__CT1_JPLL_corrupted_bytes.dcm",
    "derived__empty_zero_bytes.dcm",
    "pydicom__examples_palette.dcm",
]


def medeq(
    *args: str, stdin: str | None = None, check_rc: int | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(
        [sys.executable, "-m", "medeq", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check_rc is not None:
        assert run.returncode == check_rc, run.stderr
    return run


def make_series(folder: Path, count: int, size: int = 128) -> list[Path]:
    """A synthetic CT series: pydicom's CT_small re-used with new UIDs and positions."""
    folder.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series_uid = generate_uid()
    rng = np.random.default_rng(3)
    paths = []
    for i in range(count):
        ds = template.copy()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0, 0, float(i)]
        pixels = np.roll(template.pixel_array, i, axis=0)[:size, :size]
        pixels = (pixels + rng.integers(0, 20, pixels.shape)).astype(np.int16)
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.tobytes()
        path = folder / f"slice{i:03d}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for name in GOOD:
        shutil.copy(shared_file(name), folder / "sub" / name)
    for name in BAD:
        shutil.copy(shared_file(name), folder / name)
    return folder


def test_bad_files_never_stop_the_batch(mixed: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "out", tmp_path / "report.json"
    run = medeq(
        "convert", str(mixed), "-o", str(out), "--report", str(report), "--jobs", "2", check_rc=1
    )
    # Non-TTY: no progress bar, no escape codes; one line per failed file, then a summary.
    assert "\r" not in run.stderr and "\x1b" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len([ln for ln in lines if ln.startswith("medeq: error: ")]) == len(BAD)
    assert "Traceback" not in run.stderr
    assert lines[-1].startswith("medeq: 3 converted, 0 skipped, 3 failed of 6 file(s)")
    for name in GOOD:
        assert (out / "sub" / name).is_file()
        assert (out / "sub" / name).with_suffix(".jpg").is_file()
    data = json.loads(report.read_text())
    assert data["totals"] == {"converted": 3, "skipped": 0, "failed": 3, "planned": 0, "total": 6}
    by_name = {Path(f["input"]).name: f for f in data["files"]}
    ct = by_name["wg04__CT1_RLE.dcm"]
    assert ct["status"] == "converted"
    assert ct["series_uid_in"] == str(pydicom.dcmread(shared_file(GOOD[0])).SeriesInstanceUID)
    assert ct["series_uid_out"] == str(pydicom.dcmread(out / "sub" / GOOD[0]).SeriesInstanceUID)
    assert ct["quality_after"]["uniformity"] < ct["quality_before"]["uniformity"]
    assert by_name["derived__CT1_JPLL_corrupted_bytes.dcm"]["error"].endswith(
        "(JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1]))"
    )
    assert data["parameters"]["window"] == "auto"


def test_rerun_skips_finished_outputs(mixed: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    medeq("convert", str(mixed), "-o", str(out), "--jobs", "1", check_rc=1)
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    run = medeq("convert", str(mixed), "-o", str(out), "--jobs", "1", check_rc=1)
    assert "0 converted, 3 skipped, 3 failed" in run.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamp
    # Different parameters do not silently pass for finished outputs.
    run = medeq(
        "convert", str(mixed / "sub"), "-o", str(out / "sub"), "--window", "none", check_rc=1
    )
    assert "is not this command's output for these parameters (use --overwrite" in run.stderr
    medeq(
        "convert",
        str(mixed / "sub"),
        "-o",
        str(out / "sub"),
        "--window",
        "none",
        "--overwrite",
        check_rc=0,
    )


#: Runs the command with a signal sent at a known point: once ``after`` files are
#: converted, from the progress callback (so on any machine speed the signal lands
#: mid-run). argv: signal name, after, then the command's arguments.
INTERRUPTING = """
import os, signal, sys
import medeq.cli as cli

name, after = sys.argv[1], int(sys.argv[2])
real = cli.convert
converted = 0

def convert(*args, progress, **kwargs):
    def hooked(result):
        global converted
        progress(result)
        converted += result.status == "converted"
        if converted == after:
            if name == "SIGINT":
                os.killpg(os.getpgrp(), signal.SIGINT)  # Ctrl-C reaches every process
            else:
                os.kill(os.getpid(), getattr(signal, name))
    return real(*args, progress=hooked, **kwargs)

cli.convert = convert
sys.exit(cli.main(sys.argv[3:]))
"""


def interrupted(
    signal_name: str, after: int, *args: str, capture: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``medeq ARGS`` with ``signal_name`` sent once ``after`` files are converted.

    ``capture`` False: its output is dropped, and the call returns when the process
    ends even if processes it started hold its output open.
    """
    where = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.run(
        [sys.executable, "-c", INTERRUPTING, signal_name, str(after), *args],
        stdout=where,
        stderr=where,
        text=True,
        timeout=300,
        start_new_session=True,
    )


def test_interrupted_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    for k in range(30):  # thirty one-image series: progress is visible file by file
        make_series(inputs / f"s{k:02d}", 1)
    reference = tmp_path / "ref"
    medeq("convert", str(inputs), "-o", str(reference), "--jobs", "1", check_rc=0)

    out = tmp_path / "out"
    killed = interrupted("SIGKILL", 5, "convert", str(inputs), "-o", str(out), "--jobs", "1")
    assert killed.returncode == -signal.SIGKILL
    done_before = len(list(out.rglob("*.dcm")))
    assert 5 <= done_before < 30, "the kill lands mid-way"
    # Whatever is at a final path is complete: every DICOM file there reads in full.
    for f in out.rglob("*.dcm"):
        assert pydicom.dcmread(f).pixel_array.shape == (128, 128)
    run = medeq("convert", str(inputs), "-o", str(out), "--jobs", "1", check_rc=0)
    assert f"{done_before} skipped" in run.stderr or done_before >= 29
    assert not list(out.rglob("*.part"))
    ref_files = sorted(p.relative_to(reference) for p in reference.rglob("*.dcm"))
    assert sorted(p.relative_to(out) for p in out.rglob("*.dcm")) == ref_files
    for rel in ref_files:
        a, b = pydicom.dcmread(reference / rel), pydicom.dcmread(out / rel)
        assert a.SOPInstanceUID == b.SOPInstanceUID
        assert a.SeriesInstanceUID == b.SeriesInstanceUID
        assert a.PixelData == b.PixelData


@pytest.mark.parametrize(
    ("mask", "jobs"),
    # Slice-wise and volumes in this process, with workers; and with --jobs 1, whose
    # files are written on a thread of the one process.
    [("none", "2"), ("auto", "2"), ("none", "1")],
)
def test_ctrl_c_stops_workers_at_once_and_a_rerun_finishes(
    tmp_path: Path, mask: str, jobs: str
) -> None:
    inputs = tmp_path / "in"
    for k in range(6):  # six series of four 512 x 512 slices: results too big for a pipe
        make_series(inputs / f"s{k}", 4, size=512)
    out = tmp_path / "out"
    command = ["convert", str(inputs), "-o", str(out)]
    options = ["--jobs", jobs, "--mask", mask, "--no-preview", "--report", str(tmp_path / "r.json")]
    run = interrupted("SIGINT", 1, *command, *options)
    stderr = run.stderr
    assert run.returncode == 130, stderr
    assert "interrupted; finished outputs are complete, run again to resume" in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("medeq: ") for line in lines), stderr
    # The report is written however the run ends, with what finished.
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["interrupted"] is True
    assert 1 <= report["totals"]["converted"] < 24
    assert all(Path(p).is_file() for f in report["files"] for p in f["outputs"])
    rerun = medeq(*command, *options, check_rc=0)
    assert "24 file(s)" in rerun.stderr
    assert len(list(out.rglob("*.dcm"))) == 24
    assert not list(out.rglob("*.part"))


def test_series_is_one_volume_and_jobs_agree(tmp_path: Path) -> None:
    make_series(tmp_path / "in", 12, size=96)
    one, two = tmp_path / "one", tmp_path / "two"
    medeq(
        "convert", str(tmp_path / "in"), "-o", str(one), "--jobs", "1", "--no-preview", check_rc=0
    )
    medeq(
        "convert", str(tmp_path / "in"), "-o", str(two), "--jobs", "2", "--no-preview", check_rc=0
    )
    files = sorted(one.glob("*.dcm"))
    assert len(files) == 12 and not list(one.glob("*.jpg"))
    series = {pydicom.dcmread(f).SeriesInstanceUID for f in files}
    assert len(series) == 1
    for f in files:
        assert pydicom.dcmread(f).PixelData == pydicom.dcmread(two / f.name).PixelData
    volume = np.stack([pydicom.dcmread(f).pixel_array for f in files])
    assert volume.min() == 0 and volume.max() == 65535  # one histogram over the volume
    assert {int(pydicom.dcmread(f).pixel_array.max()) for f in files} != {65535}


def test_stdin_dry_run_and_refusals(tmp_path: Path) -> None:
    paths = make_series(tmp_path / "in", 3)
    out = tmp_path / "out"
    run = medeq(
        "convert",
        "-",
        "-o",
        str(out),
        "--dry-run",
        stdin="\n".join(map(str, paths)) + "\n",
        check_rc=0,
    )
    assert run.stdout.count("planned") == 3
    assert not out.exists()
    run = medeq("convert", str(tmp_path / "in"), "-o", str(tmp_path / "in" / "out"), check_rc=2)
    assert "refusing to write into the input tree" in run.stderr
    run = medeq("convert", str(paths[0]), "-o", str(out), "--window", "soft", check_rc=2)
    assert "medeq: error: window must be 'auto', 'none'" in run.stderr
    assert "Traceback" not in run.stderr
    medeq("convert", "-o", str(out), check_rc=2)
    run = medeq("convert", str(tmp_path / "nothing-here"), "-o", str(out), check_rc=1)
    assert "no such file" in run.stderr


def test_info_and_plot(tmp_path: Path) -> None:
    ct = get_testdata_file("CT_small.dcm")
    run = medeq("info", ct, "--json", check_rc=0)
    [record] = json.loads(run.stdout)
    assert record["modality"] == "CT" and record["rows"] == 128
    run = medeq("info", ct, str(shared_file("pydicom__examples_palette.dcm")), check_rc=0)
    assert "PALETTE COLOR" in run.stdout
    run = medeq("info", str(tmp_path / "missing.dcm"), check_rc=1)
    assert "no such file" in run.stderr
    pytest.importorskip("matplotlib")
    png = tmp_path / "fig.png"
    medeq("plot", ct, "-o", str(png), "--window", "abdomen", check_rc=0)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_info_fails_a_header_that_ends_early_and_describes_the_others() -> None:
    script = Path(sys.executable).parent / "medeq"
    if not script.exists():
        pytest.skip("console script not installed (run pip install -e .)")
    cut = shared_file("derived__CT1_UNC_truncated_in_header.dcm")
    ct, palette = get_testdata_file("CT_small.dcm"), shared_file("pydicom__examples_palette.dcm")
    for extra in ([], ["--json"]):
        run = subprocess.run(
            [str(script), "info", ct, str(cut), str(palette), *extra],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert run.returncode == 1, run.stderr
        assert run.stderr.splitlines() == [
            f"medeq: error: {cut}: header ends early: CT Image Storage object without "
            "(0028,0010) Rows / (0028,0011) Columns (truncated file?)"
        ]
        if extra:
            records = json.loads(run.stdout)
            assert [r["path"] for r in records] == [ct, str(palette)]
        else:
            assert "0 x 0" not in run.stdout
            assert ct in run.stdout and "PALETTE COLOR" in run.stdout
            assert str(cut) not in run.stdout


def test_console_script_and_sample(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "medeq"
    if not script.exists():
        pytest.skip("console script not installed (run pip install -e .)")
    run = subprocess.run(
        [str(script), "convert", "--sample", "-o", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert len(list((tmp_path / "s").glob("*.jpg"))) == 3
    assert "3 converted" in run.stderr


def test_convert_with_clahe(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("wg04__RG2_UNC.dcm", "wg04__CT1_RLE.dcm"):
        shutil.copy(shared_file(name), folder / name)
    report = tmp_path / "r.json"
    medeq(
        "convert",
        str(folder),
        "-o",
        str(tmp_path / "out"),
        "--method",
        "clahe",
        "--clip-limit",
        "0.02",
        "--report",
        str(report),
        check_rc=0,
    )
    data = json.loads(report.read_text())
    assert data["totals"]["converted"] == 2
    assert data["parameters"]["method"] == "clahe"
    out = pydicom.dcmread(tmp_path / "out" / "wg04__RG2_UNC.dcm")
    assert "clahe" in out.DerivationDescription


def test_convert_with_opencv_style_clahe(tmp_path: Path) -> None:
    """--redistribution uniform reaches medeq.clahe, the description and the UIDs."""
    ct = shared_file("wg04__CT1_RLE.dcm")
    out_u, out_l = tmp_path / "u", tmp_path / "l"
    common = ["--method", "clahe", "--clip-limit", "0.02", "--no-preview"]
    medeq("convert", str(ct), "-o", str(out_u), *common, "--redistribution", "uniform", check_rc=0)
    medeq("convert", str(ct), "-o", str(out_l), *common, check_rc=0)
    uniform = pydicom.dcmread(out_u / ct.name)
    limited = pydicom.dcmread(out_l / ct.name)
    assert "uniform redistribution" in uniform.DerivationDescription
    assert "redistribution" not in limited.DerivationDescription
    assert uniform.SOPInstanceUID != limited.SOPInstanceUID
    image = lib.read(ct)
    expected = lib.enhance(image, method="clahe", clip_limit=0.02, redistribution="uniform")
    np.testing.assert_array_equal(uniform.pixel_array, expected.pixels[0])
    assert not np.array_equal(uniform.pixel_array, limited.pixel_array)
    bad = medeq("convert", str(ct), "-o", str(tmp_path / "b"), *common, "--redistribution", "x")
    assert bad.returncode == 2 and "invalid choice: 'x'" in bad.stderr


def test_no_sync_is_passed_through_and_reported(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    ct = get_testdata_file("CT_small.dcm")
    medeq(
        "convert", ct, "-o", str(tmp_path / "out"), "--no-sync", "--report", str(report), check_rc=0
    )
    data = json.loads(report.read_text())
    assert data["parameters"]["sync"] is False
    assert data["totals"]["converted"] == 1


def test_other_files_in_a_folder_are_ignored_not_failed(tmp_path: Path) -> None:
    # Export folders hold READMEs, manifests and pictures beside the DICOM files: those
    # are listed as ignored, not failures. A broken file named as DICOM still fails.
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "ct.dcm")
    (src / "README.md").write_text("# export\n")
    (src / "MANIFEST.tsv").write_text("file\tsha\n")
    (src / "thumb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)
    report = tmp_path / "r.json"
    run = medeq("convert", str(src), "-o", str(tmp_path / "out"), "--report", str(report))
    assert run.returncode == 0, run.stderr
    assert "(3 not DICOM, ignored)" in run.stderr
    data = json.loads(report.read_text())
    assert data["totals"] == {"converted": 1, "skipped": 0, "failed": 0, "planned": 0, "total": 1}
    assert sorted(Path(p).name for p in data["ignored_not_dicom"]) == [
        "MANIFEST.tsv",
        "README.md",
        "thumb.png",
    ]
    (src / "empty.dcm").write_bytes(b"")
    (src / "IM000002").write_text("not an image\n")
    run = medeq("convert", str(src), "-o", str(tmp_path / "out2"), "--report", str(report))
    assert run.returncode == 1
    failed = {
        Path(f["input"]).name
        for f in json.loads(report.read_text())["files"]
        if f["status"] == "failed"
    }
    assert failed == {"empty.dcm", "IM000002"}
    # Named on the command line, a non-DICOM file is tried, and fails.
    run = medeq("convert", str(src / "README.md"), "-o", str(tmp_path / "out3"))
    assert run.returncode == 1 and "README.md" in run.stderr


def test_a_folder_without_dicom_files_is_nothing_to_do(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "notes.txt").write_text("nothing here\n")
    run = medeq("convert", str(src), "-o", str(tmp_path / "out"))
    assert run.returncode == 2
    assert "(1 not DICOM, ignored)" in run.stderr


def test_a_terminal_shows_a_progress_bar_and_error_lines_above_it(tmp_path: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    make_series(tmp_path / "in", 3)
    (tmp_path / "in" / "broken.dcm").write_bytes(b"DICM" * 10)
    leader, follower = pty.openpty()
    # A terminal of 24 x 120 characters (a new pseudo-terminal has no size).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    try:
        run = subprocess.run(
            [sys.executable, "-m", "medeq", "convert", str(tmp_path / "in"), "-o",
             str(tmp_path / "out"), "--jobs", "1"],
            stdout=subprocess.DEVNULL,
            stderr=follower,
            timeout=300,
            check=False,
        )  # fmt: skip
        os.close(follower)
        screen = b""
        with contextlib.suppress(OSError):  # EIO once the terminal's other end is closed
            while chunk := os.read(leader, 65536):
                screen += chunk
    finally:
        os.close(leader)
    text = screen.decode(errors="replace")
    assert run.returncode == 1
    assert "file/s" in text or "s/file" in text  # tqdm's rate
    assert "/4 [" in text  # done of the 4 files found
    assert f"medeq: error: {tmp_path / 'in' / 'broken.dcm'}" in text
    assert "medeq: 3 converted, 0 skipped, 1 failed of 4 file(s)" in text
