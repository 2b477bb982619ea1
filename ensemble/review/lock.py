"""One review per folder: an exclusive lock on the review's root, held while a :class:`ReviewService` runs.

Two servers on one root would each keep their own copy of ``.blur-review-state.json`` and overwrite the other's
(overrides, the threshold, the record of applies to undo). The lock is ``flock`` on a descriptor of the root
directory itself, not on a lock file: nothing is added to the user's folder, and a read-only folder (or one on a
read-only disk) locks as well as any other, since opening a directory for reading needs no write permission. The
kernel drops the lock when the process ends, however it ends: a crash never leaves a stale lock behind.

Where ``flock`` does not work on a directory (some network file systems), the review runs unlocked after a
warning, as it did before: refusing would stop a folder that worked.
"""
from __future__ import annotations

import errno
import logging
import os
import weakref
from pathlib import Path
from typing import Optional

log = logging.getLogger("ensemble.review")


class RootInUse(Exception):
    """Another review (another ``blur-detect serve --root``, in this process or another) holds the root's lock."""


class RootLock:
    """The lock on ``root``: :meth:`acquire` (non-blocking), :meth:`release`; closed with the object too."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._fd: Optional[int] = None
        self._finalizer: Optional[weakref.finalize] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock; True when held, False when this system cannot lock the folder (warned, left unlocked).

        Raises :class:`RootInUse` when another review holds it (also one in this process: ``flock`` locks belong
        to the open descriptor, not to the process).
        """
        if self._fd is not None:
            return True
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on POSIX
            return False
        try:
            fd = os.open(self.root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError as err:
            log.warning("cannot lock %s (%s): two servers on this folder would not be stopped", self.root,
                        (err.strerror or str(err)).lower())
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RootInUse(f"{self.root} is already being reviewed by another 'blur-detect serve --root' "
                                "(two would overwrite each other's decisions): stop that one first") from None
            log.warning("cannot lock %s (%s): two servers on this folder would not be stopped", self.root,
                        (err.strerror or str(err)).lower())
            return False
        self._fd = fd
        self._finalizer = weakref.finalize(self, os.close, fd)  # a service dropped without stop() lets go too
        return True

    def release(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # closes the descriptor, which releases the flock
        self._fd = self._finalizer = None


__all__ = ["RootInUse", "RootLock"]
