"""Synthetic document pages (ensemble/documents.py): rendering, the font and layout splits, blur, scan, labels.

The pages are drawn with Debian's font packages (``make fonts`` installs them). Without fonts the tests are skipped
with the reason, except under CI (``CI`` set), where that is a failure.
"""
from __future__ import annotations


import cv2
import numpy as np
import pytest

from ensemble import documents as D
from ensemble.augment import apply_blur
from fixtures import require_fonts


@pytest.fixture(scope="module")
def font() -> str:
    require_fonts()
    regular = [p for p in D.fonts("train") if D.font_style(p) == (False, False)]
    return regular[0]


def _spec(font, **kw) -> D.PageSpec:
    args = dict(font=font, size_pt=10, dpi=100, layout="one_column", seed=5)
    args.update(kw)
    return D.PageSpec(**args)


def _sharpness(g: np.ndarray) -> float:
    return float(cv2.Laplacian(g.astype(np.float32), cv2.CV_32F).var())


def _ink(g: np.ndarray, spec: D.PageSpec) -> np.ndarray:
    return g < (spec.paper + spec.ink) / 2


# ------------------------------------------------------------------------------------------------ rendering

def test_render_is_deterministic_and_depends_on_the_seed(font):
    a, b = D.render_page(_spec(font)), D.render_page(_spec(font))
    assert a.gray.dtype == np.uint8 and a.gray.ndim == 2
    assert np.array_equal(a.gray, b.gray) and a.text == b.text
    c = D.render_page(_spec(font, seed=6))
    assert c.text != a.text and not np.array_equal(c.gray, a.gray)
    s = _spec(font, noise=4, skew_deg=0.8, jpeg_quality=80)
    assert np.array_equal(D.make_page(s, ("motion", 5, 30)).gray, D.make_page(s, ("motion", 5, 30)).gray)


def test_size_is_dpi_times_page_inches_and_crop_is_the_same_layout(font):
    full = D.render_page(_spec(font, dpi=300))
    assert full.gray.shape == (3508, 2480)  # A4 at 300 dpi
    assert full.font_px == pytest.approx(10 * 300 / 72)
    letter = D.render_page(_spec(font, dpi=72, page_in=(8.5, 11.0)))
    assert letter.gray.shape == (792, 612)
    spec = _spec(font, dpi=300, crop=(0.25, 0.5, 0.75, 1.0))
    part = D.render_page(spec)
    assert part.gray.shape == (1754, 1240)
    x0, y0, x1, y1 = spec.crop_px
    assert np.array_equal(part.gray, full.gray[y0:y1, x0:x1])  # the crop is a window on the same page
    # its text is the lines wholly inside the window
    inside = [ln.text for ln in full.lines if ln.box[0] >= x0 and ln.box[1] >= y0 and ln.box[2] <= x1
              and ln.box[3] <= y1]
    assert part.text == "\n".join(inside) and inside
    assert D.render_page(_spec(font, dpi=300, crop=(0.5, 0.25))).gray.shape == (877, 1240)  # (w, h) from top-left
    with pytest.raises(ValueError):
        _spec(font, crop=(0.5, 0.5, 0.4, 1.0))


def test_every_layout_renders_text_inside_the_page(font):
    for layout in D.LAYOUTS:
        spec = _spec(font, layout=layout, seed=11)
        page = D.render_page(spec)
        h, w = page.gray.shape
        assert len(page.lines) >= 5, layout
        assert page.text.split("\n") == [ln.text for ln in page.lines]
        assert page.text.isascii()
        for ln in page.lines:
            x0, y0, x1, y1 = ln.box
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert 0.005 < _ink(page.gray, spec).mean() < 0.3, layout
        assert set(np.unique(page.gray)) <= set(range(spec.ink, spec.paper + 1))


def test_text_is_drawn_where_it_is_recorded_and_more_text_is_more_ink(font):
    spec = _spec(font, dpi=150, seed=3)
    page = D.render_page(spec)
    ink = _ink(page.gray, spec)
    body = [ln for ln in page.lines if ln.role == "body"]
    counts = np.array([ink[ln.box[1]:ln.box[3], ln.box[0]:ln.box[2]].sum() for ln in body], float)
    chars = np.array([len(ln.text.replace(" ", "")) for ln in body], float)
    assert (counts > 0).all()
    assert np.corrcoef(counts, chars)[0, 1] > 0.8  # longer lines carry more ink
    covered = np.zeros_like(ink)
    for ln in page.lines:
        x0, y0, x1, y1 = ln.box
        covered[max(0, y0 - 2):y1 + 2, max(0, x0 - 2):x1 + 2] = True
    assert ink[~covered].sum() < 0.02 * ink.sum()  # hardly any ink outside the recorded lines (bullets)


def test_fonts_are_split_by_family_and_sample_spec_keeps_to_its_split():
    require_fonts()
    train, held = D.fonts("train"), D.fonts("heldout")
    fam_train = {D.font_family(p) for p in train}
    fam_held = {D.font_family(p) for p in held}
    assert not fam_train & fam_held and fam_held <= set(D.HELDOUT_FAMILIES)
    assert len(fam_train) >= 5 and len(fam_held) >= 2
    assert sorted(D.fonts("all")) == sorted(train + held)
    assert set(D.HELDOUT_LAYOUTS) <= set(D.LAYOUTS) and len(D.HELDOUT_LAYOUTS) == 2
    assert not set(D.TRAIN_LAYOUTS) & set(D.HELDOUT_LAYOUTS) and len(D.LAYOUTS) >= 6
    rng = np.random.default_rng(0)
    for split, faces, layouts in (("train", train, D.TRAIN_LAYOUTS), ("heldout", held, D.HELDOUT_LAYOUTS)):
        specs = [D.sample_spec(rng, split) for _ in range(200)]
        assert {s.font for s in specs} <= set(faces) and {s.layout for s in specs} == set(layouts)
        assert all(150 <= s.dpi <= 600 and 8 <= s.size_pt <= 16 and 200 <= s.paper <= 250 for s in specs)
        assert all(abs(s.skew_deg) <= 1.5 and 0 <= s.noise <= 6 for s in specs)
        assert all(s.jpeg_quality is None or 70 <= s.jpeg_quality <= 95 for s in specs)
        dpis = np.array([s.dpi for s in specs])
        assert ((dpis >= 200) & (dpis <= 400)).mean() > 0.6
        assert any(s.jpeg_quality is None for s in specs) and any(s.jpeg_quality for s in specs)
    assert D.sample_spec(rng, "train", dpi=400).dpi == 400
    with pytest.raises(ValueError):
        D.sample_spec(rng, "test")


def test_no_fonts_is_a_one_line_error_naming_make_fonts(monkeypatch):
    monkeypatch.setattr(D, "_installed_fonts", lambda: ())
    with pytest.raises(RuntimeError, match="make fonts") as err:
        D.fonts("train")
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------ blur and scan

def test_bottom_blur_leaves_the_top_and_softens_the_bottom(font):
    spec = _spec(font, dpi=150, layout="two_columns", seed=2)
    g = D.render_page(spec).gray
    h = g.shape[0]
    for kind, extent in (("gaussian", 2.0), ("defocus", 3.0), ("motion", 8.0)):
        out = D.blur_page(g, kind, extent, angle=20.0, region="bottom")
        top, low = slice(0, int(0.45 * h) - 1), slice(int(0.56 * h), h)
        assert np.array_equal(out[top], g[top]), kind
        assert _sharpness(out[low]) < 0.4 * _sharpness(g[low]), kind
        whole = apply_blur(g, kind, extent, 20.0)  # only the blurred rows are filtered, with the same result
        assert np.array_equal(out[low], whole[low]), kind
    # the soft edge too is the whole-page blur blended in, even for a wide kernel reaching far above the edge
    big = D.blur_page(g, "gaussian", 8.0, region="bottom")
    whole = apply_blur(g, "gaussian", 8.0).astype(np.float32)
    w = D.region_weight(h, "bottom")[:, None]
    expect = np.clip(np.rint(g + w * (whole - g)), 0, 255).astype(np.uint8)
    assert np.array_equal(big, expect)
    assert 0 < w[int(0.47 * h), 0] < w[int(0.5 * h), 0] < w[int(0.53 * h), 0] < 1  # a soft transition
    up = D.blur_page(g, "gaussian", 2.0, region="top")
    assert np.array_equal(up[int(0.56 * h):], g[int(0.56 * h):])
    assert _sharpness(up[:int(0.44 * h)]) < 0.4 * _sharpness(g[:int(0.44 * h)])
    w = g.shape[1]
    right = D.blur_page(g, "motion", 6.0, angle=60.0, region="right")
    assert np.array_equal(right[:, :int(0.45 * w) - 1], g[:, :int(0.45 * w) - 1])
    assert np.array_equal(right[:, int(0.56 * w):], apply_blur(g, "motion", 6.0, 60.0)[:, int(0.56 * w):])
    band = D.blur_page(g, "gaussian", 2.0, region="band")
    assert np.array_equal(band[:int(0.28 * h)], g[:int(0.28 * h)])
    assert np.array_equal(band[int(0.72 * h) + 1:], g[int(0.72 * h) + 1:])
    assert _sharpness(band[int(0.4 * h):int(0.6 * h)]) < 0.4 * _sharpness(g[int(0.4 * h):int(0.6 * h)])
    with pytest.raises(ValueError):
        D.blur_page(g, "gaussian", 2.0, region="middle")
    with pytest.raises(ValueError):
        D.blur_page(g, "box", 2.0)


def test_more_blur_is_softer(font):
    spec = _spec(font, dpi=150, seed=9)
    g = D.render_page(spec).gray
    for kind, extents in (("gaussian", (0, 0.7, 1.5, 3)), ("defocus", (0, 1, 2, 4)), ("motion", (0, 3, 6, 12))):
        s = [_sharpness(D.blur_page(g, kind, e, angle=0.0)) for e in extents]
        assert all(a > 1.2 * b for a, b in zip(s, s[1:])), (kind, s)
    assert np.array_equal(D.blur_page(g, "gaussian", 0.0), g) and np.array_equal(D.blur_page(g, None, 3.0), g)


def test_scan_adds_skew_noise_and_jpeg_after_the_blur(font):
    spec = _spec(font, dpi=100, seed=4)
    clean = D.render_page(spec).gray
    assert np.array_equal(D.make_page(spec).gray, clean)  # no scanner effects in the spec: the clean page
    noisy = D.make_page(_spec(font, dpi=100, seed=4, noise=5.0))
    flat = clean == spec.paper
    assert np.std(noisy.gray[flat].astype(float)) == pytest.approx(5.0, rel=0.1)
    skewed = D.make_page(_spec(font, dpi=100, seed=4, skew_deg=1.2)).gray
    assert skewed.shape == clean.shape and np.mean(skewed != clean) > 0.02
    jp = D.make_page(_spec(font, dpi=100, seed=4, jpeg_quality=75)).gray
    assert 0 < np.abs(jp.astype(int) - clean).mean() < 3
    blurred = D.make_page(spec, ("gaussian", 1.5))
    assert blurred.blur == ("gaussian", 1.5, 0.0) and blurred.text == D.render_page(spec).text
    assert np.array_equal(blurred.gray, D.blur_page(clean, "gaussian", 1.5))
    half = D.make_page(spec, ("defocus", 3.0, 0.0), region="bottom")
    assert half.region == "bottom" and np.array_equal(half.gray, D.blur_page(clean, "defocus", 3.0, 0, "bottom"))


def test_a4_at_300_dpi_is_the_full_page(font):
    page = D.render_page(_spec(font, dpi=300, seed=1))
    assert page.gray.shape == (3508, 2480) and page.gray.dtype == np.uint8 and page.lines


# ------------------------------------------------------------------------------------------------ labels

def test_page_label_sides_and_guard_band():
    for kind in ("gaussian", "defocus", "motion"):
        for px in (20.0, 40.0):
            b = D.blur_boundary(kind, px)
            assert b > 0
            assert D.page_label(kind, 2 * b, px) == 1 and D.page_label(kind, 0.5 * b, px) == 0
            assert D.page_label(kind, 1.05 * b, px, margin=0.1) is None
            assert D.page_label(kind, 0.95 * b, px, margin=0.1) is None
            assert D.page_label(kind, 1.2 * b, px, margin=0.1) == 1
            assert D.page_label(kind, 0.8 * b, px, margin=0.1) == 0
            assert D.page_label(kind, 1.001 * b, px) == 1 and D.page_label(kind, 0.999 * b, px) == 0
            assert D.page_label(kind, 0.0, px, margin=0.5) == 0
        b20 = D.blur_boundary(kind, 20.0)
        assert D.blur_boundary(kind, 40.0) > b20 and D.page_label(kind, 1.5 * b20, 40.0) == 0  # big type reads on
    assert D.page_label(None, 5.0, 20.0) == 0 and D.page_label("none", 5.0, 20.0, margin=0.2) == 0
    with pytest.raises(ValueError):
        D.page_label("box", 1.0, 20.0)
