"""The review's background scan: list the root, take cached scores, score the rest in batches; again on request.

One thread (:class:`Scanner`) owns the loop. Scoring reuses :func:`ensemble.scan.scan_paths`, so it runs on
``workers`` threads exactly as ``blur-detect scan`` does, and a corrupt file becomes an error entry instead of an
exception. The detector is fetched with ``get_detector()`` for every batch of :data:`BATCH` photos: when the server
switches models, the next batch uses the new one, and photos scored by the old one are scored again (each score
records the fingerprint of the model that made it, and of the scale it was asked to judge at).

The scan thread lowers its own scheduling priority (nice +10, Linux only) before starting its workers, which
inherit it: on a busy 2-core machine the page's requests (thumbnails, polls) are served first and the scan takes
what CPU is left, so the first screen appears quickly while thousands of photos are still being scored.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Callable, Optional

from ..cli_common import DEFAULT_SCALE
from ..scan import default_workers, one_line, scan_paths
from .paths import list_images
from .results import Results

BATCH = 16
"""Photos scored per ``get_detector()`` call: small enough that a model switch or a stop takes effect quickly."""

RETRY_S = 5.0
"""Seconds between attempts when the detector cannot be had."""

NICE = 10
"""How much lower than the server's the scan thread's priority is."""


def fingerprint(detector) -> str:
    """Short stable id of a detector's model (its metadata, which names the training run, and its kind head's)."""
    meta = getattr(detector, "metadata", None) or {}
    kind = getattr(getattr(detector, "kind", None), "info", None)
    text = json.dumps(meta, sort_keys=True, default=str) + f"|{getattr(detector, 'analysis_side', '')}"
    if kind is not None:  # a model without a head keeps the fingerprint it always had
        text += "|" + json.dumps(kind, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Scanner:
    """Scans ``root`` in a background thread, storing each outcome in ``results``; photos are judged at ``scale``
    (ensemble.detector.SCALES)."""

    def __init__(self, root: Path, results: Results, get_detector: Callable[[], object], workers: int = 0,
                 batch: int = BATCH, scale: str = DEFAULT_SCALE):
        self.root = Path(root)
        self.scale = scale
        self.results = results
        self.get_detector = get_detector
        self.workers = workers or default_workers()
        self.batch = max(1, batch)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._status = {"phase": "starting", "error": None, "model": None, "threshold": None, "rate": None}
        self._fingerprints: dict[int, tuple[object, str]] = {}

    # -- control -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the scan thread (no-op when it runs); returns at once."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._wake.clear()
        self._idle.clear()
        self._thread = threading.Thread(target=self._run, name="blur-review-scan", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Ask the scan to stop and wait up to ``timeout`` s; True when the thread has ended.

        The images being read at that moment finish in the background within a fraction of a second.
        """
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return False
        self._thread = None
        self.results.flush()
        return True

    def rescan(self) -> None:
        """List the folder again (after an undo, or when files changed) and score what is new or edited."""
        self._idle.clear()
        self._wake.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every listed photo is scored and no rescan is pending; True if that happened in time."""
        return self._idle.wait(timeout)

    def status(self) -> dict:
        """``phase`` ('starting', 'listing', 'scoring', 'waiting' for a model, 'idle'), ``error`` (one line or None),
        ``model`` fingerprint, the model's ``threshold`` and the scoring ``rate`` (photos/s) of this pass."""
        with self._lock:
            return dict(self._status)

    # -- the thread --------------------------------------------------------------------------------------------
    def _set(self, **changes) -> None:
        with self._lock:
            self._status.update(changes)

    def _run(self) -> None:
        _lower_priority(NICE)
        while not self._stop.is_set():
            self._wake.clear()
            self._set(phase="listing")
            try:
                listed = list_images(self.root)
            except OSError as err:  # the root itself vanished or became unreadable
                self._set(phase="waiting", error=f"cannot list {self.root}: {err.strerror or err}")
                self._stop.wait(RETRY_S)
                continue
            self.results.reconcile(listed)
            self._score_pending()
            if self._stop.is_set() or self._wake.is_set():
                continue
            self._set(phase="idle", rate=None)
            self._idle.set()
            self._wake.wait()
            self._idle.clear()

    def _score_pending(self) -> None:
        started, scored = time.monotonic(), 0
        while not (self._stop.is_set() or self._wake.is_set()):
            try:
                detector = self.get_detector()
                model = self._fingerprint(detector)
            except Exception as err:  # noqa: BLE001 - no model yet, or a broken one: say so and try again
                self._set(phase="waiting", error=f"cannot load the model: {one_line(err)}")
                self._stop.wait(RETRY_S)
                continue
            batch = self.results.pending(model, self.batch)
            self._set(model=model, threshold=float(detector.threshold), error=None)
            if not batch:
                return
            self._set(phase="scoring")
            by_path = {entry.path: entry for entry in batch}
            side = int(getattr(detector, "analysis_side", 0) or 0)
            scans = scan_paths(list(by_path), detector, self.workers, with_map=True, scale=self.scale)
            with closing(scans):
                for scanned in scans:
                    self.results.record(by_path[scanned.path], scanned.result, scanned.error, model, side)
                    scored += 1
                    if self._stop.is_set():
                        return
            self._set(rate=round(scored / max(time.monotonic() - started, 1e-3), 2))

    def _fingerprint(self, detector) -> str:
        known = self._fingerprints.get(id(detector))
        if known is None or known[0] is not detector:
            # The scale asked is part of what made a score: one cached at another scale is scored again.
            known = (detector, f"{fingerprint(detector)}@{self.scale}")
            self._fingerprints = {id(detector): known}  # only the current one: an old model can be freed
        return known[1]


def _lower_priority(step: int) -> None:
    """Lower this thread's priority by ``step`` (Linux threads have their own nice value; new threads inherit it)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + step))
    except (AttributeError, OSError):  # not Linux, or not allowed: the scan just competes on equal terms
        pass


__all__ = ["BATCH", "Scanner", "fingerprint"]
