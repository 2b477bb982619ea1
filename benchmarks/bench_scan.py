#!/usr/bin/env python3
"""Benchmark of ``blur-detect scan``: throughput against a bare decode, start-up time and memory on 10,000 files.

    .venv/bin/python benchmarks/bench_scan.py                       # the full run (minutes)
    .venv/bin/python benchmarks/bench_scan.py --images 4 --memory-images 200 --startup-runs 2   # a quick check

Measures, in one run:

1. bare decode: every file decoded at full resolution with Pillow and with OpenCV, by ``--workers`` threads
   (what a naive tool must do before it can look at a photo), in images/s;
2. scan: the same files through :func:`ensemble.scan.scan_paths` as ``blur-detect scan`` runs it, in images/s,
   and the ratio scan / the faster bare decode (target >= 0.70);
3. start-up: median wall time of ``blur-detect scan one.jpg`` as a fresh process (target <= 2 s), beside that of
   ``python -c "import tensorflow"``;
4. memory: peak RSS of ``blur-detect scan`` over ``--memory-images`` files (hard links to a few dozen distinct
   JPEGs) writing jsonl to /dev/null (target <= 1.5 GB), and over a tenth as many, to show that it stays flat.

Test photos are synthetic 4000 x 3000 JPEGs (the test fixtures' photo generator, upscaled; every other one blurred),
written to a temporary folder, or the JPEGs already in ``--dir``.
"""
from __future__ import annotations

import argparse
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
    import cv2
    from PIL import Image

    def pillow(p: Path) -> int:
        with Image.open(p) as im:
            im.load()
            return im.width

    def opencv(p: Path) -> int:
        return cv2.imread(str(p), cv2.IMREAD_COLOR).shape[1]

    decode = pillow if library == "pillow" else opencv
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
    p.add_argument("--repeat", type=int, default=2, help="passes per throughput measurement (best kept)")
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
        rates = {"pillow": 0.0, "opencv": 0.0, "scan": 0.0}
        for _ in range(max(1, a.repeat)):  # interleaved, so a busy spell on the machine hits all three alike
            rates["pillow"] = max(rates["pillow"], bare_decode_rate(photos, workers, "pillow"))
            rates["opencv"] = max(rates["opencv"], bare_decode_rate(photos, workers, "opencv"))
            rates["scan"] = max(rates["scan"], scan_rate(photos, workers, a.model))
        bare = max(rates["pillow"], rates["opencv"])
        ratio = rates["scan"] / bare
        print(f"bare decode, Pillow: {rates['pillow']:.2f} images/s; OpenCV: {rates['opencv']:.2f} images/s "
              f"({len(photos)} photos, {workers} workers)")
        print(f"scan: {rates['scan']:.2f} images/s")
        print(f"scan vs bare decode: {ratio:.2f}", flush=True)
        rows += [("bare decode, Pillow (img/s)", f"{rates['pillow']:.2f}", ""),
                 ("bare decode, OpenCV (img/s)", f"{rates['opencv']:.2f}", ""),
                 ("scan (img/s)", f"{rates['scan']:.2f}", ""),
                 ("scan vs bare decode", f"{ratio:.2f}", verdict(ratio >= TARGET_RATIO, f">= {TARGET_RATIO:.2f}"))]

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
