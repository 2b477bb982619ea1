"""The pictures the page shows, each made once and cached under ``ROOT/.blur-review/``.

* **thumbnails**: the photo with its shorter side at :data:`THUMB_SIDE` px (JPEGs decoded by libjpeg at 1/2-1/8
  scale, so a thumbnail of a 12 MP photo takes a few milliseconds);
* **overlays**: the photo at the analysis scale with its per-patch blur map over it
  (:func:`ensemble.plots.overlay_blur_map`, red blurred, green sharp);
* **views**: for formats a browser cannot show (TIFF, HEIC...) a JPEG with its shorter side at :data:`VIEW_SIDE`;
  JPEG, PNG, WebP, GIF and BMP originals are sent as they are.

A cached file is named by a hash of the kind, the photo's path, size and modification time (and the model, for
overlays), so an edited photo gets a new picture and an old one is never shown for it. Files are written with
:func:`ensemble.fsutil.atomic_write`; a folder that cannot be written just means the pictures are not cached.
Decoding goes through :func:`ensemble.imageio.load_image` (type sniffed from the bytes, EXIF orientation, bomb
guard), and an unreadable photo raises :class:`~ensemble.imageio.ImageError` with a one-line reason.
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import numpy as np

from ..fsutil import atomic_write
from ..imageio import ImageError, load_image
from .paths import ensure_cache_dir
from .results import Entry

THUMB_SIDE = 320
"""Shorter side of a thumbnail in pixels: tiles are about 200 CSS px wide, so this stays crisp on 1.5× screens."""

VIEW_SIDE = 1600
"""Shorter side of the JPEG made for a photo whose format browsers cannot show."""

MAX_ASPECT = 2.0
"""Thumbnails of panoramas are centre-cropped to at most 2:1 (the tile crops them anyway)."""

BROWSER_TYPES = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
                 "GIF": "image/gif", "BMP": "image/bmp"}
"""Formats (as Pillow names them, sniffed from the bytes) sent to the browser as they are, with their media type."""

_DECODES = threading.BoundedSemaphore(3)  # big PNGs decode whole: bound how many are in memory at once
_STRIPES = 64  # one lock per hash stripe, so two requests never render the same picture at once


class Picture(NamedTuple):
    """What a route sends: a media type and either the bytes or a file to stream."""

    media_type: str
    data: Optional[bytes] = None
    file: Optional[Path] = None


class Pictures:
    """Makes and caches pictures for the photos of one root; ``cache_dir`` is ``ROOT/.blur-review``."""

    def __init__(self, cache_dir: Path):
        self.cache_dir = Path(cache_dir)
        self._locks = [threading.Lock() for _ in range(_STRIPES)]

    def thumbnail(self, entry: Entry, path: Path) -> Picture:
        """JPEG thumbnail of ``path`` (the resolved file of ``entry``)."""

        def render() -> np.ndarray:
            return _crop_aspect(load_image(path, "RGB", THUMB_SIDE).pixels, MAX_ASPECT)

        return self._cached("thumbs", entry.key, path, "", render, quality=80)

    def overlay(self, entry: Entry, path: Path) -> Picture:
        """The photo at the analysis scale with the blur map of ``entry`` over it (the photo alone if it has none)."""
        from ..plots import overlay_blur_map

        def render() -> np.ndarray:
            rgb = load_image(path, "RGB", entry.side or None).pixels
            if entry.blur_map is None or not entry.blur_map.size:
                return rgb  # every patch was flat: nothing to colour
            return overlay_blur_map(rgb, entry.blur_map, entry.origin, entry.patch)

        return self._cached("overlays", entry.key, path, f"{entry.model}:{entry.side}", render, quality=85)

    def original(self, entry: Entry, path: Path) -> Picture:
        """The photo itself when the browser can show its format, else a JPEG rendition."""
        _check_regular(path)
        media = BROWSER_TYPES.get(_sniff(path))
        if media is not None:
            return Picture(media, file=path)
        return self._cached("views", entry.key, path, "", lambda: load_image(path, "RGB", VIEW_SIDE).pixels,
                            quality=88)

    # ----------------------------------------------------------------------------------------------------------
    def _cached(self, kind: str, key: str, path: Path, extra: str, render: Callable[[], np.ndarray],
                quality: int) -> Picture:
        st = _check_regular(path)
        digest = hashlib.sha256(f"{kind}\0{key}\0{st.st_size}\0{st.st_mtime_ns}\0{extra}".encode(
            "utf-8", "surrogateescape")).hexdigest()[:40]
        target = self.cache_dir / kind / digest[:2] / f"{digest}.jpg"
        hit = _read(target)
        if hit is not None:
            return Picture("image/jpeg", data=hit)
        with self._locks[int(digest[:8], 16) % _STRIPES]:
            hit = _read(target)  # made by another request while this one waited
            if hit is not None:
                return Picture("image/jpeg", data=hit)
            with _DECODES:
                pixels = render()
            data = _jpeg(pixels, quality)
            try:
                ensure_cache_dir(self.cache_dir)
                target.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(target, data)
            except OSError:
                pass  # read-only folder: serve it uncached
        return Picture("image/jpeg", data=data)


def _check_regular(path: Path) -> os.stat_result:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except OSError as err:
        raise ImageError(f"cannot read: {(err.strerror or str(err)).lower()}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ImageError("not a regular file")
    return st


def _sniff(path: Path) -> Optional[str]:
    """Pillow's name for the file's format, from its first bytes (None when unrecognised)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.format
    except Exception:  # noqa: BLE001 - any failure just means "not one the browser gets as is"
        return None


def _read(path: Path) -> Optional[bytes]:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _crop_aspect(pixels: np.ndarray, max_aspect: float) -> np.ndarray:
    h, w = pixels.shape[:2]
    if w > max_aspect * h:
        keep = int(round(max_aspect * h))
        x0 = (w - keep) // 2
        return pixels[:, x0:x0 + keep]
    if h > max_aspect * w:
        keep = int(round(max_aspect * w))
        y0 = (h - keep) // 2
        return pixels[y0:y0 + keep]
    return pixels


def _jpeg(pixels: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


__all__ = ["BROWSER_TYPES", "MAX_ASPECT", "Picture", "Pictures", "THUMB_SIDE", "VIEW_SIDE"]
