"""Builders of synthetic test data, shared by the test modules (import with ``from fixtures import ...``).

Everything is deterministic: the same arguments give the same pixels. Images are kept small so tests stay fast.
"""
from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # make ``import ensemble`` work whatever the pytest import mode
    sys.path.insert(0, str(REPO_ROOT))

SHARED = REPO_ROOT.parent / "shared"
CERTH_LABELS = SHARED / "datasets/certh-labels"
"""The real CERTH evaluation label sheets (NaturalBlurSet/DigitalBlurSet .xlsx and .csv)."""


def require_shared(path: Path = CERTH_LABELS) -> Path:
    """``path`` if it exists, else skip the calling test with the reason."""
    if not path.exists():
        if os.environ.get("CI"):  # CI always has ../shared: its absence there is a failure, not a skip.
            pytest.fail(f"shared test data not found in CI: {path}")
        pytest.skip(f"shared test data not found: {path} (the ../shared folder beside the repository is missing)")
    return path


def require_fonts() -> None:
    """Skip the calling test when the fonts of ensemble.documents (``make fonts``) are missing; under CI, fail."""
    from ensemble import documents

    try:
        documents.fonts("train")
        documents.fonts("heldout")
    except RuntimeError as err:
        if os.environ.get("CI"):
            pytest.fail(f"document fonts missing in CI: {err}")
        pytest.skip(str(err))


def require_modules(*names: str, extra: str) -> None:
    """Import ``names`` or skip the calling test, naming the extra that installs them; under CI, fail instead
    (``make test`` installs every extra)."""
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:
            if os.environ.get("CI"):
                pytest.fail(f"{name} is not installed in CI ({err}): the Makefile installs the {extra!r} extra")
            pytest.skip(f"{name} is not installed ({err}): pip install 'blur-ensemble[{extra}]'")


# --------------------------------------------------------------------------------------------------------------
# Images


def make_photo(seed: int, size: tuple[int, int] = (480, 640)) -> np.ndarray:
    """A synthetic "photo", uint8 RGB of shape ``size`` = (height, width).

    Smooth lighting gradient and low-frequency colour blobs, plus plenty of high-frequency content: crisp-edged
    shapes, thin lines, fine noise texture, stripes, a checkerboard and text-like strokes.
    """
    h, w = int(size[0]), int(size[1])
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx / w + np.sin(angle) * yy / h + 1.0) / 2.0  # 0..1 lighting gradient
    low = cv2.resize(rng.uniform(0, 1, (4, 5, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    base = 40 + 120 * ramp[..., None] * rng.uniform(0.6, 1.0, 3) + 70 * low
    img = np.clip(base, 0, 255).astype(np.uint8)
    area_scale = max(1, round(float(np.sqrt(h * w / (160 * 120)))))

    def colour() -> tuple[int, int, int]:
        return tuple(int(c) for c in rng.integers(0, 256, 3))

    def point() -> tuple[int, int]:
        return int(rng.integers(0, w)), int(rng.integers(0, h))

    for _ in range(4 * area_scale):  # filled shapes with crisp edges
        kind = rng.integers(0, 3)
        if kind == 0:
            cv2.rectangle(img, point(), point(), colour(), -1)
        elif kind == 1:
            cv2.circle(img, point(), int(rng.integers(3, max(4, min(h, w) // 5))), colour(), -1)
        else:
            pts = np.array([point() for _ in range(3)], dtype=np.int32)
            cv2.fillPoly(img, [pts], colour())
    for _ in range(3 * area_scale):  # fine random-noise texture patches (foliage, gravel...)
        x0, y0 = point()
        pw, ph = int(rng.integers(8, max(9, w // 4))), int(rng.integers(8, max(9, h // 4)))
        patch = img[y0 : y0 + ph, x0 : x0 + pw]
        noise = rng.integers(-60, 61, patch.shape)
        patch[...] = np.clip(patch.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    for _ in range(area_scale):  # stripes and a checkerboard
        x0, y0 = point()
        period = int(rng.integers(2, 6))
        pw, ph = int(rng.integers(10, max(11, w // 3))), int(rng.integers(10, max(11, h // 3)))
        region = img[y0 : y0 + ph, x0 : x0 + pw]
        ry, rx = np.mgrid[0 : region.shape[0], 0 : region.shape[1]]
        if rng.integers(0, 2):
            mask = (rx // period) % 2 == 0
        else:
            mask = ((rx // period) + (ry // period)) % 2 == 0
        region[mask] = colour()
    for _ in range(6 * area_scale):  # thin lines (wires, branches)
        cv2.line(img, point(), point(), colour(), int(rng.integers(1, 3)))
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
    for _ in range(3 * area_scale):  # text-like strokes
        text = "".join(rng.choice(list(letters), int(rng.integers(3, 8))))
        scale = float(rng.uniform(0.3, 1.0)) * max(1.0, min(h, w) / 240)
        cv2.putText(img, text, point(), cv2.FONT_HERSHEY_SIMPLEX, scale, colour(), int(rng.integers(1, 3)))
    return img


def blur(img: np.ndarray, kind: str = "gaussian", amount: float = 3.0, angle: float = 0.0) -> np.ndarray:
    """Blurred copy of a uint8 image (grey or RGB) with the project's own kernels (ensemble.augment).

    ``kind``: "gaussian" (``amount`` = sigma in pixels), "defocus" (disk of radius ``amount``) or "motion"
    (straight streak of ``amount`` pixels at ``angle`` degrees).
    """
    from ensemble.augment import apply_blur

    return np.ascontiguousarray(apply_blur(img, kind, float(amount), float(angle)), dtype=np.uint8)


def save_jpeg(path: Path, img: np.ndarray, quality: int = 90, orientation: int | None = None) -> Path:
    """Write a uint8 grey/RGB array as JPEG, optionally tagging the EXIF Orientation (e.g. 6 = rotate 90° CW)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(img)
    kwargs = {"quality": quality}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    im.save(path, "JPEG", **kwargs)
    return path


def _sharp_or_blurred(seed: int, blurry: bool, size: tuple[int, int]) -> np.ndarray:
    img = make_photo(seed, size)
    if not blurry:
        return img
    kind = ("gaussian", "defocus", "motion")[seed % 3]
    amount = {"gaussian": 3.0, "defocus": 4.0, "motion": 9.0}[kind]
    return blur(img, kind, amount, angle=15.0 * (seed % 12))


# --------------------------------------------------------------------------------------------------------------
# Datasets


def certh_sheet_rows(set_name: str, n: int) -> tuple[tuple, list[tuple]]:
    """(header row, first rows) of the real CERTH sheet ``set_name`` ("NaturalBlurSet" or "DigitalBlurSet").

    The rows are the first ``ceil(n/2)`` blurred (1) and first ``floor(n/2)`` sharp (-1) rows, in sheet order,
    exactly as written there (names keep their stray spaces and missing suffixes). Skips the test when the
    shared sheets are missing.
    """
    import openpyxl

    sheet = require_shared(CERTH_LABELS / f"{set_name}.xlsx")
    wb = openpyxl.load_workbook(sheet, read_only=True)
    try:
        rows = [tuple(r[:2]) for r in wb.worksheets[0].iter_rows(values_only=True)]
    finally:
        wb.close()
    header, body = rows[0], rows[1:]
    quota = {1: (n + 1) // 2, -1: n // 2}
    picked = []
    for name, label in body:
        if name is not None and quota.get(label, 0) > 0:
            picked.append((name, label))
            quota[label] -= 1
    return header, picked


def make_fake_certh(root: Path, n_per_set: int = 6, size: tuple[int, int] = (120, 160)) -> Path:
    """A small CERTH_ImageBlurDataset tree under ``root``; returns the ``CERTH_ImageBlurDataset`` folder.

    TrainingSet/{Undistorted,Naturally-Blurred,Artificially-Blurred} hold ``max(2, n_per_set // 2)`` JPEGs each.
    EvaluationSet/{NaturalBlurSet,DigitalBlurSet} hold the images of ``n_per_set`` rows copied from the real
    sheets (:func:`certh_sheet_rows`), with NaturalBlurSet.xlsx / DigitalBlurSet.xlsx beside the folders in the
    real column layout. Each image is sharp or blurred according to its label.
    """
    import openpyxl

    certh = Path(root) / "CERTH_ImageBlurDataset"
    seed = 1000
    n_train = max(2, n_per_set // 2)
    for cls, blurry in (("Undistorted", False), ("Naturally-Blurred", True), ("Artificially-Blurred", True)):
        for i in range(1, n_train + 1):
            seed += 1
            save_jpeg(certh / "TrainingSet" / cls / f"{cls[:3].lower()}{i}.jpg", _sharp_or_blurred(seed, blurry, size))
    evaluation = certh / "EvaluationSet"
    for set_name in ("NaturalBlurSet", "DigitalBlurSet"):
        header, rows = certh_sheet_rows(set_name, n_per_set)
        wb = openpyxl.Workbook()
        ws = wb.active
        ws.append(list(header))
        for name, label in rows:
            ws.append([name, label])
            file_name = name.strip()
            if not file_name.lower().endswith(".jpg"):
                file_name += ".jpg"
            seed += 1
            save_jpeg(evaluation / set_name / file_name, _sharp_or_blurred(seed, label == 1, size))
        wb.save(evaluation / f"{set_name}.xlsx")
    return certh


def make_csv_dataset(
    root: Path, n: int, with_scene: bool = True, size: tuple[int, int] = (96, 128)
) -> Path:
    """``root/labels.csv`` + ``root/images/img_XXX.jpg``; returns ``root``.

    Images come in pairs of one scene: even index sharp (blurry=0), odd index a blurred copy (1); the scene
    column (scene id ``s<i // 2>``) is written when ``with_scene``.
    """
    root = Path(root)
    rows = []
    for i in range(n):
        blurry = i % 2 == 1
        img = make_photo(500 + i // 2, size)
        if blurry:
            img = blur(img, ("gaussian", "defocus", "motion")[(i // 2) % 3], 3.0 + (i // 2) % 3 * 2)
        rel = f"images/img_{i:03d}.jpg"
        save_jpeg(root / rel, img)
        rows.append([rel, int(blurry)] + ([f"s{i // 2}"] if with_scene else []))
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "blurry"] + (["scene"] if with_scene else []))
        writer.writerows(rows)
    return root


FOLDER_BLUR_CLASSES = ("blurry", "defocused_blurred", "motion_blurred")


def make_folder_dataset(root: Path, n: int, size: tuple[int, int] = (96, 128)) -> Path:
    """``root/{sharp,blurry,defocused_blurred,motion_blurred}/`` with ``n`` JPEGs in all; returns ``root``.

    Even indices go to sharp/, odd ones in turn to the three blurry folders; every fifth image sits in a
    ``nested/`` subfolder. File names (``img_XXX.jpg``) are unique across folders.
    """
    root = Path(root)
    for i in range(n):
        if i % 2 == 0:
            cls = "sharp"
        else:
            cls = FOLDER_BLUR_CLASSES[(i // 2) % 3]
        img = _sharp_or_blurred(700 + i, cls != "sharp", size)
        sub = Path(cls) / ("nested" if i % 5 == 4 else "")
        save_jpeg(root / sub / f"img_{i:03d}.jpg", img)
    return root


def _model_missing() -> str | None:
    """Why the shipped model cannot be loaded, or None when it can."""
    from ensemble.detector import default_model_root

    try:
        root = default_model_root()
    except FileNotFoundError as err:
        return str(err)
    for part in ("model/cnn.onnx", "final_model/meta.onnx"):
        if not (root / part).exists():
            return f"{root / part} not found"
    return None


MODEL_MISSING = _model_missing()
needs_model = pytest.mark.skipif(MODEL_MISSING is not None, reason=f"no trained model: {MODEL_MISSING}")
"""Marks a test that scores images with the shipped model."""


# --------------------------------------------------------------------------------------------------------------
# Kind heads


def write_kind_head(folder: Path, p_motion: float = 0.9, extent: float = 5.0, names=None) -> Path:
    """A stand-in kind head in ``folder`` (kind.onnx, kind.json) that answers the same for every image:
    P(motion) ``p_motion``, ``extent`` analysis-scale pixels, no angle correction. ``names``: the feature names
    kind.json records (default: this version's)."""
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ensemble.blur_kind import KIND_FEATURE_NAMES, KIND_INFO, KIND_MODEL

    k = len(KIND_FEATURE_NAMES)
    weights = numpy_helper.from_array(np.zeros((k, 4), np.float32), "w")
    bias = numpy_helper.from_array(np.array([p_motion, np.log(extent), 1.0, 0.0], np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["kind_features", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["out"])],
        "kind", [helper.make_tensor_value_info("kind_features", TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])], [weights, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / KIND_MODEL))
    info = {"feature_names": list(KIND_FEATURE_NAMES if names is None else names), "stand_in": True}
    (folder / KIND_INFO).write_text(json.dumps(info))
    return folder


def model_without_kind_head(root: Path) -> Path:
    """A model folder ``root`` holding the shipped CNN and meta-network (linked) and no kind head."""
    from ensemble.detector import CNN_DIR, META_DIR, default_model_root

    shipped = default_model_root()
    root = Path(root)
    (root / META_DIR).mkdir(parents=True, exist_ok=True)
    if not (root / CNN_DIR).exists():
        (root / CNN_DIR).symlink_to(shipped / CNN_DIR, target_is_directory=True)
    for name in ("meta.onnx", "meta.keras", "metadata.json"):
        if (shipped / META_DIR / name).exists() and not (root / META_DIR / name).exists():
            (root / META_DIR / name).symlink_to(shipped / META_DIR / name)
    return root


def model_with_kind_head(root: Path, **kind) -> Path:
    """model_without_kind_head plus a stand-in kind head (write_kind_head's ``kind`` arguments)."""
    from ensemble.detector import META_DIR

    root = model_without_kind_head(root)
    write_kind_head(root / META_DIR, **kind)
    return root


def default_sigint() -> None:
    """preexec_fn for a child a test will interrupt: a test run started in the background (``make test &``) hands
    its children an ignored SIGINT, which Python then keeps, so Ctrl-C would never reach the child."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
