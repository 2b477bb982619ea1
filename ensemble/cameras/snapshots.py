"""``--snapshots DIR``: the last frame of each camera and its blur map, side by side.

``DIR/<camera>.jpg`` is the frame as the camera sent it (a JPEG snapshot byte for byte; stream frames, kept at the
analysis scale, and other formats re-encoded as JPEG), and ``DIR/<camera>.blurmap.png`` the same frame with the per-patch blur map over it
(:func:`ensemble.scan.save_blur_map`). Both are replaced atomically at every check that got a frame, so an
unreachable camera keeps its last picture. File names come from camera names only, never from URLs.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from ..fsutil import atomic_write, unique_stems
from .monitor import Check

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def snapshot_stems(names: Iterable[str]) -> dict[str, str]:
    """A distinct, file-name-safe stem for each camera name (config order; stable across runs).

    Characters outside ``A-Z a-z 0-9 . _ -`` become ``_``; stems that collide (case-insensitively) get ``-2``, ``-3``.
    """
    names = list(names)
    return dict(zip(names, unique_stems(_UNSAFE.sub("_", name).strip("._") or "camera" for name in names)))


def save_snapshot(check: Check, folder: str | Path, stem: str, side: int) -> tuple[Path, Path]:
    """Write ``folder/stem.jpg`` and ``folder/stem.blurmap.png`` for a check that got a frame; returns both paths.

    Raises OSError (or ImageError) when they cannot be written.
    """
    import cv2
    import numpy as np

    from ..scan import save_blur_map

    folder = Path(folder)
    frame = check.frame
    if frame is None or check.result is None:
        raise ValueError("this check has no frame")
    if frame.data is not None and frame.data[:3] == b"\xff\xd8\xff":
        data = frame.data
    else:
        pixels = np.asarray(frame.pixels) if frame.pixels is not None else check.rgb
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise OSError("cannot encode the frame as JPEG")
        data = buf.tobytes()
    jpg = atomic_write(folder / f"{stem}.jpg", data)
    png = save_blur_map(str(jpg), check.result, folder / f"{stem}.blurmap.png", side)
    return jpg, png


__all__ = ["save_snapshot", "snapshot_stems"]
