"""Scoring on Ray: the model shipped to the workers, the actor that scores batches of files, and
:func:`scan_dataset`, which turns paths (or a ``ray.data.Dataset`` of paths) into a Dataset of records.

The driver reads the model's ONNX graphs and ``metadata.json`` once and puts their bytes in Ray's object store, so
workers never read the driver's disk. Each actor loads one :class:`~ensemble.detector.BlurDetector` from those
bytes when it starts, on single-threaded ONNX Runtime sessions, and scores each image on one of its threads (one
per CPU it holds; two per CPU for remote files, so that one reads while the other computes), as the local scan
does (:mod:`ensemble.scan`). Local files are decoded from their path, exactly as a local scan decodes them; files on
other filesystems are read as bytes through pyarrow and go through the same decoder from a private temporary file
(in ``/dev/shm`` where there is one). Whatever goes wrong with a file becomes its error record, never the job's
failure.
"""
from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from ..cli_common import native_problem
from ..detector import CNN_DIR, DEFAULT_SCALE, META_DIR, BlurDetector, check_scale, default_model_root
from ..imageio import DECODE_BUDGET, MiB
from ..records import error_record
from ..scan import one_line, score_one
from .listing import is_uri, list_inputs, open_filesystem
from .output import record_schema, to_table

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

MODEL_PARTS = (CNN_DIR, META_DIR)
"""The model folder's sub-folders whose ONNX graphs and JSON files ``BlurDetector.load(runtime='onnx')`` reads
(the CNN, the meta-network, its metadata, a kind head when there is one); the .keras files stay behind."""


def model_files(root: Path) -> dict:
    """Relative name -> bytes of every ``*.onnx`` and ``*.json`` file in ``root``'s :data:`MODEL_PARTS`."""
    files = {}
    for part in MODEL_PARTS:
        for path in sorted((root / part).glob("*")):
            if path.suffix in (".onnx", ".json") and path.is_file():
                files[f"{part}/{path.name}"] = path.read_bytes()
    return files

DEFAULT_BATCH_SIZE = 8
"""Files an actor takes at once (Ray Data's ``batch_size``), scored side by side by its threads."""

TASKS_PER_ACTOR = 16
"""A job is cut into about this many Ray tasks per actor: enough that the actors finish together (a task whose
actor dies is retried whole, too)."""

MAX_TASK_FILES = 1024
"""The most files in one task. Each task costs the driver a few milliseconds whatever its size (measured by
benchmarks/bench_ray.py), so big jobs on big clusters need big tasks; this caps what a dying actor loses."""

SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
"""Where a remote file's bytes are written for the decoder: a RAM disk where there is one, else the temp folder."""


@dataclass(frozen=True)
class ShippedModel:
    """A model as the workers receive it: ``files`` (:func:`model_files`), the ``threshold`` in force,
    ``digest`` (SHA-256 of the files: which model scored an output), the Parquet ``schema`` of its records and
    the ``scale`` the actors judge at (ensemble.detector.SCALES)."""

    files: dict
    threshold: float
    digest: str
    schema: "pa.Schema"
    scale: str = DEFAULT_SCALE


class ScaleError(ValueError):
    """The model cannot judge at the scale asked (``scale='native'`` without a native-scale meta-network)."""


def ship_model(model: Optional[str | os.PathLike] = None, threshold: Optional[float] = None,
               scale: Optional[str] = None) -> ShippedModel:
    """Read the model folder ``model`` (default: the shipped model) and load it once here, as each actor will, so
    that a missing or broken model fails now, with its own error, rather than in every worker. ``scale``: what
    the actors judge at (None: detector.DEFAULT_SCALE); ValueError for an unknown one, :class:`ScaleError` for
    'native' with a model that has no native-scale meta-network."""
    scale = check_scale(scale or DEFAULT_SCALE)
    root = Path(model) if model is not None else default_model_root()
    files = model_files(root)
    detector = load_detector(files, threshold)  # says what is missing or wrong, as BlurDetector.load does
    problem = native_problem(detector, "scale 'native'") if scale == "native" else None
    if problem:
        raise ScaleError(problem)
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return ShippedModel(files, detector.threshold, digest.hexdigest(), record_schema(), scale)


def load_detector(files: dict, threshold: Optional[float] = None, scale: str = DEFAULT_SCALE) -> BlurDetector:
    """A BlurDetector on single-threaded ONNX sessions from the model's bytes (written to a private folder for
    ONNX Runtime to read, and removed once loaded), checked with one tiny prediction; it judges at ``scale``."""
    folder = tempfile.mkdtemp(prefix="blur-detect-model-", dir=SCRATCH)
    try:
        for name, data in files.items():
            path = Path(folder) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return BlurDetector.load(folder, threads=1, threshold=threshold, scale=scale).check()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Scorer:
    """The Ray Data actor: one BlurDetector, loaded once; scores a batch of files.

    ``model``: a :class:`ShippedModel` or an ObjectRef to one. ``threads``: images scored at once.
    ``exit_after`` = (n, marker file) is a test hook: the first actor to score n rows while the marker does not
    exist creates it and exits at once, as a worker that dies would; Ray restarts it and retries its batch.

    A batch is a pyarrow table with ``path`` and optionally the listing's ``size``, ``mtime`` (ns) and ``error``;
    the result is a table of the model's schema: each file's record, its size and its mtime.
    """

    def __init__(self, model, threads: int = 1, exit_after: Optional[tuple[int, str]] = None):
        import ray

        if isinstance(model, ray.ObjectRef):
            model = ray.get(model)
        self.detector = load_detector(model.files, model.threshold, getattr(model, "scale", DEFAULT_SCALE))
        self.schema = model.schema
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="blur-ray") if threads > 1 else None
        self.filesystems: dict = {}
        self.exit_after = exit_after
        self.scored = 0
        self.lock = threading.Lock()

    def __call__(self, batch: "pa.Table") -> "pa.Table":
        n = batch.num_rows
        columns = {name: (batch.column(name).to_pylist() if name in batch.column_names else [None] * n)
                   for name in ("path", "size", "mtime", "error")}
        jobs = list(zip(columns["path"], columns["size"], columns["mtime"], columns["error"]))
        rows = list(self.pool.map(self.score, jobs)) if self.pool else [self.score(job) for job in jobs]
        return to_table(rows, self.schema)

    def score(self, job: tuple) -> dict:
        """The record of one (path, size, mtime, listing error), with ``size`` and ``mtime`` (ns) added."""
        path, size, mtime, listed_error = job
        if listed_error is not None:
            record = error_record(path, listed_error)
        elif is_uri(path):
            record, size, mtime = self._score_remote(path, size, mtime)
        else:
            size, mtime = _stat(path)  # before the read: a change during it makes the next run score it again
            scanned = score_one(self.detector, path)
            record = _record(path, scanned)
        record["size"], record["mtime"] = size, mtime
        self._count()
        return record

    def _score_remote(self, uri: str, size, mtime):
        try:
            fs, path = self._filesystem(uri)
            if size is None or mtime is None:
                info = fs.get_file_info(path)
                size, mtime = info.size, info.mtime_ns
            if size is not None and size > DECODE_BUDGET:
                return error_record(uri, f"file of {size // MiB:,} MiB is over the {DECODE_BUDGET // MiB:,} MiB "
                                         "decode budget"), size, mtime
            with fs.open_input_stream(path) as f:
                data = f.read()
        except FileNotFoundError:
            return error_record(uri, "file not found"), size, mtime
        except Exception as err:  # noqa: BLE001 - a refused or broken read is this file's error, not the job's
            return error_record(uri, f"cannot read: {one_line(err)}"), size, mtime
        return _record(uri, _score_bytes(self.detector, data)), size, mtime

    def _filesystem(self, uri: str):
        """(filesystem, path inside it) for ``uri``, one filesystem per scheme and bucket (their clients are
        costly to make)."""
        scheme, rest = uri.split("://", 1)
        netloc, _, key = rest.partition("/")
        root = f"{scheme}://{netloc}"
        if root not in self.filesystems:
            fs, base = open_filesystem(root + "/")
            self.filesystems[root] = (fs, base.rstrip("/"))
        fs, base = self.filesystems[root]
        return fs, f"{base}/{key}"

    def _count(self) -> None:
        if self.exit_after is None:
            return
        with self.lock:
            self.scored += 1
            if self.scored < self.exit_after[0]:
                return
            try:
                os.close(os.open(self.exit_after[1], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return  # this actor, or another, has died once already
            os._exit(1)


def _stat(path: str) -> tuple:
    try:
        st = os.stat(path)
    except OSError:
        return None, None  # the decode reports why (broken link, permission denied...)
    return st.st_size, st.st_mtime_ns


def _record(path: str, scanned) -> dict:
    if scanned.error is not None:
        return error_record(path, one_line(scanned.error))
    return scanned.result.record(path)


def _score_bytes(detector: BlurDetector, data: bytes):
    """score_one on a file's bytes, through a private temporary file (the decoder sniffs, sizes and budgets
    files, not buffers)."""
    fd, tmp = tempfile.mkstemp(prefix="blur-detect-ray-", suffix=".img", dir=SCRATCH)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return score_one(detector, tmp)
    finally:
        os.unlink(tmp)


# --------------------------------------------------------------------------------------------------------------
# The Dataset


def default_actors(cpus_per_actor: int = 1) -> int:
    """Actors that keep every CPU of the cluster busy: its CPUs / ``cpus_per_actor`` (at least 1)."""
    import ray

    if not ray.is_initialized():
        ray.init()
    return max(1, int(ray.cluster_resources().get("CPU", 1)) // max(1, cpus_per_actor))


def task_files(files: int, actors: int, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
    """Files per Ray task, in whole batches: about :data:`TASKS_PER_ACTOR` tasks per actor, but at least half as
    many files as there are actors (so the driver launches about two tasks a second per image/s of one actor,
    however big the cluster), and at most :data:`MAX_TASK_FILES`."""
    actors = max(1, actors)
    per_task = max(math.ceil(files / (TASKS_PER_ACTOR * actors)), math.ceil(actors / 2))
    per_task = min(max(per_task, batch_size), max(MAX_TASK_FILES, batch_size))
    return batch_size * math.ceil(per_task / batch_size)


def input_dataset(table: "pa.Table", task_size: int) -> tuple["ray.data.Dataset", int]:
    """(a Dataset of the listing ``table`` in blocks of ``task_size`` rows, one block per Ray task; the number of
    blocks)."""
    import ray.data

    blocks = [table.slice(start, task_size) for start in range(0, table.num_rows, task_size)] or [table]
    return ray.data.from_arrow(blocks), len(blocks)


def scan_dataset(
    paths: "Sequence[str | os.PathLike] | ray.data.Dataset",
    *,
    recursive: bool = False,
    model: Optional[str | os.PathLike] = None,
    threshold: Optional[float] = None,
    actors: Optional[int] = None,
    cpus_per_actor: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    scale: Optional[str] = None,
) -> "ray.data.Dataset":
    """A Dataset of scan records, scored by a pool of actors.

    ``paths``: local files and folders or URIs (listed as :func:`~ensemble.distributed.listing.list_inputs` does,
    folders recursively with ``recursive``), or a Dataset with a ``path`` column naming files (local paths or
    URIs; ``size``, ``mtime`` and ``error`` columns, if any, are used as a listing's). The result has one row per
    file: the record fields (:data:`~ensemble.records.RECORD_FIELDS`), then ``size`` (bytes) and ``mtime``
    (timestamp[ns, UTC]). It is lazy, like any Dataset: iterate it, or write it (``write_parquet``).

    ``actors`` (default: the cluster's CPUs / ``cpus_per_actor``), ``cpus_per_actor`` and ``batch_size`` (files an
    actor takes at once) size the pool (a listing is cut into tasks by :func:`task_files`); ``model``, ``threshold``
    and ``scale`` ('screen', 'native' or 'auto'; None: the default, detector.DEFAULT_SCALE) are the local scan's.
    Raises FileNotFoundError for a path that does not exist, :class:`~ensemble.distributed.listing.ListingError`
    for one that cannot be opened, :class:`ScaleError` for ``scale='native'`` with a model that cannot.
    """
    import ray.data

    shipped = ship_model(model, threshold, scale)
    if isinstance(paths, ray.data.Dataset):
        return _scored(paths, shipped, actors or default_actors(cpus_per_actor), cpus_per_actor, batch_size)
    listing = list_inputs([os.fspath(p) for p in paths], recursive)
    if listing.missing:
        raise FileNotFoundError(f"no such file or folder: {listing.missing[0]}")
    return score_listing(listing.table, shipped, actors=actors, cpus_per_actor=cpus_per_actor,
                         batch_size=batch_size)


def score_listing(table: "pa.Table", shipped: ShippedModel, *, actors: Optional[int] = None,
                  cpus_per_actor: int = 1, batch_size: int = DEFAULT_BATCH_SIZE,
                  exit_after: Optional[tuple[int, str]] = None) -> "ray.data.Dataset":
    """:func:`scan_dataset` for a listing table (:func:`~ensemble.distributed.listing.listing_schema`) and a
    model already read by :func:`ship_model`. ``exit_after`` is :class:`Scorer`'s test hook."""
    import pyarrow.compute as pc

    actors = actors or default_actors(cpus_per_actor)
    dataset, blocks = input_dataset(table, task_files(table.num_rows, actors, batch_size))
    remote = bool(table.num_rows) and bool(pc.any(pc.match_substring(table.column("path"), "://")).as_py())
    # More actors than tasks would only start and wait (and Ray warns about it).
    return _scored(dataset, shipped, min(actors, blocks), cpus_per_actor, batch_size, remote, exit_after)


def _scored(dataset, shipped: ShippedModel, actors: int, cpus_per_actor: int, batch_size: int,
            remote: bool = False, exit_after: Optional[tuple[int, str]] = None) -> "ray.data.Dataset":
    import ray
    import ray.data

    return dataset.map_batches(
        Scorer,
        fn_constructor_kwargs={"model": ray.put(shipped), "threads": cpus_per_actor * (2 if remote else 1),
                               "exit_after": exit_after},
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        batch_size=batch_size,
        batch_format="pyarrow",
        # A worker that dies is restarted and its batch retried: Ray Data's defaults for actor pools
        # (max_restarts=-1, max_task_retries=-1; tests/test_ray.py kills an actor to hold them). The driver drops
        # any row it has already written.
    )


__all__ = ["DEFAULT_BATCH_SIZE", "MAX_TASK_FILES", "MODEL_PARTS", "ScaleError", "Scorer", "ShippedModel",
           "TASKS_PER_ACTOR",
           "default_actors", "input_dataset", "load_detector", "model_files", "scan_dataset", "score_listing",
           "ship_model", "task_files"]
