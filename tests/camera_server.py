"""Fake IP cameras for the camera monitor's tests: a threaded HTTP server on 127.0.0.1 (an ephemeral port).

Routes (GET):

* ``/scene/<cam>``: a fresh JPEG of one synthetic scene per request, blurred by ``server.sigma[cam]`` (Gaussian,
  pixels; 0 = sharp) and with new sensor noise every time, as a live camera's snapshots are.
* ``/passing/<cam>``: like /scene, but every other request is heavily blurred (a lorry passing close by), the
  first one included.
* ``/slow``: answers after ``server.slow_seconds`` (or when the server closes).
* ``/basic``, ``/bearer``, ``/digest``, ``/query``: a scene only with the right credentials (``server.user``,
  ``server.password``, ``server.token``; /query wants ``?pwd=<password>``), else 401 with a challenge.
* ``/garbage``: random bytes labelled image/jpeg. ``/html``: a login page. ``/missing``: 404.
* ``/black``, ``/uniform``: a black, and a flat grey, frame (with a little noise, so they are not also frozen).
* ``/frozen``: the very same JPEG bytes every time.
* ``/mjpeg``: a multipart/x-mixed-replace stream of sharp frames (``?nolength=1``: parts without Content-Length).
* ``/redirect-away``: a 302 to the same server under the name ``localhost`` (another origin), at ``/echo``.
* ``/echo``: a scene; the Authorization header it received is kept in ``server.echo_auth``.
* ``/redirect-loop``: a 302 to itself, for ever.

Every request's path and Authorization header are appended to ``server.log``.
"""
from __future__ import annotations

import base64
import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit
from urllib.request import parse_http_list, parse_keqv_list

import cv2
import numpy as np

from fixtures import make_photo

FRAME_SIZE = (360, 480)  # (h, w): below the analysis scale, so frames reach the model as they are
REALM = "fake-camera"
NONCE = "5f1e0c2d9a7b"


class CameraServer(ThreadingHTTPServer):
    # Handler threads are joined on close: one still drawing a frame with OpenCV while the interpreter exits
    # would abort the process.
    daemon_threads = False
    block_on_close = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.port = self.server_address[1]
        self.sigma: dict[str, float] = {}
        self.slow_seconds = 8.0
        self.user, self.password, self.token = "cam-user", "pw", "tok"
        self.echo_auth: list = []
        self.log: list[tuple[str, str]] = []
        self.closing = threading.Event()
        self._counter = 0
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._scenes: dict[str, np.ndarray] = {}
        self._frozen = self.jpeg(self.frame("frozen"))
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def start(self) -> "CameraServer":
        self._thread.start()
        return self

    def close(self) -> None:
        self.closing.set()
        self.shutdown()
        self.server_close()  # joins the handler threads

    # -- pictures -------------------------------------------------------------------------------------------------
    def scene(self, cam: str) -> np.ndarray:
        with self._lock:
            if cam not in self._scenes:
                seed = 11 + int(hashlib.md5(cam.encode()).hexdigest()[:4], 16) % 5
                self._scenes[cam] = make_photo(seed, FRAME_SIZE)
            return self._scenes[cam]

    def frame(self, cam: str, sigma: float | None = None) -> np.ndarray:
        """The scene of ``cam`` blurred by ``sigma`` (default: server.sigma), with fresh noise (0-2 grey levels)."""
        sigma = self.sigma.get(cam, 0.0) if sigma is None else sigma
        key = f"{cam}@{sigma}"
        with self._lock:
            base = self._scenes.get(key)
        if base is None:
            base = self.scene(cam)
            base = cv2.GaussianBlur(base, (0, 0), sigma) if sigma > 0 else base
            with self._lock:
                self._scenes[key] = base
        with self._lock:
            self._counter += 1
            seed = self._counter
        noise = np.random.default_rng(seed).integers(0, 3, base.shape, dtype=np.uint8)
        return cv2.add(base, noise)  # saturating: no wrap-around at 255

    @staticmethod
    def jpeg(rgb: np.ndarray) -> bytes:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        return buf.tobytes()

    def count(self, key: str) -> int:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            return self._counts[key]


class _Handler(BaseHTTPRequestHandler):
    server: CameraServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass

    def _send(self, code: int, body: bytes, ctype: str = "image/jpeg", headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _scene(self, cam: str, sigma: float | None = None) -> None:
        self._send(200, self.server.jpeg(self.server.frame(cam, sigma)))

    def _challenge(self, scheme: str) -> None:
        if scheme == "Digest":
            value = f'Digest realm="{REALM}", nonce="{NONCE}", qop="auth", algorithm=MD5'
        else:
            value = f'{scheme} realm="{REALM}"'
        self._send(401, b"unauthorized", "text/plain", {"WWW-Authenticate": value})

    def do_GET(self) -> None:  # noqa: C901 - one branch per fake camera
        srv = self.server
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        auth = self.headers.get("Authorization") or ""
        srv.log.append((self.path, auth))
        if path.startswith("/scene/"):
            return self._scene(path.split("/", 2)[2])
        if path.startswith("/passing/"):
            cam = path.split("/", 2)[2]
            return self._scene(cam, 6.0 if srv.count(path) % 2 == 1 else 0.0)
        if path == "/slow":
            if srv.closing.wait(srv.slow_seconds):
                return None
            try:
                return self._scene("slow")
            except OSError:
                return None  # the client gave up long ago
        if path == "/basic":
            expected = "Basic " + base64.b64encode(f"{srv.user}:{srv.password}".encode()).decode()
            return self._scene("basic") if auth == expected else self._challenge("Basic")
        if path == "/bearer":
            return self._scene("bearer") if auth == f"Bearer {srv.token}" else self._challenge("Bearer")
        if path == "/digest":
            return self._scene("digest") if self._digest_ok(auth) else self._challenge("Digest")
        if path == "/query":
            ok = query.get("pwd") == [srv.password]
            return self._scene("query") if ok else self._send(401, b"wrong password", "text/plain")
        if path == "/garbage":
            return self._send(200, np.random.default_rng(1).bytes(2048))
        if path == "/html":
            return self._send(200, b"<html><body>Please log in</body></html>", "text/html")
        if path in ("/black", "/uniform"):
            level = 0 if path == "/black" else 128
            noise = np.random.default_rng(srv.count(path)).integers(0, 4, (*FRAME_SIZE, 3), dtype=np.uint8)
            return self._send(200, srv.jpeg(level + noise))
        if path == "/frozen":
            return self._send(200, srv._frozen)
        if path == "/mjpeg":
            return self._mjpeg(with_length="nolength" not in query)
        if path == "/redirect-away":
            target = srv.url("/echo", host="localhost")
            return self._send(302, b"", "text/plain", {"Location": target})
        if path == "/redirect-loop":
            return self._send(302, b"", "text/plain", {"Location": srv.url("/redirect-loop")})
        if path == "/echo":
            srv.echo_auth.append(auth)
            return self._scene("echo")
        return self._send(404, b"not found", "text/plain")

    def _digest_ok(self, header: str) -> bool:
        if not header.startswith("Digest "):
            return False
        fields = parse_keqv_list(parse_http_list(header[len("Digest "):]))
        srv = self.server
        ha1 = hashlib.md5(f"{srv.user}:{REALM}:{srv.password}".encode()).hexdigest()
        ha2 = hashlib.md5(f"GET:{fields.get('uri', '')}".encode()).hexdigest()
        expected = hashlib.md5(":".join([ha1, NONCE, fields.get("nc", ""), fields.get("cnonce", ""), "auth", ha2])
                               .encode()).hexdigest()
        return fields.get("username") == srv.user and fields.get("response") == expected

    def _mjpeg(self, with_length: bool) -> None:
        boundary = "frame-boundary"
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={boundary}")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for _ in range(20):
                if self.server.closing.is_set():
                    break
                body = self.server.jpeg(self.server.frame("mjpeg"))
                head = f"--{boundary}\r\nContent-Type: image/jpeg\r\n"
                if with_length:
                    head += f"Content-Length: {len(body)}\r\n"
                self.wfile.write(head.encode() + b"\r\n" + body + b"\r\n")
                self.wfile.flush()
                time.sleep(0.02)
        except OSError:
            pass  # the monitor took its frames and hung up
        self.close_connection = True


def closed_port() -> int:
    """A loopback port with nothing listening on it (connection refused)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
