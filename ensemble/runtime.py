"""Run exported models with ONNX Runtime, without TensorFlow.

Scanning, serving and the shipped detector use this module only, so ``pip install blur-ensemble`` needs no
TensorFlow. ``export_onnx`` (training side) imports Keras lazily.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class OnnxModel:
    """A single-input, single-output ONNX model as a callable: float32 array in, float32 (N,) or (N, k) out."""

    def __init__(self, path: str | os.PathLike, threads: int = 0):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]
        return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out


class KerasModel:
    """The same callable interface over a Keras model (used in training and in the export check)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = np.asarray(self.model(np.asarray(x, dtype=np.float32), training=False))
        return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out


def load_keras(path: str | os.PathLike):
    """Load a ``.keras`` file in safe mode (no arbitrary code from the file)."""
    import keras

    return keras.saving.load_model(path, safe_mode=True, compile=False)


def export_onnx(model, path: str | os.PathLike) -> Path:
    """Write ``model`` to ``path`` in ONNX format (dynamic batch size) and return the path."""
    path = Path(path)
    sample = np.zeros((1, *model.input_shape[1:]), dtype=np.float32)
    model(sample, training=False)  # Keras refuses to export a model that was never called.
    tmp = path.with_suffix(".tmp.onnx")
    model.export(str(tmp), format="onnx", verbose=False)
    os.replace(tmp, path)
    return path
