#!/usr/bin/env python3
"""Benchmark of ``blur-detect scan``: throughput against a bare decode, start-up time and memory on 10,000 files.

    .venv/bin/python benchmarks/bench_scan.py                       # the full run (minutes)
    .venv/bin/python benchmarks/bench_scan.py --images 4 --memory-images 200 --startup-runs 2   # a quick check

Measures, in one run:

1. bare decode: every file decoded at full resolution with Pillow and with OpenCV (what a naive tool must do
   before it can look at a photo), and Pillow's grey draft at the analysis scale (the floor: the least work any
   scan at this scale can do), by ``--workers`` threads, in images/s;
2. scan: the same files through :func:`ensemble.scan.scan_paths` as ``blur-detect scan`` runs it, in images/s,
   interleaved with the decodes over ``--repeat`` rounds (median), and the ratios scan / the floor (target >= 0.80)
   and scan / the faster full decode (target >= 0.70); with ``--profile``, each step of a scan timed on one thread,
   and the ratio to the floor a scan would reach if the CNN (and the kind head) cost nothing: the scan's CPU time a
   photo less those steps, against the floor's;
3. start-up: median wall time of ``blur-detect scan one.jpg`` as a fresh process (target <= 2 s), beside that of
   ``python -c "import tensorflow"``;
4. memory: peak RSS of ``blur-detect scan`` over ``--memory-images`` files (hard links to a few dozen distinct
   JPEGs) writing jsonl to /dev/null (target <= 1.5 GB), and over a tenth as many, to show that it stays flat.

Test photos are synthetic 4000 x 3000 JPEGs (the test fixtures' photo generator, upscaled; every other one blurred),
written to a temporary folder, or the JPEGs already in ``--dir``.
"""
from __future__ import annotations

import argparse
import json
import os
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
sys.path[:0] = [str(REPO), str(REPO / "tests")]

TARGET_RATIO = 0.70
TARGET_FLOOR_RATIO = 0.80
TARGET_STARTUP_S = 2.0
TARGET_RSS_BYTES = 1.5e9


def generate(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """``n`` synthetic photos of ``size`` = (width, height), every other one blurred, as JPEG quality 90."""
    import cv2

    from fixtures import blur, make_photo, save_jpeg

    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    paths = []
    for i in range(n):
        # Drawing at a quarter of the size and upscaling keeps generation quick; the upscale softens a little, as
        # real lenses and demosaicing do.
        small = make_photo(seed + i, (max(1, h // 4), max(1, w // 4)))
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        if i % 2:
            img = blur(img, ("gaussian", "defocus", "motion")[(i // 2) % 3], (6.0, 8.0, 25.0)[(i // 2) % 3])
        paths.append(save_jpeg(folder / f"photo{i:04d}.jpg", img, quality=90))
    return paths


def warm_cache(paths: list[Path]) -> None:
    # Both contenders should measure decoding, not the first read from disk.
    for p in paths:
        p.read_bytes()


def bare_decode_rate(paths: list[Path], workers: int, library: str) -> float:
    """images/s of a bare decode by ``workers`` threads: ``pillow`` or ``opencv`` at full resolution, or
    ``reduced``: Pillow's grey draft at the analysis scale (libjpeg at 1/2, 1/4 or 1/8), the least work any scan at
    this scale can do."""
    import cv2
    from PIL import Image

    from ensemble.imageio import analysis_size

    def pillow(p: Path) -> int:
        with Image.open(p) as im:
            im.load()
            return im.width

    def reduced(p: Path) -> int:
        with Image.open(p) as im:
            im.draft("L", analysis_size(im.width, im.height))
            im.load()
            return im.width

    def opencv(p: Path) -> int:
        return cv2.imread(str(p), cv2.IMREAD_COLOR).shape[1]

    decode = {"pillow": pillow, "reduced": reduced, "opencv": opencv}[library]
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(decode, paths))
    return len(paths) / (time.perf_counter() - start)


def scan_rate(paths: list[Path], workers: int, model: str | None) -> float:
    from ensemble.detector import BlurDetector
    from ensemble.scan import scan_paths

    detector = BlurDetector.load(model, threads=1)  # as the CLI loads it
    detector.predict_path(paths[0])  # ONNX Runtime's first call sets up its kernels: a one-off cost per scan
    start = time.perf_counter()
    n = sum(1 for s in scan_paths([str(p) for p in paths], detector, workers) if s.error is None)
    elapsed = time.perf_counter() - start
    if n != len(paths):
        raise SystemExit(f"scan failed on {len(paths) - n} of the benchmark photos")
    return len(paths) / elapsed


def stage_profile(paths: list[Path], model: str | None, rounds: int = 3) -> dict[str, float]:
    """Median milliseconds per image of each step of a scan, one thread, each photo ``rounds`` times: the decode
    (with its full-resolution strip), the noise estimate, the focus measures, the patch grid, the CNN, the
    meta-network, the kind head, the record. Timed apart, so thread hand-offs are the scan's time less their sum."""
    import numpy as np

    from ensemble.detector import NOISE_INDEX, BlurDetector
    from ensemble.features import job_features, prepare_patches, score_jobs
    from ensemble.focus import focus_features, noise_sigma
    from ensemble.patches import extract_patches

    detector = BlurDetector.load(model, threads=1)
    detector.predict_path(paths[0])
    times: dict[str, list[float]] = {}

    def timed(name, func):
        start = time.perf_counter()
        out = func()
        times.setdefault(name, []).append(1000 * (time.perf_counter() - start))
        return out

    for _ in range(rounds):
        for path in paths:
            dec = timed("decode (with the strip)", lambda: detector.decode(path))
            gray = dec.pixels
            noise = timed("noise estimate", lambda: noise_sigma(gray))
            timed("focus measures", lambda: focus_features(gray, noise))
            timed("patch grid", lambda: extract_patches(gray, detector.patch_size, noise=noise))
            job = prepare_patches(gray, detector.patch_size)
            scores = timed("CNN", lambda: score_jobs([job], detector.cnn))
            times.setdefault("patches a photo", []).append(job.patch_count)
            row, _ = job_features(job, scores[0])
            timed("meta-network", lambda: detector.meta(row[None]))
            if detector.kind is not None:
                timed("kind head", lambda: detector._kinds([gray], [(dec.width, dec.height)],
                                                           np.expm1(row[None, NOISE_INDEX]), ["blurry"]))
            result = detector.predict_decoded([dec], with_map=False)[0]
            timed("record", lambda: json.dumps(result.record(str(path))))
    return {name: float(np.median(v)) for name, v in times.items()}


def interleaved_medians(contenders: dict, passes: int) -> dict:
    """Median over ``passes`` of each contender's rate, ``contenders`` being name -> function returning a rate.
    The passes are interleaved (A B A B ...), so a busy spell on a shared machine hits every contender alike."""
    rates = {name: [] for name in contenders}
    for _ in range(max(1, passes)):
        for name, measure in contenders.items():
            rates[name].append(measure())
    return {name: statistics.median(values) for name, values in rates.items()}


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ensemble", *args]


def child_env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def wall_time(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env())
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
    return elapsed


def peak_rss(cmd: list[str]) -> tuple[int, float]:
    """(peak resident memory in bytes, wall seconds) of one child process, from the kernel's own accounting."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env())
    # wait4 gives this child's own rusage; RUSAGE_CHILDREN would mix in the earlier children (TensorFlow...).
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed ({proc.returncode}): {err.strip()[-300:]}")
    return usage.ru_maxrss * 1024, elapsed  # ru_maxrss is in KiB on Linux


def link_many(sources: list[Path], folder: Path, n: int) -> Path:
    """``n`` files in ``folder``: hard links (copies where links are refused) cycling through ``sources``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        src, dst = sources[i % len(sources)], folder / f"img{i:05d}.jpg"
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    return folder


def main(argv=None) -> int:
    from ensemble.cli_common import HelpFormatter  # each default once, none for None

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--images", type=int, default=40, help="12 MP photos for the throughput comparison")
    p.add_argument("--workers", type=int, default=0, help="threads for both decode and scan (0: number of cores)")
    p.add_argument("--memory-images", type=int, default=10_000, help="files in the peak-memory scan (0: skip)")
    p.add_argument("--distinct", type=int, default=36, help="distinct photos behind the memory scan's files")
    p.add_argument("--memory-size", default="2000x1500", help="size of the memory scan's photos, WxH")
    p.add_argument("--startup-runs", type=int, default=5, help="runs per start-up measurement (median)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved rounds of the throughput measurement (median)")
    p.add_argument("--profile", action="store_true", help="also time each step of a scan on one thread")
    p.add_argument("--dir", type=Path, help="use the JPEGs in this folder instead of generating photos")
    p.add_argument("--model", help="model folder (None: the shipped model)")
    p.add_argument("--no-tensorflow", action="store_true", help="skip the 'import tensorflow' comparison")
    a = p.parse_args(argv)

    from ensemble.scan import default_workers

    workers = a.workers or default_workers()
    tmp = Path(tempfile.mkdtemp(prefix="bench-scan-"))
    rows: list[tuple[str, str, str]] = []
    try:
        # -- 1, 2: throughput ------------------------------------------------------------------------------------
        if a.dir:
            photos = sorted(q for q in a.dir.iterdir() if q.suffix.lower() in (".jpg", ".jpeg"))[: a.images]
        else:
            print(f"generating {a.images} photos of 4000x3000 in {tmp} ...", flush=True)
            photos = generate(tmp / "photos", a.images, (4000, 3000))
        if not photos:
            raise SystemExit("no JPEG photos to measure")
        warm_cache(photos)
        contenders = {name: (lambda lib=name: bare_decode_rate(photos, workers, lib))
                      for name in ("reduced", "pillow", "opencv")}
        contenders["scan"] = lambda: scan_rate(photos, workers, a.model)
        rates = interleaved_medians(contenders, a.repeat)  # a busy spell on the machine hits all four alike
        full = max(rates["pillow"], rates["opencv"])
        ratio, ratio_reduced = rates["scan"] / full, rates["scan"] / rates["reduced"]
        print(f"bare decode, {len(photos)} photos, {workers} workers, median of {a.repeat} interleaved rounds: "
              f"reduced (Pillow's grey draft at the analysis scale) {rates['reduced']:.2f} images/s; full "
              f"resolution, Pillow {rates['pillow']:.2f}, OpenCV {rates['opencv']:.2f}")
        print(f"scan: {rates['scan']:.2f} images/s")
        print(f"scan vs the reduced-decode floor: {ratio_reduced:.2f}; vs the full decode: {ratio:.2f}", flush=True)
        rows += [("reduced decode, the floor (img/s)", f"{rates['reduced']:.2f}", ""),
                 ("bare decode, Pillow (img/s)", f"{rates['pillow']:.2f}", ""),
                 ("bare decode, OpenCV (img/s)", f"{rates['opencv']:.2f}", ""),
                 ("scan (img/s)", f"{rates['scan']:.2f}", ""),
                 ("scan vs the reduced-decode floor", f"{ratio_reduced:.2f}",
                  verdict(ratio_reduced >= TARGET_FLOOR_RATIO, f">= {TARGET_FLOOR_RATIO:.2f}")),
                 ("scan vs bare decode", f"{ratio:.2f}", verdict(ratio >= TARGET_RATIO, f">= {TARGET_RATIO:.2f}"))]
        if a.profile:
            steps = stage_profile(photos[: max(1, min(len(photos), 12))], a.model)
            patches = steps.pop("patches a photo")
            print(f"one thread, median ms a photo ({patches:.0f} CNN patches a photo):")
            for name, ms in steps.items():
                print(f"  {name:26} {ms:7.2f}")
            cpu, floor_cpu = 1000 * workers / rates["scan"], 1000 * workers / rates["reduced"]
            print(f"  {'sum':26} {sum(steps.values()):7.2f}; the scan's CPU time a photo at {workers} workers: "
                  f"{cpu:.2f}, the floor's {floor_cpu:.2f}", flush=True)
            # What the ratio would be if a step cost nothing: how far the target is out of reach without the CNN.
            for gone in (("CNN",), ("CNN", "kind head")):
                bound = floor_cpu / max(1e-9, cpu - sum(steps.get(g, 0.0) for g in gone))
                print(f"  scan vs the floor with {' and '.join(gone)} free: {bound:.2f}", flush=True)
                rows.append((f"scan vs floor, {' and '.join(gone)} free (bound)", f"{bound:.2f}", ""))

        # -- 3: start-up -------------------------------------------------------------------------------------------
        one = [str(photos[0])] + (["--model", a.model] if a.model else [])
        runs = max(1, a.startup_runs)
        startup = statistics.median(wall_time(cli_command("scan", *one)) for _ in range(runs))
        print(f"start-up, blur-detect scan one.jpg: {startup:.2f} s (median of {runs})", flush=True)
        rows.append(("start-up, scan one.jpg (s)", f"{startup:.2f}",
                     verdict(startup <= TARGET_STARTUP_S, f"<= {TARGET_STARTUP_S:.0f} s")))
        if not a.no_tensorflow:
            try:
                tf = statistics.median(wall_time([sys.executable, "-c", "import tensorflow"]) for _ in range(runs))
                print(f"start-up, python -c 'import tensorflow': {tf:.2f} s", flush=True)
                rows.append(("python -c 'import tensorflow' (s)", f"{tf:.2f}", "for comparison"))
            except RuntimeError as err:
                print(f"import tensorflow failed: {err}")

        # -- 4: memory ---------------------------------------------------------------------------------------------
        if a.memory_images > 0:
            w, h = (int(v) for v in a.memory_size.lower().split("x"))
            print(f"generating {a.distinct} photos of {w}x{h} and {a.memory_images} links to them ...", flush=True)
            distinct = generate(tmp / "distinct", a.distinct, (w, h), seed=1000)
            for n in sorted({max(1, a.memory_images // 10), a.memory_images}):
                folder = link_many(distinct, tmp / f"many-{n}", n)
                cmd = cli_command("scan", str(folder), "--format", "jsonl", "--output", os.devnull, "--quiet",
                                  "--workers", str(workers), *(["--model", a.model] if a.model else []))
                rss, wall = peak_rss(cmd)
                print(f"peak RSS scanning {n} files: {rss / 2**20:.0f} MiB ({n / wall:.1f} images/s)", flush=True)
                ok = rss <= TARGET_RSS_BYTES if n == a.memory_images else None
                rows.append((f"peak RSS, {n} files (MiB)", f"{rss / 2**20:.0f}",
                             verdict(ok, f"<= {TARGET_RSS_BYTES / 1e9:.1f} GB") if ok is not None else ""))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    return print_summary(rows)


if __name__ == "__main__":
    raise SystemExit(main())
