"""Build a demo folder: photos bundled with installed packages (scikit-image, scikit-learn) plus blurred copies.

    python -m ensemble.demo demo/photos

Each photo is written sharp and with defocus, Gaussian and motion blur, so a scan shows both verdicts.
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
    print(f"wrote {len(written)} demo photos to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
