"""Shared outer-layer helpers for the stage scripts and the CLIs: argparse types that refuse unusable numbers,
run one stage, print its summary, turn errors into one line."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from .fsutil import atomic_write

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The source checkout the stage scripts live in. Their default paths (data/, model/, final_model/, reports/) are
resolved against it, so ``python path/to/train.py`` works from any folder."""


def in_repo(relative: str) -> str:
    """``relative`` (e.g. ``data/train.pkl``) inside :data:`REPO_ROOT`, as a string for argparse defaults."""
    return str(REPO_ROOT / relative)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: X)`` to an option's help once: not where the help already says its default, and not for
    a default of None or a flag's False."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def stage_parser(description: str) -> argparse.ArgumentParser:
    """The argument parser of a stage script, with :class:`HelpFormatter`."""
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)


def note_replacing_shipped(out: str, folder: str) -> None:
    """Say, before a long run starts, that writing to ``out`` replaces the committed model in ``folder``."""
    if Path(out).resolve() == REPO_ROOT / folder and (REPO_ROOT / folder).is_dir():
        print(f"note: this run replaces the shipped model in {folder}/ (committed to git); get it back with "
              f"'git checkout -- model final_model', or use --out DIR to write elsewhere", file=sys.stderr,
              flush=True)


SCALES = ("screen", "native", "auto")
DEFAULT_SCALE = "auto"
"""The scales an image can be judged at and the default, as :data:`ensemble.detector.SCALES` and
:data:`~ensemble.detector.DEFAULT_SCALE` name them (tests/test_cli.py checks they agree), repeated here so that
building the command line's parsers imports no NumPy and ``--help`` stays instant."""

SCALE_HELP = {
    "screen": "the short side brought to 640 px: how the picture looks on a screen (photos)",
    "native": "at its own resolution, as seen at 100 %, over the whole frame (needs a model with "
              "final_model/meta_native.onnx)",
    "auto": "native for documents (text pages, forms), screen for photos",
}
"""One line per scale, for the help of every ``--scale`` option."""


def scale_help(default: str, what: str = "each image", note: str = "") -> str:
    """The help text (for argparse) of a ``--scale`` option whose default is ``default``; ``note`` ends it."""
    lines = "; ".join(f"{name}: {SCALE_HELP[name]}" for name in SCALES).replace("%", "%%")  # argparse's escape
    return (f"the scale {what} is judged at: {lines}. An image no larger than 640 px is judged the same at every "
            f"scale{note} (default: {default})")


def add_scale_argument(p: argparse.ArgumentParser, default: str = DEFAULT_SCALE, what: str = "each image",
                       note: str = "") -> None:
    """The one ``--scale screen|native|auto`` option of every command (scan, serve, cameras; a Ray scan takes the
    scan's): choices :data:`SCALES`, help from :func:`scale_help`. Left None when not given (``default`` then
    applies), so that options it does not go with can tell."""
    p.add_argument("--scale", choices=SCALES, default=None, help=scale_help(default, what, note))


def native_problem(detector, option: str = "--scale native", model: str = "the model") -> str | None:
    """The one-line reason ``detector`` (``model``, as the message names it) cannot judge at native scale: it has
    no native-scale meta-network; None when it can (or when it is a detector of another make, without the
    attribute)."""
    if getattr(detector, "meta_native", True) is not None:
        return None
    return (f"{option}: {model} has no native-scale meta-network (final_model/meta_native.onnx); "
            "judge at scale screen or auto, or use a model trained with one")


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} must be {'at least 1' if minimum == 1 else f'{minimum} or more'}")
    return value


def positive_int(text: str) -> int:
    """argparse type for a count or size that must be at least 1 (0 would divide by zero or shrink to nothing)."""
    return _whole_number(text, 1)


def count_arg(text: str) -> int:
    """argparse type for a count that may be 0 (none) but not negative."""
    return _whole_number(text, 0)


def positive_float(text: str) -> float:
    """argparse type for a rate or scale that must be a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number above 0")
    return value


def positive_int_list(text: str) -> tuple[int, ...]:
    """argparse type for comma-separated widths such as ``32,16`` (empty parts ignored)."""
    return tuple(positive_int(part.strip()) for part in text.split(",") if part.strip())


def probability_arg(text: str) -> float:
    """argparse type for a threshold: 0.7 or 70%."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability between 0 and 1 (or 0% and 100%)")
    return value


def write_output(path: str, text: str) -> None:
    """Write a report to a file the user named: a file is replaced whole and atomically, through a symbolic link
    to the file it names; a device or pipe (``/dev/stdout``, a FIFO) is written in place, since renaming a file
    over it would replace it."""
    if os.path.exists(path) and not os.path.isfile(path):
        with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
    else:
        atomic_write(os.path.realpath(path), text)


def add_loading_args(p: argparse.ArgumentParser, out_default: str) -> None:
    """The flags the two loading stages share (they must agree on the split to keep scenes apart)."""
    from .datasets import LAYOUTS
    from .imageio import ANALYSIS_SIDE

    p.add_argument("--layout", choices=LAYOUTS, default=None, help="dataset layout (default: detected)")
    p.add_argument("--out", default=in_repo(out_default), help="pickle to write")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of scenes held out for testing")
    p.add_argument("--seed", type=int, default=0, help="seed of the scene split")
    p.add_argument("--side", type=positive_int, default=ANALYSIS_SIDE, help="analysis scale: shorter side in pixels")
    p.add_argument("--workers", type=positive_int, default=None, help="decoding threads (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_mlflow_arg(p: argparse.ArgumentParser) -> None:
    """``--mlflow [URI]``: track the stage in MLflow (docs/tracking.md); needs the ``track`` extra."""
    p.add_argument("--mlflow", nargs="?", const="./mlruns", default=None, metavar="URI",
                   help="track this run in MLflow at URI; a bare --mlflow uses a local file store, ./mlruns in the "
                        "current folder (needs the track extra: pip install 'blur-ensemble[track]')")


def stage_tracker(p: argparse.ArgumentParser, args: argparse.Namespace):
    """None without ``--mlflow`` (mlflow is then never imported); else an ``ensemble.tracking.Tracker`` for
    ``run_stage(..., track=...)``. Exits with status 2 and one line when mlflow is not installed."""
    if getattr(args, "mlflow", None) is None:
        return None
    from .tracking import Tracker, TrackingError

    try:
        return Tracker.from_args(args)
    except TrackingError as err:
        p.exit(2, f"{err}\n")


def run_stage(func, *args, formatter=None, track=None, **kwargs) -> int:
    """Call ``func(*args, **kwargs)``; print its result (with ``formatter`` or as JSON) and return an exit code.

    Expected failures (missing files, bad datasets, unreadable pickles) print one ``error:`` line and return 1.
    ``track``: an ``ensemble.tracking.Tracker`` (from :func:`stage_tracker`) that runs the stage as an MLflow run.
    """
    from .datasets import DatasetError

    tracking_errors = tuple(getattr(track, "errors", ()))
    try:
        result = func(*args, **kwargs) if track is None else track.run(func, *args, **kwargs)
    except (DatasetError, FileNotFoundError, ValueError, OSError, *tracking_errors) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(formatter(result) if formatter else json.dumps(result, indent=1, default=str))
    return 0


def make_output_dir(path: str) -> str | None:
    """Create the folder ``path`` (and its parents) if missing; None, or the one-line error to show the user."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        return f"error: cannot create {path}: {err.strerror or err}"
    return None
