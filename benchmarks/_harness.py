"""Timing, machine facts and result tables for the benchmark suite (no medeq logic here).

Peers of a case are timed round by round, each round calling every peer a few times in
a rotating order, so load from other processes on a shared machine hits every peer
alike; the table reports medians. The CPU time other processes used during each case is
recorded, so a busy machine shows in the results instead of hiding in them.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------- load


def _busy_jiffies() -> tuple[int, int] | None:
    """(CPU time of all processes, of this process and its children), in clock ticks.

    None off Linux. Children count once they have been waited for: the command-line
    cases run medeq in subprocesses, which are not "other" load.
    """
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle, sum(int(t) for t in own[11:15])  # u/s time, own + children


class LoadMeter:
    """The share of the machine's CPUs that other processes used while it ran."""

    def __init__(self) -> None:
        self._start = _busy_jiffies()
        self._t0 = time.perf_counter()

    def others(self) -> float | None:
        end = _busy_jiffies()
        if self._start is None or end is None:
            return None
        elapsed = time.perf_counter() - self._t0
        ticks = os.sysconf("SC_CLK_TCK") * elapsed * (os.cpu_count() or 1)
        if ticks <= 0:
            return None
        other = (end[0] - self._start[0]) - (end[1] - self._start[1])
        return max(0.0, min(1.0, other / ticks))


def wait_until_idle(limit_s: float, threshold: float = 0.1) -> float | None:
    """Wait (up to ``limit_s``) until other processes use under ``threshold`` of the CPUs."""
    deadline = time.perf_counter() + limit_s
    while True:
        meter = LoadMeter()
        time.sleep(1.0)
        load = meter.others()
        if load is None or load < threshold or time.perf_counter() > deadline:
            return load


# --------------------------------------------------------------------------- timing


@dataclass
class Context:
    """What every case is given: the run's settings and facts shared between cases."""

    quick: bool
    #: Most timed calls per peer.
    rounds: int
    #: Seconds of timed calls a peer gets before its run count is cut (to ``min_runs``).
    budget_s: float
    #: Facts one case measures for later ones (the copy bandwidth).
    store: dict[str, Any] = field(default_factory=dict)


@dataclass
class Peer:
    """One contender of a case: a call to time, and how to read its result."""

    name: str
    call: Callable[[], object]
    #: Pixels the call processes (a crop for very slow peers).
    pixels: int
    #: Multiply the measured time by this to report it for the case's full input.
    scale: float = 1.0
    note: str = ""
    #: The most calls worth making (very slow peers).
    max_runs: int | None = None
    #: Called before every call, untimed (clearing up after the previous one).
    before: Callable[[], object] | None = None


@dataclass
class Row:
    peer: str
    median_s: float
    mpix_s: float
    vs_medeq: float | None
    runs: int
    note: str = ""


@dataclass
class CaseResult:
    name: str
    title: str
    pixels: int
    rows: list[Row] = field(default_factory=list)
    #: Facts measured by the case (bandwidths, floors, parity checks).
    facts: dict[str, Any] = field(default_factory=dict)
    #: Target name -> (measured ratio, limit, met).
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    other_load: float | None = None


def time_peers(
    peers: list[Peer], *, rounds: int, budget_s: float, min_runs: int = 3, block: int = 5
) -> dict[str, tuple[float, int]]:
    """Median time (scaled) and run count of every peer, interleaved in blocks.

    Every peer is called once first, untimed (compilation, caches), then once more, timed,
    to size its number of runs (peers of at most three runs skip it). Then, round by
    round, each peer runs ``block`` calls in a row; the order of the peers rotates from
    round to round. Blocks rather than single calls: libraries with thread pools (OpenCV,
    medeq) leave their helper threads spinning or waking for a moment after a call,
    which would otherwise land on whichever peer runs next. A peer makes at most
    ``rounds`` calls, fewer when ``budget_s`` would not cover them, but at least
    ``min_runs`` (and never more than its ``max_runs``).
    """
    runs: dict[str, int] = {}
    times: dict[str, list[float]] = {p.name: [] for p in peers}
    for peer in peers:
        took = []
        for _ in range(1 if peer.max_runs is not None and peer.max_runs <= 3 else 2):
            if peer.before is not None:
                peer.before()
            start = time.perf_counter()
            peer.call()
            took.append(time.perf_counter() - start)
        if len(took) == 2:
            # The second call sizes the runs (a first call may load code or fill caches,
            # and would leave a peer that is fast afterwards with too few runs) and counts.
            times[peer.name].append(took[1] * peer.scale)
        fit = int(budget_s / max(took[-1], 1e-9))
        n = max(min_runs, min(rounds, fit))
        runs[peer.name] = n if peer.max_runs is None else min(n, peer.max_runs)
    r = 0
    while any(len(times[p.name]) < runs[p.name] for p in peers):
        order = peers[r % len(peers) :] + peers[: r % len(peers)]
        for peer in order:
            for _ in range(block):
                if len(times[peer.name]) >= runs[peer.name]:
                    break
                if peer.before is not None:
                    peer.before()
                start = time.perf_counter()
                peer.call()
                times[peer.name].append((time.perf_counter() - start) * peer.scale)
        r += 1
    return {name: (statistics.median(t), len(t)) for name, t in times.items()}


def rows_for(
    peers: list[Peer], timings: dict[str, tuple[float, int]], full_pixels: int, medeq: str
) -> list[Row]:
    """Table rows: Mpix/s for the full input, and each peer's time over medeq's."""
    base = timings[medeq][0]
    return [
        Row(
            peer=p.name,
            median_s=timings[p.name][0],
            mpix_s=full_pixels / timings[p.name][0] / 1e6,
            vs_medeq=timings[p.name][0] / base,
            runs=timings[p.name][1],
            note=p.note,
        )
        for p in peers
    ]


def target(result: CaseResult, name: str, ratio: float, limit: float, at_most: bool) -> None:
    """Record a target: ``ratio`` must be at most (or at least) ``limit``."""
    met = ratio <= limit if at_most else ratio >= limit
    result.targets[name] = {"ratio": ratio, "limit": limit, "at_most": at_most, "met": met}


# --------------------------------------------------------------------------- machine


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    import medeq
    from medeq import _parallel

    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "cpus_usable": usable,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": _version("numpy"),
        "numba": _version("numba"),
        "opencv": _version("opencv-python-headless") or _version("opencv-python"),
        "scikit-image": _version("scikit-image"),
        "medeq": medeq.__version__,
        "medeq_threads": _parallel.pool().threads,
    }


# --------------------------------------------------------------------------- output


def _fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:8.2f} s "
    return f"{seconds * 1e3:8.2f} ms"


def table(result: CaseResult) -> str:
    """The case as a plain-text (Markdown-compatible) table."""
    lines = [
        f"### {result.title}",
        "",
        "| peer | median | Mpix/s | time / medeq | runs | note |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in result.rows:
        ratio = "" if row.vs_medeq is None else f"{row.vs_medeq:.2f}x"
        lines.append(
            f"| {row.peer} | {_fmt_time(row.median_s).strip()} | {row.mpix_s:,.1f} "
            f"| {ratio} | {row.runs} | {row.note} |"
        )
    notes = [f"- {name}: {value}" for name, value in result.facts.items()]
    for name, t in result.targets.items():
        op = "<=" if t["at_most"] else ">="
        verdict = "met" if t["met"] else "NOT met"
        notes.append(f"- target {name}: {t['ratio']:.2f} {op} {t['limit']} -> {verdict}")
    if result.other_load is not None:
        notes.append(f"- CPU used by other processes meanwhile: {result.other_load:.0%}")
    return "\n".join([*lines, "", *notes] if notes else lines)


def write_json(path: Path, info: dict[str, Any], results: list[CaseResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {**info, "cases": [asdict(r) for r in results]}
    path.write_text(json.dumps(doc, indent=2) + "\n")
