"""Camera effects (noise, exposure, JPEG), the noise estimate, and verdicts that survive them."""
import cv2
import numpy as np
import pytest

from ensemble import BlurDetector
from ensemble.camera_effects import (COLOUR_NOISE_GAIN, PERTURBATIONS, expose, gaussian_noise, random_camera,
                                     recompress, sensor_noise)
from ensemble.focus import noise_sigma
from ensemble.imageio import resize_to_analysis, to_gray
from ensemble.patches import extract_patches
from fixtures import blur, make_photo

SEEDS = (1, 4, 7)


@pytest.fixture(scope="module")
def detector():
    return BlurDetector.load()


def scene(seed: int) -> np.ndarray:
    """A synthetic sharp scene at the analysis scale, grey."""
    return resize_to_analysis(to_gray(make_photo(seed, size=(720, 960))))


def test_sensor_noise_has_the_size_asked():
    flat = np.full((256, 256), 128, np.uint8)
    rng = np.random.default_rng(0)
    assert abs(sensor_noise(flat, 8, rng).astype(float).std() - 8) < 0.3
    assert abs(sensor_noise(flat, 8, rng, colour=True).astype(float).std() - 8 * COLOUR_NOISE_GAIN) < 0.3
    # Shot noise grows with the signal: dark areas get less of it than bright ones.
    ramp = np.repeat(np.linspace(20, 235, 256).astype(np.uint8)[None], 256, axis=0)
    noisy = sensor_noise(ramp, 8, rng, shot_share=1.0).astype(float) - ramp
    assert noisy[:, :64].std() < 0.6 * noisy[:, -64:].std()
    # Grain correlates neighbours (demosaicing); white noise does not.
    grainy = sensor_noise(flat, 8, rng, grain=1.0).astype(float) - 128
    white = sensor_noise(flat, 8, rng).astype(float) - 128
    corr = lambda x: np.corrcoef(x[:, :-1].ravel(), x[:, 1:].ravel())[0, 1]  # noqa: E731
    assert corr(grainy) > 0.5 and abs(corr(white)) < 0.05


def test_exposure_and_jpeg_keep_shape_and_go_the_right_way():
    gray = scene(2)
    assert np.array_equal(expose(gray, 1.0), gray)
    assert expose(gray, 0.25).mean() < 0.65 * gray.mean() < expose(gray, 2.0).mean()
    assert (expose(gray, 8.0) == 255).mean() > 0.3  # highlights clip
    low, high = recompress(gray, 20), recompress(gray, 95)
    assert low.shape == gray.shape and low.dtype == np.uint8
    assert np.abs(low.astype(int) - gray).mean() > np.abs(high.astype(int) - gray).mean()


def test_random_camera_is_reproducible_and_label_free():
    gray = scene(3)
    a = [random_camera(gray, np.random.default_rng(5)) for _ in range(2)]
    assert np.array_equal(a[0], a[1]) and a[0].shape == gray.shape and a[0].dtype == np.uint8
    outs = [random_camera(gray, np.random.default_rng(s)) for s in range(30)]
    assert any(np.array_equal(o, gray) for o in outs) and sum(not np.array_equal(o, gray) for o in outs) > 20


@pytest.mark.parametrize("sigma", [3, 5, 8, 12, 25])
def test_noise_estimate_within_20_percent_on_textured_scenes(sigma):
    rng = np.random.default_rng(sigma)
    for seed in SEEDS:
        estimate = noise_sigma(gaussian_noise(scene(seed), sigma, rng))
        assert abs(estimate / sigma - 1) <= 0.2, (seed, sigma, estimate)


def test_noise_estimate_does_not_take_texture_for_noise():
    # The scenes are full of fine texture, stripes and text strokes, but carry no noise.
    assert max(noise_sigma(scene(s)) for s in SEEDS) < 1.5
    assert noise_sigma(np.full((5, 5), 7, np.uint8)) == 0.0 and noise_sigma(np.zeros((2, 2), np.uint8)) == 0.0


def test_grain_on_a_flat_wall_is_not_texture():
    wall = sensor_noise(np.full((192, 192), 120, np.uint8), 8, np.random.default_rng(0))
    assert extract_patches(wall).textured.all()  # the plain spread is fooled by the grain
    assert not extract_patches(wall, noise=noise_sigma(wall)).textured.any()


def soft_scene(seed: int, detail: float = 0.3) -> np.ndarray:
    """A sharp scene whose fine detail has ``detail`` of the fixture photo's contrast, like most of a real photo.
    (At full contrast the fixture is so detailed that noise never hides it: the model before the robustness work
    passed the test below on it, and failed on this one.)"""
    g = to_gray(make_photo(seed, size=(720, 960))).astype(np.float32)
    smooth = cv2.GaussianBlur(g, (0, 0), 25)
    return resize_to_analysis(np.clip(smooth + detail * (g - smooth), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("seed", SEEDS)
def test_noisy_sharp_scene_is_sharp_and_noisy_blurred_scene_is_blurry(detector, seed):
    rng = np.random.default_rng(seed)
    sharp = soft_scene(seed)
    blurred = blur(sharp, ("gaussian", "defocus", "motion")[seed % 3], (2.5, 3.0, 9.0)[seed % 3], 30.0)
    noisy_sharp, noisy_blurred = gaussian_noise(sharp, 8, rng), gaussian_noise(blurred, 8, rng)
    got = detector.predict_batch([noisy_sharp, noisy_blurred])
    assert [r.label for r in got] == ["sharp", "blurry"], [r.blur_probability for r in got]


def test_every_benchmark_perturbation_runs_at_every_level():
    gray = scene(1)[:128, :128]
    for name, (change, levels, _) in PERTURBATIONS.items():
        for level in levels:
            out = change(gray, level, np.random.default_rng(0))
            assert out.shape == gray.shape and out.dtype == np.uint8 and not np.array_equal(out, gray), name
