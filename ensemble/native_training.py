"""The material the native-scale meta-network (``final_model/meta_native.*``) learns from and is judged on.

The shared photos are 640 px, where native and screen scale are the same, so full-resolution material is made:

* **pages** rendered by ensemble.documents (fonts and layouts of one split, 150-600 dpi, paper tone, skew, scanner
  noise, JPEG), a quarter sharp and the rest blurred (Gaussian, defocus or motion) to an extent drawn around the OCR
  boundary of their font size (:data:`PAGE_RATIO` times documents.blur_boundary), a fifth of those in one region
  only (a lower half out of focus). The label is documents.page_label: blurry where OCR suffers; pages within
  :data:`GUARD` of the boundary are left out, since no label is right for them;
* **large photos**: a 640-px photo mirror-tiled at its own pixel size to 1.2-12 MP (never upscaled, so its pixels
  stay as sharp as the photo's), sometimes enlarged by up to :data:`PHOTO_ZOOM`, then, for a sharp photo, blurred
  at full resolution with Gaussian σ from :data:`PHOTO_SIGMA` (σ ≥ 1 px is blurry at 100 %, as issue 20 asks;
  σ in the guard band between is left out). A blurry photo stays blurry.

Each case is turned into the native-scale meta-network's input (ensemble.native.prepare_native, the CNN on its
patches, features.job_matrix, native.native_inputs): exactly what BlurDetector computes for it at
``scale="native"``. The cases are drawn
from seeded generators, case i of a set from (seed, i), so any number of worker processes give the same rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

PAGE_BLURS = (("none", 0.25), ("gaussian", 0.30), ("defocus", 0.20), ("motion", 0.25))
"""How often each blur is drawn for a page."""
PAGE_RATIO = (0.2, 4.0)
"""A blurred page's extent, as a multiple of its OCR boundary (log-uniform): from plainly legible to illegible."""
REGION_SHARE = 0.2
"""The share of blurred pages blurred in one region only (documents.BLUR_REGIONS other than 'all')."""
GUARD = 0.15
"""Cases within this relative distance of their label boundary are left out of training and of the figures."""
PHOTO_SIGMA = (0.0, 0.6, 1.0, 8.0)
"""A sharp large photo: no blur (σ 0) with probability 0.4, else Gaussian σ log-uniform in 0.6-8 px at full
resolution. Blurry from 1 px (issue 20: a photographer at 100 % needs σ 1 caught); 0.6-1 px is the guard band."""
PHOTO_SHARP_LIMIT, PHOTO_BLURRY_FROM = 0.6 / (1 + GUARD), 1.0
"""A blurred sharp photo is labelled sharp below 0.52 px, blurry from 1 px; between, it is left out."""
PHOTO_ZOOM = 1.3
"""A third of the large photos are enlarged by up to this (Lanczos): a camera's own pixels are a little softer
than a downscaled photo's."""
PHOTO_MP = (1.2, 12.0)
"""The large photos' size, megapixels (log-uniform)."""


@dataclass
class NativeRows:
    """Feature rows of native-scale cases. ``x`` float32 (N, F) (native.NATIVE_FEATURE_NAMES), ``y`` int (N,),
    1 blurry; ``group`` (N,) the fold group (a photo's scene, a page's font family); ``source`` 'page' or 'photo';
    ``info`` what made each case (kind, extent, boundary, dpi, size...)."""

    x: np.ndarray
    y: np.ndarray
    group: np.ndarray
    source: np.ndarray
    info: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.y)

    @staticmethod
    def join(parts) -> NativeRows:
        parts = list(parts)
        return NativeRows(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]),
                          np.concatenate([p.group for p in parts]), np.concatenate([p.source for p in parts]),
                          [i for p in parts for i in p.info])


# ------------------------------------------------------------------------------------------------ the cases


def page_case(seed: int, i: int, split: str = "train", dpi: int | None = None) -> tuple[np.ndarray, int | None, dict]:
    """Page i of a seeded set: (full-resolution uint8 (H, W) page, label or None in the guard band, info)."""
    from . import documents

    rng = np.random.default_rng([seed, i, 0x9A6E])
    spec = documents.sample_spec(rng, split, dpi=dpi)
    names, shares = zip(*PAGE_BLURS)
    kind = names[int(rng.choice(len(names), p=shares))]
    blur, region, extent, boundary = None, "all", 0.0, None
    if kind != "none":
        boundary = documents.blur_boundary(kind, spec.font_px)
        extent = boundary * math.exp(rng.uniform(*np.log(PAGE_RATIO)))
        blur = (kind, extent, float(rng.uniform(0, 180)) if kind == "motion" else 0.0)
        if rng.random() < REGION_SHARE:
            region = str(documents.BLUR_REGIONS[int(rng.integers(1, len(documents.BLUR_REGIONS)))])
    page = documents.make_page(spec, blur=blur, region=region)
    label = documents.page_label(kind, extent, spec.font_px, GUARD)
    info = {"source": "page", "split": split, "layout": spec.layout, "family": documents.font_family(spec.font),
            "dpi": spec.dpi, "size_pt": spec.size_pt, "font_px": round(spec.font_px, 2), "kind": kind,
            "extent_px": round(extent, 3), "boundary_px": None if boundary is None else round(boundary, 3),
            "region": region, "shape": page.gray.shape}
    return page.gray, label, info


def large_photo(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 640-px grey photo mirror-tiled at its own pixel size to :data:`PHOTO_MP`, a third of them enlarged by up to
    :data:`PHOTO_ZOOM`: uint8 (H, W)."""
    g = np.asarray(gray, np.uint8)
    mp = math.exp(rng.uniform(*np.log(PHOTO_MP))) * 1e6
    zoom = float(rng.uniform(1.0, PHOTO_ZOOM)) if rng.random() < 1 / 3 else 1.0
    aspect = float(rng.choice([1.0, 4 / 3, 3 / 2, 3 / 4]))
    h = int(math.sqrt(mp / aspect) / zoom)
    w = int(h * aspect)
    reps = (math.ceil(h / g.shape[0]) + 1, math.ceil(w / g.shape[1]) + 1)
    big = np.pad(g, ((0, (reps[0] - 1) * g.shape[0]), (0, (reps[1] - 1) * g.shape[1])), mode="symmetric")
    y0, x0 = int(rng.integers(0, big.shape[0] - h + 1)), int(rng.integers(0, big.shape[1] - w + 1))
    out = np.ascontiguousarray(big[y0:y0 + h, x0:x0 + w])
    if zoom > 1.0:
        out = cv2.resize(out, (round(w * zoom), round(h * zoom)), interpolation=cv2.INTER_LANCZOS4)
    return out


def photo_case(gray: np.ndarray, blurry: int, seed: int, i: int) -> tuple[np.ndarray, int | None, dict]:
    """A large photo made from training photo i (label ``blurry``): (full uint8 (H, W), label or None, info)."""
    rng = np.random.default_rng([seed, i, 0x7F07])
    full = large_photo(gray, rng)
    sigma = 0.0
    if not blurry and rng.random() >= 0.4:
        lo, hi = PHOTO_SIGMA[1], PHOTO_SIGMA[3]
        sigma = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        full = cv2.GaussianBlur(full, (0, 0), sigma)
    if blurry:
        label = 1
    elif sigma >= PHOTO_BLURRY_FROM:
        label = 1
    elif sigma <= PHOTO_SHARP_LIMIT:
        label = 0
    else:
        label = None
    return full, label, {"source": "photo", "sigma_px": round(sigma, 3), "photo_blurry": int(blurry),
                         "shape": full.shape}


# ------------------------------------------------------------------------------------------------ rows

_WORKER: dict = {}


def _init_worker(model_dir: str, patch_size: int):
    from .runtime import load_cnn

    _WORKER.update(cnn=load_cnn(model_dir, threads=1), patch_size=patch_size)


def native_features(full: np.ndarray, cnn, patch_size: int) -> np.ndarray:
    """The native-scale meta-network's input float32 (len(native.NATIVE_FEATURE_NAMES),) for a full-resolution
    uint8 (H, W) grey image: what BlurDetector computes for it at ``scale="native"``."""
    from .features import job_matrix, score_jobs
    from .imageio import resize_to_analysis
    from .native import native_inputs, prepare_native

    job, _, extra = prepare_native(full, resize_to_analysis(full), patch_size)
    feats, _ = job_matrix([job], score_jobs([job], cnn))
    return native_inputs(feats, [extra])[0]


def _row(task):
    what, args = task
    if what == "page":
        full, label, info = page_case(*args)
        info["group"] = f"family:{info['family']}"
    else:
        gray, blurry, scene, seed, i = args
        full, label, info = photo_case(gray, blurry, seed, i)
        info["group"] = f"scene:{scene}"
    if label is None:
        return None, None, info
    return native_features(full, _WORKER["cnn"], _WORKER["patch_size"]), label, info


def _run(tasks, model_dir, patch_size, workers, progress) -> NativeRows:
    from .native import NATIVE_FEATURE_NAMES

    rows, ys, gs, srcs, infos = [], [], [], [], []
    init = (str(model_dir), patch_size)
    if workers > 1:
        from .processes import spawn_pool

        ex = spawn_pool(workers, _init_worker, init)
        done = ex.map(_row, tasks, chunksize=2)
    else:
        ex = None
        _init_worker(*init)
        done = map(_row, tasks)
    try:
        for x, y, info in progress(done, total=len(tasks)) if progress else done:
            if x is None:
                continue
            rows.append(x)
            ys.append(y)
            gs.append(info["group"])
            srcs.append(info["source"])
            infos.append(info)
    finally:
        if ex is not None:
            ex.shutdown()
    return NativeRows(np.asarray(rows, np.float32).reshape(len(rows), len(NATIVE_FEATURE_NAMES)),
                      np.asarray(ys, int), np.asarray(gs, dtype=object), np.asarray(srcs, dtype=object), infos)


def page_rows(n: int, split: str, seed: int, model_dir, patch_size: int, workers: int = 1, progress=None,
              dpi: int | None = None) -> NativeRows:
    """Rows of ``n`` pages of ``split`` ('train' or 'heldout'; guard-band pages dropped), grouped by font family."""
    tasks = [("page", (seed, i, split, dpi)) for i in range(n)]
    return _run(tasks, model_dir, patch_size, workers, progress)


def photo_rows(images, labels, scenes, copies: int, seed: int, model_dir, patch_size: int, workers: int = 1,
               progress=None) -> NativeRows:
    """Rows of ``copies`` large photos made from each 640-px photo (guard-band cases dropped), grouped by scene."""
    tasks = [("photo", (np.asarray(g, np.uint8), int(blurry), scene, seed + k, j)) for k in range(copies)
             for j, (g, blurry, scene) in enumerate(zip(images, labels, scenes))]
    return _run(tasks, model_dir, patch_size, workers, progress)


__all__ = ["GUARD", "NativeRows", "PAGE_BLURS", "PAGE_RATIO", "PHOTO_SIGMA", "large_photo", "native_features",
           "page_case", "page_rows", "photo_case", "photo_rows"]
