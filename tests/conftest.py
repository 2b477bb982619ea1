"""Session-wide set-up: the journal key lives in a temporary folder, never in the user's home; a model folder
without the native-scale meta-network, whatever the shipped model holds."""
import os
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

NATIVE_META_FILES = ("meta_native.onnx", "meta_native.keras", "native.json")
"""What final_model/ holds of the native-scale meta-network (ensemble.detector's NATIVE_META and native.json)."""


@pytest.fixture(scope="session", autouse=True)
def private_data_home(tmp_path_factory):
    # Sorting signs its journals with a per-user key in $XDG_DATA_HOME; subprocesses inherit this too.
    old = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("data-home"))
    yield
    if old is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = old


@pytest.fixture(scope="session")
def model_without_native_meta(tmp_path_factory):
    """A model folder (model/ and final_model/) copied from the repository's, less the native-scale meta-network
    (final_model/meta_native.onnx, meta_native.keras, native.json): for the tests of what a model without one
    does, which must not depend on whether the shipped model has one. Skips while no trained model exists."""
    for part in ("model/cnn.onnx", "final_model/meta.onnx", "final_model/metadata.json"):
        if not (REPO_ROOT / part).exists():
            pytest.skip(f"no trained model: {REPO_ROOT / part} not found")
    root = tmp_path_factory.mktemp("model-without-native-meta")
    shutil.copytree(REPO_ROOT / "model", root / "model")
    shutil.copytree(REPO_ROOT / "final_model", root / "final_model", ignore=shutil.ignore_patterns(*NATIVE_META_FILES))
    assert not any((root / "final_model" / n).exists() for n in NATIVE_META_FILES)
    return root
