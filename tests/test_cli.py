"""End-to-end tests of the ``blur-detect`` command (``python -m ensemble``) on generated photos.

Most tests run the real command in a subprocess against the shipped model (model/ and final_model/, or
$BLUR_ENSEMBLE_MODELS); they are skipped with a reason while no trained model exists. A few run ``cli.main``
in-process where a failure has to be simulated (permission denied as root, Ctrl-C at a chosen moment).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures import REPO_ROOT, blur, default_sigint, make_photo, save_jpeg

from ensemble import cli  # noqa: E402  (fixtures puts the repository on sys.path)

FIELDS = ["path", "label", "blur_probability", "laplacian_var", "width", "height", "error", "blur_kind",
          "blur_kind_probability", "motion_angle", "blur_extent_px", "noise_sigma", "scale", "content"]


from fixtures import needs_model  # noqa: E402


def run_cli(*args, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", "ensemble", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def scan_json(*args, **kw) -> tuple[subprocess.CompletedProcess, list[dict]]:
    proc = run_cli("scan", "--format", "json", *args, **kw)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc, json.loads(proc.stdout) if proc.stdout.strip() else []


def by_name(records: list[dict]) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in records}


def sha_tree(root: Path) -> dict[str, str | None]:
    return {p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


# --------------------------------------------------------------------------------------------------------------
# Generated inputs (module scope: built once)

SIZE = (240, 320)  # (h, w): small and fast, still several CNN patches per image


def bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A tiny file whose header claims width × height pixels: decoding it would need gigabytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("photos")
    sharp = make_photo(11, (480, 640))
    pair = root / "pair"
    save_jpeg(pair / "sharp.jpg", sharp)
    save_jpeg(pair / "blurred.jpg", blur(sharp, "gaussian", 4.0))

    fmt = root / "formats"
    fmt.mkdir()
    img = make_photo(12, SIZE)
    pil = Image.fromarray(img)
    save_jpeg(fmt / "photo.jpg", img)
    save_jpeg(fmt / "rotated.jpg", img, orientation=6)  # stored 320 wide, shown 240 wide
    pil.save(fmt / "photo.png")
    pil.save(fmt / "photo.tif")
    pil.save(fmt / "photo.bmp")
    pil.save(fmt / "photo.webp", quality=90)
    Image.fromarray((img[..., 1].astype(np.uint16) * 257)).save(fmt / "deep16.png")  # 16-bit grey
    assert Image.open(fmt / "deep16.png").mode.startswith("I")
    pil.convert("CMYK").save(fmt / "cmyk.jpg", quality=90)
    rgba = np.dstack([img, np.full(SIZE, 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(fmt / "alpha.png")
    pil.convert("L").save(fmt / "grey.jpg", quality=90)
    pil.convert("P").save(fmt / "palette.png")
    heic = False
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        pil.save(fmt / "photo.heic", quality=90)
        heic = True
    except Exception:  # noqa: BLE001 - optional: no pillow-heif, or no HEVC encoder in this build
        pass
    (fmt / "notes.txt").write_text("not an image: skipped by the folder listing")

    bad = root / "bad"
    bad.mkdir()
    (bad / "zero.jpg").write_bytes(b"")
    data = (fmt / "photo.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (bad / "text.jpg").write_bytes(b"this is not a JPEG at all\n" * 20)
    bomb_png(bad / "bomb.png")
    (bad / "dangling.jpg").symlink_to(bad / "no-such-target.jpg")
    save_jpeg(bad / "good.jpg", make_photo(13, SIZE))
    return {"root": root, "pair": pair, "formats": fmt, "bad": bad, "heic": heic}


BAD_REASONS = {
    "zero.jpg": "empty file",
    "truncated.jpg": "truncated",
    "text.jpg": "not an image",
    "bomb.png": "too large",
    "dangling.jpg": "broken symbolic link",
}


# --------------------------------------------------------------------------------------------------------------
# The command itself


def test_help_lists_commands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert re.search(r"^\s+scan\s", proc.stdout, re.M) and re.search(r"^\s+undo\s", proc.stdout, re.M)
    proc = run_cli("scan", "--help")
    assert proc.returncode == 0 and "--move-blurry" in proc.stdout and "--save-maps" in proc.stdout
    assert run_cli().returncode == 2  # no command: usage


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "abc", "101%"])
def test_threshold_out_of_range_is_a_usage_error(value, photos):
    proc = run_cli("scan", photos["pair"] / "sharp.jpg", "--threshold", value)
    assert proc.returncode == 2
    assert "threshold" in proc.stderr and "Traceback" not in proc.stderr


def test_other_usage_errors(photos, tmp_path):
    one = photos["pair"] / "sharp.jpg"
    for args in (["--dry-run"], ["--workers", "0"], ["--move-blurry", tmp_path / "a", "--copy-blurry", tmp_path / "b"],
                 ["--format", "xml"], ["--output", tmp_path / "missing" / "out.json"], ["--move-blurry", ""],
                 ["--output", ""]):
        proc = run_cli("scan", one, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_closed_stdout_is_no_traceback(photos):
    # `blur-detect scan x >&-`: Python starts with sys.stdout None.
    cmd = f"{sys.executable} -m ensemble scan {photos['pair'] / 'sharp.jpg'} >&-"
    proc = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert "Traceback" not in proc.stderr, proc.stderr


@needs_model
def test_scan_path_is_light(photos):
    """`scan one.jpg` never imports TensorFlow, Keras or torch (which would cost seconds at start-up)."""
    code = ("import sys, time; t = time.perf_counter(); from ensemble.cli import main; "
            f"rc = main(['scan', '-q', {str(photos['pair'] / 'sharp.jpg')!r}]); "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'torch')); "
            "print('HEAVY', heavy, 'RC', rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert "HEAVY [] RC 0" in proc.stdout, proc.stdout + proc.stderr  # its time: benchmarks/bench_scan.py


@needs_model
def test_every_format_is_scored(photos):
    proc, records = scan_json(photos["formats"])
    assert proc.returncode == 0, proc.stderr
    names = {"photo.jpg", "rotated.jpg", "photo.png", "photo.tif", "photo.bmp", "photo.webp", "deep16.png",
             "cmyk.jpg", "alpha.png", "grey.jpg", "palette.png"} | ({"photo.heic"} if photos["heic"] else set())
    recs = by_name(records)
    assert set(recs) == names  # notes.txt is not listed
    for name, r in recs.items():
        assert r["label"] in ("sharp", "blurry") and r["error"] is None, r
        assert 0.0 <= r["blur_probability"] <= 1.0
        expected = (240, 320) if name == "rotated.jpg" else (320, 240)  # EXIF orientation 6 turns it upright
        assert (r["width"], r["height"]) == expected, r
    # The same pixels in lossless containers give the same verdict.
    lossless = [recs[n]["blur_probability"] for n in ("photo.png", "photo.tif", "photo.bmp")]
    assert max(lossless) - min(lossless) < 1e-6


@needs_model
def test_bad_inputs_become_error_records_and_the_rest_is_scored(photos):
    bad = photos["bad"]
    proc = run_cli("scan", "--format", "jsonl", bad, bad / "dangling.jpg")  # named twice: scanned once
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    recs = by_name(records)
    assert recs["good.jpg"]["label"] in ("sharp", "blurry") and recs["good.jpg"]["error"] is None
    for name, reason in BAD_REASONS.items():
        r = recs[name]
        assert r["label"] == "error" and reason in r["error"], r
        assert r["blur_probability"] is None and r["width"] is None
        assert "\n" not in r["error"]
        assert re.search(rf"^error: .*{re.escape(name)}: .*{reason}", proc.stderr, re.M), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == len(BAD_REASONS)  # one line per failed file, no more


def test_a_path_that_does_not_exist_is_a_usage_error(tmp_path):
    proc = run_cli("scan", tmp_path, tmp_path / "no" / "such.jpg")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == f"blur-detect scan: error: no such file or folder: {tmp_path}/no/such.jpg"


@needs_model
def test_explicit_file_scanned_whatever_its_suffix(photos, tmp_path):
    odd = tmp_path / "photo.data"
    odd.write_bytes((photos["formats"] / "photo.png").read_bytes())
    proc, records = scan_json(odd)
    assert proc.returncode == 0 and records[0]["label"] != "error" and records[0]["width"] == 320


@needs_model
def test_permission_denied_is_an_error_record(photos, tmp_path, monkeypatch, capsys):
    """Tests run as root, where chmod 000 blocks nothing: make the open fail as it would for another user."""
    import ensemble.imageio as imageio

    locked = tmp_path / "locked.jpg"
    locked.write_bytes((photos["formats"] / "photo.jpg").read_bytes())
    real_open = imageio.Image.open

    def guarded_open(path, *a, **kw):
        if Path(path).name == "locked.jpg":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(imageio.Image, "open", guarded_open)
    rc = cli.main(["scan", "-q", "--format", "json", str(locked), str(photos["bad"] / "good.jpg")])
    out, err = capsys.readouterr()
    recs = by_name(json.loads(out))
    assert rc == 1
    assert recs["locked.jpg"]["label"] == "error" and recs["locked.jpg"]["error"] == "permission denied"
    assert recs["good.jpg"]["label"] != "error"
    assert f"error: {locked}: permission denied" in err


@needs_model
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: chmod 000 does not stop root reading (the in-process test covers it)")
def test_unreadable_file_for_real(photos, tmp_path):
    locked = tmp_path / "locked.jpg"
    locked.write_bytes((photos["formats"] / "photo.jpg").read_bytes())
    locked.chmod(0)
    proc, records = scan_json(locked)
    assert proc.returncode == 1 and records[0]["error"] == "permission denied"


@needs_model
def test_blurred_copy_scores_higher_than_its_sharp_original(photos):
    proc, records = scan_json(photos["pair"])
    assert proc.returncode == 0
    recs = by_name(records)
    assert recs["blurred.jpg"]["blur_probability"] > recs["sharp.jpg"]["blur_probability"] + 0.2, recs
    assert recs["blurred.jpg"]["laplacian_var"] < recs["sharp.jpg"]["laplacian_var"]


@needs_model
def test_threshold_decides_the_label(photos):
    _, records = scan_json(photos["pair"], "--threshold", "0")
    assert [r["label"] for r in records] == ["blurry", "blurry"]
    probs = sorted(r["blur_probability"] for r in records)
    middle = (probs[0] + probs[1]) / 2
    proc = run_cli("scan", photos["pair"], "--threshold", f"{middle:.6f}")
    assert re.search(r"^2 images: 1 blurry, 1 sharp, 0 errors \(threshold \d", proc.stdout, re.M), proc.stdout


# --------------------------------------------------------------------------------------------------------------
# Output formats


@needs_model
def test_json_schema(photos):
    proc, records = scan_json(photos["bad"])
    assert proc.returncode == 1
    assert len(records) == len(BAD_REASONS) + 1
    for r in records:
        assert list(r) == FIELDS
        assert isinstance(r["path"], str) and r["label"] in ("sharp", "blurry", "error")
        if r["label"] == "error":
            assert isinstance(r["error"], str) and r["error"]
            assert all(r[k] is None for k in ("blur_probability", "laplacian_var", "width", "height"))
        else:
            assert r["error"] is None
            assert isinstance(r["blur_probability"], float) and isinstance(r["laplacian_var"], float)
            assert type(r["width"]) is int and type(r["height"]) is int
    # Listed in the scan order (sorted names), whatever order the workers finished in.
    assert [r["path"] for r in records] == sorted(r["path"] for r in records)


@needs_model
def test_csv_schema(photos):
    proc = run_cli("scan", "--format", "csv", photos["bad"])
    rows = list(csv.reader(io.StringIO(proc.stdout)))
    assert rows[0] == FIELDS
    body = [dict(zip(FIELDS, row)) for row in rows[1:]]
    assert len(body) == len(BAD_REASONS) + 1 and all(len(row) == len(FIELDS) for row in rows)
    for r in body:
        if r["label"] == "error":
            assert r["error"] and r["blur_probability"] == r["width"] == ""
        else:
            assert 0 <= float(r["blur_probability"]) <= 1 and float(r["laplacian_var"]) >= 0
            assert int(r["width"]) == 320 and int(r["height"]) == 240 and r["error"] == ""


@needs_model
def test_jsonl_to_file_one_object_per_line(photos, tmp_path):
    out = tmp_path / "scan.jsonl"
    proc = run_cli("scan", "--format", "jsonl", "--output", out, photos["formats"])
    assert proc.returncode == 0 and proc.stdout == ""
    lines = out.read_text().splitlines()
    objects = [json.loads(line) for line in lines]
    assert len(objects) == len(list(photos["formats"].glob("*"))) - 1  # all but notes.txt
    assert all(isinstance(o, dict) and list(o) == FIELDS for o in objects)


@needs_model
def test_output_to_a_pipe_or_a_link_writes_through_it(photos, tmp_path):
    """``-o /dev/stdout``, a FIFO or a symlink: the report goes to what the name points at; the name itself stays."""
    import stat

    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # opened first, so the writer does not block
    try:
        proc = run_cli("scan", "--format", "csv", "--output", fifo, photos["pair"] / "sharp.jpg")
        assert proc.returncode == 0, proc.stderr
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # not replaced by a plain file
        assert os.read(reader, 65536).decode().startswith("path,label,")
    finally:
        os.close(reader)
    real, link = tmp_path / "real.csv", tmp_path / "link.csv"
    link.symlink_to(real.name)
    assert run_cli("scan", "--format", "csv", "--output", link, photos["pair"] / "sharp.jpg").returncode == 0
    assert link.is_symlink() and real.read_text().startswith("path,label,")


def test_write_output_keeps_devices_pipes_and_links(tmp_path):
    """The helper behind ``scan -o`` and ``cameras --report``: /dev/null stays a device, a link stays a link."""
    import stat

    from ensemble.cli_common import write_output

    write_output(os.devnull, "report\n")
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    real, link = tmp_path / "real.txt", tmp_path / "link.txt"
    link.symlink_to(real.name)
    write_output(str(link), "report\n")
    assert link.is_symlink() and real.read_text() == "report\n"
    write_output(str(tmp_path / "plain.txt"), "x")
    assert (tmp_path / "plain.txt").read_text() == "x"


@needs_model
def test_table_sorted_blurriest_first_with_summary(photos, tmp_path):
    out = tmp_path / "report.txt"
    # Given sharpest first, and with the error files in between the good ones, so that the order has to be made.
    proc = run_cli("scan", photos["pair"] / "sharp.jpg", photos["pair"] / "blurred.jpg", photos["bad"], "--output", out)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = out.read_text().splitlines()
    assert lines[0].split() == ["BLUR", "LABEL", "KIND", "LAPVAR", "SIZE", "SCALE", "CONTENT", "PATH"]
    body, summary = lines[1:-1], lines[-1]
    scored = [ln for ln in body if not ln.lstrip().startswith("-")]
    probs = [float(ln.split()[0].rstrip("%")) for ln in scored]
    assert len(scored) == 3 and probs == sorted(probs, reverse=True)
    # No larger than 640 px: judged as on a screen, whatever 'auto' finds they show.
    at = lines[0].index("SCALE")
    assert all(ln[at:].split()[0] == "screen" and ln[at:].split()[1] in ("photo", "document") for ln in scored), scored
    assert body[len(scored):] and all(" error " in ln for ln in body[len(scored):])  # errors come last
    assert "blurred.jpg" in scored[0]
    assert len({ln.index("%") for ln in scored}) == 1  # aligned columns
    m = re.fullmatch(r"(\d+) images: (\d+) blurry, (\d+) sharp, (\d+) errors \(threshold [\d.]+%\)", summary)
    assert m, summary
    n, b, s, e = map(int, m.groups())
    assert (n, e, b + s) == (3 + len(BAD_REASONS), len(BAD_REASONS), 3)


def test_missing_model_is_one_line(photos, tmp_path):
    proc = run_cli("scan", photos["pair"] / "sharp.jpg", "--model", tmp_path / "no-model")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: cannot load the model") and len(proc.stderr.splitlines()) == 1


def test_folder_without_images_says_so(tmp_path):
    empty = tmp_path / "holiday"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("no photos here")
    proc = run_cli("scan", empty)
    assert proc.returncode == 1
    hint = "(use --recursive to look in its sub-folders)"
    assert proc.stderr.strip().splitlines() == [f"no images found in {empty} {hint}"]
    proc = run_cli("scan", "--recursive", empty)
    assert proc.returncode == 1 and proc.stderr.strip() == f"no images found in {empty}"


@needs_model
def test_recursive_listing(photos, tmp_path):
    tree = tmp_path / "tree"
    save_jpeg(tree / "top.jpg", make_photo(21, SIZE))
    save_jpeg(tree / "a" / "b" / "deep.JPG", make_photo(22, SIZE))
    _, flat = scan_json(tree)
    _, deep = scan_json(tree, "--recursive")
    assert [Path(r["path"]).name for r in flat] == ["top.jpg"]
    assert [r["path"] for r in deep] == [str(tree / "a" / "b" / "deep.JPG"), str(tree / "top.jpg")]


def test_listing_is_sorted_deduplicated_and_skips_folder_links(tmp_path):
    from ensemble.scan import expand_paths

    root = tmp_path / "r"
    for rel in ("b.jpg", "a.PNG", "sub/c.jpg", "sub/deeper/d.webp", "z.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "loop").symlink_to(root)  # a folder link that would recurse for ever
    inputs, empty = expand_paths([root, root / "b.jpg", tmp_path / "gone.jpg"], recursive=True)
    rels = [os.path.relpath(i.path, root) for i in inputs]
    assert rels == ["a.PNG", "b.jpg", "sub/c.jpg", "sub/deeper/d.webp", "../gone.jpg"]
    assert {i.root for i in inputs[:4]} == {str(root)} and empty == []
    flat, _ = expand_paths([root])
    assert [os.path.basename(i.path) for i in flat] == ["a.PNG", "b.jpg"]


def test_scan_paths_keeps_a_bounded_number_in_flight():
    """10,000 inputs must not all be queued: the scan pulls new paths only as results are taken."""
    from ensemble.scan import scan_paths

    class FakeDetector:
        def decode(self, path, scale=None):
            time.sleep(0.001)
            return path

        def predict_decoded(self, decoded, with_map=False, scale=None):
            return [f"result for {decoded[0]}"]

    pulled = []

    def paths():
        for i in range(300):
            pulled.append(i)
            yield f"img{i}.jpg"

    seen, lead = [], 0
    for item in scan_paths(paths(), FakeDetector(), workers=3, in_flight=6):
        seen.append(item)
        lead = max(lead, len(pulled) - len(seen))
    assert sorted(s.path for s in seen) == sorted(f"img{i}.jpg" for i in range(300))
    assert all(s.error is None and s.result == f"result for {s.path}" for s in seen)
    assert lead <= 6


# --------------------------------------------------------------------------------------------------------------
# Moving, copying, undo


def _two_roots(tmp_path: Path, photos: dict) -> tuple[Path, Path, Path]:
    """Two scan roots each with a sharp photo, a blurred one called blurred.jpg (name clash) and a broken file."""
    roots = []
    for i, name in enumerate(("day1", "day2")):
        root = tmp_path / name
        sharp = make_photo(31 + i, (480, 640))
        save_jpeg(root / "keep" / "sharp.jpg", sharp)
        save_jpeg(root / "blurred.jpg", blur(sharp, "defocus", 6.0))
        (root / "broken.jpg").write_bytes(b"")
        roots.append(root)
    dest = tmp_path / "blurry"
    return roots[0], roots[1], dest


def _threshold_between(tmp_path, *roots) -> str:
    _, records = scan_json(*roots, "--recursive")
    sharp = max(r["blur_probability"] for r in records if "sharp" in r["path"])
    blurred = min(r["blur_probability"] for r in records if "blurred" in r["path"])
    assert blurred > sharp, records
    return f"{(sharp + blurred) / 2:.6f}"


@needs_model
def test_move_and_undo_round_trip_restores_every_byte(photos, tmp_path):
    day1, day2, dest = _two_roots(tmp_path, photos)
    dest.mkdir()
    (dest / "blurred.jpg").write_bytes(b"already here, must survive")  # collides with both moves
    threshold = _threshold_between(tmp_path, day1, day2)
    before = sha_tree(tmp_path)

    proc = run_cli("scan", day1, day2, "--recursive", "--threshold", threshold, "--move-blurry", dest)
    assert proc.returncode == 1, proc.stderr  # the broken files
    assert "Traceback" not in proc.stderr
    # Both blurred.jpg moved, neither overwrote the file already there nor each other; sharp and broken stayed.
    assert not (day1 / "blurred.jpg").exists() and not (day2 / "blurred.jpg").exists()
    assert (dest / "blurred.jpg").read_bytes() == b"already here, must survive"
    moved = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in dest.glob("blurred (*).jpg")}
    assert sorted(moved) == ["blurred (1).jpg", "blurred (2).jpg"]
    assert sorted(moved.values()) == sorted([before["day1/blurred.jpg"], before["day2/blurred.jpg"]])
    assert (day1 / "keep" / "sharp.jpg").exists() and (day1 / "broken.jpg").exists()
    journal = re.search(r"^journal: (.+)$", proc.stdout, re.M).group(1)
    assert Path(journal).parent == dest and f"blur-detect undo {journal}" in proc.stdout

    proc = run_cli("undo", journal)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("restored ") == 2
    after = sha_tree(tmp_path)
    undone = Path(journal).name + ".undone"
    assert {k: v for k, v in after.items() if not k.endswith(undone)} == before
    # A second undo is refused, in one line.
    proc = run_cli("undo", journal)
    assert proc.returncode == 1 and "already undone" in proc.stderr and len(proc.stderr.splitlines()) == 1


@needs_model
def test_move_keeps_sub_paths_below_the_scan_root(photos, tmp_path):
    root = tmp_path / "shoot"
    save_jpeg(root / "a" / "x.jpg", make_photo(41, SIZE))
    save_jpeg(root / "b" / "x.jpg", make_photo(42, SIZE))
    dest = tmp_path / "out"
    proc = run_cli("scan", root, "-r", "-t", "0", "--move-blurry", dest, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.jpg")) == ["a/x.jpg", "b/x.jpg"]
    assert not list(root.rglob("*.jpg"))


@needs_model
def test_dry_run_moves_nothing_and_creates_nothing(photos, tmp_path):
    day1, day2, dest = _two_roots(tmp_path, photos)
    before = sha_tree(tmp_path)
    proc = run_cli("scan", day1, day2, "-r", "-t", "0", "--move-blurry", dest, "--dry-run")
    assert proc.returncode == 1  # the broken files
    plan = re.findall(r"^would move (.+) -> (.+)$", proc.stdout, re.M)
    assert len(plan) == 4 and all(dst.startswith(str(dest)) for _, dst in plan)
    assert not any("broken" in src for src, _ in plan)  # error records are never moved
    assert not dest.exists() and sha_tree(tmp_path) == before


@needs_model
def test_copy_leaves_originals(photos, tmp_path):
    day1, _, dest = _two_roots(tmp_path, photos)
    before = sha_tree(day1)
    proc = run_cli("scan", day1, "-r", "-t", "0", "--copy-blurry", dest, "--format", "json")
    assert proc.returncode == 1
    json.loads(proc.stdout)  # the move lines went to stderr, so stdout is still pure JSON
    assert "copied " in proc.stderr and "journal: " in proc.stderr
    assert sha_tree(day1) == before
    copies = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.jpg"))
    assert copies == ["blurred.jpg", "keep/sharp.jpg"]


def test_undo_of_a_missing_journal_is_one_line(tmp_path):
    proc = run_cli("undo", tmp_path / "nope.jsonl")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: journal not found") and len(proc.stderr.splitlines()) == 1


# --------------------------------------------------------------------------------------------------------------
# Blur maps


@needs_model
def test_save_maps_one_png_per_image_with_distinct_names(photos, tmp_path):
    maps = tmp_path / "maps"
    fmt = photos["formats"]
    proc = run_cli("scan", photos["pair"] / "sharp.jpg", fmt / "photo.jpg", fmt / "photo.png", photos["bad"] / "zero.jpg",
                   "--save-maps", maps)
    assert proc.returncode == 1  # zero.jpg
    names = sorted(p.name for p in maps.iterdir())
    assert names == ["photo-2.blurmap.png", "photo.blurmap.png", "sharp.blurmap.png"]
    with Image.open(maps / "sharp.blurmap.png") as im:
        assert im.format == "PNG" and im.size == (640, 480) and im.mode == "RGB"
        pixels = np.asarray(im)
    original = np.asarray(Image.open(photos["pair"] / "sharp.jpg").convert("RGB"))
    assert np.abs(pixels.astype(int) - original).mean() > 5  # the overlay and the text are drawn on it


@needs_model
def test_save_maps_folder_that_cannot_be_made_is_one_line(photos, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"not a folder")
    proc = run_cli("scan", photos["pair"] / "sharp.jpg", "--save-maps", blocker / "maps")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"error: cannot create {blocker / 'maps'}: Not a directory" in proc.stderr.splitlines()
    assert blocker.read_bytes() == b"not a folder"


@needs_model
def test_newlines_in_file_names_never_split_a_message(photos, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "bl\nur.jpg").write_bytes((photos["pair"] / "blurred.jpg").read_bytes())
    (folder / "ze\nro.jpg").write_bytes(b"")
    proc = run_cli("scan", folder, "--move-blurry", tmp_path / "out")
    assert proc.returncode == 1  # the empty file
    assert proc.stderr.splitlines() == [f"error: {folder}/ze\\nro.jpg: empty file (0 bytes)"]
    journal = next((tmp_path / "out").glob(".blur-detect-journal-*.jsonl"))
    undone = run_cli("undo", journal)
    assert undone.returncode == 0 and (folder / "bl\nur.jpg").exists()
    lines = (proc.stdout + undone.stdout).splitlines()
    assert not [ln for ln in lines if ln.startswith(("ur.jpg", "ro.jpg"))], lines
    assert f"moved {folder}/bl\\nur.jpg -> {tmp_path}/out/bl\\nur.jpg" in lines


def test_demo_pages_are_full_size_and_blurred_as_named(tmp_path):
    from PIL import Image

    from ensemble import demo
    from fixtures import require_fonts

    require_fonts()
    pages = {p.stem: np.asarray(Image.open(p).convert("L"), np.float32) for p in demo.build_pages(tmp_path)}
    assert set(pages) == {"page_sharp", "page_soft", "page_soft_bottom"}
    assert all(g.shape == (3508, 2480) for g in pages.values())
    top, bottom = slice(0, 1400), slice(2100, 3508)  # the blur fades in between 45 and 55 % of the height
    sharp, half = pages["page_sharp"], pages["page_soft_bottom"]
    assert np.abs(half[top] - sharp[top]).mean() < 1.0 < np.abs(half[bottom] - sharp[bottom]).mean()
    assert np.abs(pages["page_soft"][top] - sharp[top]).mean() > 1.0


def test_demo_folder_that_cannot_be_made_is_one_line(tmp_path, capsys):
    from ensemble import demo

    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"not a folder")
    assert demo.main([str(blocker / "photos")]) == 1
    assert capsys.readouterr().err == f"error: cannot create {blocker / 'photos'}: Not a directory\n"
    assert blocker.read_bytes() == b"not a folder"


# --------------------------------------------------------------------------------------------------------------
# Interruption


@needs_model
def test_ctrl_c_keeps_written_lines_and_exits_130(photos, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    src = photos["pair"] / "sharp.jpg"
    for i in range(400):
        os.link(src, folder / f"img{i:04d}.jpg")
    out = tmp_path / "partial.jsonl"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "ensemble", "scan", folder, "--format", "jsonl", "--output", out,
                             "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=default_sigint)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    m = re.search(r"^interrupted after (\d+) images$", stderr, re.M)
    assert m, stderr
    lines = out.read_text().splitlines()
    assert 3 <= len(lines) < 400 and int(m.group(1)) == len(lines)
    assert all(json.loads(line)["label"] != "error" for line in lines)


def _interrupt_on_call(monkeypatch, n: int, before=None) -> None:
    """Make the scan's n-th image raise KeyboardInterrupt, as a Ctrl-C would, after calling ``before()``."""
    import ensemble.scan as scan

    real = scan.score_one
    calls = []

    def score(detector, path, with_map=False, *scale):
        calls.append(path)
        if len(calls) == n:
            if before is not None:
                before()
            raise KeyboardInterrupt
        return real(detector, path, with_map, *scale)

    monkeypatch.setattr(scan, "score_one", score)


@needs_model
def test_jsonl_lines_are_on_disk_as_soon_as_scored(photos, tmp_path, monkeypatch, capsys):
    out = tmp_path / "stream.jsonl"
    seen = []
    _interrupt_on_call(monkeypatch, 3, lambda: seen.append(out.read_text().splitlines()))
    rc = cli.main(["scan", "-q", "--workers", "1", "--format", "jsonl", "--output", str(out), str(photos["formats"])])
    assert rc == 130
    # While the third image was being read, the first two lines were already written out in full.
    assert len(seen[0]) == 2 and all(json.loads(line)["label"] != "error" for line in seen[0])
    assert out.read_text().splitlines() == seen[0]
    assert capsys.readouterr().err.strip() == "interrupted after 2 images"


@needs_model
def test_interrupt_in_process_writes_partial_report(photos, monkeypatch, capsys):
    _interrupt_on_call(monkeypatch, 3)
    rc = cli.main(["scan", "-q", "--workers", "2", "--format", "json", str(photos["formats"])])
    out, err = capsys.readouterr()
    assert rc == 130
    records = json.loads(out)
    assert len(records) <= 2 and all(r["label"] != "error" for r in records)  # workers finish in any order
    assert err.strip() == f"interrupted after {len(records)} image{'' if len(records) == 1 else 's'}"


# --------------------------------------------------------------------------------------------------------------
# --scale


def test_scale_option_has_one_definition():
    """Every command's --scale takes ensemble.detector's scales, with the same help, from cli_common: mirrored
    there so that building the parsers imports no NumPy."""
    from ensemble import cli_common, detector

    assert cli_common.SCALES == detector.SCALES and cli_common.DEFAULT_SCALE == detector.DEFAULT_SCALE
    parser = cli.build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("scan", "serve", "cameras"):
        option = next(a for a in subs[name]._actions if a.dest == "scale")
        assert tuple(option.choices) == detector.SCALES and option.default is None, name
        assert all(f"{scale}: {cli_common.SCALE_HELP[scale]}" in option.help.replace("%%", "%")
                   for scale in detector.SCALES), name
        assert "(default: auto)" in option.help, name
    proc = run_cli("scan", "x.jpg", "--scale", "huge")
    assert proc.returncode == 2 and "invalid choice: 'huge'" in proc.stderr and "Traceback" not in proc.stderr


@needs_model
def test_scale_reaches_the_detector(photos, monkeypatch, capsys):
    """The scan hands --scale (default: the detector's default, auto) to every image's scoring."""
    import ensemble.scan as scan

    real, asked = scan.score_one, []

    def score(detector, path, with_map=False, *scale):
        asked.append(scale)
        return real(detector, path, with_map, *scale)

    monkeypatch.setattr(scan, "score_one", score)
    for argv, expected in (([], "auto"), (["--scale", "screen"], "screen"), (["--scale", "auto"], "auto")):
        asked.clear()
        rc = cli.main(["scan", "-q", "--format", "json", *argv, str(photos["pair"])])
        records = json.loads(capsys.readouterr().out)
        assert rc == 0 and asked == [(expected,)] * 2, (argv, asked)
        assert [r["scale"] for r in records] == ["screen", "screen"]  # 640 x 480: the same at every scale
        assert all(r["content"] in ("photo", "document") for r in records), records


@needs_model
def test_native_scale_without_its_meta_network_is_one_line_per_large_image(photos, tmp_path,
                                                                           model_without_native_meta):
    """--scale native with a model that has no final_model/meta_native.onnx: a warning, then an error record
    of one line for each image larger than the analysis side; the scan goes on to the end."""
    model = ("--model", model_without_native_meta)
    folder = tmp_path / "large"
    save_jpeg(folder / "a.jpg", make_photo(41, (960, 1280)))
    save_jpeg(folder / "b.jpg", make_photo(42, (900, 1200)))
    (folder / "c.jpg").write_bytes(b"")
    csv_out = tmp_path / "report.csv"
    proc = run_cli("scan", folder, "--scale", "native", "--format", "csv", "--output", csv_out, *model)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "--scale native" in warnings[0] and "meta_native.onnx" in warnings[0], proc.stderr
    errors = sorted(ln for ln in proc.stderr.splitlines() if ln.startswith("error:"))
    assert len(errors) == 3, proc.stderr
    assert all(f"{n}.jpg: " in ln and "native-scale meta-network" in ln for n, ln in zip("ab", errors)), errors
    assert "c.jpg: empty file" in errors[2]
    rows = {Path(r["path"]).name: r for r in csv.DictReader(io.StringIO(csv_out.read_text()))}
    assert list(rows["a.jpg"]) == FIELDS and set(rows) == {"a.jpg", "b.jpg", "c.jpg"}
    for name in ("a.jpg", "b.jpg"):
        assert rows[name]["label"] == "error" and "native-scale meta-network" in rows[name]["error"]
        assert rows[name]["scale"] == rows[name]["content"] == ""
    # At screen scale (and at auto, which resolves to it without the meta-network) they are scored.
    for scale in ("screen", "auto"):
        proc, records = scan_json(folder / "a.jpg", "--scale", scale, *model)
        assert proc.returncode == 0 and records[0]["scale"] == "screen", (scale, proc.stderr)
        assert "warning" not in proc.stderr


@needs_model
def test_native_scale_judges_a_small_image_as_on_a_screen(photos, capsys, model_without_native_meta):
    """--scale native with a model that has no native-scale meta-network: an image no larger than the analysis
    side is judged as on a screen, without an error."""
    rc = cli.main(["scan", "-q", "--format", "json", "--scale", "native", "--model", str(model_without_native_meta),
                   str(photos["pair"] / "sharp.jpg")])
    records = json.loads(capsys.readouterr().out)
    assert rc == 0 and records[0]["scale"] == "screen" and records[0]["error"] is None, records


def test_scale_does_not_go_with_plan(tmp_path):
    plan = tmp_path / "scores.parquet"
    plan.mkdir()
    proc = run_cli("scan", tmp_path, "--plan", plan, "--move-blurry", tmp_path / "out", "--scale", "screen")
    assert proc.returncode == 2 and "--scale does not go with --plan" in proc.stderr, proc.stderr
