"""Move or copy files a scan found blurry into a destination folder, undoably.

Safety rules, in the order they matter:

* Nothing is ever overwritten: targets get ``name (1).jpg`` style names at
  plan time, and every rename is guarded again right before it happens.
* A source is only removed after its data exists under the new name, either
  as the same inode (rename / hard link) or as a copy whose sha256 was checked.
* Every completed operation is appended to a JSON-lines journal and fsynced at
  once, so :func:`undo` can put every file back.
* A journal is signed with this user's key and names the folders (roots) it
  may touch (:mod:`ensemble.journal_auth`): :func:`undo` refuses, whole and
  before anything moves, a journal it did not write or one that would leave
  those folders.

The tool never deletes a user's file outright; a copy made in ``"copy"`` mode
is left in place by :func:`undo`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterable, Iterator, Optional, Union

from . import journal_auth
from .journal_auth import JournalAuthError

__all__ = [
    "MODES",
    "UNDONE_SUFFIX",
    "Journal",
    "MoveOutcome",
    "PlannedMove",
    "SortingError",
    "apply_moves",
    "new_journal_path",
    "plan_moves",
    "inspect_journal",
    "load_journal",
    "read_journal",
    "refusal",
    "undo",
]

PathLike = Union[str, "os.PathLike[str]"]

MODES = ("move", "copy")
UNDONE_SUFFIX = ".undone"
JOURNAL_PREFIX = ".blur-detect-journal-"

_CHUNK = 1024 * 1024
_MAX_JOURNAL_LINE = 256 * 1024  # an entry is two paths and a hash: a longer line is not a journal
_HEX = frozenset("0123456789abcdef")


class SortingError(Exception):
    """A sorting operation was refused or its journal is unusable."""

    def __init__(self, message: object) -> None:
        # Messages carry file names, which may contain newlines; callers print
        # these as one line.
        super().__init__(_one_line(message))


@dataclass(frozen=True)
class PlannedMove:
    """One planned operation; ``src`` and ``dst`` are absolute paths; ``root`` the folder the source was found
    in (a scan root), recorded in the journal as a folder its undo may write to (default: the source's folder)."""

    src: str
    dst: str
    mode: str = "move"
    root: Optional[str] = field(default=None, compare=False)


@dataclass(frozen=True)
class MoveOutcome:
    """Result of one apply or undo step.

    ``op`` is ``"move"``/``"copy"`` from :func:`apply_moves`, and
    ``"restore"`` (a move put back) or ``"copy"`` (left in place) from
    :func:`undo`. ``status`` is ``"done"``, ``"skipped"`` or ``"error"``;
    ``error`` is a one-line message when ``status == "error"``.
    """

    src: str
    dst: str
    op: str
    status: str
    error: Optional[str] = None
    note: Optional[str] = None
    sha256: Optional[str] = None
    size: Optional[int] = None

    @property
    def ok(self) -> bool:
        return self.status != "error"


class _SourceNotRemoved(Exception):
    """The data reached ``dst`` but ``src`` could not be removed."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(_one_line(cause))
        self.cause = cause


class _JournalWriteError(Exception):
    pass


# --------------------------------------------------------------------------
# planning


def plan_moves(
    paths: Iterable[PathLike],
    dest: PathLike,
    base_of: Optional[Callable[[PathLike], PathLike]] = None,
    mode: str = "move",
) -> list[PlannedMove]:
    """Plan where each file goes inside ``dest``, without touching the disk.

    ``base_of(path)`` names the scan root a path came from; the sub-path below
    it is kept. Without it every file lands directly in ``dest``. Existing
    targets and collisions within the plan get ``name (N).ext``. Sources that
    already lie inside ``dest`` and repeated sources are skipped.
    """
    _check_mode(mode)
    dest_abs = os.path.abspath(dest)
    dest_real = os.path.realpath(dest_abs)
    taken: set[str] = set()
    seen: set[str] = set()
    plan: list[PlannedMove] = []
    for path in paths:
        src = os.path.abspath(path)
        # Resolve the directory but not the file itself: a symlink that lives
        # outside dest is outside dest, whatever it points at.
        located = journal_auth.located(src)
        if located in seen or journal_auth.is_within(located, dest_real):
            continue
        seen.add(located)
        root = base_of(path) if base_of is not None else os.path.dirname(src)
        rel = _relative_target(src, root)
        dst = _free_name(os.path.join(dest_abs, rel), taken)
        taken.add(_collision_key(dst))
        plan.append(PlannedMove(src=src, dst=dst, mode=mode, root=os.path.abspath(root)))
    return plan


def _relative_target(src: str, root: PathLike) -> str:
    name = os.path.basename(src)
    root_abs = os.path.abspath(root)
    for a, b in ((src, root_abs), (os.path.realpath(src), os.path.realpath(root_abs))):
        try:
            rel = os.path.relpath(a, b)
        except ValueError:  # different drives on Windows
            continue
        if rel != os.curdir and not os.path.isabs(rel) and rel.split(os.sep)[0] != os.pardir:
            return rel
    # A file outside its claimed root must not climb out of dest.
    return name


def _free_name(target: str, taken: set[str]) -> str:
    def free(p: str) -> bool:
        return not os.path.lexists(p) and _collision_key(p) not in taken

    if free(target):
        return target
    head, name = os.path.split(target)
    stem, ext = os.path.splitext(name)
    n = 1
    while True:
        candidate = os.path.join(head, f"{stem} ({n}){ext}")
        if free(candidate):
            return candidate
        n += 1


def _collision_key(path: str) -> str:
    # Case-folded so that two planned names cannot collide on a
    # case-insensitive filesystem (macOS, Windows) either.
    return path.casefold()


# --------------------------------------------------------------------------
# applying


def new_journal_path(dest: PathLike) -> str:
    """Fresh journal path ``dest/.blur-detect-journal-YYYYmmdd-HHMMSS-<id>.jsonl``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{JOURNAL_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}.jsonl"
    return os.path.join(os.path.abspath(dest), name)


def apply_moves(plan: Iterable[PlannedMove], journal_path: PathLike) -> Iterator[MoveOutcome]:
    """Carry out ``plan``, yielding one :class:`MoveOutcome` per planned move.

    Lazy: work happens while the result is iterated. A failing file gives an
    ``error`` outcome and the rest go on; a journal that cannot be written
    (or signed: this user's key is made on the first sort) raises
    :class:`SortingError` and stops. The journal is only created once there is
    something to record; it must not exist yet.
    """
    moves = list(plan)
    for move in moves:
        _check_mode(move.mode)
    journal_path = os.path.abspath(journal_path)
    # Roots are fixed now, before any folder is made: what the sort creates lies below an anchor.
    roots = ([m.root or os.path.dirname(os.path.abspath(m.src)) for m in moves]
             + [journal_auth.anchor(os.path.dirname(os.path.abspath(m.dst))) for m in moves]
             + [journal_auth.anchor(os.path.dirname(journal_path))])
    return _apply(moves, journal_path, roots)


def _apply(moves: list[PlannedMove], journal_path: str, roots: list[str]) -> Iterator[MoveOutcome]:
    journal = _Journal(journal_path, roots)
    try:
        for move in moves:
            yield _apply_one(move, journal)
    except _JournalWriteError as exc:
        raise SortingError(f"cannot write journal {journal_path}: {exc}") from exc
    finally:
        journal.close()


def _apply_one(move: PlannedMove, journal: "_Journal") -> MoveOutcome:
    src, dst, op = os.path.abspath(move.src), os.path.abspath(move.dst), move.mode
    sha = size = None
    try:
        # Links and directories are refused: only a regular file's bytes can
        # be verified and journaled.
        try:
            mode = os.lstat(src).st_mode
        except FileNotFoundError:
            raise SortingError("no longer there: moved, renamed or deleted since the scan") from None
        if not stat.S_ISREG(mode):
            raise SortingError(f"not a regular file: {src}")
        sha, size = _hash_file(src)
        journal.open()
        created: list[str] = []
        try:
            _makedirs(os.path.dirname(dst), created)
        finally:
            for d in created:
                journal.write({"op": "mkdir", "path": d})
        if os.path.lexists(dst):
            raise SortingError(f"destination exists, not overwriting: {dst}")
        _transfer(src, dst, sha, keep_source=(op == "copy"))
    except _SourceNotRemoved as exc:
        # The verified copy exists and the source too: that is a copy.
        journal.write(_entry("copy", src, dst, sha, size))
        return MoveOutcome(src, dst, op, "error", f"copied but could not remove source: {exc}", None, sha, size)
    except (OSError, SortingError) as exc:
        return MoveOutcome(src, dst, op, "error", _one_line(exc), None, sha, size)

    try:
        journal.write(_entry(op, src, dst, sha, size))
    except _JournalWriteError as exc:
        # An unjournaled move could not be undone: put it back if possible.
        if op == "move":
            try:
                _transfer(dst, src, sha, keep_source=False)
                note = "the move was rolled back"
            except Exception:
                note = f"{src} is now at {dst} and is not in the journal"
            raise _JournalWriteError(f"{exc}; {note}") from exc
        raise
    return MoveOutcome(src, dst, op, "done", None, None, sha, size)


def _entry(op: str, src: str, dst: str, sha: Optional[str], size: Optional[int]) -> dict:
    return {
        "op": op,
        "src": src,
        "dst": dst,
        "sha256": sha,
        "size": size,
        "time": _now(),
    }


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


class _Journal:
    """Append-only JSON-lines file, fsynced after every line; a signed ``begin`` header, then signed entries."""

    def __init__(self, path: str, roots: list[str]) -> None:
        self.path = path
        self.roots = roots
        self._fh = None
        self._signer: Optional[journal_auth.Signer] = None

    def open(self) -> None:
        if self._fh is not None:
            return
        created: list[str] = []
        try:
            key = journal_auth.load_key(create=True)
            begin = journal_auth.header(self.roots, uuid.uuid4().hex, _now())
            _makedirs(os.path.dirname(self.path), created)
            self._fh = open(self.path, "x", encoding="utf-8")
        except (OSError, JournalAuthError) as exc:
            raise _JournalWriteError(_one_line(exc)) from exc
        self._signer = journal_auth.Signer(key)
        self.write(begin)
        for d in created:
            self.write({"op": "mkdir", "path": d})

    def write(self, entry: dict) -> None:
        self.open()
        entry = self._signer.sign(entry)
        try:
            # ensure_ascii keeps undecodable file names (surrogate escapes)
            # representable; json.loads gives them back unchanged.
            self._fh.write(json.dumps(entry, ensure_ascii=True) + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise _JournalWriteError(_one_line(exc)) from exc

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# --------------------------------------------------------------------------
# the actual file operations


def _transfer(src: str, dst: str, sha: str, keep_source: bool) -> None:
    """Move (or copy) ``src`` to ``dst``, never overwriting ``dst``."""
    if not keep_source:
        try:
            _rename_noreplace(src, dst)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
    _copy_verified(src, dst, sha)
    if not keep_source:
        try:
            os.unlink(src)
        except OSError as exc:
            raise _SourceNotRemoved(exc) from exc


def _rename_noreplace(src: str, dst: str) -> None:
    try:
        # link() fails with EEXIST instead of replacing, unlike rename().
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise
        # No hard links here (FAT, some network shares, protected_hardlinks):
        # the check leaves a small race, but it is the best stdlib offers.
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "destination exists, not overwriting", dst) from exc
        os.rename(src, dst)
        return
    try:
        os.unlink(src)
    except OSError as exc:
        # Drop the new name again so the file has exactly one place to be.
        try:
            os.unlink(dst)
        except OSError:
            raise _SourceNotRemoved(exc) from exc
        raise


def _copy_verified(src: str, dst: str, sha: str) -> None:
    directory = os.path.dirname(dst)
    tmp = os.path.join(directory, f".{os.path.basename(dst)}.{uuid.uuid4().hex[:8]}.blur-detect-tmp")
    with open(src, "rb") as fsrc:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        try:
            with os.fdopen(fd, "wb") as fdst:
                shutil.copyfileobj(fsrc, fdst, _CHUNK)
                fdst.flush()
                os.fsync(fdst.fileno())
            shutil.copystat(src, tmp)
            if _hash_file(tmp)[0] != sha:
                raise SortingError(f"copy verification failed (sha256 mismatch): {dst}")
            _rename_noreplace(tmp, dst)
        except BaseException:
            _remove_quietly(tmp)
            raise
    _fsync_dir(directory)


def _makedirs(path: str, created: list[str]) -> None:
    """Like ``os.makedirs(exist_ok=True)``; appends each directory it made."""
    missing = []
    head = os.path.abspath(path)
    while not os.path.isdir(head):
        missing.append(head)
        parent = os.path.dirname(head)
        if parent == head:
            break
        head = parent
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            if not os.path.isdir(d):
                raise
            continue  # someone else made it; not ours to remove later
        created.append(d)


def _hash_file(path: str) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _fsync_dir(path: str) -> None:
    # Makes the new directory entry durable; unsupported on some platforms.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _one_line(obj: object) -> str:
    return " ".join(str(obj).splitlines())


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")


# --------------------------------------------------------------------------
# journal reading and undo


@dataclass(frozen=True)
class Journal:
    """A parsed journal: ``entries`` (mkdir, move and copy lines, oldest first), the ``roots`` its header records
    (empty for a journal without one), and ``problem``: why this user's key does not vouch for it, or None."""

    path: str
    entries: list
    roots: tuple
    problem: Optional[str]

    @property
    def signed(self) -> bool:
        return self.problem is None


def read_journal(path: PathLike) -> list[dict]:
    """Parse and validate a journal; return its mkdir/move/copy entries, oldest first (not the header).

    Raises :class:`SortingError` naming the bad line. An unterminated, unparsable last line (a write cut short)
    is ignored, so the entries before it stay undoable.
    """
    return load_journal(path).entries


def load_journal(path: PathLike) -> Journal:
    """Parse, validate and check the signature of a journal (see :mod:`ensemble.journal_auth`).

    Only a regular file is read (a FIFO or device is refused without blocking). Raises :class:`SortingError`
    for a journal that is missing, unreadable or malformed; an unsigned or foreign one is returned with its
    ``problem`` set.
    """
    path = os.fspath(path)
    lines = _parse_lines(path)
    try:
        problem = journal_auth.signature_problem(lines, journal_auth.load_key())
    except (OSError, JournalAuthError) as exc:
        problem = _one_line(exc)
    has_header = bool(lines) and lines[0]["op"] == "begin"
    entries = lines[1:] if has_header else lines
    roots = tuple(lines[0]["roots"]) if has_header else ()
    return Journal(path, entries, roots, problem)


def _parse_lines(path: str) -> list[dict]:
    try:
        # stat first and open without blocking: a FIFO planted as a journal must not hang the undo.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise SortingError(f"not a journal: {path} is not a regular file")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise SortingError(f"journal not found: {path}") from None
    except OSError as exc:
        raise SortingError(f"cannot read journal {path}: {exc.strerror or exc}") from None
    lines = []
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # swapped between the stat and the open
            raise SortingError(f"not a journal: {path} is not a regular file")
        lineno = 0
        while raw := _read_line(f, path):
            lineno += 1
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except ValueError:
                if not raw.endswith(b"\n"):  # only the last line can lack one
                    # An unterminated last line is a write cut short (disk full, crash). A disk-full failure rolls
                    # that move back; either way the entries before it must stay undoable.
                    break
                raise SortingError(f"malformed journal {path}, line {lineno}: not valid JSON") from None
            problem = _entry_problem(obj, first=not lines)
            if problem:
                raise SortingError(f"malformed journal {path}, line {lineno}: {problem}")
            lines.append(obj)
    return lines


def _read_line(f, path: str) -> bytes:
    try:
        raw = f.readline(_MAX_JOURNAL_LINE + 1)
    except OSError as exc:
        raise SortingError(f"cannot read journal {path}: {exc.strerror or exc}") from None
    if len(raw) > _MAX_JOURNAL_LINE:
        raise SortingError(f"not a journal: {path} has a line over {_MAX_JOURNAL_LINE // 1024} KiB")
    return raw


def _entry_problem(obj: object, first: bool = False) -> Optional[str]:
    if not isinstance(obj, dict):
        return "not a JSON object"
    op = obj.get("op")
    if op == "begin":
        if not first:
            return "a second header"
        roots = obj.get("roots")
        if not (isinstance(roots, list) and roots and all(isinstance(r, str) and os.path.isabs(r) for r in roots)):
            return "'roots' must be a list of absolute paths"
        return None
    if op == "mkdir":
        return _abs_path_problem(obj, "path")
    if op not in MODES:
        return f"unknown op {op!r}"
    for key in ("src", "dst"):
        problem = _abs_path_problem(obj, key)
        if problem:
            return problem
    sha = obj.get("sha256")
    if not (isinstance(sha, str) and len(sha) == 64 and set(sha) <= _HEX):
        return "'sha256' must be 64 lowercase hex digits"
    size = obj.get("size")
    if not (isinstance(size, int) and not isinstance(size, bool) and size >= 0):
        return "'size' must be a non-negative integer"
    try:
        datetime.fromisoformat(obj.get("time"))
    except (TypeError, ValueError):
        return "'time' must be an ISO 8601 timestamp"
    return None


def _abs_path_problem(obj: dict, key: str) -> Optional[str]:
    value = obj.get(key)
    if not (isinstance(value, str) and os.path.isabs(value) and "\x00" not in value):
        return f"{key!r} must be an absolute path"
    return None


def refusal(journal: Journal, foreign: bool = False, within: Optional[PathLike] = None) -> Optional[str]:
    """Why :func:`undo` would refuse ``journal``, or None.

    A journal must be signed with this user's key (``foreign`` waives that, for a journal from an older version,
    another machine or another user whose plan a person has read), and every path must lie inside its roots as
    the disk resolves them now (waived only for a ``foreign`` journal that records no roots). ``within``: a folder
    the roots must lie inside too.
    """
    if journal.problem and not foreign:
        return f"not signed by this user's key: {journal.problem}"
    if journal.roots or not foreign or within is not None:
        problem = journal_auth.confinement_problem(journal.entries, journal.roots, within)
        if problem:
            return problem
    return None


def undo(journal_path: PathLike, foreign: bool = False, within: Optional[PathLike] = None) -> Iterator[MoveOutcome]:
    """Put moved files back, newest first, yielding one outcome per file entry.

    The journal is checked whole first (:func:`refusal`: signed, and every path inside its roots) and refused
    with :class:`SortingError` before anything moves. Each file is then verified against the journal's sha256
    and is never written over an existing file; such entries give ``error`` outcomes and the rest go on. Copies
    are left in place (``skipped``): nothing is ever deleted. Directories the sort created are removed only if
    now empty. When every entry succeeded the journal is renamed to ``<name>.undone``; otherwise it stays, and
    undo can be run again once the problems are fixed.

    Raises :class:`SortingError` at once if the journal was already undone, is malformed or is refused.
    """
    journal, problem = inspect_journal(journal_path, foreign, within)
    if problem:
        raise SortingError(f"journal {journal.path} refused, nothing was moved: {problem}")
    return _undo(journal.path, journal)


def inspect_journal(journal_path: PathLike, foreign: bool = False,
                    within: Optional[PathLike] = None) -> tuple[Journal, Optional[str]]:
    """What :func:`undo` would work from: the parsed journal (its ``path`` made absolute) and why undo would refuse
    it (:func:`refusal`), or None. Raises :class:`SortingError` if it was already undone or is malformed."""
    path = os.path.abspath(journal_path)
    if path.endswith(UNDONE_SUFFIX) or os.path.lexists(path + UNDONE_SUFFIX):
        raise SortingError(f"journal was already undone: {path}")
    journal = load_journal(path)
    return journal, refusal(journal, foreign, within)


def _undo(path: str, journal: Journal) -> Iterator[MoveOutcome]:
    failed = False
    for entry in reversed(journal.entries):
        # Checked again right before each step: a folder swapped for a link since the first check is caught.
        problem = journal_auth.confinement_problem([entry], journal.roots) if journal.roots else None
        op = entry["op"]
        if op == "mkdir":
            # rmdir only ever removes an empty directory, so this cannot take
            # anything a user put there since.
            if problem is None:
                try:
                    os.rmdir(entry["path"])
                except OSError:
                    pass
        elif op == "copy":
            yield MoveOutcome(entry["src"], entry["dst"], "copy", "skipped", None,
                              "copy left in place", entry["sha256"], entry["size"])
        else:
            outcome = _restore_one(entry, problem)
            failed = failed or not outcome.ok
            yield outcome
    if not failed:
        try:
            _rename_noreplace(path, path + UNDONE_SUFFIX)
        except OSError as exc:
            raise SortingError(f"files restored, but could not mark journal {path} as undone: {exc}") from exc


def _restore_one(entry: dict, problem: Optional[str] = None) -> MoveOutcome:
    src, dst, sha, size = entry["src"], entry["dst"], entry["sha256"], entry["size"]

    def outcome(status: str, error: Optional[str] = None, note: Optional[str] = None) -> MoveOutcome:
        return MoveOutcome(src, dst, "restore", status, error, note, sha, size)

    if problem:
        return outcome("error", f"refused: {problem}")
    try:
        if not os.path.lexists(dst):
            # An earlier, interrupted undo may have put it back already.
            if _is_regular(src) and _hash_file(src)[0] == sha:
                return outcome("skipped", note="already restored")
            raise SortingError(f"file is missing from the destination: {dst}")
        if not _is_regular(dst):
            raise SortingError(f"not a regular file: {dst}")
        if _hash_file(dst)[0] != sha:
            raise SortingError(f"file changed since it was moved (sha256 mismatch), left in place: {dst}")
        if os.path.lexists(src):
            raise SortingError(f"original path is occupied, not overwriting: {src}")
        _makedirs(os.path.dirname(src), [])
        _transfer(dst, src, sha, keep_source=False)
    except _SourceNotRemoved as exc:
        return outcome("error", f"restored a copy but could not remove {dst}: {exc}")
    except (OSError, SortingError) as exc:
        return outcome("error", _one_line(exc))
    return outcome("done")
