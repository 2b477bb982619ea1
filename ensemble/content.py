"""What an image shows: 'photo' or 'document' (text pages, forms, tables, line drawings), from cheap measures of
its analysis-scale grey picture.

``--scale auto`` judges a document at its native resolution and a photo as on a screen (ensemble.detector), so every
image is classified first; this must cost next to nothing (0.5-1 ms on a 640-pixel picture, against a screen scan's
30 ms) and must never call a photo a document. A scanned or rendered page is paper: one bright, narrow grey level
covering most of the picture, the same all over it, with nothing brighter; ink sits on it in thin dark strokes, in
text lines that repeat down the page, and whatever is not paper is next to an edge. A photograph has a broad
histogram, light that changes across the frame, highlights above its brightest large surface, dark blobs and smooth
shading, and no periodic line structure. The measures (:data:`CONTENT_FEATURE_NAMES`), taken on the picture halved
to about 320 pixels (:data:`WORK_SIDE`):

* the grey histogram: the paper level (its main mode), the share of pixels in the mode's peak and the peak's width,
  the share above it (pages have none) and far below it (ink), the ink-to-paper contrast, the share of mid-tones
  between ink and paper, Otsu's separability (between-class over total variance) and the entropy;
* the edges (the grey range of each 3 x 3 neighbourhood): the share of edge pixels, and how many of them have
  paper-level grey within two pixels (ink on paper, not texture on texture);
* the ink's shape, here and at half this scale (a zoomed-in or blurred page's strokes are wider): the share of ink
  pixels a 3 x 3 erosion removes (strokes) or that survive two (blobs), and the share of the pixels below the paper
  level that lie two pixels or more from every edge (smooth shading: a photograph's, never a page's);
* the text lines: the row profiles of 24-pixel-wide strips (a 2 degree skew moves a line by under a pixel across
  one), high-passed, and the strongest peak of their summed autocorrelation past its first zero; the same along the
  rows, for a page on its side;
* 8 x 8-pixel cell means: the share of blank (paper) and inked cells, and the paper level tile by tile (the
  brightest cell of each of about 6 x 6 tiles): the share of tiles at the global paper level and their spread
  (uneven light says photograph).

Blur spreads ink into mid-tones but leaves the paper, its level and the line rhythm: a blurred page stays a page.
What the measures cannot tell apart is a photograph blown out to white with a few dark marks on it from a sparse
line drawing.

The classifier is a class-balanced logistic regression on the standardised measures (:func:`fit_content`, numpy
only), stored as plain JSON in ``final_model/content.json``; its threshold is set on out-of-fold scores (folds of
whole scenes and font families) so that no validation photo is called a document, with a margin of at least
:data:`MIN_MARGIN` logit above the highest one. Classifying needs numpy and OpenCV only; :func:`sample_page`, which
renders pages to train on (ensemble.documents), needs Pillow and the fonts. The pipeline stage is
:func:`train_content_stage` (docs/content.md).
"""
from __future__ import annotations

import json
import math
import threading
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from .fsutil import atomic_write

CONTENT_FILE = "content.json"
CONTENTS = ("photo", "document")
FORMAT = "blur-ensemble/content"
VERSION = 1

WORK_SIDE = 240
"""The picture is halved (2 x 2 means) while its shorter side stays at least this: a 640-pixel analysis picture is
measured at 320, a 300-pixel one as it is."""
STRIP = 24
"""Width (working pixels) of the strips whose row profiles are autocorrelated."""
CELL = 8
"""Side (working pixels) of the cells whose means are compared with the paper level."""
TILES = 6
"""About this many tiles per side for the paper level's evenness."""

CONTENT_FEATURE_NAMES: tuple[str, ...] = (
    "paper_level",          # main histogram mode / 255
    "paper_share",          # share of pixels within the mode's peak
    "log_paper_width",      # log2 of the peak's half width at half maximum (grey levels)
    "above_paper",          # share clearly brighter than the paper
    "ink_share",            # share clearly darker than the paper
    "contrast",             # (paper - ink level) / 255
    "midtone_share",        # share between ink and paper
    "otsu_separability",    # Otsu's between-class variance / total variance
    "entropy",              # histogram entropy / 8 bits
    "edge_density",         # share of edge pixels
    "edges_on_paper",       # share of edge pixels within 2 pixels of paper-level grey
    "line_period",          # strongest line repeat (rows or columns, whichever is stronger)
    "cross_period",         # the same in the other direction
    "blank_cells",          # share of 8 x 8 cells at the paper level
    "inked_cells",          # share of cells clearly darker than paper
    "paper_tiles",          # share of tiles whose brightest cell is at the paper level
    "tile_spread",          # spread (10-90 %) of the tiles' brightest cells over the contrast
    "thin_ink",             # share of ink pixels a 3 x 3 erosion removes (strokes, not blobs)
    "thick_ink",            # share of ink pixels that survive a 5 x 5 erosion (blobs)
    "smooth_nonpaper",      # share of the pixels below the paper level that are 2+ pixels from any edge
    "thin_ink_coarse",      # thin_ink on the picture halved again (a zoomed-in or blurred page's strokes)
    "smooth_nonpaper_coarse",  # smooth_nonpaper on the picture halved again
)
"""What :func:`content_features` returns, in order (recorded in content.json and checked on load)."""

MIN_MARGIN = 1.0
"""The threshold is at least this far (logit) above the highest out-of-fold photo score."""


# ------------------------------------------------------------------------------------------------ features


class _Scratch(threading.local):
    """Per-thread uint8 work arrays, kept between calls: a fresh 150 kB array per step costs more in page faults
    than the step itself."""

    def __init__(self):
        self.arrays: dict[tuple, np.ndarray] = {}

    def __call__(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        key = (name, shape)
        arr = self.arrays.get(key)
        if arr is None:
            if len(self.arrays) > 96:  # many picture sizes: start again
                self.arrays.clear()
            arr = self.arrays[key] = np.empty(shape, np.uint8)
        return arr


_scratch = _Scratch()
_K3 = np.ones((3, 3), np.uint8)


def _working(gray: np.ndarray) -> np.ndarray:
    g = np.asarray(gray)
    if g.ndim == 3:
        g = cv2.cvtColor(np.ascontiguousarray(g[..., :3]).astype(np.uint8), cv2.COLOR_RGB2GRAY)
    if g.dtype != np.uint8:
        g = np.clip(np.nan_to_num(g.astype(np.float32)), 0, 255).astype(np.uint8)
    level = 0
    while min(g.shape) >= 2 * WORK_SIDE:
        h, w = g.shape[0] // 2 * 2, g.shape[1] // 2 * 2
        level += 1
        g = cv2.resize(g[:h, :w], (w // 2, h // 2), dst=_scratch(f"half{level % 2}", (h // 2, w // 2)),
                       interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(g)


def _period(prof: np.ndarray) -> float:
    """``prof`` float32 (S, L): S profiles of length L. The highest peak past the first zero of their summed,
    normalised autocorrelation (lags up to L / 3), after a high-pass that removes slow light changes."""
    s, n = prof.shape
    if n < 12:
        return 0.0
    k = max(3, min(n // 4, 41)) | 1
    hp = prof - cv2.blur(prof, (k, 1), borderType=cv2.BORDER_REFLECT)
    lags = n // 3
    size = cv2.getOptimalDFTSize(n + lags + 1)
    buf = np.zeros((s, size), np.float32)
    buf[:, :n] = hp
    spec = cv2.dft(buf, flags=cv2.DFT_ROWS)
    power = cv2.mulSpectrums(spec, spec, cv2.DFT_ROWS, conjB=True)
    ac = cv2.dft(cv2.reduce(power, 0, cv2.REDUCE_SUM), flags=cv2.DFT_INVERSE | cv2.DFT_REAL_OUTPUT)[0, : lags + 1]
    if not ac[0] > 1e-3 * s * n:
        return 0.0
    r = ac / ac[0]
    neg = np.flatnonzero(r < 0)
    return float(max(0.0, r[neg[0]:].max())) if len(neg) else 0.0


def _line_periods(g: np.ndarray) -> tuple[float, float]:
    """(rows, columns): the line repeat strength of the uint8 working picture down its rows and along them."""
    h, w = g.shape
    if w >= STRIP:  # row profiles of vertical strips, (S, h): sums over the transposed picture's row blocks
        n = w // STRIP
        down = cv2.transpose(g)[: n * STRIP].reshape(n, STRIP, h).sum(axis=1, dtype=np.uint16)
    else:
        down = g.sum(axis=1, dtype=np.uint16)[None, :]
    if h >= STRIP:  # column profiles of horizontal strips, (S, w)
        n = h // STRIP
        along = g[: n * STRIP].reshape(n, STRIP, w).sum(axis=1, dtype=np.uint16)
    else:
        along = g.sum(axis=0, dtype=np.uint16)[None, :]
    return _period(down.astype(np.float32)), _period(along.astype(np.float32))


def _ink_shape(g: np.ndarray, strong: np.ndarray, mode: int, band: float, contrast: float, thick: bool,
               tag: str = "") -> tuple[float, float, float]:
    """(thin, thick, smooth): the share of ink pixels (darker than half-way from paper to ink) a 3 x 3 erosion
    removes, the share that survive a 5 x 5 one (``thick``, else 0), and the share of pixels below the paper level
    that are 2 pixels or more from every edge pixel of ``strong``. On a page what is not paper is ink strokes and
    their blurred rims, all of it next to an edge; a photo has dark blobs and smooth shading."""
    shape = g.shape
    a, b = _scratch("a" + tag, shape), _scratch("b" + tag, shape)
    thin = thick_share = smooth = 0.0
    if contrast > 0:
        ink = cv2.compare(g, mode - 0.5 * contrast, cv2.CMP_LT, dst=a)
        n_ink = cv2.countNonZero(ink)
        if n_ink:
            eroded = cv2.erode(ink, _K3, dst=b)
            thin = 1.0 - cv2.countNonZero(eroded) / n_ink
            if thick:
                thick_share = cv2.countNonZero(cv2.erode(eroded, _K3, dst=a)) / n_ink
    below = cv2.compare(g, mode - band, cv2.CMP_LT, dst=a)
    n_below = cv2.countNonZero(below)
    if n_below:
        if cv2.countNonZero(strong):
            near = cv2.dilate(strong, _K3, dst=b)
            smooth = 1.0 - cv2.countNonZero(cv2.bitwise_and(below, near, dst=b)) / n_below
        else:
            smooth = 1.0
    return thin, thick_share, smooth


def content_features(gray: np.ndarray) -> np.ndarray:
    """The measures of :data:`CONTENT_FEATURE_NAMES` for a uint8 (H, W) grey picture at the analysis scale (any size
    works; a picture under 4 pixels on a side, or of one grey level, gives zeros where nothing can be measured),
    float32 (K,)."""
    g = _working(gray)
    h, w = g.shape
    out = np.zeros(len(CONTENT_FEATURE_NAMES), np.float32)
    if h < 4 or w < 4:
        return out
    n_px = float(h * w)
    # every other row and column: a page's few grey levels make a full histogram slow (each pixel waits on the
    # last), and a quarter of the pixels give the same shares
    sub = g[::2, ::2] if h >= 16 and w >= 16 else g
    hist = cv2.calcHist([sub], [0], None, [256], [0, 256]).ravel().astype(np.float64)
    p = hist / hist.sum()
    c = np.cumsum(p)
    sm = np.convolve(p, np.full(5, 0.2), mode="same")
    mode = int(np.argmax(sm))
    below = np.flatnonzero(sm <= sm[mode] / 2)  # the peak's half-maximum bounds
    left, right = below[below < mode], below[below > mode]
    lo = int(left[-1]) + 1 if len(left) else 0
    hi = int(right[0]) - 1 if len(right) else 255
    width = max(1.0, (hi - lo + 1) / 2.0)
    band = 2.5 * width + 2.0

    def share(a: float, b: float) -> float:  # P(a <= v <= b)
        a, b = int(max(0, math.floor(a))), int(min(255, math.ceil(b)))
        return float(c[b] - (c[a - 1] if a > 0 else 0.0)) if b >= a else 0.0

    levels = np.arange(256, dtype=np.float64)
    paper_share = share(mode - band, mode + band)
    above = share(mode + band + 6, 255)
    dark_edge = mode - band - 8
    ink = share(0, dark_edge)
    if ink > 0.002:
        k = int(math.floor(dark_edge)) + 1
        ink_level = float((p[:k] * levels[:k]).sum() / max(c[k - 1], 1e-12))
        contrast = max(0.0, mode - ink_level)
        midtone = share(ink_level + 0.2 * contrast, mode - 0.5 * contrast)
    else:
        contrast, midtone = 0.0, 0.0
    mu = float((p * levels).sum())
    var = float((p * (levels - mu) ** 2).sum())
    m0 = np.cumsum(p * levels)
    with np.errstate(divide="ignore", invalid="ignore"):
        sb = np.nan_to_num((mu * c - m0) ** 2 / (c * (1 - c)), nan=0.0, posinf=0.0)
    otsu = float(sb.max() / var) if var > 1e-9 else 0.0
    nz = p[p > 0]
    entropy = float(-(nz * np.log2(nz)).sum() / 8.0)

    # edges: the grey range of each 3 x 3 neighbourhood (a step of A grey levels gives A on both its sides)
    shape = g.shape
    dil = cv2.dilate(g, _K3, dst=_scratch("dil", shape))
    grad = cv2.subtract(dil, cv2.erode(g, _K3, dst=_scratch("c", shape)), dst=_scratch("c", shape))
    thr = max(12.0, 0.3 * contrast)
    strong = cv2.compare(grad, thr, cv2.CMP_GT, dst=_scratch("strong", shape))
    n_strong = cv2.countNonZero(strong)
    edge_density = n_strong / n_px
    on_paper = 0.0
    if n_strong:  # the brightest grey within 2 pixels of an edge pixel is the paper's
        near = cv2.inRange(cv2.dilate(dil, _K3, dst=_scratch("c", shape)), max(0.0, mode - band - 4),
                           min(255.0, mode + band + 4), dst=_scratch("a", shape))
        on_paper = cv2.countNonZero(cv2.bitwise_and(strong, near, dst=_scratch("a", shape))) / n_strong

    thin, thick, smooth = _ink_shape(g, strong, mode, band, contrast, True)
    thin2 = smooth2 = 0.0
    if h >= 16 and w >= 16:  # the same at half the scale: a zoomed-in or blurred page's strokes are wider
        s2 = (h // 2, w // 2)
        g2 = cv2.resize(g[: h // 2 * 2, : w // 2 * 2], (w // 2, h // 2), dst=_scratch("g2", s2),
                        interpolation=cv2.INTER_AREA)
        range2 = cv2.subtract(cv2.dilate(g2, _K3, dst=_scratch("a2", s2)), cv2.erode(g2, _K3, dst=_scratch("b2", s2)),
                              dst=_scratch("a2", s2))
        strong2 = cv2.compare(range2, thr, cv2.CMP_GT, dst=_scratch("strong2", s2))
        thin2, _, smooth2 = _ink_shape(g2, strong2, mode, band, contrast, False, "2")

    rows, cols = _line_periods(g)

    blank = inked = paper_tiles = spread = 0.0
    hh, ww = h // CELL * CELL, w // CELL * CELL
    if hh and ww:
        cm = cv2.resize(g[:hh, :ww], (ww // CELL, hh // CELL), interpolation=cv2.INTER_AREA).astype(np.float32)
        blank = float(np.count_nonzero(np.abs(cm - mode) <= band)) / cm.size
        inked = float(np.count_nonzero(cm < mode - band - max(8.0, 0.15 * contrast))) / cm.size
        ty, tx = max(1, cm.shape[0] // TILES), max(1, cm.shape[1] // TILES)
        th, tw = cm.shape[0] // ty * ty, cm.shape[1] // tx * tx
        tiles = cm[:th, :tw].reshape(th // ty, ty, tw // tx, tx).max(axis=(1, 3)).ravel()
        paper_tiles = float(np.count_nonzero(np.abs(tiles - mode) <= band + 3)) / tiles.size
        q10, q90 = np.quantile(tiles, (0.1, 0.9))
        spread = float(q90 - q10) / (contrast + 16.0)

    out[:] = (mode / 255.0, paper_share, math.log2(width), above, ink, contrast / 255.0, midtone, otsu, entropy,
              edge_density, on_paper, max(rows, cols), min(rows, cols), blank, inked, paper_tiles, spread, thin,
              thick, smooth, thin2, smooth2)
    return out


def feature_matrix(grays) -> np.ndarray:
    """float32 (N, K): :func:`content_features` of each picture."""
    rows = [content_features(g) for g in grays]
    return np.array(rows, np.float32).reshape(len(rows), len(CONTENT_FEATURE_NAMES))


# ------------------------------------------------------------------------------------------------ pages to learn from

PAGE_BLURS = (("none", 0.25), ("gaussian", 0.30), ("defocus", 0.20), ("motion", 0.25))
"""How often each blur is drawn for a training or test page (full-resolution pixels): Gaussian sigma 0.5-4,
defocus radius 1-8, motion length 2-20 at any angle; a fifth of the blurred pages are blurred in one region only
(a lower half out of focus...)."""


CROP_TRIES, CROP_MIN_LINES = 8, 3
"""A cropped page is redrawn (up to CROP_TRIES crops, then the whole page) until it holds CROP_MIN_LINES lines."""


def _falloff(gray: np.ndarray, amount: float, cx: float, cy: float) -> np.ndarray:
    """Light falling off by up to ``amount`` (a share) away from (cx, cy) (fractions of the picture)."""
    h, w = gray.shape
    yy = (np.arange(h, dtype=np.float32)[:, None] / max(h, 1) - cy) ** 2
    xx = (np.arange(w, dtype=np.float32)[None, :] / max(w, 1) - cx) ** 2
    gain = 1.0 - amount * np.minimum(1.0, (xx + yy) / 2.0)
    return np.clip(gray.astype(np.float32) * gain + 0.5, 0, 255).astype(np.uint8)


def sample_page(rng: np.random.Generator, split: str = "train", side: int = 640, keep_full: bool = False,
                dpi: int | None = None) -> tuple[np.ndarray, dict]:
    """One rendered page (ensemble.documents: fonts and layouts of ``split``, 'train' or 'heldout') as the detector
    sees it: its analysis-scale grey picture (shorter side ``side``) and what made it (``info``: layout, family,
    dpi, blur, region, crop, rotated, falloff, white_point, lines; ``full``: the full-resolution page when
    ``keep_full``).

    Beyond documents.sample_spec (dpi 150-600, paper and ink tone, noise, JPEG): skew up to 2 degrees, a fifth of
    the pages cropped to a part (30-100 % wide, 20-100 % high, with at least 3 lines of text on it), blur as
    :data:`PAGE_BLURS`, one in ten turned on its side, three in ten with light falling off by up to 10 % (a
    flatbed's edge, a lamp), and 15 % with the scanner's white point at the paper or under it (paper clipped to
    255). Needs Pillow and the fonts of ``make fonts``; nothing here is needed to classify. ``dpi`` fixes the
    resolution (else 150-600).
    """
    import dataclasses

    from . import documents
    from .imageio import resize_to_analysis

    spec = documents.sample_spec(rng, split, dpi=dpi)
    spec = dataclasses.replace(spec, skew_deg=float(rng.uniform(-2.0, 2.0)))
    crops = []
    if rng.random() < 0.2:
        for _ in range(CROP_TRIES):
            cw, ch = float(rng.uniform(0.3, 1.0)), float(rng.uniform(0.2, 1.0))
            left, top = float(rng.uniform(0, 1 - cw)), float(rng.uniform(0, 1 - ch))
            crops.append((left, top, min(1.0, left + cw), min(1.0, top + ch)))
    names, shares = zip(*PAGE_BLURS)
    kind = names[int(rng.choice(len(names), p=shares))]
    blur = None
    if kind == "gaussian":
        blur = (kind, float(rng.uniform(0.5, 4.0)), 0.0)
    elif kind == "defocus":
        blur = (kind, float(rng.uniform(1.0, 8.0)), 0.0)
    elif kind == "motion":
        blur = (kind, float(rng.uniform(2.0, 20.0)), float(rng.uniform(0.0, 180.0)))
    region = "all"
    if blur is not None and rng.random() < 0.2:
        region = str(documents.BLUR_REGIONS[int(rng.integers(1, len(documents.BLUR_REGIONS)))])
    rotated = bool(rng.random() < 0.1)
    falloff = (float(rng.uniform(0.02, 0.10)), float(rng.random()), float(rng.random())) if rng.random() < 0.3 \
        else None
    white = float(spec.paper * rng.uniform(0.92, 1.0)) if rng.random() < 0.15 else None
    page = None
    for crop in crops:  # a part of the page with some text on it: blank paper shows nothing to tell
        page = documents.make_page(dataclasses.replace(spec, crop=crop), blur=blur, region=region)
        if len(page.lines) >= CROP_MIN_LINES:
            break
        page = None
    crop = page.spec.crop if page is not None else None
    if page is None:
        page = documents.make_page(spec, blur=blur, region=region)
    full = np.ascontiguousarray(np.rot90(page.gray)) if rotated else page.gray
    gray = resize_to_analysis(full, side)
    if falloff is not None:
        gray = _falloff(gray, *falloff)
    if white is not None:  # the scanner's white point at (or under) the paper: paper clipped to 255
        gray = cv2.LUT(gray, np.clip(np.arange(256) * (255.0 / white), 0, 255).round().astype(np.uint8))
    info = {"layout": spec.layout, "family": documents.font_family(spec.font), "font": spec.font,
            "dpi": spec.dpi, "size_pt": spec.size_pt, "blur": blur, "region": region, "crop": crop,
            "rotated": rotated, "falloff": falloff, "white_point": white, "lines": len(page.lines), "split": split}
    if keep_full:
        info["full"] = full
    return gray, info


def _page_job(args):
    seed, i, split, side, dpi = args
    rng = np.random.default_rng([seed, i])
    return sample_page(rng, split, side, dpi=None if dpi is None else int(rng.choice(dpi)))


def sample_pages(n: int, split: str = "train", seed: int = 0, side: int = 640, workers: int = 1,
                 dpis: tuple[int, ...] | None = None, progress=None) -> tuple[list[np.ndarray], list[dict]]:
    """``n`` pages of :func:`sample_page`, page i drawn from the generator seeded (seed, i): the same pages for
    any number of ``workers`` (processes). ``dpis``: draw the resolution from these (else documents' 150-600).
    ``progress`` optionally wraps the stream of finished pages (a tqdm partial, given ``total``)."""
    jobs = [(seed, i, split, side, dpis) for i in range(n)]
    if workers > 1 and n > 1:
        from .processes import spawn_pool

        with spawn_pool(workers) as ex:
            stream = ex.map(_page_job, jobs, chunksize=4)
            done = list(progress(stream, total=n) if progress else stream)
    else:
        stream = map(_page_job, jobs)
        done = list(progress(stream, total=n) if progress else stream)
    return [d[0] for d in done], [d[1] for d in done]


# ------------------------------------------------------------------------------------------------ the model


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


class ContentModel:
    """P(document) of analysis-scale grey images; ``classify`` gives 'photo' or 'document'.

    ``params`` (plain JSON): ``feature_names``, ``mean`` and ``scale`` (standardisation), ``weights`` and ``bias``
    (logistic regression on the standardised measures), ``threshold`` (on P(document)) and ``threshold_logit``,
    plus what :func:`fit_content` recorded (``report``). Loading checks the feature names against this code's.
    """

    def __init__(self, params: dict):
        names = tuple(params.get("feature_names", CONTENT_FEATURE_NAMES))
        if names != CONTENT_FEATURE_NAMES:
            raise ValueError(f"content model measures {names}, this code measures {CONTENT_FEATURE_NAMES}: "
                             "retrain it (train.py)")
        k = len(names)
        self.params = dict(params)
        self.mean = np.asarray(params["mean"], np.float64).reshape(k)
        self.scale = np.asarray(params["scale"], np.float64).reshape(k)
        self.weights = np.asarray(params["weights"], np.float64).reshape(k)
        self.bias = float(params["bias"])
        self.threshold = float(params.get("threshold", 0.5))
        if not (np.all(np.isfinite(self.mean)) and np.all(self.scale > 0) and np.all(np.isfinite(self.weights))
                and math.isfinite(self.bias) and 0.0 < self.threshold < 1.0):
            raise ValueError("content model parameters are not finite, or its threshold is not in (0, 1)")

    @classmethod
    def load(cls, folder) -> ContentModel | None:
        """``folder``/content.json, or None when there is none."""
        path = Path(folder) / CONTENT_FILE
        if not path.exists():
            return None
        params = json.loads(path.read_text())
        if params.get("format", FORMAT) != FORMAT:
            raise ValueError(f"{path} is not a content model (format {params.get('format')!r})")
        return cls(params)

    def to_params(self) -> dict:
        out = dict(self.params)
        out.update(format=FORMAT, version=VERSION, feature_names=list(CONTENT_FEATURE_NAMES),
                   mean=[float(v) for v in self.mean], scale=[float(v) for v in self.scale],
                   weights=[float(v) for v in self.weights], bias=self.bias, threshold=self.threshold)
        return out

    def save(self, folder) -> Path:
        """Write ``folder``/content.json (atomically) and return its path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return atomic_write(folder / CONTENT_FILE, json.dumps(self.to_params(), indent=1) + "\n")

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Decision values (logit of P(document)) of a feature matrix (N, K)."""
        x = np.asarray(features, np.float64).reshape(-1, len(CONTENT_FEATURE_NAMES))
        return ((x - self.mean) / self.scale) @ self.weights + self.bias

    def predict_proba(self, grays) -> np.ndarray:
        """P(document) of each grey picture, float (N,)."""
        if isinstance(grays, np.ndarray) and grays.ndim == 2:
            grays = [grays]
        return _sigmoid(self.logits(feature_matrix(list(grays))))

    def classify(self, gray: np.ndarray) -> str:
        """'document' when P(document) reaches the threshold, else 'photo'."""
        return CONTENTS[int(self.predict_proba([gray])[0] >= self.threshold)]


# ------------------------------------------------------------------------------------------------ training


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 50) -> tuple[np.ndarray, float]:
    """Class-balanced, L2-penalised logistic regression by Newton's method on standardised ``x``; (w, b)."""
    n, k = x.shape
    pos = max(1, int(y.sum()))
    neg = max(1, n - pos)
    sw = np.where(y > 0, n / (2.0 * pos), n / (2.0 * neg))
    xa = np.hstack([x, np.ones((n, 1))])
    beta = np.zeros(k + 1)
    reg = np.full(k + 1, l2)
    reg[-1] = 0.0
    for _ in range(iters):
        z = xa @ beta
        pr = _sigmoid(z)
        grad = xa.T @ (sw * (pr - y)) + reg * beta
        hess = (xa * (sw * pr * (1 - pr))[:, None]).T @ xa + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return beta[:k], float(beta[k])


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    return mean, np.where(scale > 1e-9, scale, 1.0)


def _folds(groups: np.ndarray, y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index per sample: whole groups per fold, each class's groups dealt round-robin in a shuffled order."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), np.int64)
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        names = np.unique(groups[idx])
        rng.shuffle(names)
        sizes = {g: i % k for i, g in enumerate(names)}
        fold[idx] = [sizes[g] for g in groups[idx]]
    return fold


def _split_groups(groups, n_photo: int, n_page: int) -> np.ndarray:
    if groups is None:
        return np.array([f"photo:{i}" for i in range(n_photo)] + [f"page:{i}" for i in range(n_page)], dtype=object)
    if isinstance(groups, tuple) and len(groups) == 2:
        gp, gd = (list(g) if g is not None else None for g in groups)
        gp = gp if gp is not None else list(range(n_photo))
        gd = gd if gd is not None else list(range(n_page))
        if len(gp) != n_photo or len(gd) != n_page:
            raise ValueError(f"groups: {len(gp)} photo and {len(gd)} page groups for {n_photo} photos and "
                             f"{n_page} pages")
        return np.array([f"photo:{g}" for g in gp] + [f"page:{g}" for g in gd], dtype=object)
    groups = list(groups)
    if len(groups) != n_photo + n_page:
        raise ValueError(f"groups has {len(groups)} entries for {n_photo} photos and {n_page} pages")
    return np.array([f"photo:{g}" for g in groups[:n_photo]] + [f"page:{g}" for g in groups[n_photo:]],
                    dtype=object)


PHOTO_CHANGES = ("dark", "bright", "over-exposed", "fog", "washed out")
"""The changed copy :func:`fit_content` adds of each training photo (one each, drawn at random): a dark or a bright
exposure, clipped highlights, fog, a washed-out print. Clipped white or fog is the nearest a photo comes to paper."""


def change_photo(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random change of :data:`PHOTO_CHANGES` (a grey-level table: no pixel moves)."""
    v = np.arange(256, dtype=np.float64)
    kind = PHOTO_CHANGES[int(rng.integers(len(PHOTO_CHANGES)))]
    if kind == "dark":
        t = v * rng.uniform(0.15, 0.5)
    elif kind == "bright":
        t = 255 * (v / 255) ** rng.uniform(0.3, 0.7)
    elif kind == "over-exposed":
        t = v * rng.uniform(1.3, 2.2)
    elif kind == "fog":
        a = rng.uniform(0.4, 0.8)
        t = (1 - a) * v + a * rng.uniform(190, 250)
    else:
        k = rng.uniform(0.2, 0.5)
        t = rng.uniform(120, 255 - 255 * k) + k * v
    return cv2.LUT(np.asarray(gray, np.uint8), np.clip(t, 0, 255).round().astype(np.uint8))


def fit_content(photo_grays, page_grays, groups=None, seed: int = 0, folds: int = 5, l2: float = 1.0,
                min_margin: float = MIN_MARGIN, photo_changes: bool = True) -> tuple[ContentModel, dict]:
    """Train the classifier on analysis-scale grey photos (label photo) and pages (label document).

    ``groups`` keeps near-duplicates on one side of each validation split: None (every picture its own group), a
    sequence over the photos then the pages, or a pair (photo groups, page groups), e.g. the photos' scenes and the
    pages' font families. The threshold is chosen on out-of-fold scores (``folds`` folds of whole groups): at least
    ``min_margin`` (logit) above the highest validation photo, and half-way between it and the lowest 0.5 % of
    validation pages when they are further apart. With ``photo_changes`` every photo also gets a changed copy
    (:func:`change_photo`, in its photo's group, so in the same fold): the copies train the weights, but the
    threshold answers to the real photos only (a photo blown out to white can be a blank sheet with a doodle; the
    report counts the copies above it). Returns the model fitted on everything and a
    report: counts, the threshold, its margin and the out-of-fold figures at it.
    """
    photos, pages = list(photo_grays), list(page_grays)
    if not photos or not pages:
        raise ValueError(f"need photos and pages to train on, got {len(photos)} photos and {len(pages)} pages")
    g = _split_groups(groups, len(photos), len(pages))
    n_real = len(photos)
    if photo_changes:
        rng = np.random.default_rng([seed, 0xC4A9])
        photos = photos + [change_photo(p, rng) for p in photos]
        g = np.concatenate([g[:n_real], g[:n_real], g[n_real:]])
    x = np.vstack([feature_matrix(photos), feature_matrix(pages)]).astype(np.float64)
    y = np.r_[np.zeros(len(photos)), np.ones(len(pages))]
    k = int(max(2, min(folds, len(np.unique(g[y == 0])), len(np.unique(g[y == 1])))))
    fold = _folds(g, y, k, seed)
    oof = np.empty(len(y))
    for f in range(k):
        trn, val = fold != f, fold == f
        mean, scale = _standardise(x[trn])
        w, b = _fit_logistic((x[trn] - mean) / scale, y[trn], l2)
        oof[val] = ((x[val] - mean) / scale) @ w + b
    real = np.r_[np.ones(n_real, bool), np.zeros(len(photos) - n_real, bool), np.zeros(len(pages), bool)]
    photo_max = float(oof[real].max())  # the threshold answers to real photos; the changed ones only train
    page_low = float(np.quantile(oof[y == 1], 0.005))
    margin = max(min_margin, 0.5 * (page_low - photo_max))
    t = photo_max + margin
    changed = (y == 0) & ~real
    mean, scale = _standardise(x)
    w, b = _fit_logistic((x - mean) / scale, y, l2)
    report = {
        "photos": n_real, "changed_photos": len(photos) - n_real, "pages": len(pages), "folds": k, "seed": seed,
        "l2": l2,
        "threshold_logit": t, "threshold": float(_sigmoid(np.array(t))),
        "margin_logit": margin,
        "oof_photo_max_logit": photo_max, "oof_page_q005_logit": page_low,
        "oof_page_min_logit": float(oof[y == 1].min()),
        "oof_photos_called_documents": int((oof[real] >= t).sum()),
        "oof_changed_photos_called_documents": int((oof[changed] >= t).sum()),
        "oof_changed_photo_max_logit": float(oof[changed].max()) if changed.any() else None,
        "oof_pages_called_photos": int((oof[y == 1] < t).sum()),
        "oof_page_recall": float((oof[y == 1] >= t).mean()),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    params = {"feature_names": list(CONTENT_FEATURE_NAMES), "mean": mean.tolist(), "scale": scale.tolist(),
              "weights": w.tolist(), "bias": b, "threshold": report["threshold"], "threshold_logit": t,
              "report": report}
    return ContentModel(params), report


def evaluate_content(model: ContentModel, photo_grays, page_grays) -> dict:
    """How ``model`` does on photos (should be 'photo') and pages (should be 'document'): counts, accuracy, the
    photos called documents and the pages called photos (and the share of pages recognised)."""
    lp = model.logits(feature_matrix(list(photo_grays)))
    ld = model.logits(feature_matrix(list(page_grays)))
    fp = int((_sigmoid(lp) >= model.threshold).sum())  # exactly as classify decides
    fn = int((_sigmoid(ld) < model.threshold).sum())
    n = len(lp) + len(ld)
    return {
        "photos": len(lp), "pages": len(ld),
        "accuracy": float((n - fp - fn) / n) if n else float("nan"),
        "photos_called_documents": fp, "pages_called_photos": fn,
        "page_recall": float(1 - fn / len(ld)) if len(ld) else float("nan"),
        "photo_max_logit": float(lp.max()) if len(lp) else None,
        "page_min_logit": float(ld.min()) if len(ld) else None,
        "threshold_logit": _logit(model.threshold),
    }


# ------------------------------------------------------------------------------------------------ the pipeline stage

STAGE_PAGES = 600
"""Pages the pipeline's content stage (pipeline.train_content_stage) renders by default: about 2 minutes on 2 CPU
cores, most of the stage."""
STAGE_PAGE_SEED = 1000
"""Training pages are drawn with seed ``STAGE_PAGE_SEED + seed`` (benchmarks/bench_content.py trains on the same
ones and judges on held-out pages drawn from 2000 + seed)."""


__all__ = ["CONTENT_FEATURE_NAMES", "CONTENT_FILE", "CONTENTS", "ContentModel", "content_features",
           "change_photo", "evaluate_content", "feature_matrix", "fit_content", "sample_page", "sample_pages"]
