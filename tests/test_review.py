"""Tests of the review page's server side (``ensemble.review``) through FastAPI's TestClient.

Most tests use :class:`NameDetector`, a stand-in that decodes files with the real ``ensemble.imageio`` (so bad files
fail as they do in real life) but takes the blur probability from the file name (``p73_x.jpg`` scores 0.73): the
rules (colours, what Apply moves) can then be checked on exact values. One test runs the shipped model.
The browser test is ``test_review_browser.py``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures import blur, make_photo, save_jpeg

fastapi = pytest.importorskip("fastapi")
from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from ensemble import sorting  # noqa: E402
from ensemble.detector import BlurResult  # noqa: E402
from ensemble.imageio import load_image  # noqa: E402
from ensemble.review import decisions, pictures  # noqa: E402
from ensemble.review.paths import CACHE_DIR, STATE_FILE, BadPath, client_path  # noqa: E402
from ensemble.review.service import ReviewService  # noqa: E402

WAIT = 30.0  # seconds allowed for a small scan on a busy 2-core machine (a hang fails, slowness does not)


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def name_p(path: str) -> float:
    m = re.search(r"p(\d\d)", os.path.basename(path))
    return int(m.group(1)) / 100 if m else 0.0


class NameDetector:
    """Stand-in for BlurDetector: real decoding, probability from the file name (``pNN``), optionally ``flip``ped.

    ``gate`` (a Semaphore) makes every decode wait for a release, so a test can hold the scan mid-way.
    """

    analysis_side = 640

    def __init__(self, name: str = "names", threshold: float = 0.5, gate=None, flip: bool = False, after=None,
                 delay: float = 0.0):
        self.metadata = {"name": name}
        self.threshold = threshold
        self.gate, self.flip, self.after, self.delay = gate, flip, after, delay
        self.calls: list[str] = []
        self.scales: list = []  # the scale each decode was asked for

    def decode(self, path, scale=None):
        self.scales.append(scale)
        if self.gate is not None:
            self.gate.acquire()
        if self.delay:
            time.sleep(self.delay)
        self.calls.append(os.path.basename(path))
        if self.after is not None:
            self.after(self)
        return path, load_image(path, "L", self.analysis_side)

    def predict_decoded(self, decoded, with_map=True, scale=None):
        out = []
        for path, dec in decoded:
            p = name_p(path)
            p = 1 - p if self.flip else p
            out.append(BlurResult(p, "blurry" if p >= self.threshold else "sharp", 123.0, dec.width, dec.height, p,
                                  blur_map=np.array([[p, np.nan], [0.0, 1.0]]) if with_map else None,
                                  grid_origin=(8, 8), patch_size=32, scale="native" if scale == "native" else "screen",
                                  content="document" if "doc" in os.path.basename(path) else "photo"))
        return out


def photo(path: Path, seed: int = 0, size=(96, 128)) -> Path:
    return save_jpeg(path, make_photo(seed, size))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(root: Path) -> dict[str, str]:
    """Path -> SHA-256 of every photo below root, leaving out the review's own files."""
    return {p.relative_to(root).as_posix(): sha(p) for p in sorted(root.rglob("*"))
            if p.is_file() and not p.relative_to(root).as_posix().startswith((CACHE_DIR, STATE_FILE, "_blurry"))}


def until(condition, timeout: float = WAIT, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def review(root: Path, detector=None, get_detector=None, **kw):
    """A started ReviewService over ``root`` and a TestClient on an app that includes only its router."""
    detector = detector or NameDetector()
    service = ReviewService(root, get_detector or (lambda: detector), **kw)
    app = FastAPI()
    app.include_router(service.router)
    service.start()
    try:
        with TestClient(app) as client:
            yield service, client
    finally:
        assert service.stop(10.0), "the scan thread did not stop"


def results(client, since: int = 0, epoch: str = "") -> dict:
    r = client.get("/api/review/results", params={"since": since, "epoch": epoch})
    assert r.status_code == 200, r.text
    return r.json()


def items(client) -> list[dict]:
    return results(client)["items"]


@pytest.fixture
def folder(tmp_path) -> Path:
    """A folder of named photos, a sub-folder, a bad file, and the folders the review must skip."""
    root = tmp_path / "photos"
    for i, name in enumerate(["p10_a.jpg", "p90_b.jpg", "p55_c.jpg", "sub/p70_d.jpg", "p05_e.jpg"]):
        photo(root / name, seed=i)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    (root / "notes.txt").write_text("not an image")
    photo(root / "_blurry" / "p99_moved_before.jpg", seed=9)  # an earlier apply's photos are not reviewed again
    photo(root / CACHE_DIR / "p99_cache.jpg", seed=9)
    return root


# ----------------------------------------------------------------------------------------------------------------
# Scan, progress, sorting


def test_scan_lists_scores_and_sorts_blurriest_first(folder):
    with review(folder) as (service, client):
        assert service.wait_idle(WAIT)
        got = items(client)
        status = client.get("/api/review/status").json()
    assert [i["path"] for i in got] == ["p90_b.jpg", "sub/p70_d.jpg", "p55_c.jpg", "p10_a.jpg", "p05_e.jpg",
                                       "broken.jpg"]
    assert [i["p"] for i in got[:5]] == [0.9, 0.7, 0.55, 0.1, 0.05]
    bad = got[-1]
    assert bad["p"] is None and bad["error"] and "\n" not in bad["error"]
    assert all(i["w"] == 128 and i["h"] == 96 for i in got[:5])
    assert status["phase"] == "idle"
    assert (status["total"], status["done"], status["errors"], status["pending"]) == (6, 6, 1, 0)
    assert status["threshold"] == 0.5 and status["band"] == decisions.UNCERTAIN_BAND


def test_results_arrive_as_they_are_scored_with_progress(folder):
    gate = threading.Semaphore(0)
    detector = NameDetector(gate=gate)
    with review(folder, detector, workers=1, batch=2) as (service, client):
        first = until(lambda: (r := results(client)) and r["items"] and r, what="the listing")
        assert all(i["p"] is None and not i["error"] for i in first["items"])  # listed, not scored yet
        assert first["status"]["total"] == 6 and first["status"]["done"] == 0
        gate.release()
        gate.release()
        until(lambda: client.get("/api/review/status").json()["done"] == 2, what="two scores")
        status = client.get("/api/review/status").json()
        assert status["phase"] == "scoring" and status["pending"] == 4
        # An incremental poll sends only what changed since the first answer.
        later = results(client, first["seq"], first["epoch"])
        assert not later["reset"]
        assert sorted(i["path"] for i in later["items"]) == ["broken.jpg", "p05_e.jpg"]  # listing order
        assert results(client, later["seq"], later["epoch"])["items"] == []
        # A poll from before a restart (another epoch) gets everything again.
        assert results(client, later["seq"], "stale")["reset"]
        for _ in range(10):
            gate.release()
        assert service.wait_idle(WAIT)
    assert sorted(detector.calls) == sorted(["p10_a.jpg", "p90_b.jpg", "p55_c.jpg", "p70_d.jpg", "p05_e.jpg",
                                             "broken.jpg"])


def test_a_model_switch_is_picked_up_by_the_next_batch(folder):
    new = NameDetector(name="model-b", flip=True)
    current = []

    def switch_after_first(det):
        current[:] = [new]

    old = NameDetector(name="model-a", after=switch_after_first)
    current.append(old)
    with review(folder, get_detector=lambda: current[0], workers=1, batch=1) as (service, client):
        assert service.wait_idle(WAIT)
        got = {i["path"]: i["p"] for i in items(client) if i["p"] is not None}
    assert len(old.calls) == 1  # one batch of one photo, then the switch
    assert got == {k: round(1 - name_p(k), 4) for k in got}  # every photo, the first too, scored by the new model
    assert len(got) == 5


def test_scores_are_cached_on_disk_for_a_restart(folder):
    with review(folder, NameDetector()) as (service, client):
        assert service.wait_idle(WAIT)
        before = {i["path"]: i["p"] for i in items(client)}
    cache = folder / CACHE_DIR / "results.jsonl"
    with open(cache, "a") as f:  # junk and a torn line are skipped, not fatal
        f.write('{"path": "p10_a.jpg", "p": "nonsense"}\nnot json\n{"path": "x", "si')
    again = NameDetector()
    with review(folder, again) as (service, client):
        assert service.wait_idle(WAIT)
        assert {i["path"]: i["p"] for i in items(client)} == before
    assert again.calls == ["broken.jpg"]  # only the unreadable file is tried again: failures are not cached

    photo(folder / "p10_a.jpg", seed=42)  # an edited photo is scored afresh
    os.utime(folder / "p10_a.jpg", ns=(1, 10**18))
    edited = NameDetector()
    with review(folder, edited) as (service, client):
        assert service.wait_idle(WAIT)
    assert sorted(edited.calls) == ["broken.jpg", "p10_a.jpg"]

    other = NameDetector(name="another-model")  # another model scores everything again
    with review(folder, other) as (service, client):
        assert service.wait_idle(WAIT)
    assert len(other.calls) == 6


def test_unreadable_files_are_error_tiles_and_the_scan_goes_on(tmp_path):
    root = tmp_path / "photos"
    photo(root / "p80_good.jpg")
    (root / "empty.jpg").write_bytes(b"")
    good = (root / "p80_good.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "text.png").write_text("hello")
    os.symlink(root / "missing.jpg", root / "dangling.jpg")
    os.symlink("loop.jpg", root / "loop.jpg")  # a link to itself: resolving it raises, which ended the scan thread
    with review(root) as (service, client):
        assert service.wait_idle(WAIT)
        got = {i["path"]: i for i in items(client)}
        assert got["p80_good.jpg"]["p"] == 0.8
        assert got["loop.jpg"]["p"] is None
        assert got["loop.jpg"]["error"] == "symbolic link loops or cannot be followed: not read"
        for name in ("empty.jpg", "truncated.jpg", "text.png", "dangling.jpg"):
            assert got[name]["p"] is None and got[name]["error"], name
            r = client.get("/api/review/thumb", params={"path": name})
            assert r.status_code in (404, 422) and "\n" not in r.json()["detail"], (name, r.text)
            assert client.get("/api/review/overlay", params={"path": name}).status_code in (404, 422)
        assert client.get("/api/review/status").json()["errors"] == 5


def test_a_missing_model_is_reported_and_photos_still_show(folder):
    def no_model():
        raise FileNotFoundError("no shipped model found")

    with review(folder, get_detector=no_model) as (service, client):
        status = until(lambda: (s := client.get("/api/review/status").json())["phase"] == "waiting" and s)
        assert status["error"] == "cannot load the model: no shipped model found"
        assert client.get("/api/review/thumb", params={"path": "p90_b.jpg"}).status_code == 200
        r = client.get("/api/review/overlay", params={"path": "p90_b.jpg"})
        assert r.status_code == 409 and r.json()["detail"] == "not scored yet"


def test_stop_is_prompt_mid_scan(tmp_path):
    root = tmp_path / "many"
    for i in range(40):
        photo(root / f"p50_{i:02d}.jpg", seed=i % 3)
    detector = NameDetector(delay=0.1)
    service = ReviewService(root, lambda: detector, workers=2)
    service.start()
    until(lambda: len(detector.calls) >= 2, what="the scan to start")
    assert service.stop(5.0)
    assert len(detector.calls) < 40
    assert not service.wait_idle(0)


# ----------------------------------------------------------------------------------------------------------------
# Pictures


def test_thumbnails_are_made_once_and_remade_for_an_edited_photo(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    photo(root / "p60_big.jpg", seed=1, size=(480, 960))
    decodes = []
    real = pictures.load_image

    def counting(path, *args, **kw):
        decodes.append(os.path.basename(path))
        return real(path, *args, **kw)

    monkeypatch.setattr(pictures, "load_image", counting)
    with review(root) as (service, client):
        assert service.wait_idle(WAIT)
        item = items(client)[0]
        r1 = client.get("/api/review/thumb", params={"path": item["path"], "v": item["v"]})
        r2 = client.get("/api/review/thumb", params={"path": item["path"], "v": item["v"]})
        assert r1.status_code == 200 and r1.headers["content-type"] == "image/jpeg"
        assert "immutable" in r1.headers["cache-control"]
        assert r1.content == r2.content and decodes == ["p60_big.jpg"]
        thumb = Image.open(io.BytesIO(r1.content))
        assert thumb.format == "JPEG" and thumb.size == (640, 320)  # shorter side 320, 2:1 at most
        cached = list((root / CACHE_DIR / "thumbs").rglob("*.jpg"))
        assert len(cached) == 1
        assert (root / CACHE_DIR / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")

        photo(root / "p60_big.jpg", seed=2, size=(480, 640))  # edited: new content, new size
        client.post("/api/review/rescan")
        new = until(lambda: (i := items(client)[0])["v"] != item["v"] and i, what="the rescan")
        r3 = client.get("/api/review/thumb", params={"path": new["path"], "v": new["v"]})
        assert r3.status_code == 200 and r3.content != r1.content
        assert Image.open(io.BytesIO(r3.content)).size == (427, 320)
        assert decodes == ["p60_big.jpg", "p60_big.jpg"]
        # A stale version in the URL still gets the current picture, but not cached for good.
        assert "immutable" not in client.get("/api/review/thumb", params={"path": new["path"], "v": item["v"]}
                                             ).headers["cache-control"]


def test_full_image_and_blur_map_overlay(tmp_path):
    root = tmp_path / "photos"
    jpeg = photo(root / "p70_photo.jpg", seed=3)
    Image.fromarray(make_photo(4, (96, 128))).save(root / "p20_really_png.jpg", "PNG")  # the name lies
    Image.fromarray(make_photo(5, (96, 128))).save(root / "p30_scan.tif", "TIFF")
    with review(root) as (service, client):
        assert service.wait_idle(WAIT)
        r = client.get("/api/review/image", params={"path": "p70_photo.jpg"})
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content == jpeg.read_bytes()
        assert r.headers["x-content-type-options"] == "nosniff"
        r = client.get("/api/review/image", params={"path": "p20_really_png.jpg"})
        assert r.headers["content-type"] == "image/png"  # sniffed from the bytes
        r = client.get("/api/review/image", params={"path": "p30_scan.tif"})
        assert r.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(r.content)).format == "JPEG"

        r = client.get("/api/review/overlay", params={"path": "p70_photo.jpg"})
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        overlay = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(int)
        plain = load_image(jpeg, "RGB", 640).pixels.astype(int)
        assert overlay.shape == plain.shape
        # The map's patches (32 px from (8, 8)) are tinted, the margin outside the grid is not.
        assert np.abs(overlay[20:36, 20:36] - plain[20:36, 20:36]).mean() > 20
        assert np.abs(overlay[80:, 80:] - plain[80:, 80:]).mean() < 8


# ----------------------------------------------------------------------------------------------------------------
# Confinement


@pytest.fixture
def trap(tmp_path):
    """A root with one photo, links that lead out of it, and a secret photo outside it."""
    root = tmp_path / "root"
    photo(root / "p50_inside.jpg")
    secret_dir = tmp_path / "secret"
    secret = photo(secret_dir / "p99_secret.jpg", seed=7)
    os.symlink(secret, root / "link.jpg")
    os.symlink(secret_dir, root / "linkdir")
    (root / "sub").mkdir()
    return root, secret


ATTACKS = {
    "dotdot": "../secret/p99_secret.jpg",
    "dotdot-in-sub": "sub/../../secret/p99_secret.jpg",
    "absolute": "{secret}",
    "etc-passwd": "/etc/passwd",
    "dot": "./p50_inside.jpg",
    "nul": "p50_inside.jpg\x00.png",
    "backslash-dotdot": "..\\secret\\p99_secret.jpg",
    "link-to-file-outside": "link.jpg",
    "link-to-folder-outside": "linkdir/p99_secret.jpg",
    "empty-part": "sub//p50_inside.jpg",
}
# Percent-encoded forms, written into the raw URL so the server decodes them itself.
RAW_ATTACKS = {
    "encoded-dotdot": "%2e%2e%2fsecret%2fp99_secret.jpg",
    "encoded-slash": "..%2fsecret%2fp99_secret.jpg",
    "double-encoded": "..%252fsecret%252fp99_secret.jpg",
    "overlong-utf8": "%c0%ae%c0%ae%2fsecret%2fp99_secret.jpg",
    "encoded-absolute": "%2fetc%2fpasswd",
}


@pytest.mark.parametrize("route", ["thumb", "image", "overlay"])
def test_picture_routes_refuse_every_way_out_of_the_root(trap, route):
    root, secret = trap
    secret_bytes = secret.read_bytes()
    detector = NameDetector()
    with review(root, detector) as (service, client):
        assert service.wait_idle(WAIT)
        assert client.get(f"/api/review/{route}", params={"path": "p50_inside.jpg"}).status_code == 200
        for name, attack in ATTACKS.items():
            r = client.get(f"/api/review/{route}", params={"path": attack.format(secret=secret)})
            assert r.status_code in (400, 404, 422), (name, r.status_code)
            assert secret_bytes[:64] not in r.content, name
            if name not in ("link-to-file-outside", "backslash-dotdot"):
                assert r.status_code == 400, (name, r.text)
        for name, raw in RAW_ATTACKS.items():
            r = client.get(f"/api/review/{route}?path={raw}")
            assert r.status_code in (400, 404), (name, r.status_code)
            assert secret_bytes[:64] not in r.content, name
        listed = {i["path"]: i for i in items(client)}
    # The link out of the root is listed as an error tile and never read; the linked folder is not entered.
    assert listed["link.jpg"]["error"] == "symbolic link leads outside the folder: not read"
    assert "linkdir/p99_secret.jpg" not in listed
    assert detector.calls == ["p50_inside.jpg"]


def test_changes_refuse_paths_out_of_the_root(trap):
    root, secret = trap
    with review(root) as (service, client):
        assert service.wait_idle(WAIT)
        for attack in ("../secret/p99_secret.jpg", str(secret), "link.jpg"):
            r = client.put("/api/review/override", json={"path": attack, "decision": "reject"})
            assert r.status_code in (400, 422), (attack, r.text)
        r = client.post("/api/review/apply", json={"threshold": 0.5, "paths": ["../secret/p99_secret.jpg",
                                                                               str(secret), "link.jpg"]})
        assert r.status_code == 200 and r.json()["done"] == []
    assert secret.exists() and (root / "link.jpg").is_symlink()
    assert not json.loads((root / STATE_FILE).read_text() if (root / STATE_FILE).exists() else "{}").get("overrides")


def test_client_path_rules(tmp_path):
    root = tmp_path.resolve()
    (root / "a").mkdir()
    assert client_path(root, "a/b.jpg") == root / "a" / "b.jpg"
    assert client_path(root, "name with spaces & ünïcode.jpg").name == "name with spaces & ünïcode.jpg"
    for bad in ("", "/x.jpg", "../x.jpg", "a/../../x.jpg", "a/./b.jpg", "a//b.jpg", "x\x00.jpg", "C:/x.jpg",
                "x" * 5000):
        with pytest.raises(BadPath):
            client_path(root, bad)


# ----------------------------------------------------------------------------------------------------------------
# Overrides and threshold


def test_overrides_persist_across_reload_and_restart(folder):
    with review(folder) as (service, client):
        assert service.wait_idle(WAIT)
        seq = results(client)["seq"]
        assert client.put("/api/review/override", json={"path": "p90_b.jpg", "decision": "keep"}).status_code == 200
        assert client.put("/api/review/override", json={"path": "sub/p70_d.jpg", "decision": "reject"}
                          ).status_code == 200
        assert client.put("/api/review/override", json={"path": "p10_a.jpg", "decision": "reject"}).status_code == 200
        assert client.put("/api/review/override", json={"path": "p10_a.jpg", "decision": None}).status_code == 200
        epoch = results(client)["epoch"]
        changed = {i["path"]: i["o"] for i in results(client, seq, epoch)["items"]}  # other tabs see the change
        assert changed == {"p90_b.jpg": "keep", "sub/p70_d.jpg": "reject", "p10_a.jpg": None}
        assert client.put("/api/review/override", json={"path": "p90_b.jpg", "decision": "delete"}).status_code == 422
        assert client.put("/api/review/override", json={"path": "nope.jpg", "decision": "keep"}).status_code == 404
        assert client.put("/api/review/override", json={"path": "broken.jpg", "decision": "reject"}).status_code == 200
    saved = json.loads((folder / STATE_FILE).read_text())
    assert saved["overrides"] == {"broken.jpg": "reject", "p90_b.jpg": "keep", "sub/p70_d.jpg": "reject"}
    with review(folder) as (service, client):  # a restart
        got = {i["path"]: i["o"] for i in until(lambda: items(client), what="the listing")}
    assert got["p90_b.jpg"] == "keep" and got["sub/p70_d.jpg"] == "reject" and got["p10_a.jpg"] is None


def test_an_unreadable_state_file_is_set_aside_not_lost(folder):
    (folder / STATE_FILE).write_text("{ this is not json")
    with review(folder) as (service, client):
        assert service.wait_idle(WAIT)
        assert client.put("/api/review/override", json={"path": "p90_b.jpg", "decision": "keep"}).status_code == 200
    assert (folder / (STATE_FILE + ".unreadable")).read_text() == "{ this is not json"
    assert json.loads((folder / STATE_FILE).read_text())["overrides"] == {"p90_b.jpg": "keep"}


def test_threshold_is_saved_and_can_be_reset(folder):
    with review(folder, NameDetector(threshold=0.6)) as (service, client):
        assert service.wait_idle(WAIT)
        assert client.get("/api/review/status").json()["threshold"] == 0.6  # the model's own
        assert client.put("/api/review/threshold", json={"threshold": 0.3}).json() == {"threshold": 0.3}
        for bad in (1.5, -0.1, "high"):
            assert client.put("/api/review/threshold", json={"threshold": bad}).status_code == 422
    with review(folder, NameDetector(threshold=0.6)) as (service, client):
        status = client.get("/api/review/status").json()
        assert status["threshold"] == 0.3 and status["threshold_saved"]
        assert service.wait_idle(WAIT)
        assert client.put("/api/review/threshold", json={"threshold": None}).json() == {"threshold": 0.6}


def test_verdict_bands():
    v = decisions.verdict
    assert [v(p, 0.5) for p in (0.0, 0.39, 0.41, 0.5, 0.59, 0.61, 1.0)] == [
        "sharp", "sharp", "uncertain", "uncertain", "uncertain", "blurry", "blurry"]
    assert v(None, 0.5) is None
    assert v(0.25, 0.2) == "uncertain" and v(0.35, 0.2) == "blurry"


def test_rejection_rule():
    photos = [("blurry", 0.9), ("kept", 0.95), ("uncertain", 0.55), ("rejected-sharp", 0.1), ("sharp", 0.2),
              ("unreadable", None), ("rejected-unreadable", None)]
    overrides = {"kept": "keep", "rejected-sharp": "reject", "rejected-unreadable": "reject"}
    got = decisions.rejected(photos, overrides, 0.5)
    assert [(r.key, r.reason) for r in got] == [("blurry", "blurry"), ("rejected-sharp", "rejected"),
                                                ("rejected-unreadable", "rejected")]
    # A lower threshold makes the uncertain one blurry (and the sharp one uncertain).
    assert [r.key for r in decisions.rejected(photos, overrides, 0.3)] == ["blurry", "uncertain", "rejected-sharp",
                                                                             "rejected-unreadable"]


# ----------------------------------------------------------------------------------------------------------------
# Apply and undo


def test_plan_apply_and_undo_round_trip(tmp_path):
    root = tmp_path / "photos"
    names = ["p95_blurry.jpg", "sub/p92_kept.jpg", "p55_uncertain.jpg", "p56_uncertain_rejected.jpg",
             "p10_sharp_rejected.jpg", "p05_sharp.jpg", "sub/deeper/p97_blurry.jpg"]
    for i, name in enumerate(names):
        photo(root / name, seed=i)
    before = snapshot(root)
    detector = NameDetector()
    with review(root, detector) as (service, client):
        assert service.wait_idle(WAIT)
        for path, choice in (("sub/p92_kept.jpg", "keep"), ("p56_uncertain_rejected.jpg", "reject"),
                             ("p10_sharp_rejected.jpg", "reject")):
            assert client.put("/api/review/override", json={"path": path, "decision": choice}).status_code == 200
        plan = client.get("/api/review/plan", params={"threshold": 0.5}).json()
        assert [(i["path"], i["reason"]) for i in plan["items"]] == [
            ("sub/deeper/p97_blurry.jpg", "blurry"), ("p95_blurry.jpg", "blurry"),
            ("p56_uncertain_rejected.jpg", "rejected"), ("p10_sharp_rejected.jpg", "rejected")]
        assert plan["uncertain_staying"] == 1 and plan["kept_blurry"] == 1 and plan["dest"] == "_blurry"

        confirmed = [i["path"] for i in plan["items"]] + ["p05_sharp.jpg"]  # not rejected: must not move
        report = client.post("/api/review/apply", json={"threshold": 0.5, "paths": confirmed}).json()
        assert report["failed"] == [] and report["error"] is None and report["not_moved"] == 1
        moved = {d["from"]: d["to"] for d in report["done"]}
        assert moved == {i["path"]: f"_blurry/{i['path']}" for i in plan["items"]}
        assert report["journal"].startswith("_blurry/.blur-detect-journal-")
        # On disk: exactly the rejected photos moved, sub-folders kept below _blurry, nothing else touched.
        after = snapshot(root)
        assert set(after) == set(before) - set(moved)
        for src, dst in moved.items():
            assert not (root / src).exists() and sha(root / dst) == before[src]
        assert {i["path"] for i in items(client)} == set(before) - set(moved)
        assert client.get("/api/review/status").json()["undo_available"] == 1

        calls = len(detector.calls)
        undone = client.post("/api/review/undo").json()
        assert undone["failed"] == [] and undone["settled"] and len(undone["done"]) == 4
        assert snapshot(root) == before  # every photo back, byte for byte
        assert not [p for p in (root / "_blurry").rglob("*") if p.is_file() and not p.name.endswith(".undone")]
        until(lambda: {i["path"] for i in items(client)} == set(before), what="the restored photos")
        assert service.wait_idle(WAIT)
        assert len(detector.calls) == calls  # their scores came back from the cache
        assert client.post("/api/review/undo").status_code == 409
        assert client.get("/api/review/status").json()["undo_available"] == 0
        assert {i["path"]: i["o"] for i in items(client)}["p10_sharp_rejected.jpg"] == "reject"  # choices survive


def test_apply_and_undo_report_progress_file_by_file(tmp_path, monkeypatch):
    from ensemble.review import actions

    root = tmp_path / "photos"
    for i in range(5):
        photo(root / f"p9{i}_blurry.jpg", seed=i)
    seen = []

    def watching(real):
        def run(*args):
            *rest, progress = args

            def spy(done, total):
                progress(done, total)
                seen.append(service.status()["work"])  # what the page's status poll would get now
            return real(*rest, spy)
        return run

    monkeypatch.setattr(actions, "apply", watching(actions.apply))
    monkeypatch.setattr(actions, "undo_journal", watching(actions.undo_journal))
    with review(root) as (service, client):
        assert service.wait_idle(WAIT)
        assert client.get("/api/review/status").json()["work"] is None
        paths = [i["path"] for i in client.get("/api/review/plan", params={"threshold": 0.5}).json()["items"]]
        assert len(client.post("/api/review/apply", json={"threshold": 0.5, "paths": paths}).json()["done"]) == 5
        assert seen == [{"verb": "move", "done": n, "total": 5} for n in range(6)]
        assert client.get("/api/review/status").json()["work"] is None  # cleared when it ends
        seen.clear()
        assert len(client.post("/api/review/undo").json()["done"]) == 5
        assert seen == [{"verb": "restore", "done": n, "total": 5} for n in range(6)]
        assert client.get("/api/review/status").json()["work"] is None


def test_undo_refuses_a_planted_journal(tmp_path, folder):
    outside = photo(tmp_path / "elsewhere" / "p50_victim.jpg")
    journal = folder / "_blurry" / ".blur-detect-journal-planted.jsonl"
    entry = {"op": "move", "src": str(tmp_path / "stolen.jpg"), "dst": str(outside), "sha256": sha(outside),
             "size": outside.stat().st_size, "time": "2024-01-01T00:00:00+00:00"}
    journal.write_text(json.dumps(entry) + "\n")
    (folder / STATE_FILE).write_text(json.dumps({"journals": ["_blurry/" + journal.name]}))
    with review(folder) as (service, client):
        r = client.post("/api/review/undo").json()
        assert "refused" in r["error"] and "not signed" in r["error"] and r["done"] == []
        assert r["settled"] and client.get("/api/review/status").json()["undo_available"] == 0
    assert outside.exists() and not (tmp_path / "stolen.jpg").exists()


def test_undo_refuses_a_signed_journal_whose_paths_leave_the_folder(tmp_path, folder):
    # A journal this user signed for another folder, copied into this one, must not move files out of it.
    other = tmp_path / "other"
    victim = photo(other / "p50_victim.jpg")
    journal = sorting.new_journal_path(other / "_blurry")
    list(sorting.apply_moves(sorting.plan_moves([victim], other / "_blurry"), journal))
    planted = folder / "_blurry" / Path(journal).name
    shutil.copy(journal, planted)
    (folder / STATE_FILE).write_text(json.dumps({"journals": ["_blurry/" + planted.name]}))
    with review(folder) as (service, client):
        r = client.post("/api/review/undo").json()
        assert "refused" in r["error"] and "outside" in r["error"] and r["done"] == []
    assert (other / "_blurry" / "p50_victim.jpg").exists() and not victim.exists()


def test_undo_with_a_link_loop_where_a_photo_was_is_one_line_not_a_500(folder):
    journal = sorting.new_journal_path(folder / "_blurry")
    list(sorting.apply_moves(sorting.plan_moves([folder / "p10_a.jpg"], folder / "_blurry"), journal))
    moved = folder / "_blurry" / "p10_a.jpg"
    before = moved.read_bytes()
    os.symlink("p10_a.jpg", folder / "p10_a.jpg")  # since the apply, a link to itself took the photo's place
    (folder / STATE_FILE).write_text(json.dumps({"journals": ["_blurry/" + Path(journal).name]}))
    with review(folder) as (service, client):
        r = client.post("/api/review/undo")
        assert r.status_code == 200, r.text
        (failed,) = r.json()["failed"]
        assert "occupied" in failed["error"] and "\n" not in failed["error"]
    assert moved.read_bytes() == before and os.path.islink(folder / "p10_a.jpg")


def test_changing_routes_refuse_cross_site_requests(folder):
    with review(folder) as (service, client):
        assert service.wait_idle(WAIT)
        body = {"path": "p90_b.jpg", "decision": "reject"}
        assert client.put("/api/review/override", json=body, headers={"Origin": "http://evil.example"}
                          ).status_code == 403
        assert client.put("/api/review/override", json=body, headers={"Sec-Fetch-Site": "cross-site"}
                          ).status_code == 403
        assert client.post("/api/review/undo", headers={"Origin": "null"}).status_code == 403
        assert client.post("/api/review/apply", json={"threshold": 0.5, "paths": ["p90_b.jpg"]},
                           headers={"Origin": "http://evil.example"}).status_code == 403
        # A form post (no JSON content type) cannot change anything either.
        assert client.put("/api/review/override", content=json.dumps(body),
                          headers={"Content-Type": "text/plain"}).status_code == 422
        assert client.put("/api/review/override", json=body, headers={"Origin": "http://testserver",
                                                                       "Sec-Fetch-Site": "same-origin"}
                          ).status_code == 200
    assert (folder / "p90_b.jpg").exists()


# ----------------------------------------------------------------------------------------------------------------
# The page


def test_page_and_its_assets(folder):
    with review(folder) as (service, client):
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        for src in re.findall(r'(?:src|href)="(review/static/[^"]+)"', page.text):
            asset = client.get("/" + src)
            assert asset.status_code == 200 and asset.content, src
        assert client.get("/review/static/review.js").headers["content-type"].startswith("text/javascript")
        for bad in ("service.py", "..%2Fservice.py", "index.html", ".keep"):
            assert client.get(f"/review/static/{bad}").status_code == 404, bad
        spec = client.get("/openapi.json").json()
        assert "/api/review/thumb" in spec["paths"] and "/" not in spec["paths"]


def test_real_model_ranks_blurred_photos_first(tmp_path):
    from ensemble.detector import BlurDetector

    try:
        detector = BlurDetector.load(threads=1)
    except FileNotFoundError as err:
        pytest.skip(f"no trained model: {err}")
    root = tmp_path / "photos"
    for seed in (1, 2):
        img = make_photo(seed, (240, 320))
        save_jpeg(root / f"sharp_{seed}.jpg", img)
        save_jpeg(root / f"blurred_{seed}.jpg", blur(img, "gaussian", 3.0))
    with review(root, detector) as (service, client):
        assert service.wait_idle(WAIT)
        got = items(client)
        assert {i["path"] for i in got[:2]} == {"blurred_1.jpg", "blurred_2.jpg"}
        assert all(i["p"] > 0.6 for i in got[:2]) and all(i["p"] < 0.4 for i in got[2:])
        r = client.get("/api/review/overlay", params={"path": "blurred_1.jpg"})
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (320, 240)


def test_no_generated_request_makes_a_server_error(folder):
    """Schemathesis over the review routes (the server's own fuzz test runs without --root): never a 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    before = snapshot(folder)
    with review(folder) as (service, client):
        assert service.wait_idle(WAIT)
        schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
        operations = [op.ok() for op in schema.get_all_operations()]
        assert len(operations) == 11
        for operation in operations:
            strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                                 operation.as_strategy(GenerationMode.NEGATIVE))

            @given(case=strategy)
            @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def fuzz(case):
                case.call_and_validate(checks=[not_a_server_error])

            fuzz()
    assert snapshot(folder) == before  # random paths never match a photo to move


# ----------------------------------------------------------------------------------------------------------------
# The scale


def test_photos_are_judged_at_the_service_scale_and_say_so(folder):
    """serve --scale reaches every photo's scoring; the status says the scale asked, each photo what it resolved
    to and what it shows; a score cached at another scale is not reused."""
    photo(folder / "p30_doc.jpg", seed=7)
    detector = NameDetector()
    with review(folder, detector) as (service, client):
        assert service.wait_idle(WAIT)
        assert client.get("/api/review/status").json()["scale"] == "auto"  # the default: the detector's
        got = {i["path"]: i for i in items(client)}
    assert set(detector.scales) == {"auto"} and len(detector.scales) == 7
    assert got["p30_doc.jpg"]["scale"] == "screen" and got["p30_doc.jpg"]["content"] == "document"
    assert got["p10_a.jpg"]["content"] == "photo" and got["broken.jpg"]["scale"] is None
    detector = NameDetector()
    with review(folder, detector, scale="native") as (service, client):
        assert service.wait_idle(WAIT)
        assert client.get("/api/review/status").json()["scale"] == "native"
        got = {i["path"]: i for i in items(client)}
    assert set(detector.scales) == {"native"} and len(detector.scales) == 7  # scored again, not from the cache
    assert got["p10_a.jpg"]["scale"] == "native" and got["p30_doc.jpg"]["content"] == "document"
    detector = NameDetector()
    with review(folder, detector, scale="native") as (service, client):
        assert service.wait_idle(WAIT)
        assert {i["path"]: i["scale"] for i in items(client)}["p10_a.jpg"] == "native"  # read back from the cache
    assert len(detector.scales) <= 1  # at most the broken file is tried again
    with pytest.raises(ValueError, match="scale must be one of"):
        ReviewService(folder, lambda: detector, scale="huge")
