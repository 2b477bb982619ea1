"""Apply and undo: move the rejected photos into ``ROOT/_blurry`` and put them back.

This is the same machinery as ``blur-detect scan --move-blurry`` and ``blur-detect undo``
(:mod:`ensemble.sorting`): every move is journalled in ``ROOT/_blurry/.blur-detect-journal-*.jsonl`` before the
next one starts, nothing is overwritten (a clash becomes ``name (1).jpg``), sub-folders are kept below
``_blurry``, and undo checks each file's SHA-256 before putting it back. Nothing is ever deleted, and
``blur-detect undo JOURNAL`` works on the page's journals too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..fsutil import OutsideRootError, confine
from ..sorting import JOURNAL_PREFIX, SortingError, apply_moves, inspect_journal, new_journal_path, plan_moves, undo
from .paths import DEST_DIR


@dataclass
class Report:
    """What an apply or undo did, with paths relative to the root: ``done`` (from, to) pairs, ``failed``
    (path, one-line error) pairs, the ``journal`` used, and ``error`` when the whole operation stopped early."""

    done: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    journal: Optional[str] = None
    error: Optional[str] = None

    @property
    def count(self) -> int:
        """Files handled so far, whatever their outcome."""
        return len(self.done) + len(self.failed) + len(self.skipped)

    def as_dict(self) -> dict:
        return {
            "done": [{"from": a, "to": b} for a, b in self.done],
            "failed": [{"path": p, "error": e} for p, e in self.failed],
            "skipped": [{"path": p, "note": n} for p, n in self.skipped],
            "journal": self.journal,
            "error": self.error,
        }


Progress = Callable[[int, int], None]
"""Called with (files handled, files in all) before the first file and after each, from the thread doing the work."""


def _quiet(done: int, total: int) -> None:
    pass


def apply(root: Path, files: list[Path], progress: Progress = _quiet) -> Report:
    """Move ``files`` (absolute, inside ``root``) into ``root/_blurry`` with a new journal there."""
    dest = root / DEST_DIR
    plan = plan_moves([str(f) for f in files], dest, base_of=lambda _path: str(root))
    report = Report()
    if not plan:
        return report
    journal = new_journal_path(dest)
    report.journal = _rel(root, journal)
    progress(0, len(plan))
    try:
        for outcome in apply_moves(plan, journal):
            if outcome.ok:
                report.done.append((_rel(root, outcome.src), _rel(root, outcome.dst)))
            else:
                report.failed.append((_rel(root, outcome.src), outcome.error or "failed"))
            progress(report.count, len(plan))
    except SortingError as err:  # the journal could not be written: apply_moves stopped
        report.error = str(err)
    if not os.path.exists(journal):
        report.journal = None  # nothing was recorded, so there is nothing to undo
    return report


def undo_journal(root: Path, journal: str, progress: Progress = _quiet) -> tuple[Report, bool]:
    """Undo the apply recorded in ``journal`` (relative to ``root``).

    Also returns whether the journal is settled: fully undone (sorting renamed it ``.undone``), gone, or refused
    as unsafe, so that it no longer waits for an undo. A failed file is reported, the others are still restored,
    and the journal stays for another try.
    """
    report = Report(journal=journal)
    try:
        path, total = _journal_path(root, journal)
    except SortingError as err:
        report.error = str(err)
        return report, True
    progress(0, total)
    try:
        for outcome in undo(path, within=root):
            if not outcome.ok:
                report.failed.append((_rel(root, outcome.dst), outcome.error or "failed"))
            elif outcome.status == "done":
                report.done.append((_rel(root, outcome.dst), _rel(root, outcome.src)))
            else:
                report.skipped.append((_rel(root, outcome.src), outcome.note or "skipped"))
            progress(report.count, total)
    except SortingError as err:
        report.error = str(err)
    settled = not os.path.exists(path)  # sorting renames a fully undone journal to <name>.undone
    return report, settled


def _journal_path(root: Path, journal: str) -> tuple[Path, int]:
    """The journal file and how many files it moved or copied, refused unless it lies in ``root/_blurry``.

    The state file that names the journal sits in the user's folder: a hand-edited or planted journal must not
    make the page move files anywhere else, so one this user did not sign, or whose paths leave ``root``, is
    refused too (:func:`ensemble.sorting.inspect_journal`); the page has no override for that.
    """
    try:
        path = confine(root / DEST_DIR, journal.removeprefix(DEST_DIR + "/"))
    except OutsideRootError:
        raise SortingError(f"journal {journal} is not inside {DEST_DIR}/: refused") from None
    except OSError as err:  # e.g. a symbolic link loop
        raise SortingError(f"journal {journal} cannot be resolved: {err.strerror or err}") from None
    if not path.name.startswith(JOURNAL_PREFIX):
        raise SortingError(f"{journal} is not a blur-detect journal: refused")
    if not os.path.lexists(path):
        return path, 0  # undo reports it missing, and the page lets it go
    loaded, problem = inspect_journal(path, within=root)
    if problem:
        raise SortingError(f"journal {journal} refused: {problem}")
    return path, sum(entry["op"] != "mkdir" for entry in loaded.entries)


def _rel(root: Path, path: str) -> str:
    rel = os.path.relpath(path, root)
    return path if rel.startswith(os.pardir) else rel.replace(os.sep, "/")


__all__ = ["Report", "apply", "undo_journal"]
