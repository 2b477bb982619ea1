#!/usr/bin/env python3
"""Stage 5: evaluate on data/test.pkl: Laplacian threshold vs CNN alone vs the ensemble.

Prints accuracy, balanced accuracy, precision and recall for blurry, ROC AUC, expected calibration error and the
confusion matrices, one table per set (CERTH: NaturalBlurSet and DigitalBlurSet apart), at screen scale; then,
for a model with a native-scale meta-network, held-out rendered pages at 'auto' and 'native', large photos made from
the test photos at 'native', and what the content classifier calls the test photos. Saves ROC, confusion-matrix and
reliability-diagram PNGs and native_blur_map.png. Thresholds come from training, never from the test data.
"""
from ensemble.cli_common import (add_mlflow_arg, count_arg, in_repo, probability_arg, run_stage, stage_parser,
                                  stage_tracker)


def main(argv=None):
    p = stage_parser(__doc__)
    p.add_argument("--test", default=in_repo("data/test.pkl"), help="test pickle from load_testdata.py")
    p.add_argument("--models", default=in_repo(""), help="folder holding model/ and final_model/")
    p.add_argument("--plots", default=in_repo("reports"), help="folder for the PNG plots")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")
    p.add_argument("--threshold", type=probability_arg, default=None,
                   help="ensemble threshold, 0-1 or a percentage (default: metadata.json)")
    p.add_argument("--native-pages", type=count_arg, default=300,
                   help="held-out rendered pages the native-scale model is judged on (0: none)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_mlflow_arg(p)
    a = p.parse_args(argv)
    track = stage_tracker(p, a)
    from ensemble.pipeline import evaluate_stage, format_report

    return run_stage(evaluate_stage, a.test, a.models, a.plots, a.json, a.threshold, not a.quiet, a.native_pages,
                     formatter=format_report, track=track)


if __name__ == "__main__":
    raise SystemExit(main())
