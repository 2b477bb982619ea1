"""The shipped detector: loading, results, batching, scale invariance and the ONNX export's fidelity."""
import json
from pathlib import Path

import numpy as np
import pytest

from ensemble import BlurDetector, ImageError
from ensemble.augment import apply_blur
from ensemble.detector import default_model_root
from ensemble.features import patch_inputs
from ensemble.imageio import to_gray
from ensemble.patches import PATCH_SIZE
from fixtures import make_photo, save_jpeg

ROOT = default_model_root()


@pytest.fixture(scope="module")
def detector():
    return BlurDetector.load()


@pytest.fixture(scope="module")
def photo():
    return make_photo(11, size=(720, 960))


def test_shipped_models_are_committed_and_small():
    files = [ROOT / "model" / "cnn.keras", ROOT / "model" / "cnn.onnx", ROOT / "final_model" / "meta.keras",
             ROOT / "final_model" / "meta.onnx", ROOT / "final_model" / "metadata.json"]
    for f in files:
        assert f.exists(), f
    total = sum(f.stat().st_size for d in ("model", "final_model") for f in (ROOT / d).rglob("*") if f.is_file())
    assert total < 20 * 1024 * 1024


def test_metadata_records_what_a_reader_needs():
    meta = json.loads((ROOT / "final_model" / "metadata.json").read_text())
    for key in ("threshold", "data", "cnn", "meta", "validation_metrics", "versions", "created", "baselines"):
        assert key in meta
    assert meta["data"]["fingerprint"] and meta["data"]["images"] > 0
    assert 0.0 < meta["threshold"] < 1.0


def test_model_trained_on_other_features_is_refused(tmp_path):
    import shutil

    for d in ("model", "final_model"):
        shutil.copytree(ROOT / d, tmp_path / d)
    meta_file = tmp_path / "final_model" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    assert BlurDetector.load(tmp_path).check()  # the copy itself loads
    meta["feature_names"] = meta["feature_names"][:-1]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="retrain it with train.py"):
        BlurDetector.load(tmp_path)


def test_cnn_gives_probability_and_embedding_and_an_older_export_is_refused(detector, photo):
    from ensemble.cnn import EMBED_DIM
    from ensemble.features import FEATURE_NAMES, batch_features

    rng = np.random.default_rng(1)
    out = detector.cnn(patch_inputs(rng.integers(0, 256, (5, PATCH_SIZE, PATCH_SIZE), dtype=np.uint8)))
    assert out.shape == (5, 1 + EMBED_DIM)
    assert ((out[:, 0] >= 0) & (out[:, 0] <= 1)).all() and (out[:, 1:] >= 0).all()  # sigmoid, then ReLU
    gray = to_gray(photo)
    feats, _, _ = batch_features([gray], detector.cnn)
    assert feats.shape == (1, len(FEATURE_NAMES)) and np.isfinite(feats).all()
    # A CNN exported before the embedding gives one value a patch: a clear error, not a misread feature vector.
    with pytest.raises(ValueError, match="retrain it with CNN.py and train.py"):
        batch_features([gray], lambda x: detector.cnn(x)[:, 0])


def test_predict_array_result_fields(detector, photo):
    r = detector.predict_array(photo)
    assert 0.0 <= r.blur_probability <= 1.0
    assert r.label in ("sharp", "blurry")
    assert r.label == ("blurry" if r.blur_probability >= detector.threshold else "sharp")
    assert r.laplacian_var > 0 and (r.width, r.height) == (960, 720)
    assert r.blur_map.ndim == 2
    assert set(r.record("x.jpg")) == {"path", "label", "blur_probability", "laplacian_var", "width", "height", "error",
                                      "blur_kind", "blur_kind_probability", "motion_angle", "blur_extent_px",
                                      "noise_sigma", "scale", "content"}


def test_heavy_blur_is_called_blurry_and_sharp_is_not(detector, photo):
    gray = to_gray(photo)
    sharp = detector.predict_array(gray)
    blurred = detector.predict_array(apply_blur(gray, "defocus", 8.0))
    assert blurred.blur_probability > sharp.blur_probability
    assert blurred.label == "blurry"


def test_batch_matches_single(detector, photo, tmp_path):
    gray = to_gray(photo)
    imgs = [gray, apply_blur(gray, "motion", 12.0, 45.0), gray[:300, :500]]
    path = tmp_path / "p.jpg"
    save_jpeg(path, photo, quality=95)
    batch = detector.predict_batch(imgs + [str(path)])
    singles = [detector.predict_array(i) for i in imgs] + [detector.predict_path(path)]
    for b, s in zip(batch, singles):
        assert abs(b.blur_probability - s.blur_probability) < 1e-5
    assert len(detector.predict_proba(imgs)) == 3 and set(detector.predict(imgs)) <= {0, 1}


def test_same_verdict_at_1mp_and_24mp(detector):
    """The analysis scale makes the verdict independent of the resolution the photo was saved at."""
    import cv2

    big = cv2.resize(make_photo(5, size=(750, 1000)), (6000, 4000), interpolation=cv2.INTER_CUBIC)  # 24 MP
    for img in (big, cv2.GaussianBlur(big, (0, 0), 12)):
        small = cv2.resize(img, (1224, 816), interpolation=cv2.INTER_AREA)  # 1 MP
        p_big, p_small = detector.predict_array(img), detector.predict_array(small)
        assert p_big.label == p_small.label
        assert abs(p_big.blur_probability - p_small.blur_probability) < 0.1


def test_unreadable_file_raises_one_line_error(detector, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageError) as err:
        detector.predict_path(bad)
    assert "\n" not in str(err.value)


def test_onnx_export_matches_keras():
    """The light runtime (ONNX) and Keras agree to 1e-4 on both networks."""
    pytest.importorskip("tensorflow")
    onnx_det = BlurDetector.load(runtime="onnx")
    keras_det = BlurDetector.load(runtime="keras")
    rng = np.random.default_rng(0)
    patches = patch_inputs(rng.integers(0, 256, (16, PATCH_SIZE, PATCH_SIZE), dtype=np.uint8))
    np.testing.assert_allclose(onnx_det.cnn(patches), keras_det.cnn(patches), atol=1e-4)
    feats = rng.normal(0, 1, (32, len(onnx_det.metadata["feature_names"]))).astype(np.float32)
    np.testing.assert_allclose(onnx_det.meta(feats), keras_det.meta(feats), atol=1e-4)


def test_keras_files_load_in_safe_mode():
    pytest.importorskip("tensorflow")
    from ensemble.runtime import load_keras

    assert load_keras(Path(ROOT) / "model" / "cnn.keras").name == "patch_cnn"


class _CountingContent:
    """The shipped content classifier, counting its calls."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def classify(self, gray):
        self.calls += 1
        return self.model.classify(gray)


def _counted(detector) -> tuple[BlurDetector, _CountingContent]:
    counting = _CountingContent(detector.content)
    return BlurDetector(detector.cnn, detector.meta, detector.metadata, kind=detector.kind,
                        meta_native=detector.meta_native, content=counting, scale="auto"), counting


def test_auto_asks_the_content_classifier_once_a_photo(detector, photo, tmp_path):
    path = save_jpeg(tmp_path / "big.jpg", np.repeat(np.repeat(photo, 2, axis=0), 2, axis=1))
    counted, counting = _counted(detector)
    result = counted.predict_path(path, with_map=False)
    assert (result.content, result.scale, counting.calls) == ("photo", "screen", 1)
    assert result.record() == detector.predict_path(path, with_map=False, scale="auto").record()


def test_auto_asks_the_content_classifier_once_a_page_and_judges_it_at_native_scale(detector, tmp_path):
    from ensemble import documents
    from fixtures import require_fonts

    require_fonts()
    spec = documents.sample_spec(np.random.default_rng(5), "heldout", dpi=200)
    path = save_jpeg(tmp_path / "page.jpg", documents.make_page(spec).gray)
    counted, counting = _counted(detector)
    result = counted.predict_path(path, with_map=False)
    assert (result.content, result.scale, counting.calls) == ("document", "native", 1)
