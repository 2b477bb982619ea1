"""What kind of blur, which way and how much: defocus or motion, the motion's direction, the blur's extent.

The features are classical and cheap (a few milliseconds on the analysis-scale grey image, no CNN): the gradient
structure tensor J_s (mean of ∇I ∇Iᵀ, 2 × 2) at the scales 1, 2, 4 and 8, with the image's noise taken out.
Blur removes fine gradients first, and motion blur removes them along its direction only, so the generalised
eigenvectors of a fine-scale tensor against a coarser one (the directions in which the fine gradients fell most
relative to the coarse ones) point along the motion, whatever the scene's own direction (a row of trees, a
staircase), which scales alike. Their eigenvalues say how much fell (the extent) and how unevenly (motion against
defocus). Every feature is unchanged when the picture is rotated, except one that says how close the motion is to
the pixel grid, where JPEG blocks add gradients of their own.

The "kind head" (``kind.onnx`` in a model's ``final_model/``, trained by ``train.py``: see ensemble.kind_training)
maps the features to P(motion), log(extent in analysis-scale pixels) and the correction (cos 2Δ, sin 2Δ) from the
reference angle (the finest pair of scales' estimate) to the motion's direction.

Angles are in degrees in [0, 180), counter-clockwise from the horizontal as seen on screen (image rows run down):
0 is a left-right streak, 90 up-down, 45 from bottom-left to top-right.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .focus import mean_square

KIND_MODEL = "kind.onnx"
KIND_INFO = "kind.json"
KINDS = ("defocus", "motion")
"""The values of a record's ``blur_kind``; Gaussian blur (a soft lens, haze, a smoothing filter) counts as defocus."""

SCALES = (1, 2, 4, 8)
PAIRS = ((1, 2), (2, 4), (4, 8), (1, 4), (2, 8))
"""(fine, coarse) scale pairs whose generalised eigen-problem is solved; the first gives the reference angle."""

SOBEL_NOISE_GAIN = 12.0
"""Mean squared response of a 3 × 3 Sobel derivative to white noise of variance 1 (1 + 4 + 1 + 1 + 4 + 1)."""

_EPS = 1e-6

KIND_FEATURE_NAMES = (
    *(f"log_energy_{s}x_over_8x" for s in SCALES[:-1]),
    "log_energy_8x",
    *(f"coherence_{s}x" for s in SCALES),
    *(f"log_{w}_{p}x_{q}x" for p, q in PAIRS for w in ("fall_min", "fall_max")),
    *(f"{f}_angle_{p}x_{q}x" for p, q in PAIRS[1:] for f in ("cos2", "sin2")),
    "cos4_reference_angle",
    "log_noise_sigma",
    "log_contrast",
)
"""The kind head's input, in order (recorded in kind.json, checked when a model is loaded)."""


def _raw_tensor(img: np.ndarray) -> tuple[float, float, float]:
    """(Jxx, Jxy, Jyy): the mean products of an image's 3 × 3 Sobel derivatives (uint8 or float32 in), in double
    precision. From uint8 the derivatives stay int16 (exact: |Sobel| <= 4 · 255), and Jxy comes from squared norms,
    (|gx + gy|² - |gx|² - |gy|²) / 2: OpenCV's norms are ten times faster than numpy's dot products here."""
    depth = cv2.CV_16S if img.dtype == np.uint8 else cv2.CV_32F
    gx = cv2.Sobel(img, depth, 1, 0, ksize=3)
    gy = cv2.Sobel(img, depth, 0, 1, ksize=3)
    xx, yy = mean_square(gx), mean_square(gy)
    both = mean_square(cv2.add(gx, gy))  # |gx + gy| <= 8 · 255: no int16 overflow
    return xx, (both - xx - yy) / 2.0, yy


def _tensors(pyramid: list[np.ndarray], noise: float) -> np.ndarray:
    """Structure tensors (len(SCALES), 2, 2), float64, with white noise taken out: noise of σ adds
    SOBEL_NOISE_GAIN · σ² to the energy in every direction, and 2 × 2 area averaging halves σ at each scale."""
    raw = np.array([_raw_tensor(p) for p in pyramid])  # the 1× level may be the uint8 image itself
    j = np.stack([raw[:, [0, 1]], raw[:, [1, 2]]], axis=1)
    w, v = np.linalg.eigh(j)
    floor = SOBEL_NOISE_GAIN * (noise / np.asarray(SCALES, np.float64)) ** 2
    # Never below a small share of the largest: noise estimates err, and a ratio of two zeros means nothing.
    w = np.maximum(w - floor[:, None], 1e-3 * np.maximum(w[:, 1:], 0.0) + _EPS)
    return (v * w[:, None, :]) @ np.swapaxes(v, 1, 2)


def _falls(tensors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each (fine, coarse) pair of PAIRS, the generalised eigen-problem fine · u = λ coarse · u: (λ ascending
    (len(PAIRS), 2), the unit direction (x, y) of the smallest λ (len(PAIRS), 2), where the fine gradients fell
    most against the coarse ones)."""
    index = {s: i for i, s in enumerate(SCALES)}
    fine = tensors[[index[p] for p, _ in PAIRS]]
    coarse = tensors[[index[q] for _, q in PAIRS]]
    w, v = np.linalg.eigh(coarse)
    half = (v / np.sqrt(np.maximum(w, _EPS))[:, None, :]) @ np.swapaxes(v, 1, 2)  # coarse^(-1/2)
    lam, u = np.linalg.eigh(half @ fine @ half)
    d = (half @ u[:, :, :1])[:, :, 0]
    return lam, d / np.maximum(np.hypot(d[:, 0], d[:, 1]), _EPS)[:, None]


def direction_angle(d: np.ndarray) -> float:
    """Screen angle in [0, 180) of a direction (dx, dy) in image coordinates (y down)."""
    return float(np.degrees(np.arctan2(-d[1], d[0])) % 180.0)


def screen_angle(kernel_angle: float) -> float:
    """The screen angle of the streak augment.motion_kernel(length, ``kernel_angle``) draws: that kernel measures
    its angle clockwise on screen (its y runs down), so 45 there is top-left to bottom-right, 135 here."""
    return float(-kernel_angle % 180.0)


def kind_features(gray: np.ndarray, noise: float) -> tuple[np.ndarray, float]:
    """(float32 (len(KIND_FEATURE_NAMES),) features, reference angle in degrees) of a uint8 (H, W) analysis-scale
    grey image whose noise is ``noise`` (focus.noise_sigma, grey levels). Images under 16 pixels on a side give
    zeros."""
    if min(gray.shape) < 16:
        return np.zeros(len(KIND_FEATURE_NAMES), np.float32), 0.0
    img = gray.astype(np.float32)
    pyramid = [img]
    for _ in SCALES[1:]:
        h, w = (v // 2 for v in pyramid[-1].shape)
        # An even crop takes OpenCV's fast exact-halving path (30 × faster than an odd size).
        pyramid.append(cv2.resize(pyramid[-1][: 2 * h, : 2 * w], (w, h), interpolation=cv2.INTER_AREA))
    tensors = _tensors([gray] + pyramid[1:], noise)
    energy = np.log(np.trace(tensors, axis1=1, axis2=2) + 1.0)
    w = np.linalg.eigvalsh(tensors)
    lam, d = _falls(tensors)
    angles = np.degrees(np.arctan2(-d[:, 1], d[:, 0])) % 180.0  # direction_angle, for all pairs at once
    ref = float(angles[0])
    rel = np.deg2rad(2.0 * (angles[1:] - ref))
    feats = [*(energy[:-1] - energy[-1]), energy[-1], *((w[:, 1] - w[:, 0]) / (w[:, 1] + w[:, 0] + _EPS)),
             *np.log(lam + _EPS).ravel(), *np.stack([np.cos(rel), np.sin(rel)], axis=1).ravel()]
    feats += [float(np.cos(np.deg2rad(4.0 * ref))), float(np.log1p(noise)), float(np.log1p(pyramid[-1].std()))]
    return np.asarray(feats, np.float32), ref


def kind_of_source(source: str) -> str | None:
    """The blur kind a dataset's class folder names (``defocused_blurred/``, ``motion_blurred/``), or None."""
    name = str(source).lower()
    if name.startswith("defocus"):
        return "defocus"
    if name.startswith("motion"):
        return "motion"
    return None


@dataclass(frozen=True)
class KindEstimate:
    """The kind head's answer for N images: ``p_motion`` float (N,) in [0, 1]; ``extent`` float (N,) in
    analysis-scale pixels (defocus radius or motion length); ``angle`` float (N,) screen degrees [0, 180)."""

    p_motion: np.ndarray
    extent: np.ndarray
    angle: np.ndarray

    def kind(self, i: int) -> tuple[str, float]:
        """(kind, its probability) of image ``i``."""
        p = float(self.p_motion[i])
        return ("motion", p) if p >= 0.5 else ("defocus", 1.0 - p)


class KindHead:
    """The kind head of one model folder: ``model`` maps float32 (N, K) features to float32 (N, 4) =
    [P(motion), log extent, cos 2Δ, sin 2Δ]; ``info`` is kind.json as a dict."""

    def __init__(self, model, info: dict):
        self.model, self.info = model, info

    @classmethod
    def load(cls, folder: str | os.PathLike, threads: int = 0) -> "KindHead | None":
        """The head in ``folder`` (kind.onnx and kind.json), or None when the folder has none. Raises ValueError
        for a head trained on other features than this version computes."""
        folder = Path(folder)
        if not (folder / KIND_MODEL).exists():
            return None
        info = json.loads((folder / KIND_INFO).read_text(encoding="utf-8"))
        if list(info.get("feature_names", [])) != list(KIND_FEATURE_NAMES):
            raise ValueError(f"{folder / KIND_MODEL} was trained on other kind features than this version "
                             "computes: retrain it with train.py --kind-only")
        from .runtime import OnnxModel

        return cls(OnnxModel(folder / KIND_MODEL, threads), info)

    def __call__(self, features: np.ndarray, ref_angles: np.ndarray) -> KindEstimate:
        return decode_output(np.asarray(self.model(features), np.float32).reshape(len(features), 4), ref_angles)


def decode_output(out: np.ndarray, ref_angles: np.ndarray) -> KindEstimate:
    """The head's raw (N, 4) output and the (N,) reference angles → a KindEstimate."""
    delta = 0.5 * np.degrees(np.arctan2(out[:, 3], out[:, 2]))
    return KindEstimate(p_motion=np.clip(out[:, 0], 0.0, 1.0), extent=np.exp(out[:, 1]),
                        angle=(np.asarray(ref_angles, np.float64) + delta) % 180.0)


__all__ = ["KINDS", "KIND_FEATURE_NAMES", "KIND_INFO", "KIND_MODEL", "KindEstimate", "KindHead", "decode_output",
           "direction_angle", "kind_features", "kind_of_source", "screen_angle"]
