"""The measures native scale adds to the feature vector: how sharp the patches are in their least sharp direction,
and how large the text is.

A page is blurry when OCR suffers, and that depends on the blur *relative to the letters*: Gaussian σ 3 px spoils
8-pt text at 150 dpi and leaves 12-pt text at 600 dpi legible (documents.OCR_BOUNDARY_K). So the native-scale
meta-network is told the size of the text: the pitch of its lines, in full-resolution pixels. And motion blur
softens only the edges across its direction: text keeps crisp strokes along it, which lifts the Laplacian and the
CNN, so the gradient energy is also measured in four directions and its weakest direction reported. (Each patch's
edge width in that direction, alone and over the line pitch, was tried too and left out: it did not change the
out-of-fold figures.) The four fixed directions miss a streak between them, and an average over the patches misses
a page soft in one region only; so the structure tensor (the mean of the gradient's outer product) gives each patch
its weakest direction at any angle (:func:`structure_tensor`), and the quantiles over the patches of that energy,
relative to the patch's own contrast, show a soft region among sharp ones (on seed-0 training pages, grouped by font
family, they lifted a boosted-trees probe's out-of-fold accuracy from 0.948 to 0.967). Two more kinds close most
of what was left near the OCR boundary and in regional blur: how much a further Gaussian blur of 1, 2 and 4 px takes
from each patch's gradient energy (little from a patch soft already: the blur's extent in pixels, whatever the
content; :func:`reblur_measures`), and how much softer the softest half, third or quarter of the frame is than the
rest (:func:`region_contrast`); with both, the probe's out-of-fold accuracy on the pages went from 0.956 to 0.964.

All of it runs on the ~24 chosen 96-px patches and the analysis-scale picture: about 3 ms, and 11 ms more for the
three further blurs of the reblur measures.
"""
from __future__ import annotations

import cv2
import numpy as np

from .focus import mean_square

NATIVE_EXTRA_NAMES = ("log_dir_energy_min", "dir_anisotropy", "log_dir2_energy_min", "dir2_anisotropy",
                      "log_line_pitch_full_px", "line_strength", "log_st_weakest", "st_anisotropy",
                      "st_rel_weakest_q10", "st_rel_weakest_q25", "st_rel_weakest_q50", "st_rel_weakest_q90",
                      "st_patch_anisotropy_q50", "st_patch_anisotropy_q90", "region_rel_gap", "region_rel_worst",
                      *(f"reblur_{s:g}px_q{q}" for s in (1, 2, 4) for q in (25, 50, 75)),
                      "log_line_zero_full_px")
"""What :func:`native_measures` returns, in order; the native-scale meta-network reads features.FEATURE_NAMES and
then these."""

_STEPS = ((0, 1), (1, 0), (1, 1), (1, -1))  # along rows, down columns, the two diagonals


def directional_energy(patches: np.ndarray) -> np.ndarray:
    """float64 (N, 4, 2): each uint8 (N, P, P) patch's mean squared first and second differences in the four
    directions (within the patch: no seam between two patches counts), per unit step."""
    x = np.asarray(patches)
    out = np.zeros((len(x), 4, 2))
    if x.size == 0 or x.shape[1] < 3 or x.shape[2] < 3:
        return out
    # In int16 (|c - 2b + a| <= 4 · 255), squared and summed by OpenCV in double precision: exact, and four times
    # faster than the same in float32 numpy.
    x = x.astype(np.int16) if x.dtype == np.uint8 else x.astype(np.float32)
    for k, (dy, dx) in enumerate(_STEPS):
        unit = float(dy * dy + dx * dx)
        h, w = x.shape[1] - 2 * dy, x.shape[2] - 2 * abs(dx)
        x0 = 2 * abs(dx) if dx < 0 else 0

        def at(i):  # the patch shifted i steps along the direction, cropped to the common window
            return x[:, i * dy:i * dy + h, x0 + i * dx:x0 + i * dx + w]

        a, b, c = at(0), at(1), at(2)
        first = b - a
        second = (c - b) - first
        out[:, k, 0] = [mean_square(d) / unit for d in first]
        out[:, k, 1] = [mean_square(d) / unit ** 2 for d in second]
    return out


def structure_tensor(patches: np.ndarray) -> np.ndarray:
    """float64 (N, 3): each uint8 or float32 (N, P, P) patch's mean gx², gy², gx·gy (Sobel 3 × 3 over 8, grey levels
    per pixel; the outer two pixels left out so that no border counts)."""
    x = np.asarray(patches)
    n, h, w = x.shape
    if n == 0 or min(h, w) < 5:
        return np.zeros((n, 3))
    # All patches stacked into one tall picture, one Sobel call each way: the pixels kept are two or more from a
    # patch's edge, so their 3 × 3 neighbourhoods never cross into the next patch.
    stack = x.reshape(n * h, w).astype(np.float32)
    gx, gy = (cv2.Sobel(stack, cv2.CV_32F, dx, 1 - dx, ksize=3, scale=0.125).reshape(n, h, w)[:, 2:-2, 2:-2]
              for dx in (1, 0))
    sums = [np.einsum("nij,nij->n", a, b, dtype=np.float64) for a, b in ((gx, gx), (gy, gy), (gx, gy))]
    return np.stack(sums, 1) / ((h - 4) * (w - 4))


def tensor_eigenvalues(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(weakest, strongest) directional energies of (..., 3) structure tensors (gx², gy², gx·gy)."""
    t = np.asarray(t, np.float64)
    half = (t[..., 0] + t[..., 1]) / 2
    disc = np.sqrt(np.maximum(half * half - (t[..., 0] * t[..., 1] - t[..., 2] ** 2), 0.0))
    return np.maximum(half - disc, 0.0), half + disc


STRIP = 24
"""Width (analysis pixels) of the strips whose row profiles are autocorrelated: a 2 degree skew moves a line by
under a pixel across one, where it smears the profile of the whole width."""


def _strip_profiles(g: np.ndarray) -> np.ndarray:
    """float32 (S, H): the row means of the picture's STRIP-wide vertical strips."""
    h, w = g.shape
    n = max(1, w // STRIP)
    return g[:, : n * STRIP].reshape(h, n, -1).mean(axis=2).T


def line_pitch(gray: np.ndarray) -> tuple[float, float, float]:
    """(pitch, strength, zero) of the text lines of a grey picture: the lag (pixels of ``gray``) of the first peak,
    past the first zero, at least 0.7 of the highest there, of its strips' summed, high-passed row autocorrelation;
    down the page or across it, whichever repeats more strongly; and that first zero's lag, interpolated; (0, 0, 0)
    when nothing repeats.

    The zero tells the font size better than the pitch: it follows the height of a line's ink (b(1 - b/p) for ink
    bands of height b under half the pitch p; in text the dense x-height band counts most), where the pitch also
    carries the leading (1.15-1.45 x the font size in documents.py). On rendered training pages, log(zero /
    font size) spread a quarter as much as log(pitch / font size) where the lines repeat clearly (strength >= 0.2;
    interquartile range 0.09-0.13 against 0.33-0.51), and the OCR boundary is a multiple of the font size."""
    g = np.asarray(gray, np.float32)
    best = (0.0, 0.0, 0.0)
    for pic in (g, g.T):  # upright text, a page on its side
        prof = _strip_profiles(pic)
        n = prof.shape[1]
        if n < 24 or pic.shape[1] < STRIP:
            continue
        k = max(3, min(n // 8, 41)) | 1
        hp = prof - cv2.blur(prof, (k, 1), borderType=cv2.BORDER_REFLECT)
        spec = np.fft.rfft(hp, 2 * n, axis=1)
        ac = np.fft.irfft((spec * spec.conj()).sum(axis=0), 2 * n)[: n // 4 + 1]
        if not ac[0] > 1e-6:
            continue
        r = ac / ac[0]
        neg = np.flatnonzero(r < 0)
        if not len(neg):
            continue
        tail = r[neg[0]:]
        # the first peak nearly as high as the highest: lines repeat, so 2 and 3 pitches peak almost as high
        peaks = np.flatnonzero((tail[1:-1] >= tail[:-2]) & (tail[1:-1] >= tail[2:])) + 1
        if not len(peaks):
            continue
        top = tail[peaks].max()
        lag = int(neg[0] + peaks[np.argmax(tail[peaks] >= 0.7 * top)])
        if r[lag] > best[1]:
            z = int(neg[0])  # r[z - 1] >= 0 > r[z]: r[0] is 1
            best = (float(lag), float(r[lag]), float(z - 1 + r[z - 1] / (r[z - 1] - r[z])))
    return best


def native_measures(patches: np.ndarray, analysis: np.ndarray, full_shape: tuple[int, int],
                    grid_shape: tuple[int, int], cells: np.ndarray) -> np.ndarray:
    """float32 (len(NATIVE_EXTRA_NAMES),) of a native-scale job: its chosen uint8 (N, P, P) full-resolution
    ``patches``, the analysis-scale grey picture, the full image's (H, W), and where the patches lie: the cell
    grid's (rows, cols) and each patch's cell, int (N,) in row-major order."""
    per_patch = directional_energy(patches)
    e = per_patch.mean(axis=0) if len(per_patch) else np.zeros((4, 2))
    lo, hi = e.min(axis=0), e.max(axis=0)
    pitch, strength, zero = line_pitch(analysis)
    to_full = min(full_shape) / max(1, min(np.asarray(analysis).shape[:2]))
    tensor = structure_tensor(patches)
    measures, rel = tensor_measures(patches, tensor)
    return np.array([np.log1p(lo[0]), np.log1p(hi[0]) - np.log1p(lo[0]), np.log1p(lo[1]),
                     np.log1p(hi[1]) - np.log1p(lo[1]), np.log1p(pitch * to_full), strength,
                     *measures, *region_contrast(rel, grid_shape, np.asarray(cells)),
                     *reblur_measures(patches, tensor), np.log1p(zero * to_full)], np.float32)


def tensor_measures(patches: np.ndarray, tensor: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The structure-tensor part of NATIVE_EXTRA_NAMES for uint8 (N, P, P) patches, float64 (8,): the weakest
    energy of their mean tensor and its anisotropy (log), the 10/25/50/90 % quantiles over the patches of
    log(weakest energy / grey-level variance), and the 50/90 % quantiles of each patch's anisotropy (log); and that
    relative weakest energy of each patch, float64 (N,). ``tensor``: their structure_tensor, when it is at hand."""
    if len(patches) == 0:
        return np.zeros(8), np.zeros(0)
    t = structure_tensor(patches) if tensor is None else tensor
    lo, hi = tensor_eigenvalues(t.mean(axis=0))
    lo_p, hi_p = tensor_eigenvalues(t)
    var = np.asarray(patches, np.float32).reshape(len(patches), -1).var(axis=1) + 1.0
    rel = np.log(lo_p + 1e-3) - np.log(var)
    aniso = np.log(hi_p + 1e-3) - np.log(lo_p + 1e-3)
    return np.array([np.log1p(lo), np.log1p(hi) - np.log1p(lo), *np.percentile(rel, [10, 25, 50, 90]),
                     *np.percentile(aniso, [50, 90])]), rel


def frame_regions(rows: int, cols: int) -> np.ndarray:
    """bool (16, rows · cols): the parts of a cell grid a page is often soft in, by the cells' centres: the halves
    and thirds across and down, and the four quarters."""
    r = (np.repeat(np.arange(rows), cols) + 0.5) / rows
    c = (np.tile(np.arange(cols), rows) + 0.5) / cols
    spans = ((0, 1 / 2), (1 / 2, 1), (0, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 1))
    parts = [(x >= a) & (x < b) for a, b in spans for x in (r, c)]
    parts += [(r >= a) & (r < a + 0.5) & (c >= b) & (c < b + 0.5) for a in (0, 0.5) for b in (0, 0.5)]
    return np.array(parts)


def region_contrast(rel: np.ndarray, grid_shape: tuple[int, int], cells: np.ndarray) -> np.ndarray:
    """float64 (2,): how much softer the softest part of the frame (frame_regions) is than the rest, in the mean
    relative weakest energy ``rel`` (N,) of the patches in ``cells`` (N,), and that part's mean (0 and the overall
    mean when no part has two patches inside and two outside). A page soft in its lower half only shows it here."""
    if len(rel) == 0:
        return np.zeros(2)
    inside = frame_regions(*grid_shape)[:, cells]  # (16, N)
    gap, worst = 0.0, float(rel.mean())
    for part in inside:
        if part.sum() >= 2 and (~part).sum() >= 2:
            g = float(rel[~part].mean() - rel[part].mean())
            if g > gap:
                gap, worst = g, float(rel[part].mean())
    return np.array([gap, worst])


REBLUR_SIGMAS = (1.0, 2.0, 4.0)
"""Gaussian σ (full-resolution px) the patches are blurred further by in :func:`reblur_measures`."""


def gaussian_blur_each(patches: np.ndarray, sigma: float) -> np.ndarray:
    """float32 (N, P, P): each patch blurred on its own by a Gaussian of ``sigma`` px (reflected at its own edges,
    kernel ±3σ), in one call: every patch padded by the kernel's radius and stacked. In float32, eight times
    faster than OpenCV's 8-bit path at σ 4, and nothing is rounded."""
    x = np.asarray(patches)
    n, h, w = x.shape
    r = max(1, int(np.ceil(3 * sigma)))
    padded = np.stack([cv2.copyMakeBorder(p, r, r, r, r, cv2.BORDER_REFLECT_101) for p in x]).astype(np.float32)
    out = cv2.GaussianBlur(padded.reshape(n * (h + 2 * r), w + 2 * r), (2 * r + 1, 2 * r + 1), sigma)
    return out.reshape(n, h + 2 * r, w + 2 * r)[:, r:r + h, r:r + w]


def reblur_measures(patches: np.ndarray, tensor: np.ndarray | None = None) -> np.ndarray:
    """float64 (9,): for each σ of REBLUR_SIGMAS, the 25/50/75 % quantiles over uint8 (N, P, P) patches of
    log(gradient energy after a further Gaussian blur of σ px (gaussian_blur_each) / before). A further blur takes
    little from a patch that is soft already, so this measures the blur's extent in full-resolution pixels whatever
    the content.
    ``tensor``: the patches' structure_tensor, when it is at hand."""
    if len(patches) == 0:
        return np.zeros(3 * len(REBLUR_SIGMAS))
    before = structure_tensor(patches) if tensor is None else tensor
    out = []
    for sigma in REBLUR_SIGMAS:
        after = structure_tensor(gaussian_blur_each(patches, sigma))
        ratio = np.log(after[:, 0] + after[:, 1] + 1e-3) - np.log(before[:, 0] + before[:, 1] + 1e-3)
        out += list(np.percentile(ratio, [25, 50, 75]))
    return np.array(out)


__all__ = ["NATIVE_EXTRA_NAMES", "REBLUR_SIGMAS", "directional_energy", "frame_regions", "gaussian_blur_each",
           "line_pitch", "native_measures", "reblur_measures", "region_contrast", "structure_tensor",
           "tensor_eigenvalues", "tensor_measures"]
