#!/usr/bin/env python3
"""The GPU check's bundle and its runs: build ``.gpu/`` here, run the same training on either machine, compare.

    python benchmarks/gpu_pack.py                    # build .gpu/: wheels, a photo subset, the manifest (budget-checked)
    python benchmarks/gpu_pack.py --cpu-reference    # run the bundle's training here; figures into .gpu/
    bash benchmarks/gpu_check.sh                     # on the GPU machine (carry: [".gpu"]); it calls the modes below

The GPU machine (benchmarks/gpu_check.sh, docs/gpu.md) has Python with JAX and PyTorch for CUDA, ONNX Runtime for
the CPU and most of this project's light dependencies, but no TensorFlow, no package registry and room for only
64 MiB of working tree. So ``.gpu/`` carries:

- ``wheels/``: Keras 3 and what it needs that is not there (namex, optree), for the machine's Python;
- ``data/train/`` and ``data/test/``: ``labels.csv`` and the JPEGs of a subset of the shared photos' training side
  (whole scenes) and of the held-out scenes (never trained on), within ``--data-mib``;
- ``manifest.json``: what was packed and the training settings both runs use; ``cpu_reference.json``, once
  ``--cpu-reference`` has run: the same run's figures on this machine.

Modes used by gpu_check.sh: ``--run DIR`` decodes the bundle, trains the CNN and the meta-network with the
manifest's settings under this process's Keras backend, scores the held-out photos and writes ``DIR/report.json``;
``--throughput`` times the CNN's input pipeline alone against its training step; ``--summary`` prints a run's
report beside the CPU reference, with the GPU's use from an nvidia-smi log.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GPU_DIR = REPO / ".gpu"
DATASET = REPO.parent / "shared" / "datasets" / "blur-photos-640"
MIB = 2**20
TREE_LIMIT_MIB = 64
"""What the device tool sends at most: tracked and untracked-not-ignored files plus the carried paths."""
TREE_MARGIN_MIB = 3

WHEELS = ("keras", "namex", "optree")
"""Missing on the GPU machine (docs/gpu.md): Keras 3 and its two requirements that are not there. Its other
requirements (absl-py, rich, h5py, ml-dtypes, packaging, numpy) are; h5py is needed: a .keras file keeps its weights
as HDF5. gpu_check.sh checks each module and says what is missing."""
DEVICE_PYTHON = "3.12"
"""The GPU machine's python3 (3.12.3, /opt/torch/.venv)."""

SETTINGS = {
    "full": {"epochs": 14, "patches_per_image": 16, "width": 1.0, "folds": 5, "max_epochs": 400, "patience": 40,
             "members": 2, "camera_copies": 2, "train_photos": None, "test_photos": None},
    "quick": {"epochs": 1, "patches_per_image": 4, "width": 0.5, "folds": 2, "max_epochs": 5, "patience": 2,
              "members": 1, "camera_copies": 0, "train_photos": 24, "test_photos": 16},
}
"""Training settings of a run. 'full' is the stage scripts' recipe on the bundle, except 2 meta-network members
instead of 5 (so the GPU run fits its 8 minutes); 'quick' checks the path end to end in a minute or two."""


def say(*parts) -> None:
    print(*parts, flush=True)


# -- building the bundle -------------------------------------------------------------------------------------------
def read_labels(root: Path) -> list[dict]:
    with open(root / "labels.csv", newline="", encoding="utf-8-sig") as f:
        return [row for row in csv.DictReader(f)]


def choose_photos(rows: list[dict], data_bytes: int, test_share: float, seed: int = 0) -> tuple[list, list]:
    """(train rows, test rows): the held-out side of the stage scripts' split (seed 0, 20 % of the scenes) and
    whole scenes of the training side, in a fixed random order, until ``data_bytes`` is used. ``test_share`` of
    the held-out scenes are taken first (all of them by default)."""
    import numpy as np

    from ensemble.datasets import split_by_scene

    scenes = [r.get("scene") or r["path"] for r in rows]
    labels = [int(r["blurry"]) for r in rows]
    train_idx, test_idx = split_by_scene(scenes, 0.2, 0, labels=labels)  # load_traindata.py's own split
    rng = np.random.default_rng(seed)

    def by_scene(idx):
        groups: dict[str, list[int]] = {}
        for i in idx:
            groups.setdefault(scenes[i], []).append(int(i))
        keys = sorted(groups)
        return [groups[keys[k]] for k in rng.permutation(len(keys))]

    def size(i):
        return (DATASET / rows[i]["path"]).stat().st_size

    test_groups = by_scene(test_idx)
    test = [i for g in test_groups[: int(round(test_share * len(test_groups)))] for i in g]
    used = sum(size(i) for i in test)
    if used > data_bytes:
        raise SystemExit(f"error: the held-out photos alone take {used / MIB:.1f} MiB, more than --data-mib; "
                         "lower --test-share")
    train = []
    for group in by_scene(train_idx):
        extra = sum(size(i) for i in group)
        if used + extra > data_bytes:
            continue
        train += group
        used += extra
    return [rows[i] for i in train], [rows[i] for i in test]


def write_part(rows: list[dict], out: Path) -> int:
    """Copy ``rows``' photos into ``out``/images and write ``out``/labels.csv; returns the bytes copied."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    total = 0
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "blurry", "scene"])
        for r in rows:
            src = DATASET / r["path"]
            rel = f"images/{src.name}"
            shutil.copyfile(src, out / rel)
            total += src.stat().st_size
            w.writerow([rel, r["blurry"], r.get("scene") or r["path"]])
    return total


def download_wheels(out: Path, python_version: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:", "--python-version",
           python_version, "--implementation", "cp", "--platform", "manylinux2014_x86_64", "--platform",
           "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64", "-d", str(out), *WHEELS]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = [line for line in proc.stderr.splitlines() if line.strip() and "WARNING" not in line]
        raise SystemExit(f"error: pip download failed: {(last or ['?'])[-1]}")
    return sorted(out.glob("*.whl"))


def travelling_bytes() -> int:
    """Bytes of the tracked and untracked-not-ignored files: what the device tool sends besides ``carry``."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True).stdout
    total = 0
    for name in out.split(b"\0"):
        p = REPO / os.fsdecode(name)
        if name and p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def pack(a) -> int:
    bundle = Path(a.bundle)
    if not (DATASET / "labels.csv").exists():
        print(f"error: {DATASET} not found (the shared photos)", file=sys.stderr)
        return 1
    tree = travelling_bytes()
    room = (TREE_LIMIT_MIB - TREE_MARGIN_MIB) * MIB - tree
    say(f"working tree that travels: {tree / MIB:.1f} MiB; room for .gpu/: {room / MIB:.1f} MiB")
    wheels = download_wheels(bundle / "wheels", a.python_version)
    wheel_bytes = sum(w.stat().st_size for w in wheels)
    say(f"wheels for Python {a.python_version}: " + ", ".join(f"{w.name} ({w.stat().st_size / MIB:.1f} MiB)"
                                                              for w in wheels))
    data_budget = min(a.data_mib * MIB, room - wheel_bytes - 64 * 1024)
    if data_budget <= 0:
        print("error: no room left for photos within the 64 MiB the device tool sends", file=sys.stderr)
        return 1
    rows = read_labels(DATASET)
    train, test = choose_photos(rows, data_budget, a.test_share)
    shutil.rmtree(bundle / "data", ignore_errors=True)
    sizes = {"train": write_part(train, bundle / "data" / "train"), "test": write_part(test, bundle / "data" / "test")}
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "dataset": "blur-photos-640",
        "split": {"test_fraction": 0.2, "seed": 0, "note": "the held-out photos are load_testdata.py's own"},
        "train": {"photos": len(train), "blurry": sum(int(r["blurry"]) for r in train),
                  "scenes": len({r["scene"] for r in train}), "mib": round(sizes["train"] / MIB, 2)},
        "test": {"photos": len(test), "blurry": sum(int(r["blurry"]) for r in test),
                 "scenes": len({r["scene"] for r in test}), "mib": round(sizes["test"] / MIB, 2)},
        "wheels": [w.name for w in wheels], "python_version": a.python_version,
        "settings": SETTINGS,
    }
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=1))
    total = folder_bytes(bundle)
    say(f"photos: {len(train)} training ({sizes['train'] / MIB:.1f} MiB, {manifest['train']['scenes']} scenes), "
        f"{len(test)} held out ({sizes['test'] / MIB:.1f} MiB, {manifest['test']['scenes']} scenes)")
    say(f".gpu/ is {total / MIB:.1f} MiB; with the working tree {(total + tree) / MIB:.1f} MiB of "
        f"{TREE_LIMIT_MIB} MiB")
    if total + tree > TREE_LIMIT_MIB * MIB:
        print("error: over the device tool's 64 MiB: lower --data-mib", file=sys.stderr)
        return 1
    if (bundle / "cpu_reference.json").exists():
        (bundle / "cpu_reference.json").unlink()
        say("the old cpu_reference.json was for other photos: removed; run --cpu-reference again")
    return 0


# -- installing the wheels (on the GPU machine) --------------------------------------------------------------------
def unpack_wheels(wheels: Path, site: Path) -> None:
    """Unzip every wheel into ``site`` (wheels are zip files; these need no build step), once."""
    site.mkdir(parents=True, exist_ok=True)
    for w in sorted(wheels.glob("*.whl")):
        stamp = site / f".{w.name}.done"
        if not stamp.exists():
            with zipfile.ZipFile(w) as z:
                z.extractall(site)
            stamp.touch()
    say(f"unpacked {len(list(wheels.glob('*.whl')))} wheels into {site}")


# -- one run of the bundle -----------------------------------------------------------------------------------------
def decode(bundle: Path, run: Path, settings: dict) -> dict:
    from ensemble import datasets

    out = {}
    for part, limit in (("train", settings["train_photos"]), ("test", settings["test_photos"])):
        items = datasets.list_items(bundle / part, "csv")
        if limit:
            items = items[:limit]
        loaded = datasets.load_dataset(items, side=640, progress=False)
        extra = {"root": "blur-photos-640 (gpu bundle)", "layout": "csv", "part": part,
                 "split": {"test_fraction": 0.2, "seed": 0, "scenes": len({it.scene for it in items})},
                 "analysis_side": 640, "fingerprint": datasets.fingerprint(loaded.meta)}
        datasets.save_pickle(loaded, run / "data" / f"{part}.pkl", extra)
        out[part] = len(loaded)
    return out


def score(run: Path) -> dict:
    """The held-out photos' three columns (Laplacian threshold, CNN alone, ensemble), as test.py computes them, on
    cnn.onnx/meta.onnx when they were written, else on the .keras files."""
    import numpy as np

    from ensemble import datasets
    from ensemble.features import FEATURE_NAMES, feature_matrix
    from ensemble.focus import laplacian_variance
    from ensemble.metrics import classification_report
    from ensemble.runtime import KerasModel, OnnxModel, load_cnn, load_keras

    data = datasets.load_pickle(run / "data" / "test.pkl")
    meta_dir = run / "final_model"
    metadata = json.loads((meta_dir / "metadata.json").read_text())
    cnn = load_cnn(run / "model")
    meta = (OnnxModel(meta_dir / "meta.onnx") if (meta_dir / "meta.onnx").exists()
            else KerasModel(load_keras(meta_dir / "meta.keras"), batch=1024))
    patch = int(metadata["cnn"]["hyperparameters"]["patch_size"])
    feats = feature_matrix(data.images, cnn, patch_size=patch)
    ens = np.clip(meta(feats), 0, 1)
    cnn_mean = feats[:, FEATURE_NAMES.index("cnn_mean")]
    lap = np.array([laplacian_variance(g) for g in data.images])
    base = metadata["baselines"]
    y = np.asarray(data.labels).astype(int)
    lap_prob = 1.0 / (1.0 + np.exp(np.log1p(lap) - np.log1p(base["laplacian_threshold"])))
    cols = {"laplacian": classification_report(y, lap_prob, lap < base["laplacian_threshold"]),
            "cnn": classification_report(y, cnn_mean, cnn_mean >= base["cnn_threshold"]),
            "ensemble": classification_report(y, ens, ens >= metadata["threshold"])}
    return {k: {m: (round(v, 4) if isinstance(v, float) else v) for m, v in c.items()} for k, c in cols.items()}


def run_bundle(a) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    bundle = Path(a.bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    mode = "quick" if a.quick else "full"
    settings = manifest["settings"][mode]
    run = Path(a.run)
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    from ensemble import pipeline
    from ensemble.cnn import backend, device_names, gpus

    windows, report = [], {"mode": mode, "settings": settings, "backend": backend(), "devices": device_names(gpus()),
                           "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    say(f"backend {report['backend']}, devices {', '.join(report['devices'])}, {os.cpu_count()} CPU cores, "
        f"{mode} settings")

    def stage(name, fn):
        t0 = time.time()
        out = fn()
        t1 = time.time()
        windows.append([name, t0, t1])
        say(f"stage {name}: {t1 - t0:.1f} s")
        return out

    counts = stage("decode", lambda: decode(bundle / "data", run, settings))
    say(f"decoded {counts['train']} training and {counts['test']} held-out photos")
    train_pkl = run / "data" / "train.pkl"
    cnn = stage("cnn", lambda: pipeline.train_cnn_stage(
        train_pkl, run / "model", settings["epochs"], "auto", None, settings["patches_per_image"], True, 0.0, 5, 0,
        0 if a.quiet else 2, width=settings["width"]))
    meta = stage("meta", lambda: pipeline.train_meta_stage(
        train_pkl, run / "model", run / "final_model", settings["folds"], settings["max_epochs"],
        settings["patience"], (32, 16), 0.2, 1e-3, 3e-3, 0, False, settings["members"], settings["camera_copies"]))
    test = stage("score", lambda: score(run))
    cnn_info = json.loads((run / "model" / "cnn.json").read_text())
    report.update(
        photos=counts, windows=windows, stages={name: round(t1 - t0, 1) for name, t0, t1 in windows},
        cnn={k: cnn_info.get(k) for k in ("backend", "precision", "devices", "epoch_seconds", "epochs_run",
                                          "input_pipeline", "params")}
        | {"batch_size": cnn_info["hyperparameters"]["batch_size"],
           "learning_rate": cnn_info["hyperparameters"]["learning_rate"],
           "patches": cnn_info["patches"]["train"], "onnx": cnn["onnx"]},
        meta={"epochs": meta["epochs"], "validation": meta["validation"], "onnx": meta["onnx"]},
        test=test)
    (run / "report.json").write_text(json.dumps(report, indent=1))
    if a.report:
        Path(a.report).write_text(json.dumps(report, indent=1))
    say(pipeline.format_report({"sets": {"held-out scenes": test}}))
    return 0


# -- throughput: the CNN's input alone against its training step ----------------------------------------------------
def throughput(a) -> int:
    """Patches per second of PatchBatches (augmentation and camera effects, with the camera workers this machine
    would use) and of the CNN's training step at the batch size this machine would use."""
    import numpy as np

    from ensemble import datasets
    from ensemble.cnn import (CameraPool, PatchBatches, backend, build_cnn, camera_workers_for, gpus,
                              resolve_batch_size, resolve_precision, sample_patches)

    bundle = Path(a.bundle) / "data" / "train"
    items = datasets.list_items(bundle, "csv")[:120]
    data = datasets.load_dataset(items, side=640, progress=False)
    patches = sample_patches(data.images, np.asarray(data.labels), 16, True, 0)
    found = gpus()
    batch = resolve_batch_size("auto", found) if a.batch is None else a.batch
    workers = camera_workers_for(found) if a.workers is None else a.workers
    out = {"backend": backend(), "batch": batch, "camera_workers": workers, "patches": len(patches.y)}
    steps = max(4, min(40, 6 * max(1, workers) * 3200 // batch // 4))

    def rate(pool, camera=True):
        pb = PatchBatches(patches, batch, True, 0, camera, pool)
        pb[0]
        t = time.perf_counter()
        for i in range(1, steps + 1):
            pb[i % len(pb)]
        return steps * batch / (time.perf_counter() - t)

    out["input_no_camera"] = round(rate(None, camera=False))
    if workers > 0:
        with CameraPool(workers) as pool:
            pool(patches.x[:64, ..., None], (0,))
            out["input"] = round(rate(pool))
    else:
        out["input"] = round(rate(None))
    import keras

    policy = resolve_precision("auto", out["backend"], found)
    keras.config.set_dtype_policy(policy)
    model = build_cnn(patches.x.shape[1], 1.0)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x = np.random.default_rng(0).random((batch, *patches.x.shape[1:], 1), dtype=np.float32)
    y = (np.arange(batch) % 2).astype(np.float32)
    for _ in range(3):
        model.train_on_batch(x, y)
    n = 5 if not found else 50
    t = time.perf_counter()
    for _ in range(n):
        loss = model.train_on_batch(x, y)
    float(np.asarray(loss))  # wait for the device
    out["model_step"] = round(n * batch / (time.perf_counter() - t))
    out["precision"] = policy
    say(f"input pipeline: {out['input']} patches/s with camera effects ({workers} worker processes), "
        f"{out['input_no_camera']} without; CNN training step ({out['backend']}, {policy}, batch {batch}): "
        f"{out['model_step']} patches/s")
    if a.report:
        Path(a.report).write_text(json.dumps(out, indent=1))
    return 0


# -- the comparison ------------------------------------------------------------------------------------------------
def gpu_use(smi: Path | None, windows: list) -> dict:
    """Per stage: mean GPU utilisation (%) and peak memory used (MiB) from 'unix_time,util,mem' lines."""
    if smi is None or not smi.exists():
        return {}
    samples = []
    for line in smi.read_text().splitlines():
        parts = [p.strip() for p in line.replace(", ", ",").split(",")]
        try:
            samples.append((float(parts[0]), float(parts[1]), float(parts[2])))
        except (ValueError, IndexError):
            continue
    out = {}
    for name, t0, t1 in windows + [["all", windows[0][1], windows[-1][2]]] if windows else []:
        inside = [s for s in samples if t0 <= s[0] <= t1]
        if inside:
            out[name] = {"util_mean": round(sum(s[1] for s in inside) / len(inside), 1),
                         "mem_peak_mib": int(max(s[2] for s in inside)), "samples": len(inside)}
    return out


def summary(a) -> int:
    report = json.loads(Path(a.summary).read_text())
    ref_file = Path(a.bundle) / "cpu_reference.json"
    ref = json.loads(ref_file.read_text()) if ref_file.exists() else None
    use = gpu_use(Path(a.smi) if a.smi else None, report.get("windows", []))
    here = f"this run ({report['backend']}, {', '.join(report['devices'])})"
    there = "CPU reference" if ref else "CPU reference (none: run --cpu-reference where the bundle was built)"
    if ref:
        there = f"CPU reference ({ref['backend']}, {ref['machine']['cpus']} cores)"
    lines = [f"| | {here} | {there} |", "|---|---:|---:|"]

    def row(label, f):
        def get(r):
            try:
                return f(r) if r else "-"
            except (KeyError, TypeError, IndexError, ValueError):
                return "-"
        lines.append(f"| {label} | {get(report)} | {get(ref)} |")

    for name in ("decode", "cnn", "meta", "score"):
        row(f"{name} stage (s)", lambda r, n=name: r["stages"][n])
    row("total (s)", lambda r: round(sum(r["stages"].values()), 1))
    row("CNN seconds an epoch (median)", lambda r: sorted(r["cnn"]["epoch_seconds"])[len(r["cnn"]["epoch_seconds"]) // 2])
    row("CNN precision / batch", lambda r: f"{r['cnn']['precision']} / {r['cnn']['batch_size']}")
    row("cnn.onnx", lambda r: "written" if r["cnn"]["onnx"] == "written" else "not written")
    for col in ("ensemble", "cnn", "laplacian"):
        for metric in ("accuracy", "roc_auc", "ece"):
            row(f"{col} {metric}", lambda r, c=col, m=metric: r["test"][c][m])
    say("\n".join(lines))
    if use:
        say("GPU use (nvidia-smi every 0.5 s): " + "; ".join(
            f"{k}: {v['util_mean']} % mean, {v['mem_peak_mib']} MiB peak" for k, v in use.items()))
    elif a.smi:
        say("GPU use: no nvidia-smi samples")
    if a.report:
        Path(a.report).write_text(json.dumps({"run": report, "cpu_reference": ref, "gpu_use": use}, indent=1))
    return 0


def cpu_reference(a) -> int:
    run = REPO / "runs" / "gpu-cpu-reference"
    a.run, a.report = str(run), None
    status = run_bundle(a)
    if status == 0:
        shutil.copyfile(run / "report.json", Path(a.bundle) / "cpu_reference.json")
        say(f"wrote {Path(a.bundle) / 'cpu_reference.json'}")
    return status


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = p.add_mutually_exclusive_group()
    modes.add_argument("--cpu-reference", action="store_true", help="run the bundle here and keep its figures in it")
    modes.add_argument("--run", metavar="DIR", help="run the bundle into DIR (gpu_check.sh)")
    modes.add_argument("--throughput", action="store_true", help="time the CNN's input pipeline and training step")
    modes.add_argument("--summary", metavar="REPORT", help="print a run's report beside the CPU reference")
    modes.add_argument("--unpack", metavar="SITE", help="unzip the bundle's wheels into SITE (gpu_check.sh)")
    p.add_argument("--bundle", default=str(GPU_DIR), help="the bundle folder")
    p.add_argument("--data-mib", type=float, default=40, help="photos to pack at most, MiB")
    p.add_argument("--test-share", type=float, default=1.0, help="share of the held-out scenes to pack")
    p.add_argument("--python-version", default=DEVICE_PYTHON, help="Python version of the wheels")
    p.add_argument("--quick", action="store_true", help="tiny settings: checks the path end to end")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.add_argument("--report", help="also write the JSON report here")
    p.add_argument("--smi", help="nvidia-smi log for --summary: lines 'unix_time,utilisation %%,memory MiB'")
    p.add_argument("--batch", type=int, help="--throughput: batch size (default: this machine's 'auto')")
    p.add_argument("--workers", type=int, help="--throughput: camera worker processes (default: this machine's)")
    a = p.parse_args(argv)
    if a.unpack:
        unpack_wheels(Path(a.bundle) / "wheels", Path(a.unpack))
        return 0
    if not a.run and not a.cpu_reference and not a.throughput and not a.summary:
        return pack(a)
    if not (Path(a.bundle) / "manifest.json").exists():
        print(f"error: no bundle at {a.bundle}: run `python benchmarks/gpu_pack.py` first", file=sys.stderr)
        return 1
    if a.summary:
        return summary(a)
    if a.throughput:
        return throughput(a)
    return cpu_reference(a) if a.cpu_reference else run_bundle(a)


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        raise SystemExit(130)
    except Exception as err:  # one line, as the stage scripts do; GPU_PACK_TRACEBACK=1 shows where
        if os.environ.get("GPU_PACK_TRACEBACK"):
            raise
        print(f"error: {type(err).__name__}: {' '.join(str(err).split())[:400]}", file=sys.stderr)
        raise SystemExit(1)
