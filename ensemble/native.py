"""Judging an image at its own resolution (``scale="native"``): the patches a person sees at 100 %.

The frame is cut into a grid of about :data:`NATIVE_CELLS` square cells that covers all of it, and each cell gives
the CNN its most detailed full-resolution patch. So the cost stays that of a screen-scale image (at most
:data:`~ensemble.patches.MAX_SCORED` patches), and a page whose lower half is out of focus shows soft patches in
half of its cells. The focus measures are computed on the mosaic of those patches, at full resolution too; the
noise on full-resolution strips of the image.

The result is a :class:`~ensemble.features.PatchJob` like a screen-scale one, with the same feature vector, and the
measures of ensemble.native_focus (directional sharpness, text-line pitch); the native-scale meta-network
(``final_model/meta_native.onnx``) reads both (:data:`NATIVE_FEATURE_NAMES`, :func:`native_inputs`). Its grid is the
cell grid, so the blur map covers the whole frame, one value a cell.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from .features import FEATURE_NAMES, PatchJob
from .focus import block_sums, focus_features, noise_sigma, noise_sigma_of_bands
from .imageio import strips
from .native_focus import NATIVE_EXTRA_NAMES, native_measures
from .patches import MAX_SCORED, MIN_TEXTURE_STD, PATCH_SIZE, PatchGrid

NATIVE_FEATURE_NAMES = (*FEATURE_NAMES, *NATIVE_EXTRA_NAMES)
"""What the native-scale meta-network reads (native.json records it): the feature vector, then native_focus's."""

NATIVE_CELLS = MAX_SCORED
"""About this many cells (and so at most this many CNN patches) an image is judged on at native scale."""

SAMPLE_STEP = 4
"""The candidate patches' detail is measured on every SAMPLE_STEP-th pixel in each direction: 1/16 of the work,
which keeps choosing the patches of a 12 MP photo to about a millisecond."""


def cell_layout(height: int, width: int, patch_size: int = PATCH_SIZE, cells: int = NATIVE_CELLS
                ) -> tuple[int, int, int, tuple[int, int]]:
    """(rows, cols, side, (y0, x0)) of the square cells over an (H, W) image: about ``cells`` cells of ``side``
    pixels (at least ``patch_size``) covering the frame, the few pixels left over split evenly on both sides."""
    side = max(patch_size, int(math.sqrt(height * width / cells)))
    rows, cols = max(1, round(height / side)), max(1, round(width / side))
    while rows * cols > cells and side < min(height, width):  # rounding up both ways can overshoot
        side += 1
        rows, cols = max(1, round(height / side)), max(1, round(width / side))
    side = max(patch_size, min(height // rows, width // cols))
    rows, cols = max(1, min(rows, height // side)), max(1, min(cols, width // side))
    return rows, cols, side, ((height - rows * side) // 2, (width - cols * side) // 2)


def native_grid(full: np.ndarray, patch_size: int = PATCH_SIZE, noise: float = 0.0,
                min_std: float = MIN_TEXTURE_STD, cells: int = NATIVE_CELLS) -> tuple[PatchGrid, int]:
    """The most detailed ``patch_size`` patch of each cell of a full-resolution uint8 (H, W) image, as a PatchGrid
    over the cell grid (``origin`` the first cell's corner, full-resolution pixels), and the cells' side.

    Detail is a candidate's grey-level spread with the noise (``noise``, grey levels) taken out, as in
    patches.extract_patches; a cell counts as textured when its best candidate passes ``min_std``.
    """
    h, w = full.shape
    if h < patch_size or w < patch_size:
        full = np.pad(full, ((0, max(0, patch_size - h)), (0, max(0, patch_size - w))), mode="edge")
        h, w = full.shape
    rows, cols, side, (y0, x0) = cell_layout(h, w, patch_size, cells)
    per = side // patch_size  # candidates per cell and direction, non-overlapping, centred in the cell
    inset = (side - per * patch_size) // 2
    n = rows * cols
    patches = np.empty((n, patch_size, patch_size), np.uint8)
    std = np.empty(n, np.float32)
    step = SAMPLE_STEP if patch_size >= 8 * SAMPLE_STEP else 1
    for r in range(rows):
        for c in range(cols):
            top, left = y0 + r * side + inset, x0 + c * side + inset
            block = full[top : top + per * patch_size, left : left + per * patch_size]
            i, j = np.unravel_index(int(np.argmax(_candidate_spreads(block[::step, ::step], per))), (per, per))
            k = r * cols + c
            patches[k] = block[i * patch_size : (i + 1) * patch_size, j * patch_size : (j + 1) * patch_size]
            std[k] = cv2.meanStdDev(patches[k])[1][0, 0]
    detail = np.sqrt(np.maximum(std.astype(np.float64) ** 2 - float(noise) ** 2, 0.0))
    return PatchGrid(patches, rows, cols, (y0, x0), detail >= min_std, std), side


def _candidate_spreads(sample: np.ndarray, per: int) -> np.ndarray:
    """float64 (per, per): the grey-level spread of each of the per × per equal squares of a uint8 ``sample``, from
    its integral images (exact sums; five times faster than numpy's strided standard deviation)."""
    q = sample.shape[0] // per
    total, squares = cv2.integral2(sample, sdepth=cv2.CV_64F, sqdepth=cv2.CV_64F)
    n = q * q
    mean = block_sums(total, q) / n
    return np.sqrt(np.maximum(block_sums(squares, q) / n - mean * mean, 0.0))


def mosaic(grid: PatchGrid) -> np.ndarray:
    """The grid's patches side by side in their cells' order: uint8 (rows · P, cols · P)."""
    p = grid.size
    return grid.patches.reshape(grid.rows, grid.cols, p, p).swapaxes(1, 2).reshape(grid.rows * p, grid.cols * p)


def full_noise(full: np.ndarray) -> float:
    """The noise σ (grey levels) of a full-resolution grey image, from three strips of it (focus.noise_sigma on the
    whole image when they are too small)."""
    sigma = noise_sigma_of_bands(strips(full))
    return noise_sigma(full) if sigma is None else sigma


def prepare_native(full: np.ndarray, analysis: np.ndarray, patch_size: int = PATCH_SIZE
                   ) -> tuple[PatchJob, int, np.ndarray]:
    """Everything of a full-resolution uint8 (H, W) grey image's native-scale features that needs no CNN: its job,
    the side of its cells in full-resolution pixels and its native measures, float32 (len(NATIVE_EXTRA_NAMES),),
    which also read ``analysis``, the image at the analysis scale. Every textured cell's patch is scored (all of
    them when none is)."""
    noise = full_noise(full)
    grid, side = native_grid(full, patch_size, noise)
    chosen = grid.textured.copy() if grid.textured.any() else np.ones_like(grid.textured)
    job = PatchJob(noise, grid, chosen, focus_features(mosaic(grid), noise))
    return job, side, native_measures(grid.patches[chosen], analysis, full.shape, (grid.rows, grid.cols),
                                      np.flatnonzero(chosen))


def native_inputs(feats: np.ndarray, extras) -> np.ndarray:
    """The native-scale meta-network's input, float32 (N, len(NATIVE_FEATURE_NAMES)): each image's feature vector
    (features.job_matrix, (N, F)) followed by its native measures (``extras``, N of them)."""
    return np.hstack([np.asarray(feats, np.float32), np.stack(list(extras))]).astype(np.float32)
