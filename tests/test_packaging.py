"""The wheel: what `pip install blur-ensemble` gets must score photos and serve the review page without the repo."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the venv's own setuptools builds it, so the test needs no network.
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(out), str(REPO)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    (wheel,) = out.glob("blur_ensemble-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist()), run.stderr


def test_wheel_carries_the_shipped_models_and_the_review_page(wheel_names):
    names, _ = wheel_names
    for name in ("ensemble/shipped/model/cnn.onnx", "ensemble/shipped/model/cnn.json",
                 "ensemble/shipped/final_model/meta.onnx", "ensemble/shipped/final_model/metadata.json",
                 "ensemble/review/static/index.html", "ensemble/review/static/review.js",
                 "ensemble/review/static/review.css", "ensemble/review/static/favicon.svg",
                 "ensemble/cli.py", "ensemble/server/__init__.py", "ensemble/cameras/__init__.py"):
        assert name in names, name
    # The kind head travels with the meta-network when the model has one (a model without it still loads).
    for name in ("kind.onnx", "kind.json"):
        assert ((REPO / "final_model" / name).exists()) == (f"ensemble/shipped/final_model/{name}" in names), name
    # The light install scores with ONNX Runtime; the Keras files stay in the repo for retraining.
    assert not any(n.endswith(".keras") for n in names)
    assert any(n.endswith("entry_points.txt") for n in names)


def test_wheel_builds_without_packaging_warnings(wheel_names):
    _, stderr = wheel_names
    assert "deprecated" not in stderr.lower() and "absent from the `packages`" not in stderr, stderr[-2000:]
