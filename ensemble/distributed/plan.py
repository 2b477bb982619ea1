"""A Ray scan's Parquet output read back as the plan of a local sort (``blur-detect scan PATH... --plan OUT.parquet
--move-blurry DIR``).

The plan only chooses *which* files are blurry; where they go, the journal and undo are the local sort's own
(:mod:`ensemble.sorting`). A row is a candidate only when its file lies under one of the folders given (as the
local scan would have found it: directly inside, or below with ``recursive``; a file argument is itself), and it
is moved only while the file still has the size and mtime the row recorded: anything else was not what was
scored. A path with more than one row is never moved. Parquet is read by pyarrow, which rebuilds columns of plain
types and unpickles nothing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..journal_auth import is_within, located
from ..scan import one_line

PLAN_COLUMNS = ("path", "label", "blur_probability", "size", "mtime")


class PlanError(Exception):
    """A plan that cannot be read or is not a Ray scan's output; one line."""


@dataclass
class Plan:
    """What a plan says about the folders given.

    ``blurry``: the files to sort, in path order (stable across runs), each checked against its row;
    ``root_of``: the folder argument each came from; ``counts``: the labels of the rows under the folders;
    ``changed``: (path, why) of blurry rows whose file is gone or differs from what was scored; ``repeated``:
    blurry paths with more than one row; ``outside``: rows under none of the folders (left alone);
    ``threshold``: the one the labels stand for (given, or recorded by the scan; None if unknown).
    """

    blurry: list = field(default_factory=list)
    root_of: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    changed: list = field(default_factory=list)
    repeated: list = field(default_factory=list)
    outside: int = 0
    threshold: Optional[float] = None


def read_plan(source: str | os.PathLike, roots: Sequence[str], recursive: bool = False,
              threshold: Optional[float] = None) -> Plan:
    """Read the Parquet file or folder ``source`` as a plan for the local ``roots`` (files and folders).

    ``threshold`` (if given) decides blurry or sharp again from each row's ``blur_probability``; ``flat`` and
    ``error`` rows are never blurry. Raises :class:`PlanError`.
    """
    rows = _read_rows(os.fspath(source))
    bases = [(root, os.path.realpath(root), os.path.isdir(root)) for root in map(os.path.abspath, roots)]
    plan = Plan(threshold=threshold if threshold is not None else _recorded_threshold(os.fspath(source)))
    seen: dict[str, int] = {}
    candidates = []
    for path, label, prob, size, mtime in rows:
        root = _root_of(path, bases, recursive) if isinstance(path, str) and os.path.isabs(path) else None
        if root is None:
            plan.outside += 1
            continue
        if threshold is not None and label in ("blurry", "sharp") and prob is not None:
            label = "blurry" if prob >= threshold else "sharp"
        plan.counts[label] = plan.counts.get(label, 0) + 1
        seen[path] = seen.get(path, 0) + 1
        if label == "blurry":
            candidates.append((path, root, size, mtime))
    for path, root, size, mtime in sorted(candidates):
        if seen[path] > 1:
            if path not in plan.repeated:
                plan.repeated.append(path)
            continue
        why = _changed(path, size, mtime)
        if why:
            plan.changed.append((path, why))
        else:
            plan.blurry.append(path)
            plan.root_of[path] = root
    return plan


def _read_rows(source: str):
    import pyarrow as pa  # the ray extra's; the CLI names it when missing
    import pyarrow.parquet as pq

    try:
        # A folder is read as a dataset: its _blur-detect.json and hidden temporary files are skipped.
        table = pq.read_table(source, columns=list(PLAN_COLUMNS))
    except (OSError, ValueError, pa.ArrowException) as err:
        raise PlanError(f"cannot read the plan {source}: {one_line(err)}") from None
    types = {name: table.schema.field(name).type for name in PLAN_COLUMNS}
    expected = {"path": pa.types.is_string, "label": pa.types.is_string, "blur_probability": pa.types.is_floating,
                "size": pa.types.is_integer, "mtime": pa.types.is_timestamp}
    wrong = [name for name, check in expected.items() if not (check(types[name]) or pa.types.is_null(types[name]))]
    if wrong:
        raise PlanError(f"the plan {source} is not a Ray scan's output: column {wrong[0]} is {types[wrong[0]]}")
    mtime = table.column("mtime")
    if pa.types.is_timestamp(mtime.type):
        mtime = mtime.cast(pa.timestamp("ns", tz=mtime.type.tz)).cast(pa.int64())  # datetimes lose the ns
    return zip(*(table.column(n).to_pylist() for n in PLAN_COLUMNS[:4]), mtime.to_pylist())


def _recorded_threshold(source: str) -> Optional[float]:
    """The threshold a Ray scan's output folder records (its _blur-detect.json), or None."""
    from .output import Output, OutputError

    if not os.path.isdir(source):
        return None
    try:
        meta = Output(source).read_meta()
    except OutputError:
        return None
    value = (meta or {}).get("threshold")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _root_of(path: str, bases, recursive: bool) -> Optional[str]:
    """The first folder argument ``path`` would have been scanned under, or None."""
    where = located(path)
    for root, real, is_dir in bases:
        if not is_dir:
            if where == located(root):
                return os.path.dirname(root)
        elif (os.path.dirname(where) == real) if not recursive else is_within(where, real):
            return root
    return None


def _changed(path: str, size, mtime) -> Optional[str]:
    """Why the file at ``path`` is not the one its row scored, or None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "no longer there"
    except OSError as err:
        return f"cannot check it: {(err.strerror or str(err)).lower()}"
    if size is None or mtime is None:
        return "its row records no size or modification time"
    if st.st_size != size or st.st_mtime_ns != mtime:
        return "changed since it was scored (size or modification time differ)"
    return None


__all__ = ["PLAN_COLUMNS", "Plan", "PlanError", "read_plan"]
