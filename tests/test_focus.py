"""Focus measures, patches and artificial blur on known inputs."""
import numpy as np
import pytest

from ensemble.augment import BLUR_KINDS, apply_blur
from ensemble.focus import FOCUS_FEATURE_NAMES, focus_features, laplacian_variance
from ensemble.imageio import to_gray
from ensemble.patches import PATCH_SIZE, blur_map, extract_patches
from fixtures import make_photo


@pytest.fixture(scope="module")
def photo():
    return to_gray(make_photo(3, size=(480, 640)))


def test_flat_image_has_zero_laplacian_variance():
    assert laplacian_variance(np.full((100, 120), 128, np.uint8)) == 0.0


@pytest.mark.parametrize("kind,strength", [("gaussian", 2.0), ("defocus", 4.0), ("motion", 15.0)])
def test_blurred_copy_scores_lower(photo, kind, strength):
    blurred = apply_blur(photo, kind, strength, angle_deg=30)
    assert laplacian_variance(blurred) < 0.5 * laplacian_variance(photo)
    sharp_f, blur_f = focus_features(photo), focus_features(blurred)
    i = FOCUS_FEATURE_NAMES.index("log_tenengrad@1x")
    assert blur_f[i] < sharp_f[i]


def test_blur_kernels_preserve_mean_brightness(photo):
    for kind in BLUR_KINDS:
        out = apply_blur(photo, kind, 3.0)
        assert abs(float(out.mean()) - float(photo.mean())) < 2.0


def test_focus_features_shape_and_finite(photo):
    f = focus_features(photo)
    assert f.shape == (len(FOCUS_FEATURE_NAMES),) and f.dtype == np.float32
    assert np.isfinite(f).all()
    assert np.isfinite(focus_features(np.zeros((20, 30), np.uint8))).all()


def test_patch_grid_covers_image_and_marks_flat_patches(photo):
    img = photo.copy()
    img[:, : img.shape[1] // 2] = 90  # left half flat
    grid = extract_patches(img)
    assert grid.patches.shape == (grid.rows * grid.cols, PATCH_SIZE, PATCH_SIZE)
    assert grid.rows == img.shape[0] // PATCH_SIZE and grid.cols == img.shape[1] // PATCH_SIZE
    y0, x0 = grid.origin
    np.testing.assert_array_equal(grid.patches[0], img[y0 : y0 + PATCH_SIZE, x0 : x0 + PATCH_SIZE])
    flat_cols = grid.textured.reshape(grid.rows, grid.cols)[:, 0]
    assert not flat_cols.any() and grid.textured.reshape(grid.rows, grid.cols)[:, -1].all()
    bmap = blur_map(grid, np.linspace(0, 1, grid.rows * grid.cols))
    assert bmap.shape == (grid.rows, grid.cols) and np.isnan(bmap[:, 0]).all()


def test_tiny_image_still_gives_one_patch():
    grid = extract_patches(np.random.default_rng(0).integers(0, 255, (20, 30), dtype=np.uint8))
    assert grid.patches.shape == (1, PATCH_SIZE, PATCH_SIZE)
