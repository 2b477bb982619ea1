#!/usr/bin/env python3
"""Benchmark of judging at native scale (issue 20): throughput against a bare full-resolution decode, the cost of
``auto`` on photos, and the memory of one big image.

    .venv/bin/python benchmarks/bench_native.py            # the full run (a few minutes)
    .venv/bin/python benchmarks/bench_native.py --quick    # a quick check (3 images a set, 1 round)

Measures, in one run, interleaved over ``--rounds`` rounds (median; a busy spell on a shared machine hits every
contender alike):

1. speed: :func:`ensemble.scan.scan_paths` at ``scale='native'`` on 12 MP photos (4000 x 3000 JPEGs, quality 90)
   and on 300-dpi A4 pages (2480 x 3508, as JPEG quality 90 and as PNG), beside the bare full-resolution decode of
   the same files (OpenCV ``cv2.imread(path, IMREAD_GRAYSCALE)``) by the same ``--workers`` threads, in images/s;
   target: native / bare decode >= 0.60 on every set. For the record, also the decode that native scale does
   itself (``load_image(..., keep_full=True)``: Pillow at full size, to grey, reduced to the analysis scale), so
   the table shows what the native features add on top of it;
2. ``auto`` on the photos: its throughput beside ``screen``'s; target: auto costs <= 10 % more (screen / auto
   <= 1.10). Without ``final_model/content.json`` (the content classifier) auto is screen; the summary says
   whether it was there;
3. memory: one 300-dpi page (as PNG and as JPEG) and one 24 MP photo (6000 x 4000 JPEG) judged at native scale,
   each in a fresh process: its peak RSS above idle (VmHWM, reset once the model is loaded and has run on a small
   image), and the bytes the decode reserved from ``ensemble.imageio.DECODE_POOL``; target: both within the budget
   (``ensemble.imageio.DECODE_BUDGET``, 1 GiB: "one file costs at most 1 GiB above the idle process",
   docs/security.md).

The model is a temporary copy of model/ and final_model/ in which ``meta_native.onnx``, when there is none, is
``meta.onnx`` (behind a Slice keeping the feature vector when the native-scale meta-network reads native_focus's
measures too: the same network, so the same cost); the repository's model folders are never written.
Photos are mosaics of the 640 x 640 photos of ../shared/datasets/blur-photos-640 (or of skimage.data's pictures),
tiled at their own size, every other tile mirrored, never upscaled. Pages are
``documents.make_page(documents.sample_spec(rng, 'heldout', dpi=300))``. Everything is written to a temporary
folder and removed after. Writes benchmarks/results/native_speed.json; exit status 1 if a target fails.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from summary import print_summary, verdict  # benchmarks/summary.py, beside this script

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

PHOTO_DIR = REPO.parent / "shared" / "datasets" / "blur-photos-640" / "images"
RESULTS = REPO / "benchmarks" / "results" / "native_speed.json"

TARGET_NATIVE_RATIO = 0.60  # native / bare full-resolution decode (throughputs)
TARGET_AUTO_COST = 1.10     # screen / auto (throughputs): auto costs at most 10 % more
PHOTO_SIZE = (4000, 3000)   # 12 MP
BIG_PHOTO_SIZE = (6000, 4000)  # 24 MP
MiB = 1 << 20


# -- test images -------------------------------------------------------------------------------------------------

def source_photos() -> list:
    """Loaders of the photos the mosaics are made of: the shared 640 x 640 photos, else skimage.data's."""
    from PIL import Image

    if PHOTO_DIR.is_dir():
        files = sorted(PHOTO_DIR.glob("*.jpg"))
        if files:
            return [lambda f=f: _rgb(Image.open(f)) for f in files]
    from skimage import data

    names = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "immunohistochemistry", "hubble_deep_field")
    return [lambda n=n: _rgb(getattr(data, n)()) for n in names if hasattr(data, n)]


def _rgb(img):
    import numpy as np
    from PIL import Image

    if isinstance(img, Image.Image):
        with img:
            return np.asarray(img.convert("RGB"))
    arr = np.asarray(img)
    return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr[..., :3]


def mosaic_photo(sources: list, start: int, size: tuple[int, int], tile: int = 640):
    """An RGB (H, W, 3) picture of ``size`` = (width, height): source photos side by side at their own size
    (``tile`` x ``tile`` crops from their centres, or less for smaller photos: never upscaled), every other column
    and row of tiles mirrored, so that their edges meet, cropped to the frame."""
    import numpy as np

    w, h = size
    pics = [sources[(start + k) % len(sources)]() for k in range(min(len(sources), -(-w // tile) * -(-h // tile)))]
    t = min([tile] + [min(q.shape[:2]) for q in pics])
    out = np.empty((h, w, 3), np.uint8)
    k = 0
    for row, y in enumerate(range(0, h, t)):
        for col, x in enumerate(range(0, w, t)):
            q = pics[k % len(pics)]
            k += 1
            y0, x0 = (q.shape[0] - t) // 2, (q.shape[1] - t) // 2
            q = q[y0:y0 + t, x0:x0 + t]
            q = q[:, ::-1] if col % 2 else q
            q = q[::-1] if row % 2 else q
            out[y:y + t, x:x + t] = q[:min(t, h - y), :min(t, w - x)]
    return out


def make_photos(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    sources = source_photos()
    per = -(-size[0] // 640) * -(-size[1] // 640)
    paths = []
    for i in range(n):
        path = folder / f"photo{i:03d}.jpg"
        Image.fromarray(mosaic_photo(sources, (seed + i) * per, size)).save(path, quality=90)
        paths.append(path)
    return paths


def make_pages(folder: Path, n: int, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """``n`` 300-dpi A4 pages (held-out fonts and layouts), each as JPEG quality 90 and as PNG."""
    import numpy as np
    from PIL import Image

    from ensemble import documents

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    jpegs, pngs = [], []
    for i in range(n):
        gray = documents.make_page(documents.sample_spec(rng, "heldout", dpi=300)).gray
        img = Image.fromarray(gray)
        jpegs.append(folder / f"page{i:03d}.jpg")
        pngs.append(folder / f"page{i:03d}.png")
        img.save(jpegs[-1], quality=90)
        img.save(pngs[-1])
    return jpegs, pngs


def model_folder(folder: Path) -> tuple[Path, dict]:
    """A temporary model folder: copies of model/ and final_model/ (content.json too when it exists), with
    meta_native.onnx a stand-in made of meta.onnx when there is none (:func:`stand_in_meta`). Returns it and what
    it holds."""
    from ensemble.content import CONTENT_FILE
    from ensemble.detector import NATIVE_META

    for sub in ("model", "final_model"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for f in (REPO / sub).iterdir():
            if f.is_file():
                shutil.copy2(f, folder / sub / f.name)
    native = folder / "final_model" / f"{NATIVE_META}.onnx"
    info = {"content_json": (REPO / "final_model" / CONTENT_FILE).exists(),
            "meta_native": "shipped" if native.exists() else "copy of meta.onnx"}
    if not native.exists():
        info["meta_native"] = stand_in_meta(folder / "final_model" / "meta.onnx", native)
    return folder, info


def stand_in_meta(meta: Path, out: Path) -> str:
    """Write a stand-in native-scale meta-network at ``out``: meta.onnx itself when the native-scale meta-network
    reads the same features; when it reads more (ensemble.detector.NATIVE_FEATURE_NAMES: the feature vector, then
    native_focus's measures), meta.onnx behind a Slice that keeps the feature vector (the same cost, a few
    columns fewer). Returns what it wrote, in words."""
    try:
        from ensemble.detector import NATIVE_FEATURE_NAMES
    except ImportError:  # a version whose native-scale meta-network reads the feature vector alone
        NATIVE_FEATURE_NAMES = None
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(meta))
    dim = model.graph.input[0].type.tensor_type.shape.dim[1]
    if NATIVE_FEATURE_NAMES is None or len(NATIVE_FEATURE_NAMES) == dim.dim_value:
        shutil.copy2(meta, out)
        return "copy of meta.onnx"
    name, first = model.graph.input[0].name, dim.dim_value
    dim.dim_value = len(NATIVE_FEATURE_NAMES)
    sliced = name + "/first_columns"
    for node in model.graph.node:
        node.input[:] = [sliced if i == name else i for i in node.input]
    consts = {"/stand_in/starts": [0], "/stand_in/ends": [first], "/stand_in/axes": [1]}
    model.graph.initializer.extend(numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items())
    model.graph.node.insert(0, helper.make_node("Slice", [name, *consts], [sliced]))
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return f"meta.onnx reading the first {first} of {len(NATIVE_FEATURE_NAMES)} columns"


# -- throughput --------------------------------------------------------------------------------------------------

def warm_cache(paths: list[Path]) -> None:
    for p in paths:
        p.read_bytes()


def decode_rate(paths: list[Path], workers: int) -> float:
    """images/s of OpenCV's bare full-resolution grey decode by ``workers`` threads."""
    import cv2

    def decode(p: Path) -> int:
        img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise SystemExit(f"OpenCV cannot read {p}")
        return img.shape[1]

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(decode, paths))
    return len(paths) / (time.perf_counter() - start)


def own_decode_rate(paths: list[Path], workers: int, side: int) -> float:
    """images/s of the decode native scale does itself (BlurDetector.decode at 'native')."""
    from ensemble.imageio import load_image

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda p: load_image(p, "L", side, native=True, keep_full=True).width, paths))
    return len(paths) / (time.perf_counter() - start)


def scan_rate(paths: list[Path], detector, workers: int, scale: str, seen: dict) -> float:
    """images/s of scan_paths at ``scale``; ``seen`` counts the scales the images were judged at."""
    from ensemble.scan import scan_paths

    start = time.perf_counter()
    done = list(scan_paths([str(p) for p in paths], detector, workers, scale=scale))
    elapsed = time.perf_counter() - start
    bad = [s for s in done if s.error is not None]
    if bad:
        raise SystemExit(f"scan at {scale} failed on {len(bad)} of {len(paths)} files: {bad[0].path}: {bad[0].error}")
    for s in done:
        seen[s.result.scale] = seen.get(s.result.scale, 0) + 1
    return len(paths) / elapsed


# -- memory ------------------------------------------------------------------------------------------------------

CHILD = r"""
import gc, json, sys
sys.path.insert(0, sys.argv[1])
from ensemble.detector import BlurDetector
from ensemble import imageio


def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith("Vm"))
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}


model, warm, path = sys.argv[2:5]
det = BlurDetector.load(model, threads=1, scale="native")
det.predict_path(warm, with_map=False)  # idle: the model loaded and run, on a small image at native scale
gc.collect()
with open("/proc/self/clear_refs", "w") as f:  # the peak (VmHWM) starts again from the RSS now
    f.write("5")
idle = status()["VmRSS"]
imageio.DECODE_POOL.peak = 0
r = det.predict_path(path, with_map=False)
after = status()
print(json.dumps({"idle": idle, "peak": after["VmHWM"], "after": after["VmRSS"],
                  "reserved": imageio.DECODE_POOL.peak, "scale": r.scale, "size": [r.width, r.height],
                  "budget": imageio.DECODE_BUDGET}))
"""


def memory_case(model: Path, warm: Path, path: Path) -> dict:
    """Peak RSS above idle of judging ``path`` at native scale in a fresh process (VmHWM, the kernel's own count,
    reset through /proc/self/clear_refs once the process is idle), and the bytes its decode reserved."""
    proc = subprocess.run([sys.executable, "-c", CHILD, str(REPO), str(model), str(warm), str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"memory case {path.name} failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["growth"] = out["peak"] - out["idle"]
    return out


# -- the run -----------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    from ensemble.cli_common import HelpFormatter  # each default once, none for None

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--images", type=int, default=12, help="images in each set (12 MP photos, JPEG pages, PNG pages)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    p.add_argument("--workers", type=int, default=2, help="threads for the decode and the scans alike")
    p.add_argument("--quick", action="store_true", help="3 images a set, 1 round")
    p.add_argument("--no-memory", action="store_true", help="skip the memory cases")
    p.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON results")
    a = p.parse_args(argv)
    if a.quick:
        a.images, a.rounds = min(a.images, 3), 1
    n, rounds, workers = max(1, a.images), max(1, a.rounds), max(1, a.workers)

    from ensemble.detector import BlurDetector
    from ensemble.imageio import DECODE_BUDGET

    tmp = Path(tempfile.mkdtemp(prefix="bench-native-"))
    rows: list[tuple[str, str, str]] = []
    try:
        t0 = time.perf_counter()
        model, info = model_folder(tmp / "model")
        print(f"content classifier (final_model/content.json): {'present' if info['content_json'] else 'absent'}; "
              f"meta_native.onnx: {info['meta_native']}", flush=True)
        print(f"building {n} photos of {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} and {n} 300-dpi pages (JPEG and PNG) "
              f"in {tmp} ...", flush=True)
        sets = {"photos 12 MP JPEG": make_photos(tmp / "photos", n, PHOTO_SIZE)}
        sets["pages 300 dpi JPEG"], sets["pages 300 dpi PNG"] = make_pages(tmp / "pages", n)
        warm = make_photos(tmp / "warm", 1, (1280, 960), seed=1000)[0]
        big = make_photos(tmp / "big", 1, BIG_PHOTO_SIZE, seed=2000)[0]
        print(f"  built in {time.perf_counter() - t0:.1f} s", flush=True)
        for paths in sets.values():
            warm_cache(paths)

        detector = BlurDetector.load(model, threads=1, scale="native")  # as the CLI loads it
        for scale in ("native", "screen", "auto"):  # ONNX Runtime's first calls set up its kernels
            detector.predict_path(sets["photos 12 MP JPEG"][0], with_map=False, scale=scale)
        side = detector.analysis_side

        seen = {name: {} for name in ("native", "screen", "auto")}
        contenders = {}
        for name, paths in sets.items():
            contenders[(name, "decode")] = lambda paths=paths: decode_rate(paths, workers)
            contenders[(name, "own decode")] = lambda paths=paths: own_decode_rate(paths, workers, side)
            contenders[(name, "native")] = lambda paths=paths: scan_rate(paths, detector, workers, "native",
                                                                         seen["native"])
        photos = sets["photos 12 MP JPEG"]
        contenders[("photos 12 MP JPEG", "screen")] = lambda: scan_rate(photos, detector, workers, "screen",
                                                                        seen["screen"])
        contenders[("photos 12 MP JPEG", "auto")] = lambda: scan_rate(photos, detector, workers, "auto",
                                                                      seen["auto"])
        memory_cases = {} if a.no_memory else {"page 300 dpi PNG": sets["pages 300 dpi PNG"][0],
                                               "page 300 dpi JPEG": sets["pages 300 dpi JPEG"][0],
                                               "photo 24 MP JPEG": big}

        rates = {key: [] for key in contenders}
        memory = {key: [] for key in memory_cases}
        for r in range(rounds):
            for key, measure in contenders.items():
                rates[key].append(measure())
            for key, path in memory_cases.items():
                memory[key].append(memory_case(model, warm, path))
            print(f"round {r + 1}/{rounds}: " + ", ".join(f"{k[0].split()[0]} {k[1]} {v[-1]:.2f}"
                                                          for k, v in rates.items()), flush=True)

        med = {key: statistics.median(v) for key, v in rates.items()}
        results: dict = {"sets": {}, "auto": {}, "memory": {}}
        print(f"\n{workers} workers, {n} images a set, median of {rounds} interleaved rounds (images/s):")
        ok_all = True
        for name in sets:
            # The ratio of each round's pair (measured side by side), then their median.
            ratios = [nat / dec for nat, dec in zip(rates[(name, "native")], rates[(name, "decode")])]
            ratio = statistics.median(ratios)
            own = statistics.median(nat / own for nat, own in zip(rates[(name, "native")],
                                                                   rates[(name, "own decode")]))
            ok = ratio >= TARGET_NATIVE_RATIO
            ok_all &= ok
            print(f"  {name}: bare decode (OpenCV, grey) {med[(name, 'decode')]:.2f}, native's own decode "
                  f"{med[(name, 'own decode')]:.2f}, native {med[(name, 'native')]:.2f}; native / bare decode "
                  f"{ratio:.2f} (target >= {TARGET_NATIVE_RATIO:.2f}), native / its own decode {own:.2f}")
            rows += [(f"{name}: bare decode, OpenCV grey (img/s)", f"{med[(name, 'decode')]:.2f}", ""),
                     (f"{name}: native's own decode (img/s)", f"{med[(name, 'own decode')]:.2f}", "for the record"),
                     (f"{name}: native (img/s)", f"{med[(name, 'native')]:.2f}", ""),
                     (f"{name}: native / bare decode", f"{ratio:.2f}",
                      verdict(ok, f">= {TARGET_NATIVE_RATIO:.2f}"))]
            results["sets"][name] = {
                "files": len(sets[name]), "size": list(PHOTO_SIZE) if "photo" in name else [2480, 3508],
                "bytes_mean": statistics.mean(q.stat().st_size for q in sets[name]),
                "rates": {k[1]: v for k, v in rates.items() if k[0] == name},
                "median": {k[1]: med[k] for k in rates if k[0] == name},
                "native_vs_decode_per_round": ratios, "native_vs_decode": ratio, "native_vs_own_decode": own,
                "target": TARGET_NATIVE_RATIO, "ok": ok}

        costs = [s / au for s, au in zip(rates[("photos 12 MP JPEG", "screen")],
                                         rates[("photos 12 MP JPEG", "auto")])]
        cost = statistics.median(costs)
        ok = cost <= TARGET_AUTO_COST
        ok_all &= ok
        present = "present" if info["content_json"] else "absent: auto is screen"
        print(f"  photos, screen {med[('photos 12 MP JPEG', 'screen')]:.2f}, auto "
              f"{med[('photos 12 MP JPEG', 'auto')]:.2f}: auto costs {cost:.3f} x screen "
              f"(target <= {TARGET_AUTO_COST:.2f}); content.json {present}; auto judged "
              f"{seen['auto']} (images x rounds)")
        rows += [("photos: screen (img/s)", f"{med[('photos 12 MP JPEG', 'screen')]:.2f}", ""),
                 ("photos: auto (img/s)", f"{med[('photos 12 MP JPEG', 'auto')]:.2f}",
                  f"content.json {'present' if info['content_json'] else 'absent'}"),
                 ("photos: auto cost / screen cost", f"{cost:.3f}", verdict(ok, f"<= {TARGET_AUTO_COST:.2f}"))]
        results["auto"] = {"content_json": info["content_json"], "screen_over_auto_per_round": costs,
                           "auto_cost_vs_screen": cost, "judged_at": seen["auto"], "target": TARGET_AUTO_COST,
                           "ok": ok}

        if memory_cases:
            print(f"  memory at native scale, fresh process each, against the {DECODE_BUDGET // MiB:,} MiB decode "
                  "budget (ensemble.imageio.DECODE_BUDGET):")
        for key, cases in memory.items():
            growth = statistics.median(c["growth"] for c in cases)
            reserved = statistics.median(c["reserved"] for c in cases)
            ok = growth <= DECODE_BUDGET and reserved <= DECODE_BUDGET
            ok_all &= ok
            judged = {c["scale"] for c in cases}
            print(f"    {key} ({cases[0]['size'][0]}x{cases[0]['size'][1]}, judged at {'/'.join(judged)}): peak RSS "
                  f"+{growth / MiB:.0f} MiB above idle ({cases[0]['idle'] / MiB:.0f} MiB), decode reserved "
                  f"{reserved / MiB:.0f} MiB")
            rows += [(f"{key}: peak RSS above idle (MiB)", f"{growth / MiB:.0f}",
                      verdict(ok, f"<= {DECODE_BUDGET // MiB:,} MiB")),
                     (f"{key}: decode reserved (MiB)", f"{reserved / MiB:.0f}", "")]
            results["memory"][key] = {"cases": cases, "growth_median": growth, "reserved_median": reserved,
                                      "budget": DECODE_BUDGET, "ok": ok}

        results.update(
            benchmark="benchmarks/bench_native.py", issue=20,
            date=datetime.datetime.now().isoformat(timespec="seconds"),
            settings={"images": n, "rounds": rounds, "workers": workers, "quick": a.quick},
            machine={"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg": os.getloadavg()},
            model=info, native_judged=seen["native"], ok=ok_all)
        a.output.parent.mkdir(parents=True, exist_ok=True)
        a.output.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {a.output}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return print_summary(rows)


if __name__ == "__main__":
    raise SystemExit(main())
