"""Two test cameras on this machine, to try ``blur-detect cameras`` without a real one.

    python -m ensemble.cameras.demo --port 8765

serves JPEG snapshots at ``http://127.0.0.1:8765/sharp.jpg`` (in focus) and ``/blurry.jpg`` (out of focus), from a
photo bundled with scikit-image or scikit-learn. Like a real camera, every snapshot carries fresh sensor noise, so
two checks never see the identical picture that the monitor reports as a frozen (INVALID) camera. ``/dark.jpg``
is a camera with its lens covered (INVALID). It binds to 127.0.0.1 only and stops with Ctrl-C.
"""
from __future__ import annotations

import argparse
import io
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

NOISE_STD = 2.0
"""Grey levels of Gaussian noise added to every snapshot, as a camera sensor does."""


def scenes() -> dict[str, np.ndarray]:
    """Path -> uint8 RGB picture of each test camera."""
    from ..augment import apply_blur
    from ..demo import bundled_photos

    photos = bundled_photos()
    if not photos:
        raise SystemExit("error: no bundled photos found (install scikit-image or scikit-learn)")
    name = "astronaut" if "astronaut" in photos else sorted(photos)[0]
    sharp = photos[name] if photos[name].ndim == 3 else np.repeat(photos[name][..., None], 3, axis=2)
    blurry = np.stack([apply_blur(np.ascontiguousarray(sharp[..., c]), "defocus", 6.0, 0.0) for c in range(3)], 2)
    dark = np.full_like(sharp, 8)
    return {"/sharp.jpg": sharp, "/blurry.jpg": blurry, "/dark.jpg": dark}


def snapshot(picture: np.ndarray, rng: np.random.Generator, lock: threading.Lock) -> bytes:
    """``picture`` with fresh sensor noise, as JPEG bytes."""
    from PIL import Image

    with lock:  # numpy Generators are not thread-safe
        noise = rng.normal(0.0, NOISE_STD, picture.shape)
    noisy = np.clip(picture + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_server(port: int) -> ThreadingHTTPServer:
    """The HTTP server on 127.0.0.1:``port`` (0: any free port); call ``serve_forever()`` on it."""
    pictures, rng, lock = scenes(), np.random.default_rng(), threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            picture = pictures.get(self.path.split("?")[0])
            if picture is None:
                self.send_error(404, "no such camera: try /sharp.jpg, /blurry.jpg or /dark.jpg")
                return
            body = snapshot(picture, rng, lock)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet: the monitor's output is the point
            pass

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free one) (default: 8765)")
    a = p.parse_args(argv)
    try:
        server = make_server(a.port)
    except OSError as err:
        print(f"error: cannot listen on 127.0.0.1:{a.port}: {err.strerror or err}", file=sys.stderr)
        return 1
    base = f"http://127.0.0.1:{server.server_address[1]}"
    print(f"test cameras at {base}/sharp.jpg, {base}/blurry.jpg and {base}/dark.jpg (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
