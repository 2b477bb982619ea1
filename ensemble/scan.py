"""Library side of ``blur-detect scan``: find the image files under the paths given and score them in parallel.

Nothing here prints; :mod:`ensemble.cli` owns all output.

Parallelism: one shared :class:`~ensemble.detector.BlurDetector` whose ONNX Runtime sessions run single-threaded,
called from ``workers`` Python threads that each decode and score whole images. Pillow's decoders, OpenCV and ONNX
Runtime all release the GIL, so the threads really run side by side. Measured on 2 busy cores with 12 MP JPEGs:
13.5 images/s this way, the same with one detector per thread (so sharing saves memory for nothing), 10-12 with
decoding threads feeding batched multi-threaded ONNX calls, 9.5 with one image at a time on a multi-threaded session.

On a GPU (``BlurDetector.load(device="cuda")``, or ``auto`` where CUDA loads) the same workers decode and finish
images on the CPU, and their CNN calls, made at the same time, are joined into batches of up to 512 patches by the
detector's :class:`~ensemble.batching.PatchBatcher`, so the GPU gets few large calls instead of one small call per
image. The records are the same either way.
"""
from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, NamedTuple, Optional

from .fsutil import unique_stems
from .imageio import ImageError, is_image_name

if TYPE_CHECKING:  # the scan path never needs these at import time
    from .detector import BlurDetector, BlurResult


class ScanInput(NamedTuple):
    """One file to scan. ``path`` as the user will see it (the argument, or ``argument/sub/dir/name``), ``root``
    the argument it came from (a file argument's root is its own folder), ``error`` a reason found while listing
    folders, which makes the file an error record without reading it."""

    path: str
    root: str
    error: Optional[str] = None


class Scanned(NamedTuple):
    """What :func:`scan_paths` yields: the path and either its result or a one-line reason it could not be read."""

    path: str
    result: Optional["BlurResult"]
    error: Optional[str]


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


WORKERS_PER_CORE = 4
"""At most this many scan workers per core: more only add threads, memory and contention (decoding and scoring
are CPU-bound; a little over one per core hides file reads)."""


def max_workers() -> int:
    """The most workers a scan runs: :data:`WORKERS_PER_CORE` × the cores."""
    return WORKERS_PER_CORE * default_workers()


# --------------------------------------------------------------------------------------------------------------
# Listing


def expand_paths(args: Iterable[str | os.PathLike], recursive: bool = False) -> tuple[list[ScanInput], list[str]]:
    """The files to scan for the command-line arguments, and the folder arguments that held no image.

    Folders give their files with an image suffix (recursively with ``recursive``), in sorted order; file
    arguments are kept whatever their name, and missing ones too, so that the scan reports them. Symbolic links
    to folders are not followed while recursing (they can loop); links to files are kept, broken ones included,
    so that they are reported. A file reached twice is scanned once.
    """
    inputs: list[ScanInput] = []
    empty: list[str] = []
    seen: set[str] = set()

    def add(item: ScanInput) -> None:
        key = os.path.normcase(os.path.abspath(item.path))
        if key not in seen:
            seen.add(key)
            inputs.append(item)

    for arg in args:
        arg = os.fspath(arg)
        if os.path.isdir(arg):
            found = _list_folder(arg, recursive)
            if not found:
                empty.append(arg)
            for item in found:
                add(item)
        else:
            add(ScanInput(arg, os.path.dirname(arg) or os.curdir))
    return inputs, empty


def _list_folder(root: str, recursive: bool) -> list[ScanInput]:
    found: list[tuple[tuple[str, ...], ScanInput]] = []

    def visit(folder: str, parts: tuple[str, ...]) -> None:
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as err:
            reason = f"cannot list folder: {(err.strerror or str(err)).lower()}"
            found.append((parts, ScanInput(folder, root, reason)))
            return
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive:
                        visit(entry.path, parts + (entry.name,))
                    continue
                # Regular files and links (the scan reports broken ones); FIFOs, sockets and devices are skipped.
                wanted = entry.is_symlink() or entry.is_file(follow_symlinks=False)
            except OSError:
                wanted = True  # let the scan report what is wrong with it
            if wanted and is_image_name(entry.name):
                found.append((parts + (entry.name,), ScanInput(entry.path, root)))

    visit(root, ())
    # Sorting on path components keeps every folder's files together and the order the same on every run.
    found.sort(key=lambda pair: pair[0])
    return [item for _, item in found]


# --------------------------------------------------------------------------------------------------------------
# Scoring


def score_one(detector: "BlurDetector", path: str, with_map: bool = False, scale: str | None = None) -> Scanned:
    """Decode and score one file at ``scale`` (None: the detector's own); any failure becomes a one-line reason
    instead of an exception."""
    try:
        # Without a scale, the detector's own: called as before, so a detector of another make needs no scale.
        args = () if scale is None else (scale,)
        result = detector.predict_decoded([detector.decode(path, *args)], with_map, *args)[0]
    except ImageError as err:  # the record names the file: its error is the reason alone
        return Scanned(path, None, one_line(err.reason))
    except MemoryError:
        return Scanned(path, None, "out of memory while decoding")
    except Exception as err:  # noqa: BLE001 - a bad file must never stop a 10,000-image scan
        return Scanned(path, None, f"unexpected error: {type(err).__name__}: {one_line(err)}")
    return Scanned(path, result, None)


def scan_paths(
    paths: Iterable[str | os.PathLike | ScanInput],
    detector: Optional["BlurDetector"] = None,
    workers: int = 0,
    with_map: bool = False,
    after: Optional[Callable[[Scanned], None]] = None,
    in_flight: int = 0,
    scale: str | None = None,
) -> Iterator[Scanned]:
    """Score ``paths`` with ``workers`` threads (0: one per core), yielding each :class:`Scanned` as it finishes.

    ``detector`` is shared by all threads; load it with ``threads=1`` so that each call keeps to one core (the
    default: the shipped model, loaded so). At most
    ``in_flight`` images (default 2 × workers) are being read or waiting to be yielded at any time, so memory stays
    flat however many paths there are, and ``paths`` may be a lazy iterable. ``with_map`` keeps each result's
    blur map. ``after(scanned)`` runs in the worker thread right after scoring (to write per-image files in
    parallel); it must not raise. Closing the generator early cancels the images not yet started. ``scale``:
    'screen', 'native' or 'auto' (detector.SCALES); None: the detector's own.
    """
    if detector is None:
        from .detector import BlurDetector

        detector = BlurDetector.load(threads=1)
    workers = workers or default_workers()
    limit = max(in_flight or 2 * workers, workers)
    items = iter(paths)
    args = () if scale is None else (scale,)

    def job(item) -> Scanned:
        if isinstance(item, ScanInput):
            done = (Scanned(item.path, None, item.error) if item.error
                    else score_one(detector, item.path, with_map, *args))
        else:
            done = score_one(detector, os.fspath(item), with_map, *args)
        if after is not None:
            after(done)
        return done

    if workers == 1:
        # No threads: simpler to debug and to profile, same results.
        for item in items:
            yield job(item)
        return

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="blur-scan")
    pending: set[Future] = set()
    try:
        exhausted = False
        while True:
            while not exhausted and len(pending) < limit:
                item = next(items, None)
                if item is None:
                    exhausted = True
                else:
                    pending.add(pool.submit(job, item))
            if not pending:
                break
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    finally:
        # Reached on normal exit, on Ctrl-C in the consumer and on close(): queued work is dropped, and the few
        # images already being read finish in the background within a fraction of a second.
        pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------------------------------------------
# Blur-map pictures


def map_names(paths: Iterable[str]) -> dict[str, str]:
    """A distinct ``<stem>.blurmap.png`` file name for each path, given in scan order (stable across runs).

    Later paths whose stem was already used get ``<stem>-2``, ``<stem>-3``... (fsutil.unique_stems).
    """
    paths = list(paths)
    stems = unique_stems(Path(path).stem or "image" for path in paths)
    return {path: f"{stem}.blurmap.png" for path, stem in zip(paths, stems)}


def save_blur_map(path: str, result: "BlurResult", out_png: str | os.PathLike, side: int) -> Path:
    """Write the photo at the analysis scale with its per-patch blur map over it and the probability in a corner.

    Written through a temporary file, so an interrupted scan never leaves a half-written PNG behind.
    """
    from PIL import Image

    from .imageio import load_image
    from .plots import blur_map_picture

    picture = blur_map_picture(load_image(path, "RGB", side).pixels, result)
    out_png = Path(out_png)
    tmp = out_png.with_name(f".{out_png.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(picture).save(tmp, "PNG")
        os.replace(tmp, out_png)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_png


def one_line(err: object) -> str:
    """``str(err)`` on one line (file names may hold newlines); the exception's type name when it is empty."""
    text = " ".join(str(err).split("\n")).strip()
    return text or type(err).__name__


__all__ = [
    "ScanInput",
    "Scanned",
    "default_workers",
    "expand_paths",
    "map_names",
    "one_line",
    "save_blur_map",
    "scan_paths",
    "score_one",
]
