"""The from-scratch patch CNN: architecture, training patches, the training input and training with callbacks.

The CNN sees full-resolution 96 × 96 grey patches at the analysis scale, never a thumbnail of the photo, and
outputs the probability that the patch is blurred.

It trains under any Keras 3 backend (``KERAS_BACKEND``: tensorflow, the default, jax or torch). Under TensorFlow
the input is a tf.data pipeline (make_dataset); under the others a ``keras.utils.PyDataset`` (PatchBatches) with the
same augmentation. On a GPU the camera effects run in worker processes (CameraPool), so that the numpy work does
not starve the device, and mixed precision is used where the GPU supports it (resolve_precision). The saved and
exported model is always float32.
"""
from __future__ import annotations

import itertools
import math
import os
import time
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
    # float32 whatever the global dtype policy: under mixed precision the probability and the loss stay float32.
    outputs = layers.Dense(1, activation="sigmoid", name="blur", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="patch_cnn")


def float32_copy(cnn: "keras.Model", patch_size: int, width: float) -> "keras.Model":
    """``cnn`` (trained under any dtype policy) rebuilt under float32 with the same weights: what is saved, scored
    and exported. Mixed-precision layers keep float32 variables, so no weight loses precision."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        copy = build_cnn(patch_size, width)
    finally:
        keras.config.set_dtype_policy(previous)
    copy.set_weights(cnn.get_weights())
    return copy


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


# -- the training input ---------------------------------------------------------------------------------------------
def _camera_part(x: np.ndarray, key: tuple) -> np.ndarray:
    return camera_batch(x, np.random.default_rng(key))


class CameraPool:
    """camera_batch spread over ``workers`` processes, in parts of ``part`` patches, each part with its own random
    stream seeded by (``key``, part number): the result does not depend on the number of workers.

    The camera effects are per-patch numpy and OpenCV work, about 3,300 patches/s on one core and mostly under
    Python's GIL, so threads do not scale them; on a GPU a single core would starve it. The workers are started
    with ``spawn`` (ensemble.processes: the training process may hold a CUDA context or JAX's threads) and import
    nothing but numpy, OpenCV and this package's camera effects.
    """

    def __init__(self, workers: int, part: int = 64):
        from .processes import spawn_pool

        self.workers, self.part = int(workers), int(part)
        self._pool = spawn_pool(self.workers)

    def __call__(self, x: np.ndarray, key: tuple) -> np.ndarray:
        """uint8 (B, P, P, 1) → the same with a fresh chain of camera effects on every patch."""
        from concurrent.futures.process import BrokenProcessPool

        try:
            futures = [self._pool.submit(_camera_part, x[a : a + self.part], (*key, k))
                       for k, a in enumerate(range(0, len(x), self.part))]
            return np.concatenate([f.result() for f in futures]) if futures else x.copy()
        except BrokenProcessPool as err:
            raise OSError(f"the camera-effect worker processes stopped ({err}); BLUR_CAMERA_WORKERS=0 runs the "
                          "effects in the training process instead") from None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "CameraPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def random_turns(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random left-right flip, up-down flip and 90° turn of each square patch of uint8 (B, P, P) ``x`` (a copy):
    the same augmentation as make_dataset's tf.image steps, in numpy."""
    x = x.copy()
    lr, ud = rng.random(len(x)) < 0.5, rng.random(len(x)) < 0.5
    x[lr] = x[lr, :, ::-1]
    x[ud] = x[ud, ::-1, :]
    k = rng.integers(0, 4, len(x))
    for turns in (1, 2, 3):
        sel = k == turns
        if sel.any():
            x[sel] = np.rot90(x[sel], turns, axes=(1, 2))
    return x


def make_dataset(patches: PatchSet, batch_size: int, augment: bool, seed: int = 0, camera: bool = True,
                 pool: CameraPool | None = None):
    """tf.data pipeline (TensorFlow backend): shuffle, flips and 90° turns, then (with ``camera``) a fresh chain of
    camera effects on every patch each epoch (exposure, sensor noise, noise reduction, JPEG:
    camera_effects.random_camera), batching, prefetch. Sharp and blurred patches get the same effects, so none of
    them tells the classes apart. With ``pool`` the camera effects run in its worker processes (on a GPU), else in
    tf.data's own threads. A set without augmentation (validation) is cached after its first pass."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((patches.x[..., None], patches.y.astype(np.float32)))
    if augment:
        ds = ds.shuffle(len(patches.y), seed=seed, reshuffle_each_iteration=True)

    def turn(x, y):
        x = tf.image.random_flip_left_right(x)
        x = tf.image.random_flip_up_down(x)
        return tf.image.rot90(x, k=tf.random.uniform([], 0, 4, dtype=tf.int32)), y

    rng = np.random.default_rng(seed)
    calls = itertools.count()

    def in_pool(b):
        return pool(b, (seed, next(calls)))

    def effects(x, y):
        fn = in_pool if pool is not None else (lambda b: camera_batch(b, rng))
        out = tf.numpy_function(fn, [x], tf.uint8, stateful=True)
        return tf.ensure_shape(out, x.shape), y

    def scale(x, y):
        return tf.cast(x, tf.float32) / 255.0, y

    if augment:
        ds = ds.map(turn, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size)
    if augment and camera:
        ds = ds.map(effects, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(scale, num_parallel_calls=tf.data.AUTOTUNE)
    if not augment:
        ds = ds.cache()
    return ds.prefetch(tf.data.AUTOTUNE)


class PatchBatches:
    """The backend-neutral training input (JAX, torch; TensorFlow too), with make_dataset's augmentation: batch
    ``i`` is float32 (B, P, P, 1) patches in [0, 1] and their float32 labels. Each epoch: a fresh shuffle, a random
    flip, flip and 90° turn of every patch, a fresh chain of camera effects (with ``camera``; in ``pool``'s worker
    processes when given), then uint8 → float32 / 255. Batch ``i`` of epoch ``e`` draws from its own random stream
    (``seed``, ``e``, ``i``), so the batches do not depend on which thread makes them or in what order. Without
    ``augment`` (validation) the patches come in order, as they are.

    Plain Python, so it can be timed without Keras; patch_batches() gives the ``keras.utils.PyDataset`` that fit
    takes."""

    def __init__(self, patches: PatchSet, batch_size: int, augment: bool, seed: int = 0, camera: bool = True,
                 pool: CameraPool | None = None):
        self.x, self.y = patches.x, patches.y.astype(np.float32)
        self.batch_size, self.augment, self.seed = int(batch_size), augment, int(seed) % 2**32
        self.camera, self.pool = camera, pool
        self.epoch = 0
        self._order = self._shuffle()

    def _shuffle(self) -> np.ndarray:
        if not self.augment:
            return np.arange(len(self.y))
        return np.random.default_rng([self.seed, 31, self.epoch]).permutation(len(self.y))

    def __len__(self) -> int:
        return max(1, math.ceil(len(self.y) / self.batch_size))

    def __getitem__(self, i: int):
        idx = self._order[i * self.batch_size : (i + 1) * self.batch_size]
        x = self.x[idx]
        if self.augment:
            key = (self.seed, self.epoch, int(i))
            rng = np.random.default_rng(key)
            x = random_turns(x, rng)
            if self.camera:
                x = x[..., None]
                x = (self.pool(x, key) if self.pool is not None else camera_batch(x, rng))[..., 0]
        return (x.astype(np.float32) / np.float32(255.0))[..., None], self.y[idx]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._shuffle()


_KERAS_PATCH_BATCHES = None


def patch_batches(patches: PatchSet, batch_size: int, augment: bool, seed: int = 0, camera: bool = True,
                  pool: CameraPool | None = None, threads: int = 1):
    """PatchBatches as a ``keras.utils.PyDataset``; ``threads`` > 1 makes batches ahead on that many threads
    (Keras's enqueuer; the camera effects themselves run in ``pool``)."""
    import keras

    global _KERAS_PATCH_BATCHES
    if _KERAS_PATCH_BATCHES is None:
        class KerasPatchBatches(PatchBatches, keras.utils.PyDataset):
            def __init__(self, *args, threads: int = 1):
                keras.utils.PyDataset.__init__(self, workers=max(1, int(threads)), use_multiprocessing=False,
                                               max_queue_size=max(10, 2 * int(threads)))
                PatchBatches.__init__(self, *args)

        _KERAS_PATCH_BATCHES = KerasPatchBatches
    return _KERAS_PATCH_BATCHES(patches, batch_size, augment, seed, camera, pool, threads=threads)


# -- where and how it trains ---------------------------------------------------------------------------------------
def backend() -> str:
    """The Keras backend of this process: 'tensorflow', 'jax' or 'torch' (KERAS_BACKEND, fixed at keras import)."""
    import keras

    return keras.backend.backend()


def gpus() -> list[dict]:
    """The GPUs the Keras backend trains on: [{'name', 'compute_capability': (major, minor) or None}], [] on a CPU."""
    name = backend()
    out = []
    if name == "tensorflow":
        import tensorflow as tf

        for d in tf.config.list_physical_devices("GPU"):
            details = tf.config.experimental.get_device_details(d)
            out.append({"name": details.get("device_name") or d.name,
                        "compute_capability": details.get("compute_capability")})
    elif name == "jax":
        import jax

        for d in jax.devices():
            if d.platform != "cpu":
                cc = getattr(d, "compute_capability", None)
                out.append({"name": d.device_kind, "compute_capability": _capability(cc)})
    elif name == "torch":
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                out.append({"name": torch.cuda.get_device_name(i),
                            "compute_capability": tuple(torch.cuda.get_device_capability(i))})
    return out


def _capability(cc) -> tuple[int, int] | None:
    if cc is None:
        return None
    if isinstance(cc, str):
        major, _, minor = cc.partition(".")
        return int(major), int(minor or 0)
    return tuple(int(v) for v in cc)[:2]


def device_names(gpu_list: list[dict]) -> list[str]:
    """cnn.json's ``devices``: ['CPU'], or each GPU as 'GPU:0 NVIDIA H200 (compute capability 9.0)'."""
    if not gpu_list:
        return ["CPU"]
    out = []
    for i, g in enumerate(gpu_list):
        cc = g.get("compute_capability")
        out.append(f"GPU:{i} {g['name']}" + (f" (compute capability {cc[0]}.{cc[1]})" if cc else ""))
    return out


PRECISIONS = ("auto", "float32", "mixed")


def resolve_precision(precision: str, backend_name: str, gpu_list: list[dict]) -> str:
    """The Keras dtype policy for ``precision`` ('auto', 'float32' or 'mixed').

    'mixed' is bfloat16 compute on JAX and torch where the GPU has bfloat16 (compute capability 8.0 or more), else
    float16 (TensorFlow always: mixed_float16, with Keras's loss scaling); variables stay float32. 'auto' is
    'mixed' on GPUs of compute capability 7.0 or more (tensor cores), float32 on a CPU or an older GPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    caps = [g.get("compute_capability") or (0, 0) for g in gpu_list]
    if precision == "float32" or (precision == "auto" and (not caps or min(caps) < (7, 0))):
        return "float32"
    if backend_name != "tensorflow" and (not caps or min(caps) >= (8, 0)):  # on a CPU bfloat16 is the half type
        return "mixed_bfloat16"
    return "mixed_float16"


CPU_BATCH = 128
GPU_BATCH = 512
BASE_LEARNING_RATE = 2e-3
"""The peak learning rate at batch CPU_BATCH; larger batches get it times √(batch / CPU_BATCH)."""


def resolve_batch_size(batch_size, gpu_list: list[dict]) -> int:
    """``batch_size``, or for 'auto' (or None) CPU_BATCH on a CPU and GPU_BATCH on a GPU."""
    if batch_size in (None, "auto"):
        return GPU_BATCH if gpu_list else CPU_BATCH
    return int(batch_size)


def default_learning_rate(batch_size: int) -> float:
    """BASE_LEARNING_RATE × √(batch_size / CPU_BATCH), Adam's usual square-root scaling: 2e-3 at 128, 4e-3 at 512."""
    return BASE_LEARNING_RATE * math.sqrt(batch_size / CPU_BATCH)


MAX_CAMERA_WORKERS = 32
"""About 100,000 patches/s: more than the CNN's training step takes on one GPU."""


def camera_workers_for(gpu_list: list[dict]) -> int:
    """Camera-effect worker processes: none on a CPU (the model already uses every core and tf.data's threads do
    the effects, as before), on a GPU all cores but two (kept for the training loop and the batch threads), at
    most MAX_CAMERA_WORKERS. The environment variable BLUR_CAMERA_WORKERS, when set, is the number instead."""
    if os.environ.get("BLUR_CAMERA_WORKERS", "").strip().isdigit():
        return int(os.environ["BLUR_CAMERA_WORKERS"])
    if not gpu_list:
        return 0
    return max(1, min(MAX_CAMERA_WORKERS, (os.cpu_count() or 2) - 2))


@dataclass
class CnnFit:
    """train_cnn's result: the float32 model, the epochs run, each epoch's wall time (s), the input it used."""

    model: object
    epochs_run: int
    epoch_seconds: list
    input_pipeline: dict


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
    policy: str = "float32",
    camera_workers: int = 0,
) -> CnnFit:
    """Fit build_cnn(width=width) on ``train``, early-stopped on ``val`` ROC AUC; returns a CnnFit (the best model
    as float32, epochs run, seconds per epoch).

    AUC rather than loss picks the checkpoint: the meta-network only needs the CNN to rank patches well, and
    the loss on weakly labelled validation patches swings with batch-norm statistics from epoch to epoch.
    With ``val`` None, all ``epochs`` run and the last one is kept (the cosine schedule ends there). ``camera``:
    train on patches with random camera effects (make_dataset / patch_batches).

    ``policy``: the Keras dtype policy to train under ('float32', 'mixed_float16', 'mixed_bfloat16':
    resolve_precision); the model that is returned and saved is float32 whatever it is. ``camera_workers``: worker
    processes for the camera effects (0: in the input pipeline's own threads; camera_workers_for).

    Writes to ``out_dir``: ``cnn.keras`` (best checkpoint, float32) and ``training_log.csv`` (one row an epoch).
    Trains on whatever device the Keras backend uses (a GPU when it sees one). ``on_epoch(epoch, logs)``, if given,
    is called after each epoch (1-based, with the epoch's metrics), for progress reports.
    """
    import keras

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    previous_policy, pool = keras.config.dtype_policy(), None
    try:
        keras.config.set_dtype_policy(policy)
        pool = CameraPool(camera_workers) if camera and camera_workers > 0 else None
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
        seconds: list[float] = []
        clock = {}
        callbacks = [keras.callbacks.CSVLogger(out_dir / "training_log.csv"), keras.callbacks.TerminateOnNaN(),
                     keras.callbacks.LambdaCallback(
                         on_epoch_begin=lambda e, logs: clock.update(t=time.perf_counter()),
                         on_epoch_end=lambda e, logs: seconds.append(round(time.perf_counter() - clock["t"], 2)))]
        if val is None:
            callbacks.append(keras.callbacks.ModelCheckpoint(checkpoint))
        else:
            callbacks += [
                keras.callbacks.ModelCheckpoint(checkpoint, monitor="val_auc", mode="max", save_best_only=True),
                keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=patience,
                                              restore_best_weights=True),
            ]
        if on_epoch is not None:
            callbacks.append(keras.callbacks.LambdaCallback(
                on_epoch_end=lambda e, logs: on_epoch(e + 1, dict(logs or {}))))
        fit_kwargs = {}
        if backend() == "tensorflow":
            data = make_dataset(train, batch_size, augment=True, seed=seed, camera=camera, pool=pool)
            val_data = None if val is None else make_dataset(val, 512, augment=False)
            pipeline = {"kind": "tf.data", "camera_workers": pool.workers if pool else 0}
        else:
            threads = 1 if pool is None else min(8, max(2, pool.workers // 4))
            data = patch_batches(train, batch_size, augment=True, seed=seed, camera=camera, pool=pool,
                                 threads=threads)
            val_data = None if val is None else patch_batches(val, 512, augment=False)
            fit_kwargs["shuffle"] = False  # PatchBatches shuffles the patches themselves, every epoch
            pipeline = {"kind": "keras.utils.PyDataset", "camera_workers": pool.workers if pool else 0,
                        "batch_threads": threads}
        history = model.fit(
            data,
            validation_data=val_data,
            epochs=epochs,
            class_weight=class_weight,
            callbacks=callbacks,
            verbose=verbose,
            **fit_kwargs,
        )
    finally:
        keras.config.set_dtype_policy(previous_policy)
        if pool is not None:
            pool.close()
    if policy != "float32":
        # Saved, scored and exported in float32: rebuild it so, with the trained weights, over the checkpoint.
        model = float32_copy(model, train.x.shape[1], width)
        model.compile(loss="binary_crossentropy", metrics=["accuracy", keras.metrics.AUC(name="auc")])
        model.save(checkpoint)
    return CnnFit(model, len(history.history["loss"]), seconds, pipeline)
