"""Scoring on a GPU: --device, /healthz, the CUDA provider check, and the cross-image CNN batcher.

This machine has no GPU: the CUDA path is checked with a fake CUDA provider (ONNX Runtime is made to list one, and
its sessions to say they run on it, while they really run on the CPU), and the batcher is checked against scoring
one image at a time, on the CPU.
"""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fixtures import REPO_ROOT, blur, make_photo, needs_model, save_jpeg

from ensemble import runtime
from ensemble.batching import PatchBatcher

pytestmark = needs_model


def run_cli(*args, timeout=120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", "ensemble", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Photos of different sizes (1 to 24 patches scored), sharp and blurred, a uniform one and a broken file."""
    folder = tmp_path_factory.mktemp("mixed")
    sizes = [(480, 640), (120, 160), (300, 200), (1200, 1600), (96, 96), (700, 500), (64, 80), (900, 1200)]
    for i, size in enumerate(sizes):
        img = make_photo(i, size)
        if i % 2:
            img = blur(img, ("gaussian", "defocus", "motion")[i % 3], 5.0)
        save_jpeg(folder / f"p{i}.jpg", img)
    save_jpeg(folder / "grey.jpg", np.full((200, 300, 3), 128, np.uint8))  # flat
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    return folder


def records(scans) -> dict[str, dict]:
    out = {}
    for s in scans:
        out[Path(s.path).name] = {"error": s.error} if s.error else s.result.record(s.path)
    return out


def assert_same_records(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        ra, rb = a[name], b[name]
        assert ra.keys() == rb.keys(), name
        for key in ra:
            if isinstance(ra[key], float) and isinstance(rb[key], float):
                assert ra[key] == pytest.approx(rb[key], abs=1e-5), (name, key)
            else:
                assert ra[key] == rb[key], (name, key)


# --------------------------------------------------------------------------------------------------------------
# A fake CUDA provider


@pytest.fixture
def fake_cuda(monkeypatch):
    """ONNX Runtime lists CUDAExecutionProvider, and a session asked for it says it runs on it (it runs on the
    CPU). Returns the provider lists the sessions were asked for."""
    import onnxruntime as ort

    real = ort.InferenceSession
    asked = []

    class FakeCudaSession:
        def __init__(self, path, opts=None, providers=None):
            asked.append(providers)
            self._session = real(path, opts, providers=["CPUExecutionProvider"])
            wants_cuda = any((p[0] if isinstance(p, tuple) else p) == runtime.CUDA_PROVIDER for p in providers)
            self._providers = [runtime.CUDA_PROVIDER, "CPUExecutionProvider"] if wants_cuda else ["CPUExecutionProvider"]

        def get_providers(self):
            return self._providers

        def __getattr__(self, name):
            return getattr(self._session, name)

    monkeypatch.setattr(ort, "get_available_providers", lambda: [runtime.CUDA_PROVIDER, "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", FakeCudaSession)
    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: None, raising=False)
    monkeypatch.setattr(runtime, "gpu_name", lambda device_id=0: "Fake GPU")
    return asked


def test_auto_picks_cuda_when_it_loads_and_turns_the_batcher_on(fake_cuda):
    from ensemble import BlurDetector

    det = BlurDetector.load(threads=1, device="auto")
    assert det.device == "cuda" and det.batching and det.device_line() == "device: cuda (Fake GPU)"
    assert det.device_detail == "Fake GPU"
    cuda_sessions = [p for p in fake_cuda if isinstance(p[0], tuple)]
    assert len(cuda_sessions) == 1  # the CNN only: the meta-network and the kind head stay on the CPU
    name, options = cuda_sessions[0][0]
    assert name == "CUDAExecutionProvider" and options["device_id"] == 0
    assert options["cudnn_conv_algo_search"] in ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
    assert cuda_sessions[0][1] == "CPUExecutionProvider"
    assert BlurDetector.load(threads=1, device="cuda").device == "cuda"
    cpu = BlurDetector.load(threads=1, device="cpu")
    assert cpu.device == "cpu" and not cpu.batching and cpu.device_line() == "device: cpu"


def test_a_cuda_provider_that_falls_back_silently_is_caught(monkeypatch, fake_cuda):
    """Listed, but the session ends up on the CPU (no driver, CUDA libraries missing): auto says so, cuda fails."""
    import onnxruntime as ort

    from ensemble import BlurDetector

    fake = ort.InferenceSession

    class FallsBack(fake):
        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(ort, "InferenceSession", FallsBack)
    det = BlurDetector.load(threads=1, device="auto")
    assert det.device == "cpu" and not det.batching
    assert det.device_line().startswith("device: cpu (the CUDA execution provider did not load")
    with pytest.raises(runtime.DeviceError) as err:
        BlurDetector.load(threads=1, device="cuda")
    assert "did not load" in err.value.reason and "\n" not in str(err.value)


def test_scan_on_fake_cuda_says_so_and_gives_the_cpu_records(fake_cuda, mixed, capsys):
    from ensemble import cli

    assert cli.main(["scan", str(mixed), "--format", "json", "--device", "cpu", "-q"]) == 1  # the broken file
    on_cpu = {Path(r["path"]).name: r for r in json.loads(capsys.readouterr().out)}
    assert cli.main(["scan", str(mixed), "--format", "json", "--workers", "4"]) == 1
    out, err = capsys.readouterr()
    on_gpu = {Path(r["path"]).name: r for r in json.loads(out)}
    assert err.splitlines()[0] == "device: cuda (Fake GPU)"  # said unasked: it is news
    assert_same_records(on_cpu, on_gpu)
    assert on_gpu["broken.jpg"]["label"] == "error"


# --------------------------------------------------------------------------------------------------------------
# The command line on this machine (no CUDA provider)


def test_device_cpu_scans(mixed):
    proc = run_cli("scan", mixed / "p0.jpg", mixed / "p1.jpg", "--format", "jsonl", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["device: cpu"]
    labels = {Path(r["path"]).name: r["label"] for r in map(json.loads, proc.stdout.splitlines())}
    assert labels == {"p0.jpg": "sharp", "p1.jpg": "blurry"}


def test_device_auto_says_cpu_here(mixed):
    proc = run_cli("scan", mixed / "p0.jpg", "--format", "jsonl", "--device", "auto")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["device: cpu (no CUDA execution provider)"]
    assert json.loads(proc.stdout)["label"] == "sharp"


def test_default_device_is_auto_and_quiet_in_a_script_with_the_cpu_build(mixed):
    """Not asked, on a plain CPU install, and stderr is no terminal: stderr stays as it was (errors only)."""
    proc = run_cli("scan", mixed / "p0.jpg", "--format", "jsonl")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_device_cuda_without_one_is_one_line_and_status_2(mixed, tmp_path):
    for command in (["scan", mixed / "p0.jpg"], ["scan", tmp_path, "--format", "json"],
                    ["serve", "--port", "0", "--models-dir", tmp_path / "models"]):
        proc = run_cli(*command, "--device", "cuda")
        assert proc.returncode == 2, (command, proc.stderr)
        assert proc.stdout == "" and "Traceback" not in proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --device cuda: no CUDA execution provider"), lines
        assert "docs/gpu.md" in lines[0]


def test_device_does_not_go_with_ray_or_a_plan(mixed, tmp_path):
    proc = run_cli("scan", mixed, "--engine", "ray", "--output", tmp_path / "o.parquet", "--device", "cpu")
    assert proc.returncode == 2 and "--device does not go with --engine ray" in proc.stderr


def test_healthz_reports_the_device(tmp_path, fake_cuda):
    from fastapi.testclient import TestClient

    from ensemble.server.app import ServerSettings, create_app

    for device, shown, detail in (("cpu", "cpu", None), ("auto", "cuda", "Fake GPU")):
        app = create_app(ServerSettings(models_dir=tmp_path / device, data_roots=(), device=device))
        with TestClient(app) as client:
            body = client.get("/healthz").json()
        assert body["status"] == "ok" and body["device"] == shown and body["device_detail"] == detail, body
        assert app.state.registry.current()[1].batching == (shown == "cuda")


def test_healthz_says_why_auto_is_on_the_cpu_here(tmp_path):
    from fastapi.testclient import TestClient

    from ensemble.server.app import ServerSettings, create_app

    with TestClient(create_app(ServerSettings(models_dir=tmp_path, data_roots=(), device="auto"))) as client:
        body = client.get("/healthz").json()
    assert body["device"] == "cpu" and body["device_detail"] == "no CUDA execution provider"


# --------------------------------------------------------------------------------------------------------------
# The cross-image batcher


def test_batched_scan_gives_the_same_records_as_one_image_at_a_time(mixed):
    from ensemble import BlurDetector
    from ensemble.scan import scan_paths

    paths = sorted(str(p) for p in mixed.iterdir())
    plain = BlurDetector.load(threads=1)
    joined = BlurDetector.load(threads=1, batch=True)
    assert not plain.batching and joined.batching
    cnn = joined.cnn.model
    joined.cnn.model = lambda x: (time.sleep(0.05), cnn(x))[1]  # a slow CNN: the workers' calls queue up and join
    alone = records(scan_paths(paths, plain, workers=1))
    together = records(scan_paths(paths * 3, joined, workers=6, with_map=True))  # each photo 3 times at once
    assert_same_records(alone, together)
    assert set(alone["broken.jpg"]) == {"error"} and alone["broken.jpg"]["error"]  # its own error record
    assert alone["grey.jpg"]["label"] == "flat"
    assert {alone[f"p{i}.jpg"]["label"] for i in range(8)} == {"sharp", "blurry"}
    batcher = joined.cnn
    images = 3 * (len(paths) - 1)  # the broken file never reaches the CNN
    assert batcher.calls < images and batcher.largest > 24, (batcher.calls, batcher.largest)  # joined calls
    # Photos with different patch counts went through it (1 to the 24 most detailed patches).
    counts = {joined.prepare(p).patch_count for p in paths if not p.endswith("broken.jpg")}
    assert min(counts) == 1 and max(counts) == 24 and len(counts) >= 3


def test_prepare_score_finish_is_predict_batch(mixed):
    from ensemble import BlurDetector

    det = BlurDetector.load(threads=1)
    paths = [mixed / f"p{i}.jpg" for i in range(8)]
    prepared = [det.prepare(p) for p in paths]
    # The CNN scores of each image from one joined call, split back: the same as one call per image.
    joined = det.finish(prepared, det.score(prepared))
    single = [det.finish([p], [det.cnn(p.inputs())])[0] for p in prepared]
    for a, b, c in zip(joined, single, det.predict_batch(paths)):
        assert a.blur_probability == pytest.approx(b.blur_probability, abs=1e-6)
        assert a.record() == c.record()
        np.testing.assert_allclose(a.blur_map, b.blur_map, atol=1e-6)


def test_the_batcher_joins_calls_that_wait_and_splits_the_rows_back():
    release = threading.Event()
    seen = []

    def model(x):
        seen.append(len(x))
        if len(seen) == 1:
            release.wait(10)  # the first call holds the model while the others queue up
        return x * 2.0

    batcher = PatchBatcher(model, max_patches=10)
    inputs = [np.full((n, 1), float(i)) for i, n in enumerate((1, 3, 4, 2, 5))]
    outputs = [None] * len(inputs)

    def call(i):
        outputs[i] = batcher(inputs[i])

    first = threading.Thread(target=call, args=(0,))
    first.start()
    while not seen:
        time.sleep(0.001)
    others = [threading.Thread(target=call, args=(i,)) for i in range(1, len(inputs))]
    for queued, t in enumerate(others, 1):
        t.start()
        while len(batcher._queue) < queued:  # queued in this order, while the first call runs
            time.sleep(0.001)
    release.set()
    for t in [first, *others]:
        t.join(10)
    assert seen == [1, 9, 5]  # 3 + 4 + 2 joined (the 5 would pass the budget of 10), then the 5
    for x, y in zip(inputs, outputs):
        np.testing.assert_array_equal(y, x * 2.0)
    assert (batcher.calls, batcher.rows, batcher.largest) == (3, 15, 9)


def test_a_failed_joined_call_fails_its_callers_only():
    calls = []

    def model(x):
        calls.append(len(x))
        if len(calls) == 1:
            raise RuntimeError("out of GPU memory")
        return x

    batcher = PatchBatcher(model)
    with pytest.raises(RuntimeError, match="out of GPU memory"):
        batcher(np.zeros((3, 1)))
    np.testing.assert_array_equal(batcher(np.ones((2, 1))), np.ones((2, 1)))


def test_batcher_settings_are_checked():
    with pytest.raises(ValueError):
        PatchBatcher(lambda x: x, max_patches=0)
    with pytest.raises(ValueError):
        runtime.check_device("gpu")


def test_serve_says_the_device_before_it_listens_and_passes_it_to_its_workers(tmp_path):
    from ensemble.server.app import ServerSettings

    assert ServerSettings.from_env(ServerSettings(device="cuda").to_env()).device == "cuda"  # --workers N
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "ensemble", "serve", "--port", "0", "--models-dir",
                             str(tmp_path), "--device", "auto"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        lines = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any("listening on" in line for line in lines):
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line.rstrip("\n"))
        assert lines[:2] == ["device: cpu (no CUDA execution provider)", lines[1]], lines
        assert lines[1].startswith("blur-detect serve: listening on http://127.0.0.1:"), lines
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_the_onnx_runtime_builds_are_found_beside_the_module_as_importlib_metadata_finds_them():
    # _installed globs one folder instead of importlib.metadata's search of every path entry (start-up time)
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("onnxruntime", "onnxruntime-gpu", "onnx-no-such-build"):
        try:
            version(dist)
            expected = True
        except PackageNotFoundError:
            expected = False
        assert runtime._installed(dist) is expected, dist
