"""The dense meta-network that turns one image's feature vector into one calibrated blur probability.

Input normalisation (a frozen Dense layer) and the calibration (a Platt-scaling Rescaling of the logit) are layers
of the model itself, so the exported file needs no side information. Cross-validation over scenes picks the number
of epochs and fits the calibration on out-of-fold predictions the network never trained on. A bag of such networks,
differing only in their random seed, is averaged inside one model, so the shipped result does not hang on one seed.

It trains on numpy arrays under any Keras 3 backend (TensorFlow, JAX, torch): nothing here calls a backend directly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EPS = 1e-6


def build_meta(
    n_features: int,
    mean: np.ndarray,
    variance: np.ndarray,
    hidden: tuple[int, ...] = (32, 16),
    dropout: float = 0.2,
    l2: float = 1e-3,
    calibration: tuple[float, float] = (1.0, 0.0),
    name: str = "meta",
) -> "keras.Model":
    """(N, n_features) float32 → (N, 1) blur probability = sigmoid(a · logit + b), with (a, b) = ``calibration``."""
    import keras
    from keras import layers

    inputs = keras.Input((n_features,), name="features")
    # Standardisation as a frozen Dense layer: Keras' Normalization layer exports its statistics to ONNX as extra
    # graph inputs, which ONNX Runtime then demands on every call.
    standardise = layers.Dense(n_features, trainable=False, name="standardise")
    x = standardise(inputs)
    for width in hidden:
        x = layers.Dense(width, activation="relu", kernel_regularizer=keras.regularizers.l2(l2))(x)
        x = layers.Dropout(dropout)(x)
    logit = layers.Dense(1, name="logit")(x)
    a, b = calibration
    logit = layers.Rescaling(scale=float(a), offset=float(b), name="platt")(logit)
    outputs = layers.Activation("sigmoid", name="blur_probability")(logit)
    model = keras.Model(inputs, outputs, name=name)
    std = np.sqrt(np.maximum(np.asarray(variance, np.float32), EPS))
    standardise.set_weights([np.diag(1.0 / std).astype(np.float32), (-np.asarray(mean) / std).astype(np.float32)])
    return model


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


def platt(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Fit sigmoid(a · logit + b) to labels by maximum likelihood (Newton steps on two parameters)."""
    a, b = 1.0, 0.0
    for _ in range(50):
        p = 1 / (1 + np.exp(-(a * logits + b)))
        g = np.array([np.sum((p - y) * logits), np.sum(p - y)])
        w = p * (1 - p) + EPS
        h = np.array([[np.sum(w * logits**2), np.sum(w * logits)], [np.sum(w * logits), np.sum(w)]])
        h += 1e-6 * np.eye(2)
        step = np.linalg.solve(h, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-8:
            break
    return float(a), float(b)


@dataclass
class MetaFit:
    """Result of fit_meta: the final model, its calibration, the chosen epochs and out-of-fold probabilities."""

    model: object
    calibration: tuple[float, float]
    epochs: int
    oof_probability: np.ndarray
    fold_epochs: list[int] = field(default_factory=list)


def fit_meta(
    x: np.ndarray,
    y: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    max_epochs: int = 400,
    patience: int = 40,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    hidden: tuple[int, ...] = (32, 16),
    dropout: float = 0.2,
    l2: float = 1e-3,
    seed: int = 0,
    name: str = "meta",
) -> MetaFit:
    """Train the meta-network on ``x`` float32 (N, F) and ``y`` (N,) in {0, 1}.

    ``folds`` are (train_idx, val_idx) pairs with scenes kept on one side. Each fold is early-stopped on its
    validation loss; the out-of-fold predictions give the Platt calibration; the final model is trained on all data
    for the median best epoch count and carries the calibration as its last layer. Rows that are in no fold's
    validation part only ever train: they get no out-of-fold prediction (NaN) and do not shape the calibration.
    """
    import keras

    y = np.asarray(y, dtype=np.float32)

    def fresh(train_x, calibration=(1.0, 0.0), for_training=True):
        model = build_meta(x.shape[1], train_x.mean(0), train_x.var(0), hidden, dropout, l2, calibration, name)
        if for_training:  # the shipped model stays uncompiled: no optimizer state saved with it
            model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy")
        return model

    oof = np.full(len(y), np.nan, dtype=np.float32)
    fold_epochs = []
    for k, (tr, va) in enumerate(folds):
        keras.utils.set_random_seed(seed + k)
        model = fresh(x[tr])
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
        hist = model.fit(x[tr], y[tr], validation_data=(x[va], y[va]), epochs=max_epochs,
                         batch_size=batch_size, callbacks=[stop], verbose=0)
        fold_epochs.append(int(np.argmin(hist.history["val_loss"])) + 1)
        oof[va] = keras.ops.convert_to_numpy(model(x[va], training=False))[:, 0]  # direct: no predict() retracing
    seen = ~np.isnan(oof)
    calibration = platt(_logit(oof[seen]), y[seen])
    epochs = int(np.median(fold_epochs))
    keras.utils.set_random_seed(seed)
    final = fresh(x)
    final.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0)
    # Rebuild with the calibration baked in, keeping the trained weights.
    calibrated = fresh(x, calibration, for_training=False)
    calibrated.set_weights(final.get_weights())
    oof_cal = 1 / (1 + np.exp(-(calibration[0] * _logit(oof) + calibration[1])))
    return MetaFit(calibrated, calibration, epochs, oof_cal.astype(np.float32), fold_epochs)


@dataclass
class BagFit:
    """Result of fit_bag: the averaged model, each member's MetaFit and the bag's out-of-fold probabilities."""

    model: object
    members: list[MetaFit]
    oof_probability: np.ndarray


def average_models(models: list, name: str = "meta_bag") -> "keras.Model":
    """One model whose output is the mean of ``models``' outputs on the same input, so a bag exports as one file."""
    import keras
    from keras import layers

    inputs = keras.Input(models[0].input_shape[1:], name="features")
    outputs = layers.Average(name="blur_probability")([m(inputs) for m in models])
    return keras.Model(inputs, outputs, name=name)


def fit_bag(x: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]], members: int = 5,
            seed: int = 0, **kwargs) -> BagFit:
    """``members`` calibrated meta-networks from fit_meta with seeds ``seed``, ``seed + 1``, …, averaged.

    Each member is calibrated on its own out-of-fold predictions, so their mean stays calibrated; the bag's
    out-of-fold probability is the mean of the members'. ``kwargs`` go to fit_meta.
    """
    if members < 1:
        raise ValueError(f"members must be at least 1, got {members}")
    fits = [fit_meta(x, y, folds, seed=seed + k, name=f"meta_{k}", **kwargs) for k in range(members)]
    model = fits[0].model if members == 1 else average_models([f.model for f in fits])
    oof = np.mean([f.oof_probability for f in fits], axis=0).astype(np.float32)
    return BagFit(model, fits, oof)
