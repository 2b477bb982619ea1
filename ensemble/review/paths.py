"""Which files the review page works on, and every path the page sends checked against the root.

Paths travel between the page and the server as *keys*: the file's path below the root with ``/`` separators, as
the listing found it (``sub/IMG_0001.jpg``). A key from the client is never trusted: :func:`client_path` refuses
absolute paths, ``.``/``..`` parts, NUL bytes and anything that resolves outside the root (symbolic links are
followed by :func:`ensemble.fsutil.confine` before that check).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple, Optional

from ..fsutil import OutsideRootError, atomic_write, confine
from ..scan import expand_paths, one_line

CACHE_DIR = ".blur-review"
"""Folder in the root for thumbnails, blur-map overlays and cached scores: disposable, rebuilt when missing."""

STATE_FILE = ".blur-review-state.json"
"""File in the root holding the user's decisions (overrides, threshold, apply journals): small, kept."""

DEST_DIR = "_blurry"
"""Folder in the root that Apply moves rejected photos into (sub-folders kept)."""

SKIPPED = frozenset({CACHE_DIR, DEST_DIR})
"""Top-level folders of the root that the review never lists: its own cache, and the photos already moved."""

CACHEDIR_TAG = ("Signature: 8a477f597d28d172789f06886806bc55\n"
                "# Cache of blur-detect's review page (thumbnails, overlays, scores); safe to delete.\n")
"""Marks :data:`CACHE_DIR` as a cache (https://bford.info/cachedir/), so backup tools can skip it."""

MAX_KEY = 4096
"""Longest key accepted from a client (characters); longer ones cannot name a file anyway."""


_DRIVE = re.compile(r"[A-Za-z]:[\\/]")  # C:\ or C:/, absolute on Windows


class BadPath(ValueError):
    """A client path that is malformed or leaves the root; ``str(err)`` is a one-line reason."""


class Listed(NamedTuple):
    """One file of the root: its ``key``, absolute ``path`` and, when it cannot be scored, the one-line ``error``."""

    key: str
    path: str
    error: Optional[str] = None


def list_images(root: Path) -> list[Listed]:
    """The image files below ``root`` (recursively, sorted by path), minus :data:`SKIPPED` folders.

    Listing reuses :func:`ensemble.scan.expand_paths`, so the review sees exactly the files ``blur-detect scan -r``
    would. Links that lead out of the root, names that are not valid UTF-8 (the page could not send them back) and
    folders that cannot be read are listed with an error, so they show as error tiles and are never read.
    """
    found, _ = expand_paths([str(root)], recursive=True)
    listed = []
    for item in found:
        rel = os.path.relpath(item.path, root)
        parts = rel.split(os.sep)
        if parts[0] in SKIPPED or parts[0] == os.pardir:
            continue
        key = "/".join(parts)
        error = item.error
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            key = key.encode("utf-8", "replace").decode("utf-8")
            error = "file name is not valid UTF-8: rename it to review it"
        if error is None and os.path.islink(item.path):
            try:
                confine(root, rel)
            except OutsideRootError:
                error = "symbolic link leads outside the folder: not read"
            except OSError:  # a link loop: it must not end the scan
                error = "symbolic link loops or cannot be followed: not read"
        listed.append(Listed(key, item.path, error))
    return listed


def ensure_cache_dir(cache_dir: Path) -> None:
    """Create :data:`CACHE_DIR` (with its CACHEDIR.TAG) if needed; raises OSError when the root is read-only."""
    tag = cache_dir / "CACHEDIR.TAG"
    if not tag.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(tag, CACHEDIR_TAG)


def client_path(root: Path, key: str) -> Path:
    """The resolved file for a key sent by the page; raises :class:`BadPath` unless it stays inside ``root``.

    ``root`` must be resolved already. The file need not exist (the caller checks that it is a listed photo).
    """
    if not isinstance(key, str) or not key:
        raise BadPath("no path given")
    if len(key) > MAX_KEY:
        raise BadPath("path too long")
    if "\x00" in key:
        raise BadPath("path contains a NUL byte")
    if key.startswith(("/", "\\")) or os.path.isabs(key) or _DRIVE.match(key):
        raise BadPath("absolute paths are not accepted: send the path below the folder")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise BadPath("path must not contain '..', '.' or empty parts")
    try:
        return confine(root, key)
    except OutsideRootError:
        raise BadPath("path leads outside the folder") from None
    except (OSError, ValueError) as err:  # symlink loops, names the OS refuses
        raise BadPath(f"unusable path: {one_line(err)}") from None


__all__ = ["BadPath", "CACHE_DIR", "CACHEDIR_TAG", "DEST_DIR", "Listed", "MAX_KEY", "SKIPPED", "STATE_FILE",
           "client_path", "ensure_cache_dir", "list_images"]
