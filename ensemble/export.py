"""Write the ONNX files of a model trained where ONNX could not be exported: ``python -m ensemble.export ROOT``.

A model trained under JAX or torch without their ONNX exporter (the GPU machine of benchmarks/gpu_check.sh has no
TensorFlow) has ``model/cnn.keras``, ``final_model/meta.keras`` and maybe ``final_model/kind.keras``, but no
``.onnx`` files, and the detector runs on ONNX. Run this module where the export works, by default under the
TensorFlow backend (``pip install 'blur-ensemble[train]'``):

    python -m ensemble.export runs/gpu            # ROOT holding model/ and final_model/, or one of those folders
    KERAS_BACKEND=jax python -m ensemble.export runs/gpu     # JAX with jax2onnx installed

Each ``.onnx`` is checked against its Keras model on a probe batch before it replaces anything, and a ``.onnx``
newer than its ``.keras`` is left alone unless ``--force``. The ``.keras`` files are float32 and backend-neutral.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FILES = (("model", "cnn"), ("final_model", "meta"), ("final_model", "kind"))
"""(folder, stem) of every model file pair: <stem>.keras → <stem>.onnx."""


def _pick_backend() -> str:
    """KERAS_BACKEND when set; else tensorflow when installed, else jax when jax2onnx is, else torch."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    for backend, needs in (("tensorflow", "tf2onnx"), ("jax", "jax2onnx"), ("torch", "torch")):
        if importlib.util.find_spec(backend) and importlib.util.find_spec(needs):
            return backend
    return "tensorflow"


def pairs(root: Path) -> list[tuple[Path, Path]]:
    """(keras file, onnx file) of every model file under ``root`` (a model root or a model/ or final_model/ folder)."""
    out = []
    for folder, stem in FILES:
        for base in (root / folder, root):
            if (base / f"{stem}.keras").exists():
                out.append((base / f"{stem}.keras", base / f"{stem}.onnx"))
                break
    return out


def export_one(keras_file: Path, onnx_file: Path) -> str:
    """Export one file (runtime.export_onnx checks the graph against the Keras model); returns the line to print."""
    from .cnn import scoring_model
    from .runtime import export_onnx, load_keras

    model = load_keras(keras_file)
    if keras_file.stem == "cnn":
        model = scoring_model(model)  # what the detector runs: the probability and the patch embedding
    export_onnx(model, onnx_file)
    return f"wrote {onnx_file} (checked against {keras_file.name})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ensemble.export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="model root (holding model/ and final_model/), or one of those folders")
    p.add_argument("--force", action="store_true", help="export even where the .onnx is newer than the .keras")
    a = p.parse_args(argv)
    root = Path(a.root)
    todo = pairs(root)
    if not todo:
        print(f"error: no cnn.keras, meta.keras or kind.keras under {root}", file=sys.stderr)
        return 1
    os.environ["KERAS_BACKEND"] = _pick_backend()
    from .runtime import OnnxExportUnavailable

    status = 0
    for keras_file, onnx_file in todo:
        if not a.force and onnx_file.exists() and onnx_file.stat().st_mtime >= keras_file.stat().st_mtime:
            print(f"{onnx_file} is up to date (--force exports it again)")
            continue
        try:
            print(export_one(keras_file, onnx_file), flush=True)
        except (OnnxExportUnavailable, ImportError, RuntimeError, ValueError, OSError) as err:
            print(f"error: {onnx_file.name} not written under KERAS_BACKEND={os.environ['KERAS_BACKEND']}: "
                  f"{' '.join(str(err).split())[:300]}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
