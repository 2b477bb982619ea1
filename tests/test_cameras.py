"""The camera focus monitor (``blur-detect cameras``) against real HTTP cameras and a real video file, on loopback.

A threaded HTTP server on 127.0.0.1 (tests/camera_server.py) plays the cameras: a scene whose snapshots get
sharper or blurrier on demand, a camera slower than its timeout, cameras behind basic, bearer and digest
authentication, garbage bytes, a login page, black, uniform and frozen pictures, an MJPEG stream. A video file
written with OpenCV's VideoWriter stands in for a stream. The monitor's rounds run in-process where the states are
checked, and the real command runs in subprocesses for exit statuses, outputs, credentials and crashes.
"""
from __future__ import annotations

import base64
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from camera_server import CameraServer, closed_port
from fixtures import REPO_ROOT, default_sigint, make_photo

from ensemble.cameras import grab as grab_module
from ensemble.cameras.config import Camera, ConfigError, Secret, load_config, redact_url
from ensemble.cameras.grab import Cancelled
from ensemble.cameras.monitor import RECORD_FIELDS as CAMERA_FIELDS  # noqa: E402
from ensemble.cameras.monitor import (Monitor, Settings, classify, exit_status, focus_score, frame_problem)
from ensemble.cameras.report import event_line, render
from ensemble.cameras.snapshots import save_snapshot, snapshot_stems
from ensemble.cameras.state import CameraState, StateFile, StateLocked


from fixtures import MODEL_MISSING as MISSING, needs_model  # noqa: E402

# Credentials of the fake cameras: distinctive strings, so that finding one in any output is unambiguous.
USER, PASSWORD, TOKEN = "camuser-7f3a", "pw-Zq81x-s3cret", "tok-9Jd02-s3cret"
SECRET_ENV = {"CAM_USER": USER, "CAM_PASS": PASSWORD, "CAM_TOKEN": TOKEN, "CAM_WRONG": "wrong-Pw-4471"}
INLINE_USER, INLINE_PASSWORD = "inline-user-55", "inline-Pw-55x"


@pytest.fixture(scope="module")
def server():
    srv = CameraServer().start()
    srv.user, srv.password, srv.token = USER, PASSWORD, TOKEN
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def detector():
    if MISSING:
        pytest.skip(f"no trained model: {MISSING}")
    from ensemble.detector import BlurDetector

    return BlurDetector.load(threads=1)


def write_config(path: Path, cameras: list[dict], defaults: dict | None = None) -> Path:
    """A YAML config (JSON is valid YAML, and quoting stays trivial)."""
    data = {"cameras": cameras, **({"defaults": defaults} if defaults else {})}
    path.write_text(json.dumps(data, indent=1))
    return path


def monitor_for(detector, config: Path, env: dict | None = None, **settings) -> Monitor:
    cameras = load_config(config, {**os.environ, **SECRET_ENV, **(env or {})})
    settings.setdefault("baseline_size", 3)
    settings.setdefault("timeout", 5.0)
    return Monitor(cameras, detector, {}, Settings(threshold=detector.threshold, **settings))


def by_name(round_) -> dict:
    return {c.camera.name: c for c in round_.checks}


# --------------------------------------------------------------------------------------------------------------
# Transitions against the baseline


@needs_model
def test_clear_degraded_blurry_and_back(server, detector, tmp_path):
    config = write_config(tmp_path / "cams.yaml", [{"name": "lens", "url": server.url("/scene/lens")}])
    mon = monitor_for(detector, config)
    seen = []

    def check(sigma: float):
        server.sigma["lens"] = sigma
        done = mon.run_round()
        seen.append(done)
        return done.checks[0], done.events

    for i in range(3):  # sharp: the baseline is learnt from three healthy checks
        c, events = check(0.0)
        assert c.state == "CLEAR", c.reason
        assert c.baseline is None and "learning the baseline" in c.reason or c.reason == "baseline learnt"
        assert len(events) == (1 if i == 0 else 0)  # the first check is an event (new -> CLEAR), repeats are not
    assert seen[0].events[0].previous is None
    history = list(mon.states["lens"].history)
    assert len(history) == 3 and all(h > 0.8 for h in history)

    c, events = check(0.6)  # slightly soft: the ensemble still calls it sharp, the focus score has collapsed
    assert c.state == "DEGRADED", c.reason
    assert c.result.blur_probability < detector.threshold
    assert c.baseline == pytest.approx(float(np.median(history)))
    assert c.change < -0.5 and "below the baseline" in c.reason
    assert [(e.previous, e.state) for e in events] == [("CLEAR", "DEGRADED")]

    c, events = check(0.6)  # still soft: same state, no new alert, and the baseline was not dragged down
    assert c.state == "DEGRADED" and events == []
    assert mon.states["lens"].history == history

    c, events = check(2.5)  # badly out of focus: the absolute verdict
    assert c.state == "BLURRY" and c.result.blur_probability >= detector.threshold
    assert "blur probability" in c.reason
    assert [(e.previous, e.state) for e in events] == [("DEGRADED", "BLURRY")]

    c, events = check(0.0)  # refocused
    assert c.state == "CLEAR" and c.reason == ""
    assert [(e.previous, e.state) for e in events] == [("BLURRY", "CLEAR")]
    assert len(mon.states["lens"].history) == 3  # K = 3: the oldest healthy score made room
    assert event_line(events[0]).endswith("lens: BLURRY -> CLEAR")

    mon.reset_baseline(["lens"])  # --reset-baseline: refocused on purpose
    c, events = check(0.0)
    assert c.state == "CLEAR" and c.reason == "learning the baseline (1 of 3 checks)" and events == []

    # The same camera name pointed at another URL: a new baseline, but no spurious event.
    moved = write_config(tmp_path / "moved.yaml", [{"name": "lens", "url": server.url("/scene/lens?moved")}])
    mon2 = Monitor(load_config(moved), detector, mon.states, mon.settings)
    c = mon2.run_round().checks[0]
    assert c.state == "CLEAR" and c.reason == "learning the baseline (1 of 3 checks)" and c.previous == "CLEAR"


@needs_model
def test_confirm_holds_a_new_state_until_it_repeats(server, detector, tmp_path):
    config = write_config(tmp_path / "cams.yaml", [
        {"name": "steady", "url": server.url("/scene/flap")},
        {"name": "twitchy", "url": server.url("/scene/flap"), "confirm": 1},  # its own setting wins
    ])
    mon = monitor_for(detector, config, confirm=2)

    def check(sigma: float):
        server.sigma["flap"] = sigma
        done = mon.run_round()
        return by_name(done), [(e.camera, e.previous, e.state) for e in done.events]

    checks, events = check(0.0)  # a first check is reported as found, without waiting
    assert checks["steady"].state == "CLEAR" and len(events) == 2
    for _ in range(2):
        check(0.0)
    history = list(mon.states["steady"].history)
    assert len(history) == 3

    checks, events = check(2.5)  # once: held, and the reason says what is pending
    assert checks["steady"].state == "CLEAR" and checks["steady"].reason.startswith("BLURRY in 1 of 2 checks: ")
    assert events == [("twitchy", "CLEAR", "BLURRY")]
    assert mon.states["steady"].history == history  # reported CLEAR, but a blurred frame never feeds the baseline

    checks, events = check(0.0)  # it flapped back: nothing to report, and the count starts again
    assert checks["steady"].state == "CLEAR" and checks["steady"].reason == ""
    assert events == [("twitchy", "BLURRY", "CLEAR")]
    assert mon.states["steady"].pending is None

    check(2.5)
    checks, events = check(2.5)  # twice in a row: now it is reported
    assert checks["steady"].state == "BLURRY" and "blur probability" in checks["steady"].reason
    assert events == [("steady", "CLEAR", "BLURRY")]

    # The pending count survives a restart: it is in the state file.
    store = StateFile(tmp_path / "state.json")
    checks, _ = check(0.0)
    assert checks["steady"].state == "BLURRY" and checks["steady"].reason == "CLEAR in 1 of 2 checks"
    store.save(mon.states)
    states, warning = store.load()
    assert warning is None and (states["steady"].pending, states["steady"].pending_count) == ("CLEAR", 1)
    mon = Monitor(mon.cameras, detector, states, mon.settings)
    checks, events = check(0.0)
    assert checks["steady"].state == "CLEAR" and events == [("steady", "BLURRY", "CLEAR")]
    server.sigma["flap"] = 0.0


@needs_model
def test_per_camera_threshold_and_drop(server, detector, tmp_path):
    config = write_config(tmp_path / "cams.yaml", [
        {"name": "strict", "url": server.url("/scene/pair"), "drop": "90%"},
        {"name": "never-blurry", "url": server.url("/scene/pair"), "threshold": "off"},
    ])
    mon = monitor_for(detector, config)
    server.sigma["pair"] = 0.0
    for _ in range(3):
        mon.run_round()
    server.sigma["pair"] = 2.5
    checks = by_name(mon.run_round())
    # "off": judged against its baseline only, so heavy blur is DEGRADED rather than BLURRY.
    assert checks["never-blurry"].state == "DEGRADED"
    assert checks["strict"].state == "BLURRY"
    server.sigma["pair"] = 0.6
    checks = by_name(mon.run_round())
    assert checks["strict"].change > -0.9 and checks["strict"].state == "CLEAR"  # a 90 % drop is needed
    assert checks["never-blurry"].state == "DEGRADED"
    server.sigma["pair"] = 0.0


def test_classify_rules_and_order():
    assert classify("black frame", 0.99, 0.5, 0.1, 1.0, 0.5)[0] == "INVALID"  # INVALID wins over everything
    assert classify(None, 0.7, 0.5, 2.0, 1.0, 0.5)[0] == "BLURRY"  # the absolute verdict, whatever the baseline
    assert classify(None, 0.1, 0.5, 0.4, 1.0, 0.5)[0] == "DEGRADED"
    assert classify(None, 0.1, 0.5, 0.6, 1.0, 0.5) == ("CLEAR", "")
    assert classify(None, 0.1, 0.5, 0.01, None, 0.5)[0] == "CLEAR"  # no baseline yet: cannot be DEGRADED
    assert classify(None, 1.0, math.inf, 0.9, 1.0, 0.5)[0] == "CLEAR"  # threshold off


def test_focus_score_ignores_exposure_but_not_blur():
    grey = cv2.cvtColor(make_photo(21, (360, 480)), cv2.COLOR_RGB2GRAY)
    sharp = focus_score(grey)
    dim = focus_score((grey * 0.3 + 10).astype(np.uint8))  # dusk: the raw Laplacian variance falls ~90 %
    soft = focus_score(cv2.GaussianBlur(grey, (0, 0), 0.7))
    assert abs(dim / sharp - 1) < 0.3
    assert soft / sharp < 0.5


def test_frame_problems():
    rng = np.random.default_rng(0)
    assert "black" in frame_problem(rng.integers(0, 20, (240, 320), dtype=np.uint8))
    assert "uniform" in frame_problem(np.full((240, 320), 200, np.uint8))
    assert frame_problem(cv2.cvtColor(make_photo(3, (240, 320)), cv2.COLOR_RGB2GRAY)) is None
    night = (cv2.cvtColor(make_photo(3, (240, 320)), cv2.COLOR_RGB2GRAY) * 0.25).astype(np.uint8)
    assert frame_problem(night) is None  # dark is not black


# --------------------------------------------------------------------------------------------------------------
# Failure states, credentials, concurrency


@needs_model
def test_failure_states_and_reasons(server, detector, tmp_path):
    server.slow_seconds = 8.0
    cams = [
        {"name": "ok", "url": server.url("/scene/ok")},
        {"name": "slow", "url": server.url("/slow"), "timeout": 1.5},
        {"name": "refused", "url": f"http://127.0.0.1:{closed_port()}/snapshot.jpg"},
        {"name": "no-credentials", "url": server.url("/basic")},
        {"name": "wrong-password", "url": server.url("/basic"), "username_env": "CAM_USER",
         "password_env": "CAM_WRONG"},
        {"name": "basic", "url": server.url("/basic"), "username_env": "CAM_USER", "password_env": "CAM_PASS"},
        {"name": "inline", "url": server.url("/basic").replace("//", f"//{USER}:{PASSWORD}@")},
        {"name": "placeholders", "url": server.url("/basic").replace("//", "//${CAM_USER}:${CAM_PASS}@")},
        {"name": "bearer", "url": server.url("/bearer"), "token_env": "CAM_TOKEN"},
        {"name": "bad-token", "url": server.url("/bearer"), "token_env": "CAM_WRONG"},
        {"name": "digest", "url": server.url("/digest"), "auth": "digest", "username_env": "CAM_USER",
         "password_env": "CAM_PASS"},
        {"name": "digest-wrong", "url": server.url("/digest"), "auth": "digest", "username_env": "CAM_USER",
         "password_env": "CAM_WRONG"},
        {"name": "query", "url": server.url("/query") + "?user=x&pwd=${CAM_PASS}"},
        {"name": "garbage", "url": server.url("/garbage")},
        {"name": "login-page", "url": server.url("/html")},
        {"name": "missing", "url": server.url("/missing")},
        {"name": "redirect-loop", "url": server.url("/redirect-loop")},
        {"name": "black", "url": server.url("/black")},
        {"name": "uniform", "url": server.url("/uniform")},
        {"name": "frozen", "url": server.url("/frozen")},
        {"name": "mjpeg", "url": server.url("/mjpeg"), "frames": 2, "frame_interval": 0.05},
        {"name": "mjpeg-no-length", "url": server.url("/mjpeg?nolength=1"), "frames": 2, "frame_interval": 0},
    ]
    mon = monitor_for(detector, write_config(tmp_path / "cams.yaml", cams))
    first = by_name(mon.run_round())
    second = mon.run_round()
    checks = by_name(second)

    expected = {
        "ok": ("CLEAR", ""), "basic": ("CLEAR", ""), "inline": ("CLEAR", ""), "placeholders": ("CLEAR", ""),
        "bearer": ("CLEAR", ""),
        "digest": ("CLEAR", ""), "query": ("CLEAR", ""), "mjpeg": ("CLEAR", ""), "mjpeg-no-length": ("CLEAR", ""),
        "slow": ("UNREACHABLE", "timeout: "),
        "refused": ("UNREACHABLE", "connection refused"),
        "no-credentials": ("UNREACHABLE", "HTTP 401 Unauthorized: the camera wants credentials"),
        "wrong-password": ("UNREACHABLE", "HTTP 401 Unauthorized: bad credentials"),
        "bad-token": ("UNREACHABLE", "HTTP 401 Unauthorized: bad credentials"),
        "digest-wrong": ("UNREACHABLE", "HTTP 401 Unauthorized: bad credentials"),
        "garbage": ("UNREACHABLE", "no frame: the response is not an image (image/jpeg, 2048 bytes)"),
        "login-page": ("UNREACHABLE", "no frame: the response is not an image (text/html"),
        "missing": ("UNREACHABLE", "HTTP 404"),
        "redirect-loop": ("UNREACHABLE", "HTTP 302 Found: too many redirects"),
        "black": ("INVALID", "black frame"),
        "uniform": ("INVALID", "uniform frame"),
        "frozen": ("INVALID", "frozen: the picture is identical to the previous check's"),
    }
    for name, (state, reason) in expected.items():
        assert checks[name].state == state, (name, checks[name].reason)
        assert checks[name].reason.startswith(reason) or (state == "CLEAR" and "baseline" in checks[name].reason), \
            (name, checks[name].reason)
    assert first["frozen"].state == "CLEAR"  # frozen needs a previous frame to compare with
    assert checks["mjpeg"].frames == 2 and checks["ok"].frames == 1
    assert exit_status(second.checks) == 2

    assert 1.5 <= checks["slow"].duration < server.slow_seconds  # it waited its own timeout, and no longer

    # No reason, record or event mentions a credential.
    text = json.dumps([c.record() for c in second.checks]) + json.dumps([e.to_dict() for e in second.events])
    for secret in (USER, PASSWORD, TOKEN, "wrong-Pw-4471"):
        assert secret not in text
    assert checks["inline"].record()["url"].startswith("http://***@127.0.0.1")
    assert checks["query"].record()["url"].endswith("?user=***&pwd=${CAM_PASS}")


@needs_model
def test_a_slow_camera_does_not_delay_the_others(server, detector, tmp_path):
    server.slow_seconds = 12.0
    cams = [{"name": f"fast-{i}", "url": server.url(f"/scene/fast{i}")} for i in range(4)]
    cams.insert(2, {"name": "slow", "url": server.url("/slow"), "timeout": 5})
    mon = monitor_for(detector, write_config(tmp_path / "cams.yaml", cams))
    try:
        done = mon.run_round()
    finally:
        server.slow_seconds = 8.0
    checks = by_name(done)
    slow = checks.pop("slow")
    assert slow.state == "UNREACHABLE" and slow.reason == "timeout: no frame within 5 s"
    # The slow camera held the round for its own timeout and no longer (the camera itself takes 12 s)...
    assert 5 <= slow.duration < 12 and done.seconds < 12
    # ...and every other camera had its verdict long before that (generous margins: a loaded 2-core machine).
    assert all(c.state == "CLEAR" and c.duration < 4 for c in checks.values()), \
        sorted((round(c.duration, 2), c.camera.name) for c in checks.values())


@needs_model
def test_credentials_follow_redirects_only_to_the_same_origin(server, detector, tmp_path):
    server.echo_auth.clear()
    mon = monitor_for(detector, write_config(tmp_path / "cams.yaml", [
        {"name": "away", "url": server.url("/redirect-away"), "username_env": "CAM_USER",
         "password_env": "CAM_PASS"}]))
    assert mon.run_round().checks[0].state == "CLEAR"
    assert server.echo_auth == [""]  # 127.0.0.1 -> localhost is another origin: the header was not sent


class _Stream:
    """An MJPEG response for _read_mjpeg: ``data`` handed out ``step`` bytes per read, then endless padding."""

    def __init__(self, data: bytes, step: int, endless: bool = False):
        import email.message

        self.headers = email.message.Message()
        self.headers["Content-Type"] = "multipart/x-mixed-replace; boundary=frame"
        self.data, self.step, self.endless, self.at = data, step, endless, 0

    def read1(self, n: int) -> bytes:
        if self.at >= len(self.data):
            return b"x" * min(n, self.step) if self.endless else b""
        chunk = self.data[self.at:self.at + min(n, self.step)]
        self.at += len(chunk)
        return chunk


def test_mjpeg_parts_split_anywhere_arrive_whole_and_a_stalled_part_is_a_timeout(monkeypatch):
    camera = Camera(name="m", url="http://x/", source=Secret("http://x/"), kind="http", frames=3, frame_interval=0)
    parts = [b"\xff\xd8\xff-first-\xff\xd9", b"\xff\xd8\xff-second--fram-\xff\xd9", b"\xff\xd8\xff-third-\xff\xd9"]
    with_length = b"".join(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n" % (len(p), p)
                           for p in parts)
    without = b"".join(b"--frame\r\nContent-Type: image/jpeg\r\n\r\n%s\r\n" % p for p in parts) + b"--frame--\r\n"
    for data in (with_length, without):
        for step in (1, 3, 7, 65536):  # markers and header ends straddle the reads
            sink = grab_module._Sink()
            grab_module._read_mjpeg(_Stream(data, step), camera, time.monotonic() + 60, sink, threading.Event())
            assert [f.data for f in sink.take()] == parts, (step, data[:40])
    # A part that never completes: at the deadline that is a timeout (not "the camera sent nothing")...
    stalled = b"--frame\r\nContent-Length: 1000000000000\r\n\r\n"
    with pytest.raises(TimeoutError):
        grab_module._read_mjpeg(_Stream(stalled, 64, endless=True), camera, time.monotonic() + 0.2,
                                grab_module._Sink(), threading.Event())
    # ...and a stream with no whole part within the cap is refused once the cap is passed.
    monkeypatch.setattr(grab_module, "MAX_BYTES", 2**20)
    with pytest.raises(grab_module.GrabError, match="no whole MJPEG part"):
        grab_module._read_mjpeg(_Stream(b"", 65536, endless=True), camera, time.monotonic() + 60, grab_module._Sink(),
                                threading.Event())


@needs_model
def test_sharpest_of_n_frames_ignores_a_passing_lorry(server, detector, tmp_path):
    mon = monitor_for(detector, write_config(tmp_path / "cams.yaml", [
        {"name": "one", "url": server.url("/passing/one")},
        {"name": "three", "url": server.url("/passing/three"), "frames": 3, "frame_interval": 0},
    ]))
    checks = by_name(mon.run_round())
    assert checks["one"].state == "BLURRY"  # its single frame was the blurred one
    assert checks["three"].state == "CLEAR" and checks["three"].frames == 3


@needs_model
def test_a_grab_that_never_returns_is_abandoned_and_not_stacked(detector, tmp_path, monkeypatch):
    release = threading.Event()
    started = []

    def stuck_reader(camera, deadline, timeout, sink, position, stop):
        started.append(camera.name)
        release.wait(30)  # ignores its deadline and the stop request, as a wedged driver would

    monkeypatch.setattr(grab_module, "_read_http", stuck_reader)
    mon = monitor_for(detector, write_config(tmp_path / "cams.yaml", [
        {"name": "wedged", "url": "http://127.0.0.1:9/x", "timeout": 0.5}]))
    try:
        first = mon.run_round().checks[0]
        second = mon.run_round().checks[0]
        assert first.state == "UNREACHABLE" and first.reason == "timeout: no frame within 0.5 s"
        assert second.state == "UNREACHABLE" and "previous check's grab has still not returned" in second.reason
        assert started == ["wedged"]  # no second thread was started on the wedged camera
    finally:
        release.set()


@needs_model
def test_cancel_stops_a_round_at_once_and_changes_nothing(server, detector, tmp_path):
    server.slow_seconds = 8.0
    mon = monitor_for(detector, write_config(tmp_path / "cams.yaml", [
        {"name": "ok", "url": server.url("/scene/ok")}, {"name": "slow", "url": server.url("/slow"), "timeout": 6}]))
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        mon.run_round(cancel)
    assert time.monotonic() - t0 < 4  # well before the slow camera's 6 s timeout
    assert mon.states == {}


# --------------------------------------------------------------------------------------------------------------
# A video file as a stream


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    grab_module.quiet_native_logs()  # OpenCV reads FFmpeg's log level when it first opens a video
    folder = tmp_path_factory.mktemp("video")
    scene = make_photo(31, (360, 480))

    def write(name: str, sigma: float, n: int = 12, size: tuple[int, int] = (480, 360)) -> Path:
        path = folder / name
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
        assert writer.isOpened()
        picture = scene if size == (480, 360) else cv2.resize(scene, size, interpolation=cv2.INTER_CUBIC)
        for i in range(n):
            frame = cv2.GaussianBlur(picture, (0, 0), sigma) if sigma else picture
            noisy = np.clip(frame + np.random.default_rng(i).normal(0, 1, frame.shape), 0, 255).astype(np.uint8)
            writer.write(cv2.cvtColor(noisy, cv2.COLOR_RGB2BGR))
        writer.release()
        return path

    write("sharp.avi", 0)
    write("soft.avi", 3.0)
    write("hd.avi", 0, n=3, size=(1280, 720))
    (folder / "not-a-video.avi").write_bytes(b"RIFF" + b"\0" * 500)
    return folder


@needs_model
def test_video_file_plays_like_a_stream(detector, video, tmp_path):
    config = write_config(video / "cams.yaml", [
        {"name": "sharp", "url": "sharp.avi", "frames": 3, "frame_interval": 0.2},  # relative to the config
        {"name": "soft", "url": str(video / "soft.avi")},
        {"name": "hd", "url": "hd.avi"},
        {"name": "gone", "url": "file://" + str(video / "gone.avi")},
        {"name": "not-video", "url": "not-a-video.avi"},
        {"name": "rtsp", "url": f"rtsp://127.0.0.1:{closed_port()}/stream", "timeout": 3},
    ])
    mon = monitor_for(detector, config)
    positions = []
    for _ in range(4):
        checks = by_name(mon.run_round())
        assert checks["sharp"].state == "CLEAR", checks["sharp"].reason  # never "frozen": the file moves on
        assert checks["sharp"].frames == 3
        positions.append(mon.states["sharp"].position)
    # Three frames two apart (0.2 s at 10 fps) per check; the 12-frame file wraps round.
    assert positions == [5, 10, 3, 8]
    assert checks["soft"].state == "BLURRY"
    # A 1280 x 720 stream is reduced to the analysis scale as frames arrive; the record keeps the real size.
    hd = checks["hd"]
    assert (hd.record()["width"], hd.record()["height"]) == (1280, 720) and hd.rgb.shape == (640, 1138, 3)
    jpg, png = save_snapshot(hd, tmp_path, "hd", detector.analysis_side)
    assert cv2.imread(str(jpg)).shape == cv2.imread(str(png)).shape == (640, 1138, 3)
    assert checks["gone"].state == "UNREACHABLE" and checks["gone"].reason == "video file not found"
    assert checks["not-video"].state == "UNREACHABLE" and "cannot open the video file" in checks["not-video"].reason
    assert checks["rtsp"].state == "UNREACHABLE" and "cannot open the stream" in checks["rtsp"].reason


# --------------------------------------------------------------------------------------------------------------
# Config


def test_yaml_and_csv_configs_agree(tmp_path):
    env = {"GATE_USER": "u", "GATE_PASS": "p4ss", "TOKEN": "t0ken"}
    yaml_cfg = tmp_path / "cams.yaml"
    yaml_cfg.write_text("""\
defaults:
  timeout: 7
cameras:
  - name: gate
    url: http://192.0.2.10/snapshot.jpg
    username_env: GATE_USER
    password_env: GATE_PASS
    auth: digest
  - name: dock
    url: rtsp://192.0.2.11:554/stream1
    frames: 5
    frame_interval: 1
    threshold: 70%
  - name: api
    url: https://cams.example.com/lobby
    token_env: TOKEN
    verify_tls: false
    drop: 30
  - name: loop
    url: clips/parking.avi
""")
    csv_cfg = tmp_path / "cams.csv"
    csv_cfg.write_text("""\
# the same cameras as a spreadsheet
name,url,username_env,password_env,auth,token_env,frames,frame_interval,threshold,drop,verify_tls,timeout
gate,http://192.0.2.10/snapshot.jpg,GATE_USER,GATE_PASS,digest,,,,,,,7
dock,rtsp://192.0.2.11:554/stream1,,,,,5,1,0.7,,,7
api,https://cams.example.com/lobby,,,,TOKEN,,,,30%,no,7
loop,clips/parking.avi,,,,,,,,,,7
""")
    a, b = load_config(yaml_cfg, env), load_config(csv_cfg, env)

    def view(c: Camera):
        return (c.name, c.url, c.kind, c.auth, c.verify_tls, c.threshold, c.drop, c.frames, c.frame_interval,
                c.timeout, c.target().reveal(), c.credentials()[0])

    assert [view(c) for c in a] == [view(c) for c in b]
    gate, dock, api, loop = a
    assert (gate.kind, dock.kind, api.kind, loop.kind) == ("http", "opencv", "http", "opencv")
    assert dock.threshold == 0.7 and api.drop == 0.3 and api.verify_tls is False and gate.timeout == 7
    assert loop.is_file and loop.target().reveal() == str(tmp_path / "clips/parking.avi")
    assert "p4ss" not in repr(gate) and "t0ken" not in repr(api) and "'***'" in repr(gate)


def test_credentials_for_streams_go_into_the_url_that_is_opened_and_nowhere_else(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", [{"name": "dock", "url": "rtsp://192.0.2.11/s", "username_env": "U",
                                              "password_env": "P"}])
    (dock,) = load_config(cfg, {"U": "us er", "P": "p@ss:word"})
    assert dock.target().reveal() == "rtsp://us%20er:p%40ss%3Aword@192.0.2.11/s"
    assert dock.url == "rtsp://192.0.2.11/s" and str(dock.target()) == "'***'"


@pytest.mark.parametrize("url,shown", [
    ("http://admin:hunter2@10.0.0.1/snap.jpg", "http://***@10.0.0.1/snap.jpg"),
    ("rtsp://admin@10.0.0.1:554/s", "rtsp://***@10.0.0.1:554/s"),
    ("http://10.0.0.1/snap.cgi?usr=admin&pwd=hunter2&res=1", "http://10.0.0.1/snap.cgi?usr=***&pwd=***&res=1"),
    ("http://10.0.0.1/snap.cgi?pwd=${CAM_PASS}", "http://10.0.0.1/snap.cgi?pwd=${CAM_PASS}"),
    ("videos/yard.mp4", "videos/yard.mp4"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


@pytest.mark.parametrize("cameras,message", [
    ([{"url": "http://x/"}], "camera #1: name: missing"),
    ([{"name": "a"}], "camera 'a': url: missing"),
    ([{"name": "a", "url": "ftp://x/y"}], "camera 'a': url: unsupported scheme ftp://"),
    ([{"name": "a", "url": "http:///snap"}], "camera 'a': url: has no host name"),
    ([{"name": "a", "url": "http://[::1/snap"}], "camera 'a': url: not a valid URL (Invalid IPv6 URL)"),
    ([{"name": "a", "url": "http://x/", "frames": "1e400"}], "camera 'a': frames: '1e400' is out of range"),
    ([{"name": "a", "url": "http://x/", "frames": 0}], "camera 'a': frames: 0 is out of range (1 to 100)"),
    ([{"name": "a", "url": "http://x/", "frames": 2.5}], "camera 'a': frames: 2.5 is not a whole number"),
    ([{"name": "a", "url": "http://x/", "threshold": 1.5}], "camera 'a': threshold: 1.5 is not a probability"),
    ([{"name": "a", "url": "http://x/", "timeout": "soon"}], "camera 'a': timeout: 'soon' is not a number"),
    ([{"name": "a", "url": "http://x/", "treshold": 0.5}], "camera 'a': unknown key 'treshold' (did you mean "
                                                           "'threshold'?)"),
    ([{"name": "a", "url": "http://x/", "username_env": "NOT_SET_ANYWHERE"}],
     "camera 'a': username_env: environment variable NOT_SET_ANYWHERE is not set"),
    ([{"name": "a", "url": "http://x/", "password_env": "HOME"}], "camera 'a': password_env: needs username_env"),
    ([{"name": "a", "url": "http://x/", "username_env": "hunter2 pw"}],
     "camera 'a': username_env: 'hunter2 pw' is not an environment variable name"),
    ([{"name": "a", "url": "http://x/?p=${NOT_SET_ANYWHERE}"}], "camera 'a': url: environment variable"),
    ([{"name": "a", "url": "rtsp://x/", "token_env": "HOME"}], "camera 'a': token_env: bearer tokens work only"),
    ([{"name": "a", "url": "x.avi", "username_env": "HOME"}], "camera 'a': username_env: a video file takes no"),
    ([{"name": "a", "url": "http://x/", "frames": 5, "frame_interval": 3, "timeout": 10}],
     "camera 'a': frames: 5 frames 3 s apart do not fit in the 10 s timeout"),
    ([{"name": "a", "url": "http://x/"}, {"name": "A", "url": "http://y/"}],
     "camera #2: name: 'A' is already used by camera #1"),
    ([], "no cameras listed"),
])
def test_config_errors_are_one_line_naming_camera_and_field(tmp_path, cameras, message):
    cfg = write_config(tmp_path / "c.yaml", cameras)
    with pytest.raises(ConfigError) as info:
        load_config(cfg, {"HOME": "/root"})
    text = str(info.value)
    assert message in text and "\n" not in text and text.startswith(str(cfg))


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cameras:\n  - name: a\n   url: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    csv_bad = tmp_path / "c.csv"
    csv_bad.write_text("camera,address\na,http://x/\n")
    with pytest.raises(ConfigError, match="header row with at least 'name' and 'url'"):
        load_config(csv_bad)
    assert repr(Secret("hunter2")) == "'***'" and f"{Secret('hunter2')}" == "'***'"


# --------------------------------------------------------------------------------------------------------------
# State file


def test_state_round_trip_corruption_and_lock(tmp_path):
    path = tmp_path / "cams.state.json"
    store = StateFile(path)
    store.lock()
    try:
        with pytest.raises(StateLocked):
            StateFile(path).lock()  # a second monitor on the same file is refused
        assert store.load() == ({}, None)
        store.save({"gate": CameraState(state="CLEAR", since="t", history=[1.25, 1.3], frame_hash="ab",
                                        position=4, url="http://x/")})
        states, warning = store.load()
        assert warning is None and states["gate"].history == [1.25, 1.3] and states["gate"].position == 4
        assert states["gate"].baseline(10, 3) is None and states["gate"].baseline(10, 2) == pytest.approx(1.275)

        for junk in (b'{"version": 1, "cameras": {"gate": {"history": ["x"]}}}', b"\x00\xff garbage",
                     b'{"version": 1, "cameras": {"gate": {"state": "ON FIRE"}}}', b"[1, 2]"):
            path.write_bytes(junk)
            states, warning = store.load()
            assert states == {} and "is corrupt" in warning and "starting afresh" in warning
            assert not path.exists()  # moved aside, not deleted:
        kept = sorted(p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name)
        assert kept and all(p.startswith("cams.state.json.corrupt-") for p in kept)
    finally:
        store.unlock()

    # A monitor killed between writing its temporary file and renaming it leaves the temporary behind: the next
    # one removes it once it holds the lock, and reads the last complete state.
    store.save({"gate": CameraState(state="CLEAR", history=[1.0])})
    stale = tmp_path / ".cams.state.json.999999.tmp"
    stale.write_text('{"version": 1, "cameras": {"gate": {"hist')
    again = StateFile(path)
    again.lock()
    try:
        assert not stale.exists()
        assert again.load()[0]["gate"].history == [1.0]
    finally:
        again.unlock()


# --------------------------------------------------------------------------------------------------------------
# The command


def run_cli(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **SECRET_ENV, **(env or {}))
    return subprocess.run([sys.executable, "-m", "ensemble", "cameras", *map(str, args)], capture_output=True,
                          text=True, env=full_env, timeout=timeout)


def popen_cli(*args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **SECRET_ENV)
    return subprocess.Popen([sys.executable, "-m", "ensemble", "cameras", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, preexec_fn=default_sigint)


def test_config_and_usage_errors_exit_3(tmp_path):
    bad = write_config(tmp_path / "cams.yaml", [{"name": "a", "url": "http://x/", "frames": "many"}])
    proc = run_cli(bad, "--once")
    assert proc.returncode == 3 and proc.stdout == ""
    assert proc.stderr.strip() == f"error: {bad}: camera 'a': frames: 'many' is not a number"
    proc = run_cli(tmp_path / "missing.yaml")
    assert proc.returncode == 3 and "file not found" in proc.stderr
    good = write_config(tmp_path / "good.yaml", [{"name": "a", "url": "http://x/"}])
    for args in (["--watch", "0.1"], ["--drop", "150"], ["--rounds", "2"], ["--reset-baseline", "b"],
                 ["--state", str(tmp_path)]):  # a folder: the round would run, then never save a baseline
        proc = run_cli(good, *args)
        assert proc.returncode == 3, (args, proc.stderr)
        last = proc.stderr.strip().splitlines()[-1]
        assert "Traceback" not in proc.stderr and (last.startswith("error: ") or ": error: " in last)


@needs_model
def test_once_exit_codes_reports_events_snapshots(server, tmp_path):
    """0 all clear, 1 blurry, 2 unreachable, 1 invalid; events only on change; the files it keeps."""
    server.sigma["cli"] = 0.0
    config = write_config(tmp_path / "cams.yaml", [
        {"name": "Front Gate", "url": server.url("/scene/cli")},
        {"name": "yard", "url": server.url("/basic"), "username_env": "CAM_USER", "password_env": "CAM_PASS"},
    ], defaults={"timeout": 3})
    report, events, snaps = tmp_path / "report.json", tmp_path / "events.jsonl", tmp_path / "snaps"
    common = [config, "--once", "--format", "json", "--report", report, "--events", events, "--snapshots", snaps]

    proc = run_cli(*common)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # the report went to its file
    data = json.loads(report.read_text())
    assert data["status"] == "OK" and data["counts"]["clear"] == 2
    assert [r["state"] for r in data["cameras"]] == ["CLEAR", "CLEAR"]
    assert proc.stderr.count("(new) -> CLEAR") == 2
    assert sorted(p.name for p in snaps.iterdir()) == ["Front_Gate.blurmap.png", "Front_Gate.jpg",
                                                       "yard.blurmap.png", "yard.jpg"]
    assert cv2.imread(str(snaps / "Front_Gate.blurmap.png")).shape == (360, 480, 3)
    state_file = tmp_path / "cams.state.json"  # beside the config by default
    assert json.loads(state_file.read_text())["cameras"]["yard"]["state"] == "CLEAR"

    proc = run_cli(*common)  # nothing changed: no event line at all
    assert proc.returncode == 0 and proc.stderr == ""

    server.sigma["cli"] = 3.0
    proc = run_cli(*common)
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith("Front Gate: CLEAR -> BLURRY: " + json.loads(report.read_text())
                                        ["cameras"][0]["reason"])
    server.sigma["cli"] = 0.0

    server.password = "changed"  # the camera's password was changed, the config's was not
    try:
        proc = run_cli(*common, "--format", "table", "--report", tmp_path / "report.txt")
    finally:
        server.password = PASSWORD
    assert proc.returncode == 2
    table = (tmp_path / "report.txt").read_text().splitlines()
    assert table[0].split() == ["CAMERA", "STATE", "BLUR", "FOCUS", "BASELINE", "CHANGE", "REASON"]
    assert table[2].split()[:2] == ["yard", "UNREACHABLE"] and "bad credentials" in table[2]
    assert table[-1].endswith("1 clear, 1 unreachable")
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert [(e["camera"], e["from"], e["to"]) for e in lines] == [
        ("Front Gate", None, "CLEAR"), ("yard", None, "CLEAR"), ("Front Gate", "CLEAR", "BLURRY"),
        ("Front Gate", "BLURRY", "CLEAR"), ("yard", "CLEAR", "UNREACHABLE")]
    assert (snaps / "yard.jpg").exists()  # an unreachable camera keeps its last picture

    uniform = write_config(tmp_path / "uniform.yaml", [{"name": "wall", "url": server.url("/uniform")}])
    proc = run_cli(uniform, "--format", "nagios")
    assert proc.returncode == 1  # INVALID counts as a warning, like DEGRADED and BLURRY
    assert proc.stdout.startswith("CAMERAS WARNING - 1 invalid: wall (uniform frame")
    assert proc.stdout.rstrip().endswith("| cameras=1 clear=0 degraded=0 blurry=0 invalid=1 unreachable=0")


@needs_model
def test_credentials_never_appear_in_any_output(server, tmp_path):
    inline_url = server.url("/basic").replace("//", f"//{INLINE_USER}:{INLINE_PASSWORD}@")
    config = write_config(tmp_path / "cams.yaml", [
        {"name": "basic", "url": server.url("/basic"), "username_env": "CAM_USER", "password_env": "CAM_PASS"},
        {"name": "wrong", "url": server.url("/basic"), "username_env": "CAM_USER", "password_env": "CAM_WRONG"},
        {"name": "inline", "url": inline_url},
        {"name": "bearer", "url": server.url("/bearer"), "token_env": "CAM_TOKEN"},
        {"name": "digest", "url": server.url("/digest"), "auth": "digest", "username_env": "CAM_USER",
         "password_env": "CAM_PASS"},
        {"name": "query", "url": server.url("/query") + "?pwd=${CAM_PASS}"},
        {"name": "rtsp", "url": f"rtsp://127.0.0.1:{closed_port()}/live", "username_env": "CAM_USER",
         "password_env": "CAM_PASS", "timeout": 3},
        {"name": "garbage", "url": server.url("/garbage"), "token_env": "CAM_TOKEN"},
    ])
    out = tmp_path / "out"
    out.mkdir()
    outputs = []
    for fmt in ("json", "csv", "table", "nagios"):
        proc = run_cli(config, "--format", fmt, "--events", out / "events.jsonl", "--snapshots", out / "snaps",
                       "--state", out / "state.json", *(["--report", out / "report.txt"] if fmt == "table" else []))
        assert proc.returncode == 2, proc.stderr  # wrong, inline, rtsp, garbage
        outputs += [proc.stdout, proc.stderr]
    proc = run_cli(config, "--watch", "1", "--rounds", "2", "--format", "json", "--state", out / "state.json")
    outputs += [proc.stdout, proc.stderr]
    assert proc.returncode == 2
    rounds = [json.loads(line) for line in proc.stdout.splitlines()]  # --watch to stdout: one JSON line a round
    assert len(rounds) == 2 and rounds[0]["time"] <= rounds[1]["time"]
    records = {r["camera"]: r for r in rounds[-1]["cameras"]}
    assert {n: r["state"] for n, r in records.items()} == {
        "basic": "CLEAR", "wrong": "UNREACHABLE", "inline": "UNREACHABLE", "bearer": "CLEAR", "digest": "CLEAR",
        "query": "CLEAR", "rtsp": "UNREACHABLE", "garbage": "UNREACHABLE"}
    assert records["inline"]["reason"].endswith("bad credentials")  # the server expects USER/PASSWORD
    assert records["basic"]["url"] == server.url("/basic")  # redaction hides credentials, not the camera
    assert records["query"]["url"] == server.url("/query") + "?pwd=${CAM_PASS}"

    secrets = [USER, PASSWORD, TOKEN, "wrong-Pw-4471", INLINE_USER, INLINE_PASSWORD,
               base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert (out / "snaps" / "basic.jpg").exists() and (out / "snaps" / "digest.blurmap.png").exists()
    everything = "\n".join(outputs) + "\n".join(p.read_bytes().decode("latin-1") for p in files if p.suffix != ".png"
                                                 and p.suffix != ".jpg")
    everything += "\n".join(str(p) for p in files)
    for secret in secrets:
        assert secret not in everything, secret
    assert server.url("/basic").replace("http://", "http://***@") in everything  # the inline URL, redacted


@needs_model
def test_state_survives_kill_during_rounds_and_the_next_run_continues(server, tmp_path):
    server.slow_seconds = 0.4  # every round waits a little for this camera: kills land mid-round
    server.sigma["crash"] = 0.0
    config = write_config(tmp_path / "cams.yaml", [
        {"name": "crash", "url": server.url("/scene/crash")},
        {"name": "dawdler", "url": server.url("/slow"), "timeout": 3},
        *({"name": f"extra-{i}", "url": server.url(f"/scene/extra{i}")} for i in range(6)),
    ])
    state = tmp_path / "cams.state.json"
    rng = np.random.default_rng(0)
    lengths = []
    try:
        for _ in range(3):
            before = state.read_bytes() if state.exists() else b""
            proc = popen_cli(config, "--watch", "1", "--report", tmp_path / "report.txt")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (not state.exists() or state.read_bytes() == before):
                time.sleep(0.02)  # wait for this run to save a round...
            time.sleep(float(rng.uniform(0.0, 1.0)))  # ...then kill it somewhere in the next one
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            data = json.loads(state.read_text())  # whole and parseable, whenever the kill came
            assert data["version"] == 1 and set(data["cameras"]) >= {"crash", "dawdler"}
            lengths.append(len(data["cameras"]["crash"]["history"]))
        assert lengths == sorted(lengths) and lengths[-1] >= 3  # each run went on from the last one's baseline
        proc = run_cli(config, "--format", "json")
    finally:
        server.slow_seconds = 8.0
    assert proc.returncode == 0, proc.stderr
    crash = json.loads(proc.stdout)["cameras"][0]
    assert crash["state"] == "CLEAR" and crash["baseline"] is not None  # no relearning
    assert "(new)" not in proc.stderr  # the states were remembered: no event
    assert not list(tmp_path.glob(".cams.state.json.*.tmp"))  # a killed run's temporary file was cleared


@needs_model
def test_watch_stops_cleanly_on_ctrl_c_and_sigterm(server, tmp_path):
    config = write_config(tmp_path / "cams.yaml", [{"name": "lens", "url": server.url("/scene/watch")}])
    for sig, code, word in ((signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 0, "stopped")):
        report = tmp_path / f"report-{code}.txt"
        proc = popen_cli(config, "--watch", "1", "--report", report)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not report.exists():
            time.sleep(0.02)
        time.sleep(0.3)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=30)
        assert proc.returncode == code, stderr
        assert "Traceback" not in stderr
        assert stderr.strip().splitlines()[-1].startswith(f"{word} after ")
        assert json.loads((tmp_path / "cams.state.json").read_text())["cameras"]["lens"]["state"] == "CLEAR"
        assert report.read_text().splitlines()[1].split()[:2] == ["lens", "CLEAR"]


@needs_model
def test_watch_reloads_an_edited_config_and_keeps_going_on_a_broken_one(server, tmp_path):
    config = write_config(tmp_path / "cams.yaml", [{"name": "lens", "url": server.url("/scene/reload-a")}])
    report = tmp_path / "report.txt"

    def wait_for_report(cameras: list[str]) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lines = report.read_text().splitlines() if report.exists() else []
            if sorted(line.split()[0] for line in lines[1:] if line and not line.startswith(" ")
                      and line.split()[0] in {"lens", "dock"}) == sorted(cameras):
                return
            time.sleep(0.05)
        raise AssertionError(f"the report never listed {cameras}: {report.read_text()}")

    proc = popen_cli(config, "--watch", "1", "--report", report, "--state", tmp_path / "state.json")
    try:
        wait_for_report(["lens"])
        write_config(config, [{"name": "lens", "url": server.url("/scene/reload-a")},
                              {"name": "dock", "url": server.url("/scene/reload-b"), "password_env": "CAM_PASS",
                               "username_env": "CAM_USER"}])
        wait_for_report(["dock", "lens"])
        config.write_text("cameras: [{name: lens, url: http://x/, frames: many}]")  # a slip while editing
        time.sleep(2.5)  # two more rounds, still with both cameras
        wait_for_report(["dock", "lens"])
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    lines = stderr.strip().splitlines()
    assert "config reloaded: 2 cameras (added: dock)" in lines
    warnings = [line for line in lines if line.startswith("warning:")]
    assert warnings == [f"warning: {config}: camera 'lens': frames: 'many' is not a number; "
                        "still checking the 2 cameras loaded before"]  # once, not every round
    assert "Traceback" not in stderr and PASSWORD not in stderr
    assert json.loads((tmp_path / "state.json").read_text())["cameras"]["lens"]["history"]  # its baseline went on


def test_snapshot_names_are_safe_and_distinct():
    stems = snapshot_stems(["Front Gate", "front gate", "../../etc/passwd", "...", "caméra 2"])
    assert list(stems.values()) == ["Front_Gate", "front_gate-2", "etc_passwd", "camera", "cam_ra_2"]


def test_render_formats_have_the_same_records(tmp_path):
    from ensemble.cameras.monitor import Check, Round

    cam = load_config(write_config(tmp_path / "c.yaml", [{"name": "gate", "url": "http://u:p4ss@x/"}]), {})[0]
    check = Check(camera=cam, state="UNREACHABLE", reason="connection refused", checked_at="2024-01-01T00:00:00Z",
                  duration=0.01, previous="CLEAR", since="2024-01-01T00:00:00Z")
    done = Round([check], [], "2024-01-01T00:00:00Z", 0.01)
    rows = render(done, "csv").splitlines()
    assert rows[0].split(",")[:3] == ["camera", "state", "previous"] and rows[1].startswith("gate,UNREACHABLE,CLEAR")
    assert json.loads(render(done, "json"))["cameras"][0]["url"] == "http://***@x/"
    assert render(done, "nagios").startswith("CAMERAS CRITICAL - 1 unreachable: gate (connection refused)")
    assert "p4ss" not in render(done, "table") + render(done, "csv") + render(done, "json")


# --------------------------------------------------------------------------------------------------------------
# The scale


def test_scale_per_camera_is_checked_on_load(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", [{"name": "a", "url": "http://x/"},
                                             {"name": "b", "url": "http://y/", "scale": "Native"}],
                       defaults={"scale": "screen"})
    a, b = load_config(cfg, {})
    assert (a.scale, b.scale) == ("screen", "native")
    (plain,) = load_config(write_config(tmp_path / "p.yaml", [{"name": "a", "url": "http://x/"}]), {})
    assert plain.scale is None  # the command line's --scale, auto unless given
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path / "bad.yaml", [{"name": "a", "url": "http://x/", "scale": "huge"}]), {})
    assert str(info.value) == f"{tmp_path / 'bad.yaml'}: camera 'a': scale: 'huge' is not one of screen, native, auto"


class ScaleSpy:
    """The real detector, recording the scale each predict_decoded call was asked for."""

    def __init__(self, detector):
        self._detector, self.scales = detector, []

    def __getattr__(self, name):
        return getattr(self._detector, name)

    def predict_decoded(self, decoded, with_map=True, scale=None):
        self.scales.append(scale)
        return self._detector.predict_decoded(decoded, with_map, scale)


@needs_model
def test_each_camera_is_judged_at_its_scale_and_the_record_says_so(server, detector, tmp_path):
    spy = ScaleSpy(detector)
    config = write_config(tmp_path / "cams.yaml", [{"name": "plain", "url": server.url("/scene/plain")},
                                                   {"name": "flat", "url": server.url("/scene/flat"),
                                                    "scale": "screen"}])
    cameras = load_config(config, {})
    mon = Monitor(cameras, spy, {}, Settings(threshold=detector.threshold, baseline_size=3, timeout=5.0))
    assert mon.settings.scale == "auto" and [mon.scale_of(c) for c in cameras] == ["auto", "screen"]
    checks = by_name(mon.run_round())
    assert sorted(spy.scales) == ["auto", "screen"]
    for name in ("plain", "flat"):
        record = checks[name].record()
        assert list(record) == list(CAMERA_FIELDS)
        assert record["scale"] == "screen" and record["content"] in ("photo", "document"), record
    spy.scales.clear()
    Monitor(cameras, spy, {}, Settings(threshold=detector.threshold, timeout=5.0, scale="screen")).run_round()
    assert spy.scales == ["screen", "screen"]


@needs_model
def test_native_scale_without_its_meta_network_is_a_config_error(server, tmp_path, model_without_native_meta):
    model = ("--model", model_without_native_meta)
    cfg = write_config(tmp_path / "c.yaml", [{"name": "board", "url": server.url("/scene/board"), "scale": "native"}])
    proc = run_cli(cfg, *model)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == ("error: camera 'board': scale native: the model has no native-scale "
                                   "meta-network (final_model/meta_native.onnx); judge at scale screen or auto, or "
                                   "use a model trained with one")
    plain = write_config(tmp_path / "p.yaml", [{"name": "board", "url": server.url("/scene/board")}])
    proc = run_cli(plain, "--scale", "native", *model)
    assert proc.returncode == 3 and proc.stderr.strip().startswith("error: --scale native: the model has no"), \
        proc.stderr
    proc = run_cli(plain, "--scale", "huge", *model)
    assert proc.returncode == 3 and "invalid choice: 'huge'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(plain, "--scale", "screen", "--format", "json", *model)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["cameras"][0]["scale"] == "screen"
