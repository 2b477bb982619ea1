"""The shipped model on held-out photos of ../shared it never saw (the scene split's test side)."""
import numpy as np
import pytest

from ensemble import BlurDetector
from ensemble.datasets import DEFAULT_DATA, list_items, load_dataset, split_by_scene
from fixtures import require_shared


def test_shipped_model_scores_at_least_94_percent_on_held_out_scenes():
    require_shared(DEFAULT_DATA)
    items = list_items(DEFAULT_DATA)
    # The same split load_testdata.py makes with its defaults: the model was trained on the other side.
    _, test_idx = split_by_scene([it.scene for it in items], 0.2, 0, labels=[it.label for it in items])
    data = load_dataset([items[i] for i in test_idx], progress=False)
    assert len(data) > 300 and not data.warnings
    det = BlurDetector.load()
    probs = np.concatenate([det.predict_proba(data.images[i : i + 32]) for i in range(0, len(data), 32)])
    accuracy = float(((probs >= det.threshold).astype(int) == np.asarray(data.labels)).mean())
    assert accuracy >= 0.94, f"accuracy {accuracy:.4f} on {len(data)} held-out photos"
