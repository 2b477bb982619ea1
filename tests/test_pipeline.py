"""End to end: the five stage scripts on ~40 generated images, one epoch, in a temporary directory."""
import json
import os
import subprocess
import sys

import pytest

from fixtures import REPO_ROOT, make_csv_dataset, make_fake_certh

pytest.importorskip("tensorflow")


def stage(script, *args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(REPO_ROOT / script), *args, "--quiet"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Run stages 1 to 4 once on 40 generated photos (20 scenes: a sharp shot and a blurred one each)."""
    tmp = tmp_path_factory.mktemp("pipeline")
    data = make_csv_dataset(tmp / "photos", 40, size=(300, 400))
    stage("load_traindata.py", "--data", str(data), "--out", "data/train.pkl", "--test-fraction", "0.25", cwd=tmp)
    stage("load_testdata.py", "--data", str(data), "--out", "data/test.pkl", "--test-fraction", "0.25", cwd=tmp)
    # Every path is given: the stages' defaults point into the repository, whose model they must never replace.
    stage("CNN.py", "--train", "data/train.pkl", "--epochs", "1", "--patches-per-image", "4", "--width", "0.5",
          "--out", "model", cwd=tmp)
    stage("train.py", "--train", "data/train.pkl", "--model", "model", "--out", "final_model", "--folds", "2",
          "--max-epochs", "5", "--patience", "2", "--kind-copies", "2", "--kind-max-epochs", "3",
          "--content-pages", "24", "--native-pages", "16", "--native-photo-copies", "1", "--native-members", "1",
          cwd=tmp)
    return tmp


def test_stages_write_their_outputs(trained):
    import pickle

    for f in ("data/train.pkl", "data/test.pkl", "model/cnn.keras", "model/cnn.onnx", "model/training_log.csv",
              "model/training_curves.png", "final_model/meta.keras", "final_model/meta.onnx",
              "final_model/metadata.json", "final_model/kind.onnx", "final_model/kind.json",  # kind head: by default
              "final_model/content.json", "final_model/meta_native.onnx", "final_model/native.json"):
        assert (trained / f).exists(), f
    with open(trained / "data/train.pkl", "rb") as fh:  # our own file, written moments ago by the pipeline
        train = pickle.load(fh)
    with open(trained / "data/test.pkl", "rb") as fh:
        test = pickle.load(fh)
    train_scenes = {m["scene"] for m in train["meta"]}
    test_scenes = {m["scene"] for m in test["meta"]}
    assert train_scenes and test_scenes and not train_scenes & test_scenes
    assert len(train["meta"]) + len(test["meta"]) == 40
    meta = json.loads((trained / "final_model/metadata.json").read_text())
    assert meta["data"]["images"] == len(train["meta"]) and meta["meta"]["folds"] == 2
    cnn = json.loads((trained / "model/cnn.json").read_text())
    assert cnn["hyperparameters"]["width"] == 0.5
    assert cnn["params"] < 40_000  # half-width filters: about a quarter of the full model's weights
    # The default keeps no scene from the CNN: it trains on every photo, and the meta-network's folds cover them all.
    assert cnn["meta_scenes"] == [] and cnn["images"]["cnn_fit"] == len(train["meta"])
    assert meta["data"]["validated_on_cnn_photos"] and meta["data"]["meta_validation_images"] == len(train["meta"])
    # Two copies of each photo with camera effects trained the meta-network too, and were judged apart.
    assert cnn["hyperparameters"]["camera_effects"] is True and meta["meta"]["camera_copies"] == 2
    assert meta["camera_validation_metrics"]["n"] == 2 * meta["validation_metrics"]["n"]


def test_meta_fraction_keeps_whole_scenes_from_the_cnn(trained):
    """With --meta-fraction, the CNN never sees the held scenes, and train.py validates on those photos only."""
    import pickle

    stage("CNN.py", "--train", "data/train.pkl", "--epochs", "1", "--patches-per-image", "4", "--width", "0.5",
          "--meta-fraction", "0.4", "--out", "model_held", cwd=trained)
    stage("train.py", "--train", "data/train.pkl", "--model", "model_held", "--out", "final_held", "--folds", "2",
          "--max-epochs", "3", "--patience", "2", "--members", "1", "--camera-copies", "0", "--stages", "meta",
          cwd=trained)
    with open(trained / "data/train.pkl", "rb") as fh:  # our own file, written by the pipeline
        scenes = [m["scene"] for m in pickle.load(fh)["meta"]]
    cnn = json.loads((trained / "model_held/cnn.json").read_text())
    held = set(cnn["meta_scenes"])
    assert held and held < set(scenes)
    assert cnn["images"]["meta_holdout"] == sum(s in held for s in scenes) > 0
    assert cnn["images"]["cnn_fit"] + cnn["images"]["meta_holdout"] == len(scenes)
    assert cnn["patches"]["val"] > 0 and cnn["val_patch_metrics"]
    meta = json.loads((trained / "final_held/metadata.json").read_text())
    assert not meta["data"]["validated_on_cnn_photos"]
    assert meta["data"]["meta_validation_images"] == cnn["images"]["meta_holdout"]
    assert meta["meta"]["camera_copies"] == 0 and meta["camera_validation_metrics"] is None


def test_evaluation_table_json_and_plots(trained):
    out = stage("test.py", "--test", "data/test.pkl", "--models", ".", "--json", "reports/report.json", "--plots",
                "reports", "--native-pages", "8", cwd=trained)
    for row in ("accuracy", "balanced accuracy", "precision (blurry)", "recall (blurry)", "ROC AUC", "ECE",
                "confusion"):
        assert row in out
    assert "Laplacian threshold" in out and "CNN alone" in out and "Ensemble" in out
    report = json.loads((trained / "reports/report.json").read_text())
    cols = report["sets"]["all"]
    assert set(cols) == {"laplacian", "cnn", "ensemble"}
    assert sum(map(sum, cols["ensemble"]["confusion"])) == cols["ensemble"]["n"]
    for png in ("roc_all.png", "confusion_all.png", "reliability_all.png"):
        assert (trained / "reports" / png).stat().st_size > 1000
    # The kind section: synthetic blur of the held-out sharp photos through the kind head train.py made.
    assert "### blur kind" in out and report["kind"]["sets"]["synthetic"]["kind"]["n"] > 0
    # The native section: held-out pages at auto, native and screen, large photos, and the content figures.
    native = report["native"]
    assert "### native scale and content" in out and native["content"]["photos"] == cols["ensemble"]["n"]
    assert 0 < native["sets"]["held-out pages, auto"]["n"] <= 8 and native["sets"]["large photos, native"]["n"] > 0
    assert (trained / "reports" / "native_blur_map.png").stat().st_size > 1000


def test_certh_evaluation_reports_each_set(trained):
    certh = make_fake_certh(trained / "certh", n_per_set=6)
    stage("load_testdata.py", "--certh", str(certh), "--out", "data/certh.pkl", cwd=trained)
    stage("test.py", "--test", "data/certh.pkl", "--models", ".", "--json", "reports/certh.json", "--plots", "reports/certh",
          "--native-pages", "0", cwd=trained)
    report = json.loads((trained / "reports/certh.json").read_text())
    assert set(report["sets"]) == {"NaturalBlurSet", "DigitalBlurSet"}


def test_scripts_have_help_with_defaults():
    for script in ("load_traindata.py", "load_testdata.py", "CNN.py", "train.py", "test.py"):
        out = subprocess.run([sys.executable, str(REPO_ROOT / script), "--help"], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        assert out.returncode == 0 and "default:" in out.stdout, script


def test_missing_dataset_is_a_one_line_error(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "load_traindata.py"), "--data", str(tmp_path / "nope")],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1


def test_failed_meta_training_leaves_no_empty_output_folder(tmp_path):
    from ensemble import pipeline

    with pytest.raises(Exception, match="nope.pkl"):
        pipeline.train_meta_stage(tmp_path / "nope.pkl", tmp_path / "model", tmp_path / "final_model")
    assert not (tmp_path / "final_model").exists()


@pytest.mark.parametrize("script, option, value", [
    ("load_traindata.py", "--side", "0"),  # used to write a pickle of 1x1 images
    ("load_testdata.py", "--workers", "-1"),
    ("CNN.py", "--batch-size", "0"),  # used to end in a ZeroDivisionError traceback
    ("CNN.py", "--patches-per-image", "0"),  # ... a TensorFlow traceback
    ("CNN.py", "--width", "nan"),
    ("train.py", "--hidden", "32,abc"),  # ... a ValueError traceback
    ("train.py", "--max-epochs", "0"),  # ... a KeyError traceback
    ("train.py", "--camera-copies", "-1"),
    ("test.py", "--threshold", "2"),  # used to be accepted: every photo sharp
])
def test_bad_numbers_are_usage_errors(tmp_path, script, option, value):
    # The inputs named do not exist, so a value that slipped through would fail later with exit status 1.
    inputs = {"load_traindata.py": ["--data", "nope"], "load_testdata.py": ["--data", "nope"],
              "CNN.py": ["--train", "nope.pkl"], "train.py": ["--train", "nope.pkl"], "test.py": ["--test", "nope.pkl"]}
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(REPO_ROOT / script), *inputs[script], option, value],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and option in proc.stderr.strip().splitlines()[-1]


def test_meta_fraction_out_of_range_is_a_one_line_error(trained):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "CNN.py"), "--train", "data/train.pkl",
                           "--meta-fraction", "1", "--out", "model_bad"],
                          cwd=trained, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "error: meta_fraction must be at least 0 and below 1, got 1.0" in proc.stderr.splitlines()
    assert not (trained / "model_bad" / "cnn.keras").exists()
