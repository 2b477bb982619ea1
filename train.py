#!/usr/bin/env python3
"""Stage 4: train the dense meta-network on CNN patch statistics plus focus measures; write final_model/.

Writes final_model/meta.keras, meta.onnx and metadata.json (data fingerprint and counts, hyper-parameters,
cross-validated metrics, thresholds, date, library versions). It trains on every training image and is validated
and Platt-calibrated on out-of-fold predictions over scene folds: of every image by default, or only of the
scenes CNN.py --meta-fraction kept away from the CNN. Several such networks, one per seed (--members), are
averaged into the one shipped model.
"""
from ensemble.cli_common import (in_repo, note_replacing_shipped, positive_float, positive_int, positive_int_list,
                                  run_stage, stage_parser)


def main(argv=None):
    p = stage_parser(__doc__)
    p.add_argument("--train", default=in_repo("data/train.pkl"), help="training pickle from load_traindata.py")
    p.add_argument("--model", default=in_repo("model"), help="folder of the trained CNN (from CNN.py)")
    p.add_argument("--out", default=in_repo("final_model"), help="output folder")
    p.add_argument("--folds", type=int, default=5, help="scene-grouped cross-validation folds")
    p.add_argument("--max-epochs", type=positive_int, default=400, help="epoch limit per fold")
    p.add_argument("--patience", type=int, default=40, help="early-stopping patience in epochs")
    p.add_argument("--hidden", type=positive_int_list, default="32,16", help="hidden layer widths, comma-separated")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout after each hidden layer")
    p.add_argument("--l2", type=float, default=1e-3, help="L2 weight penalty")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="Adam learning rate")
    p.add_argument("--members", type=positive_int, default=5,
                   help="meta-networks averaged into the shipped one, each with its own seed (--seed, --seed + 1, …)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the first member")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    note_replacing_shipped(a.out, "final_model")
    from ensemble.pipeline import train_meta_stage

    return run_stage(train_meta_stage, a.train, a.model, a.out, a.folds, a.max_epochs, a.patience, a.hidden,
                     a.dropout, a.l2, a.lr, a.seed, not a.quiet, a.members)


if __name__ == "__main__":
    raise SystemExit(main())
