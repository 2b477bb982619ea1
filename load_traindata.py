#!/usr/bin/env python3
"""Stage 1: decode the training images at the analysis scale into data/train.pkl.

With no flags: ../shared/datasets/blur-photos-640, split by scene 80/20 with seed 0; this script keeps the 80 %.
"""
import argparse

from ensemble.cli_common import run_stage
from ensemble.datasets import DEFAULT_DATA, LAYOUTS
from ensemble.imageio import ANALYSIS_SIDE


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="dataset folder (CSV, class folders or CERTH)")
    p.add_argument("--layout", choices=LAYOUTS, default=None, help="dataset layout (default: detected)")
    p.add_argument("--out", default="data/train.pkl", help="pickle to write")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of scenes held out for testing")
    p.add_argument("--seed", type=int, default=0, help="seed of the scene split")
    p.add_argument("--side", type=int, default=ANALYSIS_SIDE, help="analysis scale: shorter side in pixels")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    from ensemble.pipeline import load_split

    return run_stage(load_split, a.data, "train", a.out, a.layout, a.test_fraction, a.seed, a.side, a.workers,
                     not a.quiet)


if __name__ == "__main__":
    raise SystemExit(main())
