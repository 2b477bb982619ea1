"""List the files a Ray scan reads: local files and folders, and any filesystem pyarrow can open (``s3://``,
``gs://``, ``abfs://``...), each folder argument's sub-folders listed in parallel by Ray tasks.

A listing is a pyarrow table of :data:`LISTING_SCHEMA`, one row per file, sorted by path:

* ``path``: the absolute local path, or the full URI (what a worker opens, and what the record names);
* ``size``: bytes, and ``mtime``: the last modification, ns since the epoch (UTC); both null where the file could
  not be looked at (a broken link: reading it will say why);
* ``error``: a reason found while listing (a folder that cannot be read), which makes the row an error record
  without reading anything.

Local folders follow the local scan's rules (:func:`ensemble.scan.expand_paths`): a folder gives its files with an
image suffix (sub-folders too with ``recursive``), folder links are not followed, broken file links are kept so
that they are reported, a file named twice is listed once, and a file argument is kept whatever its name.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterable, NamedTuple

from ..imageio import is_image_name
from ..scan import expand_paths, one_line

if TYPE_CHECKING:  # pyarrow is imported where it is used: this module must import without the ray extra
    import pyarrow as pa

LISTING_CPUS = 0.25
"""CPUs a listing task asks Ray for: listing waits on the filesystem far more than it computes."""


def listing_schema() -> "pa.Schema":
    """The listing's columns: path (string), size (int64 bytes), mtime (int64 ns, UTC), error (string)."""
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime", pa.int64()), ("error", pa.string())])


class ListingError(Exception):
    """A path argument whose filesystem cannot be opened at all (an unknown scheme, no credentials); one line."""


class Listing(NamedTuple):
    """What :func:`list_inputs` found: ``table`` (:func:`listing_schema`, sorted by path, each path once),
    ``empty`` (folder arguments that held no image) and ``missing`` (arguments that do not exist)."""

    table: "pa.Table"
    empty: list
    missing: list


def is_uri(path: str) -> bool:
    """True for ``scheme://...`` (read through pyarrow's filesystems), False for a local path."""
    return "://" in path


def list_inputs(args: Iterable[str | os.PathLike], recursive: bool = False, parallel: bool = True) -> Listing:
    """The files to scan for ``args`` (local paths, relative ones made absolute, or URIs).

    The top level of each folder is listed here; with ``recursive`` its sub-folders are listed by Ray tasks, in
    parallel (``parallel=False``: here, one after the other). Raises :class:`ListingError` for an argument whose
    filesystem cannot be opened.
    """
    parts, empty, missing, folders = [], [], [], []  # folders: (argument, rows at its top, sub-folder jobs)
    for arg in map(os.fspath, args):
        found, subs, kind = (_list_remote_top if is_uri(arg) else _list_local_top)(arg, recursive)
        if kind == "missing":
            missing.append(arg)
            continue
        parts.append(found)
        if kind == "folder":
            folders.append((arg, found.num_rows, subs))
    jobs = [sub for _, _, subs in folders for sub in subs]
    listed = _run_jobs(jobs, parallel)
    at = 0
    for arg, top_rows, subs in folders:
        if top_rows + sum(t.num_rows for t in listed[at:at + len(subs)]) == 0:
            empty.append(arg)
        at += len(subs)
    return Listing(_sorted_unique(parts + listed), empty, missing)


# --------------------------------------------------------------------------------------------------------------
# Local


def _list_local_top(arg: str, recursive: bool):
    path = os.path.abspath(arg)
    if not os.path.lexists(path):
        return None, [], "missing"
    if not os.path.isdir(path):
        return local_rows([path]), [], "file"
    inputs, _ = expand_paths([path], recursive=False)
    subs = []
    if recursive:
        try:
            with os.scandir(path) as it:
                subs = sorted(("local", e.path) for e in it if _is_real_dir(e))
        except OSError:
            pass  # expand_paths has made the folder an error row already
    return _local_table(inputs), subs, "folder"


def _is_real_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)  # folder links are not followed: they can loop
    except OSError:
        return False


def _list_local_folder(folder: str) -> "pa.Table":
    inputs, _ = expand_paths([folder], recursive=True)
    return _local_table(inputs)


def _local_table(inputs) -> "pa.Table":
    listed = [item for item in inputs if item.error is None]
    table = local_rows([item.path for item in listed])
    failed = [item for item in inputs if item.error is not None]
    if not failed:
        return table
    import pyarrow as pa

    errors = pa.table({"path": [i.path for i in failed], "size": [None] * len(failed),
                       "mtime": [None] * len(failed), "error": [i.error for i in failed]}, schema=listing_schema())
    return pa.concat_tables([table, errors])


def local_rows(paths: list[str]) -> "pa.Table":
    """Listing rows for local files, with their size and mtime (null where ``os.stat`` fails: reading will say
    why)."""
    import pyarrow as pa

    sizes, mtimes = [], []
    for path in paths:
        try:
            st = os.stat(path)
            sizes.append(st.st_size)
            mtimes.append(st.st_mtime_ns)
        except OSError:
            sizes.append(None)
            mtimes.append(None)
    return pa.table({"path": paths, "size": sizes, "mtime": mtimes, "error": [None] * len(paths)},
                    schema=listing_schema())


# --------------------------------------------------------------------------------------------------------------
# pyarrow filesystems


def open_filesystem(uri: str):
    """(pyarrow filesystem, path inside it) for ``uri``; raises :class:`ListingError` with one line."""
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as err:  # noqa: BLE001 - ArrowInvalid, OSError...: an argument that cannot be opened
        raise ListingError(f"cannot open {uri}: {one_line(err)}") from None


def _list_remote_top(arg: str, recursive: bool):
    import pyarrow.fs as pafs

    fs, base = open_filesystem(arg)
    prefix, base = arg.rstrip("/"), base.rstrip("/")
    try:
        info = fs.get_file_info(base)
    except Exception as err:  # noqa: BLE001 - a refused request is one line
        raise ListingError(f"cannot open {arg}: {one_line(err)}") from None
    if info.type == pafs.FileType.NotFound:
        return None, [], "missing"
    if info.type != pafs.FileType.Directory:
        return _remote_table([(prefix, info)]), [], "file"
    try:
        entries = fs.get_file_info(pafs.FileSelector(base, recursive=False))
    except Exception as err:  # noqa: BLE001
        return _folder_error(prefix, err), [], "folder"
    files = [(prefix + e.path[len(base):], e) for e in entries
             if e.type == pafs.FileType.File and is_image_name(e.path)]
    subs = sorted(("remote", prefix + e.path[len(base):]) for e in entries
                  if recursive and e.type == pafs.FileType.Directory)
    return _remote_table(files), subs, "folder"


def _list_remote_folder(uri: str) -> "pa.Table":
    import pyarrow.fs as pafs

    fs, base = open_filesystem(uri)
    base = base.rstrip("/")
    try:
        entries = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except Exception as err:  # noqa: BLE001
        return _folder_error(uri, err)
    return _remote_table([(uri + e.path[len(base):], e) for e in entries
                          if e.type == pafs.FileType.File and is_image_name(e.path)])


def _remote_table(found) -> "pa.Table":
    import pyarrow as pa

    return pa.table({"path": [uri for uri, _ in found], "size": [info.size for _, info in found],
                     "mtime": [info.mtime_ns for _, info in found], "error": [None] * len(found)},
                    schema=listing_schema())


def _folder_error(folder: str, err: BaseException) -> "pa.Table":
    import pyarrow as pa

    return pa.table({"path": [folder], "size": [None], "mtime": [None],
                     "error": [f"cannot list folder: {one_line(err)}"]}, schema=listing_schema())


# --------------------------------------------------------------------------------------------------------------
# Sub-folders, in parallel


def list_folder(kind: str, folder: str) -> "pa.Table":
    """Every image file below one sub-folder (``kind`` 'local' or 'remote'): the body of a listing task."""
    return _list_local_folder(folder) if kind == "local" else _list_remote_folder(folder)


def _run_jobs(jobs: list, parallel: bool) -> list:
    if not jobs:
        return []
    if not parallel or len(jobs) == 1:
        return [list_folder(kind, folder) for kind, folder in jobs]
    import ray

    task = ray.remote(num_cpus=LISTING_CPUS)(list_folder)
    return ray.get([task.remote(kind, folder) for kind, folder in jobs])


def _sorted_unique(tables: list) -> "pa.Table":
    import pyarrow as pa
    import pyarrow.compute as pc

    tables = [t for t in tables if t is not None and t.num_rows]
    if not tables:
        return listing_schema().empty_table()
    table = pa.concat_tables(tables).combine_chunks()
    table = table.take(pc.sort_indices(table, sort_keys=[("path", "ascending")]))
    paths = table.column("path").to_pylist()
    # A file reached from two arguments is listed once (the first row of the sorted run).
    keep = [i == 0 or p != paths[i - 1] for i, p in enumerate(paths)]
    return table if all(keep) else table.filter(pa.array(keep, type=pa.bool_()))


__all__ = ["Listing", "ListingError", "is_uri", "list_folder", "list_inputs", "listing_schema",
           "local_rows", "open_filesystem"]
