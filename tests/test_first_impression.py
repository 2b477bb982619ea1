"""What a newcomer meets first: help texts, stage scripts run from anywhere, the shipped model's safety note, the
package's public names, the local camera example and the checkout staying clean."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading

import pytest

from fixtures import REPO_ROOT, needs_model

STAGES = ["load_traindata.py", "load_testdata.py", "CNN.py", "train.py", "test.py"]


def run(args, cwd=None, timeout=120, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL, **kw)


@pytest.mark.parametrize("command", [[str(REPO_ROOT / s)] for s in STAGES]
                         + [["-m", "ensemble", c] for c in ("scan", "undo", "serve", "cameras")])
def test_help_names_each_default_once(command):
    proc = run([*command, "--help"])
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    assert "(default: None)" not in text and "(default: False)" not in text
    doubled = re.findall(r"\(default: [^()]*(?:\([^()]*\)[^()]*)*\) \(default: ", text)
    assert not doubled, doubled


def test_stage_scripts_find_their_files_from_any_folder(tmp_path):
    if (REPO_ROOT / "data" / "test.pkl").exists():  # a developer's checkout: test.py would score it, and record it
        pytest.skip("data/test.pkl exists here, so test.py's default input is found (a fresh clone has none)")
    proc = run([REPO_ROOT / "test.py", "--quiet"], cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert str(REPO_ROOT / "data" / "test.pkl") in line and "load_testdata.py" in line, line


def test_training_into_the_shipped_folders_says_so_first(tmp_path):
    # A training pickle that does not exist ends the run at once, after the note.
    for script, folder in (("CNN.py", "model"), ("train.py", "final_model")):
        proc = run([REPO_ROOT / script, "--train", tmp_path / "none.pkl", "--quiet"], cwd=tmp_path)
        assert proc.returncode == 1
        first = proc.stderr.splitlines()[0]
        assert f"replaces the shipped model in {folder}/" in first and "git checkout -- model final_model" in first
        elsewhere = run([REPO_ROOT / script, "--train", tmp_path / "none.pkl", "--out", tmp_path / "m", "--quiet"])
        assert "replaces the shipped model" not in elsewhere.stderr


def test_the_package_lists_its_public_names_without_loading_tensorflow():
    code = ("import ensemble, sys; names = [n for n in dir(ensemble) if not n.startswith('_')]; "
            "[getattr(ensemble, n) for n in ensemble.__all__]; print(names, 'tensorflow' in sys.modules)")
    proc = run(["-c", code])
    assert proc.returncode == 0, proc.stderr
    assert "'BlurDetector'" in proc.stdout and "'undo'" in proc.stdout and proc.stdout.strip().endswith("False")


@needs_model
def test_the_local_camera_example_works_as_documented(tmp_path):
    from ensemble.cameras.demo import make_server

    server = make_server(0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        config = tmp_path / "demo-cameras.csv"
        config.write_text(f"name,url\nsharp,{base}/sharp.jpg\nsoft,{base}/blurry.jpg\ncovered,{base}/dark.jpg\n")
        proc = run(["-m", "ensemble", "cameras", config, "--watch", "1", "--rounds", "4", "--format", "json",
                    "--state", tmp_path / "state.json"], timeout=240)
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 1, proc.stderr  # soft and covered need a visit
    rounds = [json.loads(line)["cameras"] for line in proc.stdout.splitlines()]  # one JSON line a round
    assert len(rounds) == 4, proc.stdout
    sharp = [next(r for r in rnd if r["camera"] == "sharp") for rnd in rounds]
    assert [r["state"] for r in sharp] == ["CLEAR"] * 4  # never frozen: every snapshot has fresh noise
    assert sharp[2]["reason"] == "baseline learnt" and sharp[2]["baseline"] is not None
    states = {r["camera"]: r["state"] for r in rounds[-1]}
    assert states == {"sharp": "CLEAR", "soft": "BLURRY", "covered": "INVALID"}


def test_an_unknown_option_keeps_each_commands_usage_status():
    assert run(["-m", "ensemble", "cameras", "x.yaml", "--bogus"]).returncode == 3  # Nagios UNKNOWN
    assert run(["-m", "ensemble", "scan", "x", "--bogus"]).returncode == 2


def test_image_errors_name_the_file_and_keep_the_reason_apart(tmp_path):
    from ensemble import ImageError, load_image

    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError) as info:
        load_image(empty)
    assert str(info.value) == f"{empty}: empty file (0 bytes)"
    assert info.value.reason == "empty file (0 bytes)" and info.value.path == str(empty)
