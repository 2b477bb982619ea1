#!/usr/bin/env python3
"""Which score should tell that a camera went soft? The camera monitor's focus score against the raw Laplacian
variance, on the changes a fixed camera sees every day and on real focus loss.

    .venv/bin/python benchmarks/bench_cameras_focus.py              # 12 scenes (about 10 s)
    .venv/bin/python benchmarks/bench_cameras_focus.py --scenes 4   # a quick check

For each synthetic scene (the test fixtures' photo generator, 720 x 960, saved as JPEG quality 85 as a camera
would) it measures, against the scene's own sharp frame:

* the raw variance of the Laplacian (what focus-loss scripts compare with a baseline);
* the monitor's focus score, (1 + v1) / (1 + v4): the Laplacian variance at the analysis scale over that at a
  quarter of it (``ensemble.cameras.monitor.focus_score``);
* the ensemble's blur probability (BLURRY from the model's threshold).

It prints the median relative change of each score over the scenes, and the share of scenes in which the
monitor's default rule (a drop of more than 50 % against the baseline) would fire. Nuisances should not fire it,
blur should. It also prints the time to score one frame as a check does (decode excluded).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

DROP = 0.5


def variants(rgb, rng):
    """(name, kind, frame) for every nuisance and every blur, all uint8 RGB like ``rgb``."""
    import cv2
    import numpy as np

    from fixtures import blur

    h, w = rgb.shape[:2]
    f = rgb.astype(np.float32)
    xx = np.linspace(0.35, 1.0, w, dtype=np.float32)[None, :, None]
    van = rgb.copy()
    cv2.rectangle(van, (w // 8, h // 3), (w // 8 + w // 3, h // 3 + h // 3), (40, 40, 170), -1)
    out = [
        ("dusk: gain 0.3, offset +20", "nuisance", f * 0.3 + 20),
        ("night: gain 0.25, sensor noise 4", "nuisance", f * 0.25 + rng.normal(0, 4, f.shape)),
        ("sun and shade across the frame", "nuisance", f * xx),
        ("a van parked in view (11 % of it)", "nuisance", van),
        ("heavier compression (JPEG 40)", "nuisance", None),
        ("gaussian blur, sigma 0.6 px", "blur", cv2.GaussianBlur(rgb, (0, 0), 0.6)),
        ("gaussian blur, sigma 0.8 px", "blur", cv2.GaussianBlur(rgb, (0, 0), 0.8)),
        ("gaussian blur, sigma 1.2 px", "blur", cv2.GaussianBlur(rgb, (0, 0), 1.2)),
        ("defocus, radius 2 px", "blur", blur(rgb, "defocus", 2.0)),
        ("gaussian blur, sigma 3 px", "blur", cv2.GaussianBlur(rgb, (0, 0), 3.0)),
        ("motion (a bumped camera), 7 px", "blur", blur(rgb, "motion", 7.0, 30.0)),
    ]
    return [(name, kind, None if frame is None else np.clip(frame, 0, 255).astype(np.uint8))
            for name, kind, frame in out]


def jpeg(rgb, quality: int = 85):
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=12, help="synthetic scenes (default: 12)")
    args = ap.parse_args()

    import numpy as np

    from ensemble.cameras.monitor import focus_score
    from ensemble.detector import BlurDetector
    from ensemble.focus import laplacian_variance
    from ensemble.imageio import resize_to_analysis, to_gray
    from fixtures import make_photo

    det = BlurDetector.load(threads=1)
    rng = np.random.default_rng(0)
    rows: dict[str, dict] = {}
    times = []
    for seed in range(args.scenes):
        sharp = make_photo(100 + seed, (720, 960))

        def measure(rgb):
            grey = resize_to_analysis(to_gray(rgb), det.analysis_side)
            t0 = time.perf_counter()
            prob = det.predict_array(grey, with_map=True).blur_probability
            score = focus_score(grey)
            times.append(time.perf_counter() - t0)
            return laplacian_variance(grey), score, prob

        lap0, focus0, _ = measure(jpeg(sharp))
        for name, kind, frame in variants(sharp, rng):
            lap, focus, prob = measure(jpeg(sharp, 40) if frame is None else jpeg(frame))
            row = rows.setdefault(name, {"kind": kind, "lap": [], "focus": [], "prob": []})
            row["lap"].append(lap / lap0 - 1)
            row["focus"].append(focus / focus0 - 1)
            row["prob"].append(prob)

    def pct(x: float) -> str:
        return f"{100 * x:+.0f}%"

    def share(values, fired) -> str:
        return f"{100 * sum(map(fired, values)) / len(values):.0f}%"

    print(f"{args.scenes} scenes, 720 x 960, JPEG 85; change against each scene's sharp frame (median over scenes)")
    print(f"'fires': share of scenes where the change is a drop of more than {DROP:.0%} (DEGRADED), or the blur "
          f"probability reaches {det.threshold:g} (BLURRY)\n")
    header = (f"{'':36} {'Laplacian var':>14} {'fires':>6}   {'focus score':>12} {'fires':>6}   "
              f"{'P(blurry)':>9} {'BLURRY':>7}")
    print(header)
    for kind in ("nuisance", "blur"):
        print(f"-- {kind}s: " + ("should not fire" if kind == "nuisance" else "should fire"))
        for name, row in rows.items():
            if row["kind"] != kind:
                continue
            print(f"{name:36} {pct(statistics.median(row['lap'])):>14} {share(row['lap'], lambda c: c < -DROP):>6}"
                  f"   {pct(statistics.median(row['focus'])):>12} {share(row['focus'], lambda c: c < -DROP):>6}"
                  f"   {statistics.median(row['prob']):>9.3f} {share(row['prob'], lambda p: p >= det.threshold):>7}")
    nuisances = [r for r in rows.values() if r["kind"] == "nuisance"]
    blurs = [r for r in rows.values() if r["kind"] == "blur"]

    def false_alarms(key):
        return sum(c < -DROP for r in nuisances for c in r[key]) / sum(len(r[key]) for r in nuisances)

    def caught(key):
        hits = sum((c < -DROP) or (p >= det.threshold) for r in blurs for c, p in zip(r[key], r["prob"]))
        return hits / sum(len(r[key]) for r in blurs)

    print(f"\nfalse alarms on nuisances (DEGRADED): Laplacian variance {false_alarms('lap'):.0%}, "
          f"focus score {false_alarms('focus'):.0%}")
    print(f"blurred frames caught (DEGRADED or BLURRY): with the Laplacian variance {caught('lap'):.0%}, "
          f"with the focus score {caught('focus'):.0%}")
    print(f"scoring one frame as a check does (ensemble with blur map + focus score, one thread): "
          f"{1000 * statistics.median(times):.0f} ms median")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
