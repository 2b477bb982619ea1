"""Per-image feature vectors for the meta-network: CNN patch scores and embeddings aggregated, plus focus measures.

The CNN is passed in as a plain callable, so the same code serves training (Keras or ONNX) and inference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .cnn import EMBED_DIM
from .focus import FOCUS_FEATURE_NAMES, focus_features, noise_sigma
from .patches import PATCH_SIZE, PatchGrid, extract_patches, scored_patches

PatchScorer = Callable[[np.ndarray], np.ndarray]
"""float32 (N, P, P, 1) patches in [0, 1] → float32 (N, 1 + EMBED_DIM): each patch's blur probability, then its
embedding (cnn.scoring_model)."""

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
CNN_FEATURE_NAMES = (
    "cnn_mean", "cnn_min", *(f"cnn_q{int(q * 100)}" for q in QUANTILES), "cnn_max",
    "cnn_share_sharp", "cnn_top3_sharp", "textured_share",
)
EMBED_FEATURE_NAMES = (*(f"embed_mean_{i}" for i in range(EMBED_DIM)), *(f"embed_std_{i}" for i in range(EMBED_DIM)))
FEATURE_NAMES = CNN_FEATURE_NAMES + FOCUS_FEATURE_NAMES + EMBED_FEATURE_NAMES
LAPVAR_INDEX = FEATURE_NAMES.index("log_lapvar@1x")


def patch_inputs(patches: np.ndarray) -> np.ndarray:
    """uint8 (N, P, P) → float32 (N, P, P, 1) in [0, 1], the CNN's input."""
    return (patches.astype(np.float32) * (1.0 / 255.0))[..., None]


def cnn_summary(probs: np.ndarray, textured: np.ndarray) -> np.ndarray:
    """Aggregate patch probabilities (N,) into the CNN part of the feature vector, float32 (len(CNN_FEATURE_NAMES),).

    Quantiles and the share of sharp patches let a sharp subject in front of a soft background count as sharp.
    """
    p = probs[~np.isnan(probs)]
    top3 = np.sort(p)[:3]
    return np.asarray(
        [p.mean(), p.min(), *np.quantile(p, QUANTILES), p.max(),
         float((p < 0.5).mean()), float(top3.mean()), float(textured.mean())],
        dtype=np.float32,
    )


def embed_summary(embeddings: np.ndarray) -> np.ndarray:
    """Mean and spread over the scored patches of their (M, EMBED_DIM) embeddings → float32 (2 · EMBED_DIM,)."""
    return np.concatenate([embeddings.mean(axis=0), embeddings.std(axis=0)]).astype(np.float32)


@dataclass(frozen=True)
class PatchJob:
    """One analysis-scale grey image up to its CNN call (:func:`prepare_patches`): its noise σ, patch grid, the
    patches the CNN runs on (``chosen``, bool per patch) and its focus measures. :func:`job_features` finishes it
    from the CNN's scores, so the CNN calls can be grouped as a caller likes (one image, a batch, several images
    from several threads)."""

    noise: float
    grid: PatchGrid
    chosen: np.ndarray
    focus: np.ndarray

    @property
    def patch_count(self) -> int:
        return int(self.chosen.sum())

    def inputs(self) -> np.ndarray:
        """float32 (patch_count, P, P, 1): the CNN's input."""
        return patch_inputs(self.grid.patches[self.chosen])


def prepare_patches(gray: np.ndarray, patch_size: int = PATCH_SIZE) -> PatchJob:
    """Everything of ``gray``'s features that needs no CNN."""
    noise = noise_sigma(gray)
    grid = extract_patches(gray, patch_size, noise=noise)
    return PatchJob(noise, grid, scored_patches(grid), focus_features(gray, noise))


def check_scores(scores: np.ndarray) -> np.ndarray:
    """``scores`` if the CNN gave 1 + EMBED_DIM values a patch, else ValueError naming the problem."""
    if scores.ndim != 2 or scores.shape[1] != 1 + EMBED_DIM:
        given = scores.shape[1] if scores.ndim == 2 else 1
        raise ValueError(f"the CNN gives {given} value(s) a patch, not 1 + {EMBED_DIM}: a model from before patch "
                         "embeddings; retrain it with CNN.py and train.py")
    return scores


def job_features(job: PatchJob, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image's float32 (len(FEATURE_NAMES),) feature vector and float32 patch probabilities (NaN for patches
    not run), from the CNN's (patch_count, 1 + EMBED_DIM) scores of ``job.inputs()``."""
    p = np.full(len(job.grid.patches), np.nan, np.float32)
    p[job.chosen] = scores[:, 0]
    row = np.concatenate([cnn_summary(p, job.grid.textured), job.focus, embed_summary(scores[:, 1:])])
    return row.astype(np.float32), p


def job_matrix(jobs: Sequence[PatchJob], scores: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The float32 (N, len(FEATURE_NAMES)) feature matrix of ``jobs`` and each one's patch probabilities, from their
    CNN scores (score_jobs, or a caller's own grouping of the calls)."""
    done = [job_features(job, check_scores(np.asarray(s))) for job, s in zip(jobs, scores)]
    feats = np.asarray([row for row, _ in done], dtype=np.float32).reshape(len(jobs), len(FEATURE_NAMES))
    return feats, [p for _, p in done]


def score_jobs(jobs: Sequence[PatchJob], scorer: PatchScorer) -> list[np.ndarray]:
    """Each job's CNN scores, from one call for all their patches."""
    if not jobs:
        return []
    batch = np.concatenate([job.inputs() for job in jobs])
    scores = check_scores(scorer(batch) if len(batch) else np.zeros((0, 1 + EMBED_DIM), np.float32))
    bounds = np.cumsum([0] + [job.patch_count for job in jobs])
    return [scores[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def batch_features(
    grays: Sequence[np.ndarray], scorer: PatchScorer, patch_size: int = PATCH_SIZE
) -> tuple[np.ndarray, list[PatchGrid], list[np.ndarray]]:
    """Features of analysis-scale grey images with one CNN call for all their patches.

    ``patch_size`` must be the side the CNN was trained on (its ``cnn.json`` hyper-parameters).

    Returns the float32 (N, len(FEATURE_NAMES)) matrix, each image's PatchGrid and its float32 patch probabilities
    (NaN for patches not run: see patches.scored_patches).
    """
    jobs = [prepare_patches(g, patch_size) for g in grays]
    feats, probs = job_matrix(jobs, score_jobs(jobs, scorer))
    return feats, [job.grid for job in jobs], probs


def feature_matrix(grays: Sequence[np.ndarray], scorer: PatchScorer, batch: int = 32, progress=None,
                   patch_size: int = PATCH_SIZE, transform: Callable[[np.ndarray], np.ndarray] | None = None
                   ) -> np.ndarray:
    """batch_features over many images in chunks of ``batch`` → float32 (N, len(FEATURE_NAMES)).

    ``progress`` optionally wraps the range of chunk starts (for example a tqdm partial). ``transform``, if given,
    changes each image just before its features are computed (one chunk at a time, so a perturbed copy of a large
    set is never held whole).
    """
    starts = range(0, len(grays), batch)
    starts = progress(starts) if progress else starts
    parts = [batch_features([transform(g) for g in grays[s : s + batch]] if transform else grays[s : s + batch],
                            scorer, patch_size)[0] for s in starts]
    return np.concatenate(parts) if parts else np.zeros((0, len(FEATURE_NAMES)), np.float32)
