"""Artificial blur for training: defocus disk, Gaussian and linear motion, as in CERTH's artificially blurred set.

All kernels act on a uint8 (H, W) image at the analysis scale; strengths are in analysis-scale pixels.
"""
from __future__ import annotations

import cv2
import numpy as np

BLUR_KINDS = ("defocus", "gaussian", "motion")


def defocus_kernel(radius: float) -> np.ndarray:
    """Normalised disk of the given radius (pixels), anti-aliased by supersampling."""
    r = max(radius, 0.5)
    n = int(np.ceil(r)) * 2 + 1
    ss = 4
    yy, xx = np.mgrid[0 : n * ss, 0 : n * ss]
    c = (n * ss - 1) / 2
    disk = ((yy - c) ** 2 + (xx - c) ** 2 <= (r * ss) ** 2).astype(np.float32)
    k = cv2.resize(disk, (n, n), interpolation=cv2.INTER_AREA)
    return k / k.sum()


def motion_kernel(length: float, angle_deg: float) -> np.ndarray:
    """Normalised line of ``length`` pixels at ``angle_deg`` degrees."""
    n = int(np.ceil(length)) | 1
    k = np.zeros((n * 4, n * 4), np.float32)
    c = (n * 4 - 1) / 2
    dx, dy = np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg))
    half = length * 2
    cv2.line(k, (int(round(c - dx * half)), int(round(c - dy * half))),
             (int(round(c + dx * half)), int(round(c + dy * half))), 1.0, thickness=2, lineType=cv2.LINE_AA)
    k = cv2.resize(k, (n, n), interpolation=cv2.INTER_AREA)
    return k / k.sum()


def apply_blur(gray: np.ndarray, kind: str, strength: float, angle_deg: float = 0.0) -> np.ndarray:
    """Blur ``gray`` with one kernel: defocus radius, Gaussian sigma or motion length ``strength`` (pixels)."""
    if kind == "gaussian":
        return cv2.GaussianBlur(gray, (0, 0), sigmaX=strength, borderType=cv2.BORDER_REFLECT)
    if kind == "defocus":
        kernel = defocus_kernel(strength)
    elif kind == "motion":
        kernel = motion_kernel(strength, angle_deg)
    else:
        raise ValueError(f"unknown blur kind {kind!r}; expected one of {BLUR_KINDS}")
    return cv2.filter2D(gray, -1, kernel, borderType=cv2.BORDER_REFLECT)


def random_blur(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random blur, from mild to strong: defocus radius 1.5–6, Gaussian sigma 1–3.5 or motion length 4–20 px.

    Mild blurs matter most: real hand-held shake is often only a few pixels long at the analysis scale.
    """
    kind = BLUR_KINDS[rng.integers(len(BLUR_KINDS))]
    if kind == "defocus":
        return apply_blur(gray, kind, rng.uniform(1.5, 6.0))
    if kind == "gaussian":
        return apply_blur(gray, kind, rng.uniform(1.0, 3.5))
    return apply_blur(gray, kind, rng.uniform(4.0, 20.0), rng.uniform(0.0, 180.0))
