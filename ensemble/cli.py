"""``blur-detect``: the command line (also ``python -m ensemble``).

    blur-detect scan PATH... [--recursive] [--threshold P] [--format table|csv|json|jsonl] [--output FILE]
                             [--workers N] [--model DIR] [--move-blurry DIR | --copy-blurry DIR] [--kind K] [--dry-run]
                             [--save-maps DIR] [--scale screen|native|auto] [--device auto|cpu|cuda] [--quiet]
    blur-detect undo JOURNAL|FOLDER... [--dry-run] [--foreign [--yes]] [--quiet]

Exit status: 0 every image was scored (and every move done); 1 some image could not be read, a folder argument
held no image, a move or a blur-map picture failed, the model could not be loaded, or the report could not be
written (a full disk, a closed standard output, a reader that left: ``| head``); 2 usage error; 130 interrupted
(Ctrl-C).

Output: stdout carries the report (or nothing when ``--output`` is given). Per-image errors go to stderr, one
line each (``error: PATH: reason``), as does the progress bar. Lines about moving files go to stdout, except when
stdout carries csv/json/jsonl, which they would corrupt: then they go to stderr too.

This module is the only place that prints. It imports nothing heavy at module level, so ``--help`` stays
instant; NumPy, Pillow and ONNX Runtime load when a scan starts, TensorFlow never.
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import shlex
import sys
from dataclasses import dataclass
from typing import Callable, Optional

from .cli_common import (DEFAULT_SCALE, add_scale_argument, make_output_dir, native_problem, positive_int,
                         probability_arg, write_output)
from .records import RECORD_FIELDS, error_record

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

FORMATS = ("table", "csv", "json", "jsonl")


# --------------------------------------------------------------------------------------------------------------
# Subcommand registry


@dataclass(frozen=True)
class Subcommand:
    """A ``blur-detect`` subcommand.

    ``add_arguments`` and ``run`` are ``"module:function"`` names, imported only when the parser is built or the
    command runs: ``add_arguments(parser)`` declares the options, ``run(args) -> int`` does the work and returns
    the exit status. The module must keep heavy imports inside its functions so ``--help`` stays fast.
    """

    name: str
    help: str
    add_arguments: str
    run: str


SUBCOMMANDS: list[Subcommand] = [
    Subcommand("scan", "score photos for blur; list, sort or move the blurry ones",
               "ensemble.cli:add_scan_arguments", "ensemble.cli:run_scan"),
    Subcommand("undo", "put back the files a scan moved, from its journal",
               "ensemble.cli:add_undo_arguments", "ensemble.cli:run_undo"),
    Subcommand("serve", "HTTP service: predict, list/activate/train models; review page for a folder (--root)",
               "ensemble.server.cli:add_arguments", "ensemble.server.cli:run"),
    Subcommand("cameras", "check IP cameras and streams for focus loss, once or in a watch loop",
               "ensemble.cameras.cli:add_arguments", "ensemble.cameras.cli:run"),
]


def register(command: Subcommand) -> None:
    """Add (or replace) a subcommand; for ``serve``, ``cameras`` and other commands defined elsewhere."""
    SUBCOMMANDS[:] = [c for c in SUBCOMMANDS if c.name != command.name] + [command]


def _resolve(ref: str) -> Callable:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="blur-detect",
        description="Find blurry and out-of-focus photos.",
        epilog="Exit status: 0 all scored, 1 some failures, 2 usage error, 130 interrupted. "
               "Run 'blur-detect COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in SUBCOMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        _resolve(command.add_arguments)(sub)
        sub.set_defaults(_run=command.run, _parser=sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Run ``blur-detect`` with ``argv`` (default: the process arguments); returns the exit status."""
    stdout_closed = sys.stdout is None  # started with `>&-`: _robust_streams() puts devnull there
    _robust_streams()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Reported by the command's own parser, so that each keeps its exit status for usage errors (cameras: 3).
        (getattr(args, "_parser", None) or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    args._stdout_closed = stdout_closed
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return _resolve(args._run)(args)
    except KeyboardInterrupt:
        # A second Ctrl-C, or one outside the scan loop (which reports its own progress).
        _err("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `blur-detect scan ... | head`: the reader left before the output was written; stop quietly, as cat and
        # grep do, but not with success: part of the output went nowhere.
        _silence_stdout()
        return EXIT_FAILED


def _silence_stdout() -> None:
    # After a failed write, Python's flush at exit would fail again and print "Exception ignored ...".
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _stdout_closed(args: argparse.Namespace, what: str) -> bool:
    """Say so (one line) when standard output was closed at start, so ``what`` would go nowhere."""
    closed = getattr(args, "_stdout_closed", False)
    if closed:
        _err(f"error: standard output is closed: {what} would go nowhere")
    return closed


def _robust_streams() -> None:
    # File names may not be valid UTF-8 (surrogate escapes) or not encodable in the terminal's charset: print an
    # escape rather than crash.
    if sys.stdout is None:  # started with stdout closed (`>&-`): Python leaves None, and every print would crash
        sys.stdout = open(os.devnull, "w")
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError):
            pass


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _shown(path: str) -> str:
    # A newline in a file name would split a message in two (or forge a line): control characters are shown
    # escaped, as `ls -b` does. The csv/json reports keep the exact name.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in path)


def _one_line(value: object) -> str:
    from .scan import one_line

    return one_line(value)


# --------------------------------------------------------------------------------------------------------------
# scan: arguments


def add_scan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="image files (read whatever their name) and folders (their files with an image suffix)")
    p.add_argument("-r", "--recursive", action="store_true", help="also scan folders inside the folders given")
    p.add_argument("-t", "--threshold", type=probability_arg, metavar="P",
                   help="blur probability (0-1, or a percentage) from which a photo is called blurry "
                        "(default: the model's, usually 0.5)")
    p.add_argument("-f", "--format", choices=FORMATS, default=None,
                   help="table: aligned, blurriest first, with a summary; csv; json (one array); "
                        "jsonl (one object per line, written as each image is scored) (default: table)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write the report to FILE instead of stdout (table/csv/json replace it whole at the end; "
                        "jsonl is written line by line)")
    p.add_argument("-j", "--workers", type=positive_int, metavar="N",
                   help="images read and scored at once (default: the number of cores)")
    p.add_argument("--model", metavar="DIR", help="folder holding model/ and final_model/ (default: the shipped model)")
    add_scale_argument(p)
    add_device_argument(p)
    sort = p.add_mutually_exclusive_group()
    sort.add_argument("--move-blurry", metavar="DIR",
                      help="move the blurry photos into DIR, keeping their paths below the folder scanned; "
                           "nothing is overwritten, and a journal in DIR lets 'blur-detect undo' put them back")
    sort.add_argument("--copy-blurry", metavar="DIR", help="the same, but copy instead of moving")
    p.add_argument("--kind", choices=("defocus", "motion"),
                   help="with --move-blurry/--copy-blurry: sort only the blurry photos of this kind of blur "
                        "(needs a model with a kind head; see docs/blur-kind.md)")
    p.add_argument("-n", "--dry-run", action="store_true",
                   help="with --move-blurry/--copy-blurry: print what would be moved and change nothing")
    p.add_argument("--save-maps", metavar="DIR",
                   help="write DIR/<name>.blurmap.png per photo: the photo with its per-patch blur map laid over it")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar, no device line and no line per moved file")
    p.add_argument("--plan", metavar="OUT.parquet",
                   help="with --move-blurry/--copy-blurry: take the scores from the Parquet output of an "
                        "'--engine ray' scan instead of scoring again; only files under PATH that still have the "
                        "size and modification time it recorded are sorted")
    ray = p.add_argument_group("scale-out on Ray (pip install \"blur-ensemble[ray]\"; see docs/ray.md)")
    ray.add_argument("--engine", choices=("local", "ray"), default="local",
                     help="local: threads on this machine; ray: an actor pool on a Ray cluster, writing Parquet "
                          "to --output, resumable (default: local)")
    ray.add_argument("--address", metavar="ADDR",
                     help="the Ray cluster: auto (the one started on this machine with 'ray start'), "
                          "ray://HOST:PORT (Ray Client) or HOST:PORT (default: $RAY_ADDRESS, else a new Ray "
                          "instance on this machine)")
    ray.add_argument("--actors", type=positive_int, metavar="N",
                     help="scoring actors (default: the cluster's CPUs / --cpus-per-actor)")
    ray.add_argument("--cpus-per-actor", type=positive_int, metavar="N",
                     help="CPUs each actor holds, and images it scores at once (default: 1)")
    ray.add_argument("--batch-size", type=positive_int, metavar="N",
                     help="files an actor takes at once, scored side by side by its threads (default: 8); a job "
                          "is cut into about 16 Ray tasks per actor of at most 1024 files")
    ray.add_argument("--rows-per-part", type=positive_int, metavar="N",
                     help="rows per Parquet part file; a part is also written every minute (default: 100000)")


RAY_ONLY = ("address", "actors", "cpus_per_actor", "batch_size", "rows_per_part")


def add_device_argument(p: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda`` (scan and serve). Left None when not given, which means auto, said quietly."""
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="where the CNN runs: auto (a GPU when ONNX Runtime's CUDA execution provider loads, else "
                        "the CPU), cpu, or cuda (an error without one); needs the GPU build of ONNX Runtime, see "
                        "docs/gpu.md (default: auto)")


def cuda_precheck(device: Optional[str]) -> Optional[str]:
    """The one-line error for ``--device cuda`` where ONNX Runtime has no CUDA execution provider at all (found
    before anything is listed or loaded), else None. A provider that is there but fails to load is found when the
    model loads (runtime.DeviceError)."""
    if device != "cuda":
        return None
    from .runtime import cuda_error_reason, cuda_unavailable_reason

    why = cuda_unavailable_reason()
    return None if why is None else device_error_line(cuda_error_reason(why))


def device_error_line(reason: str) -> str:
    from .runtime import GPU_HINT

    return f"error: --device cuda: {reason}; {GPU_HINT}, or use --device auto or cpu"


def show_device(args: argparse.Namespace, detector) -> bool:
    """Whether the ``device:`` line goes to stderr: always on a terminal, and elsewhere (a script, a pipe) when
    it is news: a GPU, a GPU build of ONNX Runtime that ended on the CPU, or ``--device`` given. A plain CPU
    install run from a script stays as quiet as before."""
    if getattr(args, "quiet", False):
        return False
    if args.device is not None or detector.device != "cpu" or sys.stderr.isatty():
        return True
    from .runtime import gpu_build_installed

    return gpu_build_installed()


def check_paths_exist(parser: argparse.ArgumentParser, paths: list[str], uris: bool = False) -> None:
    """A usage error naming the first path that does not exist (a typo, not an unreadable image), before anything
    loads. With ``uris`` (a Ray scan), ``scheme://...`` paths are left to whoever opens them."""
    missing = [path for path in paths if not (uris and "://" in path) and not os.path.lexists(path)]
    if missing:
        parser.error(f"no such file or folder: {_shown(missing[0])}" + (f" (and {len(missing) - 1} more)"
                                                                         if len(missing) > 1 else ""))


def _check_engine_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Usage errors for options that do not go together, before anything loads."""
    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    given = [name for name in RAY_ONLY if getattr(args, name) is not None]
    if args.engine != "ray" and given:
        parser.error(f"{flag(given[0])} goes with --engine ray")
    sorting = ("--move-blurry" if args.move_blurry else "--copy-blurry") if (args.move_blurry or args.copy_blurry) \
        else None
    if args.engine == "ray":
        if sorting:
            parser.error(f"{sorting} does not go with --engine ray: score first, then sort with "
                         f"'blur-detect scan PATH... --plan OUT.parquet {sorting} DIR'")
        if args.device is not None:
            parser.error("--device does not go with --engine ray (its actors score on the CPU)")
        for name in ("save_maps", "workers", "format", "plan"):
            if getattr(args, name) is not None:
                parser.error(f"{flag(name)} does not go with --engine ray (it writes Parquet to --output)")
        if not args.output:
            parser.error("--engine ray needs --output OUT.parquet (a folder of Parquet part files)")
    if args.plan is not None:
        if not sorting:
            parser.error("--plan needs --move-blurry or --copy-blurry")
        for name in ("output", "save_maps", "format", "workers", "device", "scale"):
            if getattr(args, name) is not None:
                parser.error(f"{flag(name)} does not go with --plan (the records are in the plan already)")
        if not os.path.exists(args.plan):
            parser.error(f"--plan: no such file or folder: {_shown(args.plan)}")


# --------------------------------------------------------------------------------------------------------------
# scan: report writers


def _clean(record: dict) -> dict:
    # JSON has no NaN or infinity; a number that is not one is reported as missing.
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


class Report:
    """Collects records and writes them in one format, to stdout or a file."""

    def __init__(self, fmt: str, output: Optional[str], threshold: float):
        self.fmt, self.output, self.threshold = fmt, output, threshold
        self.records: list[dict] = []  # small dicts only, and only for the formats written at the end
        self.counts = {"blurry": 0, "sharp": 0, "flat": 0, "error": 0}
        self._stream = None

    def open(self) -> None:
        if self.fmt == "jsonl":
            if self.output:
                self._stream = open(self.output, "w", encoding="utf-8")
            else:
                self._stream = sys.stdout

    def add(self, record: dict) -> None:
        import json

        self.counts[record["label"]] += 1
        if self.fmt == "jsonl":
            self._stream.write(json.dumps(_clean(record)) + "\n")
            self._stream.flush()  # a reader (or an interrupted run) gets every finished line at once
        else:
            self.records.append(record)

    def abandon(self) -> None:
        """Close a jsonl file after a failed write, quietly (its flush would fail again)."""
        if self._stream is not None and self._stream is not sys.stdout:
            try:
                self._stream.close()
            except OSError:
                pass
        self._stream = None

    def close(self, order: dict[str, int], interrupted: bool = False) -> None:
        if self.fmt == "jsonl":
            if self._stream is not None and self._stream is not sys.stdout:
                self._stream.close()
            return
        # Workers finish out of order; the report lists images in the order they were given.
        self.records.sort(key=lambda r: order.get(r["path"], 0))
        text = {"table": self._table, "csv": self._csv, "json": self._json}[self.fmt](interrupted)
        if self.output:
            write_output(self.output, text)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()

    def summary(self, interrupted: bool = False) -> str:
        return summary_line(self.counts, self.threshold, interrupted)

    def _table(self, interrupted: bool) -> str:
        scored = sorted((r for r in self.records if r["blur_probability"] is not None),
                        key=lambda r: -r["blur_probability"])
        flat = [r for r in self.records if r["label"] == "flat"]
        failed = [r for r in self.records if r["label"] == "error"]
        rows = [("BLUR", "LABEL", "KIND", "LAPVAR", "SIZE", "SCALE", "CONTENT", "PATH")]
        for r in scored + flat:
            blur = "-" if r["blur_probability"] is None else f"{100 * r['blur_probability']:.1f}%"
            rows.append((blur, r["label"], _kind_cell(r), f"{r['laplacian_var']:.1f}", f"{r['width']}x{r['height']}",
                         r.get("scale") or "-", r.get("content") or "-", _shown(r["path"])))
        for r in failed:
            rows.append(("-", "error", "-", "-", "-", "-", "-", f"{_shown(r['path'])}  ({r['error']})"))
        widths = [max(len(row[i]) for row in rows) for i in range(7)]
        lines = []
        for row in rows:
            blur, label, kind, lap, size, scale, content, path = row
            lines.append(f"{blur:>{widths[0]}}  {label:<{widths[1]}}  {kind:<{widths[2]}}  {lap:>{widths[3]}}  "
                         f"{size:>{widths[4]}}  {scale:<{widths[5]}}  {content:<{widths[6]}}  {path}")
        lines.append(self.summary(interrupted))
        return "\n".join(lines) + "\n"

    def _csv(self, interrupted: bool) -> str:
        import csv
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=RECORD_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in _clean(r).items()} for r in self.records)
        return buf.getvalue()

    def _json(self, interrupted: bool) -> str:
        import json

        return json.dumps([_clean(r) for r in self.records], indent=2) + "\n"


def _kind_cell(record: dict) -> str:
    """The table's KIND: ``motion 80° 12px`` (direction on screen, length in the original's pixels),
    ``defocus 6px`` (radius), or ``-`` (sharp, flat, or a model without a kind head)."""
    kind = record.get("blur_kind")
    if not kind:
        return "-"
    angle = f" {record['motion_angle']:.0f}°" if record.get("motion_angle") is not None else ""
    extent = f" {record['blur_extent_px']:.0f}px" if record.get("blur_extent_px") is not None else ""
    return f"{kind}{angle}{extent}"


def summary_line(counts: dict[str, int], threshold: Optional[float], interrupted: bool = False) -> str:
    """``N images: B blurry, S sharp, [F flat (nothing to judge), ]E errors (threshold T)``: the scan's last line.
    ``counts`` maps labels to images (missing labels count 0); a threshold of None is left out."""
    c = {label: counts.get(label, 0) for label in ("blurry", "sharp", "flat", "error")}
    n = sum(counts.values())
    errors = f"{c['error']} error" + ("" if c["error"] == 1 else "s")
    flat = f"{c['flat']} flat (nothing to judge), " if c["flat"] else ""
    line = f"{n} image{'' if n == 1 else 's'}: {c['blurry']} blurry, {c['sharp']} sharp, {flat}{errors}"
    if threshold is not None:
        line += f" (threshold {_percent(threshold)})"
    return line + (" - interrupted" if interrupted else "")


def _percent(p: float) -> str:
    return f"{100 * p:.1f}".rstrip("0").rstrip(".") + "%"


class _Progress:
    """A tqdm bar on stderr when it is a terminal; messages printed through it so they do not tear the bar."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled and total > 1 and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True, leave=False)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update()

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            _err(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# --------------------------------------------------------------------------------------------------------------
# scan: the command


def run_scan(args: argparse.Namespace) -> int:
    from contextlib import closing

    from .scan import (WORKERS_PER_CORE, default_workers, expand_paths, map_names, max_workers, save_blur_map,
                       scan_paths)

    parser: argparse.ArgumentParser = args._parser
    for option, value in (("--move-blurry", args.move_blurry), ("--copy-blurry", args.copy_blurry),
                          ("--save-maps", args.save_maps), ("--output", args.output), ("--model", args.model),
                          ("--plan", args.plan), ("--address", args.address)):
        if value == "":  # `--move-blurry "$UNSET"` must not quietly move nothing
            parser.error(f"{option}: empty path")
    dest = args.move_blurry or args.copy_blurry
    if args.dry_run and not dest:
        parser.error("--dry-run needs --move-blurry or --copy-blurry")
    if args.kind and not dest:
        parser.error("--kind needs --move-blurry or --copy-blurry")
    if args.kind and args.plan is not None:
        parser.error("--kind does not go with --plan (the plan's rows carry no blur kind)")
    _check_engine_options(args, parser)
    if args.plan is None:
        args.scale = args.scale or DEFAULT_SCALE
    if args.engine == "ray":
        from .distributed.cli import run_ray_scan

        return run_ray_scan(args)
    args.format = args.format or "table"
    for option, folder in (("--move-blurry", args.move_blurry), ("--copy-blurry", args.copy_blurry),
                           ("--save-maps", args.save_maps)):
        if folder and os.path.exists(folder) and not os.path.isdir(folder):
            parser.error(f"{option}: {folder} exists and is not a folder")
    if not args.output and _stdout_closed(args, "the report (give --output FILE)"):
        return EXIT_FAILED
    problem = cuda_precheck(args.device)
    if problem:
        _err(problem)
        return EXIT_USAGE
    workers = args.workers or default_workers()
    if workers > max_workers():
        _err(f"note: --workers {workers} is more than {max_workers()} ({WORKERS_PER_CORE} per core): "
             f"using {max_workers()}")
        workers = max_workers()
    if args.output:
        if os.path.isdir(args.output):
            parser.error(f"--output: {args.output} is a folder")
        if not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
            parser.error(f"--output: folder {os.path.dirname(args.output)} does not exist")

    check_paths_exist(parser, args.paths)
    if args.plan is not None:
        from .distributed.cli import run_plan

        return run_plan(args, dest)
    # Listing is done before the model loads, so that typos are reported at once.
    inputs, empty = expand_paths(args.paths, args.recursive)
    for folder in empty:
        hint = " (use --recursive to look in its sub-folders)" if not args.recursive and _has_subfolders(folder) else ""
        _err(f"no images found in {_shown(folder)}{hint}")
    if not inputs:
        return EXIT_FAILED

    from .detector import BlurDetector
    from .runtime import DeviceError

    try:
        # One shared detector on single-threaded ONNX sessions: the workers supply the parallelism (see scan.py).
        # On a GPU the workers' CNN calls are joined into batches (ensemble.batching).
        detector = BlurDetector.load(args.model, threads=1, threshold=args.threshold,
                                     device=args.device or "auto").check()
    except DeviceError as err:
        _err(device_error_line(err.reason))
        return EXIT_USAGE
    except Exception as err:  # noqa: BLE001 - a missing or corrupt model is one line, never a traceback
        where = args.model or "the shipped model"
        _err(f"error: cannot load the model ({where}): {_one_line(err)}")
        return EXIT_FAILED
    if show_device(args, detector):
        _err(detector.device_line())
    if args.kind and detector.kind is None:
        _err(f"error: --kind {args.kind}: the model ({args.model or 'the shipped model'}) has no kind head "
             "(final_model/kind.onnx); add one with 'python train.py --kind-only'")
        return EXIT_FAILED
    problem = (native_problem(detector, model=f"the model ({args.model or 'the shipped model'})")
               if args.scale == "native" else None)
    if problem:
        # Not the end of the scan: an image no larger than the analysis side is judged the same at every scale,
        # and each larger one becomes an error record of one line (ensemble.detector raises ValueError for it).
        _err(f"warning: {problem}; images larger than {detector.analysis_side} px become error records")

    after = None
    map_failures: dict[str, str] = {}
    if args.save_maps:
        problem = make_output_dir(args.save_maps)
        if problem:
            _err(problem)
            return EXIT_FAILED
        names = map_names(item.path for item in inputs)

        def save_map(scanned) -> None:  # runs in the worker threads, so pictures are drawn in parallel
            if scanned.result is None:
                return
            try:
                save_blur_map(scanned.path, scanned.result, os.path.join(args.save_maps, names[scanned.path]),
                              detector.analysis_side)
            except Exception as err:  # noqa: BLE001 - reported per image by the main thread
                map_failures[scanned.path] = _one_line(err)

        after = save_map

    report = Report(args.format, args.output, detector.threshold)
    try:
        report.open()
    except OSError as err:
        _err(f"error: cannot write {args.output}: {err.strerror or err}")
        return EXIT_FAILED
    order = {item.path: i for i, item in enumerate(inputs)}
    root_of = {}  # blurry path -> the scan root it came from, for the sort
    done = 0
    interrupted = False
    progress = _Progress(len(inputs), not args.quiet)
    try:
        scans = scan_paths(inputs, detector, workers, with_map=bool(args.save_maps), after=after, scale=args.scale)
        with closing(scans):
            for scanned in scans:
                if scanned.error is not None:
                    record = error_record(scanned.path, _one_line(scanned.error))
                    progress.write(f"error: {_shown(scanned.path)}: {record['error']}")
                else:
                    record = scanned.result.record(scanned.path)
                    if record["label"] == "blurry" and dest and (not args.kind or record["blur_kind"] == args.kind):
                        root_of[scanned.path] = inputs[order[scanned.path]].root
                    if scanned.path in map_failures:
                        progress.write(f"error: {_shown(scanned.path)}: cannot save blur map: "
                                       f"{map_failures[scanned.path]}")
                report.add(record)
                done += 1
                progress.update()
    except KeyboardInterrupt:
        interrupted = True
    except BrokenPipeError:
        raise  # the reader left: main() ends quietly
    except OSError as err:  # jsonl is written as it goes: a full disk stops the scan
        report.abandon()
        return _report_failed(args.output, err)
    finally:
        progress.close()

    try:
        report.close(order, interrupted)
    except BrokenPipeError:
        raise
    except OSError as err:
        return _report_failed(args.output, err)
    if report.fmt != "table" and not args.quiet and not interrupted and sys.stderr.isatty():
        _err(report.summary())
    if interrupted:
        _err(f"interrupted after {done} image{'' if done == 1 else 's'}" + (": nothing was moved" if dest else ""))
        return EXIT_INTERRUPTED

    failed = bool(empty) or report.counts["error"] > 0 or bool(map_failures)
    if dest:
        # Plan in the order the images were given, so "name (1).jpg" goes to the same file on every run.
        blurry = sorted(root_of, key=order.__getitem__)
        info = sys.stderr if (report.fmt != "table" and not args.output) else sys.stdout
        status = _sort_blurry(blurry, root_of, dest, "copy" if args.copy_blurry else "move", args.dry_run,
                              args.quiet, info)
        failed = failed or status != EXIT_OK
        if status == EXIT_INTERRUPTED:
            return status
    return EXIT_FAILED if failed else EXIT_OK


def _report_failed(output: Optional[str], err: OSError) -> int:
    _err(f"error: cannot write {_shown(output) if output else 'the report to standard output'}: "
         f"{err.strerror or err}")
    if not output:
        _silence_stdout()
    return EXIT_FAILED


def _has_subfolders(folder: str) -> bool:
    try:
        with os.scandir(folder) as it:
            return any(e.is_dir(follow_symlinks=False) for e in it)
    except OSError:
        return False


def _sort_blurry(paths: list[str], root_of: dict[str, str], dest: str, mode: str, dry_run: bool, quiet: bool,
                 info) -> int:
    """Move or copy ``paths`` into ``dest`` with ensemble.sorting; returns an exit status."""
    from .sorting import SortingError, apply_moves, new_journal_path, plan_moves

    def say(message: str) -> None:
        print(message, file=info, flush=True)

    verb, past = ("copy", "copied") if mode == "copy" else ("move", "moved")
    if not paths:
        say(f"no blurry photos to {verb}")
        return EXIT_OK
    plan = plan_moves(paths, dest, base_of=root_of.__getitem__, mode=mode)
    if len(plan) < len(paths):
        say(f"{len(paths) - len(plan)} blurry photo(s) already inside {_shown(dest)}: left where they are")
    if dry_run:
        for move in plan:
            say(f"would {verb} {_shown(move.src)} -> {_shown(move.dst)}")
        say(f"dry run: {len(plan)} file(s) would be {past} to {_shown(dest)}; nothing was changed")
        return EXIT_OK
    if not plan:
        return EXIT_OK

    journal = new_journal_path(dest)
    ok = errors = 0
    status = EXIT_OK
    try:
        for outcome in apply_moves(plan, journal):
            if outcome.ok:
                ok += 1
                if not quiet:
                    say(f"{past} {_shown(outcome.src)} -> {_shown(outcome.dst)}")
            else:
                errors += 1
                _err(f"error: {_shown(outcome.src)}: {outcome.error}")
    except SortingError as err:
        _err(f"error: {err}")
        status = EXIT_FAILED
    except KeyboardInterrupt:
        # Every finished move is in the journal already; say how to undo them.
        _err(f"interrupted after {ok} file(s) {past}")
        status = EXIT_INTERRUPTED
    if errors:
        status = status if status != EXIT_OK else EXIT_FAILED
    if ok or os.path.exists(journal):
        say(f"{ok} file(s) {past} to {_shown(dest)}" + (f", {errors} failed" if errors else ""))
        if mode == "move":
            say(f"journal: {_shown(journal)}")
            say(f"undo with: blur-detect undo {shlex.quote(journal)}")
        else:
            say(f"journal: {_shown(journal)}")
    return status


# --------------------------------------------------------------------------------------------------------------
# undo


def add_undo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("journals", nargs="+", metavar="JOURNAL",
                   help="a .blur-detect-journal-*.jsonl file a sort wrote, or a folder holding such journals; "
                        "several are undone newest first")
    p.add_argument("-n", "--dry-run", action="store_true",
                   help="show each journal's folders and what would be put back, and change nothing")
    p.add_argument("--foreign", action="store_true",
                   help="also undo a journal this user's key did not sign (from an older version, another machine "
                        "or another user): its folders and plan are shown first and you are asked")
    p.add_argument("-y", "--yes", action="store_true", help="with --foreign: undo without asking (the plan is "
                                                            "still shown)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors and the summary")


def run_undo(args: argparse.Namespace) -> int:
    from .sorting import SortingError

    if args.yes and not args.foreign:
        args._parser.error("--yes goes with --foreign")
    if _stdout_closed(args, "what undo does"):
        return EXIT_FAILED
    journals, status = _find_journals(args.journals)
    for path in journals:
        try:
            step = _undo_one(path, args)
        except SortingError as err:
            _err(f"error: {err}")
            step = EXIT_FAILED
        if step == EXIT_INTERRUPTED:
            return step
        status = status if step == EXIT_OK else EXIT_FAILED
    return status


def _find_journals(args: list[str]) -> tuple[list[str], int]:
    """The journal files named by ``args`` (files, or folders holding journals), newest first."""
    from .sorting import JOURNAL_PREFIX

    found: list[str] = []
    status = EXIT_OK
    for arg in args:
        if arg == "":
            _err("error: empty journal path")
            status = EXIT_FAILED
        elif os.path.isdir(arg):
            names = sorted(n for n in os.listdir(arg) if n.startswith(JOURNAL_PREFIX) and n.endswith(".jsonl"))
            if not names:
                _err(f"error: no journal to undo in {_shown(arg)}")
                status = EXIT_FAILED
            found += [os.path.join(arg, n) for n in names]
        else:
            found.append(arg)

    def age(path: str) -> tuple[str, int]:
        # The name carries the sort's start (YYYYmmdd-HHMMSS); the file's last write breaks ties within a second.
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            mtime = 0
        return os.path.basename(path)[len(JOURNAL_PREFIX):len(JOURNAL_PREFIX) + 15], mtime

    unique = list(dict.fromkeys(os.path.abspath(p) for p in found))
    return sorted(unique, key=age, reverse=True), status


def _undo_one(path: str, args: argparse.Namespace) -> int:
    """Check, show and undo one journal; raises SortingError for one that cannot be read or is refused."""
    from .sorting import SortingError, inspect_journal, undo

    journal, problem = inspect_journal(path, foreign=args.foreign)
    if args.dry_run or (args.foreign and not journal.signed):
        _show_plan(journal, problem)
    if problem:
        hint = "" if journal.signed or args.foreign else (
            f"; if you trust it, see its plan with 'blur-detect undo --dry-run {shlex.quote(path)}' "
            "and undo it with --foreign")
        raise SortingError(f"journal {path} refused, nothing was moved: {problem}{hint}")
    if args.dry_run:
        return EXIT_OK
    if args.foreign and not journal.signed and not args.yes and not _confirmed():
        return EXIT_FAILED

    restored = skipped = failed = 0
    try:
        for outcome in undo(path, foreign=args.foreign):
            if not outcome.ok:
                failed += 1
                _err(f"error: {_shown(outcome.dst)}: {outcome.error}")
            elif outcome.status == "done":
                restored += 1
                if not args.quiet:
                    print(f"restored {_shown(outcome.dst)} -> {_shown(outcome.src)}", flush=True)
            else:
                skipped += 1
                if not args.quiet:
                    print(f"skipped {_shown(outcome.dst)}: {outcome.note}", flush=True)
    except KeyboardInterrupt:
        _err(f"interrupted after {restored} file(s) restored; run the same undo again to finish")
        return EXIT_INTERRUPTED
    summary = f"{_shown(path)}: {restored} file(s) restored" + (f", {skipped} skipped" if skipped else "")
    if failed:
        print(f"{summary}, {failed} failed; the journal is kept: fix the problems and run undo again", flush=True)
        return EXIT_FAILED
    print(summary, flush=True)
    return EXIT_OK


def _show_plan(journal, problem: Optional[str]) -> None:
    """Print a journal's signature, folders and plan: what undo would do, newest first."""
    trust = "signed by this user" if journal.signed else f"NOT signed by this user's key: {journal.problem}"
    print(f"journal {_shown(journal.path)} ({trust})")
    roots = ", ".join(_shown(r) for r in journal.roots) or "none recorded (an older journal: read every path below)"
    print(f"  folders it may touch: {roots}")
    for entry in reversed(journal.entries):
        if entry["op"] == "mkdir":
            print(f"  would remove {_shown(entry['path'])} if empty")
        elif entry["op"] == "copy":
            print(f"  would leave the copy {_shown(entry['dst'])} in place")
        else:
            print(f"  would restore {_shown(entry['dst'])} -> {_shown(entry['src'])}")
    if problem:
        print(f"  refused: {problem}")
    sys.stdout.flush()


def _confirmed() -> bool:
    """Ask on the terminal before a foreign journal is undone; never without one."""
    if not sys.stdin or not sys.stdin.isatty():
        _err("error: not confirmed: run it in a terminal to be asked, or add --yes")
        return False
    try:
        answer = input("undo this journal? [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() in ("y", "yes"):
        return True
    _err("not undone")
    return False


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
