"""A resumable Ray scan into a Parquet folder: what ``blur-detect scan --engine ray`` runs.

    list the inputs ──▶ drop what the output already holds ──▶ actors score the rest ──▶ the driver writes parts

A rerun into the same output skips every file whose row there has the same size and mtime, and scores again (after
removing its old row) a file that changed, so a job killed at any point goes on where it stopped; at most the
rows of the part being gathered (:data:`~ensemble.distributed.output.FLUSH_SECONDS` of work) are scored twice. A
worker that dies is restarted by Ray and its batch retried; the driver writes each path once.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from ..scan import one_line
from .listing import ListingError, list_inputs
from .output import FLUSH_SECONDS, ROWS_PER_PART, Output, OutputError, PartWriter, meta
from .scoring import DEFAULT_BATCH_SIZE, ScaleError, ship_model, score_listing

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass
class JobResult:
    """What a run did: ``counts`` (labels of the rows it wrote), ``skipped`` (files already scored with the same
    size and mtime), ``rescored`` (files that changed since their row was written: the old row was dropped),
    ``parts`` (part files written), ``empty`` (folder arguments with no image), ``threshold``, ``duplicates``
    (rows a retried batch gave twice, dropped) and ``interrupted``."""

    counts: dict = field(default_factory=dict)
    skipped: int = 0
    rescored: int = 0
    parts: int = 0
    empty: list = field(default_factory=list)
    threshold: float = 0.5
    duplicates: int = 0
    interrupted: bool = False

    @property
    def scored(self) -> int:
        return sum(self.counts.values())


class JobInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run, after every finished row was written; ``result`` says what was done."""

    def __init__(self, result: JobResult):
        super().__init__("interrupted")
        self.result = result


class JobError(Exception):
    """A run that cannot start: a missing path, an unusable output, a model that will not load; one line.
    ``usage`` marks a mistake in the arguments (the CLI's exit status 2)."""

    def __init__(self, message: str, usage: bool = False):
        super().__init__(message)
        self.usage = usage


def run_scan(
    paths: Sequence[str | os.PathLike],
    output: str,
    *,
    recursive: bool = False,
    model: Optional[str] = None,
    threshold: Optional[float] = None,
    actors: Optional[int] = None,
    cpus_per_actor: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    rows_per_part: int = ROWS_PER_PART,
    flush_seconds: float = FLUSH_SECONDS,
    on_rows: Optional[Callable[["pa.Table", PartWriter], None]] = None,
    exit_after: Optional[tuple[int, str]] = None,
    scale: Optional[str] = None,
) -> JobResult:
    """Score ``paths`` on Ray into the Parquet folder ``output`` (a local path or a URI), resuming a run before.

    ``on_rows(rows, writer)`` runs on the driver after each batch of new rows is taken by the writer (to report
    errors as they come, or a test that stops the job once ``writer.parts`` are written).
    ``exit_after`` is the actors' test hook (:class:`~ensemble.distributed.scoring.Scorer`). Raises
    :class:`JobError` when the run cannot start, and :class:`JobInterrupted` on Ctrl-C once every finished row
    is written. ``scale``: what the images are judged at ('screen', 'native' or 'auto'; None: the default,
    detector.DEFAULT_SCALE); an output is scored at one scale, so a rerun at another is refused.
    """
    try:
        out = Output(output)
    except OutputError as err:
        raise JobError(str(err), usage=True) from None
    try:
        shipped = ship_model(model, threshold, scale)
    except ScaleError as err:
        raise JobError(str(err)) from None
    except Exception as err:  # noqa: BLE001 - a missing or corrupt model is one line, never a traceback
        raise JobError(f"cannot load the model ({model or 'the shipped model'}): {one_line(err)}") from None
    try:
        listing = list_inputs([os.fspath(p) for p in paths], recursive)
    except ListingError as err:
        raise JobError(str(err)) from None
    if listing.missing:
        more = f" (and {len(listing.missing) - 1} more)" if len(listing.missing) > 1 else ""
        raise JobError(f"no such file or folder: {listing.missing[0]}{more}", usage=True)
    try:
        out.prepare(meta(shipped.schema.names, shipped.digest, shipped.threshold, shipped.scale))
        todo, skipped, changed = _left_to_score(listing.table, out.scored())
        rescored = out.drop(changed)
    except OutputError as err:
        raise JobError(str(err), usage=True) from None
    except OSError as err:
        raise JobError(f"cannot use {output}: {one_line(err)}") from None
    result = JobResult(skipped=skipped, rescored=rescored, empty=listing.empty, threshold=shipped.threshold)
    if not todo.num_rows:
        return result
    records = score_listing(todo, shipped, actors=actors, cpus_per_actor=cpus_per_actor, batch_size=batch_size,
                            exit_after=exit_after)
    writer = out.writer(shipped.schema, rows_per_part, flush_seconds)
    try:
        for batch in records.iter_batches(batch_format="pyarrow", batch_size=None):
            rows = writer.add(batch)
            if on_rows is not None:
                on_rows(rows, writer)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        # Every finished row is kept, however the loop ended: the next run starts from there.
        writer.flush()
        result.counts, result.parts, result.duplicates = writer.counts, writer.parts, writer.duplicates
    if result.interrupted:
        raise JobInterrupted(result)
    return result


def _left_to_score(table, done: dict):
    """(the listing rows to score, how many are skipped, the paths whose old row must go) against ``done``:
    path -> (size, mtime) already written."""
    if not done:
        return table, 0, set()
    import pyarrow as pa

    paths = table.column("path").to_pylist()
    sizes = table.column("size").to_pylist()
    mtimes = table.column("mtime").to_pylist()
    keep, changed = [], set()
    for path, size, mtime in zip(paths, sizes, mtimes):
        before = done.get(path)
        keep.append(before != (size, mtime))
        if before is not None and keep[-1]:
            changed.add(path)
    todo = table.filter(pa.array(keep, type=pa.bool_()))
    return todo, table.num_rows - todo.num_rows, changed


__all__ = ["JobError", "JobInterrupted", "JobResult", "run_scan"]
