"""The kind of blur, its direction and extent, and the noise estimate (ensemble.blur_kind, ensemble.noise): the
angle convention, the closed-form direction, the original-resolution noise, the records of every surface, the
``--kind`` option, the camera reason, the review page's fields and a tiny training of the kind head."""
from __future__ import annotations

import json
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from fixtures import (blur, make_photo, model_with_kind_head, model_without_kind_head, needs_model, save_jpeg,
                      write_kind_head)

from ensemble.augment import apply_blur, motion_kernel  # noqa: E402  (fixtures puts the repository on sys.path)
from ensemble.blur_kind import KIND_FEATURE_NAMES, KindHead, direction_angle, kind_features, screen_angle  # noqa: E402
from ensemble.focus import noise_sigma  # noqa: E402
from ensemble.imageio import NATIVE_BAND_ROWS, decoded_array, load_image  # noqa: E402
from ensemble.kind_training import angle_error  # noqa: E402
from ensemble.noise import area_noise_gain, image_noise_sigma, original_noise_sigma  # noqa: E402


def grey(seed: int, size=(240, 320)) -> np.ndarray:
    return cv2.cvtColor(make_photo(seed, size), cv2.COLOR_RGB2GRAY)


# -- conventions ---------------------------------------------------------------------------------------------------
def test_motion_kernel_angle_is_clockwise_on_screen_and_screen_angle_turns_it_round():
    k = motion_kernel(15, 45)
    n = k.shape[0]
    h = n // 2
    # Kernel 45° runs from top-left to bottom-right on screen (rows go down), which is 135° counter-clockwise.
    assert k[:h, :h].sum() > 0.4 and k[h + 1:, h + 1:].sum() > 0.4
    assert k[:h, h + 1:].sum() == 0 and k[h + 1:, :h].sum() == 0
    assert screen_angle(45) == 135 and screen_angle(0) == 0 and screen_angle(90) == 90 and screen_angle(135) == 45
    horizontal, vertical = motion_kernel(15, 0), motion_kernel(15, 90)
    assert horizontal[h - 1: h + 2].sum() > 0.99 and vertical[:, h - 1: h + 2].sum() > 0.99
    assert direction_angle(np.array([1.0, -1.0])) == pytest.approx(45)  # up and to the right, y down
    assert direction_angle(np.array([1.0, 1.0])) == pytest.approx(135)


def test_angle_error_wraps_at_180():
    assert angle_error(np.array([179.0, 10.0, 0.0]), np.array([1.0, 170.0, 90.0])).tolist() == [2.0, 20.0, 90.0]


# -- features ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel_angle", [0, 30, 75, 120, 160])
def test_the_reference_angle_follows_the_motion(kernel_angle):
    img = apply_blur(grey(4), "motion", 14, kernel_angle)
    x, ref = kind_features(img, noise_sigma(img))
    assert x.shape == (len(KIND_FEATURE_NAMES),) and x.dtype == np.float32 and np.isfinite(x).all()
    assert angle_error(ref, screen_angle(kernel_angle)) < 15


def test_motion_is_more_coherent_than_defocus_and_more_blur_falls_more():
    img = grey(5)

    def feature(b, name):
        x, _ = kind_features(b, noise_sigma(b))
        return x[KIND_FEATURE_NAMES.index(name)]

    assert feature(apply_blur(img, "motion", 12, 30), "coherence_1x") > \
        feature(apply_blur(img, "defocus", 3), "coherence_1x") + 0.2
    assert feature(apply_blur(img, "defocus", 5), "log_fall_min_1x_4x") < \
        feature(apply_blur(img, "defocus", 2), "log_fall_min_1x_4x") - 0.5


def test_tiny_images_give_zeros():
    x, ref = kind_features(np.full((10, 40), 128, np.uint8), 0.0)
    assert not x.any() and ref == 0.0


# -- noise at the original resolution -------------------------------------------------------------------------------
def test_area_noise_gain():
    assert area_noise_gain(640, 640) == 1.0 and area_noise_gain(500, 640) == 1.0
    assert area_noise_gain(1280, 640) == pytest.approx(0.5**0.5, abs=1e-6)  # a whole ratio r: 1 / sqrt(r)
    assert area_noise_gain(750, 640) < (640 / 750) ** 0.5 - 0.1              # a fraction smooths the noise too
    # Measured: the estimator on area-resized white noise.
    rng = np.random.default_rng(0)
    noise = (128 + 20 * rng.standard_normal((600, 600))).astype(np.float32)
    small = cv2.resize(noise, (512, 512), interpolation=cv2.INTER_AREA)
    measured = noise_sigma(np.clip(small, 0, 255).astype(np.uint8)) / 20
    assert measured == pytest.approx(area_noise_gain(600, 512) ** 2, rel=0.08)


def test_the_draft_scale_is_reported(tmp_path):
    img = cv2.resize(make_photo(1, (240, 320)), (2000, 1500))
    jpeg, png = save_jpeg(tmp_path / "a.jpg", img), tmp_path / "a.png"
    Image.fromarray(img).save(png)
    assert load_image(jpeg, "L").draft == 2 and load_image(png, "L").draft == 1
    assert load_image(jpeg, "L", side=None).draft == 1


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_noise_sigma_at_the_original_resolution(tmp_path, suffix):
    """White noise of σ 10 added at 2400 × 1800 is found from the 640-pixel image, through the real decode path."""
    rng = np.random.default_rng(1)
    big = cv2.resize(grey(2), (2400, 1800), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    noisy = np.clip(np.rint(big + 10 * rng.standard_normal(big.shape)), 0, 255).astype(np.uint8)
    path = tmp_path / f"noisy{suffix}"
    Image.fromarray(noisy).save(path, **({"quality": 95} if suffix == ".jpg" else {}))
    dec = load_image(path, "L")
    at_analysis = noise_sigma(dec.pixels)
    sigma = original_noise_sigma(at_analysis, (dec.width, dec.height), dec.pixels.shape[::-1], dec.draft)
    assert at_analysis < 4 and sigma == pytest.approx(10, rel=0.2)


def package_mosaic(width: int, height: int, first: int) -> np.ndarray:
    """scikit-image's photos and textures side by side at their own resolution: full-size texture everywhere."""
    from skimage import data

    tiles = [cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) if im.ndim == 3 else im
             for im in (getattr(data, n)() for n in ("astronaut", "coffee", "chelsea", "rocket", "camera", "brick",
                                                     "grass", "gravel"))]
    out, y, k = np.zeros((height, width), np.float32), 0, first
    while y < height:
        x, row = 0, height
        while x < width:
            t = tiles[k % len(tiles)]
            k += 1
            th, tw = min(t.shape[0], height - y), min(t.shape[1], width - x)
            out[y:y + th, x:x + tw] = t[:th, :tw]
            x, row = x + tw, min(row, th)
        y += row
    return out


@pytest.mark.parametrize("suffix,sigma", [(".jpg", 3.0), (".png", 3.0), (".jpg", 8.0)])
def test_noise_is_not_fooled_by_texture_at_full_size(tmp_path, suffix, sigma):
    """Photos at their own resolution, tiled to 2400 × 1800: at the analysis scale their texture hides σ 3 (the
    scaled estimate alone is more than 1.5 × too high); the full-resolution strips of the decode find it."""
    rng = np.random.default_rng(int(sigma))
    big = package_mosaic(2400, 1800, first=int(sigma) % 8)
    noisy = np.clip(np.rint(big + sigma * rng.standard_normal(big.shape)), 0, 255).astype(np.uint8)
    path = tmp_path / f"noisy{suffix}"
    Image.fromarray(noisy).save(path, **({"quality": 95} if suffix == ".jpg" else {}))
    dec = load_image(path, "L", native=True)
    assert dec.native and all(b.shape[1] == 2400 for b in dec.native)
    args = (noise_sigma(dec.pixels), (dec.width, dec.height), dec.pixels.shape[::-1], dec.draft)
    if sigma == 3.0:
        assert original_noise_sigma(*args) > 1.5 * sigma
    assert image_noise_sigma(*args, dec.native) == pytest.approx(sigma, rel=0.2)


@pytest.mark.parametrize("sigma", [3.0, 10.0, 20.0])
def test_the_strip_estimate_is_unbiased_on_white_noise(sigma):
    from ensemble.focus import noise_sigma_of_bands

    rng = np.random.default_rng(int(sigma) + 7)
    strips = [np.clip(np.rint(100 + sigma * rng.standard_normal((NATIVE_BAND_ROWS, 2000))), 0, 255).astype(np.uint8)
              for _ in range(2)]
    assert noise_sigma_of_bands(strips) == pytest.approx(sigma, rel=0.03)
    assert noise_sigma_of_bands([np.full((NATIVE_BAND_ROWS, 2000), 255, np.uint8)]) is None  # clipped: no verdict


@needs_model
def test_the_record_gives_the_noise_at_full_size(tmp_path):
    """End to end: BlurDetector.predict_path and predict_array on a textured 2400 × 1800 photo with σ 3 added."""
    from ensemble import BlurDetector

    rng = np.random.default_rng(5)
    noisy = np.clip(np.rint(package_mosaic(2400, 1800, 5) + 3 * rng.standard_normal((1800, 2400))), 0, 255)
    noisy = noisy.astype(np.uint8)
    detector = BlurDetector.load()
    on_file = detector.predict_path(save_jpeg(tmp_path / "n.jpg", noisy, quality=95), with_map=False)
    on_array = detector.predict_array(noisy, with_map=False)
    assert on_file.noise_sigma == pytest.approx(3, rel=0.2) and on_array.noise_sigma == pytest.approx(3, rel=0.2)


def test_the_strip_of_a_drafted_jpeg_is_its_top_rows_at_full_size(tmp_path):
    img = cv2.resize(grey(3), (2600, 1900), interpolation=cv2.INTER_CUBIC)
    path = save_jpeg(tmp_path / "a.jpg", img, quality=92)
    dec, full = load_image(path, "L", native=True), load_image(path, "L", side=None, native=True)
    assert dec.draft == 2 and len(dec.native) == 1
    assert np.array_equal(dec.native[0], full.pixels[:NATIVE_BAND_ROWS])
    assert full.native == () and load_image(save_jpeg(tmp_path / "s.jpg", grey(3)), "L", native=True).native == ()
    assert load_image(path, "L").native == ()  # only when asked: thumbnails and datasets need no strips


def test_a_progressive_jpeg_keeps_no_strip_and_an_array_keeps_three(tmp_path):
    img = cv2.resize(grey(4), (2600, 1900))
    path = tmp_path / "p.jpg"
    Image.fromarray(img).save(path, quality=90, progressive=True)
    dec = load_image(path, "L", native=True)
    assert dec.draft == 2 and dec.native == ()  # libjpeg would read the whole file for the strip
    arr = decoded_array(img)
    assert len(arr.native) == 3 and arr.native[0].shape == (NATIVE_BAND_ROWS, 2600)
    assert np.array_equal(arr.native[2], img[-NATIVE_BAND_ROWS:])
    assert decoded_array(img, size=(5200, 3800)).native == ()  # already reduced: no strip is at full size


def test_noise_sigma_is_unchanged_without_a_resize():
    assert original_noise_sigma(3.0, (640, 480), (640, 480)) == 3.0


# -- the detector and its records -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kind_model(tmp_path_factory):
    return model_with_kind_head(tmp_path_factory.mktemp("kind-model"), p_motion=0.8, extent=4.0)


@needs_model
def test_records_carry_the_kind_of_a_blurry_image_only(kind_model):
    from ensemble import BlurDetector
    from ensemble.records import RECORD_FIELDS

    det = BlurDetector.load(kind_model)
    sharp, soft = det.predict_batch([make_photo(1), blur(make_photo(1), "gaussian", 4.0)])
    flat = det.predict_array(np.full((200, 300), 90, np.uint8))
    assert (sharp.label, soft.label, flat.label) == ("sharp", "blurry", "flat")
    r = soft.record("soft.jpg")
    assert list(r) == list(RECORD_FIELDS)
    assert r["blur_kind"] == "motion" and r["blur_kind_probability"] == pytest.approx(0.8)
    assert 0 <= r["motion_angle"] < 180 and r["blur_extent_px"] == pytest.approx(4.0, rel=1e-3)  # 640 px: 1 : 1
    assert r["noise_sigma"] >= 0
    s = sharp.record("sharp.jpg")
    assert s["blur_kind"] is s["blur_kind_probability"] is s["motion_angle"] is s["blur_extent_px"] is None
    assert s["noise_sigma"] > 0 and sharp.kind_estimate["blur_kind"] == "motion"  # the estimate is kept
    kind_fields = ("blur_kind", "blur_kind_probability", "motion_angle", "blur_extent_px", "noise_sigma")
    f = flat.record()
    assert all(f[k] is None for k in kind_fields) and f["scale"] == "screen" and f["content"] is None


@needs_model
def test_extent_is_in_the_original_pixels(kind_model):
    from ensemble import BlurDetector

    det = BlurDetector.load(kind_model)
    big = cv2.resize(blur(make_photo(2), "gaussian", 3.0), (1280, 960), interpolation=cv2.INTER_CUBIC)
    r = det.predict_array(big)
    assert r.label == "blurry" and r.blur_extent_px == pytest.approx(4.0 * 960 / 640, rel=1e-3)


@needs_model
def test_a_model_without_a_kind_head_still_scores(tmp_path):
    from ensemble import BlurDetector

    det = BlurDetector.load(model_without_kind_head(tmp_path))
    assert det.kind is None
    r = det.predict_array(blur(make_photo(1), "gaussian", 4.0)).record()
    assert r["label"] == "blurry" and r["blur_kind"] is None and r["noise_sigma"] is not None


def test_a_kind_head_of_other_features_is_refused(tmp_path):
    write_kind_head(tmp_path, names=["something_else"])
    with pytest.raises(ValueError, match="other kind features"):
        KindHead.load(tmp_path)
    assert KindHead.load(tmp_path / "none") is None


# -- surfaces -------------------------------------------------------------------------------------------------------
def test_camera_reason_names_the_kind():
    from ensemble.cameras.monitor import classify

    state, reason = classify(None, 0.9, 0.5, 1.0, 1.0, 0.5, "motion", 80.4)
    assert state == "BLURRY" and reason.startswith("motion blur at 80°: the camera is shaking or was bumped")
    assert classify(None, 0.9, 0.5, 1.0, 1.0, 0.5, "defocus")[1].startswith(
        "defocus: focus drifted or the lens is fogged")
    assert classify(None, 0.9, 0.5, 1.0, 1.0, 0.5)[1] == "blur probability 90% >= threshold 50%"


def test_review_entries_keep_the_kind_and_read_old_cache_lines(tmp_path):
    from ensemble.review.results import Entry, _fill, _line, _valid

    entry = Entry("a.jpg", str(tmp_path / "a.jpg"), 10, 20, p=0.9, lap=3.0, width=640, height=480, model="m",
                  kind="motion", kind_p=0.93, angle=81.6, extent=12.34, noise=2.456)
    public = entry.public()
    assert (public["kind"], public["kp"], public["ang"], public["ext"], public["noise"]) == \
        ("motion", 0.93, 82.0, 12.3, 2.46)
    line = json.loads(json.dumps(_line(entry)))
    assert _valid(line)
    back = Entry("a.jpg", entry.path)
    _fill(back, line)
    assert (back.kind, back.angle, back.noise) == ("motion", 81.6, 2.456)
    old = {k: v for k, v in line.items() if k not in ("kind", "kp", "ang", "ext", "noise")}
    assert _valid(old)
    _fill(back, old)
    assert back.kind is None and back.noise is None
    assert not _valid({**line, "kind": "<script>"}) and not _valid({**line, "ang": "80"})


def run_cli(*args):
    import subprocess

    from fixtures import REPO_ROOT

    return subprocess.run([sys.executable, "-m", "ensemble", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120)


def test_kind_option_needs_a_sort(tmp_path):
    save_jpeg(tmp_path / "a.jpg", make_photo(1, (120, 160)))
    proc = run_cli("scan", tmp_path / "a.jpg", "--kind", "motion")
    assert proc.returncode == 2 and "--kind needs --move-blurry or --copy-blurry" in proc.stderr
    proc = run_cli("scan", tmp_path / "a.jpg", "--kind", "shake", "--move-blurry", tmp_path / "out")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


@needs_model
def test_kind_option_moves_only_that_kind_and_the_table_shows_it(tmp_path, kind_model):
    photos = tmp_path / "photos"
    for name, img in (("sharp.jpg", make_photo(1)), ("soft1.jpg", blur(make_photo(2), "gaussian", 4.0)),
                      ("soft2.jpg", blur(make_photo(3), "defocus", 5.0))):
        save_jpeg(photos / name, img)
    proc = run_cli("scan", photos, "--model", kind_model, "--kind", "defocus", "--copy-blurry", tmp_path / "d")
    assert proc.returncode == 0, proc.stderr
    assert "no blurry photos to copy" in proc.stdout and not (tmp_path / "d").exists()  # the head says motion
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["BLUR", "LABEL", "KIND", "LAPVAR", "SIZE", "SCALE", "CONTENT", "PATH"]
    assert sum("motion" in ln and " 4px" in ln for ln in lines) == 2
    proc = run_cli("scan", photos, "--model", kind_model, "--kind", "motion", "--copy-blurry", tmp_path / "m", "-q")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "m").glob("*.jpg")) == ["soft1.jpg", "soft2.jpg"]


@needs_model
def test_kind_option_with_a_model_without_a_head_is_one_line(tmp_path):
    from ensemble import BlurDetector

    root = model_without_kind_head(tmp_path / "models")
    assert BlurDetector.load(root).kind is None
    save_jpeg(tmp_path / "a.jpg", make_photo(1, (120, 160)))
    proc = run_cli("scan", tmp_path / "a.jpg", "--kind", "motion", "--move-blurry", tmp_path / "out", "--model", root)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "has no kind head" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- training -------------------------------------------------------------------------------------------------------
def test_real_kind_labels_come_from_the_class_folders():
    from ensemble.blur_kind import kind_of_source
    from ensemble.kind_training import real_rows

    assert [kind_of_source(s) for s in ("defocused_blurred", "motion_blurred", "blurry", "sharp", "csv")] == \
        ["defocus", "motion", None, None, None]
    images = [grey(i, (96, 128)) for i in range(4)]
    rows = real_rows(images, ["sharp", "motion_blurred", "defocused_blurred", "blurry"], ["a", "b", "c", "d"])
    assert rows.kind.tolist() == [1, 0] and rows.scene.tolist() == ["b", "c"]
    assert np.isnan(rows.extent).all() and np.isnan(rows.angle).all() and rows.visible.all()


def test_a_tiny_kind_stage_writes_a_head_that_loads(tmp_path):
    """Eight small sharp photos, two blurs each, two epochs: the stage's plumbing, not its accuracy."""
    pytest.importorskip("tensorflow")
    from ensemble import datasets
    from ensemble.pipeline import evaluate_kind, format_kind, train_kind_stage

    images = [grey(i, (96, 128)) for i in range(8)]
    meta = [{"path": f"/x/{i}.jpg", "label": 0, "source": "sharp", "scene": str(i), "width": 128, "height": 96}
            for i in range(8)]
    data = datasets.LoadedData(images, np.zeros(8, np.int8), meta, [])
    pkl = datasets.save_pickle(data, tmp_path / "train.pkl", {"analysis_side": 640})
    out = tmp_path / "final_model"
    result = train_kind_stage(pkl, out, copies=2, folds=2, max_epochs=2, patience=1, progress=False)
    assert result["rows"] == 16 and (out / "kind.onnx").exists()
    info = json.loads((out / "kind.json").read_text())
    assert info["feature_names"] == list(KIND_FEATURE_NAMES) and "validation_metrics" in info
    head = KindHead.load(out)
    x, ref = kind_features(images[0], 1.0)
    est = head(x[None], np.array([ref]))
    assert 0 <= est.p_motion[0] <= 1 and est.extent[0] > 0 and 0 <= est.angle[0] < 180

    class Detector:
        kind = head

    report = evaluate_kind(data, Detector(), progress=False)
    assert set(report["sets"]) == {"synthetic", "synthetic_clean", "synthetic_camera_effects"}
    assert report["sets"]["synthetic"]["kind"]["n"] <= 16
    assert any(line.startswith("| synthetic |") for line in format_kind(report))
