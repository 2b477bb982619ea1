"""Training jobs through the API, on a tiny generated dataset and a one-epoch configuration: start, progress,
success, cancel, failure, a crashed run; then activating the trained model, which changes the predictions."""
import io
import json
import os
import signal
import threading
import time

import numpy as np
import pytest
from PIL import Image

from fixtures import blur, make_csv_dataset, make_photo

pytest.importorskip("fastapi")
pytest.importorskip("tensorflow")
from fastapi.testclient import TestClient  # noqa: E402

from ensemble.server.app import ServerSettings, create_app  # noqa: E402

FINISHED = ("succeeded", "failed", "cancelled")
TINY = {"epochs": 1, "patch_size": 64, "patches_per_image": 4, "meta_folds": 2, "meta_max_epochs": 5,
        "meta_patience": 2, "test_fraction": 0.25, "meta_members": 2}
"""A configuration that trains in seconds (and a patch size other than the default, to exercise that path)."""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """An allowed data root with a good dataset and one whose images are all unreadable, and a models folder."""
    tmp = tmp_path_factory.mktemp("jobs")
    root = tmp / "data"
    make_csv_dataset(root / "photos", 40, size=(300, 400))
    broken = make_csv_dataset(root / "broken", 8, size=(64, 80))
    for image in (broken / "images").iterdir():
        image.write_bytes(b"\xff\xd8\xff not really a JPEG")
    return {"root": root, "models": tmp / "models"}


@pytest.fixture(scope="module")
def client(env):
    app = create_app(ServerSettings(models_dir=env["models"], data_roots=(env["root"],)))
    with TestClient(app) as c:
        yield c


def start(client, **body) -> dict:
    r = client.post("/api/models/train", json={"data": "photos", **TINY, **body})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/api/jobs/{job['id']}" and job["status"] in ("queued", "running")
    return job


def wait(client, job_id, until, timeout=300.0, history=None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if history is not None:
            history.append(job)
        if until(job):
            return job
        assert time.monotonic() < deadline, f"job stuck: {job}"
        time.sleep(0.25)


def assert_no_leftovers(env, job_id, name):
    assert not (env["models"] / name).exists(), "a model was left behind"
    assert not (env["models"] / ".jobs" / job_id / "work").exists(), "the work folder was left behind"


@pytest.fixture(scope="module")
def trained(client, env):
    """One successful run, followed from start to end; returns (final job, every state seen)."""
    history = []
    job = start(client, name="tiny", seed=3, meta_fraction=0.3)
    final = wait(client, job["id"], lambda j: j["status"] in FINISHED, history=history)
    assert final["status"] == "succeeded", final
    return final, history


def test_failed_run_reports_one_line_and_leaves_no_model(client, env):
    job = start(client, data="broken", name="never")
    final = wait(client, job["id"], lambda j: j["status"] in FINISHED)
    assert final["status"] == "failed" and final["stage"] == "failed"
    assert "no readable images" in final["error"] and "\n" not in final["error"]
    assert any("error: no readable images" in line for line in final["log_tail"])
    assert final["progress"] < 100 and final["metrics"] is None
    assert_no_leftovers(env, job["id"], "never")


def test_one_run_at_a_time_and_cancel_stops_it(client, env):
    job = start(client, name="cancelled-one")
    r = client.post("/api/models/train", json={"data": "photos", **TINY, "name": "second"})
    assert r.status_code == 409 and "already running" in r.json()["detail"]
    wait(client, job["id"], lambda j: j["stage"] == "training CNN" or j["status"] in FINISHED, timeout=120)
    r = client.delete(f"/api/jobs/{job['id']}")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled" and r.json()["error"] == "cancelled by request"
    assert_no_leftovers(env, job["id"], "cancelled-one")
    r = client.delete(f"/api/jobs/{job['id']}")
    assert r.status_code == 409 and "already cancelled" in r.json()["detail"]
    assert client.delete("/api/jobs/0123456789ab").status_code == 404


def test_a_run_that_dies_is_marked_failed_not_left_running(client, env):
    job = start(client, name="killed")
    pid = json.loads((env["models"] / ".jobs" / job["id"] / "job.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    final = wait(client, job["id"], lambda j: j["status"] in FINISHED, timeout=60)
    assert final["status"] == "failed" and "stopped unexpectedly" in final["error"]
    assert_no_leftovers(env, job["id"], "killed")


def test_successful_run_reports_progress_log_and_metrics(trained, env):
    final, history = trained
    progress = [j["progress"] for j in history]
    assert progress == sorted(progress) and progress[-1] == 100.0
    stages = list(dict.fromkeys(j["stage"] for j in history))
    seen = [s for s in ("loading data", "training CNN", "training meta-network", "evaluating", "done") if s in stages]
    assert seen == [s for s in stages if s in seen] and "done" in seen and len(seen) >= 3, stages
    assert any("CNN epoch 1/1" in line for line in final["log_tail"])
    for part in ("validation", "test"):
        assert 0.0 <= final["metrics"][part]["accuracy"] <= 1.0 and final["metrics"][part]["n"] > 0
    folder = env["models"] / "tiny"
    for f in ("model/cnn.onnx", "model/training_curves.png", "final_model/meta.onnx", "final_model/metadata.json",
              "reports/roc_all.png"):
        assert (folder / f).is_file(), f
    assert not (env["models"] / ".jobs" / final["id"] / "work").exists()


def test_finished_run_is_listed_with_its_parameters(client, trained):
    final, _ = trained
    models = {m["name"]: m for m in client.get("/api/models").json()["models"]}
    tiny = models["tiny"]
    assert not tiny["active"] and not tiny["shipped"] and tiny["job"] == final["id"] and tiny["error"] is None
    assert tiny["hyperparameters"]["epochs"] == 1 and tiny["hyperparameters"]["patch_size"] == 64
    assert tiny["hyperparameters"]["seed"] == 3 and tiny["hyperparameters"]["meta_folds"] == 2
    assert tiny["hyperparameters"]["meta_members"] == 2 and tiny["hyperparameters"]["meta_fraction"] == 0.3
    assert tiny["data"]["cnn_fit_images"] < tiny["data"]["images"]  # the honest scheme: the CNN never saw them
    assert tiny["data"]["images"] + tiny["data"]["test_images"] == 40 and tiny["data"]["layout"] == "csv"
    assert tiny["metrics"] == final["metrics"]
    assert client.get("/api/jobs").json()[0]["id"] == final["id"]
    r = client.post("/api/models/train", json={"data": "photos", **TINY, "name": "tiny"})
    assert r.status_code == 409 and "already exists" in r.json()["detail"]


def predict(client, images) -> tuple[str, list[float]]:
    files = [("files", (f"{i}.png", png, "image/png")) for i, png in enumerate(images)]
    r = client.post("/api/predict", files=files)
    assert r.status_code == 200, r.text
    return r.headers["x-blur-model"], [rec["blur_probability"] for rec in r.json()]


@pytest.fixture(scope="module")
def images():
    out = []
    for seed in (11, 12):
        photo = make_photo(seed, (300, 400))
        for img in (photo, blur(photo, "defocus", 2.0)):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, "PNG")
            out.append(buf.getvalue())
    return out


def test_activating_a_trained_model_changes_the_predictions(client, trained, images):
    model, shipped = predict(client, images)
    assert model == "shipped"
    r = client.post("/api/models/tiny/activate")
    assert r.status_code == 200 and r.json()["active"] and r.json()["name"] == "tiny"
    model, mine = predict(client, images)
    assert model == "tiny"
    assert not np.allclose(shipped, mine, atol=1e-3), (shipped, mine)
    assert client.get("/api/models").json()["active"] == "tiny"
    assert client.get("/healthz").json()["model"] == "tiny"
    client.post("/api/models/shipped/activate")
    assert predict(client, images) == ("shipped", shipped)


def test_the_active_model_is_shared_by_every_server_process(client, env, trained, images):
    """A second app on the same models folder (as a second --workers process) follows activations on disk."""
    other = create_app(ServerSettings(models_dir=env["models"], data_roots=()))
    with TestClient(other) as second:
        assert predict(second, images)[0] == "shipped"
        client.post("/api/models/tiny/activate")
        assert predict(second, images)[0] == "tiny"
        second.post("/api/models/shipped/activate")
        assert predict(client, images)[0] == "shipped"


def test_switching_models_never_fails_a_request_in_flight(client, trained, images):
    results, stop = [], threading.Event()

    def hammer():
        while not stop.is_set():
            r = client.post("/api/predict", files=[("files", ("a.png", images[0], "image/png"))])
            results.append((r.status_code, r.headers.get("x-blur-model"), r.json()[0]["label"]))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for name in ("tiny", "shipped") * 3:
            assert client.post(f"/api/models/{name}/activate").status_code == 200
            # Switch again only once a request has been served by this model (others are still in flight).
            deadline = time.monotonic() + 60
            while not any(model == name for _, model, _ in results[-3:]):
                assert time.monotonic() < deadline, "no request was served after the switch"
                time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert all(status == 200 and model in ("tiny", "shipped") and label in ("sharp", "blurry")
               for status, model, label in results), results
