"""Experiment tracking (--mlflow, docs/tracking.md): CNN.py, train.py and test.py on a tiny generated dataset with a
local file store, read back with MlflowClient; no tracking without the flag; one line when mlflow is missing; a
service training job with tracking on."""
import json
import os
import subprocess
import sys
import time

import pytest

from fixtures import REPO_ROOT, make_csv_dataset, require_modules

pytest.importorskip("tensorflow")

MISSING = "error: --mlflow needs the track extra: pip install 'blur-ensemble[track]'"
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
ENV.pop("BLUR_MLFLOW_PARENT", None)
ENV.pop("MLFLOW_EXPERIMENT_NAME", None)
ENV.pop("MLFLOW_TRACKING_URI", None)
ENV.pop("MLFLOW_ALLOW_FILE_STORE", None)  # the scripts ask for the file store themselves


@pytest.fixture(scope="module", autouse=True)
def mlflow_installed():
    require_modules("mlflow", extra="track")
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # the file store, as ensemble.tracking asks for it


def script(name, *args, cwd, python=None, ok=True):
    cmd = [sys.executable, str(REPO_ROOT / name), *args] if python is None else [sys.executable, "-c", python, *args]
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    if ok:
        assert proc.returncode == 0, f"{name} failed:\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """Stages 1 to 5 on 40 generated photos, stages 3 to 5 tracked in one file store; returns (folder, uri)."""
    tmp = tmp_path_factory.mktemp("tracked")
    uri = (tmp / "store").as_uri()
    data = make_csv_dataset(tmp / "photos", 40, size=(300, 400))
    for name, out in (("load_traindata.py", "data/train.pkl"), ("load_testdata.py", "data/test.pkl")):
        script(name, "--data", str(data), "--out", out, "--test-fraction", "0.25", "--quiet", cwd=tmp)
    script("CNN.py", "--train", "data/train.pkl", "--epochs", "2", "--patches-per-image", "4", "--width", "0.5",
           "--out", "model", "--quiet", "--mlflow", uri, cwd=tmp)
    script("train.py", "--train", "data/train.pkl", "--model", "model", "--out", "final_model", "--folds", "2",
           "--max-epochs", "4", "--patience", "2", "--members", "2", "--camera-copies", "0", "--stages", "meta",
           "--quiet", "--mlflow", uri, cwd=tmp)  # the kind head's run: test_a_kind_only_run_follows_the_record, in-process
    script("test.py", "--test", "data/test.pkl", "--models", ".", "--plots", "reports", "--json",
           "reports/report.json", "--quiet", "--mlflow", uri, cwd=tmp)
    return tmp, uri


def runs_of(uri):
    """{stage tag or 'parent': [runs]} of every run in the store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    out = {}
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id]):
            out.setdefault(run.data.tags.get("blur.stage", "parent"), []).append(run)
    return client, out


def artifacts(client, run_id, path=None):
    """Every artifact file of a run, as paths."""
    found = []
    for item in client.list_artifacts(run_id, path):
        found += artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def test_the_three_stages_nest_under_one_parent(tracked):
    _, uri = tracked
    client, runs = runs_of(uri)
    assert set(runs) == {"parent", "cnn", "meta", "evaluate"}, runs.keys()
    assert all(len(v) == 1 for v in runs.values()), {k: len(v) for k, v in runs.items()}
    parent = runs["parent"][0]
    assert parent.data.tags["blur.kind"] == "pipeline" and parent.info.run_name.startswith("pipeline ")
    assert parent.info.status == "FINISHED"
    for stage in ("cnn", "meta", "evaluate"):
        child = runs[stage][0]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.info.status == "FINISHED"
    # The link the later stages followed: a record beside each model written.
    folder = tracked[0]
    for sub in ("model", "final_model"):
        record = json.loads((folder / sub / "mlflow_run.json").read_text())
        assert record["parent_run_id"] == parent.info.run_id and record["tracking_uri"] == uri


def test_params_per_epoch_metrics_and_tags(tracked):
    folder, uri = tracked
    client, runs = runs_of(uri)
    cnn, meta, evaluate = runs["cnn"][0], runs["meta"][0], runs["evaluate"][0]
    assert cnn.data.params["epochs"] == "2" and cnn.data.params["patches_per_image"] == "4"
    assert cnn.data.params["width"] == "0.5" and "mlflow" not in cnn.data.params
    assert cnn.data.params["resolved.epochs"] == "2"  # cnn.json's hyper-parameters, as the flags resolved
    assert meta.data.params["members"] == "2" and meta.data.params["folds"] == "2"
    assert evaluate.data.params["test"] == "data/test.pkl"
    loss = client.get_metric_history(cnn.info.run_id, "loss")
    assert [m.step for m in loss] == [1, 2]  # one point per epoch
    assert len(client.get_metric_history(meta.info.run_id, "member_epochs")) == 2  # one per bag member
    assert len(client.get_metric_history(meta.info.run_id, "fold_best_epoch_member_0")) == 2  # one per fold
    assert 0 <= meta.data.metrics["val_accuracy"] <= 1 and "val_roc_auc" in meta.data.metrics
    assert 0 <= evaluate.data.metrics["test_ensemble_accuracy"] <= 1
    assert "test_laplacian_roc_auc" in evaluate.data.metrics
    fingerprint = json.loads((folder / "model/cnn.json").read_text())["train_fingerprint"]
    for run in (cnn, meta, runs["parent"][0]):
        assert run.data.tags["data.fingerprint"] == fingerprint
    metadata = json.loads((folder / "final_model/metadata.json").read_text())
    assert meta.data.tags["data.images"] == str(metadata["data"]["images"])
    assert cnn.data.tags["data.cnn_fit_images"] == str(metadata["data"]["cnn_fit_images"])
    assert evaluate.data.tags["model.fingerprint"] == fingerprint and evaluate.data.tags["test.recorded"] == "True"
    assert evaluate.data.tags["data.fingerprint"] == metadata["test_metrics"]["fingerprint"]
    # The headline figures are on the parent too, to compare pipeline runs in one table.
    parent = runs["parent"][0].data.metrics
    assert parent["test_ensemble_accuracy"] == evaluate.data.metrics["test_ensemble_accuracy"]
    assert parent["val_accuracy"] == meta.data.metrics["val_accuracy"]


def test_plots_records_and_model_folders_are_artifacts(tracked):
    _, uri = tracked
    client, runs = runs_of(uri)
    cnn = set(artifacts(client, runs["cnn"][0].info.run_id))
    assert {"training_curves.png", "cnn.json", "model/cnn.onnx", "model/cnn.keras", "model/cnn.json"} <= cnn
    assert "model/mlflow_run.json" not in cnn
    meta = set(artifacts(client, runs["meta"][0].info.run_id))
    assert {"metadata.json", "final_model/meta.onnx", "final_model/meta.keras"} <= meta
    evaluate = set(artifacts(client, runs["evaluate"][0].info.run_id))
    assert {"plots/roc_all.png", "plots/confusion_all.png", "plots/reliability_all.png", "metadata.json",
            "report.json"} <= evaluate


def test_without_the_flag_nothing_is_tracked_and_mlflow_is_not_imported(tracked, tmp_path):
    folder, uri = tracked
    before = {k: len(v) for k, v in runs_of(uri)[1].items()}
    check = ("import runpy, sys; main = runpy.run_path(sys.argv[1])['main']; code = main(sys.argv[2:]); "
             "assert 'mlflow' not in sys.modules, 'mlflow was imported'; sys.exit(code)")
    script("test.py", str(REPO_ROOT / "test.py"), "--test", str(folder / "data/test.pkl"), "--models", str(folder),
           "--plots", "plots", "--quiet", python=check, cwd=tmp_path)
    assert (tmp_path / "plots" / "roc_all.png").exists() and not (tmp_path / "mlruns").exists()
    assert {k: len(v) for k, v in runs_of(uri)[1].items()} == before


def test_a_bare_flag_tracks_into_mlruns_here(tracked, tmp_path):
    """--mlflow alone: ./mlruns in the current folder. The model's record names another store, so this run gets a
    parent of its own there, and says so."""
    folder, _ = tracked
    proc = script("test.py", "--test", str(folder / "data/test.pkl"), "--models", str(folder), "--plots", "plots",
                  "--quiet", "--mlflow", cwd=tmp_path)
    assert "names another tracking store" in proc.stderr
    client, runs = runs_of((tmp_path / "mlruns").as_uri())
    assert set(runs) == {"parent", "evaluate"}
    assert runs["evaluate"][0].data.tags["mlflow.parentRunId"] == runs["parent"][0].info.run_id


SCRIPTS = {"CNN.py": ["--train", "nope.pkl"], "train.py": ["--train", "nope.pkl"], "test.py": ["--test", "nope.pkl"]}


@pytest.mark.parametrize("name", [*SCRIPTS, "serve"])
def test_missing_mlflow_is_one_line_and_exit_2(tmp_path, name):
    block = "import sys; sys.modules['mlflow'] = None; "  # import mlflow now raises ImportError
    if name == "serve":
        pytest.importorskip("fastapi")
        python = block + "from ensemble.cli import main; sys.exit(main(sys.argv[1:]))"
        args = ["serve", "--port", "0", "--models-dir", str(tmp_path / "models"), "--mlflow"]
    else:
        python = block + "import runpy; sys.exit(runpy.run_path(sys.argv[1])['main'](sys.argv[2:]))"
        args = [str(REPO_ROOT / name), *SCRIPTS[name], "--mlflow"]
    proc = script(name, *args, python=python, cwd=tmp_path, ok=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == MISSING and not (tmp_path / "mlruns").exists()


def test_a_tracking_server_that_is_down_is_one_line_not_a_hang(tmp_path, mlflow_installed):
    """Port 9 (discard) has no MLflow server: the stage stops with one line before any work, not after MLflow's
    own minutes of retries (the subprocess timeout catches a hang)."""
    env = {k: v for k, v in ENV.items() if not k.startswith("MLFLOW_HTTP_")}
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "test.py"), "--test", "nope.pkl", "--mlflow",
                           "http://127.0.0.1:9"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: mlflow:"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_uris_and_stale_records(tmp_path):
    from ensemble import tracking

    assert tracking.resolve_uri("./mlruns", tmp_path) == (tmp_path / "mlruns").as_uri()
    assert tracking.resolve_uri("runs/store", tmp_path) == (tmp_path / "runs/store").as_uri()
    for uri in ("file:///tmp/x", "http://127.0.0.1:5000", "sqlite:///mlflow.db", "databricks"):
        assert tracking.resolve_uri(uri, tmp_path) == uri
    uri = (tmp_path / "store").as_uri()
    t = tracking.Tracker(uri, quiet=True)
    parent = t.client.create_run(t._experiment(), run_name="p").info.run_id
    model = tmp_path / "model"
    model.mkdir()
    (model / "cnn.json").write_text(json.dumps({"created": "2026-01-01T00:00:00"}))
    record = {"tracking_uri": uri, "parent_run_id": parent, "record": "cnn.json", "created": "2026-01-01T00:00:00"}
    (model / "mlflow_run.json").write_text(json.dumps(record))
    assert t._from_record(model) == parent
    (model / "cnn.json").write_text(json.dumps({"created": "2026-01-02T00:00:00"}))  # retrained, untracked
    assert t._from_record(model) is None
    os.environ[tracking.PARENT_ENV] = "0" * 32
    try:
        with pytest.raises(tracking.TrackingError, match="BLUR_MLFLOW_PARENT"):
            t._find_parent([model], model)
        os.environ[tracking.PARENT_ENV] = parent
        assert t._find_parent([], model) == parent
    finally:
        del os.environ[tracking.PARENT_ENV]


TINY = {"epochs": 2, "patch_size": 64, "patches_per_image": 4, "meta_folds": 2, "meta_max_epochs": 4,
        "meta_patience": 2, "test_fraction": 0.25, "meta_members": 1}


def test_a_service_training_job_is_tracked(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from ensemble.server.app import ServerSettings, create_app

    make_csv_dataset(tmp_path / "data" / "photos", 24, size=(240, 320))
    uri = (tmp_path / "store").as_uri()
    settings = ServerSettings(models_dir=tmp_path / "models", data_roots=(tmp_path / "data",), mlflow_uri=uri)
    with TestClient(create_app(settings)) as client:
        r = client.post("/api/models/train", json={"data": "photos", "name": "tracked", **TINY})
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 300
        while (job := client.get(f"/api/jobs/{r.json()['id']}").json())["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.5)
    assert job["status"] == "succeeded", job
    mlflow_client, runs = runs_of(uri)
    assert set(runs) == {"parent", "cnn", "meta", "evaluate"}
    parent = runs["parent"][0]
    assert parent.info.run_name == "tracked" and parent.data.tags["blur.job"] == job["id"]
    assert parent.data.tags["blur.folder"] == str(tmp_path / "models" / "tracked")
    assert all(runs[s][0].data.tags["mlflow.parentRunId"] == parent.info.run_id for s in ("cnn", "meta", "evaluate"))
    assert len(mlflow_client.get_metric_history(runs["cnn"][0].info.run_id, "loss")) == 2
    assert runs["cnn"][0].data.params["patch_size"] == "64"
    assert "model/cnn.onnx" in artifacts(mlflow_client, runs["cnn"][0].info.run_id)
    assert "plots/roc_all.png" in artifacts(mlflow_client, runs["evaluate"][0].info.run_id)


def train_kind_stage(train_pkl, out_dir, copies=4, seed=0, progress=True):
    """A stand-in of pipeline.train_kind_stage (what Tracker.run tracks goes by the function's name): it writes
    what the real one writes, at once."""
    from pathlib import Path

    out = Path(out_dir)
    (out / "kind.onnx").write_bytes(b"onnx")
    (out / "kind.json").write_text(json.dumps({"data": {"fingerprint": "f" * 16, "sharp_photos": 7},
                                               "training": {"epochs": 3},
                                               "validation_metrics": {"all": {"kind": {"n": 9, "accuracy": 0.75}}}}))
    return {"stage": "kind head", "out": str(out / "kind.onnx"), "seconds": 0.1}


def test_a_kind_only_run_follows_the_record(tmp_path):
    """train.py --kind-only: the kind head's run nests under the parent final_model/mlflow_run.json names, and
    logs kind.json's figures and files; the untracked function is called just the same."""
    from ensemble import tracking

    uri = (tmp_path / "store").as_uri()
    t = tracking.Tracker(uri, params={"kind_copies": 2}, quiet=True)
    parent = t.client.create_run(t._experiment(), run_name="pipeline x").info.run_id
    final = tmp_path / "final_model"
    final.mkdir()
    (final / "metadata.json").write_text(json.dumps({"created": "2026-01-01T00:00:00"}))
    (final / "mlflow_run.json").write_text(json.dumps({"tracking_uri": uri, "parent_run_id": parent,
                                                       "record": "metadata.json", "created": "2026-01-01T00:00:00"}))
    result = tracking.Tracker(uri, params={"kind_copies": 2}, quiet=True).run(train_kind_stage, "t.pkl", final,
                                                                               copies=2)
    assert result["stage"] == "kind head"
    client, runs = runs_of(uri)
    kind = runs["kind"][0]
    assert kind.data.tags["mlflow.parentRunId"] == parent and kind.data.params["kind_copies"] == "2"
    assert kind.data.metrics["val.all.kind.accuracy"] == 0.75 and kind.data.tags["data.fingerprint"] == "f" * 16
    assert {"kind.json", "final_model/kind.onnx", "final_model/kind.json"} <= set(artifacts(client, kind.info.run_id))
    assert json.loads((final / "mlflow_run.json").read_text())["run_id"] == kind.info.run_id
