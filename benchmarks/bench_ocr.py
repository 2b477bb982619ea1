#!/usr/bin/env python3
"""When is a document scan too blurred to read? Tesseract's character error rate against blur, per font size.

    .venv/bin/python benchmarks/bench_ocr.py            # the full run (about 10 min on 2 cores)
    .venv/bin/python benchmarks/bench_ocr.py --quick    # a look in well under 2 minutes (writes *_quick files)

Pages come from ensemble/documents.py ("one_column": headings and wrapped paragraphs; paper 240, ink 30, scanner
noise sigma 2, no skew, no JPEG), in three training fonts and three held-out ones (serifs and sans of each split),
at 300 dpi for 6, 8, 10 and 12 pt, at 200 dpi for 10 pt and at 150 dpi for 8, 10 and 12 pt: font sizes of 17-50 px,
25 px twice (6 pt at 300 dpi, 12 pt at 150 dpi) to check that the size in pixels is what counts. Each page is
blurred (Gaussian sigma, defocus disk radius, linear motion length at 0 and 90 degrees; ensemble/augment.py's
kernels), then a crop of 8 whole lines of body text goes through ``tesseract --psm 6``. The character error rate
is the Levenshtein distance between tesseract's text and the text drawn (both with whitespace collapsed to single
spaces) over the length of the text drawn; the figure per point is the median over the pages.

The boundary, per font size and kind: the smallest blur extent at which the median CER exceeds the clean page's
CER by 2 percentage points (linear interpolation between grid points). Two points is one more wrong character in
50, about one more wrong word in ten: a loss an OCR user notices, and far above the wander of the median while the
text is still sharp (at most 0.1 points in the full run). The knee is steep, so the margin matters little: the
script prints the rule for 1, 2, 5 and 10 points. The rule fitted through those boundaries, extent = k x font_px
per kind (least squares through the origin, over the font sizes tesseract reads well when sharp: clean CER under
5 %), is what ensemble.documents.page_label uses. It writes benchmarks/results/ocr_boundary.json and
docs/ocr_cer.png (``--from-json`` summarises and plots a saved run again without OCR).

Needs tesseract-ocr with English data: ``make ocr`` installs it (as root, with apt-get).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from ensemble import documents as D  # noqa: E402

MARGIN_PP = 0.02         # the boundary: clean CER + 2 percentage points
USABLE_CLEAN_CER = 0.05  # font sizes whose sharp CER is above this are too small for tesseract: not in the fit
STOP_CER = 0.6           # a page's curve stops after two points above this (it only gets worse)
N_LINES = 8
NOISE = 2.0

FONT_FILES = (  # (file name, split): serifs and sans of each split
    ("LiberationSerif-Regular.ttf", "train"), ("DejaVuSans.ttf", "train"), ("NimbusSans-Regular.otf", "train"),
    ("Caladea-Regular.ttf", "heldout"), ("Carlito-Regular.ttf", "heldout"), ("URWBookman-Light.otf", "heldout"),
)
FULL = {
    "configs": [(300, 6), (300, 8), (300, 10), (300, 12), (200, 10), (150, 8), (150, 10), (150, 12)],
    "grids": {
        "gaussian": [0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8],
        "defocus": [1, 2, 3, 4, 5, 6, 7, 8, 10, 12],
        "motion0": [2, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32],
        "motion90": [2, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32],
    },
}
QUICK = {
    "configs": [(300, 8), (300, 12)],
    "grids": {"gaussian": [1, 2, 2.5, 3, 4, 5], "defocus": [2, 3, 4, 6, 8], "motion0": [4, 6, 8, 12, 16]},
}


# ------------------------------------------------------------------------------------------------ CER

def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute, each 1), one numpy row per character of ``a``.

    Insertions within a row are a running minimum: d[j] = min_k (t[k] + j - k) = j + cummin(t[k] - k).
    """
    if not a or not b:
        return max(len(a), len(b))
    bb = np.frombuffer(b.encode("utf-32-le"), dtype=np.uint32)
    n = len(bb)
    ar = np.arange(n + 1, dtype=np.int64)
    row = ar.copy()
    av = np.frombuffer(a.encode("utf-32-le"), dtype=np.uint32)
    for i in range(1, len(av) + 1):
        t = np.empty(n + 1, dtype=np.int64)
        t[0] = i
        t[1:] = np.minimum(row[1:] + 1, row[:-1] + (bb != av[i - 1]))
        row = np.minimum.accumulate(t - ar) + ar
    return int(row[-1])


_TRANS = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2014": "-", "\u2013": "-",
                        "\u00ad": "-", "\ufb01": "fi", "\ufb02": "fl"})


def normalise(s: str) -> str:
    """NFKC, typographic quotes and dashes to ASCII, whitespace collapsed to single spaces."""
    return " ".join(unicodedata.normalize("NFKC", s).translate(_TRANS).split())


def cer(hyp: str, ref: str) -> float:
    ref, hyp = normalise(ref), normalise(hyp)
    return levenshtein(hyp, ref) / max(len(ref), 1)


# ------------------------------------------------------------------------------------------------ pages

def font_path(name: str) -> str:
    for p in D.fonts("all"):
        if os.path.basename(p) == name:
            return p
    raise SystemExit(f"font {name} not installed: run `make fonts`")


def text_crop(page: D.Page, n_lines: int = N_LINES):
    """A box (x0, y0, x1, y1) around n_lines consecutive body lines (no neighbour's ink inside) and their text."""
    lines = [ln for ln in page.lines if ln.role in ("body", "heading")]
    lines.sort(key=lambda ln: ln.box[1])
    body = [i for i, ln in enumerate(lines) if ln.role == "body"]
    # the first run of n_lines body lines after a few lines in (skip the title)
    for start in body:
        if start < 2 or start + n_lines + 1 > len(lines):
            continue
        run = lines[start:start + n_lines]
        if all(ln.role == "body" for ln in run):
            break
    else:
        raise RuntimeError("no run of body lines on the page")
    prev, nxt = lines[start - 1], lines[start + n_lines]
    y0 = (prev.box[3] + run[0].box[1]) // 2
    y1 = (run[-1].box[3] + nxt.box[1]) // 2
    pad = int(page.font_px)
    x0 = max(0, min(ln.box[0] for ln in run) - pad)
    x1 = min(page.gray.shape[1], max(ln.box[2] for ln in run) + pad)
    return (x0, y0, x1, y1), "\n".join(ln.text for ln in run)


def ocr(gray: np.ndarray, dpi: int, tmp: str) -> str:
    import cv2
    path = os.path.join(tmp, "crop.png")
    cv2.imwrite(path, gray)
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    r = subprocess.run(["tesseract", path, "stdout", "--psm", "6", "--dpi", str(dpi), "-l", "eng"],
                       capture_output=True, text=True, env=env, timeout=120)
    if r.returncode:
        raise RuntimeError(f"tesseract failed: {r.stderr.strip()[-300:]}")
    return r.stdout


def page_task(task) -> dict:
    """One page of one config: its clean CER and the curve of each kind, stopping once it saturates."""
    dpi, size_pt, font_name, seed, grids = task
    spec = D.PageSpec(font=font_path(font_name), size_pt=size_pt, dpi=dpi, layout="one_column", paper=240, ink=30,
                      noise=NOISE, seed=seed)
    page = D.render_page(spec)
    (x0, y0, x1, y1), ref = text_crop(page)
    reach = int(4 * max(max(g) for g in grids.values())) + 4
    X0, Y0 = max(0, x0 - reach), max(0, y0 - reach)
    X1, Y1 = min(page.gray.shape[1], x1 + reach), min(page.gray.shape[0], y1 + reach)
    region = page.gray[Y0:Y1, X0:X1]
    rng_seed = [seed, 7]
    out = {"dpi": dpi, "size_pt": size_pt, "font": font_name, "seed": seed, "font_px": spec.font_px,
           "chars": len(normalise(ref)), "curves": {}}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        def measure(kind, extent, angle):
            g = D.blur_page(region, kind, extent, angle)
            g = D.scan_page(g, spec, np.random.default_rng(rng_seed))  # the same noise at every blur
            crop = g[y0 - Y0:y1 - Y0, x0 - X0:x1 - X0]
            return cer(ocr(crop, dpi, tmp), ref)

        out["clean"] = measure(None, 0, 0)
        calls = 1
        for name, grid in grids.items():
            kind, angle = ("motion", float(name[6:])) if name.startswith("motion") else (name, 0.0)
            curve, above = [], 0
            for e in grid:
                c = measure(kind, float(e), angle)
                calls += 1
                curve.append(c)
                above = above + 1 if c > STOP_CER else 0
                if above >= 2:
                    break
            out["curves"][name] = curve
    out["seconds"] = time.perf_counter() - t0
    out["calls"] = calls
    return out


# ------------------------------------------------------------------------------------------------ boundary

def crossing(grid, curve, threshold):
    """The first extent where the curve exceeds threshold (linear between grid points, from 0 at clean).

    A point of None is saturated (most pages' OCR had already collapsed): above any threshold.
    """
    xs, ys = [0.0] + list(grid), list(curve)
    for i in range(1, len(xs)):
        y1 = ys[i] if ys[i] is not None else 1.0
        if y1 > threshold:
            x0, y0, x1 = xs[i - 1], ys[i - 1], xs[i]
            return float(x0 + (threshold - y0) / (y1 - y0) * (x1 - x0)) if y1 > y0 else float(x1)
    return None


def fit_rule(rows: list[dict], names) -> tuple[dict, dict]:
    """extent = k x font_px per kind, least squares through the origin, over the sizes tesseract reads well."""
    fit = {}
    usable = [r for r in rows if r["clean_cer"] < USABLE_CLEAN_CER]
    for name in names:
        pts = [(r["font_px"], r["boundary"][name]) for r in usable if r["boundary"][name] is not None]
        censored = [r["font_px"] for r in usable if r["boundary"][name] is None]
        if not pts:
            fit[name] = {"k": None, "points": 0, "censored_font_px": censored}
            continue
        f, b = np.array(pts).T
        k = float((f * b).sum() / (f * f).sum())
        ratio = b / f
        fit[name] = {"k": k, "points": len(pts), "ratio_min": float(ratio.min()), "ratio_max": float(ratio.max()),
                     "rms_rel_error": float(np.sqrt(np.mean((b / (k * f) - 1) ** 2))), "censored_font_px": censored}
    rule = {}
    for kind in ("gaussian", "defocus"):
        if kind in fit and fit[kind]["k"] is not None:
            rule[kind] = fit[kind]["k"]
    mk = [fit[n]["k"] for n in fit if n.startswith("motion") and fit[n]["k"] is not None]
    if mk:
        rule["motion"] = min(mk)  # the worse direction: the rule has no angle
    return fit, rule


def summarise(pages: list[dict], grids: dict, margin: float = MARGIN_PP) -> dict:
    configs = sorted({(p["dpi"], p["size_pt"]) for p in pages}, key=lambda c: c[1] * c[0] / 72)
    rows = []
    for dpi, size in configs:
        ps = [p for p in pages if (p["dpi"], p["size_pt"]) == (dpi, size)]
        clean = float(np.median([p["clean"] for p in ps]))
        row = {"dpi": dpi, "size_pt": size, "font_px": size * dpi / 72, "clean_cer": clean,
               "clean_cer_pages": [p["clean"] for p in ps], "curves": {}, "boundary": {}, "sharp_jitter": {}}
        for name, grid in grids.items():
            # a page whose curve stopped (two points above STOP_CER) counts as 1.0 beyond; where half the pages
            # or more had stopped the point is saturated (None)
            n = len(grid)
            mat = np.array([p["curves"][name] + [1.0] * (n - len(p["curves"][name])) for p in ps])
            stopped = np.array([[j >= len(p["curves"][name]) for j in range(n)] for p in ps])
            med = np.median(mat, axis=0)
            curve = [clean] + [None if stopped[:, j].sum() * 2 >= len(ps) else float(med[j]) for j in range(n)]
            row["curves"][name] = curve
            b = crossing(grid, curve, clean + margin)
            row["boundary"][name] = b
            # how much the median wanders while the text is still sharp (below half the boundary)
            sharp = [c for e, c in zip([0.0] + list(grid), curve) if b is not None and e < 0.5 * b and c is not None]
            row["sharp_jitter"][name] = float(max(abs(c - clean) for c in sharp)) if sharp else None
        rows.append(row)
    fit, rule = fit_rule(rows, grids)
    return {"rows": rows, "fit": fit, "rule_k": rule, "pages_per_point": len(pages) // max(len(rows), 1)}


def plot(summary: dict, grids: dict, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(grids)
    titles = {"gaussian": "Gaussian, σ (px)", "defocus": "defocus, disk radius (px)",
              "motion0": "motion 0° (along the lines), length (px)", "motion90": "motion 90° (across), length (px)"}
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    axes = axes.ravel()
    cmap = plt.get_cmap("viridis")
    rows = summary["rows"]
    for ai, name in enumerate(names):
        ax = axes[ai]
        for ri, r in enumerate(rows):
            col = cmap(ri / max(len(rows) - 1, 1))
            ls = "-" if r["dpi"] == 300 else "--"
            xs = [0.0] + list(grids[name])
            ys = [100.0 if c is None else c * 100 for c in r["curves"][name]]  # saturated: off the top
            ax.plot(xs, ys, ls, marker=".", color=col,
                    label=f"{r['size_pt']:g} pt @ {r['dpi']} dpi ({r['font_px']:.1f} px)")
            b = r["boundary"][name]
            if b is not None and r["clean_cer"] < USABLE_CLEAN_CER:
                ax.plot([b], [(r["clean_cer"] + MARGIN_PP) * 100], "o", mfc="none", ms=9, color=col)
        ax.set_title(titles.get(name, name))
        ax.set_ylabel("character error rate (%)")
        ax.set_ylim(0, 60)
        ax.grid(alpha=0.3)
        if ai == min(2, len(names) - 1):  # motion 0: its upper right is empty
            ax.legend(fontsize=8, title="font size (solid: 300 dpi,\ndashed: 150 and 200)", title_fontsize=8,
                      loc="upper right")
    ax = axes[len(names)]
    for name, mk in zip(names, "osD^v"):
        pts = [(r["font_px"], r["boundary"][name]) for r in rows
               if r["boundary"][name] is not None and r["clean_cer"] < USABLE_CLEAN_CER]
        if not pts:
            continue
        f, b = np.array(pts).T
        line = ax.plot(f, b, mk, label=name)[0]
        k = summary["fit"][name]["k"]
        xx = np.array([0, max(f) * 1.1])
        ax.plot(xx, k * xx, "-", color=line.get_color(), alpha=0.6, label=f"{k:.3f} × font px")
    ax.set_xlabel("font size (px)")
    ax.set_ylabel("boundary extent (px)")
    ax.set_title(f"boundary: CER > clean + {MARGIN_PP * 100:g} points")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for ax in axes[len(names) + 1:]:
        ax.axis("off")
    if len(names) + 1 < len(axes):
        rule = summary["rule_k"]
        lines = ["ensemble.documents.page_label: blurry when", ""] + \
            [f"  {k} {'σ' if k == 'gaussian' else 'radius' if k == 'defocus' else 'length'} > {v:.3f} × font px"
             for k, v in rule.items()] + \
            ["", "font px = size_pt × dpi / 72", "motion: the worse of 0° and 90°",
             f"fit over sizes with sharp CER < {USABLE_CLEAN_CER * 100:g} %"]
        axes[-1].text(0.05, 0.9, "\n".join(lines), va="top", family="monospace", fontsize=10,
                      transform=axes[-1].transAxes)
    fig.suptitle("tesseract 5 (--psm 6) on rendered pages: CER against blur, median of "
                 f"{summary['pages_per_point']} pages (half train, half held-out fonts); circles: the boundary")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(run: dict) -> None:
    """Print the CER tables, the boundaries, the fit and how the rule moves with the margin."""
    summary, grids = run["summary"], run["grids"]
    print(f"\n{run['tesseract']}, --psm 6; median CER (%) over {summary['pages_per_point']} pages of {N_LINES} lines "
          f"(-: saturated, most pages' OCR had collapsed); boundary = clean + {MARGIN_PP * 100:g} points")
    for name, grid in grids.items():
        print(f"\n{name}: extent " + " ".join(f"{e:>5g}" for e in [0] + list(grid)) + "   boundary")
        for r in summary["rows"]:
            b = r["boundary"][name]
            print(f"  {r['size_pt']:>4g} pt {r['dpi']} dpi {r['font_px']:5.1f} px "
                  + " ".join("    -" if v is None else f"{v * 100:5.1f}" for v in r["curves"][name])
                  + (f"   {b:5.2f} px = {b / r['font_px']:.3f} x font px" if b is not None else "   beyond grid"))
    print(f"\nfit (extent = k x font px, over sizes with clean CER < {USABLE_CLEAN_CER * 100:g} %):")
    for name, f in summary["fit"].items():
        if f["k"] is None:
            print(f"  {name}: no boundary inside the grid")
            continue
        jit = [r["sharp_jitter"][name] for r in summary["rows"] if r["sharp_jitter"][name] is not None]
        print(f"  {name:9s} k = {f['k']:.4f}  (per size {f['ratio_min']:.3f}-{f['ratio_max']:.3f}, rms relative "
              f"error {f['rms_rel_error'] * 100:.0f} %, {f['points']} sizes"
              + (f", beyond the grid at {f['censored_font_px']} px" if f["censored_font_px"] else "")
              + (f"; sharp-side jitter of the median at most {max(jit) * 100:.1f} points" if jit else "") + ")")
    print("\nthe rule against the margin (k per kind; motion: the worse of its angles):")
    for pp, rule in run["sensitivity"].items():
        print(f"  clean + {pp:>3} points: " + ", ".join(f"{k} {v:.3f}" for k, v in rule.items()))
    print("\nrule for ensemble.documents.page_label: blurry when " +
          ", ".join(f"{k} extent > {v:.3f} x font_px" for k, v in summary["rule_k"].items()))
    print(f"{len(run['pages'])} pages, {sum(p['calls'] for p in run['pages'])} OCR calls, {run['wall_s']:.0f} s "
          f"with {run.get('workers', 2)} workers")


def sensitivity(pages: list[dict], grids: dict) -> dict:
    return {f"{pp:g}": summarise(pages, grids, margin=pp / 100)["rule_k"] for pp in (1, 2, 5, 10)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 font sizes, coarse grids, 2 pages (well under 2 minutes)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--from-json", type=Path, default=None,
                    help="no OCR: summarise and plot again the pages of an earlier run's JSON")
    args = ap.parse_args()
    suffix = "_quick" if args.quick else ""
    json_path = args.json or REPO / "benchmarks" / "results" / f"ocr_boundary{suffix}.json"
    plot_path = args.plot or (REPO / "benchmarks" / "results" / "ocr_cer_quick.png" if args.quick
                              else REPO / "docs" / "ocr_cer.png")
    if args.from_json:
        old = json.loads(args.from_json.read_text())
        pages, grids, version, wall, date = old["pages"], old["grids"], old["tesseract"], old["wall_s"], old["date"]
        fonts, quick, workers = [(f["file"], f["split"]) for f in old["fonts"]], old["quick"], old.get("workers", 2)
    else:
        if shutil.which("tesseract") is None:
            print("tesseract not found: install it with `make ocr` (as root; or apt-get install tesseract-ocr)")
            return 2
        cfg = QUICK if args.quick else FULL
        grids, quick, workers = cfg["grids"], args.quick, args.workers
        fonts = (FONT_FILES[0], FONT_FILES[3]) if args.quick else FONT_FILES  # quick: a train and a held-out font
        for name, _ in fonts:
            font_path(name)
        version = subprocess.run(["tesseract", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
        tasks = [(dpi, size, name, 1000 + i, grids) for dpi, size in cfg["configs"]
                 for i, (name, _) in enumerate(fonts)]
        tasks.sort(key=lambda t: -t[0] * t[1])  # the big pages and long curves first: the workers finish together
        t0 = time.perf_counter()
        pages = []
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for i, res in enumerate(pool.map(page_task, tasks), 1):
                pages.append(res)
                print(f"[{i}/{len(tasks)}] {res['size_pt']:g} pt @ {res['dpi']} dpi, {res['font']}: clean CER "
                      f"{res['clean'] * 100:.1f} %, {res['calls']} OCR calls, {res['seconds']:.0f} s", flush=True)
        wall, date = time.perf_counter() - t0, datetime.date.today().isoformat()
    summary = summarise(pages, grids)
    run = {"date": date, "tesseract": version, "psm": 6, "quick": quick, "margin_pp": MARGIN_PP * 100,
           "usable_clean_cer": USABLE_CLEAN_CER, "noise_sigma": NOISE, "lines_per_crop": N_LINES,
           "fonts": [{"file": n, "split": s} for n, s in fonts], "grids": grids, "rule_k": summary["rule_k"],
           "sensitivity": sensitivity(pages, grids), "fit": summary["fit"], "summary": summary, "pages": pages,
           "wall_s": wall, "workers": workers}
    report(run)
    run.pop("summary")
    run["rows"] = summary["rows"]
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(run, indent=1))
    plot(summary, grids, plot_path)
    print(f"wrote {json_path.relative_to(REPO) if json_path.is_relative_to(REPO) else json_path} and "
          f"{plot_path.relative_to(REPO) if plot_path.is_relative_to(REPO) else plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
