"""Build a demo folder: photos bundled with installed packages (scikit-image, scikit-learn) plus blurred copies,
and three rendered document pages.

    python -m ensemble.demo demo/photos

Each photo is written sharp and with defocus, Gaussian and motion blur, so a scan shows both verdicts. The pages
(A4 at 300 dpi, two columns of text, in fonts and a layout training never saw; ensemble.documents, with the fonts
of ``make fonts``) are sharp, blurred all over and blurred in their lower half, each twice as far past its OCR
boundary: ``--scale auto`` judges them at 100 %.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .augment import apply_blur
from .cli_common import HelpFormatter, make_output_dir

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "camera")
BLURS = (("defocus", 5.0), ("gaussian", 3.0), ("motion", 18.0))


def bundled_photos() -> dict[str, np.ndarray]:
    """Name → uint8 RGB (or grey) photo, from whichever of scikit-image and scikit-learn is installed."""
    photos: dict[str, np.ndarray] = {}
    try:
        from skimage import data

        for name in SKIMAGE_PHOTOS:
            photos[name] = np.asarray(getattr(data, name)())
    except ImportError:
        pass
    try:
        from sklearn.datasets import load_sample_images

        bunch = load_sample_images()
        for fname, img in zip(bunch.filenames, bunch.images):
            photos[Path(fname).stem] = np.asarray(img)
    except ImportError:
        pass
    return photos


PAGES = (("sharp", "all"), ("soft", "all"), ("soft_bottom", "bottom"))
"""The demo pages: (name, blurred region); every soft one Gaussian σ twice its OCR boundary."""


def build_pages(out: Path) -> list[Path]:
    """Write the demo pages into ``out`` as JPEGs and return their paths; none without the fonts."""
    from PIL import Image

    from . import documents

    try:  # the first held-out two-column page: text from top to bottom, so its lower half has words to blur
        spec = next(s for s in (documents.sample_spec(np.random.default_rng(seed), "heldout", dpi=300)
                                for seed in range(100)) if s.layout == "two_columns")
    except RuntimeError:  # no fonts: the photos alone
        return []
    sigma = 2 * documents.blur_boundary("gaussian", spec.font_px)
    written = []
    for name, region in PAGES:
        page = documents.make_page(spec, blur=None if name == "sharp" else ("gaussian", sigma), region=region)
        path = out / f"page_{name}.jpg"
        Image.fromarray(page.gray).save(path, quality=90)
        written.append(path)
    return written


def build(out: Path) -> list[Path]:
    """Write the sharp and blurred JPEGs into ``out`` and return their paths."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, img in bundled_photos().items():
        versions = {"sharp": img}
        for kind, strength in BLURS:
            versions[kind] = np.stack([apply_blur(np.ascontiguousarray(img[..., c]), kind, strength, 30.0)
                                       for c in range(3)], axis=2) if img.ndim == 3 else apply_blur(img, kind,
                                                                                                     strength, 30.0)
        for tag, pixels in versions.items():
            path = out / f"{name}_{tag}.jpg"
            Image.fromarray(pixels).save(path, quality=92)
            written.append(path)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("out", nargs="?", default="demo/photos", help="folder to create")
    a = p.parse_args(argv)
    problem = make_output_dir(a.out)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    written = build(Path(a.out))
    if not written:
        print("error: no bundled photos found (install scikit-image or scikit-learn)", file=sys.stderr)
        return 1
    pages = build_pages(Path(a.out))
    print(f"wrote {len(written)} demo photos and {len(pages)} document pages to {a.out}"
          + ("" if pages else " (no fonts for the pages: make fonts)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
