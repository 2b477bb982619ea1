"""Pictures: training curves, ROC, confusion matrix, reliability diagram and blur-map overlays (PNG files)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_png: str | Path, title: str | None = None) -> Path:
    """Title, lay out, write and close a figure."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    _pyplot().close(fig)
    return Path(out_png)


def training_curves(log_csv: str | Path, out_png: str | Path, title: str = "CNN training") -> Path:
    """Loss and accuracy, train against validation, from a Keras CSVLogger file.

    A run without validation data has only "NA" in its val_ columns; then only the training curve is drawn.
    """
    plt = _pyplot()
    rows = list(csv.DictReader(open(log_csv)))
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy")):
        for column, marker, label in ((key, "o-", "train"), (f"val_{key}", "s-", "validation")):
            if column in rows[0] and all(r[column] not in ("", "NA") for r in rows):
                ax.plot(epochs, [float(r[column]) for r in rows], marker, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, out_png, title)


def roc_curves(y: np.ndarray, scores: dict[str, np.ndarray], out_png: str | Path, title: str = "ROC") -> Path:
    """One ROC curve per named score (higher = blurrier), with its AUC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, score in scores.items():
        fpr, tpr, _ = roc_curve(y, score)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, score):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("false positive rate (sharp called blurry)")
    ax.set_ylabel("true positive rate (blurry found)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    return _save(fig, out_png)


def confusion_matrices(confusions: dict[str, list[list[int]]], out_png: str | Path, title: str = "") -> Path:
    """Side-by-side 2 × 2 confusion matrices (rows: true sharp/blurry, columns: predicted)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(confusions), figsize=(3.6 * len(confusions), 3.4), squeeze=False)
    for ax, (name, cm) in zip(axes[0], confusions.items()):
        cm = np.asarray(cm)
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
        ax.set_xticks([0, 1], ["sharp", "blurry"])
        ax.set_yticks([0, 1], ["sharp", "blurry"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name)
    return _save(fig, out_png, title)


def reliability_diagram(y: np.ndarray, probs: dict[str, np.ndarray], out_png: str | Path, title: str = "") -> Path:
    """Observed blurry rate against predicted probability in 10 bins, with the diagonal of perfect calibration."""
    from .metrics import expected_calibration_error, reliability_bins

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    for name, prob in probs.items():
        bins = reliability_bins(y, prob)
        ax.plot(bins["confidence"], bins["observed"], "o-",
                label=f"{name} (ECE {expected_calibration_error(y, prob):.3f})")
    ax.set_xlabel("predicted blur probability")
    ax.set_ylabel("observed share blurry")
    ax.set_title(title or "Reliability diagram")
    ax.legend(loc="upper left")
    return _save(fig, out_png)


def overlay_blur_map(rgb: np.ndarray, blur_map: np.ndarray, origin: tuple[int, int], patch: int,
                     alpha: float = 0.45) -> np.ndarray:
    """The photo with its per-patch blur map laid over it: uint8 (H, W, 3) RGB, red = blurred, green = sharp.

    ``rgb`` is the analysis-scale photo; ``blur_map`` (rows, cols) probabilities, NaN for flat patches (left clear).
    """
    import cv2

    out = rgb.astype(np.float32).copy()
    y0, x0 = origin
    for (r, c), p in np.ndenumerate(blur_map):
        if np.isnan(p):
            continue
        colour = np.array([255 * p, 255 * (1 - p), 40], np.float32)
        ys, xs = slice(y0 + r * patch, y0 + (r + 1) * patch), slice(x0 + c * patch, x0 + (c + 1) * patch)
        out[ys, xs] = (1 - alpha) * out[ys, xs] + alpha * colour
    out = np.clip(out, 0, 255).astype(np.uint8)
    for r in range(blur_map.shape[0] + 1):
        cv2.line(out, (x0, y0 + r * patch), (x0 + blur_map.shape[1] * patch, y0 + r * patch), (255, 255, 255), 1)
    for c in range(blur_map.shape[1] + 1):
        cv2.line(out, (x0 + c * patch, y0), (x0 + c * patch, y0 + blur_map.shape[0] * patch), (255, 255, 255), 1)
    return out


def blur_map_picture(rgb: np.ndarray, result) -> np.ndarray:
    """The analysis-scale photo ``rgb`` (uint8 (H, W, 3)) with ``result``'s blur map (a BlurResult: its cells at
    either scale, placed on the analysis-scale picture) over it and its probability and label in the corner."""
    import cv2

    if result.blur_map is not None and result.blur_map.size:
        picture = overlay_blur_map(rgb, result.blur_map, result.grid_origin, result.patch_size)
    else:
        picture = rgb.copy()
    text = (f"flat: {result.flat}" if result.blur_probability is None
            else f"blur {100 * result.blur_probability:.0f}% ({result.label})")
    scale = max(0.5, min(picture.shape[:2]) / 640)
    thick = max(1, round(2 * scale))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    pad = round(6 * scale)
    # A dark box behind the text keeps it legible on any photo.
    cv2.rectangle(picture, (0, 0), (tw + 2 * pad, th + base + 2 * pad), (0, 0, 0), -1)
    cv2.putText(picture, text, (pad, pad + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return picture
