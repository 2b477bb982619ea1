"""The image's noise at its original resolution, from the estimate at the analysis scale.

The detector never decodes a photo at full size: JPEGs come out of libjpeg at 1/2, 1/4 or 1/8 scale ("draft") and
everything is then area-averaged to the analysis scale (imageio). Both steps average the noise away, so
focus.noise_sigma of the analysis-scale image is far below the noise of the file. For white noise the loss is
known exactly: a draft at 1/d divides σ by d (libjpeg's reduced IDCT keeps the noise white), and the area resize
of ratio r has weights whose effect on Immerkær's operator (separable: [1, -2, 1] ⊗ [1, -2, 1]) is computed here
from OpenCV's own INTER_AREA weights. Rounding to 8 bits after the draft and after the resize adds noise that the
file never had; it is taken out in quadrature. No learned parts, and no extra decode: it costs microseconds.

Limits: noise that is not white at full size (demosaicing, in-camera noise reduction, an upscaled image) is
overestimated; below about 0.3 grey levels at the analysis scale the estimate is dominated by the photo's own fine
detail (see docs/blur-kind.md for the measured accuracy).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from .focus import noise_sigma_of_bands

ROUNDING_VARIANCE = 1.0 / 12.0
"""Variance (grey levels²) of the error of rounding to whole grey levels: uniform over one level."""


@lru_cache(maxsize=256)
def area_noise_gain(n: int, m: int) -> float:
    """How much of white noise's response to Immerkær's operator survives an INTER_AREA resize of one axis from
    ``n`` to ``m`` pixels (m <= n), as a factor on σ: 1 for no resize, 1/sqrt(r) for a whole ratio r = n / m (so
    1/r over both axes), and less than that for a fractional one (the output pixels then share inputs, which smooths
    the noise).

    The mean over output positions of sqrt(Σ_j (D W)_ij²) / sqrt(6), where W holds OpenCV's area weights (the
    overlap of output pixel i's span [i r, (i + 1) r) with input pixel j, over r) and D is [1, -2, 1].
    """
    if m >= n or m < 3:
        return 1.0
    r = n / m
    i = np.arange(1, m - 1)[:, None]                 # outputs with both neighbours
    span = int(np.ceil(3 * r)) + 2                   # inputs under outputs i - 1, i, i + 1
    j = np.floor((i - 1) * r).astype(np.int64) + np.arange(span)[None, :]

    def weight(o):
        return np.clip(np.minimum(j + 1, (o + 1) * r) - np.maximum(j, o * r), 0.0, None) / r

    d = weight(i - 1) - 2 * weight(i) + weight(i + 1)
    return float(np.mean(np.sqrt((d * d).sum(axis=1))) / np.sqrt(6.0))


def original_noise_sigma(sigma: float, original: tuple[int, int], analysis: tuple[int, int], draft: int = 1) -> float:
    """σ of white noise in grey levels (0–255) at the original resolution, from ``sigma`` = focus.noise_sigma of the
    analysis-scale image.

    ``original`` = (width, height) of the file, ``analysis`` = (width, height) of the analysis-scale array, ``draft``
    the JPEG draft scale d it was decoded at (1: decoded at full size, then area-resized).
    """
    (w, h), (aw, ah) = original, analysis
    dw, dh = -(-w // draft), -(-h // draft)          # Pillow's draft size rounds up
    area = area_noise_gain(dw, aw) * area_noise_gain(dh, ah)
    resized = (aw, ah) != (dw, dh)
    rounding = ROUNDING_VARIANCE * ((area**2 if draft > 1 else 0.0) + (1.0 if resized else 0.0))
    return float(np.sqrt(max(sigma**2 - rounding, 0.0)) * draft / area)


def image_noise_sigma(sigma: float, original: tuple[int, int], analysis: tuple[int, int], draft: int = 1,
                      native: Sequence[np.ndarray] = ()) -> float:
    """The record's ``noise_sigma``: σ of the noise in grey levels at the original resolution.

    ``sigma``, ``original``, ``analysis`` and ``draft`` as for :func:`original_noise_sigma`; ``native`` the
    full-resolution grey strips the decode kept (imageio.Decoded.native). Texture only ever raises a noise estimate,
    and the two estimates are raised by different texture: at the analysis scale a photo's detail is packed tight
    and can hide low noise; in a strip at full size the noise is at full strength beside detail that is spread
    over more pixels, but the strip sees only part of the frame. So the lower of the two is given.
    """
    converted = original_noise_sigma(sigma, original, analysis, draft)
    at_full = noise_sigma_of_bands(native) if len(native) else None
    return converted if at_full is None else min(converted, at_full)


__all__ = ["ROUNDING_VARIANCE", "area_noise_gain", "image_noise_sigma", "original_noise_sigma"]
