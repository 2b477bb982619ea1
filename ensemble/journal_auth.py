"""Sign sorting journals, and check that a journal stays inside the folders it was written for.

A journal is a list of moves that :func:`ensemble.sorting.undo` will carry out, so a journal somebody else wrote
(dropped into a shared folder, unpacked from an archive) must not be able to move a file anywhere. Two rules:

* **Signed.** Every line carries ``mac``, an HMAC-SHA256 under a per-user secret key, chained to the line before it
  (``mac_i = HMAC(key, mac_{i-1} || line_i)``), so lines can be neither forged, edited, reordered nor inserted. The
  key is 32 random bytes in :func:`key_path` (``$XDG_DATA_HOME/blur-ensemble/journal.key``, mode 0600), made on the
  first sort. A torn last line (a write cut short) is dropped before the check, so the lines before it stay undoable.
* **Confined.** The first line (``op: "begin"``) records the journal's *roots*: the folders the sort read from and
  the folder it moved into, resolved. Every ``src``, ``dst`` and ``mkdir`` path must lie inside one of them after
  resolving symbolic links *at undo time*, and each root must still resolve to itself, so a folder swapped for a
  link to ``/etc`` since the sort is caught too.

A journal that breaks either rule is refused whole, before anything moves.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Iterable, Optional, Sequence

FORMAT = 2
"""Journal format written by this version: a signed ``begin`` header, then signed entries."""

KEY_BYTES = 32
MAX_ROOTS = 256
"""More roots than this (a scan of thousands of single files) are folded into their common folder."""


class JournalAuthError(Exception):
    """A journal is unsigned, signed with another key, or leaves its roots; ``str(err)`` is one line."""


def key_path() -> Path:
    """Where this user's journal key lives: ``$XDG_DATA_HOME/blur-ensemble/journal.key`` (default
    ``~/.local/share/blur-ensemble/journal.key``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "blur-ensemble" / "journal.key"


def load_key(create: bool = False) -> Optional[bytes]:
    """This user's key (32 bytes). ``create``: make it when missing; otherwise a missing key gives None.

    Raises :class:`JournalAuthError` for a key that others could read or replace (not a regular file of this
    user's, or group/other permission bits set), and OSError when it cannot be made.
    """
    path = key_path()
    try:
        return _read_key(path)
    except FileNotFoundError:
        if not create:
            return None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(KEY_BYTES) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # never replaces: a second sort started at the same moment keeps the first key
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise JournalAuthError(f"journal key {path} is not a regular file: refused")
        if hasattr(os, "geteuid") and (st.st_uid != os.geteuid() or st.st_mode & 0o077):
            raise JournalAuthError(f"journal key {path} is not private to this user (chmod 600 it, or delete it "
                                   "and sort again): refused")
        text = f.read(4 * KEY_BYTES).decode("ascii", "replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise JournalAuthError(f"journal key {path} is damaged: delete it (older journals then need --foreign)")
    return key


def _canonical(entry: dict) -> bytes:
    body = {k: v for k, v in entry.items() if k != "mac"}
    return json.dumps(body, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class Signer:
    """Adds the chained ``mac`` to each line of one journal, in the order they are written."""

    def __init__(self, key: bytes) -> None:
        self._key, self._prev = key, b""

    def sign(self, entry: dict) -> dict:
        mac = hmac.new(self._key, self._prev + _canonical(entry), hashlib.sha256).digest()
        self._prev = mac
        return {**entry, "mac": mac.hex()}


def signature_problem(lines: Sequence[dict], key: Optional[bytes]) -> Optional[str]:
    """Why ``lines`` (the parsed journal, header first) are not this user's signed journal, or None if they are."""
    if not lines or lines[0].get("op") != "begin":
        return "it has no signed header (written by an older blur-detect, before journals were signed, or by hand)"
    if key is None:
        return f"this user has no journal key ({key_path()} is missing)"
    signer = Signer(key)
    for number, line in enumerate(lines, 1):
        expected = signer.sign(line)["mac"]
        if not isinstance(line.get("mac"), str) or not hmac.compare_digest(expected, line["mac"]):
            return (f"line {number} does not carry this user's signature (written by another user or machine, "
                    "or edited)")
    return None


def header(roots: Iterable[str], journal_id: str, time: str) -> dict:
    """The unsigned ``begin`` line for a journal that may touch only ``roots`` (absolute folders)."""
    return {"op": "begin", "format": FORMAT, "id": journal_id, "roots": fold_roots(roots), "time": time}


def fold_roots(roots: Iterable[str]) -> list[str]:
    """Resolved, sorted roots with every root that lies inside another dropped."""
    resolved = sorted({os.path.realpath(r) for r in roots})
    if len(resolved) > MAX_ROOTS:
        resolved = [os.path.commonpath(resolved)]
    kept: list[str] = []
    for root in resolved:  # sorted, so a parent comes before its children
        if not any(is_within(root, k) for k in kept):
            kept.append(root)
    return kept


def anchor(folder: str) -> str:
    """The folder a sort into ``folder`` may create things in: its highest ancestor that does not exist yet (it
    and everything below are the sort's own), or ``folder`` itself when it exists."""
    head = os.path.abspath(folder)
    top = head
    while not os.path.isdir(head):
        top = head
        parent = os.path.dirname(head)
        if parent == head:
            break
        head = parent
    return top


def located(path: str) -> str:
    """``path`` with its folder's symbolic links resolved, but not the last part: a link itself is the file."""
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def confinement_problem(entries: Iterable[dict], roots: Sequence[str],
                        within: Optional[str | os.PathLike] = None) -> Optional[str]:
    """Why some path of ``entries`` lies outside ``roots`` (as the disk resolves it now), or None.

    ``within``: a folder every root must also lie inside (the review page's root).
    """
    if not roots:
        return "it records no roots"
    for root in roots:
        if not os.path.isabs(root) or os.path.realpath(root) != root:
            return f"its root {root} now resolves to {os.path.realpath(root)} (a symbolic link was put in its way)"
        if within is not None and not is_within(root, os.path.realpath(within)):
            return f"its root {root} is outside {within}"
    for entry in entries:
        for key in ("path", "src", "dst"):
            if key in entry:
                where = os.path.realpath(entry[key]) if key == "path" else located(entry[key])
                if not any(is_within(where, root) for root in roots):
                    return f"it names {entry[key]}, outside its folders ({', '.join(roots)})"
    return None


def is_within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (both absolute and already resolved as wanted)."""
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:
        return False


__all__ = ["FORMAT", "JournalAuthError", "Signer", "anchor", "confinement_problem", "fold_roots", "header",
           "is_within", "key_path", "load_key", "located", "signature_problem"]
