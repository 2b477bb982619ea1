"""Keras 3 backends: the CNN trains on TensorFlow and on JAX, its .keras file moves between them unchanged, the
meta-network fits on JAX, and where ONNX cannot be exported the stages fall back to the Keras files.

The backend is fixed when Keras is imported, so each backend runs in its own subprocess (KERAS_BACKEND set) on one
tiny training pickle; the children write their probe predictions to .npy files that the test compares.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fixtures import REPO_ROOT, blur, make_photo

pytest.importorskip("keras")

CHILD = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path
    import numpy as np
    work = Path(sys.argv[1]); step = sys.argv[2]
    import keras
    from ensemble import pipeline
    from ensemble.cnn import scoring_model
    from ensemble.runtime import load_keras
    backend = keras.backend.backend()
    probe = np.load(work / "probe.npy")

    def predict(model_dir):
        model = scoring_model(load_keras(Path(model_dir) / "cnn.keras"))  # safe mode
        return keras.ops.convert_to_numpy(model(probe, training=False))

    def train(out, **kw):
        return pipeline.train_cnn_stage(work / "train.pkl", work / out, epochs=1, patches_per_image=4, width=0.25,
                                        verbose=0, **kw)

    out = {"backend": backend}
    if step == "first":        # TensorFlow: train, and train once under mixed precision
        out["cnn"] = train("tf/model")
        np.save(work / "tf_own.npy", predict(work / "tf/model"))
        out["mixed"] = train("tf_mixed/model", precision="mixed")
        model = load_keras(work / "tf_mixed/model/cnn.keras")
        out["mixed_dtypes"] = sorted({layer.dtype_policy.name for layer in model.layers})
        out["mixed_out_dtype"] = str(predict(work / "tf_mixed/model").dtype)
    elif step == "jax":        # JAX: read TensorFlow's file, train, fall back to cnn.keras, fit the meta-network
        np.save(work / "jax_reads_tf.npy", predict(work / "tf/model"))
        out["cnn"] = train("jax/model")
        (work / "jax/model/cnn.onnx").unlink(missing_ok=True)  # the stage below must run on cnn.keras
        out["meta"] = pipeline.train_meta_stage(work / "train.pkl", work / "jax/model", work / "jax/final_model",
                                                folds=2, max_epochs=3, patience=2, members=2, camera_copies=0,
                                                progress=False)
        np.save(work / "jax_own.npy", predict(work / "jax/model"))
    else:                      # TensorFlow again: read JAX's file
        np.save(work / "tf_reads_jax.npy", predict(work / "jax/model"))
    (work / f"{step}.json").write_text(json.dumps(out, default=str))
''')


def run_child(work, step, backend):
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3",
           "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(work), step], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{step} under {backend} failed:\n{proc.stderr[-3000:]}"
    return json.loads((work / f"{step}.json").read_text()), proc.stderr


def make_pickle(path):
    from ensemble import datasets

    images, meta = [], []
    for i in range(12):
        gray = make_photo(700 + i // 2, (200, 260))
        gray = gray.mean(axis=2).astype(np.uint8) if gray.ndim == 3 else gray
        if i % 2:
            gray = blur(gray, ("gaussian", "defocus", "motion")[(i // 2) % 3], 3.0)
        images.append(gray)
        meta.append({"path": f"img_{i}.jpg", "label": i % 2, "source": "csv", "scene": f"s{i // 2}", "width": 260,
                     "height": 200})
    data = datasets.LoadedData(images, np.array([m["label"] for m in meta], np.int8), meta)
    datasets.save_pickle(data, path, {"root": "generated", "layout": "csv", "part": "train", "split": None,
                                      "analysis_side": 640, "fingerprint": datasets.fingerprint(meta)})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    pytest.importorskip("tensorflow")
    pytest.importorskip("jax")
    work = tmp_path_factory.mktemp("backends")
    make_pickle(work / "train.pkl")
    np.save(work / "probe.npy", np.random.default_rng(5).random((24, 96, 96, 1), dtype=np.float32))
    first, _ = run_child(work, "first", "tensorflow")
    jax, jax_err = run_child(work, "jax", "jax")
    last, _ = run_child(work, "last", "tensorflow")
    return work, first, jax, jax_err, last


def loss_of(model_dir):
    import csv

    with open(model_dir / "training_log.csv") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def test_the_cnn_trains_on_tensorflow_and_jax(runs):
    work, first, jax, _, _ = runs
    for out, folder in ((first, "tf/model"), (jax, "jax/model")):
        losses = loss_of(work / folder)
        assert len(losses) == 1 and np.isfinite(losses).all()
        info = json.loads((work / folder / "cnn.json").read_text())
        assert info["backend"] == out["backend"] and info["precision"] == "float32"
        assert info["devices"] == ["CPU"] and len(info["epoch_seconds"]) == 1
        assert info["hyperparameters"]["batch_size"] == 128 and info["hyperparameters"]["learning_rate"] == 2e-3
    assert first["backend"] == "tensorflow" and jax["backend"] == "jax"
    assert (work / "tf/model/cnn.onnx").exists() and first["cnn"]["onnx"] == "written"


def test_weights_are_backend_neutral(runs):
    """Each backend's cnn.keras loads in safe mode under the other and scores the probe patches alike."""
    work = runs[0]
    tf_own, jax_reads_tf = np.load(work / "tf_own.npy"), np.load(work / "jax_reads_tf.npy")
    jax_own, tf_reads_jax = np.load(work / "jax_own.npy"), np.load(work / "tf_reads_jax.npy")
    assert tf_own.shape == (24, 33) and jax_own.shape == (24, 33)
    assert np.abs(tf_own - jax_reads_tf).max() < 1e-4
    assert np.abs(jax_own - tf_reads_jax).max() < 1e-4
    assert np.abs(tf_own - jax_own).max() > 1e-6  # two trainings, two models: the comparison is not vacuous


def test_meta_network_fits_on_jax_from_the_keras_cnn(runs):
    """Without cnn.onnx the meta stage scores with cnn.keras; meta.keras is written whether or not ONNX is."""
    work, _, jax, jax_err, _ = runs
    meta = jax["meta"]
    assert meta["members"] == 2 and meta["validation"]["n"] == 12
    assert 0.0 <= meta["validation"]["roc_auc"] <= 1.0
    assert (work / "jax/final_model/meta.keras").exists()
    metadata = json.loads((work / "jax/final_model/metadata.json").read_text())
    assert metadata["versions"]["keras_backend"] == "jax"
    if meta["onnx"] != "written":  # no exporter for JAX here: said in one line, and no stale file left
        assert not (work / "jax/final_model/meta.onnx").exists()
        assert "note: meta.onnx not written" in jax_err and "python -m ensemble.export" in jax_err


def test_mixed_precision_saves_a_float32_model(runs):
    _, first, _, _, _ = runs
    assert first["mixed"]["precision"] == "mixed_float16"
    assert first["mixed_dtypes"] == ["float32"] and first["mixed_out_dtype"] == "float32"
    assert first["mixed"]["onnx"] == "written"


def test_export_writes_onnx_for_a_model_trained_without_it(runs):
    """python -m ensemble.export, under TensorFlow, turns the JAX run's .keras files into checked .onnx files."""
    work = runs[0]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "KERAS_BACKEND": "tensorflow"}
    proc = subprocess.run([sys.executable, "-m", "ensemble.export", str(work / "jax")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote" in proc.stdout and (work / "jax/model/cnn.onnx").exists()
    from ensemble.runtime import OnnxModel

    onnx = OnnxModel(work / "jax/model/cnn.onnx")(np.load(work / "probe.npy"))
    assert np.abs(onnx - np.load(work / "jax_own.npy")).max() < 1e-4


# -- the input pipeline and the device choices, without Keras ------------------------------------------------------
def patch_set(n=40):
    from ensemble.cnn import PatchSet

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 96, 96), dtype=np.uint8)
    return PatchSet(x, (np.arange(n) % 2).astype(np.int8), np.zeros(n, bool))


def test_patch_batches_are_augmented_reproducibly():
    from ensemble.cnn import PatchBatches

    ps = patch_set()
    a, b = PatchBatches(ps, 16, True, seed=3), PatchBatches(ps, 16, True, seed=3)
    assert len(a) == 3
    xa, ya = a[1]
    xb, yb = b[1]
    assert xa.dtype == np.float32 and xa.shape == (16, 96, 96, 1) and 0 <= xa.min() and xa.max() <= 1
    assert np.array_equal(xa, xb) and np.array_equal(ya, yb)  # batch i of epoch e: its own random stream
    a.on_epoch_end()
    assert not np.array_equal(a[1][0], xa)  # a fresh shuffle and fresh effects each epoch
    plain = PatchBatches(ps, 16, False)
    x, y = plain[0]
    assert np.array_equal(x[..., 0], ps.x[:16] / np.float32(255)) and np.array_equal(y, ps.y[:16])


def test_random_turns_only_flip_and_turn():
    from ensemble.cnn import random_turns

    x = np.random.default_rng(1).integers(0, 256, (64, 96, 96), dtype=np.uint8)
    out = random_turns(x, np.random.default_rng(2))
    for a, b in zip(x, out):
        views = [np.rot90(v, k) for v in (a, a[::-1], a[:, ::-1], a[::-1, ::-1]) for k in range(4)]
        assert any(np.array_equal(b, v) for v in views)
    assert not np.array_equal(x, out)


def test_camera_pool_results_do_not_depend_on_the_worker_count():
    from ensemble.cnn import CameraPool

    x = patch_set(20).x[..., None]
    with CameraPool(1, part=8) as one, CameraPool(2, part=8) as two:
        assert np.array_equal(one(x, (0, 1)), two(x, (0, 1)))
        assert not np.array_equal(one(x, (0, 1)), one(x, (0, 2)))


@pytest.mark.parametrize("precision,backend,caps,policy", [
    ("auto", "tensorflow", [], "float32"),
    ("auto", "jax", [], "float32"),
    ("auto", "tensorflow", [(7, 5)], "mixed_float16"),
    ("auto", "jax", [(9, 0)], "mixed_bfloat16"),
    ("auto", "jax", [(7, 5)], "mixed_float16"),
    ("auto", "torch", [(8, 0)], "mixed_bfloat16"),
    ("auto", "tensorflow", [(6, 1)], "float32"),
    ("float32", "jax", [(9, 0)], "float32"),
    ("mixed", "tensorflow", [], "mixed_float16"),
])
def test_precision_follows_the_device(precision, backend, caps, policy):
    from ensemble.cnn import resolve_precision

    gpus = [{"name": "GPU", "compute_capability": c} for c in caps]
    assert resolve_precision(precision, backend, gpus) == policy


def test_batch_size_and_learning_rate_defaults():
    from ensemble.cnn import default_learning_rate, resolve_batch_size

    assert resolve_batch_size("auto", []) == 128 and resolve_batch_size("auto", [{"name": "g"}]) == 512
    assert resolve_batch_size(64, [{"name": "g"}]) == 64
    assert default_learning_rate(128) == 2e-3 and abs(default_learning_rate(512) - 4e-3) < 1e-12
