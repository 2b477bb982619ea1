"""Shared outer-layer helpers for the stage scripts and the CLIs: run one stage, print its summary, turn errors
into one line."""
from __future__ import annotations

import argparse
import json
import os
import sys


def add_loading_args(p: argparse.ArgumentParser, out_default: str) -> None:
    """The flags the two loading stages share (they must agree on the split to keep scenes apart)."""
    from .datasets import LAYOUTS
    from .imageio import ANALYSIS_SIDE

    p.add_argument("--layout", choices=LAYOUTS, default=None, help="dataset layout (default: detected)")
    p.add_argument("--out", default=out_default, help="pickle to write")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of scenes held out for testing")
    p.add_argument("--seed", type=int, default=0, help="seed of the scene split")
    p.add_argument("--side", type=int, default=ANALYSIS_SIDE, help="analysis scale: shorter side in pixels")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_stage(func, *args, formatter=None, **kwargs) -> int:
    """Call ``func(*args, **kwargs)``; print its result (with ``formatter`` or as JSON) and return an exit code.

    Expected failures (missing files, bad datasets, unreadable pickles) print one ``error:`` line and return 1.
    """
    from .datasets import DatasetError

    try:
        result = func(*args, **kwargs)
    except (DatasetError, FileNotFoundError, ValueError, OSError) as err:
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
