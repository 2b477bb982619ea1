"""The Parquet output of a Ray scan: its schema, the part files it is written in, and what a rerun can skip.

An output is a folder (``OUT.parquet/``, on the local disk or any filesystem pyarrow opens) holding:

* ``part-<run>-<n>.parquet``: the records, each part written whole (a temporary name, then a rename; on object
  stores an upload only appears once complete), so a job killed at any moment leaves only whole parts;
* ``_blur-detect.json``: what scored them (the record fields, the model's SHA-256, the threshold, the scale), so
  that a rerun with another model, threshold or scale is refused instead of mixing two sets of labels.

pandas, pyarrow, DuckDB, Spark and ``ray.data.read_parquet`` all read the folder as one table (files starting
with ``_`` or ``.`` are skipped by them). Columns: :data:`~ensemble.records.RECORD_FIELDS`, then :data:`FILE_FIELDS`.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from typing import TYPE_CHECKING, Callable, Optional

from .. import records
from .listing import ListingError, open_filesystem

if TYPE_CHECKING:
    import pyarrow as pa

FILE_FIELDS = ("size", "mtime")
"""Added to each record: the file's size (bytes) and last modification (timestamp, ns, UTC) when it was read."""

PART_PREFIX, PART_SUFFIX = "part-", ".parquet"
META_NAME = "_blur-detect.json"
META_FORMAT, META_VERSION = "blur-detect ray scan", 1
TEMP_SUFFIX = ".tmp"

ROWS_PER_PART = 100_000
"""Rows in one part file (at most; a part is also written after FLUSH_SECONDS)."""
FLUSH_SECONDS = 60.0
"""A part is written at least this often, so a job killed halfway loses at most this much work."""


def meta(fields: list[str], model: str, threshold: float, scale: Optional[str] = None) -> dict:
    """The contents of ``_blur-detect.json``: the columns, the model's SHA-256, the threshold of the rows and the
    scale they were judged at (ensemble.detector.SCALES)."""
    return {"format": META_FORMAT, "version": META_VERSION, "fields": list(fields), "model": model,
            "threshold": threshold, "scale": scale}


class OutputError(Exception):
    """The output cannot be used (not a folder, someone else's files, scored by another model); one line."""


# --------------------------------------------------------------------------------------------------------------
# Schema


def record_schema() -> "pa.Schema":
    """The Parquet schema: one column per :data:`~ensemble.records.RECORD_FIELDS` entry, typed by
    :mod:`ensemble.records` (text, int64, else float64), then ``size`` (int64 bytes) and ``mtime``
    (timestamp[ns, UTC]). A field added to the record reaches the Parquet output with no list here to keep in
    step."""
    import pyarrow as pa

    def arrow_type(name: str) -> "pa.DataType":
        if name in records.TEXT_FIELDS:
            return pa.string()
        return pa.int64() if name in records.INTEGER_FIELDS else pa.float64()

    fields = [pa.field(name, arrow_type(name)) for name in records.RECORD_FIELDS]
    return pa.schema(fields + [pa.field("size", pa.int64()), pa.field("mtime", pa.timestamp("ns", tz="UTC"))])


def to_table(rows: list[dict], schema: "pa.Schema") -> "pa.Table":
    """Records (with ``size`` and ``mtime`` in ns) as a table of ``schema``."""
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=schema)


# --------------------------------------------------------------------------------------------------------------
# The output folder


class Output:
    """A Ray scan's output folder ``uri`` (a local path or a URI)."""

    def __init__(self, uri: str):
        import pyarrow.fs as pafs

        self.uri = uri
        local = "://" not in uri
        try:
            self.fs, self.base = (pafs.LocalFileSystem(), os.path.abspath(uri)) if local else open_filesystem(uri)
        except ListingError as err:
            raise OutputError(str(err)) from None
        self.base = self.base.rstrip("/") or "/"
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def _path(self, name: str) -> str:
        return f"{self.base}/{name}"

    def _names(self) -> list[str]:
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(self.base)
        if info.type == pafs.FileType.NotFound:
            return []
        if info.type != pafs.FileType.Directory:
            raise OutputError(f"{self.uri} exists and is not a folder: a Ray scan writes a folder of part files")
        return sorted(e.base_name for e in self.fs.get_file_info(pafs.FileSelector(self.base)))

    def parts(self) -> list[str]:
        """The part files' paths (inside :attr:`fs`), in name order."""
        return [self._path(n) for n in self._names() if _is_part(n)]

    def prepare(self, meta: dict) -> None:
        """Check that this output is ours and was scored like ``meta`` says (raises OutputError); create it and
        write ``meta``; remove the temporary parts a killed run left behind."""
        names = self._names()
        foreign = [n for n in names if not (_is_part(n) or n == META_NAME or _is_temporary(n))]
        if foreign:
            raise OutputError(f"{self.uri} holds files a Ray scan did not write ({foreign[0]}...): "
                              "choose a new --output")
        old = self.read_meta() if META_NAME in names else None
        if old is None and any(_is_part(n) for n in names):
            raise OutputError(f"{self.uri} holds part files but no {META_NAME}: choose a new --output")
        if old is not None:
            why = _meta_difference(old, meta)
            if why:
                raise OutputError(f"{self.uri} was scored {why}: its rows would mix two sets of labels; "
                                  "choose a new --output, or rerun as it was run")
        self.fs.create_dir(self.base, recursive=True)
        for name in names:
            if _is_temporary(name):  # a part a killed run was writing: never renamed, so never part of the output
                self.fs.delete_file(self._path(name))
        if old is None:
            self._write(META_NAME, (json.dumps(meta, indent=1) + "\n").encode())

    def read_meta(self) -> Optional[dict]:
        try:
            with self.fs.open_input_stream(self._path(META_NAME)) as f:
                data = json.loads(f.read(1 << 20).decode("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise OutputError(f"cannot read {self._path(META_NAME)}: {err}") from None
        if not isinstance(data, dict) or data.get("format") != META_FORMAT:
            raise OutputError(f"{self._path(META_NAME)} was not written by a Ray scan")
        return data

    def scored(self) -> dict[str, tuple]:
        """path -> (size, mtime in ns) of every row already written."""
        import pyarrow.parquet as pq

        done: dict[str, tuple] = {}
        for part in self.parts():
            table = pq.read_table(part, columns=["path", "size", "mtime"], filesystem=self.fs)
            mtimes = _mtime_ns(table.column("mtime"))
            for path, size, mtime in zip(table.column("path").to_pylist(), table.column("size").to_pylist(), mtimes):
                done[path] = (size, mtime)
        return done

    def drop(self, paths: set[str]) -> int:
        """Remove the rows of ``paths`` (files that changed since they were scored) from the parts that hold them;
        returns how many. Each part is rewritten whole under its own name, so a crash leaves it old or new."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        if not paths:
            return 0
        removed = 0
        wanted = _string_array(sorted(paths))
        for part in self.parts():
            table = pq.read_table(part, filesystem=self.fs)
            hit = pc.is_in(table.column("path"), value_set=wanted)
            n = pc.sum(hit).as_py() or 0
            if not n:
                continue
            removed += n
            kept = table.filter(pc.invert(hit))
            if kept.num_rows:
                self._write(part[len(self.base) + 1:], _parquet_bytes(kept))
            else:
                self.fs.delete_file(part)
        return removed

    def writer(self, schema: "pa.Schema", rows_per_part: int = ROWS_PER_PART, flush_seconds: float = FLUSH_SECONDS,
               clock: Callable[[], float] = time.monotonic) -> "PartWriter":
        return PartWriter(self, schema, rows_per_part, flush_seconds, clock)

    def _write(self, name: str, data: bytes) -> None:
        if self.local:
            # A temporary name, fsynced, then a rename: a reader (or a rerun) sees the old file or the new one.
            tmp = self._path(f".{name}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self._path(name))
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        else:
            # Object stores publish an upload only once it is complete.
            with self.fs.open_output_stream(self._path(name)) as f:
                f.write(data)


class PartWriter:
    """Collects record tables and writes them as part files of :class:`Output`.

    A path already written by this writer is dropped (Ray retries work whose worker died; no file may appear
    twice). ``counts`` holds the labels of the rows written, ``rows`` their number, ``parts`` the part files
    written, ``duplicates`` the rows dropped.
    """

    def __init__(self, output: Output, schema: "pa.Schema", rows_per_part: int, flush_seconds: float, clock):
        self.output, self.schema = output, schema
        self.rows_per_part, self.flush_seconds, self.clock = max(1, rows_per_part), flush_seconds, clock
        self.run = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.counts: dict[str, int] = {}
        self.rows = self.parts = self.duplicates = 0
        self._seen: set[str] = set()
        self._buffer: list = []
        self._buffered = 0
        self._last = clock()

    def add(self, table: "pa.Table") -> "pa.Table":
        """Buffer ``table``'s rows of paths not seen before, and return them; write a part when enough rows or
        time have gathered."""
        import pyarrow as pa

        keep = []
        for path in table.column("path").to_pylist():
            keep.append(path not in self._seen)
            self._seen.add(path)
        if not all(keep):
            self.duplicates += keep.count(False)
            table = table.filter(pa.array(keep, type=pa.bool_()))
        if table.num_rows:
            self._buffer.append(table.select(self.schema.names).cast(self.schema))
            self._buffered += table.num_rows
        if self._buffered >= self.rows_per_part or (self._buffered and self.clock() - self._last >= self.flush_seconds):
            self.flush()
        return table

    def flush(self) -> bool:
        """Write what is buffered as one part; False when there was nothing."""
        import pyarrow as pa

        self._last = self.clock()
        if not self._buffered:
            return False
        table = pa.concat_tables(self._buffer)
        self.output._write(f"{PART_PREFIX}{self.run}-{self.parts:05d}{PART_SUFFIX}", _parquet_bytes(table))
        for label in table.column("label").to_pylist():
            self.counts[label] = self.counts.get(label, 0) + 1
        self.rows += table.num_rows
        self.parts += 1
        self._buffer, self._buffered = [], 0
        return True


# --------------------------------------------------------------------------------------------------------------
# Helpers


def _is_part(name: str) -> bool:
    return name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX)


def _is_temporary(name: str) -> bool:
    """A file :meth:`Output._write` was writing when its run was killed: ``.<part or meta name>.<id>.tmp``."""
    return name.endswith(TEMP_SUFFIX) and (name.startswith("." + PART_PREFIX) or name.startswith("." + META_NAME))


def _meta_difference(old: dict, new: dict) -> Optional[str]:
    if old.get("fields") != new.get("fields"):
        return "with other record fields (another version of blur-detect)"
    if old.get("model") != new.get("model"):
        return "with another model"
    if old.get("threshold") != new.get("threshold"):
        return f"with threshold {old.get('threshold')}, not {new.get('threshold')}"
    if old.get("scale") != new.get("scale"):
        return f"at scale {old.get('scale')}, not {new.get('scale')}"
    return None


def _parquet_bytes(table: "pa.Table") -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def _string_array(values: list[str]):
    import pyarrow as pa

    return pa.array(values, type=pa.string())


def _mtime_ns(column) -> list:
    """A timestamp (or integer) column as integers, ns since the epoch: datetimes would lose the nanoseconds."""
    import pyarrow as pa

    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.timestamp("ns", tz=column.type.tz)).cast(pa.int64())
    return column.to_pylist()


__all__ = ["FILE_FIELDS", "FLUSH_SECONDS", "META_NAME", "Output", "OutputError", "PartWriter", "ROWS_PER_PART",
           "meta", "record_schema", "to_table"]
