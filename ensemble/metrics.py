"""Classification metrics for blur probabilities (numpy in, plain floats out)."""
from __future__ import annotations

import numpy as np


def expected_calibration_error(y: np.ndarray, prob: np.ndarray, bins: int = 10) -> float:
    """ECE with equal-width probability bins: the count-weighted mean |accuracy − confidence| of P(blurry)."""
    y, prob = np.asarray(y, float), np.asarray(prob, float)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(prob, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            ece += sel.mean() * abs(y[sel].mean() - prob[sel].mean())
    return float(ece)


def reliability_bins(y: np.ndarray, prob: np.ndarray, bins: int = 10) -> dict:
    """Per-bin mean predicted probability, observed blurry rate and count (NaN for empty bins)."""
    y, prob = np.asarray(y, float), np.asarray(prob, float)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(prob, edges[1:-1]), 0, bins - 1)
    conf = [float(prob[idx == b].mean()) if (idx == b).any() else float("nan") for b in range(bins)]
    rate = [float(y[idx == b].mean()) if (idx == b).any() else float("nan") for b in range(bins)]
    count = [int((idx == b).sum()) for b in range(bins)]
    return {"edges": edges.tolist(), "confidence": conf, "observed": rate, "count": count}


def best_threshold(score: np.ndarray, y: np.ndarray, blurry_below: bool = False) -> float:
    """The cut on ``score`` with the best balanced accuracy on (score, y).

    With ``blurry_below`` an image is blurry when score < threshold (as for the variance of the Laplacian),
    otherwise when score >= threshold.
    """
    score, y = np.asarray(score, float), np.asarray(y, int)
    cand = np.unique(score)
    cand = np.concatenate([cand, [cand[-1] + 1e-9]]) if len(cand) else np.array([0.5])
    best, best_t = -1.0, float(cand[0])
    pos, neg = max(1, (y == 1).sum()), max(1, (y == 0).sum())
    for t in cand:
        pred = score < t if blurry_below else score >= t
        bal = 0.5 * ((pred & (y == 1)).sum() / pos + (~pred & (y == 0)).sum() / neg)
        if bal > best:
            best, best_t = bal, float(t)
    return best_t


def classification_report(y: np.ndarray, prob: np.ndarray, pred: np.ndarray) -> dict:
    """Accuracy, balanced accuracy, precision/recall for blurry, ROC AUC, ECE and the confusion matrix.

    ``prob`` is P(blurry) (or any score ranking blurry higher); ``pred`` the 0/1 decisions. The confusion matrix is
    [[sharp→sharp, sharp→blurry], [blurry→sharp, blurry→blurry]].
    """
    from sklearn.metrics import roc_auc_score

    y, pred = np.asarray(y, int), np.asarray(pred, int)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    n = len(y)
    recall = tp / (tp + fn) if tp + fn else float("nan")
    specificity = tn / (tn + fp) if tn + fp else float("nan")
    both = len(np.unique(y)) == 2
    return {
        "n": n,
        "accuracy": (tp + tn) / n if n else float("nan"),
        "balanced_accuracy": float(np.nanmean([recall, specificity])),
        "precision_blurry": tp / (tp + fp) if tp + fp else float("nan"),
        "recall_blurry": recall,
        "roc_auc": float(roc_auc_score(y, prob)) if both else float("nan"),
        "ece": expected_calibration_error(y, np.clip(prob, 0, 1)),
        "confusion": [[tn, fp], [fn, tp]],
    }


def scene_bootstrap_auc(y: np.ndarray, prob: np.ndarray, groups, resamples: int = 1000, level: float = 0.95,
                        seed: int = 0) -> list[float] | None:
    """Percentile interval of the ROC AUC when whole scenes (``groups``) are resampled with replacement.

    Shots of one scene are not independent, so resampling photos would understate the spread. Returns
    [low, high], or None when there are fewer than two scenes or the labels are not both present.
    """
    from sklearn.metrics import roc_auc_score

    y, prob = np.asarray(y, int), np.asarray(prob, float)
    _, group_idx = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    members = [np.flatnonzero(group_idx == g) for g in range(group_idx.max() + 1)] if len(y) else []
    if len(members) < 2 or len(np.unique(y)) < 2:
        return None
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(resamples):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        if len(np.unique(y[idx])) == 2:
            aucs.append(roc_auc_score(y[idx], prob[idx]))
    if not aucs:
        return None
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(aucs, tail)), float(np.percentile(aucs, 100 - tail))]
