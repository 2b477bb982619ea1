"""Decode image files into arrays at the analysis scale.

Every path into the models goes through here, so training, evaluation, scans and the server see exactly the same
pixels. The analysis scale fixes the *shorter side* at ``ANALYSIS_SIDE`` pixels (never upsampling), so a photo saved
at 1 MP and at 24 MP reaches the models as nearly the same array and gets the same verdict.

Memory. A small file can claim a huge picture (a 1 MB PNG of 12000 × 12000 16-bit RGBA pixels holds 1.1 GB of
pixels), so before anything is decoded :func:`load_image` adds up, from the header, the bytes of every buffer the
decode will hold at once (:func:`decode_cost`): Pillow's image in its own storage (1 byte per pixel for L/P/1,
2 for I;16, 4 for RGB, RGBA, CMYK, I, F...; plus 8 bytes of row pointer per row), the decoder's own buffers
(libjpeg's coefficient buffer for progressive JPEGs, libtiff's strip or tile buffer...), our uint8 output and the
conversion temporaries, which are kept small by converting in tiles of ``TILE_PIXELS`` pixels. An image over the
budget (``DECODE_BUDGET``, 1 GiB by default) is refused with a one-line reason; the others reserve their cost from
:data:`DECODE_POOL` first, so that all the threads of a process together never decode more than its capacity at
once.
"""
from __future__ import annotations

import ctypes
import math
import os
import re
import sys
import threading
import warnings
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

try:  # HEIC/HEIF support is optional: registered when the package is installed.
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - depends on the install
    pillow_heif = None

ANALYSIS_SIDE = 640
"""Shorter side, in pixels, of the array the models see."""

MAX_PIXELS = 150_000_000
"""Largest image (width × height) we agree to decode; bigger files are refused as decompression bombs."""

MiB = 1 << 20

DECODE_BUDGET = 1 << 30
"""Bytes (1 GiB) that one decode may hold at once, every buffer counted (see :func:`decode_cost`), and the capacity
of :data:`DECODE_POOL`. An image that needs more is refused; ``load_image(..., budget=)`` sets another limit."""

TILE_PIXELS = 1 << 18
"""Pixels converted to uint8 at a time (a tile of whole rows, or part of one row of a very wide image)."""

TILE_BYTES_PER_PIXEL = 40
"""Bytes per tile pixel of the conversion temporaries at their peak (the 16-bit path: crop, its bytes, float32
array, scaled copy, clipped copy, uint8; the alpha path: crop, RGBA copy, white canvas, composite, grey, its bytes)."""

TRIM_AFTER_BYTES = 32 * MiB
"""After a decode that reserved this much, free memory is handed back to the system (``malloc_trim``)."""

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".bmp", ".webp", ".heic", ".heif"}
)



def _quiet_pillow() -> None:
    """Silence Pillow's warnings about the files it reads, in every thread.

    Pillow reports damaged metadata (corrupt EXIF, odd TIFF tags, a malformed MPO index) as UserWarnings and big
    images as DecompressionBombWarnings, which would reach the user's stderr: a damaged file is already an error
    record, and the size is checked here. warnings.catch_warnings() cannot silence them: it swaps the process-wide
    filter list, which is not thread-safe (scans decode in threads), and that is how the bomb warning of the
    --save-maps decode used to leak. So two module-level filters, for Pillow's own modules only, are installed
    at import and put back before each decode if anything (another thread's catch_warnings, a test runner) has
    reset the filter list since.
    """
    if not all(f in warnings.filters for f in _PILLOW_FILTERS):
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


_PILLOW_FILTERS = (("ignore", None, Image.DecompressionBombWarning, None, 0),
                   ("ignore", None, UserWarning, re.compile(r"PIL\."), 0))
_quiet_pillow()


class ImageError(Exception):
    """An image could not be read.

    ``reason`` is a one-line reason fit to show a user (``"empty file (0 bytes)"``), ``path`` the file it is about
    (set by :func:`load_image`; None for an array), and ``str(err)`` both: ``"photos/a.jpg: empty file (0 bytes)"``.
    Reports that name the file already (scan records, server answers) show ``reason``.
    """

    def __init__(self, reason: object, path: str | os.PathLike | None = None) -> None:
        super().__init__(reason)
        self.reason = str(reason)
        self.path = None if path is None else os.fspath(path)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path is not None else self.reason


@dataclass(frozen=True)
class Decoded:
    """A decoded image at the analysis scale.

    ``pixels`` is uint8, (H, W) for grey or (H, W, 3) RGB. ``width`` and ``height`` are the original size in pixels
    after EXIF orientation. ``draft`` is the scale 1/d (d = 1, 2, 4 or 8) libjpeg decoded a JPEG at before the area
    resize (1 for anything decoded at full size): noise.original_noise_sigma needs it. ``native`` holds a few grey
    strips of the image at its original resolution (uint8 (rows, W) arrays, in the file's orientation) when
    ``pixels`` were reduced, for the noise estimate, which the reduction averages away; empty otherwise. ``full``
    is the whole image at its original resolution, in ``pixels``' mode, when it was asked for (``keep_full``: an
    image judged at native scale) and ``pixels`` were reduced; None otherwise (``pixels`` are then the full image,
    or it was not asked for). ``content`` is what a content classifier found in ``pixels`` ('photo' or 'document')
    when one has looked already (BlurDetector.decode at scale 'auto' does, to choose the decode), so that it is not
    asked twice; None otherwise.
    """

    pixels: np.ndarray
    width: int
    height: int
    draft: int = 1
    native: tuple = ()
    full: Optional[np.ndarray] = field(default=None, repr=False, compare=False)
    content: Optional[str] = None

    @property
    def full_pixels(self) -> np.ndarray:
        """The image at its original resolution when it was kept (:attr:`full`), else :attr:`pixels`."""
        return self.pixels if self.full is None else self.full


NATIVE_BAND_ROWS = 130
"""Rows of each full-resolution strip kept in :attr:`Decoded.native` (four rows of 32-pixel noise blocks). A drafted
JPEG gets one strip, its top rows, decoded a second time at full size: libjpeg stops after them, so it costs about
NATIVE_BAND_ROWS / height of a full decode (2 ms of a 12 MP photo's 26 ms). An image decoded at full size gives
three strips (top, middle, bottom) from the pixels it has anyway."""


def analysis_size(width: int, height: int, side: int = ANALYSIS_SIDE) -> tuple[int, int]:
    """(width, height) of the analysis-scale array for an image of the given size; never larger than the input."""
    short = min(width, height)
    if short <= side:
        return width, height
    scale = side / short
    return max(1, round(width * scale)), max(1, round(height * scale))


# --------------------------------------------------------------------------------------------------------------
# The decode pool


class DecodePool:
    """Bytes of image decoding in progress in this process, shared by all its threads.

    Each :func:`load_image` reserves its image's cost (capped at ``capacity``) before decoding and gives it back
    after, so that scan workers, server requests and camera checks together never decode more than ``capacity``
    bytes at once: a bomb waits for the decodes before it instead of adding to them. Requests are served in
    arrival order, so a big image is not starved by a stream of small ones. Each process has its own pool
    (``blur-detect serve --workers N`` runs N processes, so N pools).

    ``in_use``, ``peak`` (the most bytes ever reserved at once) and ``peak_holders`` (the most decodes at once)
    are there for tests and benchmarks.
    """

    def __init__(self, capacity: int = DECODE_BUDGET):
        self.capacity = int(capacity)
        self.in_use = 0
        self.holders = 0
        self.peak = 0
        self.peak_holders = 0
        self._cond = threading.Condition()
        self._queue: deque = deque()

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[int]:
        """Hold ``nbytes`` (at most the capacity: a bigger image decodes alone) for the ``with`` block; yields
        the bytes held. Waits while other decodes hold too much."""
        need = min(max(0, int(nbytes)), self.capacity)
        token = object()
        with self._cond:
            self._queue.append(token)
            try:
                while self._queue[0] is not token or self.in_use + need > self.capacity:
                    self._cond.wait()
            except BaseException:  # interrupted while waiting: leave the queue, let the next one in
                self._queue.remove(token)
                self._cond.notify_all()
                raise
            self._queue.popleft()
            self.in_use += need
            self.holders += 1
            self.peak = max(self.peak, self.in_use)
            self.peak_holders = max(self.peak_holders, self.holders)
            self._cond.notify_all()  # the next in line may fit beside this one
        try:
            yield need
        finally:
            with self._cond:
                self.in_use -= need
                self.holders -= 1
                self._cond.notify_all()


DECODE_POOL = DecodePool(DECODE_BUDGET)
"""The process-wide pool every :func:`load_image` reserves from: the only mutable state this module keeps."""


def _libc_malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl, or no glibc
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def _give_memory_back() -> None:
    """Return freed heap memory to the system. glibc keeps freed blocks mapped (Pillow's 16 MiB blocks land in
    its heaps once its mmap threshold has risen), so without this the server stays gigabytes above idle after
    one bomb."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


# --------------------------------------------------------------------------------------------------------------
# What a decode costs


# Bytes per pixel of Pillow's own storage (Storage.c): everything not listed takes 4 (RGB is stored as RGBX).
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "BGR;15": 2, "BGR;16": 2,
                "BGR;24": 3}
_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA")


def pillow_bytes(mode: str, width: int, height: int) -> int:
    """Bytes Pillow allocates for a ``mode`` image of width × height: the rows, packed into blocks of
    ``Image.core.get_block_size()`` bytes, and one 8-byte pointer per row (which makes a 1-pixel-wide,
    100-million-row image cost 900 MB)."""
    line = max(1, width) * _PIXEL_BYTES.get(mode, 4)
    per_block = max(1, Image.core.get_block_size() // line)
    blocks = -(-max(1, height) // per_block)
    return height * line + 8 * height + blocks * 64 + 4096


class DecodeCost(NamedTuple):
    """Bytes one decode holds at most, by buffer. ``total`` is what :func:`load_image` checks and reserves."""

    pillow: int  # Pillow's image (after JPEG draft), plus any second copy the loader makes
    decoder: int  # the decoder's own buffers (row buffers, libjpeg coefficients, libtiff strips, file data)
    output: int  # our uint8 array at the decoded size
    temporaries: int  # the conversion of one tile
    resized: int  # the analysis-scale array and OpenCV's tables

    @property
    def total(self) -> int:
        return self.pillow + self.decoder + self.output + self.temporaries + self.resized


class _Jpeg(NamedTuple):
    """What the SOF and first SOS headers of a JPEG say, and how much entropy-coded data follows."""

    marker: int  # 0xC0 baseline, 0xC2 progressive...
    width: int
    height: int
    sampling: tuple[tuple[int, int], ...]  # (h, v) per component
    scan_components: int  # components in the first scan (fewer than the frame's: a multi-scan file)
    blocks: int  # 8×8 blocks of the component with the most
    data_bytes: int  # entropy-coded bytes found (counting stops once there are enough)

    @property
    def arithmetic(self) -> bool:
        return self.marker in (0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)

    @property
    def buffered(self) -> bool:
        """libjpeg keeps every DCT coefficient of the image (progressive, or one scan per component)."""
        return self.marker in (0xC2, 0xC6, 0xCA, 0xCE) or self.scan_components < len(self.sampling)

    def coefficient_bytes(self) -> int:
        """libjpeg's whole-image coefficient buffer (jdcoefct.c): 64 two-byte coefficients per block, each
        component padded to whole MCUs."""
        hmax = max(h for h, _ in self.sampling)
        vmax = max(v for _, v in self.sampling)
        total = 0
        for h, v in self.sampling:
            wb, hb = -(-self.width * h // (8 * hmax)), -(-self.height * v // (8 * vmax))
            total += (-(-wb // h) * h) * (-(-hb // v) * v) * 128
        return total


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _read_jpeg(path: str | os.PathLike) -> Optional[_Jpeg]:
    """Parse a JPEG's headers up to its first scan and count the scan data; None if the structure is not found
    (Pillow and libjpeg then have the last word)."""
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return None
        frame = None
        while True:
            byte = f.read(1)
            if not byte:
                return None
            if byte != b"\xff":
                continue  # stray bytes between segments: libjpeg skips them too
            marker = f.read(1)
            while marker == b"\xff":  # fill bytes
                marker = f.read(1)
            if not marker:
                return None
            m = marker[0]
            if m == 0xD8 or m == 0x01 or 0xD0 <= m <= 0xD7:
                continue  # markers without a length
            if m == 0xD9:
                return None
            head = f.read(2)
            if len(head) < 2 or int.from_bytes(head, "big") < 2:
                return None
            length = int.from_bytes(head, "big") - 2
            if m in _SOF_MARKERS:
                body = f.read(length)
                if len(body) < 6:
                    return None
                ncomp = body[5]
                comps = tuple((max(1, b >> 4), max(1, b & 15)) for b in body[7:6 + 3 * ncomp:3])
                frame = (m, int.from_bytes(body[3:5], "big"), int.from_bytes(body[1:3], "big"), comps)
            elif m == 0xDA:
                body = f.read(length)
                if frame is None or not body or not frame[3]:
                    return None
                marker_, width, height, comps = frame
                hmax, vmax = max(h for h, _ in comps), max(v for _, v in comps)
                blocks = max(-(-(-(-width * h // hmax)) // 8) * -(-(-(-height * v // vmax)) // 8) for h, v in comps)
                needed = 0 if marker_ in (0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF) else -(-blocks // 8)
                return _Jpeg(marker_, width, height, comps, body[0], blocks, _scan_bytes(f, needed))
            else:
                f.seek(length, os.SEEK_CUR)


def _scan_bytes(f, enough: int, chunk: int = 1 << 16) -> int:
    """Entropy-coded bytes from the current position of ``f`` to the end of the image (EOI, or end of file),
    skipping the marker segments between scans; stops counting once ``enough`` are found."""
    count = 0
    base = f.tell()
    buf = f.read(chunk)
    at = 0  # position in buf
    while buf and count < enough:
        i = buf.find(b"\xff", at)
        if i < 0:
            count += len(buf) - at
            base += len(buf)
            buf, at = f.read(chunk), 0
            continue
        count += i - at
        if i + 1 >= len(buf):  # the marker's second byte is in the next chunk
            base += i
            f.seek(base)
            buf, at = f.read(chunk), 0
            if len(buf) < 2:
                break
            continue
        m = buf[i + 1]
        if m == 0x00 or 0xD0 <= m <= 0xD7:  # a stuffed 0xFF, or a restart marker: still scan data
            count += 2
            at = i + 2
        elif m == 0xFF:  # fill byte before a marker
            at = i + 1
        elif m == 0xD9:  # end of image
            break
        else:  # a segment between scans (DHT, SOS, DQT, DRI, APPn, COM...): skip it
            f.seek(base + i + 2)
            head = f.read(2)
            if len(head) < 2:
                break
            base = base + i + 2 + int.from_bytes(head, "big")
            f.seek(base)
            buf, at = f.read(chunk), 0
    return count


def _check_jpeg(path, img: Image.Image) -> Optional[_Jpeg]:
    """Refuse a JPEG whose scan data is too short for the size its header claims.

    A Huffman-coded JPEG spends at least one bit on each 8×8 block (the DC code of every block has at least one
    bit), so fewer bits than blocks means a forged or truncated header: libjpeg would fill the missing rows with
    grey without a word, and a 640 × 480 photo forged to claim 65000 × 2000 would be scored as a blurry
    65000 × 2000 one. Arithmetic-coded files (SOF9-SOF11) can go below a bit a block and are not checked.
    """
    info = _read_jpeg(path)
    if info is None or (info.width, info.height) != img.size:
        return info
    needed = -(-info.blocks // 8)
    if not info.arithmetic and info.data_bytes < needed:
        raise ImageError(f"corrupt: the header claims {info.width}x{info.height} pixels but the file holds only "
                         f"{info.data_bytes:,} bytes of image data (at least {needed:,} needed)")
    return info


def _png_text_bytes(path: str | os.PathLike) -> int:
    """Bytes Pillow may keep for a PNG's text, ICC and EXIF chunks, found by walking the chunk headers:
    compressed ones inflated up to Pillow's per-chunk cap (``MAX_TEXT_CHUNK``), text up to ``MAX_TEXT_MEMORY``,
    twice over (the bytes and the decoded string)."""
    from PIL import PngImagePlugin

    text = other = 0
    with open(path, "rb") as f:
        f.seek(8)
        while True:
            head = f.read(8)
            if len(head) < 8 or head[4:] == b"IEND":
                break
            length = int.from_bytes(head[:4], "big")
            kind = head[4:]
            if kind in (b"zTXt", b"iTXt"):
                text += min(length * 1032, PngImagePlugin.MAX_TEXT_CHUNK) + length
            elif kind == b"tEXt":
                text += length
            elif kind == b"iCCP":
                other += min(length * 1032, PngImagePlugin.MAX_TEXT_CHUNK) + length
            elif kind == b"eXIf":
                other += length
            f.seek(length + 4, os.SEEK_CUR)
    return 2 * (min(text, PngImagePlugin.MAX_TEXT_MEMORY + PngImagePlugin.MAX_TEXT_CHUNK) + other)


def _png_line_bytes(img: Image.Image) -> int:
    """Bytes of one PNG scanline as stored (its samples at 8 or 16 bits; at most 8 bytes a pixel)."""
    try:
        rawmode = str(img.tile[0].args[0] if isinstance(img.tile[0].args, tuple) else img.tile[0].args)
    except (IndexError, AttributeError, TypeError):
        rawmode = ""
    bits = 16 if "16" in rawmode else 8
    return 1 + -(-img.width * len(img.getbands()) * bits // 8)


def _tiff_decoder_bytes(img: Image.Image, file_size: int) -> int:
    """libtiff's strip or tile buffer, in the file's own sample format (RGBA words for YCbCr files), the raw
    strips it reads (at most the file), and the full copy Pillow makes to apply an EXIF orientation."""
    tags = getattr(img, "tag_v2", {})
    w, h = img.size

    def tag(key, default):
        value = tags.get(key, default)
        if isinstance(value, tuple):
            value = value[0] if value else default
        return value if isinstance(value, int) and value > 0 else default

    bps = tags.get(258, 1)
    bps = tuple(b for b in (bps if isinstance(bps, tuple) else (bps,)) if isinstance(b, int)) or (1,)
    bits = max(sum(bps), max(bps) * tag(277, len(bps)))
    pixel = max(bits / 8, 4 if tag(262, 0) == 6 else 0, _PIXEL_BYTES.get(img.mode, 4))
    strip = math.ceil(w * pixel) * min(tag(278, h), h)
    tile = math.ceil(tag(322, 0) * tag(323, 0) * pixel) if 322 in tags else 0
    turned = max(pillow_bytes(img.mode, w, h), pillow_bytes(img.mode, h, w)) \
        if tags.get(274, 1) in (2, 3, 4, 5, 6, 7, 8) else 0
    return max(strip, tile) + file_size + turned


def decode_cost(img: Image.Image, mode: str, side: Optional[int], full_size: Optional[tuple[int, int]] = None,
                file_size: int = 0, jpeg: Optional[_Jpeg] = None, png_text_bytes: int = 0) -> DecodeCost:
    """The bytes :func:`load_image` will hold at once to decode ``img`` (opened, and drafted if a JPEG:
    ``full_size`` is then its size before the draft) to ``mode`` at ``side``, from the headers alone.
    ``jpeg``: what :func:`_read_jpeg` found; ``png_text_bytes``: :func:`_png_text_bytes` of a PNG."""
    w, h = img.size
    full_w, full_h = full_size or img.size
    fmt = img.format or ""
    pillow = pillow_bytes(img.mode, w, h)
    work = MiB  # zlib's window, file buffers, the decoder objects
    if fmt == "PNG":
        work += 2 * _png_line_bytes(img) + png_text_bytes  # the current and previous scanline
    else:
        work += 64 * full_w  # libjpeg's MCU row of coefficients and its sample rows; other decoders' row buffers
    if fmt in ("JPEG", "MPO"):
        work += file_size  # the APPn segments Pillow keeps
        if jpeg is None:  # headers we could not follow: assume the worst, a 4:4:4 progressive file
            work += 2 * full_w * full_h * len(img.getbands())
        elif jpeg.buffered:
            work += jpeg.coefficient_bytes()
    elif fmt == "PNG":
        pass
    elif fmt == "TIFF":
        work += _tiff_decoder_bytes(img, file_size)
    elif fmt in ("BMP", "DIB"):
        if img.info.get("compression") in (1, 2):  # RLE: decoded into a bytearray, then copied
            work += 2 * w * h
    else:
        # WebP: two canvases and the frame's bytes; HEIF: libheif's planes and the decoded bytes; anything else
        # (GIF, ICO, PSD...): a second frame buffer. Plus the file, read into memory.
        work += (16 if fmt in ("WEBP", "HEIF", "AVIF") else 8) * w * h + file_size
    channels = 1 if mode == "L" else 3
    output = w * h * channels
    temporaries = min(w * h, TILE_PIXELS) * TILE_BYTES_PER_PIXEL
    resized = 0
    if side is not None:
        rw, rh = analysis_size(w, h, side)
        if (rw, rh) != (w, h):
            resized = rw * rh * channels + 32 * (w + h) + 64 * rw * channels
    return DecodeCost(pillow, work, output, temporaries, resized)


# --------------------------------------------------------------------------------------------------------------
# Decoding


def _open(path: str | os.PathLike, max_pixels: int) -> Image.Image:
    path = Path(path)
    try:
        if path.is_symlink() and not path.exists():
            raise ImageError("broken symbolic link")
        if path.is_dir():
            raise ImageError("is a directory")
        if path.stat().st_size == 0:
            raise ImageError("empty file (0 bytes)")
        img = Image.open(path)  # Pillow's bomb warning is filtered above; our own checks follow
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised content)") from None
    except Image.DecompressionBombError:
        raise ImageError("image too large to decode safely (decompression bomb)") from None
    except OSError as err:
        raise ImageError(f"cannot open: {err.strerror or err}") from None
    if img.width * img.height > max_pixels:
        img.close()
        raise ImageError(
            f"image too large: {img.width}x{img.height} "
            f"({img.width * img.height / 1e6:.0f} MP > limit {max_pixels / 1e6:.0f} MP)"
        )
    return img


def _orientation(img: Image.Image):
    """The EXIF orientation, as ``ImageOps.exif_transpose`` reads it."""
    return img.getexif().get(0x0112, 1) if hasattr(img, "getexif") else 1


# EXIF orientation -> the Pillow transposition that shows the picture upright (as ImageOps.exif_transpose).
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
_SWAPS_AXES = (Image.Transpose.TRANSPOSE, Image.Transpose.ROTATE_270, Image.Transpose.TRANSVERSE,
               Image.Transpose.ROTATE_90)


def _source_view(out: np.ndarray, method) -> np.ndarray:
    """A view of ``out`` (the upright picture) laid out as the stored picture, so that writing the stored
    pixels into it writes them where ``Image.transpose(method)`` would put them: orientation at no copy."""
    T = Image.Transpose
    if method is None:
        return out
    if method == T.FLIP_LEFT_RIGHT:
        return out[:, ::-1]
    if method == T.FLIP_TOP_BOTTOM:
        return out[::-1]
    if method == T.ROTATE_180:
        return out[::-1, ::-1]
    if method == T.ROTATE_90:  # out = rot90(src)
        return np.rot90(out, -1)
    if method == T.ROTATE_270:  # out = rot90(src, -1)
        return np.rot90(out, 1)
    if method == T.TRANSPOSE:
        return out.swapaxes(0, 1)
    return np.rot90(out, 2).swapaxes(0, 1)  # TRANSVERSE, its own inverse


def _tiles(width: int, height: int) -> Iterator[tuple[int, int, int, int]]:
    """Crop boxes of at most ``TILE_PIXELS`` pixels covering the image, row-major: whole rows, or pieces of a
    row when one row alone is longer."""
    pixels = max(1, TILE_PIXELS)
    rows = max(1, pixels // max(1, width))
    cols = min(width, pixels)
    for y in range(0, height, rows):
        for x in range(0, width, cols):
            yield x, y, min(width, x + cols), min(height, y + rows)


def _deep_top(img: Image.Image) -> float:
    """The value mapped to 255 for a 16-bit, 32-bit or float image: 65535 for 16-bit modes; for I and F, chosen
    from the whole image's peak as before (np.max over tiles propagates NaN the same way as over the image)."""
    if img.mode.startswith("I;16"):
        return 65535.0
    peaks = [np.asarray(img.crop(box), dtype=np.float32).max(initial=0) for box in _tiles(*img.size)]
    peak = np.max(np.array(peaks, dtype=np.float32), initial=0)
    # 16-bit modes span 0..65535; float images usually 0..1; 32-bit ints may hold either range.
    return 65535.0 if peak > 255 else 1.0 if img.mode == "F" and peak <= 1 else 255.0


def _tile_to_8bit(tile: Image.Image, mode: str, top: float) -> np.ndarray:
    """One tile as uint8 grey (H, W) or RGB (H, W, 3), with the per-pixel arithmetic the models were trained on;
    16-bit and float tiles come back grey (H, W) whatever ``mode``."""
    if tile.mode in _DEEP_MODES:
        arr = np.asarray(tile, dtype=np.float32)
        with np.errstate(invalid="ignore"):  # NaN pixels: the cast is what it always was, without the warning
            return np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
    if tile.mode in _ALPHA_MODES or (tile.mode == "P" and "transparency" in tile.info):
        # Composite transparent pixels on white, as a viewer would show them.
        rgba = tile.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        tile = Image.alpha_composite(canvas, rgba)
    return np.asarray(tile.convert(mode))


def _to_8bit(img: Image.Image, mode: str, method=None) -> np.ndarray:
    """Any Pillow mode (16-bit, float, CMYK, palette, alpha) as uint8 grey ('L', (H, W)) or 'RGB' ((H, W, 3)),
    transposed by ``method`` (an ``Image.Transpose`` or None), converted tile by tile into one preallocated array;
    the result is the same, bit for bit, as converting the whole image at once and transposing it."""
    w, h = img.size
    top = _deep_top(img) if img.mode in _DEEP_MODES else 255.0
    shape = (w, h) if method in _SWAPS_AXES else (h, w)
    out = np.empty(shape + ((3,) if mode == "RGB" else ()), np.uint8)
    view = _source_view(out, method)
    for x0, y0, x1, y1 in _tiles(w, h):
        part = _tile_to_8bit(img.crop((x0, y0, x1, y1)), mode, top)
        view[y0:y1, x0:x1] = part[..., None] if part.ndim < view.ndim else part
    return out


def load_image(
    path: str | os.PathLike,
    mode: str = "L",
    side: int | None = ANALYSIS_SIDE,
    max_pixels: int = MAX_PIXELS,
    budget: int = DECODE_BUDGET,
    native: bool = False,
    keep_full: bool = False,
) -> Decoded:
    """Read ``path`` with EXIF orientation applied, as ``mode`` ('L' grey or 'RGB') at the analysis scale.

    ``side=None`` keeps the full resolution. ``native``: also keep full-resolution strips (:attr:`Decoded.native`,
    for the noise estimate) when the image is reduced. ``keep_full``: decode at full size (no JPEG draft) and keep
    the full-resolution array too (:attr:`Decoded.full`), for judging at native scale; a reduced JPEG read as grey
    is then decoded by libjpeg straight to grey (its Y channel: within a few grey levels of the colour decode
    converted), and its analysis-scale picture made by halving it as often as the draft would have (:func:`_halve`),
    so that it matches the screen path's within 2 grey levels. The file type is sniffed from its bytes, never from
    its name.
    ``budget`` (bytes) caps everything the decode may hold at once (:func:`decode_cost`); the decode waits in
    :data:`DECODE_POOL` while other threads hold too much. Raises ImageError with a one-line reason for anything
    unreadable, over ``max_pixels`` or over the budget, and for a JPEG whose data is too short for its header.
    """
    try:
        return _load_image(path, mode, side, max_pixels, budget, native, keep_full)
    except ImageError as err:
        if err.path is None:
            err.path = os.fspath(path)
        raise


def _load_image(path, mode: str, side: int | None, max_pixels: int, budget: int, keep_native: bool,
                keep_full: bool = False) -> Decoded:
    _quiet_pillow()
    img = _open(path, max_pixels)
    cost = None
    draft = 1
    halvings = 0
    native = ()
    kept = None
    try:
        jpeg = _check_jpeg(path, img) if img.format in ("JPEG", "MPO") else None
        # Orientation is asked twice. Before the load, for the reported size: Pillow's TIFF loader turns the
        # picture upright itself and drops the tag. After it, for what is left to do: a PNG's EXIF may follow the
        # pixels, and getexif() before the load would decode them (outside the budget) to find it.
        orient = _orientation(img) if img.format != "PNG" or "exif" in img.info else None
        width, height = img.width, img.height
        if side is not None and img.format == "JPEG" and not keep_full:
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale: far faster than a full decode, still >= side.
            target_w, target_h = analysis_size(img.width, img.height, side)
            img.draft(mode if mode in ("L", "RGB") else None, (target_w, target_h))
            draft = next((d for d in (1, 2, 4, 8) if -(-width // d) == img.width), 1)
        elif (keep_full and side is not None and img.format == "JPEG"
              and analysis_size(width, height, side) != (width, height)):
            # Native scale, full size: the draft the screen path would take, not taken (the full picture is
            # reduced the same way below, by halving), and libjpeg decoding a colour JPEG straight to grey (its Y
            # channel, as OpenCV's grey decode does) rather than to RGB converted after: a third of the work and of
            # the memory. A CMYK or grey file keeps its mode (img.mode is "L" after only for YCbCr), and _to_8bit
            # converts it. An image not reduced is decoded as on the screen path (native scale judges it the same).
            halvings = {8: 3, 4: 2, 2: 1}.get(_draft_scale(width, height, side), 0)
            if mode == "L":
                img.draft("L", (img.width, img.height))  # the size itself: scale 1
        cost = decode_cost(img, mode, side, (width, height), os.stat(path).st_size, jpeg,
                           _png_text_bytes(path) if img.format == "PNG" else 0)
        if halvings:  # _halve's pictures (a quarter of the output, a sixteenth...), each padded first when odd
            channels = 1 if mode == "L" else 3
            half = -(-img.width // 2) * -(-img.height // 2) * channels
            odd = img.width * img.height * channels if img.width % 2 or img.height % 2 else 0
            cost = cost._replace(resized=cost.resized + 2 * (half * 4 // 3) + odd)
        if cost.total > budget:
            raise ImageError(f"image needs {-(-cost.total // MiB):,} MiB to decode, "
                             f"over the {budget // MiB:,} MiB budget")
        planned = img.width * img.height * _PIXEL_BYTES.get(img.mode, 4)
        with DECODE_POOL.reserve(cost.total):
            img.load()
            if img.width * img.height * _PIXEL_BYTES.get(img.mode, 4) > planned:  # grown past its header
                raise ImageError(f"corrupt: decoded to {img.width}x{img.height} {img.mode}, more than its header "
                                 "said")
            after = _orientation(img)
            orient = after if orient is None else orient
            method = _TRANSPOSE.get(after)
            pixels = _to_8bit(img, mode, method)
            img.close()  # Pillow's copy goes before the resize
            if side is not None:
                full = pixels
                pixels = resize_to_analysis(_halve(pixels, halvings, method), side)
                if keep_native and pixels is not full and draft == 1:
                    native = strips(full)
                if keep_full and pixels is not full:
                    kept = np.ascontiguousarray(full)
        if keep_native and draft > 1 and jpeg is not None and not (jpeg.buffered or jpeg.arithmetic):
            native = _top_band(path)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ImageError(f"corrupt or truncated image: {reason}") from None
    finally:
        img.close()
        if cost is not None and cost.total >= TRIM_AFTER_BYTES:
            _give_memory_back()
    if orient in (5, 6, 7, 8):
        width, height = height, width
    return Decoded(np.ascontiguousarray(pixels), width, height, draft, native, kept)


def decoded_array(pixels: np.ndarray, side: int = ANALYSIS_SIDE, size: tuple[int, int] | None = None,
                  keep_full: bool = False) -> Decoded:
    """An image already in memory, uint8 (H, W) or (H, W, 3), as :class:`Decoded` at the analysis scale, with its
    full-resolution strips when it is reduced, and with ``pixels`` themselves as :attr:`Decoded.full` when
    ``keep_full``. ``size``: the original (width, height) when ``pixels`` are already smaller than the picture was
    (the strips and the full image are then left out)."""
    small = resize_to_analysis(pixels, side)
    h, w = pixels.shape[:2]
    own = small is not pixels and size in (None, (w, h))
    native = strips(pixels) if own else ()
    width, height = size or (w, h)
    return Decoded(np.ascontiguousarray(small), width, height, 1, native,
                   np.ascontiguousarray(pixels) if own and keep_full else None)


def strips(full: np.ndarray, rows: int = NATIVE_BAND_ROWS) -> tuple:
    """Grey copies of the top, middle and bottom ``rows`` of a full-resolution (H, W[, 3]) array."""
    h = full.shape[0]
    if h < 3 * rows:
        return (to_gray(full),)
    starts = (0, (h - rows) // 2, h - rows)
    return tuple(to_gray(full[y:y + rows]) for y in starts)


def _top_band(path, rows: int = NATIVE_BAND_ROWS) -> tuple:
    """The top ``rows`` of a sequential JPEG at full resolution, grey, as a one-strip tuple (empty on any failure).

    Pillow is asked for an image of only those rows: libjpeg decodes them and stops, and Pillow then reports the
    unfinished stream as an OSError, with the rows already in place. Progressive and arithmetic-coded files are
    left out (libjpeg would read the whole file first)."""
    try:
        with Image.open(path) as img:
            if img.format != "JPEG" or not img.tile or img.tile[0][0] != "jpeg":
                return ()
            img.draft("L", img.size)
            w, h = img.size
            rows = min(rows, h)
            img._size = (w, rows)
            img.tile = [img.tile[0]._replace(extents=(0, 0, w, rows))]
            try:
                img.load()
            except OSError:
                pass  # the stream was left unfinished on purpose
            if img.mode != "L" or img.size != (w, rows) or getattr(img, "im", None) is None:
                return ()
            return (np.asarray(img).copy(),)
    except Exception:  # noqa: BLE001 - the strip only refines the noise estimate; the scan must go on without it
        return ()


def _draft_scale(width: int, height: int, side: int) -> int:
    """The scale 1/d (d = 1, 2, 4 or 8) Pillow's JPEG draft picks for a width × height image shown at ``side``."""
    target_w, target_h = analysis_size(width, height, side)
    scale = min(width // target_w, height // target_h)
    return next(s for s in (8, 4, 2, 1) if scale >= s)


# Where the stored picture's last row and last column lie in the upright one, by the transposition applied.
_LAST_ROW_COLUMN = {None: ("bottom", "right"), Image.Transpose.FLIP_LEFT_RIGHT: ("bottom", "left"),
                    Image.Transpose.FLIP_TOP_BOTTOM: ("top", "right"), Image.Transpose.ROTATE_180: ("top", "left"),
                    Image.Transpose.TRANSPOSE: ("right", "bottom"), Image.Transpose.ROTATE_90: ("right", "top"),
                    Image.Transpose.ROTATE_270: ("left", "bottom"), Image.Transpose.TRANSVERSE: ("left", "top")}


def _halve(pixels: np.ndarray, times: int, method=None) -> np.ndarray:
    """``pixels`` reduced ``times`` times by 2 in each direction, each pixel the mean of a 2 × 2 block, rounded (an
    odd last row or column is repeated first, so the size rounds up as in libjpeg's scaled decode; ``method``, the
    transposition that made ``pixels`` upright, says where the stored picture's last row and column are).

    The full-size picture of a JPEG brought to the analysis scale this way, then by resize_to_analysis, is the
    screen path's analysis picture of the same file (libjpeg's 1/d draft, resized) within 2 grey levels, where an
    area resize of the full picture in one step is sharper (up to 60 grey levels apart); and it is 3 to 5 times
    faster (OpenCV's 2 × 2 area reduction is vectorised, its general area resize is not)."""
    for _ in range(times):
        h, w = pixels.shape[:2]
        if h % 2 or w % 2:  # the last row or column repeated, as libjpeg pads a partial block
            pad = dict.fromkeys(("top", "bottom", "left", "right"), 0)
            for edge in _LAST_ROW_COLUMN[method]:
                pad[edge] = (h if edge in ("top", "bottom") else w) % 2
            pixels = cv2.copyMakeBorder(pixels, pad["top"], pad["bottom"], pad["left"], pad["right"],
                                        cv2.BORDER_REPLICATE)
        pixels = cv2.resize(pixels, (-(-w // 2), -(-h // 2)), interpolation=cv2.INTER_AREA)
    return pixels


def resize_to_analysis(pixels: np.ndarray, side: int = ANALYSIS_SIDE) -> np.ndarray:
    """Downscale (area averaging) so the shorter side is ``side``; smaller arrays are returned unchanged."""
    h, w = pixels.shape[:2]
    new_w, new_h = analysis_size(w, h, side)
    if (new_w, new_h) == (w, h):
        return pixels
    return cv2.resize(pixels, (new_w, new_h), interpolation=cv2.INTER_AREA)


def to_gray(image: np.ndarray) -> np.ndarray:
    """Any array image → uint8 (H, W) grey.

    Accepts (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA, as uint8, uint16 or float in [0, 1].
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3) or min(arr.shape[:2]) < 1:
        raise ImageError(f"expected an (H, W) or (H, W, 3) image array, got shape {arr.shape}")
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif arr.dtype.kind == "f":
        arr = (np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    elif arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 3:
        arr = cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(arr)


def is_image_name(path: str | os.PathLike) -> bool:
    """True when the file name has an image suffix we scan (contents are still sniffed on read)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


__all__ = [
    "ANALYSIS_SIDE",
    "DECODE_BUDGET",
    "DECODE_POOL",
    "DecodeCost",
    "DecodePool",
    "Decoded",
    "IMAGE_SUFFIXES",
    "ImageError",
    "MAX_PIXELS",
    "analysis_size",
    "decode_cost",
    "is_image_name",
    "load_image",
    "resize_to_analysis",
    "to_gray",
]
