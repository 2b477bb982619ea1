"""The server against a hostile client: cross-site requests, two servers on one ``--root``, slow requests.

Cross-site checks go through FastAPI's TestClient (every state-changing route, every auth mode); the root lock and
the read timeouts through real ``blur-detect serve`` processes on 127.0.0.1 (the timeouts with raw sockets). Waits
are bounded and generous; nothing asserts how fast anything is.
"""
import errno
import json
import os
import select
import signal
import socket
import time

import pytest

from fixtures import make_photo, save_jpeg

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from ensemble.review.lock import RootInUse  # noqa: E402
from ensemble.server.app import ServerSettings, create_app  # noqa: E402
from ensemble.server.auth import cross_site, loopback_hosts  # noqa: E402
from test_server_api import TOKEN, jpeg_bytes, serve, wait_for_url, wait_healthy  # noqa: E402

ORIGIN = "http://127.0.0.1:8000"
"""The address the TestClients below are reached at (a loopback name, so the Host check lets it through)."""

# ----------------------------------------------------------------------------------------------------------------
# 1. Cross-site requests

MODES = {
    # As `blur-detect serve` sets them up: loopback servers also check the Host header, with or without a token.
    "loopback-no-token": dict(trusted_hosts=loopback_hosts("127.0.0.1")),
    "loopback-token": dict(token=TOKEN, trusted_hosts=loopback_hosts("127.0.0.1")),
    "any-address-token": dict(host="0.0.0.0", token=TOKEN),
}

CHANGES = [  # (method, path, request arguments) of every route that changes something
    ("POST", "/api/predict", "upload"),
    ("POST", "/api/models/shipped/activate", {}),
    ("POST", "/api/models/train", {"json": {"data": "missing"}}),
    ("DELETE", "/api/jobs/0123456789ab", {}),
    ("PUT", "/api/review/override", {"json": {"path": "a.jpg", "decision": "reject"}}),
    ("PUT", "/api/review/threshold", {"json": {"threshold": 0.3}}),
    ("POST", "/api/review/apply", {"json": {"threshold": 0.5, "paths": []}}),
    ("POST", "/api/review/undo", {}),
    ("POST", "/api/review/rescan", {}),
]

HOSTILE = [  # what a browser sends with a request another page makes it send
    {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Origin": "http://127.0.0.1:8001", "Sec-Fetch-Site": "same-site"},  # another port of this host
    {"Origin": "http://127.0.0.1:8001"},
    {"Origin": "http://localhost:8000"},  # another name is another origin (the browser's Host would say so)
    {"Origin": "null"},  # sandboxed frames, file:// pages
    {"Referer": "https://evil.example/page.html"},  # older browsers: no Origin, no Sec-Fetch-Site
]

FRIENDLY = [  # the server's own page, a typed address, and programs
    {"Origin": ORIGIN, "Sec-Fetch-Site": "same-origin"},
    {"Sec-Fetch-Site": "none"},
    {"Referer": ORIGIN + "/"},
    {},  # curl, scripts
]


@pytest.fixture(scope="module")
def clients(tmp_path_factory):
    """One client per auth mode, each on its own review root (a root is locked by its server)."""
    photo = jpeg_bytes(make_photo(1, (96, 128)))
    out = {}
    for mode, kw in MODES.items():
        base = tmp_path_factory.mktemp(mode)
        (base / "photos").mkdir()
        (base / "photos" / "a.jpg").write_bytes(photo)
        (base / "data").mkdir()
        app = create_app(ServerSettings(models_dir=base / "models", data_roots=(base / "data",),
                                        root=base / "photos", **kw))
        client = TestClient(app, base_url=ORIGIN)
        client.__enter__()
        if "token" in kw:
            client.cookies.set("blur_token", TOKEN)  # a browser that opened the page sends it to any request
        out[mode] = (client, photo)
    yield out
    for client, _ in out.values():
        client.__exit__(None, None, None)


def call(client, photo, method, path, kwargs, headers):
    if kwargs == "upload":
        kwargs = {"files": [("files", ("a.jpg", photo, "image/jpeg"))]}
    return client.request(method, path, headers=headers, **kwargs)


@pytest.mark.parametrize("method, path, kwargs", CHANGES, ids=[f"{m} {p}" for m, p, _ in CHANGES])
@pytest.mark.parametrize("mode", MODES)
def test_every_state_changing_route_refuses_cross_site_requests(clients, mode, method, path, kwargs):
    client, photo = clients[mode]
    for headers in HOSTILE:
        r = call(client, photo, method, path, kwargs, headers)
        assert r.status_code == 403, (headers, r.text)
        detail = r.json()["detail"]
        assert detail.startswith(("cross-site request refused", "cross-origin request refused")), detail
        assert "\n" not in detail
        # A valid bearer token does not make a cross-site request acceptable either.
        if "token" in mode:
            r = call(client, photo, method, path, kwargs, {**headers, "Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 403, (headers, r.text)


@pytest.mark.parametrize("method, path, kwargs", CHANGES, ids=[f"{m} {p}" for m, p, _ in CHANGES])
@pytest.mark.parametrize("mode", MODES)
def test_the_servers_own_pages_and_programs_still_change_things(clients, mode, method, path, kwargs):
    client, photo = clients[mode]
    for headers in FRIENDLY:
        r = call(client, photo, method, path, kwargs, headers)
        # Not refused as cross-site (404 unknown job, 409 nothing to undo, 422 no such dataset are answers).
        assert r.status_code in (200, 202, 404, 409, 422), (headers, r.status_code, r.text)


def test_the_reported_request_no_longer_switches_the_model(clients):
    client, _ = clients["loopback-no-token"]
    r = client.post("/api/models/shipped/activate",
                    headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    assert client.post("/api/models/shipped/activate").status_code == 200  # curl still can


def test_the_list_of_state_changing_routes_is_complete(clients):
    """A new route that changes something must be added to CHANGES (and is refused cross-site by the middleware)."""
    client, _ = clients["loopback-no-token"]
    spec = client.get("/openapi.json").json()
    found = {(method.upper(), path) for path, operations in spec["paths"].items() for method in operations
             if method.upper() not in ("GET", "HEAD", "OPTIONS")}
    listed = {(m, p.replace("shipped", "{name}").replace("0123456789ab", "{job_id}")) for m, p, _ in CHANGES}
    assert found == listed


@pytest.mark.parametrize("mode", MODES)
def test_reads_stay_open_cross_site(clients, mode):
    """GET changes nothing, and the browser does not let another site read the answer: unchanged design."""
    client, _ = clients[mode]
    for path in ("/api/models", "/api/models/shipped", "/api/jobs", "/api/review/status", "/healthz"):
        r = client.get(path, headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 200, (path, r.text)


@pytest.mark.parametrize("host, origin, same", [
    ("127.0.0.1:8000", "http://127.0.0.1:8000", True),
    ("LOCALHOST:8000", "http://localhost:8000", True),
    ("[::1]:8000", "http://[::1]:8000", True),
    ("photos.example", "https://photos.example", True),  # behind a TLS proxy that keeps the Host
    ("photos.example", "https://photos.example:443", True),
    ("photos.example:80", "http://photos.example", True),
    ("127.0.0.1:8000", "http://127.0.0.1:8001", False),
    ("127.0.0.1:8000", "http://127.0.0.1", False),
    ("127.0.0.1:8000", "http://127.0.0.1.evil.example:8000", False),
    ("127.0.0.1:8000", "http://127.0.0.1:notaport", False),
    ("", "http://127.0.0.1:8000", False),  # no Host header
])
def test_origin_must_name_the_server_of_the_host_header(host, origin, same):
    headers = {b"host": host.encode(), b"origin": origin.encode()}
    assert (cross_site(headers) is None) == same


def test_the_review_router_uses_the_servers_check():
    from ensemble.review import service
    from ensemble.server import auth

    assert service.same_origin is auth.same_origin
    assert cross_site({b"sec-fetch-site": b"same-site"}) and cross_site({b"sec-fetch-site": b"none"}) is None


# ----------------------------------------------------------------------------------------------------------------
# 2. One server per --root


def test_a_second_review_of_the_same_root_is_refused_in_process(tmp_path):
    from ensemble.review.service import ReviewService

    root = tmp_path / "photos"
    save_jpeg(root / "a.jpg", make_photo(2, (64, 80)))
    before = sorted(os.listdir(root))
    first = ReviewService(root, lambda: None)
    assert sorted(os.listdir(root)) == before  # the lock adds no file to the user's folder
    with pytest.raises(RootInUse, match="already being reviewed"):
        ReviewService(root, lambda: None)
    (tmp_path / "link").symlink_to(root, target_is_directory=True)
    with pytest.raises(RootInUse):  # the same folder under another name
        ReviewService(tmp_path / "link", lambda: None)
    with pytest.raises(RootInUse):  # the server's own API refuses too, before it listens
        create_app(ServerSettings(models_dir=tmp_path / "m", data_roots=(), root=root))
    assert first.stop()
    second = ReviewService(root, lambda: None)  # released by stop()
    assert second.stop()


def test_the_app_holds_the_root_for_its_lifetime(tmp_path):
    from ensemble.review.service import ReviewService

    root = tmp_path / "photos"
    root.mkdir()
    app = create_app(ServerSettings(models_dir=tmp_path / "m", data_roots=(), root=root))
    with TestClient(app):
        with pytest.raises(RootInUse):
            ReviewService(root, lambda: None)
    ReviewService(root, lambda: None).stop()  # the app's shutdown let go


def test_a_folder_that_cannot_be_locked_is_reviewed_unlocked(tmp_path, monkeypatch, caplog):
    import fcntl

    from ensemble.review.service import ReviewService

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)  # as on some network file systems
    root = tmp_path / "photos"
    root.mkdir()
    with caplog.at_level("WARNING", "ensemble.review"):
        service = ReviewService(root, lambda: None)
    assert service.stop()
    assert any("cannot lock" in rec.getMessage() for rec in caplog.records)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to any folder: a read-only one cannot be made")
def test_a_read_only_root_still_locks(tmp_path):
    from ensemble.review.lock import RootLock

    root = tmp_path / "photos"
    root.mkdir()
    root.chmod(0o555)
    try:
        lock = RootLock(root)
        assert lock.acquire()
        with pytest.raises(RootInUse):
            RootLock(root).acquire()
        lock.release()
    finally:
        root.chmod(0o755)


def stop(proc) -> str:
    """SIGINT, then the stderr left; killed if it does not end in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=60)[1]
    except Exception:
        proc.kill()
        proc.communicate(timeout=10)
        raise


def test_a_second_server_on_the_same_root_exits_at_once_with_one_line(tmp_path):
    import httpx

    root = tmp_path / "photos"
    save_jpeg(root / "a.jpg", make_photo(3, (64, 80)))
    args = ("--port", "0", "--root", str(root), "--log-level", "warning")
    first = serve(*args, "--models-dir", str(tmp_path / "m1"))
    procs = [first]
    try:
        url = wait_for_url(first)
        wait_healthy(url)
        second = serve(*args, "--models-dir", str(tmp_path / "m2"))
        procs.append(second)
        out, err = second.communicate(timeout=60)
        assert second.returncode == 1, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert err.startswith("error: --root:") and "already being reviewed" in err
        assert httpx.get(url + "api/review/status", timeout=10).status_code == 200  # the first one is unharmed
        first_err = stop(first)
        assert first.returncode == 0 and "Traceback" not in first_err, first_err[-2000:]
        third = serve(*args, "--models-dir", str(tmp_path / "m3"))  # the lock went with the first server
        procs.append(third)
        wait_healthy(wait_for_url(third))
        stop(third)
        assert third.returncode == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)


# ----------------------------------------------------------------------------------------------------------------
# 3. Read timeouts (raw sockets against a real server)

TIMEOUT = 0.5  # the server's header and body timeouts in these tests (s)
BOUND = 30.0  # the most a test waits for the server to act (s): generous, never a measure of speed


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    """A `blur-detect serve` with 0.5 s header and body timeouts; yields (port, its temporary folder)."""
    base = tmp_path_factory.mktemp("timeouts")
    tmp = base / "tmp"
    tmp.mkdir()
    proc = serve("--port", "0", "--models-dir", str(base / "models"), "--header-timeout", str(TIMEOUT),
                 "--body-timeout", str(TIMEOUT), "--log-level", "warning", env={"TMPDIR": str(tmp)})
    try:
        url = wait_for_url(proc)
        wait_healthy(url)
        yield int(url.rstrip("/").rsplit(":", 1)[1]), tmp
    finally:
        stop(proc)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=BOUND)


def read_response(sock) -> bytes:
    """One whole response (headers and Content-Length body), the connection left open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection mid-answer"
        body += chunk
    assert len(body) == length
    return head + b"\r\n\r\n" + body


def read_to_close(sock) -> bytes:
    """Everything the server sends until it closes the connection (at most BOUND seconds of silence)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def trickle(sock, piece: bytes, times: int = 150, pause: float = 0.1) -> bool:
    """Send ``piece`` every ``pause`` s, at most ``times`` times, until the server answers or closes.

    True when it did (a per-byte timer would never fire: the pauses are shorter than the timeouts).
    """
    for _ in range(times):
        if select.select([sock], [], [], 0)[0]:
            return True
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return True
        time.sleep(pause)
    return False


def status_and_body(data: bytes) -> tuple[int, dict]:
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body else {}


def test_an_idle_connection_is_closed(slow_server):
    port, _ = slow_server
    with connect(port) as sock:
        assert read_to_close(sock) == b""  # no request came: closed without an answer


@pytest.mark.parametrize("after_a_request", [False, True], ids=["first request", "keep-alive request"])
def test_headers_trickled_forever_get_408_and_the_connection_closed(slow_server, after_a_request):
    port, _ = slow_server
    with connect(port) as sock:
        if after_a_request:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert trickle(sock, b"X-Padding: 1\r\n"), "the server waited for the headers for ever"
        status, body = status_and_body(read_to_close(sock))
    assert status == 408 and "headers did not arrive" in body["detail"]


MULTIPART = b"multipart/form-data; boundary=b0undary"


def upload_head(length: int) -> bytes:
    return (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + MULTIPART +
            b"\r\nContent-Length: " + str(length).encode() + b"\r\n\r\n"
            b'--b0undary\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n\r\n'
            b"\xff\xd8\xff\xe0" + b"\x00" * 2000)


def leftovers(tmp) -> list:
    return [p.name for p in tmp.iterdir() if p.name.startswith("blur-detect-upload-")]


@pytest.mark.parametrize("trickled, words", [(False, "nothing arrived for 0.5 s"), (True, "slower than 1 KB/s")])
def test_an_upload_that_stops_or_trickles_gets_408_and_its_files_are_removed(slow_server, trickled, words):
    port, tmp = slow_server
    with connect(port) as sock:
        sock.sendall(upload_head(1_000_000))  # then nothing more, or a byte at a time
        if trickled:
            assert trickle(sock, b"\x00"), "the server waited for the body for ever"
        status, body = status_and_body(read_to_close(sock))
    assert status == 408 and words in body["detail"], body
    assert leftovers(tmp) == []


def test_a_body_the_server_does_not_read_cannot_hold_the_connection(slow_server):
    """Answered at once (404, the body unread): uvicorn reads and drops the rest, but not for ever."""
    port, _ = slow_server
    with connect(port) as sock:
        sock.sendall(b"POST /api/models/nope/activate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Length: 1000000\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 404")
        assert trickle(sock, b"\x00", pause=0.05), "the server read the unwanted body for ever"
        assert read_to_close(sock) == b""  # what woke us was the close


def test_a_prompt_upload_is_still_scored(slow_server):
    import httpx

    port, tmp = slow_server
    photo = jpeg_bytes(make_photo(4, (96, 128)))
    r = httpx.post(f"http://127.0.0.1:{port}/api/predict", files=[("files", ("a.jpg", photo, "image/jpeg"))],
                   timeout=BOUND)
    assert r.status_code == 200 and r.json()[0]["error"] is None
    assert leftovers(tmp) == []
