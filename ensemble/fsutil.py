"""File-system helpers shared by every module that writes or serves files: crash-safe writing, distinct file
names, and confinement to a root."""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Iterable


def unique_stems(stems: Iterable[str], max_len: int = 80) -> list[str]:
    """Distinct file-name stems, in the given order (so stable across runs), each at most ``max_len`` characters.

    A stem already taken gets ``-2``, ``-3``...; the comparison ignores case, so the names stay distinct on macOS
    and Windows too.
    """
    taken: set[str] = set()
    out: list[str] = []
    for base in stems:
        stem, n = base[:max_len], 1
        while stem.casefold() in taken:
            n += 1
            suffix = f"-{n}"
            stem = base[: max_len - len(suffix)] + suffix
        taken.add(stem.casefold())
        out.append(stem)
    return out


def atomic_write(path: str | os.PathLike, data: bytes | str, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a torn one.

    The bytes go to a temporary file in the same folder, are fsynced, then renamed over ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


class OutsideRootError(ValueError):
    """A user-supplied path resolves outside the root it must stay in."""


def confine(root: str | os.PathLike, relative: str | os.PathLike) -> Path:
    """Resolve ``relative`` against ``root`` and return it only if it stays inside ``root``.

    Symlinks are followed before the check, so neither ``../`` nor a link that points out of the root escapes.
    Absolute paths are accepted only when they resolve inside the root too. Raises :class:`OutsideRootError`
    (a one-line message) otherwise, and OSError (ELOOP) for a symbolic link loop. The returned path is resolved;
    it need not exist.
    """
    base = Path(root).resolve()
    text = os.fspath(relative)
    if "\x00" in text:
        raise OutsideRootError("path contains a NUL byte")
    try:
        target = (base / text).resolve()
    except RuntimeError:  # Python < 3.13 reports a link loop so; callers handle OSError (errno ELOOP) already
        raise OSError(errno.ELOOP, "symbolic link loop", text) from None
    if target != base and base not in target.parents:
        raise OutsideRootError(f"{text!r} is outside {base}")
    return target
