"""What cameras and apps do to a photo that is not blur: sensor noise, exposure, denoising and JPEG recompression.

Training applies these to sharp and blurred images alike, so that the verdict learns to ignore them; the
robustness benchmark applies one at a time, at fixed levels. All functions take and return a uint8 (H, W) grey image
at the analysis scale; levels are in grey levels (0–255) of that image unless a docstring says otherwise.
"""
from __future__ import annotations

import cv2
import numpy as np

LUMA = np.array([0.299, 0.587, 0.114])
"""ITU-R BT.601 weights of R, G and B in the grey conversion (what Pillow's and libjpeg's "L" use)."""

COLOUR_NOISE_GAIN = float(np.sqrt((LUMA**2).sum()))
"""How much of independent, equal per-channel noise survives the grey conversion (0.668)."""

MAX_NOISE_SIGMA = 12.0
"""The strongest sensor noise training adds, in grey levels at mid-grey."""


def _srgb_to_linear(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0.0, 1.0)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * np.power(v, 1 / 2.4) - 0.055)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def expose(gray: np.ndarray, factor: float, gamma: float = 1.0) -> np.ndarray:
    """Scale the light by ``factor`` (0.25 = two stops under) in linear sRGB, then apply a tone ``gamma`` (1 = none).

    Highlights clip as they would in the camera; the result is quantised back to 8 bits, which is where a dark photo
    loses its fine grey levels.
    """
    lin = _srgb_to_linear(gray.astype(np.float32) / 255.0) * float(factor)
    out = _linear_to_srgb(lin)
    if gamma != 1.0:
        out = np.power(out, float(gamma))
    return _to_uint8(out * 255.0)


def sensor_noise(gray: np.ndarray, sigma: float, rng: np.random.Generator, shot_share: float = 0.0,
                 colour: bool = False, grain: float = 0.0) -> np.ndarray:
    """Add noise of standard deviation ``sigma`` grey levels (at mid-grey) to ``gray``.

    ``shot_share`` (0–1) of the variance is signal-dependent shot noise, proportional to the grey level, the rest is
    constant read noise. With ``colour``, R, G and B get independent noise of that size before the grey conversion
    (so ``COLOUR_NOISE_GAIN`` of it is left); otherwise the noise is the same in all three (grey noise).
    ``grain`` > 0 (pixels) correlates neighbouring pixels' noise, as demosaicing and in-camera scaling do.
    """
    x = gray.astype(np.float32)
    var = sigma**2 * ((1.0 - shot_share) + shot_share * x / 127.5)
    field = rng.standard_normal(gray.shape, dtype=np.float32)
    if grain > 0:
        field = cv2.GaussianBlur(field, (0, 0), grain, borderType=cv2.BORDER_REFLECT)
        field /= max(float(field.std()), 1e-6)
    gain = COLOUR_NOISE_GAIN if colour else 1.0
    return _to_uint8(x + field * np.sqrt(var) * gain)


def gaussian_noise(gray: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Plain additive white Gaussian noise of ``sigma`` grey levels (the benchmark's noise)."""
    return sensor_noise(gray, sigma, rng)


def recompress(gray: np.ndarray, quality: int) -> np.ndarray:
    """Encode as a grey JPEG at ``quality`` (1–100) and decode again, as a messaging app does."""
    ok, buf = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 grey image
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)


def denoise(gray: np.ndarray, strength: float) -> np.ndarray:
    """Edge-preserving smoothing like a phone's noise reduction (bilateral, ``strength`` grey levels): it removes
    grain from flat areas but keeps edges, so it is not blur."""
    return cv2.bilateralFilter(gray, 5, float(strength), 2.0)


def random_camera(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random, label-keeping chain of camera effects, in the camera's order: exposure, sensor noise, noise
    reduction, JPEG. Each step happens with some chance, so some images come out untouched.

    Ranges: light × 0.08–3 with tone gamma 0.8–1.25; noise up to MAX_NOISE_SIGMA with 0–100 % shot noise, grey or
    colour, with or without demosaicing grain; bilateral noise reduction 10–40; JPEG quality 20–95.
    """
    out = gray
    if rng.random() < 0.4:
        out = expose(out, float(np.exp(rng.uniform(np.log(0.08), np.log(3.0)))), float(rng.uniform(0.8, 1.25)))
    if rng.random() < 0.6:
        sigma = MAX_NOISE_SIGMA * float(rng.random()) ** 0.8
        grain = float(rng.uniform(0.4, 1.0)) if rng.random() < 0.4 else 0.0
        out = sensor_noise(out, sigma, rng, float(rng.random()), bool(rng.random() < 0.5), grain)
        if rng.random() < 0.25:
            out = denoise(out, float(rng.uniform(10, 40)))
    if rng.random() < 0.5:
        out = recompress(out, int(rng.integers(20, 96)))
    return out


PERTURBATIONS = {
    "noise": (gaussian_noise, (2, 5, 8, 12), "Gaussian sensor noise σ (grey levels)"),
    "jpeg": (lambda g, q, rng: recompress(g, q), (50, 30, 20), "JPEG quality"),
    "exposure": (lambda g, f, rng: expose(g, f), (0.25, 0.3, 0.5, 2.0), "exposure (× light)"),
}
"""The robustness benchmark's perturbations: name → (function(gray, level, rng), levels, axis label)."""
