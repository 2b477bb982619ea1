"""The from-scratch patch CNN: architecture, training patches, tf.data input and training with callbacks.

The CNN sees full-resolution 96 × 96 grey patches at the analysis scale, never a thumbnail of the photo, and
outputs the probability that the patch is blurred.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .augment import random_blur
from .camera_effects import MAX_NOISE_SIGMA, random_camera, sensor_noise
from .focus import laplacian_variance
from .patches import PATCH_SIZE, extract_patches

EMBED_DIM = 32
"""Width of the CNN's last hidden layer, the patch embedding the meta-network also reads."""


def build_cnn(patch_size: int = PATCH_SIZE, width: float = 1.0) -> "keras.Model":
    """Patch classifier: (N, P, P, 1) float32 in [0, 1] → (N, 1) blur probability.

    ``width`` scales every layer's filter count (1.0: 16, 32, 64, 96); the cost grows about as its square.

    Each patch is standardised first (a LayerNormalization without scale or offset), so the network judges the
    shape of edges, not exposure. The first convolution runs at full resolution, where mild blur shows; the
    second is strided to keep inference cheap enough for folder scans (about 40 M multiply-adds a patch).
    """
    import keras
    from keras import layers

    def conv(x, filters, kernel=3, strides=1):
        x = layers.Conv2D(int(round(filters * width)), kernel, strides=strides, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU()(x)

    inputs = keras.Input((patch_size, patch_size, 1), name="patch")
    x = layers.LayerNormalization(axis=[1, 2, 3], center=False, scale=False, epsilon=1e-4)(inputs)
    x = conv(x, 16)
    x = conv(x, 32, strides=2)
    x = layers.MaxPooling2D()(x)
    x = conv(x, 64)
    x = layers.MaxPooling2D()(x)
    x = conv(x, 96)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    x = layers.Dense(EMBED_DIM, activation="relu")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="blur")(x)
    return keras.Model(inputs, outputs, name="patch_cnn")


def scoring_model(cnn: "keras.Model") -> "keras.Model":
    """The trained CNN as it is exported and run: (N, P, P, 1) → (N, 1 + EMBED_DIM) float32, the blur probability
    followed by the patch's embedding (the last hidden layer), from one forward pass.

    The meta-network reads how the patches look to the CNN, not only the verdict: over five scene splits the
    embedding's mean and spread cut its log loss on unseen scenes (README, "How this model was chosen").
    """
    import keras
    from keras import layers

    outputs = layers.Concatenate(name="blur_and_embedding")([cnn.output, cnn.get_layer("blur").input])
    return keras.Model(cnn.input, outputs, name="patch_cnn_scoring")


@dataclass
class PatchSet:
    """Training patches: ``x`` uint8 (M, P, P), ``y`` int8 (M,) with 1 = blurred, ``synthetic`` bool (M,)."""

    x: np.ndarray
    y: np.ndarray
    synthetic: np.ndarray


def sample_patches(
    images: list[np.ndarray],
    labels: np.ndarray,
    per_image: int = 16,
    synthetic_blur: bool = True,
    seed: int = 0,
    patch_size: int = PATCH_SIZE,
) -> PatchSet:
    """Draw up to ``per_image`` textured patches from each grey image, labelled with the image's label.

    From sharp photos the patches come from the most detailed half (the part in focus), so a soft background does
    not teach the CNN that blur is sharp. With ``synthetic_blur``, each sharp photo also yields a copy with random
    defocus, Gaussian or motion blur, whose patches are labelled blurred; a quarter of those copies get sensor noise
    before the blur, so that noise smoothed by blur is still seen as blur.
    """
    rng = np.random.default_rng(seed)
    xs, ys, syn = [], [], []

    def take(gray, label, synthetic):
        grid = extract_patches(gray, patch_size)
        idx = np.flatnonzero(grid.textured)
        if label == 0 and len(idx) > 1:
            detail = np.array([laplacian_variance(grid.patches[i]) for i in idx])
            idx = idx[detail >= np.median(detail)]
        if len(idx) == 0:
            return
        idx = rng.choice(idx, size=min(per_image, len(idx)), replace=False)
        xs.append(grid.patches[idx])
        ys.append(np.full(len(idx), label, np.int8))
        syn.append(np.full(len(idx), synthetic))

    for gray, label in zip(images, labels):
        take(gray, int(label), False)
        if synthetic_blur and label == 0:
            source = gray
            if rng.random() < 0.25:
                source = sensor_noise(gray, MAX_NOISE_SIGMA * float(rng.random()), rng)
            take(random_blur(source, rng), 1, True)
    return PatchSet(np.concatenate(xs), np.concatenate(ys), np.concatenate(syn))


def camera_batch(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """camera_effects.random_camera on each patch of a uint8 (B, P, P, 1) batch, fresh draws every call."""
    out = np.empty_like(x)
    for i in range(len(x)):
        out[i, ..., 0] = random_camera(x[i, ..., 0], rng)
    return out


def make_dataset(patches: PatchSet, batch_size: int, augment: bool, seed: int = 0, camera: bool = True):
    """tf.data pipeline: shuffle, flips and 90° turns, then (with ``camera``) a fresh chain of camera effects on
    every patch each epoch (exposure, sensor noise, noise reduction, JPEG: camera_effects.random_camera), batching,
    prefetch. Sharp and blurred patches get the same effects, so none of them tells the classes apart."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((patches.x[..., None], patches.y.astype(np.float32)))
    if augment:
        ds = ds.shuffle(len(patches.y), seed=seed, reshuffle_each_iteration=True)

    def turn(x, y):
        x = tf.image.random_flip_left_right(x)
        x = tf.image.random_flip_up_down(x)
        return tf.image.rot90(x, k=tf.random.uniform([], 0, 4, dtype=tf.int32)), y

    rng = np.random.default_rng(seed)

    def effects(x, y):
        out = tf.numpy_function(lambda b: camera_batch(b, rng), [x], tf.uint8, stateful=True)
        return tf.ensure_shape(out, x.shape), y

    def scale(x, y):
        return tf.cast(x, tf.float32) / 255.0, y

    if augment:
        ds = ds.map(turn, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size)
    if augment and camera:
        ds = ds.map(effects, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.map(scale, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def train_cnn(
    train: PatchSet,
    val: PatchSet | None,
    out_dir: str | Path,
    epochs: int = 14,
    batch_size: int = 128,
    learning_rate: float = 2e-3,
    patience: int = 5,
    seed: int = 0,
    verbose: int = 2,
    on_epoch=None,
    width: float = 1.0,
    camera: bool = True,
):
    """Fit build_cnn(width=width) on ``train``, early-stopped on ``val`` ROC AUC; returns (best Keras model, epochs run).

    AUC rather than loss picks the checkpoint: the meta-network only needs the CNN to rank patches well, and
    the loss on weakly labelled validation patches swings with batch-norm statistics from epoch to epoch.
    With ``val`` None, all ``epochs`` run and the last one is kept (the cosine schedule ends there). ``camera``:
    train on patches with random camera effects (make_dataset).

    Writes to ``out_dir``: ``cnn.keras`` (best checkpoint) and ``training_log.csv`` (one row an epoch). Uses a GPU
    when TensorFlow sees one. ``on_epoch(epoch, logs)``, if given, is called after each epoch (1-based, with the
    epoch's metrics), for progress reports.
    """
    import keras

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    model = build_cnn(train.x.shape[1], width)
    steps = max(1, int(np.ceil(len(train.y) / batch_size))) * epochs
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps, alpha=0.05)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="binary_crossentropy",
        metrics=["accuracy", keras.metrics.AUC(name="auc")],
    )
    pos = float(train.y.mean())
    class_weight = {0: 0.5 / (1 - pos), 1: 0.5 / pos}
    checkpoint = out_dir / "cnn.keras"
    callbacks = [keras.callbacks.CSVLogger(out_dir / "training_log.csv"), keras.callbacks.TerminateOnNaN()]
    if val is None:
        callbacks.append(keras.callbacks.ModelCheckpoint(checkpoint))
    else:
        callbacks += [
            keras.callbacks.ModelCheckpoint(checkpoint, monitor="val_auc", mode="max", save_best_only=True),
            keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=patience, restore_best_weights=True),
        ]
    if on_epoch is not None:
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: on_epoch(e + 1, dict(logs or {}))))
    history = model.fit(
        make_dataset(train, batch_size, augment=True, seed=seed, camera=camera),
        validation_data=None if val is None else make_dataset(val, 512, augment=False),
        epochs=epochs,
        class_weight=class_weight,
        callbacks=callbacks,
        verbose=verbose,
    )
    return model, len(history.history["loss"])
