"""The shipped model on held-out photos of ../shared it never saw (the scene split's test side)."""
import numpy as np
import pytest

from ensemble import BlurDetector
from ensemble.camera_effects import PERTURBATIONS
from ensemble.datasets import DEFAULT_DATA, list_items, load_dataset, split_by_scene
from fixtures import require_shared


@pytest.fixture(scope="module")
def held_out():
    require_shared(DEFAULT_DATA)
    items = list_items(DEFAULT_DATA)
    # The same split load_testdata.py makes with its defaults: the model was trained on the other side.
    _, test_idx = split_by_scene([it.scene for it in items], 0.2, 0, labels=[it.label for it in items])
    data = load_dataset([items[i] for i in test_idx], progress=False)
    assert len(data) > 300 and not data.warnings
    return data


def accuracy(det, images, labels) -> float:
    probs = np.concatenate([det.predict_proba(images[i : i + 32]) for i in range(0, len(images), 32)])
    return float(((probs >= det.threshold).astype(int) == np.asarray(labels)).mean())


def test_shipped_model_scores_at_least_94_percent_on_held_out_scenes(held_out):
    acc = accuracy(BlurDetector.load(), held_out.images, held_out.labels)
    assert acc >= 0.94, f"accuracy {acc:.4f} on {len(held_out)} held-out photos"


@pytest.mark.parametrize("change, level", [("noise", 8), ("jpeg", 30), ("exposure", 0.3)])
def test_held_out_scenes_stay_right_when_noisy_recompressed_or_dark(held_out, change, level):
    # The model before camera-effect training scored 0.572, 0.921 and 0.931 here (benchmarks/bench_robustness.py).
    rng = np.random.default_rng(0)
    perturb = PERTURBATIONS[change][0]
    changed = [perturb(g, level, rng) for g in held_out.images]
    acc = accuracy(BlurDetector.load(), changed, held_out.labels)
    assert acc >= 0.94, f"accuracy {acc:.4f} on {len(held_out)} held-out photos after {change} {level}"
