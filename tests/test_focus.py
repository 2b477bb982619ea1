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


def _reference_focus(gray, noise):
    """focus_features written the plain way (float32 OpenCV filters, numpy statistics), for the fast version to
    be held to: the shipped meta-network was trained on these values."""
    import cv2

    feats, lapvars = [], []
    for factor in (1, 2, 4):
        h, w = gray.shape
        img = gray if factor == 1 else cv2.resize(gray[: h // factor * factor, : w // factor * factor],
                                                  (w // factor, h // factor), interpolation=cv2.INTER_AREA)
        lap = cv2.Laplacian(img, cv2.CV_32F).astype(np.float64)
        th, tw = img.shape[0] // 8, img.shape[1] // 8
        tiles = lap[: 8 * th, : 8 * tw].reshape(8, th, 8, tw).var(axis=(1, 3)).ravel()
        ten = sum((cv2.Sobel(img, cv2.CV_32F, dx, 1 - dx).astype(np.float64) ** 2).mean() for dx in (1, 0))
        lapvars.append(lap.var())
        feats += [np.log1p(lap.var()), *np.log1p(np.quantile(tiles, [0.5, 0.9, 1.0])), np.log1p(ten)]
    feats += [np.log1p(lapvars[0]) - np.log1p(lapvars[1]), np.log1p(lapvars[0]) - np.log1p(lapvars[2]),
              np.log1p(gray.std()), np.log1p(noise),
              np.log1p(max(lapvars[0] - 20 * noise**2, 0.0)), np.log1p(max(lapvars[1] - 20 * (noise / 2) ** 2, 0.0))]
    return np.asarray(feats)


@pytest.mark.parametrize("shape", [(640, 640), (480, 853), (333, 501)])
def test_fast_focus_measures_match_the_plain_computation(shape):
    # int16 derivatives, OpenCV sums and per-tile norms are a speed-up only: the values must stay those of the
    # float computation (odd sizes included, where the halvings drop a last row or column)
    import cv2

    from ensemble.focus import noise_sigma

    gray = to_gray(make_photo(11, size=shape))
    gray = cv2.add(gray, (np.random.default_rng(0).normal(0, 4, gray.shape)).astype(np.int8), dtype=cv2.CV_8U)
    noise = noise_sigma(gray)
    np.testing.assert_allclose(focus_features(gray, noise), _reference_focus(gray, noise), rtol=0, atol=2e-5)


def test_fast_noise_estimate_matches_the_plain_immerkaer_filter():
    import cv2

    from ensemble.focus import NOISE_BLOCK, _noise_blocks

    gray = to_gray(make_photo(12, size=(300, 410)))
    blocks, _ = _noise_blocks(gray)
    b = NOISE_BLOCK
    rows, cols = (gray.shape[0] - 2) // b, (gray.shape[1] - 2) // b
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    r = np.abs(cv2.filter2D(gray, cv2.CV_64F, kernel)[1:1 + rows * b, 1:1 + cols * b])
    np.testing.assert_allclose(blocks, r.reshape(rows, b, cols, b).mean(axis=(1, 3)).ravel(), rtol=1e-12)


def test_patch_spread_matches_numpy(photo):
    grid = extract_patches(photo, PATCH_SIZE)
    np.testing.assert_allclose(grid.std, grid.patches.reshape(len(grid.patches), -1).std(axis=1), rtol=1e-5)


def test_directional_energy_matches_plain_differences():
    from ensemble.native_focus import _STEPS, directional_energy

    x = (np.random.default_rng(1).random((4, 40, 40)) * 255).astype(np.uint8)
    got = directional_energy(x)
    f = x.astype(np.float64)
    for k, (dy, dx) in enumerate(_STEPS):
        h, w, x0 = 40 - 2 * dy, 40 - 2 * abs(dx), 2 * abs(dx) if dx < 0 else 0
        a, b, c = (f[:, i * dy:i * dy + h, x0 + i * dx:x0 + i * dx + w] for i in range(3))
        unit = dy * dy + dx * dx
        np.testing.assert_allclose(got[:, k, 0], ((b - a) ** 2).mean(axis=(1, 2)) / unit, rtol=1e-12)
        np.testing.assert_allclose(got[:, k, 1], ((c - 2 * b + a) ** 2).mean(axis=(1, 2)) / unit**2, rtol=1e-12)


def test_native_candidate_spreads_match_numpy():
    from ensemble.native import _candidate_spreads

    sample = (np.random.default_rng(2).random((72, 72)) * 255).astype(np.uint8)
    expected = sample.astype(np.float64).reshape(3, 24, 3, 24).std(axis=(1, 3))
    np.testing.assert_allclose(_candidate_spreads(sample, 3), expected, rtol=1e-9)


def test_structure_tensor_matches_plain_sobel():
    from ensemble.native_focus import structure_tensor, tensor_eigenvalues

    x = (np.random.default_rng(2).random((3, 40, 40)) * 255).astype(np.uint8)
    got = structure_tensor(x)
    f = x.astype(np.float64)
    dx = (f[:, :-2, 2:] + 2 * f[:, 1:-1, 2:] + f[:, 2:, 2:] - f[:, :-2, :-2] - 2 * f[:, 1:-1, :-2] - f[:, 2:, :-2]) / 8
    dy = (f[:, 2:, :-2] + 2 * f[:, 2:, 1:-1] + f[:, 2:, 2:] - f[:, :-2, :-2] - 2 * f[:, :-2, 1:-1] - f[:, :-2, 2:]) / 8
    dx, dy = dx[:, 1:-1, 1:-1], dy[:, 1:-1, 1:-1]  # the outer two pixels of the patch left out
    want = np.stack([(dx * dx).mean(axis=(1, 2)), (dy * dy).mean(axis=(1, 2)), (dx * dy).mean(axis=(1, 2))], 1)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    lo, hi = tensor_eigenvalues(got)
    for t, a, b in zip(got, lo, hi):
        np.testing.assert_allclose(np.linalg.eigvalsh([[t[0], t[2]], [t[2], t[1]]]), [a, b], rtol=1e-9)


def test_structure_tensor_finds_a_streak_between_the_fixed_directions():
    """A 22.5-degree motion streak, halfway between two of the four fixed directions: the tensor sees it as more
    anisotropic than they do, and its weakest energy far below a sharp patch's."""
    import cv2

    from ensemble.native_focus import directional_energy, structure_tensor, tensor_eigenvalues

    sharp = (np.random.default_rng(3).random((128, 128)) * 255).astype(np.float32)
    k = np.zeros((15, 15), np.float32)
    c, s = np.cos(np.deg2rad(22.5)), np.sin(np.deg2rad(22.5))
    for t in np.linspace(-7, 7, 57):
        k[int(round(7 + t * s)), int(round(7 + t * c))] = 1
    streak = cv2.filter2D(sharp, -1, k / k.sum())[16:112, 16:112].round().astype(np.uint8)
    sharp = sharp[16:112, 16:112].astype(np.uint8)
    lo_s, _ = tensor_eigenvalues(structure_tensor(sharp[None]))
    lo_m, hi_m = tensor_eigenvalues(structure_tensor(streak[None]))
    fixed = directional_energy(streak[None])[0, :, 0]
    assert hi_m[0] / lo_m[0] > 1.5 * fixed.max() / fixed.min()
    assert lo_m[0] < 0.2 * lo_s[0]


def test_region_contrast_finds_the_soft_part_of_the_grid():
    """Patches soft in the lower half of a 4 × 3 grid: the contrast finds a part that much softer than the rest
    and reports its level; a grid soft all over, or with too few patches, shows no contrast."""
    from ensemble.native_focus import frame_regions, region_contrast

    rows, cols = 4, 3
    cells = np.arange(rows * cols)
    rel = np.where(cells >= 6, -6.0, -2.0)  # the lower two rows
    gap, worst = region_contrast(rel, (rows, cols), cells)
    assert gap == pytest.approx(4.0) and worst == pytest.approx(-6.0)
    assert region_contrast(np.full(12, -6.0), (rows, cols), cells)[0] == 0
    assert region_contrast(rel[:3], (rows, cols), cells[:3])[0] == 0  # no part has two patches in and two out
    assert frame_regions(rows, cols).any(axis=0).all()  # every cell lies in some part


def test_reblur_takes_less_from_a_patch_that_is_soft_already():
    """A further blur removes little of a blurred patch's gradient energy and much of a sharp one's, at every σ."""
    import cv2

    from ensemble.native_focus import REBLUR_SIGMAS, reblur_measures

    sharp = (np.random.default_rng(4).random((6, 96, 96)) * 255).astype(np.uint8)
    soft = np.stack([cv2.GaussianBlur(p, (0, 0), 3.0) for p in sharp])
    a, b = reblur_measures(sharp), reblur_measures(soft)
    assert a.shape == b.shape == (3 * len(REBLUR_SIGMAS),)
    assert (a <= 0).all() and (b <= 0).all()
    assert (b > a + 0.3).all()
    assert (np.diff(a.reshape(len(REBLUR_SIGMAS), 3)[:, 1]) < 0).all()  # more blur removes more


def test_blurring_stacked_patches_matches_blurring_each_alone():
    import cv2

    from ensemble.native_focus import REBLUR_SIGMAS, gaussian_blur_each

    x = (np.random.default_rng(5).random((4, 40, 40)) * 255).astype(np.uint8)
    for sigma in REBLUR_SIGMAS:
        r = int(np.ceil(3 * sigma))
        want = np.stack([cv2.GaussianBlur(p.astype(np.float32), (2 * r + 1, 2 * r + 1), sigma) for p in x])
        np.testing.assert_allclose(gaussian_blur_each(x, sigma), want, atol=1e-3)


def test_line_pitch_zero_follows_the_ink_height():
    from ensemble.native_focus import line_pitch

    def lines(pitch, band):
        g = np.full((640, 480), 230, np.uint8)
        for top in range(10, 630 - band, pitch):
            g[top:top + band, 40:440] = 30
        return g

    zeros = {}
    for pitch, band in ((16, 5), (22, 6), (22, 9), (30, 8), (30, 12), (40, 10)):
        found, strength, zero = line_pitch(lines(pitch, band))
        assert found == pitch and strength > 0.8
        assert zero == pytest.approx(band * (1 - band / pitch), rel=0.1)  # a pulse train's autocorrelation
        zeros[pitch, band] = zero
    assert zeros[22, 9] > zeros[22, 6] and zeros[30, 12] > zeros[30, 8]  # taller ink, the same pitch: later
    assert line_pitch(np.full((640, 480), 128, np.uint8)) == (0.0, 0.0, 0.0)
