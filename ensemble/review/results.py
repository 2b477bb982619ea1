"""The review's scan results: one :class:`Entry` per listed photo, numbered for the page's polls, cached on disk.

Every change to an entry (listed, scored, moved away, override changed) gives it the next sequence number, so the
page asks for ``changes(since=N)`` and gets only what is new: polling stays cheap with 5,000 photos.

Scores are also appended to ``ROOT/.blur-review/results.jsonl``, keyed by path, size, modification time and the
model's fingerprint. After a restart (or an undo that brings files back) an unchanged photo gets its score from
there instead of being decoded again; an edited photo, or a different model, is scored afresh. The file is our own
JSON, read back with type checks; a torn last line (a crash mid-write) is skipped.
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ..fsutil import atomic_write
from .paths import Listed, ensure_cache_dir

log = logging.getLogger("ensemble.review")

CACHE_NAME = "results.jsonl"
_MAX_LINE = 1 << 20  # a cache line longer than this is not ours


@dataclass
class Entry:
    """One photo of the review.

    ``key`` is the path below the root (``/``-separated), ``path`` the absolute path listed. ``size`` (bytes) and
    ``mtime_ns`` identify the file's version. A scored entry has ``p`` (calibrated P(blurry), 0-1), ``lap`` (variance
    of the Laplacian, grey levels²), ``width``/``height`` (pixels), ``blur_map`` (rows, cols) per-patch
    probabilities at the analysis scale ``side`` with ``origin`` (y, x) and ``patch`` size in pixels, and ``model``
    (fingerprint of the model that scored it). ``flat`` is set instead of ``p`` (the reason) when the photo has
    nothing to judge (label ``flat``): it is never moved unless rejected. ``error`` is a one-line reason when it
    could not be scored;
    ``final`` marks listing errors, never sent to the model. ``gone`` entries were moved away or deleted.
    ``kind`` ('defocus' or 'motion', with ``kind_p`` its probability), ``angle`` (screen degrees, motion only) and
    ``extent`` (original pixels) are the kind head's estimate whatever the verdict (the page shows it for photos
    that look blurry at its own threshold); ``noise`` is the noise σ in grey levels at the original resolution.
    ``scale`` is the scale it was judged at ('screen' or 'native') and ``content`` what it shows ('photo',
    'document', or None: flat, or a model without a content classifier).
    """

    key: str
    path: str
    size: Optional[int] = None
    mtime_ns: Optional[int] = None
    error: Optional[str] = None
    final: bool = False
    p: Optional[float] = None
    flat: Optional[str] = None
    lap: Optional[float] = None
    width: Optional[int] = None
    height: Optional[int] = None
    blur_map: Optional[np.ndarray] = field(default=None, repr=False)
    origin: tuple[int, int] = (0, 0)
    patch: int = 0
    side: int = 0
    model: Optional[str] = None
    seq: int = 0
    gone: bool = False
    kind: Optional[str] = None
    kind_p: Optional[float] = None
    angle: Optional[float] = None
    extent: Optional[float] = None
    noise: Optional[float] = None
    scale: Optional[str] = None
    content: Optional[str] = None

    @property
    def scored(self) -> bool:
        return self.p is not None or self.flat is not None

    @property
    def version(self) -> str:
        """Short token naming this version of the file, for cache-busting URLs."""
        return f"{self.mtime_ns or 0:x}-{self.size or 0:x}"

    def public(self) -> dict:
        """The fields the page needs (no blur map: the overlay route draws it)."""
        return {
            "path": self.key,
            "p": None if self.p is None else round(self.p, 4),
            "flat": self.flat,
            "lap": None if self.lap is None else round(self.lap, 1),
            "w": self.width,
            "h": self.height,
            "error": self.error,
            "kind": self.kind,
            "kp": _round(self.kind_p, 3),
            "ang": _round(self.angle, 0),
            "ext": _round(self.extent, 1),
            "noise": _round(self.noise, 2),
            "scale": self.scale,
            "content": self.content,
            "v": self.version,
            "seq": self.seq,
            "gone": self.gone,
        }


def _round(value: Optional[float], digits: int) -> Optional[float]:
    return None if value is None else round(float(value), digits)


def order_key(entry: Entry) -> tuple:
    """Blurriest first; then flat photos; then those that could not be read; then those not scored yet (by path)."""
    if entry.p is not None:
        return (0, -entry.p, entry.key)
    return (1 if entry.flat else 2 if entry.error else 3, 0.0, entry.key)


class Results:
    """Thread-safe catalogue of :class:`Entry` objects for one root, with the on-disk score cache in ``cache_dir``."""

    def __init__(self, cache_dir: Path):
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._seq = 0
        self._cache = _ScoreCache(Path(cache_dir) / CACHE_NAME)

    # -- reading -----------------------------------------------------------------------------------------------
    @property
    def seq(self) -> int:
        with self._lock:
            return self._seq

    def get(self, key: str) -> Optional[Entry]:
        """The live entry for ``key`` (None when unknown or gone)."""
        with self._lock:
            entry = self._entries.get(key)
            return entry if entry is not None and not entry.gone else None

    def live(self) -> list[Entry]:
        with self._lock:
            return [e for e in self._entries.values() if not e.gone]

    def changes(self, since: int) -> tuple[int, list[Entry]]:
        """(current sequence number, entries changed after ``since``, gone ones included), blurriest first."""
        with self._lock:
            changed = [e for e in self._entries.values() if e.seq > since]
            seq = self._seq
        changed.sort(key=order_key)
        return seq, changed

    def counts(self, model: Optional[str]) -> dict:
        """Progress: ``total`` live photos, ``done`` (scored by ``model`` or failed), ``errors``, ``pending``."""
        total = done = errors = 0
        with self._lock:
            for e in self._entries.values():
                if e.gone:
                    continue
                total += 1
                if e.final or (e.model is not None and e.model == model):
                    done += 1
                    errors += e.error is not None
        return {"total": total, "done": done, "errors": errors, "pending": total - done}

    def pending(self, model: str, limit: int) -> list[Entry]:
        """Up to ``limit`` live entries not yet scored by ``model``, in listing order."""
        with self._lock:
            out = []
            for e in self._entries.values():
                if not e.gone and not e.final and e.model != model:
                    out.append(e)
                    if len(out) >= limit:
                        break
            return out

    # -- changing ----------------------------------------------------------------------------------------------
    def reconcile(self, listed: Iterable[Listed]) -> None:
        """Make the catalogue match a fresh listing: new or edited files become pending (or take a cached score),
        files no longer there are marked gone, unchanged ones keep their score."""
        stats = [(item, _stat(item.path)) for item in listed]
        cached = self._cache.load()
        with self._lock:
            seen = set()
            for item, (size, mtime_ns) in stats:
                seen.add(item.key)
                old = self._entries.get(item.key)
                if (old is not None and not old.gone and old.size == size and old.mtime_ns == mtime_ns
                        and old.final == (item.error is not None)):
                    continue
                entry = Entry(item.key, item.path, size, mtime_ns)
                if item.error is not None:
                    entry.error, entry.final = item.error, True
                else:
                    line = cached.get(item.key)
                    if line is not None and line["size"] == size and line["mtime_ns"] == mtime_ns:
                        _fill(entry, line)
                self._bump(entry)
            for key, entry in self._entries.items():
                if key not in seen and not entry.gone:
                    entry.gone = True
                    self._bump(entry)

    def record(self, entry: Entry, result, error: Optional[str], model: str, side: int) -> None:
        """Store the outcome of scoring ``entry`` (a :class:`~ensemble.detector.BlurResult`, or a one-line error)."""
        line = None
        with self._lock:
            current = self._entries.get(entry.key)
            if current is not entry or entry.gone:
                return  # moved away or re-listed while it was being scored
            entry.model, entry.side = model, side
            if result is None:
                entry.error, entry.p, entry.flat = error, None, None
                entry.kind = entry.kind_p = entry.angle = entry.extent = entry.noise = None
                entry.scale = entry.content = None
            else:
                entry.error, entry.flat = None, result.flat
                entry.p = None if result.blur_probability is None else float(result.blur_probability)
                entry.lap = float(result.laplacian_var)
                entry.width, entry.height = int(result.width), int(result.height)
                entry.blur_map = result.blur_map
                entry.origin, entry.patch = tuple(int(v) for v in result.grid_origin), int(result.patch_size)
                est = getattr(result, "kind_estimate", None) or {}
                entry.kind, entry.kind_p = est.get("blur_kind"), est.get("blur_kind_probability")
                entry.angle, entry.extent = est.get("motion_angle"), est.get("blur_extent_px")
                entry.noise = getattr(result, "noise_sigma", None)
                entry.scale, entry.content = getattr(result, "scale", None), getattr(result, "content", None)
                line = _line(entry)
            self._bump(entry)
        if line is not None:
            self._cache.append(line)

    def remove(self, keys: Iterable[str]) -> None:
        """Mark entries gone (their files were moved away)."""
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is not None and not entry.gone:
                    entry.gone = True
                    self._bump(entry)

    def touch(self, keys: Iterable[str]) -> None:
        """Renumber entries so the next poll sends them again (their override changed)."""
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is not None:
                    self._bump(entry)

    def flush(self) -> None:
        self._cache.close()

    def _bump(self, entry: Entry) -> None:
        self._seq += 1
        entry.seq = self._seq
        self._entries[entry.key] = entry


def _stat(path: str) -> tuple[Optional[int], Optional[int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None, None
    return st.st_size, st.st_mtime_ns


# ----------------------------------------------------------------------------------------------------------------
# The score cache file


def _line(entry: Entry) -> dict:
    bmap = None
    if entry.blur_map is not None:
        bmap = [[None if math.isnan(v) else round(float(v), 4) for v in row] for row in np.asarray(entry.blur_map)]
    return {"path": entry.key, "size": entry.size, "mtime_ns": entry.mtime_ns, "model": entry.model,
            "p": entry.p, "flat": entry.flat, "lap": entry.lap, "w": entry.width, "h": entry.height, "map": bmap,
            "origin": list(entry.origin), "patch": entry.patch, "side": entry.side, "kind": entry.kind,
            "kp": entry.kind_p, "ang": entry.angle, "ext": entry.extent, "noise": entry.noise,
            "scale": entry.scale, "content": entry.content}


def _fill(entry: Entry, line: dict) -> None:
    entry.model, entry.p, entry.lap = line["model"], line["p"], line["lap"]
    entry.flat = line.get("flat")
    entry.width, entry.height = line["w"], line["h"]
    bmap = line["map"]
    if bmap is not None:
        bmap = np.array([[np.nan if v is None else v for v in row] for row in bmap], dtype=np.float32)
        if bmap.ndim != 2:  # an empty map: no patch was scored
            bmap = np.zeros((0, 0), np.float32)
    entry.blur_map = bmap
    entry.origin, entry.patch, entry.side = (line["origin"][0], line["origin"][1]), line["patch"], line["side"]
    # Lines from before the kind head have none of these: they read as unknown.
    entry.kind, entry.kind_p, entry.angle = line.get("kind"), line.get("kp"), line.get("ang")
    entry.extent, entry.noise = line.get("ext"), line.get("noise")
    entry.scale, entry.content = line.get("scale"), line.get("content")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _valid(line: object) -> bool:
    """True when a parsed cache line has every field with the right type (anything else is skipped)."""
    if not isinstance(line, dict):
        return False
    try:
        ok = (isinstance(line["path"], str) and _is_int(line["size"]) and _is_int(line["mtime_ns"])
              and isinstance(line["model"], str)
              and ((_is_num(line["p"]) and 0 <= line["p"] <= 1 and line.get("flat") is None)
                   or (line["p"] is None and isinstance(line.get("flat"), str)))
              and _is_num(line["lap"]) and _is_int(line["w"]) and _is_int(line["h"])
              and isinstance(line["origin"], list) and len(line["origin"]) == 2
              and all(_is_int(v) for v in line["origin"]) and _is_int(line["patch"]) and _is_int(line["side"]))
        ok = (ok and line.get("kind") in (None, "defocus", "motion")
              and line.get("scale") in (None, "screen", "native")
              and line.get("content") in (None, "photo", "document")
              and all(line.get(k) is None or _is_num(line[k]) for k in ("kp", "ang", "ext", "noise")))
        bmap = line["map"]
        if ok and bmap is not None:
            ok = (isinstance(bmap, list) and all(isinstance(row, list) for row in bmap)
                  and len({len(row) for row in bmap}) <= 1
                  and all(v is None or _is_num(v) for row in bmap for v in row))
        return ok
    except (KeyError, TypeError):
        return False


class _ScoreCache:
    """Append-only JSON lines; the last line for a path wins. Compacted when it holds mostly stale lines."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._fh = None
        self._broken = False  # a read-only root: scores just are not cached

    def load(self) -> dict[str, dict]:
        with self._lock:
            self._close()
            lines: dict[str, dict] = {}
            total = 0
            try:
                with open(self.path, "rb") as f:
                    for raw in f:
                        total += 1
                        if len(raw) > _MAX_LINE:
                            continue
                        try:
                            line = json.loads(raw)
                        except ValueError:
                            continue
                        if _valid(line):
                            lines[line["path"]] = line
            except FileNotFoundError:
                return {}
            except OSError as err:
                log.warning("review: cannot read the score cache %s: %s", self.path, err)
                return {}
            if total > 2 * len(lines) + 100:
                self._rewrite(lines.values())
            return lines

    def append(self, line: dict) -> None:
        with self._lock:
            if self._broken:
                return
            try:
                if self._fh is None:
                    ensure_cache_dir(self.path.parent)
                    self._fh = open(self.path, "a", encoding="utf-8")
                self._fh.write(json.dumps(line, ensure_ascii=True, separators=(",", ":")) + "\n")
                self._fh.flush()  # no fsync: a lost line only costs a rescore
            except OSError as err:
                self._broken = True
                log.warning("review: scores will not be cached (%s: %s)", self.path, err)

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None

    def _rewrite(self, lines: Iterable[dict]) -> None:
        text = "".join(json.dumps(line, ensure_ascii=True, separators=(",", ":")) + "\n" for line in lines)
        try:
            atomic_write(self.path, text)
        except OSError as err:
            log.warning("review: cannot compact the score cache %s: %s", self.path, err)


__all__ = ["CACHE_NAME", "Entry", "Results", "order_key"]
