#!/usr/bin/env python3
"""Stage 1: decode the training images at the analysis scale into data/train.pkl.

With no flags: ../shared/datasets/blur-photos-640, split by scene 80/20 with seed 0; this script keeps the 80 %.
"""
from ensemble.cli_common import add_loading_args, run_stage, stage_parser
from ensemble.datasets import DEFAULT_DATA


def main(argv=None):
    p = stage_parser(__doc__)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="dataset folder (CSV, class folders or CERTH)")
    add_loading_args(p, "data/train.pkl")
    a = p.parse_args(argv)
    from ensemble.pipeline import load_split

    return run_stage(load_split, a.data, "train", a.out, a.layout, a.test_fraction, a.seed, a.side, a.workers,
                     not a.quiet)


if __name__ == "__main__":
    raise SystemExit(main())
