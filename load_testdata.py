#!/usr/bin/env python3
"""Stage 2: decode the test images at the analysis scale into data/test.pkl.

With no flags: the 20 % of scenes of ../shared/datasets/blur-photos-640 that load_traindata.py leaves out (same
split, same seed). With --certh DIR: the CERTH EvaluationSet (NaturalBlurSet and DigitalBlurSet, reported apart).
"""
import argparse

from ensemble.cli_common import run_stage
from ensemble.datasets import DEFAULT_DATA, LAYOUTS
from ensemble.imageio import ANALYSIS_SIDE


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", default=str(DEFAULT_DATA), help="dataset folder (CSV, class folders or CERTH)")
    src.add_argument("--certh", metavar="DIR", default=None,
                     help="CERTH_ImageBlurDataset (or its EvaluationSet) folder to evaluate on")
    p.add_argument("--layout", choices=LAYOUTS, default=None, help="dataset layout (default: detected)")
    p.add_argument("--out", default="data/test.pkl", help="pickle to write")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of scenes held out (same as stage 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the scene split (same as stage 1)")
    p.add_argument("--side", type=int, default=ANALYSIS_SIDE, help="analysis scale: shorter side in pixels")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    from ensemble.pipeline import load_split

    data, layout = (a.certh, "certh-eval") if a.certh else (a.data, a.layout)
    return run_stage(load_split, data, "test", a.out, layout, a.test_fraction, a.seed, a.side, a.workers,
                     not a.quiet)


if __name__ == "__main__":
    raise SystemExit(main())
