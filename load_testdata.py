#!/usr/bin/env python3
"""Stage 2: decode the test images at the analysis scale into data/test.pkl.

With no flags: the 20 % of scenes of ../shared/datasets/blur-photos-640 that load_traindata.py leaves out (same
split, same seed). With --certh DIR: the CERTH EvaluationSet (NaturalBlurSet and DigitalBlurSet, reported apart).
"""
from ensemble.cli_common import add_loading_args, run_stage, stage_parser
from ensemble.datasets import DEFAULT_DATA


def main(argv=None):
    p = stage_parser(__doc__)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", default=str(DEFAULT_DATA), help="dataset folder (CSV, class folders or CERTH)")
    src.add_argument("--certh", metavar="DIR", default=None,
                     help="CERTH_ImageBlurDataset (or its EvaluationSet) folder to evaluate on")
    add_loading_args(p, "data/test.pkl")
    a = p.parse_args(argv)
    from ensemble.pipeline import load_split

    data, layout = (a.certh, "certh-eval") if a.certh else (a.data, a.layout)
    return run_stage(load_split, data, "test", a.out, layout, a.test_fraction, a.seed, a.side, a.workers,
                     not a.quiet)


if __name__ == "__main__":
    raise SystemExit(main())
