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
family, they lifted a boosted-trees probe's out-of-fold accuracy from 0.948 to 0.967).

All of it is cheap: the directions and the tensors on the ~24 chosen 96-px patches, the pitch on the analysis-scale picture.
"""
from __future__ import annotations

import cv2
import numpy as np

from .focus import mean_square

NATIVE_EXTRA_NAMES = ("log_dir_energy_min", "dir_anisotropy", "log_dir2_energy_min", "dir2_anisotropy",
                      "log_line_pitch_full_px", "line_strength", "log_st_weakest", "st_anisotropy",
                      "st_rel_weakest_q10", "st_rel_weakest_q25", "st_rel_weakest_q50", "st_rel_weakest_q90",
                      "st_patch_anisotropy_q50", "st_patch_anisotropy_q90")
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
    """float64 (N, 3): each uint8 (N, P, P) patch's mean gx², gy², gx·gy (Sobel 3 × 3 over 8, grey levels per pixel;
    the outer two pixels left out so that no border counts)."""
    x = np.asarray(patches)
    out = np.zeros((len(x), 3))
    for k, patch in enumerate(x):
        if min(patch.shape) < 5:
            continue
        p = patch.astype(np.float32)
        gx = cv2.Sobel(p, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)[2:-2, 2:-2]
        gy = cv2.Sobel(p, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)[2:-2, 2:-2]
        out[k] = mean_square(gx), mean_square(gy), float(np.mean(gx * gy, dtype=np.float64))
    return out


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


def line_pitch(gray: np.ndarray) -> tuple[float, float]:
    """(pitch, strength) of the text lines of a grey picture: the lag (pixels of ``gray``) of the first peak, past
    the first zero, at least 0.7 of the highest there, of its strips' summed, high-passed row autocorrelation; down
    the page or across it, whichever repeats more strongly; (0, 0) when nothing repeats."""
    g = np.asarray(gray, np.float32)
    best = (0.0, 0.0)
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
            best = (float(lag), float(r[lag]))
    return best


def native_measures(patches: np.ndarray, analysis: np.ndarray, full_shape: tuple[int, int]) -> np.ndarray:
    """float32 (len(NATIVE_EXTRA_NAMES),) of a native-scale job: its chosen uint8 (N, P, P) full-resolution
    ``patches``, the analysis-scale grey picture and the full image's (H, W)."""
    per_patch = directional_energy(patches)
    e = per_patch.mean(axis=0) if len(per_patch) else np.zeros((4, 2))
    lo, hi = e.min(axis=0), e.max(axis=0)
    pitch, strength = line_pitch(analysis)
    pitch_full = pitch * min(full_shape) / max(1, min(np.asarray(analysis).shape[:2]))
    return np.array([np.log1p(lo[0]), np.log1p(hi[0]) - np.log1p(lo[0]), np.log1p(lo[1]),
                     np.log1p(hi[1]) - np.log1p(lo[1]), np.log1p(pitch_full), strength,
                     *tensor_measures(patches)], np.float32)


def tensor_measures(patches: np.ndarray) -> np.ndarray:
    """float64 (8,): the structure-tensor half of NATIVE_EXTRA_NAMES for uint8 (N, P, P) patches: the weakest
    energy of their mean tensor and its anisotropy (log), the 10/25/50/90 % quantiles over the patches of
    log(weakest energy / grey-level variance), and the 50/90 % quantiles of each patch's anisotropy (log)."""
    if len(patches) == 0:
        return np.zeros(8)
    t = structure_tensor(patches)
    lo, hi = tensor_eigenvalues(t.mean(axis=0))
    lo_p, hi_p = tensor_eigenvalues(t)
    var = np.asarray(patches, np.float32).reshape(len(patches), -1).var(axis=1) + 1.0
    rel = np.log(lo_p + 1e-3) - np.log(var)
    aniso = np.log(hi_p + 1e-3) - np.log(lo_p + 1e-3)
    return np.array([np.log1p(lo), np.log1p(hi) - np.log1p(lo), *np.percentile(rel, [10, 25, 50, 90]),
                     *np.percentile(aniso, [50, 90])])


__all__ = ["NATIVE_EXTRA_NAMES", "directional_energy", "line_pitch", "native_measures", "structure_tensor",
           "tensor_eigenvalues", "tensor_measures"]
