"""The content classifier (ensemble/content.py): 'photo' or 'document', what ``--scale auto`` decides on.

A small model is trained here (pages rendered in the training fonts and layouts, photos from the training side of
../shared's scene split) and judged on what it never saw: pages in the held-out fonts and layouts, photos of the
test side. Pages need the fonts of ``make fonts`` and photos need ../shared: without them the tests that need them
are skipped (under CI, a failure). The shipped model (final_model/content.json), once the pipeline has made it, is
judged the same way, on every photo of the test side (data/test.pkl, or the same scene split made from ../shared)
and on held-out pages, blurred ones and ones read through the reduced JPEG decode among them. How fast the measures
are is benchmarks/bench_content.py's business, not a test's.
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from ensemble import content as C
from ensemble import datasets, pipeline
from ensemble.datasets import DEFAULT_DATA, list_items, load_dataset, split_by_scene
from ensemble.imageio import load_image
from fixtures import REPO_ROOT, require_fonts, require_shared

DPIS = (150, 200)  # low resolutions: the pages render in well under 0.1 s each


@pytest.fixture(scope="module")
def shared_photos():
    """(training-side photos with their scenes, test-side photos): small samples of ../shared's scene split."""
    require_shared(DEFAULT_DATA)
    items = list_items(DEFAULT_DATA)
    train_idx, test_idx = split_by_scene([it.scene for it in items], 0.2, 0, labels=[it.label for it in items])
    rng = np.random.default_rng(0)
    tr = load_dataset([items[i] for i in rng.choice(train_idx, 160, replace=False)], progress=False)
    te = load_dataset([items[i] for i in rng.choice(test_idx, 150, replace=False)], progress=False)
    return (tr.images, tr.scenes), te.images


@pytest.fixture(scope="module")
def held_out_pages():
    require_fonts()
    return C.sample_pages(30, "heldout", seed=11, dpis=DPIS)


@pytest.fixture(scope="module")
def trained(shared_photos):
    require_fonts()
    (photos, scenes), _ = shared_photos
    pages, info = C.sample_pages(60, "train", seed=10, dpis=DPIS)
    return C.fit_content(photos, pages, groups=(scenes, [i["family"] for i in info]), seed=0)


# ------------------------------------------------------------------------------------------------ features


@pytest.mark.parametrize("shape, value", [((1, 1), 0), ((3, 50), 200), ((7, 7), 255), ((31, 2000), 128),
                                          ((640, 640), 0), ((640, 640), 255), ((905, 640), 230)])
def test_tiny_and_uniform_pictures_give_finite_features(shape, value):
    f = C.content_features(np.full(shape, value, np.uint8))
    assert f.dtype == np.float32 and f.shape == (len(C.CONTENT_FEATURE_NAMES),) and np.all(np.isfinite(f))


def test_any_input_type_and_size_works():
    rng = np.random.default_rng(0)
    noise = (rng.random((37, 53)) * 255).astype(np.uint8)
    for img in (noise, noise.astype(np.float64), np.dstack([noise] * 3), noise[:, :1], noise.T,
                cv2.resize(noise, (2600, 1900))):
        f = C.content_features(img)
        assert f.shape == (len(C.CONTENT_FEATURE_NAMES),) and np.all(np.isfinite(f))


# ------------------------------------------------------------------------------------------------ the trained model


def test_training_sets_the_threshold_above_every_validation_photo(trained):
    model, report = trained
    assert report["photos"] == 160 and report["pages"] == 60 and report["changed_photos"] == 160
    assert report["oof_photos_called_documents"] == 0
    assert report["threshold_logit"] >= report["oof_photo_max_logit"] + C.MIN_MARGIN - 1e-9
    assert 0 < model.threshold < 1 and report["oof_page_recall"] >= 0.95, report


def test_held_out_pages_are_documents(trained, held_out_pages):
    model, _ = trained
    pages, info = held_out_pages
    from ensemble import documents

    assert {i["layout"] for i in info} <= set(documents.HELDOUT_LAYOUTS)
    found = [model.classify(p) for p in pages]
    assert found.count("document") == len(pages), [(i["layout"], i["blur"], i["crop"]) for i, f in
                                                    zip(info, found) if f != "document"]


def test_test_side_photos_are_photos(trained, shared_photos):
    model, _ = trained
    _, test_photos = shared_photos
    result = C.evaluate_content(model, test_photos, [])
    assert result["photos_called_documents"] == 0, result
    assert result["photo_max_logit"] < C._logit(model.threshold) - 1.0, result  # with room to spare


def test_a_blurred_page_is_still_a_document_in_both_views(trained, tmp_path):
    from ensemble import documents

    model, _ = trained
    spec = documents.sample_spec(np.random.default_rng(3), "heldout", dpi=200)
    for blur in (None, ("gaussian", 4.0, 0.0), ("defocus", 6.0, 0.0), ("motion", 15.0, 30.0)):
        full = documents.make_page(spec, blur=blur).gray
        path = tmp_path / "page.jpg"
        cv2.imwrite(str(path), full, [cv2.IMWRITE_JPEG_QUALITY, 90])
        reduced = load_image(path, "L").pixels  # JPEG draft, then area averaging: the scan path's view
        full_view = load_image(path, "L", keep_full=True).pixels  # full decode, then area averaging
        for view in (reduced, full_view):
            assert model.classify(view) == "document", (blur, view.shape, model.predict_proba([view]))


def test_dark_bright_and_foggy_photos_stay_photos(trained, shared_photos):
    model, _ = trained
    _, test_photos = shared_photos
    v = np.arange(256, dtype=np.float64)
    for name, table in {"dark": v * 0.3, "bright": 255 * (v / 255) ** 0.5, "fog": 0.4 * v + 0.6 * 230}.items():
        lut = np.clip(table, 0, 255).round().astype(np.uint8)
        changed = [cv2.LUT(g, lut) for g in test_photos[:60]]
        assert C.evaluate_content(model, changed, [])["photos_called_documents"] == 0, name


def test_save_and_load_give_identical_probabilities(trained, held_out_pages, tmp_path):
    model, report = trained
    pages, _ = held_out_pages
    path = model.save(tmp_path)
    assert path == tmp_path / C.CONTENT_FILE and not list(tmp_path.glob(".*.tmp"))
    params = json.loads(path.read_text())
    assert params["feature_names"] == list(C.CONTENT_FEATURE_NAMES) and params["report"]["pages"] == report["pages"]
    again = C.ContentModel.load(tmp_path)
    some = pages[:5] + [np.zeros((3, 3), np.uint8)]
    assert np.array_equal(again.predict_proba(some), model.predict_proba(some))
    assert again.threshold == model.threshold
    assert [again.classify(p) for p in some] == [model.classify(p) for p in some]


def test_tiny_and_uniform_pictures_are_classified_without_error(trained):
    model, _ = trained
    for img in (np.zeros((1, 1), np.uint8), np.full((2, 900), 255, np.uint8), np.full((640, 640), 128, np.uint8)):
        assert model.classify(img) in C.CONTENTS
        p = model.predict_proba([img])
        assert p.shape == (1,) and np.isfinite(p).all()


def test_load_without_a_file_is_none_and_a_foreign_model_is_refused(trained, tmp_path):
    assert C.ContentModel.load(tmp_path) is None
    model, _ = trained
    params = model.to_params()
    params["feature_names"] = params["feature_names"][:-1] + ["something_else"]
    (tmp_path / C.CONTENT_FILE).write_text(json.dumps(params))
    with pytest.raises(ValueError, match="retrain"):
        C.ContentModel.load(tmp_path)


def test_fit_needs_both_classes_and_matching_groups():
    photos = [np.full((64, 64), 100, np.uint8)] * 3
    with pytest.raises(ValueError):
        C.fit_content(photos, [])
    with pytest.raises(ValueError):
        C.fit_content(photos, photos, groups=[1, 2])


# ------------------------------------------------------------------------------------------------ the shipped model

SHIPPED = REPO_ROOT / "final_model"
TEST_PKL = REPO_ROOT / "data" / "test.pkl"


def _test_side_photos() -> list:
    """Every photo of the test side of the scene split: data/test.pkl when the pipeline has written it, else the
    same split (fraction 0.2, seed 0, as load_testdata.py makes it) of ../shared."""
    if TEST_PKL.exists():
        return list(datasets.load_pickle(TEST_PKL).images)
    require_shared(DEFAULT_DATA)
    items = list_items(DEFAULT_DATA)
    _, test_idx = split_by_scene([it.scene for it in items], 0.2, 0, labels=[it.label for it in items])
    return load_dataset([items[i] for i in test_idx], progress=False).images


def _reduced_decode_pages(tmp_path, n: int) -> tuple[list, list]:
    """``n`` held-out pages, each blurred (Gaussian, defocus, motion in turn), written as JPEG and read back as
    the scan path reads them (JPEG draft, then area averaging), with what made them."""
    from ensemble import documents

    blurs = (("gaussian", 3.0, 0.0), ("defocus", 5.0, 0.0), ("motion", 12.0, 60.0))
    rng = np.random.default_rng(21)
    views, made = [], []
    for i in range(n):
        spec = documents.sample_spec(rng, "heldout", dpi=int(rng.choice((200, 300))))
        full = documents.make_page(spec, blur=blurs[i % len(blurs)]).gray
        path = tmp_path / f"page{i}.jpg"
        cv2.imwrite(str(path), full, [cv2.IMWRITE_JPEG_QUALITY, 90])
        views.append(load_image(path, "L").pixels)
        made.append((spec.layout, documents.font_family(spec.font), blurs[i % len(blurs)]))
    return views, made


@pytest.mark.skipif(not (SHIPPED / C.CONTENT_FILE).exists(), reason="no final_model/content.json: run the pipeline")
def test_shipped_model_calls_no_test_photo_a_document_and_recognises_held_out_pages(held_out_pages, tmp_path):
    model = C.ContentModel.load(SHIPPED)
    photos = _test_side_photos()
    assert len(photos) >= 100
    pages, info = held_out_pages
    drafts, made = _reduced_decode_pages(tmp_path, 6)
    result = C.evaluate_content(model, photos, pages)
    assert result["photos_called_documents"] == 0, result
    assert result["pages_called_photos"] == 0, [(i["layout"], i["family"], i["blur"]) for i, p in
                                                zip(info, model.predict_proba(pages)) if p < model.threshold]
    found = [model.classify(v) for v in drafts]
    assert found.count("document") == len(drafts), [m for m, f in zip(made, found) if f != "document"]


@pytest.mark.skipif(not (SHIPPED / C.CONTENT_FILE).exists(), reason="no final_model/content.json: run the pipeline")
def test_shipped_model_was_trained_on_training_fonts_and_layouts_only():
    from ensemble import documents

    params = json.loads((SHIPPED / C.CONTENT_FILE).read_text())
    assert params["feature_names"] == list(C.CONTENT_FEATURE_NAMES)
    data = params["data"]
    assert data["page_split"] == "train" and data["pages"] >= 300 and data["photos"] >= 1000
    assert not set(data["page_layouts"]) & set(documents.HELDOUT_LAYOUTS)
    assert not set(data["page_families"]) & set(documents.HELDOUT_FAMILIES)
    report = params["report"]
    assert report["oof_photos_called_documents"] == 0 and report["threshold_logit"] >= \
        report["oof_photo_max_logit"] + C.MIN_MARGIN - 1e-9


# ------------------------------------------------------------------------------------------------ the pipeline stage


def test_train_content_stage_writes_a_loadable_model_and_reports(tmp_path, monkeypatch):
    require_fonts()
    from ensemble import documents
    from fixtures import make_photo

    rng = np.random.default_rng(5)
    images, meta = [], []
    for i in range(24):  # synthetic photos (fixtures.make_photo) in 8 scenes, some dark, some bright
        g = cv2.cvtColor(make_photo(i, (240, 320)), cv2.COLOR_RGB2GRAY)
        images.append(np.ascontiguousarray(C.change_photo(g, rng) if i % 3 == 0 else g, dtype=np.uint8))
        meta.append({"path": f"/x/{i}.jpg", "label": i % 2, "source": "csv", "scene": str(i // 3), "width": 320,
                     "height": 240})
    pkl = datasets.save_pickle(datasets.LoadedData(images, np.array([m["label"] for m in meta], np.int8), meta),
                               tmp_path / "train.pkl")
    monkeypatch.setattr(C, "sample_pages", lambda n, split, seed=0, **_: _low_dpi_pages(n, split, seed))
    out = tmp_path / "model"
    report = pipeline.train_content_stage(pkl, out, pages=12, seed=3, workers=1, progress=False)
    assert report["stage"] == "content classifier" and report["out"] == str(out / C.CONTENT_FILE)
    assert report["photos"] == 24 and report["changed_photos"] == 24 and report["pages"] == 12
    assert report["oof_photos_called_documents"] == 0 and 0 < report["threshold"] < 1 and report["seconds"] >= 0
    assert not list(out.glob(".*.tmp"))
    model = C.ContentModel.load(out)
    assert model.threshold == report["threshold"]
    assert model.params["data"]["page_seed"] == C.STAGE_PAGE_SEED + 3 and model.params["data"]["photos"] == 24
    assert model.params["data"]["train_pkl"] == "train.pkl"  # not this machine's path
    assert set(model.params["data"]["page_layouts"]) <= set(documents.TRAIN_LAYOUTS)
    with pytest.raises(FileNotFoundError):
        pipeline.train_content_stage(tmp_path / "missing.pkl", out, pages=12, progress=False)


_real_sample_pages = C.sample_pages


def _low_dpi_pages(n, split, seed):
    assert split == "train"  # the stage never renders held-out fonts or layouts
    return _real_sample_pages(n, split, seed=seed, dpis=DPIS)
