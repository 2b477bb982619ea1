"""The five stages as library functions; each stage script parses its flags and makes one call here.

load_train / load_test → data/*.pkl;  train_cnn_stage → model/;  train_meta_stage → final_model/;
evaluate_stage → a report (table, JSON, plots). Stages return plain dicts; the scripts print them.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import time
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import datasets
from .camera_effects import random_camera
from .detector import META_DIR, BlurDetector, default_model_root
from .features import FEATURE_NAMES, feature_matrix
from .focus import laplacian_variance
from .fsutil import atomic_write
from .imageio import ANALYSIS_SIDE
from .metrics import best_threshold, classification_report, scene_bootstrap_auc
from .patches import PATCH_SIZE

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow is imported lazily below; keep its C++ chatter off


def _bar(desc: str, progress: bool):
    return partial(tqdm, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)


def _stats(start: float) -> dict:
    """Wall time (s) and peak resident memory (MB) of this process so far."""
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": round(time.time() - start, 1), "peak_rss_mb": round(peak_kb / 1024, 1)}


def portable_path(path: str | Path | None) -> str | None:
    """``path`` as a model's files may record it, without the layout of the machine it was made on.

    A relative path that does not climb out (``data/train.pkl``) is kept as given. Any other path is made
    relative to the repository when it lies inside it or beside it (``../shared/datasets/blur-photos-640``);
    elsewhere only its last part, the dataset's or file's name, is kept.
    """
    if path is None:
        return None
    p = Path(path)
    if not p.is_absolute() and ".." not in p.parts:
        return p.as_posix()
    full = Path(os.path.abspath(p))
    for base, prefix in ((REPO_ROOT, ""), (REPO_ROOT.parent, "../")):
        try:
            return prefix + full.relative_to(base).as_posix()
        except ValueError:
            pass
    return full.name


def _versions() -> dict:
    import cv2
    import sklearn

    out = {"python": platform.python_version(), "numpy": np.__version__, "opencv": cv2.__version__,
           "scikit-learn": sklearn.__version__}
    try:
        import importlib

        import keras

        backend = keras.backend.backend()  # its own version: TensorFlow is not imported under JAX or torch
        out.update(keras=keras.__version__, keras_backend=backend,
                   **{backend: getattr(importlib.import_module(backend), "__version__", "?")})
    except ImportError:
        pass
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return out


# -- stages 1 and 2: data ------------------------------------------------------------------------------------------
def load_split(data: str | Path | None, part: str, out: str | Path, layout: str | None = None,
               test_fraction: float = 0.2, seed: int = 0, side: int = ANALYSIS_SIDE, workers: int | None = None,
               progress: bool = True) -> dict:
    """Load one side ('train' or 'test') of a dataset and write it as a pickle.

    CSV and folder layouts are split by scene (``test_fraction`` of the scenes go to test, fixed ``seed``), so the
    two sides never share a scene. A CERTH TrainingSet is all 'train' and a CERTH EvaluationSet all 'test'.
    """
    start = time.time()
    root = Path(data) if data else datasets.DEFAULT_DATA
    if not root.exists():
        raise datasets.DatasetError(f"dataset not found: {root}")
    layout = layout or datasets.detect_layout(root)
    items = datasets.list_items(root, layout)
    split = None
    if layout in ("csv", "folders"):
        train_idx, test_idx = datasets.split_by_scene([it.scene for it in items], test_fraction, seed,
                                                       labels=[it.label for it in items])
        chosen = train_idx if part == "train" else test_idx
        items = [items[i] for i in chosen]
        split = {"test_fraction": test_fraction, "seed": seed, "scenes": len({it.scene for it in items})}
    elif (layout == "certh-train") != (part == "train"):
        raise datasets.DatasetError(f"{root} is a {layout} layout, which cannot serve as {part} data")
    loaded = datasets.load_dataset(items, side=side, progress=progress, workers=workers)
    if len(loaded) == 0:
        raise datasets.DatasetError(f"no readable images in {root}")
    extra = {"root": str(root), "layout": layout, "part": part, "split": split, "analysis_side": side,
             "fingerprint": datasets.fingerprint(loaded.meta)}
    datasets.save_pickle(loaded, out, extra)
    labels = np.asarray(loaded.labels)
    return {"stage": f"load {part}", "out": str(out), "layout": layout, "images": len(loaded),
            "blurry": int(labels.sum()), "sharp": int((labels == 0).sum()), "skipped": loaded.warnings,
            "sources": sorted({m["source"] for m in loaded.meta}), **_stats(start)}


# -- stage 3: the CNN ----------------------------------------------------------------------------------------------
def meta_holdout(data, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split the training pickle by scene into (cnn_fit_idx, meta_idx): the CNN never trains on meta_idx, so the
    meta-network can be judged there on the CNN's honest, not its memorised, outputs. ``fraction`` 0 keeps
    nothing back: every image trains the CNN and meta_idx is empty."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"meta_fraction must be at least 0 and below 1, got {fraction}")
    if fraction == 0:
        return np.arange(len(data), dtype=np.int64), np.zeros(0, np.int64)
    return datasets.split_by_scene([m["scene"] for m in data.meta], fraction, seed + 1, labels=data.labels)


def train_cnn_stage(train_pkl: str | Path, out_dir: str | Path, epochs: int = 14, batch_size: int | str = "auto",
                    learning_rate: float | None = None, patches_per_image: int = 16, synthetic_blur: bool = True,
                    meta_fraction: float = 0.0, patience: int = 5, seed: int = 0, verbose: int = 2,
                    patch_size: int = PATCH_SIZE, on_epoch=None, width: float = 1.0,
                    camera_effects: bool = True, precision: str = "auto", camera_workers: int | None = None) -> dict:
    """Train the patch CNN on the CNN part of ``train_pkl``; write model/cnn.keras, cnn.onnx, curves and cnn.json.

    ``patch_size``: side of the square patches in analysis-scale pixels (recorded in cnn.json, and used by the
    meta-network stage and the detector). ``width`` scales the CNN's filter counts (see cnn.build_cnn).
    ``camera_effects``: augment the patches with noise, exposure and JPEG (cnn.make_dataset).
    ``on_epoch(epoch, logs)`` is called after each epoch (progress reports).

    It trains under the Keras backend of the process (KERAS_BACKEND), on its GPU when it sees one (docs/gpu.md).
    ``batch_size`` 'auto': 128 on a CPU, 512 on a GPU; ``learning_rate`` None: 2e-3, times √(batch / 128) when the
    batch size is 'auto' too (4e-3 at 512).
    ``precision``: 'auto' (mixed on a GPU of compute capability 7.0 or more, else float32), 'float32' or 'mixed'
    (cnn.resolve_precision). ``camera_workers``: processes for the camera effects (None: cnn.camera_workers_for).
    cnn.onnx is written where this environment can export ONNX (TensorFlow with tf2onnx, JAX with jax2onnx, torch);
    elsewhere the result's ``onnx`` says why not, cnn.keras serves the later stages, and ``python -m
    ensemble.export`` writes it later.
    """
    from . import cnn as cnn_lib
    from .cnn import sample_patches, scoring_model, train_cnn
    from .plots import training_curves
    from .runtime import try_export_onnx

    start = time.time()
    out_dir = Path(out_dir)
    data = datasets.load_pickle(train_pkl)
    fit_idx, meta_idx = meta_holdout(data, meta_fraction, seed)
    labels = np.asarray(data.labels)
    train = sample_patches([data.images[i] for i in fit_idx], labels[fit_idx], patches_per_image, synthetic_blur, seed,
                           patch_size)
    val = None if len(meta_idx) == 0 else sample_patches([data.images[i] for i in meta_idx], labels[meta_idx],
                                                          patches_per_image, False, seed + 1, patch_size)
    backend, gpus = cnn_lib.backend(), cnn_lib.gpus()
    policy = cnn_lib.resolve_precision(precision, backend, gpus)
    auto_batch, batch_size = batch_size in (None, "auto"), cnn_lib.resolve_batch_size(batch_size, gpus)
    if learning_rate is None:  # scaled with the batch only where the batch size was chosen here too
        learning_rate = cnn_lib.default_learning_rate(batch_size) if auto_batch else cnn_lib.BASE_LEARNING_RATE
    workers = cnn_lib.camera_workers_for(gpus) if camera_workers is None else camera_workers
    fit = train_cnn(train, val, out_dir, epochs, batch_size, learning_rate, patience, seed, verbose, on_epoch, width,
                    camera_effects, policy, workers if camera_effects else 0)
    model, epochs_run = fit.model, fit.epochs_run
    onnx_note = try_export_onnx(scoring_model(model), out_dir / "cnn.onnx")
    training_curves(out_dir / "training_log.csv", out_dir / "training_curves.png")
    val_scores = {} if val is None else model.evaluate(*_xy(val), batch_size=512, verbose=0, return_dict=True)
    info = {
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "train_fingerprint": datasets.fingerprint(data.meta),
        "meta_fraction": meta_fraction, "seed": seed,
        "meta_scenes": sorted({data.meta[i]["scene"] for i in meta_idx}),
        "images": {"cnn_fit": int(len(fit_idx)), "meta_holdout": int(len(meta_idx))},
        "patches": {"train": int(len(train.y)), "train_synthetic": int(train.synthetic.sum()),
                    "val": 0 if val is None else int(len(val.y))},
        "hyperparameters": {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
                            "patches_per_image": patches_per_image, "synthetic_blur": synthetic_blur,
                            "patience": patience, "patch_size": int(train.x.shape[1]), "width": width,
                            "camera_effects": camera_effects},
        "epochs_run": epochs_run,
        "val_patch_metrics": {k: round(float(v), 4) for k, v in val_scores.items()},
        "devices": cnn_lib.device_names(gpus), "params": int(model.count_params()),
        "backend": backend, "precision": policy, "input_pipeline": fit.input_pipeline,
        "epoch_seconds": fit.epoch_seconds,
    }
    atomic_write(out_dir / "cnn.json", json.dumps(info, indent=1))
    return {"stage": "CNN", "out": str(out_dir), **{k: info[k] for k in ("images", "patches", "epochs_run",
            "val_patch_metrics", "devices", "params", "backend", "precision", "epoch_seconds")},
            "onnx": onnx_note or "written", **_stats(start)}


def _xy(patches):
    return (patches.x[..., None].astype(np.float32) / 255.0, patches.y.astype(np.float32))


# -- stage 4: the meta-network -------------------------------------------------------------------------------------
def train_meta_stage(train_pkl: str | Path, model_dir: str | Path, out_dir: str | Path, folds: int = 5,
                     max_epochs: int = 400, patience: int = 40, hidden: tuple[int, ...] = (32, 16),
                     dropout: float = 0.2, l2: float = 1e-3, learning_rate: float = 3e-3, seed: int = 0,
                     progress: bool = True, members: int = 5, camera_copies: int = 2) -> dict:
    """Train the meta-network; write final_model/meta.keras, meta.onnx and metadata.json (fingerprint, counts,
    hyper-parameters, validation metrics, thresholds, versions).

    It learns from every training image. Early stopping, the Platt calibration and the validation metrics use
    out-of-fold predictions over scene folds. When CNN.py held scenes back (``--meta-fraction``), the folds cover
    only those scenes and each fold also trains on all the CNN's own images, so the figures are honest. When it
    did not (the default), the folds cover every image. The CNN's outputs on its own photos look like its outputs
    on new ones (see README, "How the meta-network is trained"). ``members`` networks with seeds ``seed``,
    ``seed + 1``, … are trained this way and averaged (meta.fit_bag).

    ``camera_copies``: besides each image as it is, the network learns from that many copies with random camera
    effects (noise, exposure, noise reduction, JPEG: camera_effects.random_camera), with the image's label. A copy
    stays in its image's fold, so no scene is on both sides. The calibration is fitted on all out-of-fold rows;
    ``validation_metrics`` are those of the images as they are, ``camera_validation_metrics`` of the copies.
    """
    from .meta import fit_bag
    from .runtime import load_cnn, try_export_onnx

    start = time.time()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    data = datasets.load_pickle(train_pkl)
    cnn_info = json.loads((model_dir / "cnn.json").read_text())
    if cnn_info["train_fingerprint"] != datasets.fingerprint(data.meta):
        raise datasets.DatasetError(f"{train_pkl} is not the data {model_dir}/cnn.json was trained on; rerun CNN.py")
    out_dir.mkdir(parents=True, exist_ok=True)  # only once the inputs are known good: a failed run leaves nothing
    meta_scenes = set(cnn_info["meta_scenes"])
    # Nothing held back from the CNN (CNN.py --meta-fraction 0): the folds cover every image, and the validation
    # figures include the CNN's own photos, so they flatter its part.
    held = np.array([not meta_scenes or m["scene"] in meta_scenes for m in data.meta])
    idx, cnn_idx = np.flatnonzero(held), np.flatnonzero(~held)
    y_all = np.asarray(data.labels).astype(int)
    y = y_all[idx]
    cnn = load_cnn(model_dir)  # cnn.onnx, or cnn.keras where this environment could not export it
    patch_size = int(cnn_info["hyperparameters"].get("patch_size", PATCH_SIZE))
    x_all = feature_matrix(data.images, cnn, progress=_bar("features", progress), patch_size=patch_size)
    x = x_all[idx]
    copies = [feature_matrix(data.images, cnn, progress=_bar(f"camera copy {k + 1}", progress),
                             patch_size=patch_size, transform=partial(random_camera, rng=np.random.default_rng(
                                 [seed % 2**32, 25, k])))
              for k in range(camera_copies)]
    n = len(data)
    scenes = [data.meta[i]["scene"] for i in idx]
    fold_idx = [(np.concatenate([idx[tr], cnn_idx]), idx[va])
                for tr, va in datasets.scene_folds(scenes, folds, seed, labels=y)]

    def rows(images: np.ndarray) -> np.ndarray:  # an image's row and the rows of its camera copies
        return np.concatenate([images + k * n for k in range(1 + camera_copies)])

    fit = fit_bag(np.concatenate([x_all, *copies]), np.tile(y_all, 1 + camera_copies),
                  [(rows(tr), rows(va)) for tr, va in fold_idx], members, seed, max_epochs=max_epochs,
                  patience=patience, learning_rate=learning_rate, hidden=hidden, dropout=dropout, l2=l2)
    fit.model.save(out_dir / "meta.keras")
    onnx_note = try_export_onnx(fit.model, out_dir / "meta.onnx")

    # Baselines for test.py, tuned on training data only.
    all_lap = np.array([laplacian_variance(g) for g in tqdm(data.images, desc="laplacian", disable=not progress,
                                                                leave=False)])
    lap_threshold = best_threshold(all_lap, np.asarray(data.labels), blurry_below=True)
    cnn_mean = x[:, FEATURE_NAMES.index("cnn_mean")]
    cnn_threshold = best_threshold(cnn_mean, y)
    threshold = 0.5
    oof = fit.oof_probability[idx]
    val = classification_report(y, oof, oof >= threshold)
    camera_val = None
    if camera_copies:
        copy_oof = fit.oof_probability[rows(idx)[len(idx):]]
        camera_val = classification_report(np.tile(y, camera_copies), copy_oof, copy_oof >= threshold)
    metadata = {
        "name": out_dir.name if out_dir.name != META_DIR else "shipped",
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "threshold": threshold,
        "analysis_side": int(data.info.get("analysis_side", ANALYSIS_SIDE)),
        "feature_names": list(FEATURE_NAMES),
        "data": {"train_pkl": portable_path(train_pkl), "fingerprint": cnn_info["train_fingerprint"],
                 "root": portable_path(data.info.get("root")), "layout": data.info.get("layout"),
                 "split": _split_key(data.info.get("split")),
                 "images": len(data), "blurry": int(np.sum(data.labels)),
                 "cnn_fit_images": cnn_info["images"]["cnn_fit"], "meta_images": int(len(data)),
                 "meta_validation_images": int(len(idx)), "validated_on_cnn_photos": not meta_scenes},
        "cnn": {**{k: cnn_info[k] for k in ("hyperparameters", "epochs_run", "val_patch_metrics", "params", "devices")},
                "meta_fraction": cnn_info["meta_fraction"]},
        "meta": {"folds": folds, "max_epochs": max_epochs, "patience": patience, "hidden": list(hidden),
                 "dropout": dropout, "l2": l2, "learning_rate": learning_rate, "seed": seed, "members": members,
                 "camera_copies": camera_copies,
                 "bag": [{"seed": seed + k, "epochs": m.epochs, "fold_epochs": m.fold_epochs,
                          "calibration_platt": list(m.calibration)} for k, m in enumerate(fit.members)]},
        "baselines": {"laplacian_threshold": lap_threshold, "cnn_threshold": cnn_threshold},
        "validation_metrics": _round(val),
        "camera_validation_metrics": None if camera_val is None else _round(camera_val),
        "versions": _versions(),
    }
    atomic_write(out_dir / "metadata.json", json.dumps(metadata, indent=1))
    return {"stage": "train", "out": str(out_dir), "meta_images": int(len(data)), "validated_on": int(len(idx)),
            "members": members, "epochs": [m.epochs for m in fit.members],
            "validation": metadata["validation_metrics"],
            "camera_validation": metadata["camera_validation_metrics"],
            "laplacian_threshold": round(lap_threshold, 2), "onnx": onnx_note or "written", **_stats(start)}


def _split_key(split: dict | None) -> dict | None:
    """The part of a pickle's split record that names the split (the same on both sides)."""
    return None if not split else {"test_fraction": split.get("test_fraction"), "seed": split.get("seed")}


def _own_test_split(metadata: dict, info: dict) -> bool:
    """Whether a test pickle (its ``info``) is the held-out side of the split the model was trained on."""
    data = metadata.get("data", {})
    if info.get("part") != "test" or info.get("layout") not in ("csv", "folders"):
        return False
    if info.get("layout") != data.get("layout") or portable_path(info.get("root")) != portable_path(data.get("root")):
        return False
    split = _split_key(info.get("split"))
    return split is not None and data.get("split") in (None, split)  # None: a model from before splits were recorded


def _record_test_metrics(model_root: Path, entry: dict) -> str | None:
    """Write ``entry`` into model_root/final_model/metadata.json as ``test_metrics``, the figures that
    ``GET /api/models`` serves. Returns None, or why it could not (a read-only install, say)."""
    meta_file = model_root / META_DIR / "metadata.json"
    try:
        metadata = json.loads(meta_file.read_text(encoding="utf-8"))
        if metadata.get("test_metrics") != entry:
            metadata["test_metrics"] = entry
            atomic_write(meta_file, json.dumps(metadata, indent=1))
    except (OSError, ValueError) as err:
        return f"{meta_file}: {' '.join(str(err).split())}"
    return None


def _round(report: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in report.items()}


# -- stage 4b: the kind head ---------------------------------------------------------------------------------------
KIND_EVAL_SEED = 2100
"""Seed of the synthetic blur test.py puts on the held-out sharp photos (fixed, so every model meets the same)."""


def train_kind_stage(train_pkl: str | Path, out_dir: str | Path, copies: int = 4, camera_share: float = 0.5,
                     folds: int = 3, max_epochs: int = 300, patience: int = 30, seed: int = 0,
                     progress: bool = True) -> dict:
    """Train the kind head (blur kind, extent, motion angle: ensemble.blur_kind); write ``out_dir``/kind.onnx and
    kind.json. It needs neither the CNN nor the meta-network, so it can run alone on an existing model folder
    (``train.py --kind-only``).

    Its rows: ``copies`` synthetic blurs (defocus, Gaussian, motion of known radius, length and angle) of every
    sharp training photo, each followed by random camera effects with probability ``camera_share``, plus the
    photos whose class folder names their kind (``defocused_blurred/``, ``motion_blurred/``). The figures in
    kind.json are out-of-fold over ``folds`` scene folds; the shipped heads then train on every row.
    """
    from .blur_kind import KIND_FEATURE_NAMES, KIND_INFO, KIND_MODEL
    from .kind_training import (ANGLE_MIN_LENGTH, DEFOCUS_RADIUS, GAUSSIAN_SIGMA, KIND_SHARES, MOTION_LENGTH,
                                VISIBLE, KindRows, fit_kind_head, real_rows, synthetic_rows)
    from .runtime import try_export_onnx

    start = time.time()
    out_dir = Path(out_dir)
    data = datasets.load_pickle(train_pkl)
    labels = np.asarray(data.labels)
    scenes = [m["scene"] for m in data.meta]
    sharp = np.flatnonzero(labels == 0)
    if len(sharp) == 0:
        raise datasets.DatasetError(f"{train_pkl} has no sharp photos to blur for the kind head")
    out_dir.mkdir(parents=True, exist_ok=True)
    synthetic = synthetic_rows([data.images[i] for i in sharp], [scenes[i] for i in sharp], copies, seed,
                               camera_share, progress=_bar("kind rows", progress))
    real = real_rows(data.images, [m["source"] for m in data.meta], scenes)
    rows = KindRows.join([synthetic, real])
    fold_idx = list(datasets.scene_folds(list(rows.scene), folds, seed, labels=rows.kind))
    fit = fit_kind_head(rows, fold_idx, max_epochs=max_epochs, patience=patience, seed=seed)
    kind_keras = out_dir / KIND_MODEL.replace(".onnx", ".keras")
    # export_onnx checks the graph against the Keras model: a wrong one would give every scan a wrong kind.
    onnx_note = try_export_onnx(fit.model, out_dir / KIND_MODEL)
    if onnx_note is None:
        kind_keras.unlink(missing_ok=True)  # from an earlier run that could not export
    else:  # kept for `python -m ensemble.export`; scans run without a kind head until then
        fit.model.save(kind_keras)
    info = {
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "feature_names": list(KIND_FEATURE_NAMES),
        "outputs": ["p_motion", "log_extent_px", "cos_2delta", "sin_2delta"],
        "data": {"train_pkl": portable_path(train_pkl), "fingerprint": datasets.fingerprint(data.meta),
                 "sharp_photos": int(len(sharp)), "synthetic_rows": len(synthetic), "real_kind_rows": len(real)},
        "synthetic": {"copies": copies, "camera_share": camera_share, "kind_shares": KIND_SHARES,
                      "motion_length_px": list(MOTION_LENGTH), "defocus_radius_px": list(DEFOCUS_RADIUS),
                      "gaussian_sigma_px": list(GAUSSIAN_SIGMA), "gaussian_extent": "2 sigma"},
        "visible": VISIBLE, "angle_min_length_px": ANGLE_MIN_LENGTH,
        "training": {"folds": folds, "max_epochs": max_epochs, "patience": patience, "seed": seed,
                     "epochs": fit.epochs, "fold_epochs": fit.fold_epochs},
        "validation_metrics": fit.validation,
        "versions": _versions(),
    }
    atomic_write(out_dir / KIND_INFO, json.dumps(info, indent=1))
    return {"stage": "kind head", "out": str(out_dir / KIND_MODEL), "rows": len(rows), "real_kind_rows": len(real),
            "epochs": fit.epochs, "validation": fit.validation["all"], "onnx": onnx_note or "written",
            **_stats(start)}


# -- stage 4c: the content classifier ------------------------------------------------------------------------------
def train_content_stage(train_pkl: str | Path, out_dir: str | Path, pages: int | None = None, seed: int = 0,
                        workers: int = 2, progress: bool = True) -> dict:
    """Train the content classifier (ensemble.content) and write ``out_dir``/content.json (atomically).

    Photos: every image of the training pickle, grouped by scene. Pages: ``pages`` (default content.STAGE_PAGES)
    rendered in the *training* fonts and layouts by ``workers`` processes (needs the fonts of ``make fonts``),
    grouped by font family, so the threshold is set on folds of unseen scenes and families (content.fit_content).
    Returns the counts, the threshold and the out-of-fold figures.
    """
    from . import content

    start = time.time()
    pages = content.STAGE_PAGES if pages is None else pages
    if pages < 2:
        raise ValueError(f"pages must be at least 2, got {pages}")
    if not Path(train_pkl).is_file():
        raise FileNotFoundError(f"{train_pkl}: no training pickle (run load_traindata.py)")
    # the pages first: the worker processes then never hold the photos (hundreds of MB)
    page_seed = content.STAGE_PAGE_SEED + seed
    page_grays, info = content.sample_pages(pages, "train", seed=page_seed, workers=workers,
                                            progress=_bar("content pages", progress))
    families = [str(i["family"]) for i in info]
    data = datasets.load_pickle(train_pkl)
    if not data.images:
        raise datasets.DatasetError(f"{train_pkl} has no photos to train the content classifier on")
    scenes = [str(m.get("scene", i)) for i, m in enumerate(data.meta)]
    model, report = content.fit_content(data.images, page_grays, groups=(scenes, families), seed=seed)
    model.params["data"] = {"train_pkl": portable_path(train_pkl), "fingerprint": datasets.fingerprint(data.meta),
                            "photos": len(data.images), "scenes": len(set(scenes)), "pages": len(page_grays),
                            "page_split": "train", "page_seed": page_seed,
                            "page_layouts": sorted({str(i["layout"]) for i in info}),
                            "page_families": sorted(set(families))}
    path = model.save(out_dir)
    keys = ("photos", "changed_photos", "pages", "folds", "threshold", "threshold_logit", "margin_logit",
            "oof_photos_called_documents", "oof_changed_photos_called_documents", "oof_pages_called_photos",
            "oof_page_recall", "oof_photo_max_logit", "oof_page_min_logit")
    return {"stage": "content classifier", "out": str(path), **{k: report[k] for k in keys}, **_stats(start)}


# -- stage 4d: the native-scale meta-network ----------------------------------------------------------------------
NATIVE_EVAL_SEED = 2400
"""Seed of the held-out pages and large photos test.py judges native scale on (fixed: every model meets the same).
Seeds 2200 and 2300 were looked at while the native measures were designed (2300's errors steered the
structure-tensor measures), so they are not used for figures."""


def train_native_stage(train_pkl: str | Path, model_dir: str | Path, out_dir: str | Path, pages: int = 3000,
                       photo_copies: int = 2, folds: int = 5, members: int = 3, max_epochs: int = 400,
                       patience: int = 40, seed: int = 0, workers: int = 2, progress: bool = True) -> dict:
    """Train the native-scale meta-network; write ``out_dir``/meta_native.keras, meta_native.onnx and native.json.

    Its rows (ensemble.native_training): ``pages`` rendered pages in the training fonts and layouts, labelled at the
    OCR boundary, and ``photo_copies`` large photos made from every training photo, each turned into the native
    feature vector with the CNN of ``model_dir``. Folds keep a font family or a scene on one side; early stopping,
    the Platt calibration and the figures in native.json are out-of-fold (meta.fit_bag, as train_meta_stage).
    """
    from .detector import NATIVE_META
    from .meta import fit_bag
    from .native import NATIVE_FEATURE_NAMES
    from .native_training import GUARD, PAGE_BLURS, PAGE_RATIO, PHOTO_SIGMA, NativeRows, page_rows, photo_rows
    from .runtime import try_export_onnx

    start = time.time()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    data = datasets.load_pickle(train_pkl)
    cnn_info = json.loads((model_dir / "cnn.json").read_text())
    patch_size = int(cnn_info["hyperparameters"].get("patch_size", PATCH_SIZE))
    bar = _bar("native rows", progress)
    page = page_rows(pages, "train", seed, model_dir, patch_size, workers, bar)
    photo = photo_rows(data.images, data.labels, [m["scene"] for m in data.meta], photo_copies, seed, model_dir,
                       patch_size, workers, bar)
    rows = NativeRows.join([page, photo])
    out_dir.mkdir(parents=True, exist_ok=True)
    fold_idx = list(datasets.scene_folds(list(rows.group), folds, seed, labels=rows.y))
    fit = fit_bag(rows.x, rows.y, fold_idx, members, seed, max_epochs=max_epochs, patience=patience)
    fit.model.save(out_dir / f"{NATIVE_META}.keras")
    onnx_note = try_export_onnx(fit.model, out_dir / f"{NATIVE_META}.onnx")
    oof = fit.oof_probability
    validation = {src: _round(classification_report(rows.y[m], oof[m], oof[m] >= 0.5))
                  for src, m in (("all", np.ones(len(rows), bool)), ("pages", rows.source == "page"),
                                 ("photos", rows.source == "photo"))}
    info = {
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "feature_names": list(NATIVE_FEATURE_NAMES),
        "data": {"train_pkl": portable_path(train_pkl), "fingerprint": datasets.fingerprint(data.meta),
                 "pages": int((rows.source == "page").sum()), "pages_drawn": pages,
                 "photo_rows": int((rows.source == "photo").sum()), "photo_copies": photo_copies,
                 "blurry": int(rows.y.sum()), "groups": len(set(rows.group))},
        "material": {"page_blurs": PAGE_BLURS, "page_ratio_to_ocr_boundary": PAGE_RATIO, "guard": GUARD,
                     "photo_sigma_px": PHOTO_SIGMA},
        "meta": {"folds": folds, "members": members, "max_epochs": max_epochs, "patience": patience, "seed": seed,
                 "bag": [{"seed": seed + k, "epochs": m.epochs, "calibration_platt": list(m.calibration)}
                         for k, m in enumerate(fit.members)]},
        "validation_metrics": validation,
        "versions": _versions(),
    }
    atomic_write(out_dir / "native.json", json.dumps(info, indent=1))
    return {"stage": "native meta", "out": str(out_dir / f"{NATIVE_META}.onnx"), "rows": len(rows),
            "validation": validation, "onnx": onnx_note or "written", **_stats(start)}


def evaluate_native(data, detector, pages: int = 300, seed: int = NATIVE_EVAL_SEED, plots_dir: str | Path | None = None,
                    progress: bool = True) -> dict | None:
    """test.py's native-scale section, or None for a model without a native-scale meta-network.

    ``pages`` pages in the held-out fonts and layouts (ensemble.documents; guard-band pages left out), judged at
    'auto' (the content classifier decides), at 'native' and, for comparison, at 'screen'; one large photo made
    from every photo of ``data`` at 'native'; and what the content classifier makes of ``data``'s photos as they
    are (none should be a document). With ``plots_dir``: reliability diagrams and native_blur_map.png, a held-out
    page whose lower half is soft.
    """
    from . import plots
    from .native_training import page_case, photo_case

    if detector.meta_native is None or pages == 0:
        return None
    def prob(result) -> float:  # a flat result (blurred to nothing) counts as blurry
        return 1.0 if result.blur_probability is None else result.blur_probability

    y_page, p_auto, p_native, p_screen, scales, contents = [], [], [], [], [], []
    for i in _bar("native pages", progress)(range(pages)):
        full, label, _ = page_case(seed, i, "heldout")
        if label is None:
            continue
        auto, native, screen = (detector.predict_batch([full], scale=s)[0] for s in ("auto", "native", "screen"))
        y_page.append(label)
        p_auto.append(prob(auto))
        p_native.append(prob(native))
        p_screen.append(prob(screen))
        scales.append(auto.scale)
        contents.append(auto.content)
    y_photo, p_photo = [], []
    for i in _bar("large photos", progress)(range(len(data))):
        full, label, _ = photo_case(data.images[i], int(data.labels[i]), seed, i)
        if label is not None:
            y_photo.append(label)
            p_photo.append(prob(detector.predict_batch([full], scale="native")[0]))
    photo_content = [detector.classify(g) for g in data.images]
    sets = {"held-out pages, auto": (y_page, p_auto), "held-out pages, native": (y_page, p_native),
            "held-out pages, screen (as before)": (y_page, p_screen),
            "large photos, native": (y_photo, p_photo)}
    out = {"seed": seed, "sets": {}, "content": {
        "photos": len(photo_content), "photos_called_documents": photo_content.count("document"),
        "pages": len(contents), "pages_recognised": contents.count("document"),
        "pages_judged_native_by_auto": scales.count("native")}}
    for name, (y, p) in sets.items():
        y, p = np.asarray(y, int), np.asarray(p, np.float64)
        out["sets"][name] = _round(classification_report(y, p, p >= detector.threshold))
    if plots_dir is not None:
        plots_dir = Path(plots_dir)
        plots.reliability_diagram(np.asarray(y_page), {"native (pages)": np.asarray(p_native)},
                                  plots_dir / "reliability_native_pages.png", "Reliability — held-out pages, native")
        plots.reliability_diagram(np.asarray(y_photo), {"native (large photos)": np.asarray(p_photo)},
                                  plots_dir / "reliability_native_photos.png", "Reliability — large photos, native")
        out["blur_map"] = str(native_blur_map(detector, plots_dir / "native_blur_map.png", seed))
    return out


def format_native(native: dict | None) -> list[str]:
    """test.py's native-scale section as Markdown lines (none for a model without a native-scale meta-network)."""
    if not native:
        return []
    lines = ["### native scale and content (the native-scale meta-network; the content classifier)", "",
             "| set | n | accuracy | balanced accuracy | ROC AUC | ECE | confusion [[TN FP] [FN TP]] |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, m in native["sets"].items():
        lines.append(f"| {name} | {m['n']} | {m['accuracy']:.4f} | {m['balanced_accuracy']:.4f} | "
                     f"{m['roc_auc']:.4f} | {m['ece']:.4f} | {m['confusion']} |")
    c = native["content"]
    return lines + ["", f"content: {c['photos_called_documents']} of {c['photos']} test photos called documents; "
                        f"{c['pages_recognised']} of {c['pages']} held-out pages recognised, "
                        f"{c['pages_judged_native_by_auto']} judged at native scale by auto", ""]


def native_blur_map(detector, out_png: str | Path, seed: int = NATIVE_EVAL_SEED) -> Path:
    """A held-out 300-dpi page whose lower half is out of focus (Gaussian σ 3 × its OCR boundary), judged at native
    scale, with its cell map over it (red soft, green sharp): the picture of docs/native-scale.md."""
    import cv2

    from . import documents, plots
    from .imageio import resize_to_analysis

    spec = documents.sample_spec(np.random.default_rng([seed, 0xB1]), "heldout", dpi=300)
    page = documents.make_page(spec, blur=("gaussian", 3 * documents.blur_boundary("gaussian", spec.font_px)),
                               region="bottom")
    result = detector.predict_batch([page.gray], with_map=True, scale="native")[0]
    rgb = cv2.cvtColor(resize_to_analysis(page.gray, detector.analysis_side), cv2.COLOR_GRAY2RGB)
    picture = plots.blur_map_picture(rgb, result)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_png), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    return out_png


def evaluate_kind(data, detector, seed: int = KIND_EVAL_SEED, progress: bool = True) -> dict | None:
    """test.py's kind section, or None when the model has no kind head: the kind figures (kind_training.
    kind_metrics) on two synthetic blurs of every sharp photo of ``data`` (half with camera effects; never seen in
    training when ``data`` is the held-out side), and on the photos whose folder names their kind."""
    from .kind_training import kind_metrics, real_rows, synthetic_rows

    if detector.kind is None:
        return None
    labels = np.asarray(data.labels)
    scenes = [m["scene"] for m in data.meta]
    sharp = np.flatnonzero(labels == 0)
    synthetic = synthetic_rows([data.images[i] for i in sharp], [scenes[i] for i in sharp], 2, seed, 0.5,
                               progress=_bar("kind", progress))
    real = real_rows(data.images, [m["source"] for m in data.meta], scenes)
    out = {}
    for name, rows in (("synthetic", synthetic), ("synthetic_clean", synthetic.subset(~synthetic.camera)),
                       ("synthetic_camera_effects", synthetic.subset(synthetic.camera)), ("real_kinds", real)):
        if len(rows):
            out[name] = kind_metrics(detector.kind(rows.x, rows.ref), rows)
    return {"seed": seed, "sets": out} if out else None


def format_kind(kind: dict | None) -> list[str]:
    """test.py's kind section as Markdown lines (none when there is no kind head)."""
    if not kind:
        return []
    lines = ["### blur kind (the kind head; clearly visible blur only)", "",
             "| set | n | kind accuracy | confusion [[D→D D→M] [M→D M→M]] | angle within 15° (n) "
             "| median angle error | extent within 1.5× (n) | median extent ratio |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]

    def fig(v, fmt="{:.4f}"):
        return "-" if v is None else fmt.format(v)

    for name, m in kind["sets"].items():
        k, a, e = m["kind"], m["angle"], m["extent"]
        lines.append(f"| {name} | {k['n']} | {fig(k['accuracy'])} | {k['confusion']} | {fig(a['within_15'])} "
                     f"({a['n']}) | {fig(a['median_error'], '{:.1f}°')} | {fig(e['within_1_5x'])} ({e['n']}) | "
                     f"{fig(e['median_ratio'], '{:.3f}')} |")
    return lines + [""]


# -- stage 5: evaluation -------------------------------------------------------------------------------------------
def evaluate_stage(test_pkl: str | Path, model_root: str | Path | None = None, plots_dir: str | Path = "reports",
                   json_out: str | Path | None = None, threshold: float | None = None, progress: bool = True,
                   native_pages: int = 300) -> dict:
    """Score ``test_pkl`` with the Laplacian baseline, the CNN alone and the ensemble, per source set.

    Thresholds come from training (metadata.json), never from the test data. Saves ROC, confusion-matrix and
    reliability PNGs per set in ``plots_dir`` and, with ``json_out``, the whole report as JSON.

    When ``test_pkl`` is the held-out side of the very split the model was trained on (same dataset, layout, seed
    and test fraction) and the model's own threshold is used, the ensemble's figures, with a 95 % scene-bootstrap
    interval of its ROC AUC, are also written into the model's metadata.json as ``test_metrics``
    (``report["recorded"]`` says where, ``report["not_recorded"]`` why not when writing failed).
    """
    from . import plots

    start = time.time()
    data = datasets.load_pickle(test_pkl)
    detector = BlurDetector.load(model_root, threshold=threshold)
    base = detector.metadata["baselines"]
    y_all = np.asarray(data.labels).astype(int)
    feats = feature_matrix(data.images, detector.cnn, progress=_bar("scoring", progress),
                           patch_size=detector.patch_size)
    ens_all = np.clip(detector.meta(feats), 0, 1)
    cnn_all = feats[:, FEATURE_NAMES.index("cnn_mean")]
    lap_all = np.array([laplacian_variance(g) for g in data.images])
    sources = [m["source"] for m in data.meta]
    groups = {"all": np.arange(len(y_all))}
    if len(set(sources)) > 1 and data.info.get("layout") == "certh-eval":
        groups = {s: np.array([i for i, t in enumerate(sources) if t == s]) for s in sorted(set(sources))}
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    report = {"test_pkl": str(test_pkl), "model": str(model_root or "shipped"), "threshold": detector.threshold,
              "laplacian_threshold": base["laplacian_threshold"], "cnn_threshold": base["cnn_threshold"], "sets": {}}
    for name, idx in groups.items():
        y = y_all[idx]
        lap, cnn, ens = lap_all[idx], cnn_all[idx], ens_all[idx]
        # The Laplacian's score is turned into a rank-preserving "probability" only for AUC and ECE.
        lap_prob = 1.0 / (1.0 + np.exp(np.log1p(lap) - np.log1p(base["laplacian_threshold"])))
        columns = {
            "laplacian": classification_report(y, lap_prob, lap < base["laplacian_threshold"]),
            "cnn": classification_report(y, cnn, cnn >= base["cnn_threshold"]),
            "ensemble": classification_report(y, ens, ens >= detector.threshold),
        }
        tag = name.replace(" ", "_")
        plots.roc_curves(y, {"Laplacian": lap_prob, "CNN": cnn, "Ensemble": ens}, plots_dir / f"roc_{tag}.png",
                         f"ROC — {name}")
        plots.confusion_matrices({k: v["confusion"] for k, v in columns.items()},
                                 plots_dir / f"confusion_{tag}.png", f"Confusion matrices — {name}")
        plots.reliability_diagram(y, {"Ensemble": ens, "CNN": cnn}, plots_dir / f"reliability_{tag}.png",
                                  f"Reliability — {name}")
        report["sets"][name] = {k: _round(v) for k, v in columns.items()}
    if threshold is None and "all" in groups and _own_test_split(detector.metadata, data.info):
        scenes = [m["scene"] for m in data.meta]
        interval = scene_bootstrap_auc(y_all, ens_all, scenes)
        entry = {**report["sets"]["all"]["ensemble"], "scenes": len(set(scenes)),
                 "roc_auc_interval_95": None if interval is None else [round(v, 4) for v in interval],
                 "interval_method": "1,000 resamples of whole test scenes, percentile",
                 "fingerprint": data.info.get("fingerprint"), "split": _split_key(data.info.get("split")),
                 "recorded_by": "test.py"}
        report["sets"]["all"]["ensemble"]["roc_auc_interval_95"] = entry["roc_auc_interval_95"]
        root = Path(model_root) if model_root is not None else default_model_root()
        failed = _record_test_metrics(root, entry)
        if failed:
            report["not_recorded"] = failed
        else:
            report["recorded"] = str(root / META_DIR / "metadata.json")
    report["kind"] = evaluate_kind(data, detector, progress=progress)
    report["native"] = evaluate_native(data, detector, native_pages, plots_dir=plots_dir, progress=progress)
    report.update(_stats(start))
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(json_out, json.dumps(report, indent=1))
    return report


ROWS = (("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"), ("precision (blurry)",
        "precision_blurry"), ("recall (blurry)", "recall_blurry"), ("ROC AUC", "roc_auc"), ("ECE", "ece"))


def format_report(report: dict) -> str:
    """The evaluation report as a Markdown table per set (three columns: Laplacian, CNN, ensemble)."""
    lines = []
    for name, cols in report["sets"].items():
        n = cols["ensemble"]["n"]
        lines += [f"### {name} ({n} images, scale screen)", "",
                  "| metric | Laplacian threshold | CNN alone | Ensemble |", "|---|---:|---:|---:|"]
        for label, key in ROWS:
            lines.append(f"| {label} | " + " | ".join(f"{cols[c][key]:.4f}" for c in ("laplacian", "cnn", "ensemble"))
                         + " |")
        conf = [cols[c]["confusion"] for c in ("laplacian", "cnn", "ensemble")]
        lines.append("| confusion [[TN FP] [FN TP]] | " + " | ".join(f"{c}" for c in conf) + " |")
        interval = cols["ensemble"].get("roc_auc_interval_95")
        if interval:
            lines += ["", f"Ensemble ROC AUC, 95 % scene-bootstrap interval: {interval[0]:.4f}–{interval[1]:.4f}"]
        lines.append("")
    lines += format_kind(report.get("kind"))
    lines += format_native(report.get("native"))
    if report.get("recorded"):
        lines.append(f"test figures recorded in {report['recorded']} (test_metrics)")
    elif report.get("not_recorded"):
        lines.append(f"warning: test figures not recorded: {report['not_recorded']}")
    return "\n".join(lines)

