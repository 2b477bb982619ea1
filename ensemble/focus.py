"""Classical focus measures on a grey image (OpenCV).

All functions take a uint8 (H, W) array at the analysis scale and return plain floats or float32 vectors. Variances
are in grey levels squared; feature vectors use log1p so that their scale suits a neural network.
"""
from __future__ import annotations

import cv2
import numpy as np

SCALES = (1, 2, 4)
"""Downscale factors at which the measures are repeated: blur that spans many pixels shows at coarser scales."""

TILE_GRID = 8
"""The image is cut into TILE_GRID × TILE_GRID tiles for local statistics."""

FOCUS_FEATURE_NAMES = tuple(
    f"{name}@{s}x"
    for s in SCALES
    for name in ("log_lapvar", "log_tile_lapvar_p50", "log_tile_lapvar_p90", "log_tile_lapvar_max", "log_tenengrad")
) + ("lap_ratio_1_2", "lap_ratio_1_4", "log_contrast")


MIN_DETAIL_SIDE = 32
"""An image whose shorter side is below this (pixels) is too small to judge: neither sharp nor blurry."""

UNIFORM_STD = 2.5
"""An image whose standard deviation, after area-averaging 8 × 8 pixel blocks (which removes sensor noise), is below
this (grey levels) is uniform: a blank page or picture, a covered or fogged-up lens, a flat test card."""


def detail_spread(gray: np.ndarray) -> float:
    """Grey-level standard deviation after 8 × 8 area averaging: how much there is to see, noise left out."""
    h, w = gray.shape
    small = cv2.resize(gray, (max(1, w // 8), max(1, h // 8)), interpolation=cv2.INTER_AREA)
    return float(small.std())


def no_detail(gray: np.ndarray, what: str = "picture") -> str | None:
    """Why a grey image has nothing to judge for focus (too small, or uniform), or None when it has.

    The one rule behind a scan's ``flat`` label and the camera monitor's INVALID; ``what`` names the image in the
    reason ("picture", "frame")."""
    h, w = gray.shape
    if min(h, w) < MIN_DETAIL_SIDE:
        return f"{what} too small to judge ({w}x{h} pixels; at least {MIN_DETAIL_SIDE} on each side)"
    spread = detail_spread(gray)
    if spread < UNIFORM_STD:
        return f"uniform {what} (contrast {spread:.1f} grey levels): blank, one colour, covered or fogged"
    return None


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the Laplacian (3×3 kernel), in grey levels squared. 0 for a flat image."""
    lap = cv2.Laplacian(gray, cv2.CV_32F)
    return float(lap.var())


def _downscale(gray: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return gray
    h, w = gray.shape
    return cv2.resize(gray, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)


def _tile_variances(lap: np.ndarray) -> np.ndarray:
    """Variance of ``lap`` in each tile of a TILE_GRID × TILE_GRID grid, shape (k,)."""
    h, w = lap.shape
    th, tw = max(1, h // TILE_GRID), max(1, w // TILE_GRID)
    rows, cols = max(1, h // th), max(1, w // tw)
    tiles = lap[: rows * th, : cols * tw].reshape(rows, th, cols, tw)
    return tiles.var(axis=(1, 3)).ravel()


def focus_features(gray: np.ndarray) -> np.ndarray:
    """Focus feature vector of one grey image, float32 of shape (len(FOCUS_FEATURE_NAMES),).

    Per scale: log variance of the Laplacian, its tile quantiles (so a small sharp subject still counts) and the
    log mean squared Sobel gradient (Tenengrad). Then the ratios between scales and the global contrast.
    """
    feats: list[float] = []
    lapvars = []
    for factor in SCALES:
        img = _downscale(gray, factor)
        lap = cv2.Laplacian(img, cv2.CV_32F)
        var = float(lap.var())
        lapvars.append(var)
        tiles = _tile_variances(lap)
        gx = cv2.Sobel(img, cv2.CV_32F, 1, 0)
        gy = cv2.Sobel(img, cv2.CV_32F, 0, 1)
        tenengrad = float(np.mean(gx * gx + gy * gy))
        feats += [
            np.log1p(var),
            *np.log1p(np.quantile(tiles, [0.5, 0.9, 1.0])),
            np.log1p(tenengrad),
        ]
    feats += [
        np.log1p(lapvars[0]) - np.log1p(lapvars[1]),
        np.log1p(lapvars[0]) - np.log1p(lapvars[2]),
        np.log1p(float(gray.std())),
    ]
    return np.asarray(feats, dtype=np.float32)
