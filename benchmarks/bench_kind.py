#!/usr/bin/env python3
"""The kind of blur, its direction and extent, and the noise estimate, against the targets of issue 21.

    .venv/bin/python benchmarks/bench_kind.py                        # the shipped model on data/test.pkl
    .venv/bin/python benchmarks/bench_kind.py --model runs/x         # another model folder
    .venv/bin/python benchmarks/bench_kind.py --noise-photos 4 --scan-photos 8 --passes 2   # a quick look

Measures, in one run:

1. kind: two synthetic blurs (defocus disk, Gaussian, linear motion of known radius, length and angle) of every
   sharp held-out photo (``data/test.pkl``: scenes no model trained on), half of them followed by random camera
   effects (noise, exposure, noise reduction, JPEG), through the kind head (pipeline.evaluate_kind, the same figures
   test.py prints): kind accuracy and extent within a factor 1.5 on clearly visible blur, motion angle within 15°
   for motion longer than 8 px at the analysis scale;
2. noise: held-out sharp photos cropped to 4:3, upscaled to 4000 × 3000, 2000 × 1500 and 1280 × 960, and tiled
   side by side at their own resolution into 4000 × 3000 (all their texture at full size), with white Gaussian noise
   of σ 3–25 added at that size, saved as JPEG (quality 95) or PNG and read by the real decode path;
   the estimate (noise.image_noise_sigma: the lower of the analysis-scale estimate scaled to the original size and
   the estimate on the full-resolution strips the decode keeps) against the σ added, beside the scaled estimate
   alone, the naive one (analysis-scale σ times the downscale factor) and, for cost, a full-resolution decode;
3. scan cost: ``scan_paths`` as ``blur-detect scan`` runs it on 12 MP JPEGs, with the model's kind head and without
   it (the same CNN and meta-network), interleaved passes, median rate (target: at most 10 % slower).

It ends with a summary of the targets (exit status 1 if one fails).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from bench_robustness import held_out  # noqa: E402  benchmarks/, beside this script
from bench_scan import generate, interleaved_medians, scan_rate, warm_cache  # noqa: E402
from summary import print_summary, verdict  # noqa: E402

SIZES = ((4000, 3000), (2000, 1500), (1280, 960))
SIGMAS = (3.0, 5.0, 8.0, 12.0, 18.0, 25.0)
TARGET_KIND, TARGET_ANGLE, TARGET_EXTENT, TARGET_NOISE, TARGET_COST = 0.95, 0.90, 0.80, 0.20, 0.10


def kind_figures(detector, images, labels) -> dict:
    """pipeline.evaluate_kind on the held-out photos."""
    import numpy as np

    from ensemble.datasets import LoadedData
    from ensemble.pipeline import evaluate_kind

    meta = [{"path": str(i), "label": int(y), "source": "held-out", "scene": str(i), "width": im.shape[1],
             "height": im.shape[0]} for i, (im, y) in enumerate(zip(images, labels))]
    return evaluate_kind(LoadedData(list(images), np.asarray(labels, np.int8), meta), detector, progress=False)


def textured_first(images, n: int) -> list:
    """``n`` photos: the most textured half by Laplacian variance (texture is what fools noise estimates), then the
    smoothest."""
    from ensemble.focus import laplacian_variance

    order = sorted(range(len(images)), key=lambda i: -laplacian_variance(images[i]))
    half = (n + 1) // 2
    return [images[i] for i in order[:half] + order[len(order) - (n - half):]]


def tree_scan_rate(tree: Path, paths: list[Path], workers: int) -> float:
    """scan rate (images/s) of the code and shipped model in ``tree`` (a checkout), in a fresh process, through that
    tree's own benchmarks/bench_scan.scan_rate."""
    import json
    import subprocess

    code = (f"import sys; sys.path[:0] = [{str(tree)!r}, {str(tree / 'benchmarks')!r}]; "
            f"from bench_scan import scan_rate; print(scan_rate({[str(p) for p in paths]!r}, {workers}, None))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tree)})
    if out.returncode != 0:
        raise SystemExit(f"scan in {tree} failed: {out.stderr.strip().splitlines()[-1:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def strip_times(path, rounds: int = 5) -> list[float]:
    """Seconds of the full-resolution strip a drafted JPEG's decode adds (imageio._top_band), in ``rounds``."""
    from ensemble.imageio import _top_band

    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        _top_band(path)
        out.append(time.perf_counter() - start)
    return out


def noise_figures(photos, folder: Path, seed: int, textured: int) -> tuple[list[dict], dict]:
    """One row per (photo, size, format, σ): the σ added, the estimate, the naive estimate; and timings (ms) of
    the analysis-scale decode and a full-resolution one for the largest JPEG. The first ``textured`` photos are
    marked textured."""
    import cv2
    import numpy as np
    from PIL import Image

    from ensemble.focus import noise_sigma
    from ensemble.imageio import load_image
    from ensemble.noise import image_noise_sigma, original_noise_sigma

    rng = np.random.default_rng(seed)
    rows, timing = [], {"draft_ms": [], "full_ms": [], "strip_ms": []}
    def tiled(first: int) -> np.ndarray:
        """4000 × 3000 of the photos side by side at their own resolution, starting with photo ``first``: all the
        texture of a photo at full size, where an upscaled photo is smooth."""
        out, y = np.empty((3000, 4000), np.float32), 0
        k = first
        while y < 3000:
            x = 0
            while x < 4000:
                tile = photos[k % len(photos)]
                k += 1
                th, tw = min(tile.shape[0], 3000 - y), min(tile.shape[1], 4000 - x)
                out[y:y + th, x:x + tw] = tile[:th, :tw]
                x += tw
            y += min(t.shape[0] for t in photos)
        return out

    for p, gray in enumerate(photos):
        h, w = gray.shape
        crop = gray[(h - w * 3 // 4) // 2:][: w * 3 // 4] if h * 4 > w * 3 else gray
        sources = [(f"{W}x{H} upscaled", cv2.resize(crop, (W, H), interpolation=cv2.INTER_CUBIC).astype(np.float32))
                   for W, H in SIZES] + [("4000x3000 tiled", tiled(p))]
        for source, big in sources:
            largest = source.startswith("4000x3000 upscaled")
            for fmt in (("jpg", "png") if largest else ("jpg",)):
                for sigma in SIGMAS:
                    noisy = np.clip(np.rint(big + sigma * rng.standard_normal(big.shape, np.float32)), 0, 255)
                    path = folder / f"noisy.{fmt}"
                    Image.fromarray(noisy.astype(np.uint8)).save(path, **({"quality": 95} if fmt == "jpg" else
                                                                          {"compress_level": 1}))
                    start = time.perf_counter()
                    dec = load_image(path, "L", native=True)
                    at_analysis = noise_sigma(dec.pixels)
                    est = image_noise_sigma(at_analysis, (dec.width, dec.height), dec.pixels.shape[::-1],
                                            dec.draft, dec.native)
                    if largest and fmt == "jpg":
                        timing["draft_ms"].append(1000 * (time.perf_counter() - start))
                    scaled = original_noise_sigma(at_analysis, (dec.width, dec.height), dec.pixels.shape[::-1],
                                                  dec.draft)
                    naive = at_analysis * min(big.shape) / min(dec.pixels.shape)
                    if largest and fmt == "jpg" and sigma == SIGMAS[0] and p < 3:
                        start = time.perf_counter()
                        full = load_image(path, "L", side=None)
                        noise_sigma(full.pixels)
                        timing["full_ms"].append(1000 * (time.perf_counter() - start))
                        timing["strip_ms"] += [1000 * t for t in strip_times(path)]
                    rows.append({"photo": p, "size": f"{source} {fmt}", "sigma": sigma, "estimate": est,
                                 "naive": naive, "scaled": scaled, "textured": p < textured})
    return rows, {k: float(np.median(v)) if v else None for k, v in timing.items()}


def main(argv=None) -> int:
    from ensemble.cli_common import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--test", type=Path, default=REPO / "data/test.pkl", help="held-out photos (load_testdata.py)")
    p.add_argument("--model", help="model folder with model/ and final_model/ (default: the shipped model)")
    p.add_argument("--noise-photos", type=int, default=8, help="held-out sharp photos in the noise measurement")
    p.add_argument("--scan-photos", type=int, default=24, help="12 MP photos in the scan-cost measurement (0: skip)")
    p.add_argument("--passes", type=int, default=3, help="interleaved passes per scan rate (median)")
    p.add_argument("--seed", type=int, default=0, help="seed of the added noise")
    p.add_argument("--before", type=Path, metavar="TREE",
                   help="a checkout of the code from before the kind head and the noise estimate (e.g. "
                        "'git worktree add /tmp/before dde5555~1'): the scan is also timed against it, each in a "
                        "fresh process, interleaved")
    a = p.parse_args(argv)

    import numpy as np

    from ensemble import BlurDetector
    from ensemble.detector import CNN_DIR, META_DIR, default_model_root
    from ensemble.scan import default_workers

    detector = BlurDetector.load(a.model)
    images, labels = held_out(a.test, None)
    sharp = [im for im, y in zip(images, labels) if y == 0]
    rows: list[tuple[str, str, str]] = []

    # -- 1: kind, angle, extent ----------------------------------------------------------------------------------
    if detector.kind is None:
        print("kind: the model has no kind head (final_model/kind.onnx): train one with 'train.py --kind-only'")
        rows.append(("kind head", "none", verdict(False, "a kind head")))
    else:
        report = kind_figures(detector, images, labels)
        print(f"kind head on {len(sharp)} held-out sharp photos, two synthetic blurs each (seed {report['seed']})")
        print(f"{'set':26} {'n':>5} {'kind acc':>9} {'angle ≤15°':>11} {'(n)':>5} {'median°':>8} "
              f"{'extent ≤1.5×':>13} {'median ratio':>13}")
        for name, m in report["sets"].items():
            k, an, e = m["kind"], m["angle"], m["extent"]
            print(f"{name:26} {k['n']:>5} {k['accuracy'] or 0:>9.4f} {an['within_15'] or 0:>11.4f} {an['n']:>5} "
                  f"{an['median_error'] or 0:>8.1f} {e['within_1_5x'] or 0:>13.4f} {e['median_ratio'] or 0:>13.3f}"
                  f"   confusion {k['confusion']}")
        clean = report["sets"]["synthetic_clean"]
        camera = report["sets"].get("synthetic_camera_effects")
        rows += [("kind accuracy, clean", f"{clean['kind']['accuracy']:.4f}",
                  verdict(clean["kind"]["accuracy"] >= TARGET_KIND, f">= {TARGET_KIND}")),
                 ("angle within 15°, clean", f"{clean['angle']['within_15']:.4f}",
                  verdict(clean["angle"]["within_15"] >= TARGET_ANGLE, f">= {TARGET_ANGLE}")),
                 ("extent within 1.5×, clean", f"{clean['extent']['within_1_5x']:.4f}",
                  verdict(clean["extent"]["within_1_5x"] >= TARGET_EXTENT, f">= {TARGET_EXTENT}"))]
        if camera:
            rows += [("kind accuracy, camera effects", f"{camera['kind']['accuracy']:.4f}", "reported"),
                     ("angle within 15°, camera effects", f"{camera['angle']['within_15']:.4f}", "reported"),
                     ("extent within 1.5×, camera effects", f"{camera['extent']['within_1_5x']:.4f}", "reported")]

    tmp = Path(tempfile.mkdtemp(prefix="bench-kind-"))
    try:
        # -- 2: noise at the original resolution -------------------------------------------------------------------
        photos = textured_first(sharp, a.noise_photos)
        noise, timing = noise_figures(photos, tmp, a.seed, (len(photos) + 1) // 2)
        err = np.array([r["estimate"] / r["sigma"] - 1 for r in noise])
        naive = np.array([r["naive"] / r["sigma"] - 1 for r in noise])
        scaled = np.array([r["scaled"] / r["sigma"] - 1 for r in noise])
        print(f"\nnoise at the original resolution: {len(photos)} held-out photos (half the most textured), "
              f"white noise added at full size; share within ±20 % (median error)")
        sizes = list(dict.fromkeys(r["size"] for r in noise))
        print(f"{'image':>24} " + " ".join(f"{'σ ' + format(s, 'g'):>14}" for s in SIGMAS))
        for size in sizes:
            cells = []
            for s in SIGMAS:
                e = np.array([r["estimate"] / r["sigma"] - 1 for r in noise if (r["size"], r["sigma"]) == (size, s)])
                cells.append(f"{np.mean(np.abs(e) <= TARGET_NOISE):.2f} ({np.median(e):+.0%})")
            print(f"{size:>24} " + " ".join(f"{c:>14}" for c in cells))
        for group in (True, False):
            e = np.array([r["estimate"] / r["sigma"] - 1 for r in noise if r["textured"] == group])
            big = np.array([r["estimate"] / r["sigma"] - 1 for r in noise if r["textured"] == group
                            and (not r["size"].startswith("4000x3000") or r["sigma"] >= 8)])
            print(f"{'textured' if group else 'smoother'} half: {np.mean(np.abs(e) <= TARGET_NOISE):.3f} within "
                  f"±20 % (median {np.median(e):+.1%}); leaving out σ < 8 at 12 MP: "
                  f"{np.mean(np.abs(big) <= TARGET_NOISE):.3f}")
        within, within_naive = float(np.mean(np.abs(err) <= TARGET_NOISE)), float(np.mean(np.abs(naive) <= 0.2))
        within_scaled = float(np.mean(np.abs(scaled) <= TARGET_NOISE))
        print(f"all: {within:.3f} within ±20 % (median {np.median(err):+.1%}, 95th percentile of |error| "
              f"{np.quantile(np.abs(err), 0.95):.1%}); naive σ × downscale: {within_naive:.3f} "
              f"(median {np.median(naive):+.1%}); the analysis-scale estimate alone, scaled: {within_scaled:.3f} "
              f"(median {np.median(scaled):+.1%})")
        print(f"cost, 12 MP JPEG: decode at the analysis scale + estimate {timing['draft_ms']:.0f} ms; a full-size "
              f"decode + estimate {timing['full_ms']:.0f} ms; of the first, the full-resolution strip "
              f"{timing['strip_ms']:.1f} ms")
        rows += [("noise within ±20 %, σ 3–25", f"{within:.3f}", verdict(within >= 0.95, ">= 0.95 of cases")),
                 ("noise, analysis scale alone, within ±20 %", f"{within_scaled:.3f}", "for comparison"),
                 ("noise, naive scaling, within ±20 %", f"{within_naive:.3f}", "for comparison")]

        # -- 3: the scan's cost ------------------------------------------------------------------------------------
        if a.scan_photos > 0 and detector.kind is not None:
            root = Path(a.model) if a.model else default_model_root()
            bare = tmp / "no-kind"
            (bare / META_DIR).mkdir(parents=True)
            (bare / CNN_DIR).symlink_to((root / CNN_DIR).resolve(), target_is_directory=True)
            for name in ("meta.onnx", "metadata.json"):
                (bare / META_DIR / name).symlink_to((root / META_DIR / name).resolve())
            print(f"\ngenerating {a.scan_photos} photos of 4000x3000 ...", flush=True)
            paths = generate(tmp / "photos", a.scan_photos, (4000, 3000))
            warm_cache(paths)
            workers = default_workers()
            rates = interleaved_medians({"without": lambda: scan_rate(paths, workers, str(bare)),
                                         "with": lambda: scan_rate(paths, workers, str(root))}, a.passes)
            cost = rates["without"] / rates["with"] - 1
            print(f"scan, {workers} workers: {rates['without']:.2f} images/s without the kind head, "
                  f"{rates['with']:.2f} with it: {cost:+.1%} time per image (median of {a.passes} interleaved passes)")
            rows.append(("scan cost of the kind head", f"{cost:+.1%}",
                         verdict(cost <= TARGET_COST, f"<= +{TARGET_COST:.0%}")))
            if a.before is not None:
                rates = interleaved_medians({"before": lambda: tree_scan_rate(a.before.resolve(), paths, workers),
                                             "now": lambda: tree_scan_rate(REPO, paths, workers)}, a.passes)
                cost = rates["before"] / rates["now"] - 1
                print(f"scan, {workers} workers, fresh processes: {rates['before']:.2f} images/s with the code in "
                      f"{a.before}, {rates['now']:.2f} now: {cost:+.1%} time per image")
                rows.append(("scan cost against --before", f"{cost:+.1%}",
                             verdict(cost <= TARGET_COST, f"<= +{TARGET_COST:.0%}")))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return print_summary(rows)


if __name__ == "__main__":
    raise SystemExit(main())
