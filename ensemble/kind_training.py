"""Training and judging the kind head (ensemble.blur_kind): synthetic blur of known kind, extent and angle on sharp
photos, real kind labels where a dataset has them, three small dense networks, one ONNX graph.

A training row is one image's kind features with what is known about its blur: the kind (0 defocus, 1 motion), the
extent in analysis-scale pixels and the motion's screen angle (NaN where unknown: a real photo from a
``motion_blurred/`` folder has a kind but no measured length). Each network learns from the rows that have its
target: P(motion) from all, log extent and the angle correction from the synthetic ones (the angle from motion rows
only). Their input standardisation is a frozen layer, and the three are joined into one graph with one (N, 4)
output, so ``kind.onnx`` needs no side file. Keras (any backend: TensorFlow, JAX, torch) is imported only inside
the fitting functions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .augment import apply_blur
from .blur_kind import KIND_FEATURE_NAMES, KindEstimate, decode_output, kind_features, kind_of_source, screen_angle
from .camera_effects import random_camera
from .focus import noise_sigma

MOTION_LENGTH = (3.0, 40.0)
"""Motion blur lengths drawn for training, analysis-scale pixels (log-uniform)."""
DEFOCUS_RADIUS = (1.0, 8.0)
"""Defocus disk radii drawn for training, analysis-scale pixels (log-uniform)."""
GAUSSIAN_SIGMA = (0.7, 4.0)
"""Gaussian blur sigmas drawn for training (log-uniform); counted as defocus of radius 2 σ (the disk of the same
second moment: a disk of radius r has variance r² / 4 along each axis)."""
KIND_SHARES = {"motion": 0.5, "defocus": 0.35, "gaussian": 0.15}
"""How often each kernel is drawn."""

VISIBLE = {"motion": 6.0, "defocus": 2.0, "gaussian": 1.0}
"""Blur at least this strong (motion length, disk radius, Gaussian sigma; analysis-scale pixels) is "clearly
visible" on the 640-pixel analysis image: the rows the kind-accuracy and extent targets are measured on."""
ANGLE_MIN_LENGTH = 8.0
"""The angle target is measured on motion blur longer than this (analysis-scale pixels)."""
ANGLE_TOLERANCE = 15.0
EXTENT_FACTOR = 1.5


@dataclass
class KindRows:
    """Kind-head rows: ``x`` float32 (N, K) features, ``ref`` (N,) reference angles, ``kind`` int (N,) 0 defocus /
    1 motion, ``extent`` (N,) analysis-scale pixels, ``angle`` (N,) screen degrees (NaN unknown), ``strength`` (N,)
    the kernel's own parameter and ``kernel`` (N,) its name ('motion', 'defocus', 'gaussian', '' for a real photo),
    ``scene`` (N,) and ``camera`` bool (N,): camera effects were applied after the blur."""

    x: np.ndarray
    ref: np.ndarray
    kind: np.ndarray
    extent: np.ndarray
    angle: np.ndarray
    strength: np.ndarray
    kernel: np.ndarray
    scene: np.ndarray
    camera: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def __len__(self) -> int:
        return len(self.kind)

    def subset(self, idx) -> "KindRows":
        return KindRows(**{k: getattr(self, k)[idx] for k in self.__dataclass_fields__})

    @property
    def visible(self) -> np.ndarray:
        """bool (N,): synthetic blur at least VISIBLE for its kernel, and every real blurry photo."""
        limits = np.array([VISIBLE.get(k, 0.0) for k in self.kernel])
        return self.strength >= limits

    @staticmethod
    def join(parts: list["KindRows"]) -> "KindRows":
        parts = [p for p in parts if len(p)]
        if not parts:
            return empty_rows()
        return KindRows(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in KindRows.__dataclass_fields__})


def empty_rows() -> KindRows:
    z = np.zeros(0)
    return KindRows(np.zeros((0, len(KIND_FEATURE_NAMES)), np.float32), z, z.astype(int), z, z, z,
                    np.zeros(0, "<U8"), np.zeros(0, "<U64"), z.astype(bool))


def draw_blur(rng: np.random.Generator) -> tuple[str, float, float]:
    """(kernel name, strength, kernel angle in augment.motion_kernel's convention) of one random blur."""
    names = list(KIND_SHARES)
    name = names[int(rng.choice(len(names), p=list(KIND_SHARES.values())))]
    lo, hi = {"motion": MOTION_LENGTH, "defocus": DEFOCUS_RADIUS, "gaussian": GAUSSIAN_SIGMA}[name]
    strength = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return name, strength, float(rng.uniform(0.0, 180.0)) if name == "motion" else 0.0


def synthetic_rows(images, scenes, copies: int, seed: int, camera_share: float = 0.5, progress=None) -> KindRows:
    """``copies`` random blurs of each uint8 (H, W) sharp image, each followed by random camera effects
    (camera_effects.random_camera) with probability ``camera_share``. Deterministic for a given ``seed``."""
    rng = np.random.default_rng([seed % 2**32, 21])
    rows = {k: [] for k in ("x", "ref", "kind", "extent", "angle", "strength", "kernel", "scene", "camera")}
    order = [(i, c) for i in range(len(images)) for c in range(copies)]
    for i, _ in (progress(order) if progress else order):
        name, strength, kernel_angle = draw_blur(rng)
        blurred = apply_blur(images[i], name, strength, kernel_angle)
        cam = bool(rng.random() < camera_share)
        if cam:
            blurred = random_camera(blurred, rng)
        x, ref = kind_features(blurred, noise_sigma(blurred))
        rows["x"].append(x)
        rows["ref"].append(ref)
        rows["kind"].append(int(name == "motion"))
        rows["extent"].append(2.0 * strength if name == "gaussian" else strength)
        rows["angle"].append(screen_angle(kernel_angle) if name == "motion" else np.nan)
        rows["strength"].append(strength)
        rows["kernel"].append(name)
        rows["scene"].append(str(scenes[i]))
        rows["camera"].append(cam)
    return _rows(rows)


def real_rows(images, sources, scenes) -> KindRows:
    """Rows for the photos whose class folder names their kind (kind_of_source); the others are left out."""
    rows = {k: [] for k in ("x", "ref", "kind", "extent", "angle", "strength", "kernel", "scene", "camera")}
    for img, source, scene in zip(images, sources, scenes):
        kind = kind_of_source(source)
        if kind is None:
            continue
        x, ref = kind_features(img, noise_sigma(img))
        for key, value in (("x", x), ("ref", ref), ("kind", int(kind == "motion")), ("extent", np.nan),
                           ("angle", np.nan), ("strength", np.inf), ("kernel", ""), ("scene", str(scene)),
                           ("camera", False)):
            rows[key].append(value)
    return _rows(rows)


def _rows(rows: dict) -> KindRows:
    if not rows["x"]:
        return empty_rows()
    return KindRows(x=np.asarray(rows["x"], np.float32), ref=np.asarray(rows["ref"], float),
                    kind=np.asarray(rows["kind"], int), extent=np.asarray(rows["extent"], float),
                    angle=np.asarray(rows["angle"], float), strength=np.asarray(rows["strength"], float),
                    kernel=np.asarray(rows["kernel"], "<U8"), scene=np.asarray(rows["scene"]),
                    camera=np.asarray(rows["camera"], bool))


# -- judging -------------------------------------------------------------------------------------------------------
def angle_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Absolute difference of two axis angles in degrees, in [0, 90] (0 and 180 are the same streak)."""
    d = np.abs(np.asarray(a, float) - np.asarray(b, float)) % 180.0
    return np.minimum(d, 180.0 - d)


def kind_metrics(est: KindEstimate, rows: KindRows) -> dict:
    """The kind figures of ``est`` against ``rows`` (same order), on the clearly visible rows (VISIBLE).

    ``kind``: n, accuracy, confusion [[defocus→defocus, defocus→motion], [motion→defocus, motion→motion]];
    ``angle``: motion rows longer than ANGLE_MIN_LENGTH with a known angle: n, share within ANGLE_TOLERANCE degrees,
    median error; ``extent``: rows with a known extent: n, share within a factor EXTENT_FACTOR, median of
    estimate / truth. Empty groups give n 0 and None figures.
    """
    vis = rows.visible
    pred = (est.p_motion >= 0.5).astype(int)
    truth = rows.kind
    conf = [[int(np.sum(vis & (truth == t) & (pred == p))) for p in (0, 1)] for t in (0, 1)]
    n = int(vis.sum())
    out = {"kind": {"n": n, "accuracy": _share(pred[vis] == truth[vis]), "confusion": conf}}
    motion = vis & (truth == 1) & np.isfinite(rows.angle) & (rows.strength > ANGLE_MIN_LENGTH)
    err = angle_error(est.angle[motion], rows.angle[motion])
    out["angle"] = {"n": int(motion.sum()), "within_15": _share(err <= ANGLE_TOLERANCE),
                    "median_error": _median(err), "min_length": ANGLE_MIN_LENGTH}
    known = vis & np.isfinite(rows.extent)
    ratio = est.extent[known] / rows.extent[known]
    out["extent"] = {"n": int(known.sum()), "within_1_5x": _share(np.abs(np.log(ratio)) <= np.log(EXTENT_FACTOR)),
                     "median_ratio": _median(ratio)}
    return out


def _share(mask: np.ndarray) -> float | None:
    return None if mask.size == 0 else round(float(np.mean(mask)), 4)


def _median(v: np.ndarray) -> float | None:
    return None if v.size == 0 else round(float(np.median(v)), 4)


# -- fitting -------------------------------------------------------------------------------------------------------
HEADS = ("kind", "extent", "angle")


def _head(standardised, name: str, hidden: tuple[int, ...], dropout: float, l2: float):
    import keras
    from keras import layers

    x = standardised
    for k, width in enumerate(hidden):
        x = layers.Dense(width, activation="relu", kernel_regularizer=keras.regularizers.l2(l2),
                         name=f"{name}_dense{k}")(x)
        x = layers.Dropout(dropout, name=f"{name}_dropout{k}")(x)
    if name == "kind":
        return layers.Dense(1, activation="sigmoid", name="p_motion")(x)
    if name == "extent":
        return layers.Dense(1, name="log_extent")(x)
    return layers.Dense(2, name="angle_correction")(x)


def build_heads(mean: np.ndarray, std: np.ndarray, hidden=(32, 16), dropout: float = 0.1, l2: float = 1e-4):
    """(inputs, {head: output tensor}) sharing one frozen standardisation layer; see fit_kind_head."""
    import keras
    from keras import layers

    inputs = keras.Input((len(mean),), name="kind_features")
    standardise = layers.Dense(len(mean), trainable=False, name="standardise")
    z = standardise(inputs)
    standardise.set_weights([np.diag(1.0 / std).astype(np.float32), (-mean / std).astype(np.float32)])
    return inputs, {name: _head(z, name, hidden, dropout, l2) for name in HEADS}


def _targets(rows: KindRows) -> dict:
    """Each head's (row mask, target array)."""
    delta = np.deg2rad(2.0 * (rows.angle - rows.ref))
    return {
        "kind": (np.ones(len(rows), bool), rows.kind.astype(np.float32)[:, None]),
        "extent": (np.isfinite(rows.extent), np.log(np.where(np.isfinite(rows.extent), rows.extent, 1.0))[:, None]),
        "angle": (np.isfinite(rows.angle), np.stack([np.cos(delta), np.sin(delta)], axis=1)),
    }


def _compile_fit(model, name, x, y, val, epochs: int, patience: int, learning_rate: float, seed: int):
    """Fit one head; returns the epochs it ran to (the best validation epoch when ``val`` is given)."""
    import keras

    keras.utils.set_random_seed(seed)
    loss = "binary_crossentropy" if name == "kind" else "mse"
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss)
    callbacks = []
    if val is not None:
        callbacks.append(keras.callbacks.EarlyStopping(patience=patience, restore_best_weights=True))
    hist = model.fit(x, y, validation_data=val, epochs=epochs, batch_size=256, verbose=0, callbacks=callbacks,
                     shuffle=True)
    losses = hist.history.get("val_loss") or hist.history["loss"]
    return int(np.argmin(losses)) + 1 if val is not None else len(losses)


def _fit_all(rows: KindRows, val: KindRows | None, epochs: dict, patience: int, learning_rate: float, seed: int,
             hidden, dropout, l2):
    """Fit the three heads on ``rows`` (early-stopped on ``val`` when given); returns (combined model, epochs)."""
    import keras
    from keras import layers

    mean = rows.x.mean(axis=0)
    std = np.sqrt(np.maximum(rows.x.var(axis=0), 1e-6))
    inputs, outs = build_heads(mean, std, hidden, dropout, l2)
    targets = _targets(rows)
    vtargets = _targets(val) if val is not None else None
    ran = {}
    for k, name in enumerate(HEADS):
        mask, y = targets[name]
        model = keras.Model(inputs, outs[name])
        v = None
        if vtargets is not None:
            vmask, vy = vtargets[name]
            v = (val.x[vmask], vy[vmask]) if vmask.any() else None
        ran[name] = _compile_fit(model, name, rows.x[mask], y[mask], v, epochs[name], patience, learning_rate,
                                 seed + k) if mask.any() else 0
    combined = keras.Model(inputs, layers.Concatenate(name="kind_head")([outs[n] for n in HEADS]), name="kind")
    return combined, ran


def predict(model, rows: KindRows) -> KindEstimate:
    """The combined Keras model's estimate for ``rows``."""
    import keras

    out = np.asarray(keras.ops.convert_to_numpy(model(rows.x, training=False)), np.float32)
    return decode_output(out, rows.ref)


@dataclass
class KindFit:
    """fit_kind_head's result: the combined model, each head's epochs, the out-of-fold estimate and its figures."""

    model: object
    epochs: dict
    fold_epochs: dict
    oof: KindEstimate
    validation: dict


def fit_kind_head(rows: KindRows, folds, max_epochs: int = 300, patience: int = 30, learning_rate: float = 3e-3,
                  seed: int = 0, hidden=(32, 16), dropout: float = 0.1, l2: float = 1e-4) -> KindFit:
    """Cross-validate over ``folds`` ((train_idx, val_idx) pairs, by scene), then fit on every row.

    Each head is early-stopped on its validation fold; the final heads train on all rows for the median of their
    folds' best epochs. ``validation`` holds kind_metrics of the out-of-fold estimates (all rows, and those with and
    without camera effects).
    """
    import keras

    oof = np.zeros((len(rows), 4), np.float32)
    fold_epochs = {name: [] for name in HEADS}
    for tr, va in folds:
        model, ran = _fit_all(rows.subset(tr), rows.subset(va), dict.fromkeys(HEADS, max_epochs), patience,
                              learning_rate, seed, hidden, dropout, l2)
        oof[va] = np.asarray(keras.ops.convert_to_numpy(model(rows.x[va], training=False)), np.float32)
        for name in HEADS:
            fold_epochs[name].append(ran[name])
    epochs = {name: max(1, int(np.median(v))) if v else max_epochs // 4 for name, v in fold_epochs.items()}
    model, _ = _fit_all(rows, None, epochs, patience, learning_rate, seed, hidden, dropout, l2)
    est = decode_output(oof, rows.ref)
    validation = {"all": kind_metrics(est, rows)}
    for label, mask in (("clean", ~rows.camera), ("camera_effects", rows.camera)):
        if mask.any():
            validation[label] = kind_metrics(_take(est, mask), rows.subset(mask))
    return KindFit(model, epochs, fold_epochs, est, validation)


def _take(est: KindEstimate, mask) -> KindEstimate:
    return KindEstimate(est.p_motion[mask], est.extent[mask], est.angle[mask])


__all__ = ["ANGLE_MIN_LENGTH", "DEFOCUS_RADIUS", "GAUSSIAN_SIGMA", "KindFit", "KindRows", "MOTION_LENGTH",
           "VISIBLE", "angle_error", "draw_blur", "fit_kind_head", "kind_metrics", "predict", "real_rows",
           "synthetic_rows"]
