"""The user's decisions for one folder, kept in ``ROOT/.blur-review-state.json`` so a reload or a restart keeps them.

The file is small JSON, rewritten whole with :func:`ensemble.fsutil.atomic_write` on every change, so a crash
leaves the old version or the new one::

    {"version": 1,
     "threshold": 0.5,                                   # the slider, or null for the model's own
     "overrides": {"sub/IMG_1.jpg": "keep", "b.jpg": "reject"},
     "journals": ["_blurry/.blur-detect-journal-....jsonl"]}   # applies not undone yet, oldest first

A file that cannot be parsed is renamed to ``<name>.unreadable`` (never deleted) and the review starts afresh.
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
from pathlib import Path
from typing import Optional

from ..fsutil import atomic_write
from .decisions import OVERRIDES
from .paths import STATE_FILE

log = logging.getLogger("ensemble.review")

VERSION = 1


class StateError(Exception):
    """The state file could not be written; ``str(err)`` is a one-line reason."""


class ReviewState:
    """Overrides (key → 'keep' | 'reject'), the saved threshold and the stack of apply journals; thread-safe."""

    def __init__(self, root: Path):
        self.path = Path(root) / STATE_FILE
        self._lock = threading.Lock()
        self.threshold: Optional[float] = None
        self.overrides: dict[str, str] = {}
        self.journals: list[str] = []
        self._load()

    # -- reading -----------------------------------------------------------------------------------------------
    def snapshot(self) -> tuple[dict[str, str], Optional[float], list[str]]:
        with self._lock:
            return dict(self.overrides), self.threshold, list(self.journals)

    def override(self, key: str) -> Optional[str]:
        with self._lock:
            return self.overrides.get(key)

    # -- changing (each call saves the file) -------------------------------------------------------------------
    def set_override(self, key: str, choice: Optional[str]) -> None:
        """Keep, reject, or (``None``) clear the override of ``key``."""
        if choice is not None and choice not in OVERRIDES:
            raise ValueError(f"override must be one of {OVERRIDES} or null, not {choice!r}")
        with self._lock:
            before = dict(self.overrides)
            if choice is None:
                self.overrides.pop(key, None)
            else:
                self.overrides[key] = choice
            self._save_or(lambda: setattr(self, "overrides", before))

    def set_threshold(self, threshold: Optional[float]) -> None:
        if threshold is not None and not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
            raise ValueError("threshold must be between 0 and 1")
        with self._lock:
            before = self.threshold
            self.threshold = threshold
            self._save_or(lambda: setattr(self, "threshold", before))

    def push_journal(self, journal: str) -> None:
        with self._lock:
            self.journals.append(journal)
            self._save_or(self.journals.pop)

    def drop_journal(self, journal: str) -> None:
        with self._lock:
            before = list(self.journals)
            self.journals = [j for j in self.journals if j != journal]
            self._save_or(lambda: setattr(self, "journals", before))

    # -- file --------------------------------------------------------------------------------------------------
    def _save_or(self, roll_back) -> None:
        """Write the file; on failure undo the change in memory too (so memory never claims what disk lost)."""
        data = {"version": VERSION, "threshold": self.threshold, "overrides": dict(sorted(self.overrides.items())),
                "journals": self.journals}
        try:
            atomic_write(self.path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        except OSError as err:
            roll_back()
            raise StateError(f"cannot save {self.path.name}: {err.strerror or err}") from None

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            self._set_aside(err)
            return
        threshold = data.get("threshold")
        if isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and math.isfinite(threshold) \
                and 0.0 <= threshold <= 1.0:
            self.threshold = float(threshold)
        overrides = data.get("overrides")
        if isinstance(overrides, dict):
            # Entries of the wrong shape are dropped one by one: a hand edit loses only itself.
            self.overrides = {k: v for k, v in overrides.items() if isinstance(k, str) and v in OVERRIDES}
        journals = data.get("journals")
        if isinstance(journals, list):
            self.journals = [j for j in journals if isinstance(j, str)]

    def _set_aside(self, err: Exception) -> None:
        aside, n = self.path.with_name(self.path.name + ".unreadable"), 0
        while aside.exists():  # never replace an earlier one
            n += 1
            aside = self.path.with_name(f"{self.path.name}.unreadable.{n}")
        try:
            os.rename(self.path, aside)
            log.warning("review: %s was unreadable (%s); kept as %s, starting afresh", self.path, err, aside.name)
        except OSError as move_err:
            log.warning("review: %s is unreadable (%s) and could not be set aside: %s", self.path, err, move_err)


__all__ = ["ReviewState", "StateError", "VERSION"]
