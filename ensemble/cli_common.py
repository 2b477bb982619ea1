"""Shared outer-layer helpers for the stage scripts: run one stage, print its summary, turn errors into one line."""
from __future__ import annotations

import json
import sys


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
