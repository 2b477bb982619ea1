"""Run exported models with ONNX Runtime, without TensorFlow.

Scanning, serving and the shipped detector use this module only, so ``pip install blur-ensemble`` needs no
TensorFlow. ``export_onnx`` (training side) imports Keras lazily.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


DEVICES = ("auto", "cpu", "cuda")
"""What ``--device`` / ``device=`` accept: ``auto`` (CUDA when its execution provider really loads, else the CPU),
``cpu``, ``cuda`` (an error where CUDA cannot be used)."""

CUDA_PROVIDER = "CUDAExecutionProvider"
CUDA_OPTIONS = {"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC"}
"""CUDAExecutionProvider options: the first GPU; cuDNN's heuristic choice of convolution algorithm, because the
exhaustive search (ONNX Runtime's default) benchmarks again for every new batch size, and batches of patches vary
in size from call to call."""

GPU_HINT = "see docs/gpu.md for the GPU build of ONNX Runtime"
"""The end of the error when CUDA was asked for and cannot be used."""


class DeviceError(RuntimeError):
    """``device='cuda'`` where CUDA cannot be used. ``reason`` says why in a few words; ``str(err)`` is one line
    with what to do."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"CUDA cannot be used: {reason}; {GPU_HINT}")


def check_device(device: str) -> str:
    """``device`` if it is one of :data:`DEVICES`, else ValueError."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    return device


def cuda_unavailable_reason() -> str | None:
    """Why ONNX Runtime here has no CUDA execution provider at all, or None when it lists one (it may still fail
    to load: only a session can tell)."""
    import onnxruntime as ort

    if CUDA_PROVIDER in ort.get_available_providers():
        return None
    both = _installed("onnxruntime") and _installed("onnxruntime-gpu")
    if both:
        return ("no CUDA execution provider: onnxruntime and onnxruntime-gpu are both installed and share one "
                "module, and the CPU one won")
    return "no CUDA execution provider"


def cuda_error_reason(why: str) -> str:
    """``why`` with the ONNX Runtime version and its providers, for the error of ``device='cuda'``."""
    import onnxruntime as ort

    return (f"{why} (onnxruntime {ort.__version__}, execution providers: "
            f"{', '.join(ort.get_available_providers())})")


def gpu_build_installed() -> bool:
    """Whether the GPU build of ONNX Runtime (the onnxruntime-gpu distribution) is installed."""
    return _installed("onnxruntime-gpu")


def _installed(distribution: str) -> bool:
    """Whether ``distribution`` (an ONNX Runtime build) is installed beside the ``onnxruntime`` module: its
    .dist-info folder is looked for where that module lies, where both builds must be to share it. A glob of one
    folder; importlib.metadata's search of every path entry cost 60 ms of a one-image scan's start-up."""
    from pathlib import Path

    import onnxruntime

    prefix = distribution.replace("-", "_").lower() + "-"
    site = Path(onnxruntime.__file__).resolve().parent.parent
    return any(p.name.lower().startswith(prefix) for p in site.glob("*.dist-info"))


def gpu_name(device_id: int = 0) -> str | None:
    """The NVIDIA GPU's name from ``nvidia-smi`` (``NVIDIA H200``), or None when it cannot tell."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, f"--id={device_id}", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    name = out.stdout.strip().splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else ""
    return name or None


class OnnxModel:
    """A single-input, single-output ONNX model as a callable: float32 array in, float32 (N,) or (N, k) out.

    ``device``: ``cpu`` (``threads`` intra-op threads, 0 = all cores), ``cuda`` (DeviceError when the CUDA
    execution provider does not load) or ``auto`` (CUDA when it loads, else the CPU). ``self.device`` is where it
    runs ('cpu' or 'cuda'), ``self.device_note`` why, when ``auto`` ended on the CPU, and ``self.device_name`` the
    GPU's name on CUDA (None when nvidia-smi cannot tell).
    """

    def __init__(self, path: str | os.PathLike, threads: int = 0, device: str = "cpu"):
        import onnxruntime as ort

        check_device(device)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.path = Path(path)
        self.device, self.device_note, self.device_name = "cpu", None, None
        session = None
        if device != "cpu":
            session, why = _cuda_session(str(path), opts)
            if session is None:
                if device == "cuda":
                    raise DeviceError(cuda_error_reason(why))
                self.device_note = why
            else:
                self.device, self.device_name = "cuda", gpu_name(CUDA_OPTIONS["device_id"])
        if session is None:
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.session = session
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]
        return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out


def _cuda_session(path: str, opts):
    """(an InferenceSession really running on CUDA, None) or (None, why not, in one line).

    ONNX Runtime quietly falls back to the CPU when the CUDA provider library or CUDA/cuDNN cannot be loaded (it
    logs to stderr and, for some failures, prints a banner on stdout), so the session's first provider is what
    tells; the logs are kept off the streams, which carry the scan's report.
    """
    import contextlib
    import io
    import warnings

    import onnxruntime as ort

    why = cuda_unavailable_reason()
    if why is not None:
        return None, why
    printed = io.StringIO()
    session, error = None, None
    ort.set_default_logger_severity(4)  # the provider's load failures would print on stderr, one per model
    try:
        with contextlib.redirect_stdout(printed), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            preload = getattr(ort, "preload_dlls", None)  # CUDA and cuDNN from the nvidia-* wheels, if installed
            if preload is not None:
                with contextlib.suppress(Exception):
                    preload()
            session = ort.InferenceSession(path, opts, providers=[(CUDA_PROVIDER, dict(CUDA_OPTIONS)),
                                                                  "CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - whatever the provider raises, the answer is "not on CUDA"
        error = " ".join(str(err).split())
    finally:
        ort.set_default_logger_severity(2)  # ONNX Runtime's default
    if session is not None and session.get_providers()[0] == CUDA_PROVIDER:
        return session, None
    banner = next((line for line in printed.getvalue().splitlines() if line.startswith("EP Error")), None)
    detail = error or banner or _provider_library_error(ort)
    if detail:
        return None, f"the CUDA execution provider did not load: {detail[:200]}"
    return None, "the CUDA execution provider did not load (no usable NVIDIA GPU or driver)"


def _provider_library_error(ort) -> str | None:
    """Why the CUDA provider's shared library cannot be loaded (``libcublasLt.so.13: cannot open shared object
    file``: CUDA or cuDNN missing), or None when it loads, or cannot be found to try."""
    import ctypes
    import sys

    name = {"win32": "onnxruntime_providers_cuda.dll"}.get(sys.platform, "libonnxruntime_providers_cuda.so")
    library = Path(ort.__file__).parent / "capi" / name
    if not library.is_file():
        return None
    try:
        ctypes.CDLL(str(library))
    except OSError as err:
        text = " ".join(str(err).split())
        return text.replace(f"{library}: ", "").removesuffix(": No such file or directory")
    return None


class KerasModel:
    """The same callable interface over a Keras model (used in training and in the export check), under any Keras
    backend. ``batch``: run through ``predict`` in batches of that many rows, the input padded to a whole number of
    them, so a compiled backend (JAX, a GPU) meets one input shape instead of a new one every call."""

    def __init__(self, model, batch: int | None = None):
        self.model = model
        self.batch = batch

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import keras

        x = np.asarray(x, dtype=np.float32)
        if self.batch and len(x):
            n = len(x)
            padded = np.concatenate([x, np.zeros((-n % self.batch, *x.shape[1:]), np.float32)])
            out = np.asarray(self.model.predict(padded, batch_size=self.batch, verbose=0))[:n]
        else:
            out = keras.ops.convert_to_numpy(self.model(x, training=False))
        return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out


def load_keras(path: str | os.PathLike):
    """Load a ``.keras`` file in safe mode (no arbitrary code from the file)."""
    import keras

    return keras.saving.load_model(path, safe_mode=True, compile=False)


def load_cnn(model_dir: str | os.PathLike, threads: int = 0):
    """The patch scorer of a CNN folder (model/): ``cnn.onnx`` on ONNX Runtime when it is there, else the Keras
    scoring model of ``cnn.keras`` (cnn.scoring_model), as one where ONNX could not be exported (docs/gpu.md)."""
    model_dir = Path(model_dir)
    if (model_dir / "cnn.onnx").exists():
        return OnnxModel(model_dir / "cnn.onnx", threads)
    if not (model_dir / "cnn.keras").exists():
        raise FileNotFoundError(f"{model_dir} has neither cnn.onnx nor cnn.keras: run CNN.py first")
    from .cnn import scoring_model

    return KerasModel(scoring_model(load_keras(model_dir / "cnn.keras")), batch=1024)


EXPORT_TOLERANCE = 1e-4
"""Largest difference allowed between an exported graph's outputs and its Keras model's, relative to 1 + the largest
output."""


class OnnxExportUnavailable(RuntimeError):
    """ONNX export is not possible in this environment (``str(err)``: one line saying why and what to do)."""


def export_onnx(model, path: str | os.PathLike) -> Path:
    """Write float32 ``model`` to ``path`` in ONNX format (dynamic batch size) and return the path.

    Keras exports with TensorFlow + tf2onnx, JAX + jax2onnx or torch's own exporter. OnnxExportUnavailable where
    the exporter of this backend is not installed (under JAX or torch: whenever the export fails)."""
    import keras

    path = Path(path)
    sample = np.zeros((1, *model.input_shape[1:]), dtype=np.float32)
    model(sample, training=False)  # Keras refuses to export a model that was never called.
    tmp = path.with_suffix(".tmp.onnx")
    backend = keras.backend.backend()
    try:
        model.export(str(tmp), format="onnx", verbose=False)
    except Exception as err:  # noqa: BLE001 - sorted below: missing exporter, or a real failure
        tmp.unlink(missing_ok=True)
        if backend == "tensorflow" and not isinstance(err, ImportError):
            raise
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise OnnxExportUnavailable(f"ONNX export under the {backend} backend failed ({reason})") from err
    # The graph must run on ONNX Runtime and answer as the Keras model does (jax2onnx's, for one, can fail to).
    probe = np.random.default_rng(0).random((3, *model.input_shape[1:]), dtype=np.float32)
    try:
        want = KerasModel(model)(probe)
        gap = float(np.abs(OnnxModel(tmp)(probe) - want).max()) / (1.0 + float(np.abs(want).max()))
    except Exception as err:  # noqa: BLE001 - ONNX Runtime's own errors
        gap, reason = float("nan"), " ".join(str(err).split())[:200]
    else:
        reason = f"it differs from the Keras model by {gap:.2g}"
    if not gap <= EXPORT_TOLERANCE:
        tmp.unlink(missing_ok=True)
        if backend == "tensorflow":
            raise RuntimeError(f"the exported {path.name} is wrong: {reason}")
        raise OnnxExportUnavailable(f"the graph exported under the {backend} backend is wrong ({reason})")
    os.replace(tmp, path)
    return path


def try_export_onnx(model, path: str | os.PathLike) -> str | None:
    """export_onnx, or where this environment cannot export: remove any older ``path`` (it would belong to another
    model), say so in one line on stderr, and return why. None when ``path`` was written."""
    import sys

    path = Path(path)
    try:
        export_onnx(model, path)
    except OnnxExportUnavailable as err:
        path.unlink(missing_ok=True)
        print(f"note: {path.name} not written: {err}; {path.stem}.keras is kept, and `python -m ensemble.export "
              f"{path.parent}` writes it where TensorFlow is installed (docs/gpu.md)", file=sys.stderr, flush=True)
        return str(err)
    return None
