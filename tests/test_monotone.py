"""P(blurry) never falls as an image is blurred more (issue 20), and the ensemble never says sharp where both of its
parts say blurry beyond doubt (detector.AGREED_BLURRY)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ensemble import BlurDetector
from ensemble.augment import apply_blur
from ensemble.datasets import DEFAULT_DATA, list_items, load_dataset, split_by_scene
from ensemble.demo import bundled_photos
from ensemble.detector import AGREED_BLURRY
from ensemble.features import FEATURE_NAMES, LAPVAR_INDEX
from ensemble.imageio import to_gray
from fixtures import require_shared

SIGMAS = (0, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32)
SLACK = 0.005
"""What P may wobble by between two blur levels: the meta-network's rounding near P = 1 (a drop of 0.0038 was the
largest seen over 60 held-out sharp photos and all of SIGMAS)."""


@pytest.fixture(scope="module")
def detector():
    return BlurDetector.load(threads=2, scale="screen")


@pytest.fixture(scope="module")
def photos():
    """Held-out photos of ../shared (the test side of the default scene split, sharp and blurry) and the packages'
    photos, grey."""
    require_shared(DEFAULT_DATA)
    items = list_items(DEFAULT_DATA)
    _, test_idx = split_by_scene([it.scene for it in items], 0.2, 0, labels=[it.label for it in items])
    picked = [items[i] for i in test_idx[::40]]
    data = load_dataset(picked, progress=False)
    return list(data.images) + [to_gray(p) for p in bundled_photos().values()]


def probabilities(detector, gray, sigmas):
    images = [gray if s == 0 else apply_blur(gray, "gaussian", s) for s in sigmas]
    # A picture blurred to nothing is 'flat' (no probability): it is then at least as blurry as before.
    return np.array([1.0 if r.blur_probability is None else r.blur_probability
                     for r in detector.predict_batch(images)])


def test_probability_never_falls_as_gaussian_blur_grows(detector, photos):
    assert len(photos) >= 15
    worst = []
    for gray in photos:
        p = probabilities(detector, gray, SIGMAS)
        worst.append(float(np.max(np.maximum.accumulate(p) - p)))
    assert max(worst) <= SLACK, f"P fell by {max(worst):.4f} as σ grew (photo {int(np.argmax(worst))})"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_more_blur_is_never_judged_sharper(detector, photos, data):
    gray = photos[data.draw(st.integers(0, len(photos) - 1), label="photo")]
    low = data.draw(st.floats(0.0, 31.0), label="sigma")
    high = data.draw(st.floats(low + 0.5, 32.0), label="more")
    p_low, p_high = probabilities(detector, gray, (low, high))
    assert p_high >= p_low - SLACK


@pytest.fixture(scope="module")
def native_detector():
    det = BlurDetector.load(threads=2, scale="native")
    assert det.meta_native is not None, "the shipped model has no native-scale meta-network"
    return det


@pytest.fixture(scope="module")
def large_images(photos):
    """Full-resolution material the native scale is judged on: held-out pages (fonts and layouts training never
    saw, 150-300 dpi) and large photos tiled at their own pixel size from the held-out and packages' photos."""
    from ensemble import documents
    from ensemble.native_training import large_photo

    rng = np.random.default_rng(20)
    pages = [documents.make_page(documents.sample_spec(rng, "heldout", dpi=dpi)).gray for dpi in (150, 200, 300)]
    big = [large_photo(g, np.random.default_rng([20, i]))[:1600, :1600] for i, g in enumerate(photos[::3])]
    return pages + big


@pytest.mark.xfail(strict=True, reason="the native model of 2026-12-03 (twenty-six measures, 3,000 pages) lets P "
                   "fall by up to 0.019 on these images, at P >= 0.95 where no verdict changes (a large photo: "
                   "0.999 at sigma 6 to 0.979 at sigma 32); training on blur further out did not fix it "
                   "(docs/native-scale.md); "
                   "issue 20 stays open for it")
def test_native_probability_never_falls_as_gaussian_blur_grows(native_detector, large_images):
    worst = []
    for gray in large_images:
        p = probabilities(native_detector, gray, SIGMAS)
        worst.append(float(np.max(np.maximum.accumulate(p) - p)))
    assert max(worst) <= SLACK, f"P fell by {max(worst):.4f} as σ grew (image {int(np.argmax(worst))})"


class _Const:
    """A stand-in meta-network that calls everything sharp."""

    def __call__(self, x):
        return np.zeros((len(x), 1), np.float32)


def test_both_parts_saying_blurry_overrule_the_meta_network(detector):
    lap_limit, cnn_limit = AGREED_BLURRY
    feats = np.zeros((3, len(FEATURE_NAMES)), np.float32)
    feats[:, LAPVAR_INDEX] = np.log1p([lap_limit * 0.8, lap_limit * 0.8, lap_limit * 3])
    feats[:, 0] = [cnn_limit + 0.1, cnn_limit - 0.3, cnn_limit + 0.1]
    blur = detector._agreed(feats, _Const()(feats)[:, 0])
    assert blur[0] >= detector.threshold  # both say blurry: not sharp
    assert blur[1] == 0 and blur[2] == 0  # only one of them does: the meta-network's word stands
