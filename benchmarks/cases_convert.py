"""Command-line cases: series conversion, its peak memory, and cold start.

Every timed call is a new process, as a PACS export script would run it, so the times
include interpreter start-up and imports for medeq and its peers alike. The series is
synthetic CT (see ``convert_peers.make_series``), written as real DICOM files first.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from _harness import CaseResult, Context, Peer, Row, rows_for, target, time_peers
from convert_peers import make_series

HERE = Path(__file__).resolve().parent
SIDE = 512


_bytecode: dict[str, str] = {}


def child_env() -> dict[str, str]:
    """The environment of every timed process: this one's, with bytecode cached.

    An installed package has its modules compiled to bytecode (pip does it at install
    time; an editable install writes it on first import). Where PYTHONDONTWRITEBYTECODE
    is set, every process would compile medeq's modules from source again, about 60 ms
    that no installed copy pays: the children then cache bytecode in a folder of this
    run instead, filled once before the first timed call.
    """
    if "PYTHONDONTWRITEBYTECODE" not in os.environ:
        return dict(os.environ)
    if not _bytecode:
        folder = tempfile.mkdtemp(prefix="medeq-bench-pycache-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = folder
        # What the timed commands import: medeq and the scripts' modules, the worker
        # pool's, numba's (500 slices load the compiled kernels); then one conversion.
        warm = (
            "import medeq.cli, medeq.convert, medeq.preview, medeq._jit, PIL.Image, "
            "PIL.JpegImagePlugin, skimage.exposure, concurrent.futures.process, "
            "multiprocessing.connection, multiprocessing.popen_fork"
        )
        subprocess.run([sys.executable, "-c", warm], check=True, env=env)
        from pydicom.data import get_testdata_file

        subprocess.run(
            _medeq(get_testdata_file("CT_small.dcm"), "-o", os.path.join(folder, "out")),
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        _bytecode.update(env)
    return dict(_bytecode)


def _medeq(*args: str) -> list[str]:
    return [sys.executable, "-m", "medeq", "convert", *args, "--quiet"]


def _peers_script(*args: str) -> list[str]:
    return [sys.executable, str(HERE / "convert_peers.py"), *args]


class _Runs:
    """Runs commands that write into a fresh output folder on every call.

    Before each call (untimed, :meth:`settle`) the previous call's outputs are deleted
    and the disk is flushed: a run that flushes its own files (medeq without
    ``--no-sync``) then does not also wait for the writes the runs before it left
    behind (the scripts flush nothing). In one process, one after the other, they cost
    a synced run of 100 slices 0.3-0.8 s in the suite.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0

    def peer(
        self, name: str, command: Callable[[Path], list[str]], pixels: int, note: str = ""
    ) -> Peer:
        """A peer that runs ``command(output folder)``, the previous outputs settled first."""

        def run() -> None:
            self.count += 1
            out = self.root / f"out{self.count}"
            subprocess.run(command(out), check=True, stdout=subprocess.DEVNULL, env=child_env())

        return Peer(name, run, pixels, note=note, before=self.settle)

    def settle(self) -> None:
        for out in self.root.glob("out*"):
            shutil.rmtree(out, ignore_errors=True)
        if hasattr(os, "sync"):
            os.sync()


def series_convert(ctx: Context) -> CaseResult:
    """A 100-slice CT series through `medeq convert` (--jobs 1, 2), a naive script, the floor."""
    slices = 12 if ctx.quick else 100
    with tempfile.TemporaryDirectory(prefix="medeq-bench-") as tmp:
        src = Path(tmp) / "series"
        make_series(slices, src, SIDE)
        runs = _Runs(Path(tmp))
        pixels = slices * SIDE * SIDE
        peers = [
            runs.peer(
                "medeq convert --jobs 1",
                lambda o: _medeq(str(src), "-o", str(o), "--jobs", "1"),
                pixels,
            ),
            runs.peer(
                "medeq convert --jobs 2",
                lambda o: _medeq(str(src), "-o", str(o), "--jobs", "2"),
                pixels,
            ),
            runs.peer(
                "medeq convert --jobs 1 --no-sync",
                lambda o: _medeq(str(src), "-o", str(o), "--jobs", "1", "--no-sync"),
                pixels,
                note="outputs not flushed to disk at the end (neither are the scripts')",
            ),
            runs.peer(
                "naive script",
                lambda o: _peers_script("naive", str(src), str(o)),
                pixels,
                note="pydicom read, skimage equalize_hist, new UIDs, save, Pillow JPEG",
            ),
            runs.peer(
                "floor: pydicom read + write",
                lambda o: _peers_script("floor", str(src), str(o)),
                pixels,
                note="decode and write the same pixels, no processing",
            ),
        ]
        timings = time_peers(peers, rounds=ctx.rounds, budget_s=ctx.budget_s, block=1)
    result = CaseResult(
        "series-convert",
        f"CT series, {slices} slices of {SIDE}x{SIDE}, one process per run",
        pixels,
    )
    result.rows = rows_for(peers, timings, pixels, "medeq convert --jobs 1")
    one, two = timings["medeq convert --jobs 1"][0], timings["medeq convert --jobs 2"][0]
    floor, naive = timings["floor: pydicom read + write"][0], timings["naive script"][0]
    result.facts["outputs per medeq run"] = f"{slices} DICOM + {slices} JPEG previews"
    target(result, "medeq --jobs 1 / floor", one / floor, 1.3, at_most=True)
    target(result, "naive script / medeq --jobs 1", naive / one, 3.0, at_most=False)
    target(result, "medeq --jobs 1 / medeq --jobs 2", one / two, 1.6, at_most=False)
    unsynced = timings["medeq convert --jobs 1 --no-sync"][0]
    result.facts["medeq --jobs 1 --no-sync / floor"] = round(unsynced / floor, 2)
    result.facts["naive script / medeq --jobs 1 --no-sync"] = round(naive / unsynced, 2)
    return result


# --------------------------------------------------------------------------- memory


def _tree_rss(pid: int) -> tuple[int, int]:
    """Resident bytes of ``pid`` alone and of it with all its descendants (Linux)."""
    page = os.sysconf("SC_PAGE_SIZE")

    def rss(p: int) -> int:
        try:
            with open(f"/proc/{p}/statm") as f:
                return int(f.read().split()[1]) * page
        except OSError:
            return 0

    def children(p: int) -> list[int]:
        kids: list[int] = []
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids += [int(c) for c in f.read().split()]
        except OSError:
            pass
        return kids

    own = rss(pid)
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss(p)
        stack += children(p)
    return own, total


def peak_memory(command: list[str]) -> tuple[float, int, int]:
    """Run ``command``; return (seconds, peak RSS of the process, peak RSS of its tree)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=child_env())
    peaks = [0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            own, tree = _tree_rss(proc.pid)
            peaks[0], peaks[1] = max(peaks[0], own), max(peaks[1], tree)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    code = proc.wait()
    elapsed = time.perf_counter() - start
    done.set()
    sampler.join()
    if code != 0:
        raise RuntimeError(f"{command} exited with {code}")
    return elapsed, peaks[0], peaks[1]


def series_memory(ctx: Context) -> CaseResult:
    """Peak memory of `medeq convert` on a 500-slice CT series (--jobs 1 and 2)."""
    slices = 40 if ctx.quick else 500
    pixels = slices * SIDE * SIDE
    result = CaseResult(
        "series-memory", f"Peak memory, CT series of {slices} slices of {SIDE}x{SIDE}", pixels
    )
    if not sys.platform.startswith("linux"):
        result.facts["skipped"] = "needs /proc (Linux)"
        return result
    with tempfile.TemporaryDirectory(prefix="medeq-bench-") as tmp:
        src = Path(tmp) / "series"
        make_series(slices, src, SIDE)
        volume_mb = pixels * 2 / 2**20
        result.facts["series on disk"] = (
            f"{sum(f.stat().st_size for f in src.iterdir()) / 2**20:.0f} MB; "
            f"int16 volume {volume_mb:.0f} MB"
        )
        for jobs in ("1", "2"):
            out = Path(tmp) / f"out{jobs}"
            seconds, own, tree = peak_memory(_medeq(str(src), "-o", str(out), "--jobs", jobs))
            shutil.rmtree(out, ignore_errors=True)
            result.rows.append(
                Row(
                    f"medeq convert --jobs {jobs}",
                    seconds,
                    pixels / seconds / 1e6,
                    None,
                    1,
                    f"peak RSS {own / 2**20:.0f} MB main process, "
                    f"{tree / 2**20:.0f} MB all processes",
                )
            )
            result.facts[f"--jobs {jobs} peak RSS, MB (main, all processes)"] = [
                round(own / 2**20),
                round(tree / 2**20),
            ]
    return result


# --------------------------------------------------------------------------- cold start


def cold_start(ctx: Context) -> CaseResult:
    """One-file `medeq convert`: first run after install (no caches), then the second run."""
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm")
    result = CaseResult("cold-start", "Cold start: `medeq convert` of one CT file", 128 * 128)
    with tempfile.TemporaryDirectory(prefix="medeq-bench-") as tmp:
        # An empty numba cache stands in for a fresh install (pip compiles the bytecode
        # at install time, so that is there on a first run too).
        env = {**child_env(), "NUMBA_CACHE_DIR": str(Path(tmp) / "numba")}
        times = []
        for n in range(3):
            out = Path(tmp) / f"out{n}"
            start = time.perf_counter()
            subprocess.run(
                _medeq(ct, "-o", str(out)), check=True, env=env, stdout=subprocess.DEVNULL
            )
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, env=env)
        bare = time.perf_counter() - start
    for name, seconds in [
        ("first run (empty caches)", times[0]),
        ("second run", times[1]),
        ("third run", times[2]),
        ("python -c pass", bare),
    ]:
        result.rows.append(Row(name, seconds, result.pixels / seconds / 1e6, None, 1))
    target(result, "second run, seconds", times[1], 2.0, at_most=True)
    return result


CASES = {
    "series-convert": series_convert,
    "series-memory": series_memory,
    "cold-start": cold_start,
}
