import errno
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

# The repository root is not on sys.path under pytest's default import mode.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ensemble import sorting  # noqa: E402
from ensemble.sorting import (  # noqa: E402
    PlannedMove,
    SortingError,
    apply_moves,
    new_journal_path,
    plan_moves,
    read_journal,
    undo,
)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def snapshot(root: Path) -> dict:
    """Relative path -> sha256 for every file below root (dirs as None)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
    return out


def journal_lines(path) -> list:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    write(root / "a.jpg", b"\xff\xd8 top level" + bytes(range(256)))
    write(root / "sub" / "b.jpg", b"in a sub-folder" * 100)
    write(root / "sub" / "deeper" / "c.jpg", b"")  # empty files too
    write(root / "keep.jpg", b"sharp, not moved")
    return root


def blurry(root: Path) -> list:
    return [root / "a.jpg", root / "sub" / "b.jpg", root / "sub" / "deeper" / "c.jpg"]


def test_move_and_undo_round_trip(tmp_path, photos):
    before = snapshot(photos)
    dest = tmp_path / "blurry"
    plan = plan_moves(blurry(photos), dest, base_of=lambda p: photos)
    journal = new_journal_path(dest)

    outcomes = list(apply_moves(plan, journal))

    assert [o.status for o in outcomes] == ["done"] * 3
    assert snapshot(dest / "sub")["deeper/c.jpg"] == before["sub/deeper/c.jpg"]
    for rel in ("a.jpg", "sub/b.jpg", "sub/deeper/c.jpg"):
        assert snapshot(dest)[rel] == before[rel]
        assert not (photos / rel).exists()
    assert (photos / "keep.jpg").exists()
    moves = [e for e in journal_lines(journal) if e["op"] == "move"]
    assert {e["dst"] for e in moves} == {str(dest / r) for r in ("a.jpg", "sub/b.jpg", "sub/deeper/c.jpg")}
    assert all(set(e) >= {"op", "src", "dst", "sha256", "size", "time"} for e in moves)

    shutil.rmtree(photos / "sub")  # undo must recreate missing source folders
    restored = list(undo(journal))

    assert [o.status for o in restored] == ["done"] * 3
    assert snapshot(photos) == before
    # Only the (renamed) journal is left; the folders the move made are gone.
    assert [p.name for p in dest.iterdir()] == [Path(journal).name + ".undone"]


def test_target_that_exists_gets_numbered_name(tmp_path, photos):
    dest = tmp_path / "blurry"
    write(dest / "a.jpg", b"already here")
    write(dest / "a (1).jpg", b"this one too")

    plan = plan_moves([photos / "a.jpg"], dest)
    assert plan == [PlannedMove(str(photos / "a.jpg"), str(dest / "a (2).jpg"), "move")]
    original = (photos / "a.jpg").read_bytes()
    assert [o.status for o in apply_moves(plan, new_journal_path(dest))] == ["done"]

    assert (dest / "a.jpg").read_bytes() == b"already here"
    assert (dest / "a (1).jpg").read_bytes() == b"this one too"
    assert (dest / "a (2).jpg").read_bytes() == original


def test_same_name_from_different_roots_does_not_collide(tmp_path):
    roots = [tmp_path / "cam1", tmp_path / "cam2", tmp_path / "cam3"]
    files = [write(r / "day" / "IMG_1.jpg", r.name.encode()) for r in roots]
    dest = tmp_path / "blurry"

    def base_of(p):
        return next(r for r in roots if Path(p).is_relative_to(r))

    plan = plan_moves(files, dest, base_of=base_of)
    assert [Path(m.dst).relative_to(dest).as_posix() for m in plan] == [
        "day/IMG_1.jpg", "day/IMG_1 (1).jpg", "day/IMG_1 (2).jpg"]
    assert all(o.ok for o in apply_moves(plan, new_journal_path(dest)))
    assert sorted(p.read_bytes() for p in (dest / "day").iterdir()) == [b"cam1", b"cam2", b"cam3"]


def test_default_base_puts_files_directly_in_dest_and_skips_dest(tmp_path, photos):
    dest = photos / "blurry"  # dest inside the scanned folder, as users do
    inside = write(dest / "old.jpg", b"sorted last time")
    plan = plan_moves([photos / "sub" / "deeper" / "c.jpg", inside, photos / "a.jpg", photos / "a.jpg"], dest)
    assert [m.dst for m in plan] == [str(dest / "c.jpg"), str(dest / "a.jpg")]


def test_relative_source_paths(tmp_path, photos, monkeypatch):
    monkeypatch.chdir(photos)
    plan = plan_moves(["sub/b.jpg"], "../out", base_of=lambda p: ".")
    assert plan[0].src == str(photos / "sub" / "b.jpg")
    assert plan[0].dst == str(tmp_path / "out" / "sub" / "b.jpg")


def test_copy_mode_keeps_sources_and_undo_keeps_copies(tmp_path, photos):
    before = snapshot(photos)
    dest = tmp_path / "blurry"
    plan = plan_moves(blurry(photos), dest, base_of=lambda p: photos, mode="copy")
    journal = new_journal_path(dest)

    assert [o.status for o in apply_moves(plan, journal)] == ["done"] * 3
    assert snapshot(photos) == before
    assert snapshot(dest)["sub/b.jpg"] == before["sub/b.jpg"]
    assert {e["op"] for e in journal_lines(journal)} == {"begin", "copy", "mkdir"}

    outcomes = list(undo(journal))
    assert [(o.op, o.status) for o in outcomes] == [("copy", "skipped")] * 3
    assert snapshot(photos) == before
    assert (dest / "sub" / "deeper" / "c.jpg").exists()


@pytest.fixture
def two_filesystems(monkeypatch, tmp_path):
    """Pretend tmp_path/fs1 and tmp_path/fs2 are different mounts."""
    real_link, real_rename = os.link, os.rename
    crossings = []

    def mount_of(p):
        rel = Path(os.path.abspath(p)).relative_to(tmp_path)
        return rel.parts[0]

    def guard(real):
        def op(src, dst, *args, **kwargs):
            if mount_of(src) != mount_of(dst):
                crossings.append((src, dst))
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            return real(src, dst, *args, **kwargs)
        return op

    monkeypatch.setattr(os, "link", guard(real_link))
    monkeypatch.setattr(os, "rename", guard(real_rename))
    return crossings


def test_cross_filesystem_move_round_trips(tmp_path, two_filesystems):
    src_root = tmp_path / "fs1" / "photos"
    write(src_root / "x.jpg", b"x" * 5000)
    write(src_root / "sub" / "y.jpg", b"y-data")
    before = snapshot(src_root)
    dest = tmp_path / "fs2" / "blurry"
    journal = new_journal_path(dest)

    plan = plan_moves([src_root / "x.jpg", src_root / "sub" / "y.jpg"], dest, base_of=lambda p: src_root)
    assert [o.status for o in apply_moves(plan, journal)] == ["done"] * 2

    assert two_filesystems, "the cross-device path was never exercised"
    assert not (src_root / "x.jpg").exists() and not (src_root / "sub" / "y.jpg").exists()
    assert snapshot(dest)["sub/y.jpg"] == before["sub/y.jpg"]
    assert not [p for p in dest.rglob("*") if "tmp" in p.name]  # no temp files left

    crossings_before_undo = len(two_filesystems)
    assert all(o.status == "done" for o in undo(journal))
    assert len(two_filesystems) > crossings_before_undo
    assert snapshot(src_root) == before


def test_cross_filesystem_copy_that_fails_verification_keeps_source(tmp_path, two_filesystems, monkeypatch):
    src = write(tmp_path / "fs1" / "x.jpg", b"precious")
    dest = tmp_path / "fs2" / "blurry"
    journal = new_journal_path(dest)

    def corrupting_copy(fsrc, fdst, length=0):
        fdst.write(fsrc.read()[:-1] + b"?")

    monkeypatch.setattr(shutil, "copyfileobj", corrupting_copy)
    (outcome,) = apply_moves(plan_moves([src], dest), journal)

    assert outcome.status == "error" and "verification" in outcome.error
    assert src.read_bytes() == b"precious"
    assert list(dest.iterdir()) == [Path(journal)]  # no partial or temp file
    assert all(e["op"] in ("begin", "mkdir") for e in journal_lines(journal))


def test_undo_twice_is_refused(tmp_path, photos):
    dest = tmp_path / "blurry"
    journal = new_journal_path(dest)
    list(apply_moves(plan_moves(blurry(photos), dest), journal))
    assert all(o.ok for o in undo(journal))
    after_first_undo = snapshot(tmp_path)

    with pytest.raises(SortingError, match="already undone"):
        list(undo(journal))
    with pytest.raises(SortingError, match="already undone"):
        list(undo(journal + ".undone"))
    assert snapshot(tmp_path) == after_first_undo


def test_vanished_source_is_reported_and_others_still_move(tmp_path, photos):
    dest = tmp_path / "blurry"
    journal = new_journal_path(dest)
    plan = plan_moves(blurry(photos), dest, base_of=lambda p: photos)
    (photos / "sub" / "b.jpg").unlink()

    outcomes = list(apply_moves(plan, journal))

    assert [o.status for o in outcomes] == ["done", "error", "done"]
    assert outcomes[1].error == "no longer there: moved, renamed or deleted since the scan"
    assert (dest / "a.jpg").exists() and (dest / "sub" / "deeper" / "c.jpg").exists()
    assert [e["src"] for e in journal_lines(journal) if e["op"] == "move"] == [
        str(photos / "a.jpg"), str(photos / "sub" / "deeper" / "c.jpg")]


def test_apply_never_overwrites_a_file_created_after_planning(tmp_path, photos):
    dest = tmp_path / "blurry"
    plan = plan_moves([photos / "a.jpg"], dest)
    write(dest / "a.jpg", b"arrived meanwhile")

    (outcome,) = apply_moves(plan, new_journal_path(dest))

    assert outcome.status == "error"
    assert (dest / "a.jpg").read_bytes() == b"arrived meanwhile"
    assert (photos / "a.jpg").exists()


def test_undo_does_not_overwrite_recreated_source_and_can_be_retried(tmp_path, photos):
    before = snapshot(photos)
    dest = tmp_path / "blurry"
    journal = new_journal_path(dest)
    list(apply_moves(plan_moves(blurry(photos), dest, base_of=lambda p: photos), journal))
    write(photos / "a.jpg", b"a new photo with the old name")

    outcomes = {Path(o.src).name: o for o in undo(journal)}

    assert outcomes["a.jpg"].status == "error" and "occupied" in outcomes["a.jpg"].error
    assert outcomes["b.jpg"].status == outcomes["c.jpg"].status == "done"
    assert (photos / "a.jpg").read_bytes() == b"a new photo with the old name"
    assert snapshot(dest)["a.jpg"] == before["a.jpg"]
    assert Path(journal).exists()  # not marked undone: there is work left

    (photos / "a.jpg").unlink()
    statuses = {Path(o.src).name: o.status for o in undo(journal)}
    assert statuses == {"a.jpg": "done", "b.jpg": "skipped", "c.jpg": "skipped"}
    assert snapshot(photos) == before


def test_undo_leaves_a_changed_file_and_user_folders_alone(tmp_path, photos):
    dest = tmp_path / "blurry"
    journal = new_journal_path(dest)
    list(apply_moves(plan_moves(blurry(photos), dest, base_of=lambda p: photos), journal))
    (dest / "a.jpg").write_bytes(b"edited after the move")
    write(dest / "sub" / "notes.txt", b"user file in a folder the sort created")

    outcomes = {Path(o.src).name: o for o in undo(journal)}

    assert outcomes["a.jpg"].status == "error" and "sha256" in outcomes["a.jpg"].error
    assert (dest / "a.jpg").read_bytes() == b"edited after the move"
    assert not (photos / "a.jpg").exists()
    assert (dest / "sub" / "notes.txt").exists()
    assert not (dest / "sub" / "deeper").exists()  # made by the sort, now empty


GOOD = {"op": "move", "src": "/a/x.jpg", "dst": "/b/x.jpg", "sha256": "0" * 64, "size": 3,
        "time": "2024-05-01T10:00:00+00:00"}


@pytest.mark.parametrize("bad_line", [
    "{not json",
    json.dumps({**GOOD, "op": "delete"}),
    json.dumps({k: v for k, v in GOOD.items() if k != "sha256"}),
    json.dumps({**GOOD, "sha256": "xyz"}),
    json.dumps({**GOOD, "src": "relative/x.jpg"}),
    json.dumps({**GOOD, "size": -1}),
    json.dumps({**GOOD, "time": "yesterday"}),
    json.dumps({"op": "mkdir"}),
    json.dumps([1, 2]),
])
def test_malformed_journal_raises_with_line_number(tmp_path, bad_line):
    journal = tmp_path / "j.jsonl"
    journal.write_text(json.dumps(GOOD) + "\n" + bad_line + "\n")

    with pytest.raises(SortingError, match=r"line 2\b") as info:
        read_journal(journal)
    assert "\n" not in str(info.value)
    with pytest.raises(SortingError, match=r"line 2\b"):
        list(undo(journal))
    assert journal.exists()


def test_valid_and_missing_journal(tmp_path):
    journal = tmp_path / "j.jsonl"
    journal.write_text(json.dumps(GOOD) + "\n\n")
    assert read_journal(journal) == [GOOD]
    with pytest.raises(SortingError, match="not found"):
        read_journal(tmp_path / "nope.jsonl")


def test_new_journal_path_and_bad_mode(tmp_path):
    path = new_journal_path(tmp_path / "d")
    assert re.fullmatch(r"\.blur-detect-journal-\d{8}-\d{6}-[0-9a-f]{8}\.jsonl", Path(path).name)
    assert Path(path).parent == tmp_path / "d" and not Path(path).parent.exists()
    with pytest.raises(ValueError):
        plan_moves([], tmp_path, mode="delete")
    assert list(apply_moves([], tmp_path / "j.jsonl")) == []
    assert not (tmp_path / "j.jsonl").exists()
    assert sorting.MoveOutcome("a", "b", "move", "error", "boom").ok is False


def test_journal_failure_rolls_the_move_back_and_stops(tmp_path, photos, monkeypatch):
    dest = tmp_path / "blurry"
    real_write = sorting._Journal.write

    def failing_write(self, entry):
        if entry["op"] == "move":
            raise sorting._JournalWriteError("No space left on device")
        real_write(self, entry)

    monkeypatch.setattr(sorting._Journal, "write", failing_write)
    outcomes = apply_moves(plan_moves(blurry(photos), dest), new_journal_path(dest))

    with pytest.raises(SortingError, match="rolled back"):
        next(outcomes)
    assert (photos / "a.jpg").exists() and not (dest / "a.jpg").exists()
    assert (photos / "sub" / "b.jpg").exists()  # stopped: nothing after it moved


def test_journal_cut_short_by_a_full_disk_can_still_be_undone(tmp_path, photos, monkeypatch):
    before = snapshot(photos)
    dest = tmp_path / "blurry"
    journal = new_journal_path(dest)
    real_write = sorting._Journal.write
    moves = []

    def write_then_fill_the_disk(self, entry):
        if entry["op"] == "move":
            moves.append(entry)
            if len(moves) == 3:  # half the line reaches the disk, then ENOSPC
                self._fh.write(json.dumps(entry)[:40])
                self._fh.flush()
                raise sorting._JournalWriteError("No space left on device")
        real_write(self, entry)

    monkeypatch.setattr(sorting._Journal, "write", write_then_fill_the_disk)
    with pytest.raises(SortingError, match="rolled back"):
        list(apply_moves(plan_moves(blurry(photos), dest, base_of=lambda p: photos), journal))
    assert not Path(journal).read_text().endswith("\n")  # the torn line

    outcomes = list(undo(journal))

    assert [o.status for o in outcomes] == ["done", "done"]
    assert snapshot(photos) == before
    assert Path(journal + sorting.UNDONE_SUFFIX).exists()


def test_a_device_or_a_huge_stray_file_is_refused_without_reading_it_whole(tmp_path):
    with pytest.raises(SortingError, match="not a regular file"):
        read_journal(os.devnull)
    stray = write(tmp_path / "video.mp4", b"\x00" * (sorting._MAX_JOURNAL_LINE + 10) + b"\n{}\n")
    with pytest.raises(SortingError, match="line over"):
        read_journal(stray)


def test_symlinks_and_directories_are_not_moved(tmp_path, photos):
    link = tmp_path / "link.jpg"
    link.symlink_to(photos / "a.jpg")
    dest = tmp_path / "blurry"
    outcomes = list(apply_moves(plan_moves([link, photos / "sub"], dest), new_journal_path(dest)))
    assert [o.status for o in outcomes] == ["error", "error"]
    assert link.is_symlink() and (photos / "sub" / "b.jpg").exists()
