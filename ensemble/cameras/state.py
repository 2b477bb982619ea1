"""The monitor's memory between checks: one small JSON file, written atomically.

Per camera it keeps the focus scores of the last healthy (CLEAR) checks, whose median is the camera's baseline;
a hash of the last frame, for the frozen-picture check; the last state and since when, so that an event is raised
only on a change, across runs too; and, for a video file, the frame to resume from. ``url`` is the redacted URL the
history belongs to: when a camera is pointed somewhere else, its baseline starts again.

The file is replaced whole with :func:`ensemble.fsutil.atomic_write`, so a crash leaves the old file or the new one.
A file that cannot be read as a state file is moved aside (``<name>.corrupt-<time>``), reported, and replaced: a
bad state file never stops the monitor. A lock (``<name>.lock``, ``flock``) keeps two monitors off the same file.
"""
from __future__ import annotations

import json
import math
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..fsutil import atomic_write

STATE_VERSION = 1
STATES = ("CLEAR", "DEGRADED", "BLURRY", "INVALID", "UNREACHABLE")


class StateLocked(Exception):
    """Another monitor holds the state file's lock."""


@dataclass
class CameraState:
    """What the monitor remembers of one camera (all times ISO 8601 UTC).

    ``history``: focus scores of the latest CLEAR checks, oldest first (at most the baseline size is kept).
    ``frame_hash``: SHA-256 of the last grabbed frame (grey, analysis scale). ``position``: a video file's next frame.
    ``pending``/``pending_count``: a state the latest checks found but not yet often enough in a row to report.
    """

    state: Optional[str] = None
    since: Optional[str] = None
    reason: str = ""
    checked: Optional[str] = None
    url: Optional[str] = None
    history: list[float] = field(default_factory=list)
    frame_hash: Optional[str] = None
    position: Optional[int] = None
    pending: Optional[str] = None
    pending_count: int = 0

    def baseline(self, size: int, minimum: int) -> Optional[float]:
        """Median of the last ``size`` healthy scores, or None while fewer than ``minimum`` are known."""
        recent = self.history[-size:]
        return float(statistics.median(recent)) if recent and len(recent) >= minimum else None

    def to_dict(self) -> dict:
        return {"state": self.state, "since": self.since, "reason": self.reason, "checked": self.checked,
                "url": self.url, "history": [float(f"{v:.6g}") for v in self.history],
                "frame_hash": self.frame_hash, "position": self.position, "pending": self.pending,
                "pending_count": self.pending_count}

    @classmethod
    def from_dict(cls, name: str, data: object) -> "CameraState":
        """Raises ValueError naming the camera and field when ``data`` is not a state entry."""
        if not isinstance(data, dict):
            raise ValueError(f"camera {name!r}: not an object")
        out = cls()
        for key in ("since", "checked", "url", "frame_hash"):
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"camera {name!r}: {key} is not text")
            setattr(out, key, value)
        state = data.get("state")
        if state is not None and state not in STATES:
            raise ValueError(f"camera {name!r}: unknown state {state!r}")
        out.state = state
        reason = data.get("reason") or ""
        if not isinstance(reason, str):
            raise ValueError(f"camera {name!r}: reason is not text")
        out.reason = reason
        history = data.get("history") or []
        if not isinstance(history, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                for v in history):
            raise ValueError(f"camera {name!r}: history is not a list of scores")
        out.history = [float(v) for v in history]
        position = data.get("position")
        if position is not None and (not isinstance(position, int) or isinstance(position, bool) or position < 0):
            raise ValueError(f"camera {name!r}: position is not a frame number")
        out.position = position
        pending, count = data.get("pending"), data.get("pending_count") or 0
        if pending is not None and pending not in STATES:
            raise ValueError(f"camera {name!r}: unknown pending state {pending!r}")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"camera {name!r}: pending_count is not a count")
        out.pending, out.pending_count = pending, count if pending else 0
        return out


class StateFile:
    """The state file at ``path``: :meth:`lock`, :meth:`load`, :meth:`save`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock_fd: Optional[int] = None

    # -- locking ------------------------------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the lock for this process's lifetime (released by :meth:`unlock` or at exit).

        Raises StateLocked if another monitor holds it, OSError if the folder is not writable.
        """
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on POSIX: no locking
            self._lock_fd = fd
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateLocked(f"another 'blur-detect cameras' is using {self.path}") from None
        self._lock_fd = fd
        self._remove_stale_temporaries()

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def _remove_stale_temporaries(self) -> None:
        # atomic_write's temporary files (".<name>.<pid>.tmp") from a monitor that was killed mid-write. They are
        # ours, never the user's; with the lock held, no live monitor is writing one.
        pattern = re.compile(rf"\.{re.escape(self.path.name)}\.(\d+)\.tmp\Z")
        try:
            entries = list(os.scandir(self.path.parent))
        except OSError:
            return
        for entry in entries:
            match = pattern.match(entry.name)
            if match and int(match.group(1)) != os.getpid():
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass

    # -- reading and writing ------------------------------------------------------------------------------------
    def load(self) -> tuple[dict[str, CameraState], Optional[str]]:
        """(states by camera name, warning). A missing file is an empty state; a corrupt one gives a warning, is
        moved aside and is treated as empty."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}, None
        except OSError as err:
            return {}, f"cannot read the state file {self.path}: {err.strerror or err}; starting afresh"
        try:
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("cameras"), dict):
                raise ValueError("not a camera state file")
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"unknown version {data.get('version')!r}")
            states = {str(name): CameraState.from_dict(str(name), entry) for name, entry in data["cameras"].items()}
        except (UnicodeDecodeError, ValueError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
            try:
                os.replace(self.path, aside)
                kept = f"kept as {aside.name}"
            except OSError:
                kept = "left in place"
            return {}, f"the state file {self.path} is corrupt ({reason}); {kept}; starting afresh"
        return states, None

    def save(self, states: dict[str, CameraState]) -> None:
        """Replace the file with ``states`` (atomically; raises OSError)."""
        payload = {"version": STATE_VERSION,
                   "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "cameras": {name: s.to_dict() for name, s in states.items()}}
        atomic_write(self.path, json.dumps(payload, indent=1) + "\n", mode=0o600)


def default_state_path(config: str | os.PathLike) -> Path:
    """``cameras.yaml`` → ``cameras.state.json`` in the same folder."""
    config = Path(config)
    return config.with_name(f"{config.stem}.state.json")


__all__ = ["CameraState", "STATES", "StateFile", "StateLocked", "default_state_path"]
