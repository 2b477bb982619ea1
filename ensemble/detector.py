"""BlurDetector: the trained ensemble behind one small object.

    >>> det = BlurDetector.load()              # the shipped model/ and final_model/
    >>> det.predict_path("photo.jpg").label    # 'sharp', 'blurry', or 'flat' (nothing to judge)

Inference runs on ONNX Runtime (no TensorFlow needed); ``runtime="keras"`` runs the .keras files instead.
``device="cuda"`` (or ``"auto"``) runs the CNN on a GPU, with the patches of images scored at the same time by
several threads joined into one CNN call (ensemble.batching).

Scoring an image has three steps, which callers may also run apart: :meth:`BlurDetector.prepare` (decode, focus
measures, patches: CPU work), :meth:`BlurDetector.score` (the CNN on the patches) and :meth:`BlurDetector.finish`
(features, meta-network, kind head, from the CNN's scores).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .blur_kind import KindHead, kind_features
from .content import ContentModel
from .features import FEATURE_NAMES, LAPVAR_INDEX, PatchJob, batch_features, job_matrix, prepare_patches, score_jobs
from .focus import no_detail, noise_sigma
from .imageio import Decoded, decoded_array, load_image, to_gray
from .native import NATIVE_FEATURE_NAMES, native_inputs, prepare_native
from .noise import image_noise_sigma
from .patches import PATCH_SIZE, blur_map

CNN_DIR = "model"
META_DIR = "final_model"
NATIVE_META = "meta_native"
"""final_model/meta_native.onnx (and .keras): the meta-network of native-scale features (ensemble.native)."""
NOISE_INDEX = FEATURE_NAMES.index("log_noise_sigma")

SCALES = ("screen", "native", "auto")
"""The scales an image can be judged at (docs/native-scale.md). ``screen``: its short side brought to the analysis
side (640 px), so a photo gets the same verdict at 1 MP and at 24 MP: how it looks on a screen. ``native``: at its
own resolution, as seen at 100 % (ensemble.native). ``auto``: ``native`` for a document, ``screen`` for a photo
(ensemble.content). An image no larger than the analysis side is the same at both scales and is judged as on a
screen, whatever is asked."""

DEFAULT_SCALE = "auto"
"""The scale every surface judges at unless told otherwise: photos are judged as before, and document pages at 100 %,
where a soft page fails OCR although it looks sharp on a screen (README, "Judging at 100 %")."""

LABELS = ("blurry", "sharp", "flat", "error")
"""A scan record's ``label``: ``flat`` is an image with nothing to judge (smaller than 32 pixels on a side, or
uniform: blank, one colour, a covered lens), which is neither sharp nor blurry and is never moved; ``error`` one
that could not be read."""


def default_model_root() -> Path:
    """Folder holding ``model/`` and ``final_model/``: $BLUR_ENSEMBLE_MODELS, the source checkout, or the install."""
    env = os.environ.get("BLUR_ENSEMBLE_MODELS")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for root in (here.parent, here / "shipped"):
        if (root / META_DIR / "metadata.json").exists():
            return root
    raise FileNotFoundError("no shipped model found: set BLUR_ENSEMBLE_MODELS to a folder with model/ and final_model/")


@dataclass(frozen=True)
class BlurResult:
    """Verdict on one image.

    ``blur_probability`` is the calibrated P(blurry) in [0, 1]; ``label`` is 'blurry' when it reaches the threshold,
    else 'sharp', or 'flat' when the image has nothing to judge: then ``blur_probability`` is None and ``flat``
    says why; ``laplacian_var`` the variance of the Laplacian at the analysis scale (grey levels²);
    ``width``/``height`` the original size in pixels; ``cnn_probability`` the CNN's own mean patch probability;
    ``blur_map`` the per-patch probabilities (rows, cols), NaN where a patch is flat; ``grid_origin`` (y, x) and
    ``patch_size`` place that map on the analysis-scale image, in pixels.

    For a blurry image with a model that has a kind head (docs/blur-kind.md): ``blur_kind`` 'defocus' or 'motion'
    with ``blur_kind_probability`` (0.5–1), ``motion_angle`` the motion's direction in degrees [0, 180),
    counter-clockwise from horizontal on screen (motion only), and ``blur_extent_px`` the defocus radius or motion
    length in pixels of the original image; None otherwise. ``noise_sigma`` is the noise's standard deviation in
    grey levels (0–255) at the original resolution, for every image that is not flat. ``kind_estimate`` holds the
    kind head's answer whatever the label (keys blur_kind, blur_kind_probability, motion_angle, blur_extent_px),
    for surfaces with a threshold of their own (the review page's slider, a camera's threshold); None for a flat
    image or a model without a kind head. ``scale`` is the scale it was judged at ('screen' or 'native', see
    :data:`SCALES`) and ``content`` what it shows ('photo' or 'document'; None for a flat image or a model without
    a content classifier).
    """

    blur_probability: float | None
    label: str
    laplacian_var: float
    width: int
    height: int
    cnn_probability: float
    blur_map: np.ndarray | None = field(default=None, repr=False, compare=False)
    grid_origin: tuple[int, int] = (0, 0)
    patch_size: int = 0
    flat: str | None = None
    blur_kind: str | None = None
    blur_kind_probability: float | None = None
    motion_angle: float | None = None
    blur_extent_px: float | None = None
    noise_sigma: float | None = None
    kind_estimate: dict | None = field(default=None, repr=False, compare=False)
    scale: str = "screen"
    content: str | None = None

    def record(self, path: str | None = None) -> dict:
        """The scan record (records.RECORD_FIELDS): path, label, blur_probability, laplacian_var, width, height,
        error (None), blur_kind, blur_kind_probability, motion_angle, blur_extent_px, noise_sigma, scale, content."""
        return {
            "path": path,
            "label": self.label,
            "blur_probability": None if self.blur_probability is None else round(self.blur_probability, 6),
            "laplacian_var": round(self.laplacian_var, 3),
            "width": self.width,
            "height": self.height,
            "error": None,
            "blur_kind": self.blur_kind,
            "blur_kind_probability": _rounded(self.blur_kind_probability, 4),
            "motion_angle": _rounded(self.motion_angle, 1),
            "blur_extent_px": _rounded(self.blur_extent_px, 2),
            "noise_sigma": _rounded(self.noise_sigma, 3),
            "scale": self.scale,
            "content": self.content,
        }


def check_scale(scale: str) -> str:
    """``scale`` if it is one of :data:`SCALES`, else ValueError naming them."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, not {scale!r}")
    return scale


def _reduced(decoded: Decoded) -> bool:
    """Whether ``decoded.pixels`` are smaller than the image: only then does native scale differ from screen."""
    return decoded.full is not None or min(decoded.pixels.shape[:2]) < min(decoded.width, decoded.height)


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


@dataclass(frozen=True)
class Prepared:
    """One image up to its CNN call (:meth:`BlurDetector.prepare`): ``decoded``, grey at the analysis scale with
    the original size, and ``job``, its patches and focus measures. :meth:`BlurDetector.finish` takes it on from the
    CNN's scores of :meth:`inputs`."""

    decoded: Decoded
    job: PatchJob
    scale: str = "screen"
    content: str | None = None
    cell: int = 0
    extra: np.ndarray | None = None
    """``scale``: 'screen' or 'native', what the image is judged at; ``content``: 'photo', 'document' or None (no
    content classifier); ``cell``: at native scale, the side of the job's cells in full-resolution pixels;
    ``extra``: at native scale, the measures the native-scale meta-network reads after the feature vector
    (ensemble.native_focus)."""

    @property
    def patch_count(self) -> int:
        return self.job.patch_count

    def inputs(self) -> np.ndarray:
        """float32 (patch_count, P, P, 1): what the CNN scores."""
        return self.job.inputs()


AGREED_BLURRY = (20.0, 0.8)
"""(Laplacian variance at the analysis scale, CNN mean): an image at or below the first and at or above the second
is blurry by both parts, and never called sharp (issue 20: strongly blurred 8 MP photos with Laplacian variance
16–36 and a CNN mean of 0.80–0.99 were called sharp by an earlier meta-network). Chosen on the training split
(data/train.pkl, 1,700 photos): 232 blurry photos and no sharp one lie in that corner; the Laplacian limit of the
fitted baseline (134) would take in 35 sharp photos with soft backgrounds that the meta-network rightly calls
sharp."""

CPU_BATCHING = False
"""Whether a detector on the CPU joins the CNN calls of several threads too (``batch=None``). Off, as measured: on
the CPU a patch costs the same in a call of 24 as of 512 (0.85 ms on one core), so joining saves nothing, and a scan
of 12 MP JPEGs ran at 32.5 images/s per-image against 32.4 joined (2 cores; docs/gpu.md)."""


class BlurDetector:
    """The CNN + focus-measure ensemble.

    ``cnn`` maps float32 (N, P, P, 1) patches to (N,) blur probabilities; ``meta`` maps float32 (N, F) feature
    vectors to (N,) calibrated probabilities; ``metadata`` is final_model/metadata.json as a dict; ``kind`` the
    kind head (blur_kind.KindHead), or None for a model folder without one (the kind fields are then None).
    """

    def __init__(self, cnn, meta, metadata: dict, threshold: float | None = None, kind: KindHead | None = None,
                 meta_native=None, content: ContentModel | None = None, scale: str = DEFAULT_SCALE):
        self.cnn = cnn
        self.meta = meta
        self.meta_native = meta_native
        self.metadata = metadata
        self.kind = kind
        self.content = content
        self.scale = check_scale(scale)
        self.threshold = float(threshold if threshold is not None else metadata.get("threshold", 0.5))
        self.analysis_side = int(metadata.get("analysis_side", 640))
        self.patch_size = int(metadata.get("cnn", {}).get("hyperparameters", {}).get("patch_size", PATCH_SIZE))

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, runtime: str = "onnx", threads: int = 0,
             threshold: float | None = None, device: str = "cpu", batch: bool | None = None,
             scale: str = DEFAULT_SCALE) -> "BlurDetector":
        """Load ``path``/model and ``path``/final_model (default: the shipped ones).

        ``runtime``: 'onnx' (fast, no TensorFlow) or 'keras'. ``threads``: ONNX Runtime threads, 0 = all cores.
        ``device``: where the CNN runs: 'cpu', 'cuda' (runtime.DeviceError when CUDA cannot be used) or 'auto'
        (CUDA when its execution provider loads, else the CPU); the meta-network and the kind head, a few
        microseconds an image, stay on the CPU. ``batch``: join the CNN calls that several threads make at the same
        time into one (ensemble.batching); None: on a GPU only (:data:`CPU_BATCHING`). ``scale``: the scale the
        predict methods judge at when not told (:data:`SCALES`).
        """
        from .runtime import check_device

        check_device(device)
        root = Path(path) if path is not None else default_model_root()
        meta_file = root / META_DIR / "metadata.json"
        if not meta_file.exists():
            raise FileNotFoundError(f"{meta_file} not found: not a model folder")
        metadata = json.loads(meta_file.read_text())
        names = metadata.get("feature_names")
        if names is not None and list(names) != list(FEATURE_NAMES):
            # An older meta-network would still run on a vector of the right length, and silently score nonsense.
            raise ValueError(f"{meta_file.parent} was trained on other features than this version computes: "
                             "retrain it with train.py")
        native_file = root / META_DIR / f"{NATIVE_META}.onnx"
        native_info = root / META_DIR / "native.json"
        native_names = json.loads(native_info.read_text()).get("feature_names") if native_info.exists() else None
        if native_names is not None and native_names != list(NATIVE_FEATURE_NAMES):
            raise ValueError(f"{native_info.parent}'s native-scale meta-network was trained on other features than "
                             "this version computes: retrain it with train.py --stages native")
        if runtime == "onnx":
            from .runtime import OnnxModel

            cnn = OnnxModel(root / CNN_DIR / "cnn.onnx", threads, device)
            meta = OnnxModel(root / META_DIR / "meta.onnx", threads)
            meta_native = OnnxModel(native_file, threads) if native_file.exists() else None
        elif runtime == "keras":
            if device == "cuda":
                raise ValueError("device='cuda' needs runtime='onnx'")
            from .cnn import scoring_model
            from .runtime import KerasModel, load_keras

            cnn = KerasModel(scoring_model(load_keras(root / CNN_DIR / "cnn.keras")))
            meta = KerasModel(load_keras(root / META_DIR / "meta.keras"))
            native_keras = native_file.with_suffix(".keras")
            meta_native = KerasModel(load_keras(native_keras)) if native_keras.exists() else None
        else:
            raise ValueError(f"runtime must be 'onnx' or 'keras', not {runtime!r}")
        if batch if batch is not None else (getattr(cnn, "device", "cpu") == "cuda" or CPU_BATCHING):
            from .batching import PatchBatcher

            cnn = PatchBatcher(cnn)
        # The kind head runs on ONNX Runtime whatever the runtime: it ships as kind.onnx only.
        return cls(cnn, meta, metadata, threshold, KindHead.load(root / META_DIR, threads), meta_native,
                   ContentModel.load(root / META_DIR), scale)

    # -- where it runs ------------------------------------------------------------------------------------------
    @property
    def device(self) -> str:
        """Where the CNN runs: 'cuda' or 'cpu'."""
        return getattr(self.cnn, "device", "cpu")

    @property
    def batching(self) -> bool:
        """Whether concurrent CNN calls are joined (ensemble.batching.PatchBatcher)."""
        from .batching import PatchBatcher

        return isinstance(self.cnn, PatchBatcher)

    @property
    def device_detail(self) -> str | None:
        """On CUDA the GPU's name (None when nvidia-smi cannot tell); on the CPU why not a GPU, when ``device='auto'``
        looked for one (``no CUDA execution provider``); else None."""
        return getattr(self.cnn, "device_name" if self.device == "cuda" else "device_note", None)

    def device_line(self) -> str:
        """``device: cuda (NVIDIA H200)``, ``device: cpu (no CUDA execution provider)`` or ``device: cpu``: the line
        blur-detect prints."""
        detail = self.device_detail or ("GPU 0" if self.device == "cuda" else None)
        return f"device: {self.device}" + (f" ({detail})" if detail else "")

    def check(self) -> "BlurDetector":
        """Run one tiny prediction and return self. A model that loads but cannot run fails here, with its own
        error, instead of once per image; it also moves ONNX Runtime's first-call set-up out of the first image."""
        checkerboard = (np.indices((self.patch_size, self.patch_size)).sum(axis=0) % 2 * 255).astype(np.uint8)
        self.predict_array(checkerboard, with_map=False)
        return self

    # -- prediction ---------------------------------------------------------------------------------------------
    # ``scale`` (every method): 'screen', 'native' or 'auto' (SCALES); None: the detector's own (self.scale).
    def predict_array(self, image: np.ndarray, with_map: bool = True, scale: str | None = None) -> BlurResult:
        """Score one image array: (H, W) grey or (H, W, 3) RGB, uint8/uint16/float in [0, 1], any resolution."""
        return self._predict([self.prepare(image, scale)], with_map)[0]

    def predict_path(self, path: str | os.PathLike, with_map: bool = True, scale: str | None = None) -> BlurResult:
        """Score one image file. Raises ImageError with a one-line reason if it cannot be read."""
        return self.predict_decoded([self.decode(path, scale)], with_map, scale)[0]

    def predict_batch(self, items: Sequence, with_map: bool = False, scale: str | None = None) -> list[BlurResult]:
        """Score several images (paths or arrays) with one CNN call and one meta-network call per scale."""
        return self._predict([self.prepare(item, scale) for item in items], with_map)

    def predict_proba(self, images: Iterable, scale: str | None = None) -> np.ndarray:
        """Calibrated P(blurry) for each image (paths or arrays), float (N,); NaN for a flat image."""
        return np.array([np.nan if r.blur_probability is None else r.blur_probability
                         for r in self.predict_batch(list(images), scale=scale)])

    def predict(self, images: Iterable, scale: str | None = None) -> np.ndarray:
        """1 for blurry, 0 for sharp (and for a flat image), int (N,)."""
        return (self.predict_proba(images, scale) >= self.threshold).astype(int)

    def decode(self, path: str | os.PathLike, scale: str | None = None) -> Decoded:
        """Read a file as grey at this detector's analysis scale (raises ImageError), with its full-resolution
        pixels when it is to be judged at native scale: always for 'native'; for 'auto' when the content
        classifier finds a document in the analysis-scale picture (the file is then read a second time, at full
        size, which only documents pay for)."""
        scale = self._scale(scale)
        decoded = load_image(path, "L", self.analysis_side, native=True, keep_full=scale == "native")
        if scale != "auto" or self.meta_native is None:
            return decoded
        content = self.classify(decoded.pixels)  # kept on the result: prepare() does not ask again
        if content == "document" and _reduced(decoded):
            decoded = load_image(path, "L", self.analysis_side, native=True, keep_full=True)
        return replace(decoded, content=content)

    def predict_decoded(self, decoded: Sequence[Decoded], with_map: bool = True, scale: str | None = None
                        ) -> list[BlurResult]:
        """Score images already decoded by :meth:`decode` (with the same ``scale``)."""
        return self._predict([self.prepare(d, scale) for d in decoded], with_map)

    def classify(self, gray: np.ndarray) -> str | None:
        """'photo' or 'document' for an analysis-scale uint8 (H, W) grey image (ensemble.content); None for a model
        without a content classifier."""
        return None if self.content is None else self.content.classify(gray)

    def _scale(self, scale: str | None) -> str:
        return self.scale if scale is None else check_scale(scale)

    def features(self, grays: Sequence[np.ndarray]):
        """Feature matrix float32 (N, F) of analysis-scale grey images, with each image's grid and patch probs."""
        return batch_features(grays, self.cnn, self.patch_size)

    # -- the three steps ----------------------------------------------------------------------------------------
    def prepare(self, item, scale: str | None = None) -> Prepared:
        """Step 1, everything before the CNN: a path is decoded (ImageError if unreadable), an array made grey at
        the analysis scale, a :class:`Decoded` (from :meth:`decode`) taken as it is; then what it shows, its focus
        measures and the patches the CNN is to score, at ``scale``.

        At native scale (asked, or 'auto' and a document) an image larger than the analysis scale is judged on its
        full-resolution pixels; a :class:`Decoded` needs them (:meth:`decode` with that scale): ValueError if not.
        """
        scale = self._scale(scale)
        if isinstance(item, Decoded):
            decoded = item
        elif isinstance(item, (str, os.PathLike)):
            decoded = self.decode(item, scale)
        else:
            decoded = decoded_array(to_gray(item), self.analysis_side, keep_full=scale != "screen")
        content = decoded.content if decoded.content is not None else self.classify(decoded.pixels)
        # 'auto' judges a document at native scale only with a model that has a native-scale meta-network.
        native = scale == "native" or (scale == "auto" and content == "document" and self.meta_native is not None)
        if native and _reduced(decoded):
            if decoded.full is not None:
                if self.meta_native is None:
                    raise ValueError("this model has no native-scale meta-network (final_model/"
                                     f"{NATIVE_META}.onnx): retrain it with train.py, or judge at scale 'screen'")
                job, cell, extra = prepare_native(decoded.full, decoded.pixels, self.patch_size)
                return Prepared(decoded, job, "native", content, cell, extra)
            if scale == "native":
                raise ValueError("the image was decoded without its full-resolution pixels: decode it with "
                                 "scale='native'")
            native = False  # 'auto': decode() found a photo in these same pixels
        # an image no larger than the analysis scale is the same at both scales: judged (and said) 'screen'
        return Prepared(decoded, prepare_patches(decoded.pixels, self.patch_size), "screen", content)

    def score(self, prepared: Sequence[Prepared]) -> list[np.ndarray]:
        """Step 2: each image's CNN scores, float32 (patch_count, 1 + EMBED_DIM), from one CNN call (joined with
        other threads' calls when :attr:`batching`)."""
        return score_jobs([p.job for p in prepared], self.cnn)

    def finish(self, prepared: Sequence[Prepared], scores: Sequence[np.ndarray], with_map: bool = True
               ) -> list[BlurResult]:
        """Step 3: the results of ``prepared`` from their CNN ``scores`` (one meta-network and one kind-head call)."""
        if not prepared:
            return []
        feats, probs = job_matrix([p.job for p in prepared], scores)
        grays = [p.decoded.pixels for p in prepared]
        sizes = [(p.decoded.width, p.decoded.height) for p in prepared]
        grids = [p.job.grid for p in prepared]
        blur = np.empty(len(prepared), np.float32)
        screen = [i for i, p in enumerate(prepared) if p.scale == "screen"]
        native = [i for i, p in enumerate(prepared) if p.scale == "native"]
        if screen:
            blur[screen] = np.clip(np.asarray(self.meta(feats[screen])).reshape(-1), 0.0, 1.0)
        if native:
            x = native_inputs(feats[native], [prepared[i].extra for i in native])
            blur[native] = np.clip(np.asarray(self.meta_native(x)).reshape(-1), 0.0, 1.0)
        blur = self._agreed(feats, blur)
        flats = [no_detail(g) for g in grays]
        labels = ["flat" if flat else "blurry" if prob >= self.threshold else "sharp"
                  for flat, prob in zip(flats, blur)]
        noise = np.expm1(feats[:, NOISE_INDEX].astype(np.float64))  # σ at the analysis scale, or at full size (native)
        # the kind head reads the analysis picture, so it gets that picture's noise
        at_analysis = [noise_sigma(g) if p.scale == "native" else noise[i]
                       for i, (g, p) in enumerate(zip(grays, prepared))]
        kinds = self._kinds(grays, sizes, np.asarray(at_analysis, np.float64), labels)
        results = []
        for i, (gray, (w, h), gr, p, prob, f) in enumerate(zip(grays, sizes, grids, probs, blur, feats)):
            flat = flats[i]
            dec = prepared[i].decoded
            origin, side = gr.origin, gr.size
            if prepared[i].scale == "native" and dec.full is not None:  # cells of the full image, placed on this one
                to_analysis = min(gray.shape) / min(dec.full.shape)
                origin = (round(gr.origin[0] * to_analysis), round(gr.origin[1] * to_analysis))
                side = max(1, round(prepared[i].cell * to_analysis))
            if flat:
                sigma = None
            elif prepared[i].scale == "native":  # measured on full-resolution strips already (native.full_noise)
                sigma = float(noise[i])
            else:
                sigma = image_noise_sigma(float(noise[i]), (w, h), gray.shape[::-1], dec.draft, dec.native)
            results.append(BlurResult(
                blur_probability=None if flat else float(prob),
                label=labels[i],
                laplacian_var=float(np.expm1(f[LAPVAR_INDEX])),
                width=int(w), height=int(h),
                cnn_probability=float(f[0]),
                blur_map=blur_map(gr, p) if with_map else None,
                grid_origin=origin, patch_size=side, flat=flat,
                noise_sigma=sigma, kind_estimate=kinds.get(i),
                scale=prepared[i].scale, content=None if flat else prepared[i].content,
                **(kinds.get(i, {}) if labels[i] == "blurry" else {}),
            ))
        return results

    def _agreed(self, feats: np.ndarray, blur: np.ndarray) -> np.ndarray:
        """``blur`` raised to the threshold where both parts say blurry beyond doubt (:data:`AGREED_BLURRY`): then
        the ensemble never says sharp, whatever the meta-network makes of the rest of the vector."""
        lap_limit, cnn_limit = AGREED_BLURRY
        agreed = (np.expm1(feats[:, LAPVAR_INDEX]) <= lap_limit) & (feats[:, 0] >= cnn_limit)
        return np.where(agreed, np.maximum(blur, self.threshold), blur).astype(np.float32)

    def _predict(self, prepared: Sequence[Prepared], with_map: bool) -> list[BlurResult]:
        return self.finish(prepared, self.score(prepared), with_map)

    def _kinds(self, grays, sizes, noise, labels) -> dict[int, dict]:
        """The kind fields (BlurResult keyword arguments) of each image that is not flat, by index, from one
        kind-head call for all of them (the features cost about 3 % of a scan)."""
        scored = [i for i, label in enumerate(labels) if label != "flat"]
        if self.kind is None or not scored:
            return {}
        pairs = [kind_features(grays[i], float(noise[i])) for i in scored]
        est = self.kind(np.stack([x for x, _ in pairs]), np.array([ref for _, ref in pairs]))
        out = {}
        for k, i in enumerate(scored):
            kind, probability = est.kind(k)
            # Analysis-scale pixels to the original's: the analysis scale keeps the aspect ratio.
            scale = min(sizes[i]) / min(grays[i].shape)
            out[i] = {"blur_kind": kind, "blur_kind_probability": probability,
                      "motion_angle": float(est.angle[k]) if kind == "motion" else None,
                      "blur_extent_px": float(est.extent[k]) * scale}
        return out
