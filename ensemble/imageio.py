"""Decode image files into arrays at the analysis scale.

Every path into the models goes through here, so training, evaluation, scans and the server see exactly the same
pixels. The analysis scale fixes the *shorter side* at ``ANALYSIS_SIDE`` pixels (never upsampling), so a photo saved
at 1 MP and at 24 MP reaches the models as nearly the same array and gets the same verdict.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # HEIC/HEIF support is optional: registered when the package is installed.
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - depends on the install
    pillow_heif = None

ANALYSIS_SIDE = 640
"""Shorter side, in pixels, of the array the models see."""

MAX_PIXELS = 150_000_000
"""Largest image (width × height) we agree to decode; bigger files are refused as decompression bombs."""

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".bmp", ".webp", ".heic", ".heif"}
)


class ImageError(Exception):
    """An image could not be read. ``str(err)`` is a one-line reason fit to show a user."""


@dataclass(frozen=True)
class Decoded:
    """A decoded image at the analysis scale.

    ``pixels`` is uint8, (H, W) for grey or (H, W, 3) RGB. ``width`` and ``height`` are the original size in pixels
    after EXIF orientation.
    """

    pixels: np.ndarray
    width: int
    height: int


def analysis_size(width: int, height: int, side: int = ANALYSIS_SIDE) -> tuple[int, int]:
    """(width, height) of the analysis-scale array for an image of the given size; never larger than the input."""
    short = min(width, height)
    if short <= side:
        return width, height
    scale = side / short
    return max(1, round(width * scale)), max(1, round(height * scale))


def _open(path: str | os.PathLike, max_pixels: int) -> Image.Image:
    path = Path(path)
    try:
        if path.is_symlink() and not path.exists():
            raise ImageError("broken symbolic link")
        if path.is_dir():
            raise ImageError("is a directory")
        if path.stat().st_size == 0:
            raise ImageError("empty file (0 bytes)")
        with warnings.catch_warnings():
            # Pillow's bomb warning becomes our own check below; its hard error is caught here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
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


def _to_8bit(img: Image.Image, mode: str) -> np.ndarray:
    """Convert any Pillow mode (16-bit, float, CMYK, palette, alpha) to uint8 grey ('L') or 'RGB'."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        peak = arr.max(initial=0)
        # 16-bit modes span 0..65535; float images usually 0..1; 32-bit ints may hold either range.
        top = 65535.0 if img.mode.startswith("I;16") or peak > 255 else 1.0 if img.mode == "F" and peak <= 1 else 255.0
        grey = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
        return grey if mode == "L" else np.repeat(grey[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparent pixels on white, as a viewer would show them.
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(canvas, rgba)
    return np.asarray(img.convert(mode))


def load_image(
    path: str | os.PathLike,
    mode: str = "L",
    side: int | None = ANALYSIS_SIDE,
    max_pixels: int = MAX_PIXELS,
) -> Decoded:
    """Read ``path`` with EXIF orientation applied, as ``mode`` ('L' grey or 'RGB') at the analysis scale.

    ``side=None`` keeps the full resolution. The file type is sniffed from its bytes, never from its name.
    Raises ImageError with a one-line reason for anything unreadable.
    """
    img = _open(path, max_pixels)
    try:
        orient = img.getexif().get(0x0112, 1) if hasattr(img, "getexif") else 1
        width, height = (img.height, img.width) if orient in (5, 6, 7, 8) else (img.width, img.height)
        if side is not None and img.format == "JPEG":
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale: far faster than a full decode, still >= side.
            target_w, target_h = analysis_size(img.width, img.height, side)
            img.draft(mode if mode in ("L", "RGB") else None, (target_w, target_h))
        img.load()
        img = ImageOps.exif_transpose(img)
        pixels = _to_8bit(img, mode)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ImageError(f"corrupt or truncated image: {reason}") from None
    finally:
        img.close()
    if side is not None:
        pixels = resize_to_analysis(pixels, side)
    return Decoded(np.ascontiguousarray(pixels), width, height)


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
    "Decoded",
    "IMAGE_SUFFIXES",
    "ImageError",
    "MAX_PIXELS",
    "analysis_size",
    "is_image_name",
    "load_image",
    "resize_to_analysis",
    "to_gray",
]
