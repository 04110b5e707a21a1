"""medeq's benchmark suite: every case times medeq and its peers in the same run.

    python benchmarks/run.py                  # all cases, full size
    python benchmarks/run.py --quick          # small inputs, few rounds (CI smoke)
    python benchmarks/run.py --case global-8bit --json /tmp/r.json
    python benchmarks/run.py --list

Prints one table per case (median times, Mpix/s, each peer's time over medeq's, targets)
and writes everything, with the machine it ran on, as JSON (default
benchmarks/results/latest.json). Inputs are generated from fixed seeds. Speed is never
asserted: a target that is not met is reported, and the exit status stays 0.

A case is a function ``case(ctx: Context) -> CaseResult`` listed in the ``CASES`` dict
of a module named in ``MODULES`` below; new groups of cases (series conversion through
the CLI, CLAHE, cold start) go in modules of their own.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
try:
    import medeq  # noqa: F401
except ImportError:  # a fresh clone without an install
    sys.path.insert(0, str(HERE.parent / "src"))

import _harness  # noqa: E402

#: Modules with a CASES dict, in the order their cases run.
MODULES = ["cases_core", "cases_clahe", "cases_convert"]

Case = Callable[[_harness.Context], _harness.CaseResult]


def all_cases() -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for name in MODULES:
        cases.update(importlib.import_module(name).CASES)
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs and few rounds")
    parser.add_argument(
        "--json",
        type=Path,
        default=HERE / "results" / "latest.json",
        help="where to write the results (default: benchmarks/results/latest.json)",
    )
    parser.add_argument("--case", action="append", help="run only this case (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--rounds", type=int, help="most timed calls per peer (default 31)")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for other processes to go quiet",
    )
    args = parser.parse_args(argv)

    cases = all_cases()
    if args.list:
        for name, case in cases.items():
            print(f"{name:24} {(case.__doc__ or '').strip().splitlines()[0]}")
        return 0
    chosen = args.case or list(cases)
    unknown = [c for c in chosen if c not in cases]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; --list shows them")
    if "bandwidth" in cases and "bandwidth" not in chosen:
        chosen.insert(0, "bandwidth")  # the floors of the other cases need it

    if args.wait_idle > 0:
        load = _harness.wait_until_idle(args.wait_idle)
        if load is not None:
            print(f"other processes use {load:.0%} of the CPUs", file=sys.stderr)
    rounds = args.rounds or (3 if args.quick else 31)
    ctx = _harness.Context(quick=args.quick, rounds=rounds, budget_s=0.3 if args.quick else 20.0)
    info = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "rounds": rounds,
        "machine": _harness.machine(),
    }
    m = info["machine"]
    print(
        f"# medeq {m['medeq']} on {m['cpu']} ({m['cpus_usable']} CPUs), Python {m['python']}, "
        f"numpy {m['numpy']}, numba {m['numba']}, OpenCV {m['opencv']}, "
        f"scikit-image {m['scikit-image']}\n"
    )
    results = []
    for name in chosen:
        start = time.perf_counter()
        meter = _harness.LoadMeter()
        result = cases[name](ctx)
        result.other_load = meter.others()
        print(_harness.table(result))
        print(f"({time.perf_counter() - start:.1f} s)\n", flush=True)
        results.append(result)
    _harness.write_json(args.json, info, results)
    print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
