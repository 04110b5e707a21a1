"""The ``medeq`` command: argument parsing, progress and exit codes around the library.

Commands: ``convert`` (:func:`medeq.convert`), ``info`` (:func:`medeq.read_info`) and
``plot`` (:func:`medeq.plot_comparison`). Errors that medeq raises on purpose
(:class:`medeq.MedeqError`) are printed as ``medeq: error: <message>``; anything else is
a bug and shows its traceback.

Exit codes: 0 all converted; 1 some inputs failed; 2 usage error or nothing to do;
130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 141 output pipe closed early.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from ._scheduler import STOPS_THE_BATCH, failure_text
from .convert import FileResult, Status, convert
from .errors import MedeqError

__all__ = ["main", "main_exit"]


def _sample_files() -> list[str]:
    """Real images bundled with pydicom: a CT, an MR and a computed radiograph."""
    from pydicom.data import get_testdata_file

    names = ["CT_small.dcm", "examples_overlay.dcm", "6154"]
    files = [get_testdata_file(n) for n in names]
    return [str(f) for f in files if f]


class Progress:
    """A progress bar (tqdm) on a terminal; nothing at all anywhere else.

    Lines printed meanwhile go through :meth:`say`, which keeps the bar below them.
    """

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.bar: Any = None

    def start(self, total: int) -> None:
        """Show the bar, once the number of files is known."""
        if self.enabled:
            from tqdm import tqdm  # only on a terminal: no import cost in a pipeline

            self.bar = tqdm(total=total, unit="file", file=self.stream, leave=False)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def say(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medeq",
        description="DICOM-aware contrast enhancement by histogram equalization.",
    )
    parser.add_argument("--version", action="version", version=f"medeq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    conv = sub.add_parser(
        "convert",
        help="equalize files, folders and series into derived DICOM",
        description="Equalize DICOM files, folders (recursive) and DICOMDIRs. Series are "
        "equalized as volumes (one histogram per series) unless --per-slice. The output "
        "tree mirrors the inputs; previews sit beside their DICOM files.",
    )
    conv.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="files, folders or DICOMDIRs; '-' reads paths from standard input",
    )
    conv.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    conv.add_argument(
        "--sample",
        action="store_true",
        help="convert real sample images bundled with pydicom (CT, MR, CR)",
    )
    _add_method_options(conv)
    conv.add_argument(
        "--transfer-syntax",
        default="explicit-little",
        choices=["explicit-little", "rle", "jpeg-ls", "jpeg2000"],
        help="how the DICOM files are encoded (all lossless; default %(default)s)",
    )
    conv.add_argument(
        "--preview",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write a JPEG beside each DICOM file (default: yes)",
    )
    conv.add_argument(
        "--figure", action="store_true", help="write the comparison figure (PNG) for each series"
    )
    conv.add_argument(
        "--jobs",
        "-j",
        type=int,
        default=None,
        metavar="N",
        help="worker processes (default: all cores, one per 32 files for small batches)",
    )
    conv.add_argument("--report", metavar="FILE.json", help="write a JSON report")
    conv.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    conv.add_argument(
        "--no-sync",
        action="store_true",
        help="do not flush the outputs to disk (faster when the disk is busy; a power cut "
        "soon after may cut files short, which a rerun reports)",
    )
    conv.add_argument(
        "--no-private", action="store_true", help="leave private attributes out of the outputs"
    )
    conv.add_argument("--dry-run", action="store_true", help="show what would be written")
    conv.add_argument(
        "--quiet", "-q", action="store_true", help="no progress bar and no summary; errors only"
    )
    conv.add_argument(
        "--verbose", "-v", action="store_true", help="log details; tracebacks for failures"
    )

    info = sub.add_parser("info", help="describe DICOM files from their headers")
    info.add_argument("files", nargs="+", metavar="FILE")
    info.add_argument("--json", action="store_true", help="one JSON document on stdout")

    plot = sub.add_parser("plot", help="the comparison figure for one file")
    plot.add_argument("file", metavar="FILE")
    plot.add_argument("-o", "--output", required=True, metavar="OUT.png")
    _add_method_options(plot)
    return parser


def _add_method_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--method",
        default="global",
        choices=["global", "clahe"],
        help="global equalization or CLAHE (default %(default)s)",
    )
    p.add_argument(
        "--bins",
        type=int,
        default=None,
        metavar="N",
        help="histogram bins (default: one per level within the window)",
    )
    p.add_argument(
        "--levels",
        type=int,
        default=None,
        metavar="N",
        help="output levels (default: 2**BitsStored of the source, 256..65536)",
    )
    p.add_argument(
        "--window",
        default="auto",
        metavar="auto|none|PRESET|C,W|INDEX",
        help="VOI before equalizing: the file's window (auto), the full range "
        "(none), a CT preset (brain, subdural, stroke, lung, mediastinum, abdomen, "
        "liver, bone), an explicit center,width, or the file's window number",
    )
    p.add_argument(
        "--mask",
        default="none",
        choices=["none", "auto"],
        help="build the histogram from the body/object only (auto)",
    )
    p.add_argument(
        "--per-slice", action="store_true", help="one histogram per slice instead of one per series"
    )
    p.add_argument(
        "--variant",
        default="standard",
        choices=["standard", "seed"],
        help="LUT formula: standard (OpenCV) or seed (round(cdf*(L-1)))",
    )
    p.add_argument(
        "--clip-limit",
        type=float,
        default=0.01,
        metavar="F",
        help="CLAHE clip limit, 0..1 (default %(default)s)",
    )
    p.add_argument(
        "--kernel-size",
        type=int,
        default=None,
        metavar="N",
        help="CLAHE tile size in pixels (default: 1/8 of each side)",
    )
    p.add_argument(
        "--redistribution",
        default="limited",
        choices=["limited", "uniform"],
        help="CLAHE: clipped counts go to the bins below the limit (limited, as "
        "scikit-image) or to every bin (uniform, as OpenCV)",
    )


def _method_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    window: Any = args.window
    return {
        "method": args.method,
        "bins": args.bins,
        "levels": args.levels,
        "window": window,
        "mask": None if args.mask == "none" else args.mask,
        "per_slice": args.per_slice,
        "variant": args.variant,
        "clip_limit": args.clip_limit,
        "kernel_size": args.kernel_size,
        "redistribution": args.redistribution,
    }


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="medeq: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        logging.getLogger("pydicom").setLevel(logging.ERROR)


def _cmd_convert(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    inputs: list[str] = []
    for item in args.inputs:
        if item == "-":
            inputs += [line.strip() for line in sys.stdin if line.strip()]
        else:
            inputs.append(item)
    if args.sample:
        inputs += _sample_files()
    if not inputs:
        parser.error("convert: give at least one INPUT (or '-', or --sample)")
    progress = Progress(sys.stderr, sys.stderr.isatty() and not args.quiet)
    counted: set[int] = set()

    def on_result(result: FileResult) -> None:
        if id(result) not in counted:  # a file whose flush fails is told of twice
            counted.add(id(result))
            progress.update()
        if result.status is Status.FAILED:
            progress.say(f"medeq: error: {result.error}")

    started = time.perf_counter()
    try:
        report = convert(
            inputs,
            args.output,
            transfer_syntax=args.transfer_syntax,
            preview=args.preview,
            figure=args.figure,
            jobs=args.jobs,
            overwrite=args.overwrite,
            dry_run=args.dry_run,
            keep_private=not args.no_private,
            sync=not args.no_sync,
            quiet_decoders=not args.verbose,
            progress=on_result,
            on_start=progress.start,
            report=args.report,
            **_method_kwargs(args),
        )
    finally:
        progress.close()
    if args.dry_run and not args.quiet:
        for f in report.files:
            if f.status in (Status.PLANNED, Status.SKIPPED):
                print(f"{f.status:9} {f.input} -> {', '.join(f.outputs) or '-'}")
        for name, why in report.ignored:
            print(f"{'ignored':9} {name} ({why})")
    if not args.quiet:
        t = report.totals
        where = f" -> {args.output}" if not args.dry_run else " (dry run)"
        extra = f", report {args.report}" if args.report else ""
        not_dicom = sum(why == "not DICOM" for _, why in report.ignored)
        ignored = ", ".join(
            part
            for part in (
                f"{not_dicom} not DICOM" if not_dicom else "",
                f"{len(report.ignored) - not_dicom} unreadable"
                if len(report.ignored) > not_dicom
                else "",
            )
            if part
        )
        ignored = f" ({ignored}, ignored)" if ignored else ""
        print(
            f"medeq: {t['converted']} converted, {t['skipped']} skipped, {t['failed']} failed"
            f"{', ' + str(t['planned']) + ' planned' if args.dry_run else ''} of {t['total']} "
            f"file(s){ignored} in {time.perf_counter() - started:.1f} s{where}{extra}",
            file=sys.stderr,
        )
    return report.exit_code


def _cmd_info(args: argparse.Namespace) -> int:
    from .reader import read_info

    status = 0
    records = []
    for name in args.files:
        try:
            info = read_info(name)
        except STOPS_THE_BATCH:
            raise
        except BaseException as exc:  # one file's failure, even a bug, is that file's alone
            print(f"medeq: error: {failure_text(exc, name)}", file=sys.stderr)
            status = 1
            continue
        if args.json:
            records.append(info.as_dict())
            continue
        windows = (
            "; ".join(
                f"{w.center:g}/{w.width:g} {w.function}"
                + (f" ({w.explanation})" if w.explanation else "")
                for w in info.windows
            )
            or "none"
        )
        rescale = f"slope {info.rescale_slope:g}, intercept {info.rescale_intercept:g}"
        if info.rescale_type:
            rescale += f" ({info.rescale_type})"
        if info.modality_lut:
            rescale = "Modality LUT Sequence"
        ts = info.transfer_syntax_name + (" (inferred)" if info.transfer_syntax_inferred else "")
        print(name)
        for key, value in (
            ("modality", info.modality or "-"),
            ("size", f"{info.columns} x {info.rows}, {info.frames} frame(s)"),
            (
                "bits",
                f"{info.bits_allocated} allocated, {info.bits_stored} stored, "
                f"{'signed' if info.signed else 'unsigned'}",
            ),
            ("photometric", f"{info.photometric} ({info.samples_per_pixel} sample(s))"),
            ("transfer", f"{ts} {info.transfer_syntax}"),
            ("rescale", rescale),
            ("windows", windows + (" + VOI LUT Sequence" if info.voi_lut else "")),
            ("series", f"{info.series_instance_uid} #{info.series_number}"),
            ("instance", f"{info.sop_instance_uid} #{info.instance_number}"),
        ):
            print(f"  {key:12} {value}")
    if args.json:
        print(json.dumps(records, indent=2))
    return status


def _cmd_plot(args: argparse.Namespace) -> int:
    from .enhance import enhance
    from .preview import plot_comparison
    from .reader import read

    image = read(args.file)
    derived = enhance(image, **_method_kwargs(args))
    path = plot_comparison(image, derived, Path(args.output))
    print(path)
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it stops as on Ctrl-C (report written)."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    _configure_logging(verbose)
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        if args.command == "convert":
            return _cmd_convert(args, parser)
        if args.command == "info":
            return _cmd_info(args)
        return _cmd_plot(args)
    except KeyboardInterrupt as exc:
        how = "terminated" if isinstance(exc, Terminated) else "interrupted"
        report = getattr(args, "report", None)
        written = f"; the report {report} lists what finished" if report else ""
        with contextlib.suppress(OSError):
            print(
                f"\nmedeq: {how}; finished outputs are complete, run again to resume{written}",
                file=sys.stderr,
            )
        return 143 if isinstance(exc, Terminated) else 130
    except MedeqError as exc:
        if verbose:
            traceback.print_exc()
        print(f"medeq: error: {exc}", file=sys.stderr)
        return 2 if args.command == "convert" else 1
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def main_exit() -> None:
    """Console-script entry point: run :func:`main` and exit with its code.

    A reader that stops early (``medeq info ... | head``) closes the pipe: the rest of
    the output is dropped quietly, and the exit code is 141 (128 + SIGPIPE), as a shell
    command killed by the signal would give.
    """
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would try to flush stdout again at exit and complain: point it at
        # /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 141
    # The process ends here. Python's last collection would walk every object left,
    # most of them the imports' (some 40 ms); frozen, they are left to the exit.
    gc.freeze()
    sys.exit(code)
