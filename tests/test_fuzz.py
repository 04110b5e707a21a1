"""The fuzz harness (tools/fuzz.py): its machinery, and the fixed-seed CI budget.

The machinery tests (mutants reproducible, every mutator biting, each way a child can end
classified, the batch invariants checked) hold whatever medeq does. The two budget tests
run the harness as CI does -- 300 mutants through the library, and a small folder through
``medeq convert`` with --jobs 1 and 2 -- and fail on any crash, hang, abort, out-of-memory
or broken batch invariant; their message is the failure list with recipes to replay.
Deselect them with ``-k "not fuzz_budget"``.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file

import medeq

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "fuzz.py"
#: The CI budget's seed: a different one finds other mutants, not fewer problems.
CI_SEED = 20261122


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("medeq_fuzz_tool", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


fuzz = _load()


def _bundled(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert isinstance(path, str)
    return Path(path)


@pytest.fixture(scope="module")
def corpus() -> list[Any]:
    """pydicom's bundled files only: the same everywhere."""
    files: list[Any] = fuzz.load_corpus([], bundled=True)
    return files


# --------------------------------------------------------------------------- mutants


def test_mutants_are_reproducible_from_seed_and_index(corpus: list[Any]) -> None:
    names = {s.name for s in corpus}
    seen = set()
    for index in range(40):
        data, recipe = fuzz.make_mutant(corpus, 7, index)
        assert fuzz.make_mutant(corpus, 7, index) == (data, recipe)
        source, _, steps = recipe.partition(": ")
        assert source in names and steps
        assert len(recipe) < 400
        seen.add(data)
    assert len(seen) > 35  # indices give different mutants
    assert fuzz.make_mutant(corpus, 8, 0) != fuzz.make_mutant(corpus, 7, 0)


@pytest.mark.parametrize("mutator", [m for m, _ in fuzz.MUTATORS], ids=lambda m: m.__name__)
def test_every_mutator_changes_a_real_file(mutator: Any) -> None:
    data = _bundled("CT_small.dcm").read_bytes()
    made = []
    for seed in range(30):
        out = fuzz.apply(mutator, random.Random(seed), fuzz.Subject(data))
        if out is not None:
            mutated, recipe = out
            assert isinstance(mutated, bytes) and isinstance(recipe, str) and recipe
            made.append(recipe)
    assert made, f"{mutator.__name__} never changed CT_small.dcm"


def test_locate_finds_elements_where_the_bytes_are() -> None:
    data = _bundled("CT_small.dcm").read_bytes()
    rows = fuzz.Subject(data).find(0x00280010)
    assert rows is not None and rows.vr == "US" and rows.length == 2
    assert struct.unpack("<H", data[rows.value : rows.value + 2]) == (128,)
    pixels = fuzz.Subject(data).find(fuzz.PIXEL_DATA)
    assert pixels is not None and pixels.end - pixels.value == 128 * 128 * 2
    meta = fuzz.Subject(data).find(fuzz.TRANSFER_SYNTAX)
    assert meta is not None and data[meta.value : meta.end].rstrip(b"\0") == b"1.2.840.10008.1.2.1"


def test_hostile_values_are_encoded_in_a_vr_that_holds_them() -> None:
    assert fuzz.encode(46341, "US", True) == ("US", struct.pack("<H", 46341))
    assert fuzz.encode(-1, "US", True) == ("SS", struct.pack("<h", -1))
    assert fuzz.encode(2**31, "US", False) == ("UL", struct.pack(">I", 2**31))
    assert fuzz.encode(1e308, "US", True) == ("FD", struct.pack("<d", 1e308))
    assert fuzz.encode("abc", "US", True) == ("LO", b"abc ")
    assert fuzz.encode(math.nan, "DS", True) == ("DS", b"nan ")
    assert fuzz.encode(1e-320, "DS", True) == ("DS", b"1e-320")
    assert fuzz.encode("../../x", "UI", True) == ("UI", b"../../x\0")


def test_a_hostile_value_reaches_the_file() -> None:
    data = _bundled("CT_small.dcm").read_bytes()
    landed = 0
    for seed in range(400):
        out = fuzz.apply(fuzz.m_hostile_value, random.Random(seed), fuzz.Subject(data))
        match = re.fullmatch(r"Rows=(\d+)", out[1]) if out is not None else None
        if out is not None and match:
            ds = pydicom.dcmread(io.BytesIO(out[0]), force=True)
            assert ds.Rows == int(match[1])
            landed += 1
            if landed == 2:
                return
    pytest.fail("fewer than 2 of 400 draws set Rows to a whole number")


def test_an_absent_element_is_inserted_in_tag_order() -> None:
    data = _bundled("CT_small.dcm").read_bytes()
    subject = fuzz.Subject(data)
    assert subject.find(0x00281056) is None
    vr, value = fuzz.encode("SIGMOID", "CS", True)
    mutated = fuzz.set_top_level(subject, 0x00281056, vr, value)
    assert mutated is not None and len(mutated) == len(data) + 8 + len(value)
    ds = pydicom.dcmread(io.BytesIO(mutated), force=True)
    assert ds.VOILUTFunction == "SIGMOID" and list(ds.keys()) == sorted(ds.keys())
    assert ds.PixelData == pydicom.dcmread(io.BytesIO(data)).PixelData


# --------------------------------------------------------------------------- children


def _ok(path: Path, out: Path, stage: Any) -> dict[str, Any]:
    stage("read")
    return {"size": path.stat().st_size}


def _clean(path: Path, out: Path, stage: Any) -> None:
    raise medeq.NotDicomError(f"{path}: not DICOM")


def _crash(path: Path, out: Path, stage: Any) -> None:
    stage("enhance")
    raise KeyError("missing")


def _abort(path: Path, out: Path, stage: Any) -> None:
    stage("stored")
    os.abort()


def _segfault(path: Path, out: Path, stage: Any) -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def _hang(path: Path, out: Path, stage: Any) -> None:
    stage("write")
    time.sleep(60)


def _oom(path: Path, out: Path, stage: Any) -> None:
    bytearray(64 << 30)


def _exit(path: Path, out: Path, stage: Any) -> None:
    os._exit(7)


def _leave_a_process(path: Path, out: Path, stage: Any) -> None:
    if os.fork() == 0:  # keeps the pipe to the parent open
        (out.parent.parent / "grandchild.pid").write_text(str(os.getpid()))
        time.sleep(60)
        os._exit(0)


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmSize:"))
    return int(line.split()[1]) << 10


@pytest.mark.parametrize(
    ("target", "kind", "error", "stage"),
    [
        (_ok, "ok", "", "read"),
        (_clean, "clean", "NotDicomError", ""),
        (_crash, "crash", "KeyError", "enhance"),
        (_abort, "abort", "SIGABRT", "stored"),
        (_segfault, "abort", "SIGSEGV", ""),
        (_hang, "hang", "", "write"),
        (_oom, "oom", "MemoryError", ""),
        (_exit, "abort", "exit 7", ""),
    ],
    ids=lambda v: v.__name__ if callable(v) else None,
)
def test_children_are_classified(
    tmp_path: Path, target: Any, kind: str, error: str, stage: str
) -> None:
    limits = fuzz.Limits(timeout=1.0, memory=_vm_size() + (1 << 30), jobs=1)
    runner = fuzz.Runner([], limits, tmp_path, target=target)
    file = _bundled("CT_small.dcm")
    started = time.monotonic()
    (outcome,) = list(runner.run([fuzz.Task(-1, path=file, name="CT_small.dcm")]))
    assert time.monotonic() - started < 10
    assert (outcome.kind, outcome.error) == (kind, error), outcome
    assert outcome.recipe == "CT_small.dcm"
    if stage:
        assert outcome.stage == stage
    if kind == "crash":
        assert outcome.frame.startswith("tests/test_fuzz.py:") and "_crash" in outcome.frame
        assert "KeyError" in outcome.traceback
        assert outcome.group == f"crash: KeyError at {outcome.frame}"
    if kind == "ok":
        assert outcome.info == {"size": file.stat().st_size}
    assert list(tmp_path.iterdir()) == []  # the child's folder is gone


def test_a_process_the_child_leaves_behind_neither_blocks_nor_outlives_it(tmp_path: Path) -> None:
    runner = fuzz.Runner(
        [], fuzz.Limits(timeout=20.0, memory=0, jobs=1), tmp_path, _leave_a_process
    )
    started = time.monotonic()
    task = fuzz.Task(-1, path=_bundled("CT_small.dcm"), name="x")
    (outcome,) = list(runner.run([task]))
    assert outcome.kind == "ok" and time.monotonic() - started < 10
    pid = int((tmp_path / "grandchild.pid").read_text())
    deadline = time.monotonic() + 5
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(pid)


def _running(pid: int) -> bool:
    """Alive and not a zombie (who reaps an orphan is up to the system)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_children_run_in_parallel_and_all_come_back(tmp_path: Path, corpus: list[Any]) -> None:
    limits = fuzz.Limits(timeout=5.0, memory=0, jobs=2)
    runner = fuzz.Runner(corpus, limits, tmp_path, target=_ok)
    outcomes = list(runner.run(fuzz.Task(i, 3) for i in range(12)))
    assert sorted(o.index for o in outcomes) == list(range(12))
    assert all(o.kind == "ok" for o in outcomes)
    assert [o.recipe for o in sorted(outcomes, key=lambda o: o.index)] == [
        fuzz.make_mutant(corpus, 3, i)[1] for i in range(12)
    ]


def test_summary_groups_failures_with_their_shortest_recipe() -> None:
    a = fuzz.Outcome(4, "x.dcm: a much longer recipe", "crash", error="KeyError", frame="f:1")
    b = fuzz.Outcome(9, "x.dcm: short", "crash", error="KeyError", frame="f:1")
    c = fuzz.Outcome(2, "y.dcm: z", "hang", stage="write")
    d = fuzz.Outcome(3, "y.dcm: w", "clean", error="NotDicomError")
    summary = fuzz.Summary([a, b, c, d], 2.0, 5)
    assert summary.counts["crash"] == 2 and summary.counts["clean"] == 1 and summary.bad == 3
    (key, members), (key2, _) = summary.groups()
    assert key == "crash: KeyError at f:1" and members[0] is b
    assert key2 == "hang at stage write"
    doc = fuzz.summary_json(summary, fuzz.Limits(), [])
    assert doc["groups"][0]["replay"] == "python tools/fuzz.py --replay 5:9"
    assert doc["clean_errors"] == {"NotDicomError": 1}


# --------------------------------------------------------------------------- convert checks


def _report(path: Path, files: list[dict[str, Any]], ignored: list[str]) -> None:
    doc = {"files": files, "ignored": [{"path": p, "reason": "not DICOM"} for p in ignored]}
    path.write_text(json.dumps(doc))


def test_check_convert_accepts_a_sound_batch(tmp_path: Path) -> None:
    good, bad, text = tmp_path / "good.dcm", tmp_path / "bad.dcm", tmp_path / "notes.txt"
    out = tmp_path / "out"
    out.mkdir()
    (out / "good.dcm").write_bytes(b"x")
    for p in (good, bad, text):
        p.write_bytes(b"x")
    report = tmp_path / "report.json"
    files: list[dict[str, Any]] = [
        {"input": str(good), "status": "converted", "outputs": [str(out / "good.dcm")]},
        {"input": str(bad), "status": "failed", "error": "bad.dcm: not DICOM"},
    ]
    _report(report, files, [str(text)])
    assert fuzz.check_convert(1, "", [good, bad, text], [good], out, report, tmp_path) == []


def test_check_convert_names_each_broken_invariant(tmp_path: Path) -> None:
    good, bad, lost = tmp_path / "good.dcm", tmp_path / "bad.dcm", tmp_path / "lost.dcm"
    odd = tmp_path / "odd.dcm"
    out = tmp_path / "out"
    out.mkdir()
    (out / ".good.dcm.abc.part").write_bytes(b"x")
    report = tmp_path / "report.json"
    files: list[dict[str, Any]] = [
        {"input": str(good), "status": "failed", "error": ""},
        {"input": str(bad), "status": "converted", "outputs": [str(out / "bad.dcm")]},
        {"input": str(odd), "status": "failed", "error": f"{odd}: internal error KeyError at x"},
    ]
    _report(report, files, [])
    stderr = "Traceback (most recent call last):\n  File ...\nKeyError: 'x'\n"
    inputs = [good, bad, lost, odd]
    found = fuzz.check_convert(3, stderr, inputs, [good], out, report, tmp_path)
    text = "\n".join(found)
    for expected in (
        "exit code 3",
        "traceback on stderr",
        "lost.dcm: not in the report",
        "good.dcm: failed without a reason",
        "output",
        "healthy good.dcm: failed",
        "leftover partial file .good.dcm.abc.part",
        f"isolated by the batch, still a failure: {odd}: internal error KeyError",
    ):
        assert expected in text, text
    assert fuzz.check_convert(-9, "", [], [], out, tmp_path / "none.json", tmp_path) == [
        "killed by SIGKILL",
        "no report written",
    ]


def test_replay_remakes_the_mutant_and_tells_its_outcome(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    shutil.copyfile(_bundled("CT_small.dcm"), folder / "ct.dcm")
    corpus = fuzz.load_corpus([folder], bundled=False)
    data, recipe = fuzz.make_mutant(corpus, 3, 1)
    keep = tmp_path / "keep"
    args = ["--corpus", str(folder), "--no-bundled", "--replay", "3:1", "--keep", str(keep)]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode in (0, 1), proc.stderr
    assert proc.stdout.splitlines()[0] == f"recipe:  {recipe}"
    assert re.search(r"^outcome: (ok|clean|crash|hang|abort|oom)", proc.stdout, re.M)
    (kept,) = [p for p in keep.iterdir() if p.suffix == ".dcm"]
    assert kept.read_bytes() == data


def test_atheris_mode_needs_a_corpus_folder_to_grow(tmp_path: Path) -> None:
    shutil.copyfile(_bundled("CT_small.dcm"), tmp_path / "ct.dcm")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--atheris", "--no-bundled", "--corpus", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    if importlib.util.find_spec("atheris") is None:
        assert "--atheris needs atheris, which is not installed here" in proc.stderr
    else:
        assert "--grow DIR" in proc.stderr


# --------------------------------------------------------------------------- the CI budget


def _run(
    *args: str, json_path: Path, timeout: float
) -> tuple[subprocess.CompletedProcess[str], Any]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--json", str(json_path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )
    doc = json.loads(json_path.read_text()) if json_path.is_file() else {}
    return proc, doc


def test_fuzz_budget_library(tmp_path: Path) -> None:
    """300 fixed-seed mutants through read/stored/enhance/write: no crash, hang, abort, oom."""
    proc, doc = _run(
        "--seed", str(CI_SEED), "--count", "300", "--jobs", "2", "--timeout", "20",
        json_path=tmp_path / "fuzz.json", timeout=600,
    )  # fmt: skip
    assert doc, proc.stderr[-3000:]
    bad = {k: doc["counts"][k] for k in fuzz.BAD if doc["counts"][k]}
    assert proc.returncode == 0 and not bad, proc.stdout


def test_fuzz_budget_convert(tmp_path: Path) -> None:
    """10 mutants + 3 healthy files + a text file through medeq convert, --jobs 1 and 2."""
    proc, doc = _run(
        "--convert", "--seed", str(CI_SEED), "--count", "10",
        json_path=tmp_path / "convert.json", timeout=600,
    )  # fmt: skip
    assert doc, proc.stderr[-3000:]
    assert [run["jobs"] for run in doc["runs"]] == [1, 2]
    assert len(doc["healthy"]) == 3, proc.stdout
    assert proc.returncode == 0, proc.stdout
