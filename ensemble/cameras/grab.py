"""Grab frames from one camera within a hard deadline.

Two readers:

* **http**: the standard library's HTTP client. A JPEG (or any image) snapshot per request, or the parts of an MJPEG
  ``multipart/x-mixed-replace`` stream. Basic and bearer credentials go in an ``Authorization`` header; digest goes
  through urllib's challenge handler. Credentials follow a redirect only to the same scheme, host and port.
* **opencv**: ``cv2.VideoCapture`` on FFmpeg, for rtsp:// and other streams and for video files. A video file is
  read from where the previous check stopped (``position``), so it plays like a live stream across checks.

Both run in a daemon thread that :meth:`Grab.wait` abandons at the deadline. Socket timeouts and OpenCV's open/read
timeouts usually end a stalled reader first, but DNS look-ups and some FFmpeg demuxers ignore them, and a thread
that never returns must not hold up the round or the exit of the process.

Reasons (:class:`GrabError`, ``Grabbed.error``) are one line and never contain the URL or a credential.
"""
from __future__ import annotations

import base64
import http.client
import os
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional
from urllib.parse import urlsplit

from .config import Camera

if TYPE_CHECKING:
    import numpy as np

MAX_BYTES = 50 * 1024 * 1024
"""Largest snapshot (or MJPEG part) read into memory, in bytes."""

USER_AGENT = "blur-detect-cameras/1"


class GrabError(Exception):
    """No frame could be grabbed. ``str(err)`` is a one-line reason without URL or credentials."""


class Cancelled(Exception):
    """The round was stopped (Ctrl-C, SIGTERM) while waiting for a frame."""


@dataclass(frozen=True)
class Frame:
    """One grabbed frame: ``data`` the encoded bytes as received (HTTP), or ``pixels`` uint8 RGB (H, W, 3).

    ``size`` is the (width, height) the camera sent when ``pixels`` were reduced on arrival (see :class:`Grab`),
    and ``full`` the frame as it came, in grey (uint8 (H, W)), when the grab was asked to keep it (a camera judged
    at native scale).
    """

    data: Optional[bytes] = field(default=None, repr=False)
    content_type: str = ""
    pixels: Optional["np.ndarray"] = field(default=None, repr=False)
    size: Optional[tuple[int, int]] = None
    full: Optional["np.ndarray"] = field(default=None, repr=False)


@dataclass(frozen=True)
class Grabbed:
    """What a grab produced by its deadline: the frames, in order, or (``error``) why none came.

    ``position`` is the next frame of a video file (None for other cameras, or when the grab was abandoned);
    ``seconds`` the time waited.
    """

    frames: list[Frame]
    error: Optional[str]
    position: Optional[int]
    seconds: float


class _Sink:
    """Frames handed from the reader thread to the waiter, who may take them before the reader has finished."""

    def __init__(self, side: Optional[int] = None, keep_full: bool = False):
        self._lock = threading.Lock()
        self._frames: list[Frame] = []
        self.position: Optional[int] = None
        self.closed = False
        self.side = side
        self.keep_full = keep_full

    def add(self, frame: Frame) -> None:
        if frame.pixels is not None and self.side:
            # Decoded stream frames are reduced to the analysis scale on arrival: 100 frames of a 4K stream would
            # otherwise hold 2.5 GB until they are scored. Kept whole for native scale, in grey: a third of that.
            from ..imageio import resize_to_analysis, to_gray

            h, w = frame.pixels.shape[:2]
            small = resize_to_analysis(frame.pixels, self.side)
            full = to_gray(frame.pixels) if self.keep_full and small is not frame.pixels else None
            frame = Frame(pixels=small, content_type=frame.content_type, size=(w, h), full=full)
        with self._lock:
            if not self.closed:
                self._frames.append(frame)

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)

    def take(self) -> list[Frame]:
        with self._lock:
            self.closed = True  # a reader that goes on after the deadline adds nothing more
            return list(self._frames)


class Grab:
    """One camera's grab, started at once in a daemon thread.

    ``timeout`` (seconds) bounds the whole grab, all ``camera.frames`` frames included; ``deadline`` (a
    ``time.monotonic()`` value) may end it sooner, when part of the timeout was already spent. :meth:`wait` returns
    by the deadline whatever the reader is doing; the frames that arrived by then are kept. ``side``: decoded
    stream frames are reduced on arrival to this shorter side (the analysis scale; None keeps them whole);
    ``keep_full``: each reduced frame keeps its full-resolution grey picture too (:attr:`Frame.full`).
    """

    def __init__(self, camera: Camera, timeout: float, position: Optional[int] = None,
                 deadline: Optional[float] = None, side: Optional[int] = None, keep_full: bool = False):
        self.camera, self.timeout, self.position = camera, float(timeout), position
        self.started = time.monotonic()
        self.deadline = self.started + self.timeout if deadline is None else min(deadline,
                                                                                 self.started + self.timeout)
        self._sink = _Sink(side, keep_full)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._error: Optional[str] = None
        self.thread = threading.Thread(target=self._run, name=f"grab:{camera.name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            reader = _read_http if self.camera.kind == "http" else _read_opencv
            reader(self.camera, self.deadline, self.timeout, self._sink, self.position, self._stop)
        except GrabError as err:
            self._error = str(err)
        except Exception as err:  # noqa: BLE001 - a reader bug is this camera's failure, never the round's
            from ..scan import one_line

            # The monitor scrubs credentials out of every reason before it is shown.
            self._error = f"unexpected error while grabbing: {type(err).__name__}: {one_line(err)}"
        finally:
            self._done.set()

    def wait(self, cancel: Optional[threading.Event] = None) -> Grabbed:
        """Wait for the reader until the deadline; raises :class:`Cancelled` as soon as ``cancel`` is set."""
        while not self._done.is_set():
            left = self.deadline - time.monotonic()
            if left <= 0:
                break
            if cancel is not None and cancel.is_set():
                self._stop.set()
                raise Cancelled()
            self._done.wait(min(0.1, left))
        self._stop.set()
        frames = self._sink.take()
        seconds = time.monotonic() - self.started
        if self._done.is_set():
            error = self._error
            if error is None and not frames:
                error = "no frame: the camera sent nothing"
        else:
            # Abandoned at the deadline: the frames already here still count (frames: N got cut short).
            error = None if frames else timeout_reason(self.timeout)
        return Grabbed(frames, error if not frames else None, self._sink.position, seconds)


def grab(camera: Camera, timeout: float, position: Optional[int] = None,
         cancel: Optional[threading.Event] = None) -> Grabbed:
    """Grab ``camera.frames`` frames within ``timeout`` seconds (see :class:`Grab`)."""
    return Grab(camera, timeout, position).wait(cancel)


def timeout_reason(timeout: float) -> str:
    return f"timeout: no frame within {timeout:g} s"


def _pause(seconds: float, deadline: float, stop: threading.Event) -> bool:
    """Sleep ``seconds`` unless the deadline comes first or the grab is stopped; False if there is no time left."""
    wake = min(time.monotonic() + seconds, deadline)
    stop.wait(max(0.0, wake - time.monotonic()))
    return not stop.is_set() and time.monotonic() < deadline


# --------------------------------------------------------------------------------------------------------------
# HTTP


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows redirects, taking the Authorization header along only to the same scheme, host and port."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(new.full_url) == _origin(req.full_url):
            for name, value in req.unredirected_hdrs.items():
                if name.lower() == "authorization":
                    new.add_unredirected_header(name, value)
        return new


def _origin(url: str) -> tuple:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


_contexts: dict[bool, ssl.SSLContext] = {}
_contexts_lock = threading.Lock()


def _tls_context(verify: bool) -> ssl.SSLContext:
    # Loading the system's CA certificates takes ~20 ms of CPU under the GIL: once per process, not per request.
    # A context is safe to share between threads.
    with _contexts_lock:
        if verify not in _contexts:
            context = ssl.create_default_context()
            if not verify:
                # Many cameras serve a self-signed certificate; the config has to ask for this explicitly.
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            _contexts[verify] = context
        return _contexts[verify]


def _opener(camera: Camera, url: str) -> tuple[urllib.request.OpenerDirector, Optional[str], bool]:
    """An opener for ``camera``, the Authorization header to send up front (basic/bearer) and whether any
    credentials are in play."""
    handlers = [_RedirectHandler()]
    if url.lower().startswith("https:"):
        handlers.append(urllib.request.HTTPSHandler(context=_tls_context(camera.verify_tls)))
    auth, user, secret = camera.credentials()
    header = None
    if auth == "bearer":
        header = f"Bearer {secret.reveal()}"
    elif auth == "basic":
        pair = f"{user.reveal()}:{secret.reveal()}".encode("utf-8")
        header = "Basic " + base64.b64encode(pair).decode("ascii")
    elif auth == "digest":
        manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        manager.add_password(None, url, user.reveal(), secret.reveal())
        handlers.append(urllib.request.HTTPDigestAuthHandler(manager))
    return urllib.request.build_opener(*handlers), header, auth is not None


def _read_http(camera: Camera, deadline: float, timeout: float, sink: _Sink, position, stop: threading.Event):
    url = camera.target().reveal()
    opener, header, with_credentials = _opener(camera, url)
    for i in range(camera.frames):
        if i and not _pause(camera.frame_interval, deadline, stop):
            return
        left = deadline - time.monotonic()
        if left <= 0 or stop.is_set():
            return
        request = urllib.request.Request(url, headers={
            "User-Agent": USER_AGENT, "Accept": "image/jpeg, image/*;q=0.9, multipart/x-mixed-replace;q=0.8",
            "Cache-Control": "no-cache"})  # a caching proxy must not hand back the same old frame
        if header is not None:
            request.add_unredirected_header("Authorization", header)  # re-added by _RedirectHandler if same origin
        try:
            with opener.open(request, timeout=left) as response:
                ctype = response.headers.get_content_type()
                if ctype.startswith("multipart/"):
                    _read_mjpeg(response, camera, deadline, sink, stop)
                    return
                if ctype.startswith("video/") or ctype in ("application/vnd.apple.mpegurl",
                                                          "application/x-mpegurl"):
                    raise GrabError(f"no frame: the camera sent a video stream ({ctype}); "
                                    "set kind: opencv to read it with OpenCV")
                data = _read_body(response, deadline, stop)
        except GrabError:
            raise
        except Exception as err:  # noqa: BLE001 - every network failure becomes a one-line reason
            if len(sink):
                return  # frames: N and a later request failed: score the frames already here
            raise GrabError(_network_reason(err, timeout, with_credentials)) from None
        if not data:
            raise GrabError("no frame: empty response")
        sink.add(Frame(data=data, content_type=ctype))


def _read_body(response, deadline: float, stop: threading.Event) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > MAX_BYTES:
        raise GrabError(f"no frame: the snapshot is {int(declared) / 2**20:.0f} MB, over the "
                        f"{MAX_BYTES // 2**20} MB limit")
    chunks, size = [], 0
    while True:
        if time.monotonic() > deadline or stop.is_set():
            raise socket.timeout("timed out")
        chunk = response.read1(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_BYTES:
            raise GrabError(f"no frame: the snapshot is over the {MAX_BYTES // 2**20} MB limit")
        chunks.append(chunk)


def _read_mjpeg(response, camera: Camera, deadline: float, sink: _Sink, stop: threading.Event) -> None:
    """Keep ``camera.frames`` parts of a multipart stream, ``frame_interval`` seconds apart."""
    boundary = response.headers.get_param("boundary")
    if not boundary:
        raise GrabError("no frame: MJPEG stream without a multipart boundary")
    marker = b"--" + boundary.strip('"').removeprefix("--").encode("latin-1")
    ctype = "image/jpeg"
    buf = bytearray()  # grows in place: re-joining bytes for every chunk made a 50 MB part take ~20 s of CPU
    searched = 0  # buf[:searched] was searched already (a marker may straddle its end): searches resume there
    start = head_end = -1
    keep_after = 0.0
    while len(sink) < camera.frames:
        if start < 0:
            start = buf.find(marker, max(0, searched - len(marker)))
        if start >= 0 and head_end < 0:
            head_end = buf.find(b"\r\n\r\n", max(start, searched - 3))
        body = None
        if head_end >= 0:
            headers = buf[start + len(marker):head_end].decode("latin-1", "replace").lower()
            length = None
            for line in headers.splitlines():
                name, _, value = line.partition(":")
                if name.strip() == "content-length" and value.strip().isdigit():
                    length = int(value.strip())
                if name.strip() == "content-type":
                    ctype = value.strip()
            body_start = head_end + 4
            if length is not None and len(buf) >= body_start + length:
                body, buf = bytes(buf[body_start:body_start + length]), buf[body_start + length:]
            elif length is None:
                end = buf.find(marker, max(body_start, searched - len(marker)))
                if end >= 0:
                    body, buf = bytes(buf[body_start:end]).rstrip(b"\r\n"), buf[end:]
        if body is not None:
            searched, start, head_end = 0, -1, -1
            now = time.monotonic()
            if body and now >= keep_after:
                sink.add(Frame(data=body, content_type=ctype))
                keep_after = now + camera.frame_interval
            continue
        searched = len(buf)
        if len(buf) > MAX_BYTES:
            raise GrabError(f"no frame: no whole MJPEG part within {MAX_BYTES // 2**20} MB")
        if time.monotonic() > deadline or stop.is_set():
            if not len(sink):
                raise socket.timeout("timed out")  # as in _read_body: a timeout, not "the camera sent nothing"
            return
        chunk = response.read1(65536)
        if not chunk:
            if not len(sink):
                raise GrabError("no frame: the MJPEG stream ended before a whole picture")
            return
        buf += chunk


def _network_reason(err: BaseException, timeout: float, with_credentials: bool) -> str:
    """A one-line reason for a failed request. Never includes the URL (which may hold a ${VAR} value)."""
    if isinstance(err, urllib.error.HTTPError):
        code = err.code
        phrase = http.client.responses.get(code, "")
        if code == 401:
            hint = "bad credentials" if with_credentials else \
                "the camera wants credentials (set username_env/password_env or token_env)"
            return f"HTTP 401 {phrase}: {hint}"
        if code == 403:
            return f"HTTP 403 {phrase}: access denied"
        if code == 404:
            return f"HTTP 404 {phrase}: no snapshot at this URL"
        if code in (301, 302, 303, 307, 308):  # urllib raises these only for redirects it refuses to follow
            return f"HTTP {code} {phrase}: too many redirects, or a redirect to a URL that is not http(s)"
        return f"HTTP {code} {phrase}".rstrip()
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return timeout_reason(timeout)
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, ConnectionResetError):
        return "connection reset by the camera"
    if isinstance(reason, socket.gaierror):
        return "cannot resolve the host name"
    if isinstance(reason, ssl.SSLCertVerificationError):
        return ("TLS certificate not trusted: " + (reason.verify_message or "verification failed") +
                " (set verify_tls: false for a camera with a self-signed certificate)")
    if isinstance(reason, ssl.SSLError):
        return f"TLS error: {reason.reason or type(reason).__name__}"
    if isinstance(reason, http.client.RemoteDisconnected):
        return "the camera closed the connection without answering"
    if isinstance(reason, http.client.IncompleteRead):
        return "truncated response"
    if isinstance(reason, (http.client.InvalidURL, ValueError)):
        return "invalid URL (check the host and port)"  # these messages quote the URL: not shown
    if isinstance(reason, OSError):
        text = reason.strerror or type(reason).__name__
        return f"network error: {text[0].lower() + text[1:] if text else text}"
    if isinstance(reason, http.client.HTTPException):
        return f"bad HTTP response ({type(reason).__name__})"
    return f"request failed ({type(reason).__name__})"


# --------------------------------------------------------------------------------------------------------------
# OpenCV


_quiet_lock = threading.Lock()
_quieted = False


def quiet_native_logs() -> None:
    """Silence FFmpeg's and OpenCV's own logging to stderr, unless the user set their levels.

    Some of their messages quote the URL they opened, credentials and all. OpenCV reads the FFmpeg level when it
    first opens any video (a VideoWriter too), so call this early: the command line does so at its start.
    """
    global _quieted
    with _quiet_lock:
        if not _quieted:
            import cv2

            os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
            if "OPENCV_LOG_LEVEL" not in os.environ:
                cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
            _quieted = True


def _read_opencv(camera: Camera, deadline: float, timeout: float, sink: _Sink, position: Optional[int],
                 stop: threading.Event) -> None:
    import cv2

    quiet_native_logs()
    target = camera.target().reveal()
    is_file = camera.is_file
    if is_file and not os.path.exists(target):
        raise GrabError("video file not found")
    ms = max(100, int((deadline - time.monotonic()) * 1000))
    cap = cv2.VideoCapture(target, cv2.CAP_FFMPEG,
                           [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
    try:
        if not cap.isOpened():
            if time.monotonic() >= deadline:
                raise GrabError(timeout_reason(timeout))
            raise GrabError("cannot open the video file (not a video, or an unsupported codec)" if is_file else
                            "cannot open the stream (refused, unreachable, bad credentials or not a video)")
        pos = 0
        step = 1
        count = 0
        if is_file:
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
            # In a file, frame_interval seconds of "live" time are that many frames further on.
            step = max(1, round(camera.frame_interval * fps))
            pos = (position or 0) % count if count > 0 else 0
            if pos:
                cap.set(cv2.CAP_PROP_POS_FRAMES, pos)
        wrapped = False
        for i in range(camera.frames):
            if stop.is_set() or time.monotonic() >= deadline:
                break
            if i and is_file and step > 1:
                pos += step - 1
                if count and pos >= count:
                    pos %= count
                cap.set(cv2.CAP_PROP_POS_FRAMES, pos)
            elif i:
                # A live stream: let frame_interval pass, decoding (grab) without keeping.
                keep_at = time.monotonic() + camera.frame_interval
                while time.monotonic() < min(keep_at, deadline) and not stop.is_set():
                    if not cap.grab():
                        break
            ok, bgr = cap.read()
            if not ok and is_file and not wrapped:
                wrapped = True  # the end of the file: go round again, as a looping test stream would
                pos = 0
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, bgr = cap.read()
            if not ok or bgr is None:
                break
            pos += 1
            if bgr.ndim == 2:
                rgb = cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
            else:
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            sink.add(Frame(pixels=rgb, content_type="video"))
        if is_file:
            sink.position = pos % count if count else pos
        if not len(sink) and not stop.is_set():
            if time.monotonic() >= deadline:
                raise GrabError(timeout_reason(timeout))
            raise GrabError("no frame: the video file has no readable frame" if is_file else
                            "no frame: the stream opened but sent no picture")
    finally:
        cap.release()


__all__ = ["Cancelled", "Frame", "Grab", "GrabError", "Grabbed", "MAX_BYTES", "grab", "quiet_native_logs",
           "timeout_reason"]
