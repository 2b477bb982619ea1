"""The command line's side of a Ray scan (``blur-detect scan --engine ray``) and of a local sort planned by its
Parquet output (``blur-detect scan PATH... --plan OUT.parquet --move-blurry DIR``).

Like :mod:`ensemble.cli`, whose scan command calls these once its options are checked, this is outer layer: it
prints, and it starts and stops Ray. Ray and pyarrow are imported only here, when such a run starts.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from ..cli import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, _err, _shown, _sort_blurry,
                   check_paths_exist, summary_line)
from ..scan import one_line

INSTALL_HINT = 'pip install "blur-ensemble[ray]"'


# --------------------------------------------------------------------------------------------------------------
# blur-detect scan --engine ray


def run_ray_scan(args: argparse.Namespace) -> int:
    """Score ``args.paths`` on Ray into the Parquet folder ``args.output``; returns the exit status."""
    parser: argparse.ArgumentParser = args._parser
    check_paths_exist(parser, args.paths, uris=True)  # before Ray starts
    if "://" not in args.output:
        if os.path.exists(args.output) and not os.path.isdir(args.output):
            parser.error(f"--output: {_shown(args.output)} exists and is not a folder: a Ray scan writes a folder "
                         "of Parquet part files")
        if not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
            parser.error(f"--output: folder {_shown(os.path.dirname(args.output))} does not exist")
    if not _installed("ray", "ray.data", "pyarrow"):  # before anything starts
        _err(f"error: --engine ray needs Ray: {INSTALL_HINT}")
        return EXIT_USAGE
    import ray

    started, problem = _start_ray(args.address)
    if problem:
        _err(problem)
        return EXIT_FAILED
    try:
        _quiet_ray(progress=not args.quiet and sys.stderr.isatty())
        return _run_job(args, parser)
    finally:
        if started:
            ray.shutdown()


def _installed(*modules: str) -> bool:
    import importlib

    try:
        for name in modules:
            importlib.import_module(name)
    except ImportError:
        return False
    return True


def _start_ray(address: str | None) -> tuple[bool, str | None]:
    """Start (or join) Ray: (whether this call did, so must shut it down; None or the one-line error to show).
    A process that runs Ray already (a notebook, a test) keeps its own instance and its own address."""
    import ray

    if ray.is_initialized():
        return False, None
    address = address or os.environ.get("RAY_ADDRESS") or None
    options = {"logging_level": logging.ERROR}  # Ray's start-up notices would drown the scan's own lines
    if address is None:
        options["include_dashboard"] = False  # a private instance for this scan: no web server to start
    try:
        ray.init(address=address, **options)
    except Exception as err:  # noqa: BLE001 - no cluster at that address, a version mismatch...: one line
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        return False, f"error: cannot start or reach {where}: {one_line(err)}"
    return True, None


def _quiet_ray(progress: bool) -> None:
    """Ray Data's progress bars on stderr when it is a terminal (and not --quiet); its notices kept to errors."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = progress
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def _run_job(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import ray.exceptions

    from .job import JobError, JobInterrupted, run_scan
    from .output import ROWS_PER_PART
    from .scoring import DEFAULT_BATCH_SIZE

    def report_errors(rows, writer) -> None:
        # Each unreadable file is one line, as in a local scan; its record is in the output too.
        if "error" not in rows.column_names:
            return
        for path, reason in zip(rows.column("path").to_pylist(), rows.column("error").to_pylist()):
            if reason is not None:
                _err(f"error: {_shown(path)}: {reason}")

    try:
        result = run_scan(args.paths, args.output, recursive=args.recursive, model=args.model,
                          threshold=args.threshold, actors=args.actors, cpus_per_actor=args.cpus_per_actor or 1,
                          batch_size=args.batch_size or DEFAULT_BATCH_SIZE,
                          rows_per_part=args.rows_per_part or ROWS_PER_PART, on_rows=report_errors,
                          scale=args.scale)
    except JobError as err:
        if err.usage:
            parser.error(str(err))
        _err(f"error: {err}")
        return EXIT_FAILED
    except JobInterrupted as stop:
        print(_summary(stop.result, args.output, interrupted=True), flush=True)
        _err(f"interrupted after {stop.result.scored} image(s): every finished row is in {_shown(args.output)}; "
             "run the same command again to go on")
        return EXIT_INTERRUPTED
    except OSError as err:
        _err(f"error: cannot write {_shown(args.output)}: {err.strerror or one_line(err)}")
        return EXIT_FAILED
    except ray.exceptions.RayError as err:  # the cluster itself failed (nodes lost, out of memory): one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]  # Ray's messages run to pages
        _err(f"error: the Ray job failed: {first} (Ray's own logs: /tmp/ray/session_latest/logs)")
        return EXIT_FAILED
    for folder in result.empty:
        _err(f"no images found in {_shown(folder)}"
             + ("" if args.recursive else " (use --recursive to look in its sub-folders)"))
    print(_summary(result, args.output), flush=True)
    return EXIT_FAILED if result.counts.get("error") or result.empty else EXIT_OK


def _summary(result, output: str, interrupted: bool = False) -> str:
    """The local scan's summary line, then what the run skipped and where it wrote."""
    parts = [summary_line(result.counts, result.threshold, interrupted)]
    if result.skipped:
        parts.append(f"{result.skipped} already scored, skipped")
    if result.rescored:
        parts.append(f"{result.rescored} changed since {'it was' if result.rescored == 1 else 'they were'} scored, "
                     "scored again")
    parts.append(f"{result.parts} part file{'' if result.parts == 1 else 's'} written to {_shown(output)}")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------------------------
# blur-detect scan PATH... --plan OUT.parquet --move-blurry DIR


def run_plan(args: argparse.Namespace, dest: str) -> int:
    """Sort the blurry files under ``args.paths`` into ``dest`` as the Parquet output ``args.plan`` says."""
    if not _installed("pyarrow"):
        _err(f"error: --plan reads Parquet, which needs pyarrow: {INSTALL_HINT}")
        return EXIT_USAGE
    from .plan import PlanError, read_plan

    try:
        plan = read_plan(args.plan, args.paths, args.recursive, args.threshold)
    except PlanError as err:
        _err(f"error: {err}")
        return EXIT_FAILED
    for path, why in plan.changed:
        _err(f"not moved: {_shown(path)}: {why}")
    for path in plan.repeated:
        _err(f"not moved: {_shown(path)}: it has more than one row in the plan")
    print(summary_line(plan.counts, plan.threshold)
          + (f"; {plan.outside} row(s) of the plan lie outside the paths given: left alone" if plan.outside else ""),
          flush=True)
    status = _sort_blurry(plan.blurry, plan.root_of, dest, "copy" if args.copy_blurry else "move", args.dry_run,
                          args.quiet, sys.stdout)
    if status == EXIT_OK and (plan.changed or plan.repeated):
        return EXIT_FAILED
    return status
