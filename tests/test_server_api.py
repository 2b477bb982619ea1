"""The HTTP service through FastAPI's TestClient: prediction, bad uploads, auth, path confinement, error bodies;
plus ``blur-detect serve`` itself (start-up errors, a live server with two workers)."""
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
import types

import numpy as np
import pytest
from PIL import Image

from fixtures import REPO_ROOT, blur, make_csv_dataset, make_photo

pytest.importorskip("fastapi")
from fastapi import APIRouter  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from ensemble.cli import RECORD_FIELDS  # noqa: E402
from ensemble.server.app import ServerSettings, create_app  # noqa: E402

TOKEN = "test-token-0123456789abcdef"


def jpeg_bytes(img: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos():
    """A sharp photo, a strongly blurred copy (JPEG bytes) and the sharp one as PNG."""
    sharp = make_photo(3, (480, 640))
    png = io.BytesIO()
    Image.fromarray(sharp).save(png, "PNG")
    return {"sharp": jpeg_bytes(sharp), "blurry": jpeg_bytes(blur(sharp, "gaussian", 5.0)), "png": png.getvalue()}


def make_client(tmp_path, **kw) -> TestClient:
    kw.setdefault("models_dir", tmp_path / "models")
    kw.setdefault("data_roots", ())
    return TestClient(create_app(ServerSettings(**kw)))


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with make_client(tmp_path_factory.mktemp("api")) as c:
        yield c


def detail(response) -> str:
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str), body
    assert "\n" not in body["detail"] and "Traceback" not in body["detail"]
    return body["detail"]


# -- prediction ----------------------------------------------------------------------------------------------------


def test_predict_returns_scan_records_in_upload_order(client, photos):
    from ensemble.detector import BlurDetector

    files = [("files", ("sharp.jpg", photos["sharp"], "image/jpeg")),
             ("files", ("blurry.jpg", photos["blurry"], "image/jpeg")),
             ("files", ("sharp.png", photos["png"], "image/png"))]
    r = client.post("/api/predict", files=files)
    assert r.status_code == 200, r.text
    assert r.headers["x-blur-model"] == "shipped"
    records = r.json()
    assert [list(rec) for rec in records] == [list(RECORD_FIELDS)] * 3
    assert [rec["path"] for rec in records] == ["sharp.jpg", "blurry.jpg", "sharp.png"]
    assert [rec["label"] for rec in records] == ["sharp", "blurry", "sharp"]
    assert all(rec["error"] is None and (rec["width"], rec["height"]) == (640, 480) for rec in records)
    # The same numbers as the library (and so as `blur-detect scan`) gives for the same bytes.
    detector = BlurDetector.load(threads=1)
    expected = detector.predict_array(np.asarray(Image.open(io.BytesIO(photos["blurry"])).convert("L")))
    assert records[1]["blur_probability"] == pytest.approx(expected.blur_probability, abs=1e-4)


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"b0undary") -> dict:
    """Raw multipart/form-data request arguments, for names an HTTP client would escape: (disposition, body)."""
    body = b"".join(b"--" + boundary + b"\r\nContent-Disposition: " + disp + b"\r\n\r\n" + data + b"\r\n"
                    for disp, data in parts) + b"--" + boundary + b"--\r\n"
    return {"content": body, "headers": {"content-type": f"multipart/form-data; boundary={boundary.decode()}"}}


def test_upload_names_are_sanitised(client, photos):
    names = [b"../../etc/passwd.jpg", b"C:\\Users\\me\\holiday.jpg", b"bad\x1b\x7fname.jpg", b"..",
             "\u00e9t\u00e9.jpg".encode()]
    parts = [(b'form-data; name="files"; filename="' + n + b'"', photos["sharp"]) for n in names]
    parts.append((b"form-data; name=\"files\"; filename*=UTF-8''%C3%A9t%C3%A9%202.jpg", photos["sharp"]))
    records = client.post("/api/predict", **multipart(parts)).json()
    assert [rec["path"] for rec in records] == ["passwd.jpg", "holiday.jpg", "badname.jpg", "upload-4",
                                                "\u00e9t\u00e9.jpg", "\u00e9t\u00e9 2.jpg"]


def test_type_is_sniffed_not_taken_from_name_or_content_type(client, photos):
    r = client.post("/api/predict", files=[("files", ("notes.txt", photos["sharp"], "text/plain"))])
    assert r.status_code == 200 and r.json()[0]["label"] == "sharp"
    r = client.post("/api/predict", files=[("files", ("photo.jpg", b"%PDF-1.7 pretending " * 10, "image/jpeg"))])
    assert r.status_code == 415
    assert detail(r).startswith("photo.jpg: not an image")


def test_a_corrupt_image_in_a_batch_is_an_error_record_and_the_rest_are_scored(client, photos):
    files = [("files", ("good.jpg", photos["sharp"], "image/jpeg")),
             ("files", ("truncated.jpg", photos["sharp"][:1500], "image/jpeg")),
             ("files", ("empty.jpg", b"", "image/jpeg")),
             ("files", ("garbled.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "image/png"))]
    r = client.post("/api/predict", files=files)
    assert r.status_code == 200
    good, truncated, empty, garbled = r.json()
    assert good["label"] == "sharp" and good["error"] is None
    for rec in (truncated, empty, garbled):
        assert rec["label"] == "error" and rec["blur_probability"] is None and rec["error"]
        assert "\n" not in rec["error"]
    assert "empty" in empty["error"]


def test_too_large_file_is_413(tmp_path, photos):
    with make_client(tmp_path, max_upload_bytes=20_000) as c:
        r = c.post("/api/predict", files=[("files", ("big.jpg", photos["sharp"], "image/jpeg"))])
        assert len(photos["sharp"]) > 20_000 and r.status_code == 413
        assert "big.jpg: file too large" in detail(r)
        small = jpeg_bytes(make_photo(4, (64, 64)))
        assert c.post("/api/predict", files=[("files", ("s.jpg", small, "image/jpeg"))]).status_code == 200


def test_too_many_files_and_oversized_request_are_413(tmp_path, photos):
    with make_client(tmp_path, max_files=2, max_upload_bytes=100_000) as c:
        files = [("files", (f"{i}.jpg", photos["sharp"], "image/jpeg")) for i in range(3)]
        r = c.post("/api/predict", files=files)
        assert r.status_code == 413 and "too many files" in detail(r)
        r = c.post("/api/predict", content=b"x" * 10, headers={
            "content-type": "multipart/form-data; boundary=abc", "content-length": str(10**9)})
        assert r.status_code == 413 and "request too large" in detail(r)


@pytest.mark.parametrize("kwargs, status, words", [
    ({"json": {"files": []}}, 415, "expected a multipart/form-data body"),
    ({"content": b"hello", "headers": {"content-type": "multipart/form-data"}}, 422, "boundary"),
    ({"content": b"--abc\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.jpg\"\r\n\r\n\xff\xd8\xff",
      "headers": {"content-type": "multipart/form-data; boundary=abc"}}, 422, "ends before its closing boundary"),
    ({"data": {"threshold": "0.5"}, "files": [("files", ("a.jpg", b"\xff\xd8\xff" + b"0" * 64, "image/jpeg"))]},
     422, "unexpected form field 'threshold'"),
    ({"files": [("image", ("a.jpg", b"\xff\xd8\xff" + b"0" * 64, "image/jpeg"))]}, 422, "unexpected file field"),
    ({"data": {"files": "photo bytes sent as text"},
      "files": [("files", ("a.jpg", b"\xff\xd8\xff" + b"0" * 64, "image/jpeg"))]}, 422,
     "field 'files' holds text, not a file"),
    ({"content": b"--abc--\r\n", "headers": {"content-type": "multipart/form-data; boundary=abc"}}, 422,
     "no file uploaded"),
])
def test_malformed_requests_get_one_clear_message(client, kwargs, status, words):
    r = client.post("/api/predict", **kwargs)
    assert r.status_code == status, r.text
    assert words in detail(r)


def test_validation_errors_are_one_line(client):
    r = client.post("/api/models/train", json={"data": "x", "epochs": 0, "bogus": 1})
    assert r.status_code == 422
    message = detail(r)
    assert message.startswith("invalid request:") and "epochs" in message and "bogus" in message


def test_an_unexpected_error_is_a_json_500_without_traceback(tmp_path, caplog):
    app = create_app(ServerSettings(models_dir=tmp_path / "m", data_roots=()))

    def broken():
        raise RuntimeError("disk on fire\nsecond line")

    app.state.registry.entries = broken
    with TestClient(app, raise_server_exceptions=False) as c, caplog.at_level("ERROR", "ensemble.server"):
        r = c.get("/api/models")
    assert r.status_code == 500 and detail(r) == "internal error: RuntimeError"
    assert any("disk on fire second line" in rec.getMessage() for rec in caplog.records)


def test_health_and_index_pages(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["model"] == "shipped"
    r = client.get("/")
    assert r.status_code == 200 and 'href="/docs"' in r.text
    spec = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/models", "/api/models/{name}/activate", "/api/models/train", "/api/jobs/{job_id}",
            "/healthz"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]


def test_models_list_shows_the_shipped_model_with_its_metadata(client):
    body = client.get("/api/models").json()
    assert body["active"] == "shipped"
    shipped = body["models"][0]
    assert shipped["name"] == "shipped" and shipped["active"] and shipped["shipped"]
    assert shipped["hyperparameters"]["patch_size"] == 96 and shipped["data"]["images"] > 0
    assert 0 < shipped["metrics"]["validation"]["accuracy"] <= 1
    assert client.get("/api/models/nope").status_code == 404
    assert client.post("/api/models/nope/activate").status_code == 404


def test_predict_path_never_imports_tensorflow(tmp_path):
    code = (
        "import sys, io; from fastapi.testclient import TestClient; from PIL import Image;"
        "from ensemble.server.app import create_app, ServerSettings;"
        f"app = create_app(ServerSettings(models_dir=r'{tmp_path}', data_roots=()));"
        "buf = io.BytesIO(); Image.new('L', (200, 200), 128).save(buf, 'JPEG');"
        "c = TestClient(app); c.__enter__();"
        "r = c.post('/api/predict', files=[('files', ('a.jpg', buf.getvalue(), 'image/jpeg'))]);"
        "assert r.status_code == 200, r.text; c.get('/api/models'); c.get('/api/jobs');"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]


# -- authentication ------------------------------------------------------------------------------------------------


def test_without_token_on_loopback_the_api_is_open(client):
    assert client.get("/api/models").status_code == 200


def test_token_is_required_on_every_api_route(tmp_path, photos):
    with make_client(tmp_path, token=TOKEN) as c:
        for method, url in (("get", "/api/models"), ("get", "/api/jobs"), ("post", "/api/models/shipped/activate"),
                            ("get", "/api/jobs/0123456789ab"), ("post", "/api/nowhere")):
            r = getattr(c, method)(url)
            assert r.status_code == 401, url
            assert r.headers["www-authenticate"].startswith("Bearer") and "Authorization: Bearer" in detail(r)
        r = c.post("/api/predict", files=[("files", ("a.jpg", photos["sharp"], "image/jpeg"))])
        assert r.status_code == 401
        assert c.get("/api/models", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        assert c.get("/api/models", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
        ok = {"Authorization": f"Bearer {TOKEN}"}
        assert c.get("/api/models", headers=ok).status_code == 200
        r = c.post("/api/predict", files=[("files", ("a.jpg", photos["sharp"], "image/jpeg"))], headers=ok)
        assert r.status_code == 200 and r.json()[0]["label"] == "sharp"
        # Pages, health and the spec stay open.
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200
        spec = c.get("/openapi.json").json()
        assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_page_opened_with_token_sets_a_strict_httponly_cookie(tmp_path):
    with make_client(tmp_path, token=TOKEN) as c:
        r = c.get(f"/?token={TOKEN}&x=1", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/?x=1"  # the token leaves the address bar
        cookie = r.headers["set-cookie"]
        assert cookie.startswith(f"blur_token={TOKEN}") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert c.get("/api/models").status_code == 200  # the client kept the cookie: accepted on /api
        c.cookies.clear()
        assert c.get("/api/models").status_code == 401
        c.cookies.set("blur_token", "forged")
        assert c.get("/api/models").status_code == 401
        assert c.get("/?token=wrong", follow_redirects=False).status_code == 401


def test_token_redirect_never_leaves_this_site():
    import asyncio

    from ensemble.server.auth import AuthMiddleware

    sent = []

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):  # never reached: the middleware answers with the redirect
        raise AssertionError(scope)

    middleware = AuthMiddleware(app, token=TOKEN)
    for path in ("//evil.host", "/\\evil.host", "///evil.host/x"):
        sent.clear()
        scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": [],
                 "query_string": f"token={TOKEN}".encode()}
        asyncio.run(middleware(scope, None, send))
        location = dict(sent[0]["headers"])[b"location"].decode()
        assert sent[0]["status"] == 303 and location.startswith("/") and location[1] not in "/\\", location


def test_non_loopback_host_requires_a_token(tmp_path):
    with pytest.raises(ValueError, match="token is required"):
        create_app(ServerSettings(host="0.0.0.0", models_dir=tmp_path, data_roots=()))
    settings = ServerSettings(host="0.0.0.0", token=TOKEN, models_dir=tmp_path, data_roots=())
    assert settings.auth_required
    with TestClient(create_app(settings)) as c:
        assert c.get("/api/models").status_code == 401


def test_loopback_server_refuses_foreign_host_names(tmp_path):
    """DNS rebinding: a web page on evil.example whose name resolves to 127.0.0.1 must not reach the API."""
    from ensemble.server.auth import loopback_hosts

    with make_client(tmp_path, trusted_hosts=loopback_hosts("127.0.0.1")) as c:
        assert c.get("/api/models", headers={"host": "evil.example:8000"}).status_code == 400
        assert c.get("/api/models", headers={"host": "127.0.0.1:8000"}).status_code == 200
        assert c.get("/api/models", headers={"host": "localhost"}).status_code == 200
        assert c.get("/api/models", headers={"host": "[::1]:8000"}).status_code == 200


def test_review_page_is_mounted_with_root_and_guarded_by_the_token(tmp_path, monkeypatch):
    """The contract with ensemble.review: ReviewService(root, get_detector, scale=), its router, start/stop."""
    calls = []

    class FakeReview:
        def __init__(self, root, get_detector, scale):
            self.root, self.get_detector = root, get_detector
            calls.append(f"scale {scale}")
            self.router = APIRouter()
            self.router.add_api_route("/", lambda: {"page": "review"})
            self.router.add_api_route("/api/review/status", lambda: {"threshold": get_detector().threshold})

        def start(self):
            calls.append("start")

        def stop(self):
            calls.append("stop")

    monkeypatch.setitem(sys.modules, "ensemble.review.service", types.SimpleNamespace(ReviewService=FakeReview))
    app = create_app(ServerSettings(root=tmp_path, token=TOKEN, models_dir=tmp_path / "m", data_roots=(),
                                    scale="screen"))
    with TestClient(app) as c:
        assert calls == ["scale screen", "start"]
        assert c.get("/").json() == {"page": "review"}
        assert c.get("/api/review/status").status_code == 401
        c.get(f"/?token={TOKEN}")  # sets the cookie, as the browser page does
        assert c.get("/api/review/status").json() == {"threshold": 0.5}
    assert calls == ["scale screen", "start", "stop"]
    assert app.state.review.root == tmp_path


# -- path confinement ----------------------------------------------------------------------------------------------


@pytest.fixture()
def data_root(tmp_path):
    """tmp/root (an allowed data root holding a valid dataset) and tmp/outside (a dataset outside it)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    make_csv_dataset(root / "ok", 4, size=(64, 80))
    make_csv_dataset(outside / "secret", 4, size=(64, 80))
    return root, outside


def test_training_data_paths_cannot_escape_the_data_roots(tmp_path, data_root):
    root, outside = data_root
    (root / "link-out").symlink_to(outside / "secret", target_is_directory=True)
    (root / "sneaky").mkdir()
    (root / "sneaky" / "labels.csv").write_text("path,blurry\n../../outside/secret/images/img_000.jpg,0\n")
    (root / "linked-images").mkdir()
    (root / "linked-images" / "labels.csv").write_text("path,blurry\nimages/img_000.jpg,0\n")
    (root / "linked-images" / "images").symlink_to(outside / "secret" / "images", target_is_directory=True)
    with make_client(tmp_path, data_roots=(root,)) as c:
        for data in ("../outside/secret", "ok/../../outside/secret", str(outside / "secret"), "link-out", "/etc",
                     "sneaky", "linked-images", "ok\x00"):
            r = c.post("/api/models/train", json={"data": data})
            assert r.status_code == 403, (data, r.text)
            assert "outside the allowed data roots" in detail(r) or "NUL" in detail(r)
        r = c.post("/api/models/train", json={"data": "missing"})
        assert r.status_code == 422 and "not found" in detail(r)
        (root / "loop").symlink_to("loop")  # resolving a link to itself raised RuntimeError: a 500
        r = c.post("/api/models/train", json={"data": "loop"})
        assert r.status_code == 422 and "symbolic link loop" in detail(r)
        r = c.post("/api/models/train", json={"data": "."})
        assert r.status_code == 422 and "no known dataset layout" in detail(r)
        assert c.get("/api/jobs").json() == []  # nothing was started
    with make_client(tmp_path) as c:  # no data roots at all: training is off
        r = c.post("/api/models/train", json={"data": "ok"})
        assert r.status_code == 403 and "--data-root" in detail(r)


@pytest.mark.parametrize("url", ["/api/jobs/..%2F..%2Fetc", "/api/jobs/../../etc/passwd", "/api/jobs/ABCDEF012345",
                                 "/api/models/..%2Fetc", "/api/models/.jobs"])
def test_ids_and_names_in_urls_cannot_reach_other_files(client, url):
    r = client.get(url)
    assert r.status_code == 404, r.text


def test_model_folder_linked_out_of_the_models_dir_is_not_a_model(tmp_path):
    from ensemble.detector import default_model_root

    models = tmp_path / "models"
    models.mkdir()
    (models / "elsewhere").symlink_to(default_model_root(), target_is_directory=True)
    (models / "loop").symlink_to("loop")  # a link to itself: no model, and no 500
    with make_client(tmp_path, models_dir=models) as c:
        assert [m["name"] for m in c.get("/api/models").json()["models"]] == ["shipped"]
        assert c.post("/api/models/elsewhere/activate").status_code == 404
        assert c.get("/api/models/loop").status_code == 404
        assert c.post("/api/models/loop/activate").status_code == 404


# -- the command ---------------------------------------------------------------------------------------------------


def serve(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "ensemble", "serve", *args], cwd=REPO_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})})


def wait_for_url(proc, timeout=60.0) -> str:
    """The URL a `blur-detect serve` prints once it listens (its stderr is read up to that line)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        m = re.search(r"listening on (http://\S+/)", line)
        if m:
            return m.group(1)
    raise AssertionError("server did not start")


def wait_healthy(url: str) -> None:
    """Until the server answers /healthz (it prints its URL before its workers, or uvicorn, are ready)."""
    import httpx

    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "healthz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.1)


def test_port_in_use_is_one_line_and_exit_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = serve("--port", str(port), "--models-dir", str(tmp_path))
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err.strip() == f"error: cannot listen on 127.0.0.1:{port}: address already in use"


def test_unencodable_host_name_is_one_line_and_exit_1(tmp_path):
    proc = serve("--host", "bad..host", "--port", "0", "--models-dir", str(tmp_path))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and err.startswith("error: cannot listen on bad..host:0:") and "Traceback" not in err


@pytest.mark.parametrize("args, words", [
    (["--token", "short"], "at least 16 characters"),
    (["--token", "has spaces and;semicolons-long-enough"], "only letters, digits"),
    (["--port", "70000"], "not a port number"),
    (["--workers", "0"], "must be at least 1"),
    (["--max-upload-mb", "inf"], "must be a finite number above 0"),
    (["--data-root", "/no/such/folder"], "is not a folder"),
    (["--header-timeout", "0"], "must be a finite number above 0"),
    (["--body-timeout", "nan"], "must be a finite number above 0"),
    (["--min-upload-rate", "-1"], "must be a finite number above 0"),
    (["--body-timeout", "soon"], "is not a number"),
])
def test_bad_arguments_are_usage_errors(tmp_path, args, words):
    proc = serve(*args, "--models-dir", str(tmp_path))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and words in err and "Traceback" not in err


def test_unwritable_models_dir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = serve("--port", "0", "--models-dir", str(blocker / "models"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and err.startswith("error: models folder") and len(err.strip().splitlines()) == 1


def test_live_server_with_two_workers_serves_and_stops_cleanly(tmp_path, photos):
    import httpx

    proc = serve("--port", "0", "--workers", "2", "--models-dir", str(tmp_path), "--token", TOKEN,
                 "--log-level", "warning")
    try:
        url = wait_for_url(proc)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        wait_healthy(url)  # the workers finish loading after the supervisor prints the URL
        for _ in range(4):
            r = httpx.post(url + "api/predict", files=[("files", ("a.jpg", photos["blurry"], "image/jpeg"))],
                           headers=headers, timeout=30)
            assert r.status_code == 200 and r.json()[0]["label"] == "blurry"
        assert httpx.get(url + "api/models", timeout=10).status_code == 401
        r = httpx.get(url + "api/models", timeout=10, headers={**headers, "Host": "evil.example"})
        assert r.status_code == 400  # loopback server: foreign Host names refused
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err


def test_unknown_jobs_are_404_even_before_any_job_ran(client):
    for method in ("get", "delete"):
        r = getattr(client, method)("/api/jobs/0123456789ab")
        assert r.status_code == 404 and detail(r) == "no job '0123456789ab'"


def test_tokens_in_urls_are_redacted_from_the_access_log():
    import logging

    from ensemble.server.auth import RedactToken

    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 0, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", f"/?x=1&token={TOKEN}&y=2", "1.1", 303), None)
    assert RedactToken().filter(record)
    assert TOKEN not in record.getMessage() and "/?x=1&token=***&y=2" in record.getMessage()


# -- the scale ------------------------------------------------------------------------------------------------------


def test_predict_takes_a_scale_per_request_and_the_server_default_otherwise(tmp_path, photos, monkeypatch):
    """The request's `scale` field, else the server's --scale, reaches the scoring; the records say what it
    resolved to (a 640 x 480 photo: screen at every scale) and what they show."""
    import ensemble.scan as scan

    real, asked = scan.score_one, []

    def score(detector, path, with_map=False, scale=None):
        asked.append(scale)
        return real(detector, path, with_map, scale)

    monkeypatch.setattr(scan, "score_one", score)
    files = [("files", ("a.jpg", photos["sharp"], "image/jpeg")), ("files", ("b.jpg", photos["blurry"], "image/jpeg"))]
    with make_client(tmp_path, scale="screen") as c:
        assert c.get("/healthz").json()["scale"] == "screen" and c.get("/api/models").json()["scale"] == "screen"
        for data, expected in (({}, "screen"), ({"scale": "auto"}, "auto"), ({"scale": " Screen "}, "screen")):
            asked.clear()
            r = c.post("/api/predict", files=files, data=data)
            assert r.status_code == 200, r.text
            assert asked == [expected] * 2 and r.headers["x-blur-scale"] == expected
            records = r.json()
            assert [rec["scale"] for rec in records] == ["screen", "screen"]
            assert all(rec["content"] in ("photo", "document") for rec in records), records
    with make_client(tmp_path) as c:  # the default: the detector's, auto
        health = c.get("/healthz").json()
        assert health["scale"] == "auto" and isinstance(health["native"], bool)
        asked.clear()
        assert c.post("/api/predict", files=files[:1]).status_code == 200 and asked == ["auto"]


@pytest.mark.parametrize("parts, words", [
    ([(b'form-data; name="scale"', b"huge")],
     "form field 'scale': scale must be one of screen, native, auto, not 'huge'"),
    ([(b'form-data; name="scale"', b"auto"), (b'form-data; name="scale"', b"screen")], "given twice"),
    ([(b'form-data; name="scale"; filename="s.txt"', b"auto")], "holds a file, not text"),
    ([(b'form-data; name="scale"', b"a" * 100)], "longer than 64 bytes"),
    ([(b'form-data; name="scale"', b"nat\x1bive")], "not 'nat\\x1bive'"),
])
def test_a_bad_scale_is_a_422_of_one_line(client, photos, parts, words):
    image = (b'form-data; name="files"; filename="a.jpg"', photos["sharp"])
    r = client.post("/api/predict", **multipart([image, *parts]))
    assert r.status_code == 422 and words in detail(r), r.text


def test_native_scale_without_its_meta_network_is_a_422(tmp_path, photos, model_without_native_meta):
    with make_client(tmp_path, shipped_model=model_without_native_meta) as c:
        assert c.get("/healthz").json()["native"] is False
        r = c.post("/api/predict", files=[("files", ("a.jpg", photos["sharp"], "image/jpeg"))],
                   data={"scale": "native"})
    assert r.status_code == 422
    assert detail(r).startswith("scale 'native': the model 'shipped' has no native-scale meta-network")


def test_server_scale_is_checked(tmp_path):
    with pytest.raises(ValueError, match="scale must be one of screen, native, auto"):
        ServerSettings(models_dir=tmp_path, scale="huge")
    proc = serve("--scale", "huge", "--models-dir", str(tmp_path))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "invalid choice: 'huge'" in err and "Traceback" not in err


def test_serve_scale_native_without_its_meta_network_is_one_line_and_exit_1(tmp_path, model_without_native_meta):
    proc = serve("--scale", "native", "--port", "0", "--models-dir", str(tmp_path),
                 env={"BLUR_ENSEMBLE_MODELS": str(model_without_native_meta)})  # the shipped model, for serve
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert err.strip() == ("error: --scale native: the active model 'shipped' has no native-scale meta-network "
                           "(final_model/meta_native.onnx); judge at scale screen or auto, or use a model trained "
                           "with one")
