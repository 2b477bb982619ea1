"""Tests of ensemble.datasets: layouts, labels, decoding, splits and the dataset cache."""
from __future__ import annotations

import csv
import os
import pickle
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import openpyxl
import pytest
from fixtures import (
    CERTH_LABELS,
    REPO_ROOT,
    certh_sheet_rows,
    make_csv_dataset,
    make_fake_certh,
    make_folder_dataset,
    make_photo,
    require_shared,
    save_jpeg,
)

from ensemble.datasets import (
    DEFAULT_DATA,
    PICKLE_FORMAT,
    DatasetError,
    Item,
    LoadedData,
    detect_layout,
    fingerprint,
    list_items,
    load_dataset,
    load_pickle,
    read_certh_sheet,
    save_pickle,
    scene_folds,
    split_by_scene,
)


def _load(items, **kw) -> LoadedData:
    kw.setdefault("progress", False)
    kw.setdefault("workers", 2)
    return load_dataset(items, **kw)


def _names(items) -> list[str]:
    return [Path(it.path).name for it in items]


# ------------------------------------------------------------------------------------------------ CSV layout


def test_csv_layout_labels_sources_scenes(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", 6)
    assert detect_layout(root) == "csv"
    assert detect_layout(root / "labels.csv") == "csv"
    items = list_items(root)
    assert items.warnings == []
    assert _names(items) == [f"img_{i:03d}.jpg" for i in range(6)]
    assert [it.label for it in items] == [0, 1, 0, 1, 0, 1]
    assert {it.source for it in items} == {"csv"}
    assert [it.scene for it in items] == ["s0", "s0", "s1", "s1", "s2", "s2"]
    assert list_items(root / "labels.csv") == items  # the CSV path given directly

    data = _load(items)
    assert len(data) == 6
    assert data.labels.dtype == np.int8 and data.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert all(im.dtype == np.uint8 and im.shape == (96, 128) for im in data.images)
    assert [m["scene"] for m in data.meta] == ["s0", "s0", "s1", "s1", "s2", "s2"]
    assert all((m["width"], m["height"]) == (128, 96) for m in data.meta)
    assert set(data.meta[0]) == {"path", "label", "source", "scene", "width", "height"}
    assert data.warnings == []


def test_csv_word_labels_missing_scene_and_bad_rows(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", 4, with_scene=False)
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "blurry"])
        w.writerows(
            [
                ["images/img_000.jpg", "false"],
                ["images/img_001.jpg", "YES"],
                ["images/img_002.jpg", "no"],
                ["images/img_003.jpg", "True"],
                ["images/gone.jpg", "1"],  # missing file
                ["images/img_000.jpg", "maybe"],  # bad label
            ]
        )
    items = list_items(root)
    assert [it.label for it in items] == [0, 1, 0, 1]
    # no scene column: every image is its own scene
    assert len({it.scene for it in items}) == 4
    assert len(items.warnings) == 2
    assert any("gone.jpg" in w for w in items.warnings)
    assert any("maybe" in w for w in items.warnings)
    # the listing's warnings travel into the loaded data
    data = _load(items)
    assert data.warnings == items.warnings


# ------------------------------------------------------------------------------------------------ folders layout


def test_folder_layout(tmp_path):
    root = make_folder_dataset(tmp_path / "ds", 12)
    (root / "sharp").rename(root / "Sharp")  # folder names are case-insensitive
    (root / "sharp_notes.txt").write_text("not a class folder")
    (root / "blurry" / "readme.txt").write_text("not an image")
    assert detect_layout(root) == "folders"
    items = list_items(root)
    got = {Path(it.path).name: (it.label, it.source) for it in items}
    expected = {}
    for i in range(12):
        cls = "Sharp" if i % 2 == 0 else ("blurry", "defocused_blurred", "motion_blurred")[(i // 2) % 3]
        expected[f"img_{i:03d}.jpg"] = (int(i % 2), cls)
    assert got == expected
    assert any("nested" in it.path for it in items)  # found recursively
    assert len({it.scene for it in items}) == 12  # each its own scene
    data = _load(items)
    assert sorted(Counter(data.labels.tolist()).items()) == [(0, 6), (1, 6)]


def test_folder_layout_pairs_share_a_scene(tmp_path):
    root = tmp_path / "ds"
    img = make_photo(1, (48, 64))
    save_jpeg(root / "sharp" / "7_PHONE_S.jpg", img)
    save_jpeg(root / "motion_blurred" / "7_PHONE_M.jpg", img)
    save_jpeg(root / "defocused_blurred" / "7_PHONE_F.jpg", img)
    save_jpeg(root / "sharp" / "001.jpg", img)
    save_jpeg(root / "blurry" / "001.jpg", img)
    save_jpeg(root / "sharp" / "lonely.jpg", img)
    scene = {f"{it.source}/{Path(it.path).name}": it.scene for it in list_items(root)}
    assert scene["sharp/7_PHONE_S.jpg"] == scene["motion_blurred/7_PHONE_M.jpg"] == scene[
        "defocused_blurred/7_PHONE_F.jpg"
    ]
    assert scene["sharp/001.jpg"] == scene["blurry/001.jpg"]
    assert len(set(scene.values())) == 3


# ------------------------------------------------------------------------------------------------ CERTH


def test_certh_training_set(tmp_path):
    certh = make_fake_certh(tmp_path, n_per_set=4)
    (certh / "TrainingSet" / "Undistorted" / "Thumbs.db").write_bytes(b"junk")
    for root in (certh, certh / "TrainingSet"):
        assert detect_layout(root) == "certh-train"
        items = list_items(root)
        assert items.warnings == []
        by_source = Counter((it.source, it.label) for it in items)
        assert by_source == {
            ("CERTH-Undistorted", 0): 2,
            ("CERTH-Naturally-Blurred", 1): 2,
            ("CERTH-Artificially-Blurred", 1): 2,
        }
    data = _load(items)
    assert len(data) == 6 and data.warnings == []
    assert [m["source"] for m in data.meta] == [it.source for it in items]


def _expected_certh_eval() -> dict[str, tuple[int, str]]:
    expected = {}
    for set_name in ("NaturalBlurSet", "DigitalBlurSet"):
        _, rows = certh_sheet_rows(set_name, 6)
        for name, label in rows:
            file_name = name.strip() if name.strip().endswith(".jpg") else name.strip() + ".jpg"
            expected[f"{set_name}/{file_name}"] = ({1: 1, -1: 0}[label], set_name)
    return expected


def test_certh_evaluation_set(tmp_path):
    certh = make_fake_certh(tmp_path, n_per_set=6)
    evaluation = certh / "EvaluationSet"
    # the fixture sheets really carry the quirks the loader must handle
    natural = [r[0] for r in openpyxl.load_workbook(evaluation / "NaturalBlurSet.xlsx").active.values][1:]
    digital_ws = openpyxl.load_workbook(evaluation / "DigitalBlurSet.xlsx").active
    digital = [r[0] for r in digital_ws.values][1:]
    assert not any(n.endswith(".jpg") for n in natural)
    assert all(n != n.strip() for n in digital)
    assert digital_ws["B1"].value is None

    # a file saved with an upper-case suffix is still found
    (evaluation / "NaturalBlurSet" / "Original_4.jpg").rename(evaluation / "NaturalBlurSet" / "Original_4.JPG")
    expected = _expected_certh_eval()
    expected["NaturalBlurSet/Original_4.JPG"] = expected.pop("NaturalBlurSet/Original_4.jpg")

    assert detect_layout(evaluation) == "certh-eval"
    assert detect_layout(certh) == "certh-train"  # both present: training wins unless asked
    for items in (list_items(certh, layout="certh-eval"), list_items(evaluation)):
        assert items.warnings == []
        got = {f"{Path(it.path).parent.name}/{Path(it.path).name}": (it.label, it.source) for it in items}
        assert got == expected
    labels = Counter((it.source, it.label) for it in items)
    assert labels == {("NaturalBlurSet", 0): 3, ("NaturalBlurSet", 1): 3, ("DigitalBlurSet", 0): 3,
                      ("DigitalBlurSet", 1): 3}
    # DigitalBlurSet: the blurred versions and the original of one photo share a scene
    scene = {Path(it.path).name: it.scene for it in items}
    assert scene["DiskR10_1.jpg"] == scene["Original_1.jpg"] != scene["DiskR10_10.jpg"]
    data = _load(items)
    assert len(data) == 12 and data.warnings == []
    assert sorted(set(data.sources)) == ["DigitalBlurSet", "NaturalBlurSet"]


def test_certh_eval_missing_image_and_csv_sheet(tmp_path):
    certh = make_fake_certh(tmp_path, n_per_set=6)
    evaluation = certh / "EvaluationSet"
    (evaluation / "DigitalBlurSet" / "DiskR10_10.jpg").unlink()
    # NaturalBlurSet labels as CSV instead of xlsx
    header, rows = certh_sheet_rows("NaturalBlurSet", 6)
    (evaluation / "NaturalBlurSet.xlsx").unlink()
    with open(evaluation / "NaturalBlurSet.csv", "w", newline="") as f:
        csv.writer(f).writerows([header] + rows)
    items = list_items(certh, layout="certh-eval")
    expected = _expected_certh_eval()
    del expected["DigitalBlurSet/DiskR10_10.jpg"]
    got = {f"{Path(it.path).parent.name}/{Path(it.path).name}": (it.label, it.source) for it in items}
    assert got == expected
    assert len(items.warnings) == 1 and "DiskR10_10.jpg" in items.warnings[0]
    assert "\n" not in items.warnings[0]


@pytest.mark.parametrize("suffix", [".xlsx", ".csv"])
@pytest.mark.parametrize(
    "set_name, n_rows, n_blurred, n_sharp",
    [("NaturalBlurSet", 1000, 411, 589), ("DigitalBlurSet", 480, 450, 30)],
)
def test_real_certh_sheets_parse_fully(set_name, n_rows, n_blurred, n_sharp, suffix):
    sheet = require_shared(CERTH_LABELS / f"{set_name}{suffix}")
    rows, warns = read_certh_sheet(sheet)
    assert warns == []
    assert len(rows) == n_rows
    counts = Counter(label for _, label in rows)
    assert counts == {1: n_blurred, 0: n_sharp}
    names = [name for name, _ in rows]
    assert len(set(names)) == n_rows
    assert all(name == name.strip() for name in names)
    if set_name == "NaturalBlurSet":
        assert set(names) == {f"Original_{i}" for i in range(1, 1001)}
    else:
        assert all(re.fullmatch(r"[A-Za-z0-9]+_\d+\.jpg", name) for name in names)


# ------------------------------------------------------------------------------------------------ detection errors


def test_detect_layout_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "misc").mkdir()
    (tmp_path / "misc" / "photos").mkdir()
    for root in (tmp_path / "empty", tmp_path / "missing", tmp_path / "notes.txt", tmp_path / "misc"):
        with pytest.raises(DatasetError) as err:
            detect_layout(root)
        assert "\n" not in str(err.value)
    with pytest.raises(DatasetError):
        list_items(tmp_path / "empty", layout="no-such-layout")
    with pytest.raises(DatasetError):
        list_items(tmp_path / "empty", layout="csv")
    (tmp_path / "hdr").mkdir()
    (tmp_path / "hdr" / "labels.csv").write_text("path,blurry\n")
    with pytest.raises(DatasetError, match="no labelled images"):
        list_items(tmp_path / "hdr")
    (tmp_path / "hdr" / "labels.csv").write_text("file,label\na.jpg,1\n")
    with pytest.raises(DatasetError, match="header"):
        list_items(tmp_path / "hdr")


# ------------------------------------------------------------------------------------------------ decoding


def test_bad_files_are_skipped_with_a_warning(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", 4)
    images = root / "images"
    (images / "zero.jpg").write_bytes(b"")
    good = (images / "img_000.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (images / "text.jpg").write_text("this is not a picture\n")
    with open(root / "labels.csv", "a", newline="") as f:
        csv.writer(f).writerows(
            [["images/zero.jpg", 1, "z"], ["images/truncated.jpg", 0, "t"], ["images/text.jpg", 1, "x"]]
        )
    items = list_items(root)
    assert len(items) == 7  # listing does not decode
    data = _load(items)
    assert len(data) == 4
    assert [Path(m["path"]).name for m in data.meta] == [f"img_{i:03d}.jpg" for i in range(4)]
    assert data.labels.tolist() == [0, 1, 0, 1]
    assert len(data.warnings) == 3
    for name, warning in zip(["zero.jpg", "truncated.jpg", "text.jpg"], data.warnings):
        assert warning.startswith(str(images / name) + ": ")
        assert "\n" not in warning


def test_thread_pool_keeps_order(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", 8)
    items = list_items(root)
    one = _load(items, workers=1)
    two = _load(items, workers=2)
    assert [m["path"] for m in two.meta] == [it.path for it in items]
    assert all(np.array_equal(a, b) for a, b in zip(one.images, two.images))
    assert one.meta == two.meta


def test_exif_orientation_is_applied(tmp_path):
    stored = np.full((40, 60), 30, np.uint8)  # stored 60 wide x 40 high
    stored[:12, :12] = 250  # bright top-left corner
    path = save_jpeg(tmp_path / "rotated.jpg", stored, quality=95, orientation=6)
    data = _load([Item(str(path), 0, "a", "test")])
    assert data.warnings == []
    (pixels,) = data.images
    assert pixels.shape == (60, 40)  # displayed rotated 90° clockwise: 40 wide x 60 high
    assert (data.meta[0]["width"], data.meta[0]["height"]) == (40, 60)
    assert pixels[:12, -12:].mean() > 200 and pixels[:12, :12].mean() < 80  # corner moved to the top right


def test_small_images_kept_big_ones_reduced(tmp_path):
    small = save_jpeg(tmp_path / "small.jpg", make_photo(2, (50, 70)))
    big = save_jpeg(tmp_path / "big.jpg", make_photo(3, (800, 1000)))
    items = [Item(str(small), 0, "s", "t"), Item(str(big), 1, "b", "t")]
    data = _load(items)
    assert data.images[0].shape == (50, 70)  # never upsampled
    assert data.images[1].shape == (640, 800)  # shorter side 640
    assert [(m["width"], m["height"]) for m in data.meta] == [(70, 50), (1000, 800)]
    full = _load(items, side=None)
    assert full.images[1].shape == (800, 1000)


def test_library_prints_nothing_on_stdout(tmp_path, capsys):
    items = list_items(make_csv_dataset(tmp_path / "ds", 2))
    load_dataset(items, progress=True, workers=1)
    out, err = capsys.readouterr()
    assert out == ""
    assert "decoding" in err


def test_subset_and_len(tmp_path):
    data = _load(list_items(make_csv_dataset(tmp_path / "ds", 4)))
    sub = data.subset([3, 0])
    assert len(sub) == 2
    assert sub.labels.tolist() == [1, 0]
    assert [Path(m["path"]).name for m in sub.meta] == ["img_003.jpg", "img_000.jpg"]
    assert sub.images[0] is data.images[3]
    masked = data.subset(np.array([True, False, True, False]))
    assert masked.labels.tolist() == [0, 0] and len(masked) == 2


# ------------------------------------------------------------------------------------------------ splits


def _random_scenes(n_scenes=40, seed=5):
    rng = np.random.default_rng(seed)
    scenes, labels = [], []
    for s in range(n_scenes):
        for _ in range(rng.integers(1, 5)):
            scenes.append(f"scene{s}")
            labels.append(int(rng.random() < 0.35))
    order = rng.permutation(len(scenes))
    return [scenes[i] for i in order], np.array(labels)[order]


def test_split_by_scene_never_shares_a_scene_and_is_deterministic():
    scenes, labels = _random_scenes()
    n = len(scenes)
    train, test = split_by_scene(scenes, test_fraction=0.25, seed=3, labels=labels)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(n))
    assert not {scenes[i] for i in train} & {scenes[i] for i in test}
    assert abs(len(test) / n - 0.25) < 0.06
    for seed in range(10):  # stratified: each label's share in test is close to the fraction
        _, t = split_by_scene(scenes, test_fraction=0.25, seed=seed, labels=labels)
        for c in (0, 1):
            assert abs(np.sum(labels[t] == c) / np.sum(labels == c) - 0.25) < 0.05
    again = split_by_scene(scenes, test_fraction=0.25, seed=3, labels=labels)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], test)
    other = split_by_scene(scenes, test_fraction=0.25, seed=4, labels=labels)
    assert not np.array_equal(other[1], test)
    plain_train, plain_test = split_by_scene(scenes, 0.2, seed=0)
    assert not {scenes[i] for i in plain_train} & {scenes[i] for i in plain_test}
    assert abs(len(plain_test) / n - 0.2) < 0.06
    with pytest.raises(ValueError):
        split_by_scene(["only"] * 5)


def test_scene_folds():
    scenes, labels = _random_scenes()
    n = len(scenes)
    folds = list(scene_folds(scenes, k=4, seed=1, labels=labels))
    assert len(folds) == 4
    vals = [v for _, v in folds]
    assert sorted(np.concatenate(vals).tolist()) == list(range(n))  # each sample validated exactly once
    for train, val in folds:
        assert len(val) > 0
        assert sorted(np.concatenate([train, val]).tolist()) == list(range(n))
        assert not {scenes[i] for i in train} & {scenes[i] for i in val}
    sizes = [len(v) for v in vals]
    assert max(sizes) - min(sizes) <= 4  # balanced to within one scene
    again = list(scene_folds(scenes, k=4, seed=1, labels=labels))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    with pytest.raises(ValueError):
        list(scene_folds(["a", "b"], k=3))


def test_split_keeps_csv_pairs_together(tmp_path):
    items = list_items(make_csv_dataset(tmp_path / "ds", 10))
    train, test = split_by_scene([it.scene for it in items], 0.2, seed=0)
    assert len(test) == 2 and test[0] // 2 == test[1] // 2


# ------------------------------------------------------------------------------------------------ fingerprint


def test_fingerprint():
    meta = [
        {"path": "/data/a/img1.jpg", "label": 0, "width": 640, "height": 480},
        {"path": "/data/a/sub/img2.jpg", "label": 1, "width": 100, "height": 80},
    ]
    fp = fingerprint(meta)
    assert re.fullmatch(r"[0-9a-f]{16}", fp)
    assert fingerprint(meta[::-1]) == fp  # order does not matter
    moved = [dict(m, path=m["path"].replace("/data/a", "/elsewhere/b")) for m in meta]
    assert fingerprint(moved) == fp  # location does not matter
    assert fingerprint([dict(meta[0], label=1), meta[1]]) != fp
    assert fingerprint([dict(meta[0], width=641), meta[1]]) != fp
    assert fingerprint([dict(meta[0], path="/data/a/other.jpg"), meta[1]]) != fp


# ------------------------------------------------------------------------------------------------ pickles


def test_pickle_round_trip(tmp_path):
    data = _load(list_items(make_csv_dataset(tmp_path / "ds", 4)))
    data.warnings.append("x.jpg: broken")
    extra = {"fingerprint": fingerprint(data.meta), "split": {"test": [1, 2]}, "mean": np.float32(0.5)}
    out = save_pickle(data, tmp_path / "cache" / "data.pkl", extra=extra)
    assert sorted(os.listdir(tmp_path / "cache")) == ["data.pkl"]  # no temp file left behind
    back = load_pickle(out)
    assert len(back) == 4
    assert all(np.array_equal(a, b) and b.dtype == np.uint8 for a, b in zip(data.images, back.images))
    assert back.labels.dtype == np.int8 and back.labels.tolist() == data.labels.tolist()
    assert back.meta == data.meta
    assert back.warnings == data.warnings
    assert back.info["fingerprint"] == extra["fingerprint"] and back.info["split"] == {"test": [1, 2]}
    assert back.info["format"] == PICKLE_FORMAT and back.info["version"] == 1
    assert back.info["mean"] == np.float32(0.5)
    assert re.match(r"\d{4}-\d\d-\d\dT", back.info["created"])
    with pytest.raises(ValueError):
        save_pickle(data, tmp_path / "x.pkl", extra={"labels": []})


def test_pickle_needs_pkl_name_and_format_marker(tmp_path):
    data = LoadedData([np.zeros((4, 4), np.uint8)], np.zeros(1, np.int8), [{"path": "a"}])
    with pytest.raises(DatasetError):
        save_pickle(data, tmp_path / "data.pickle")
    shutil.copy(save_pickle(data, tmp_path / "ok.pkl"), tmp_path / "ok.bin")
    with pytest.raises(DatasetError):
        load_pickle(tmp_path / "ok.bin")
    with open(tmp_path / "foreign.pkl", "wb") as f:
        pickle.dump({"images": [], "labels": np.zeros(0, np.int8), "meta": []}, f, protocol=5)
    with pytest.raises(DatasetError, match="format"):
        load_pickle(tmp_path / "foreign.pkl")
    (tmp_path / "garbage.pkl").write_bytes(b"\x80\x05garbage")
    with pytest.raises(DatasetError):
        load_pickle(tmp_path / "garbage.pkl")
    with pytest.raises(DatasetError):
        load_pickle(tmp_path / "missing.pkl")
    # non-contiguous arrays and numpy scalars use other numpy globals: still allowed
    with open(tmp_path / "nc.pkl", "wb") as f:
        pickle.dump(
            {"format": PICKLE_FORMAT, "version": 1, "images": [np.zeros((6, 6), np.uint8)[:, ::2]],
             "labels": np.ones(1, np.int8), "meta": [{"n": np.int64(3)}]},
            f,
            protocol=5,
        )
    assert load_pickle(tmp_path / "nc.pkl").images[0].shape == (6, 3)


class _Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("how", ["os.system", "eval", "subprocess"])
def test_malicious_pickle_is_refused(tmp_path, how):
    import subprocess

    marker = tmp_path / "pwned"
    payload = {
        "os.system": _Evil(os.system, f"touch {marker}"),
        "eval": _Evil(eval, f"open({str(marker)!r}, 'w').close()"),
        "subprocess": _Evil(subprocess.Popen, ["touch", str(marker)]),
    }[how]
    evil = {"format": PICKLE_FORMAT, "version": 1, "images": [], "labels": np.zeros(0, np.int8), "meta": [],
            "extra": payload}
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(evil, protocol=5))
    with pytest.raises(DatasetError, match="not allowed"):
        load_pickle(path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ shared data


def test_default_data_location():
    assert DEFAULT_DATA == REPO_ROOT.parent / "shared" / "datasets" / "blur-photos-640"
    require_shared(DEFAULT_DATA)
    assert detect_layout(DEFAULT_DATA) == "csv"
    items = list_items(DEFAULT_DATA)  # listing only: nothing is decoded
    assert len(items) == 2132 and items.warnings == []
    assert Counter(it.label for it in items) == {0: 1089, 1: 1043}
