#!/usr/bin/env python3
"""Stage 4: train the dense meta-network on CNN patch statistics plus focus measures; write final_model/.

Writes final_model/meta.keras, meta.onnx and metadata.json (data fingerprint and counts, hyper-parameters,
cross-validated metrics, thresholds, date, library versions). It trains on every training image and is validated
and Platt-calibrated on out-of-fold predictions over scene folds: of every image by default, or only of the
scenes CNN.py --meta-fraction kept away from the CNN. Several such networks, one per seed (--members), are
averaged into the one shipped model. Then the kind head (defocus or motion, the blur's extent, the motion's angle)
is trained into final_model/kind.onnx; --kind-only trains only that, beside an existing meta-network.
"""
from ensemble.cli_common import (add_mlflow_arg, count_arg, in_repo, note_replacing_shipped, positive_float,
                                  positive_int, positive_int_list, run_stage, stage_parser, stage_tracker)


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
    p.add_argument("--camera-copies", type=count_arg, default=2,
                   help="copies of each training image with random sensor noise, exposure, noise reduction and JPEG "
                        "that the meta-network also learns from (0: the images as they are only)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the first member")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--kind-only", action="store_true",
                      help="train only the kind head (blur kind, extent, motion angle) into --out/kind.onnx, beside "
                           "the meta-network already there, which is left as it is")
    kind.add_argument("--no-kind", action="store_true", help="train only the meta-network, not the kind head")
    p.add_argument("--kind-copies", type=positive_int, default=4,
                   help="synthetic blurs (defocus, Gaussian, motion) of each sharp photo the kind head learns from")
    p.add_argument("--kind-max-epochs", type=positive_int, default=300, help="epoch limit of each kind-head network")
    add_mlflow_arg(p)
    a = p.parse_args(argv)
    track = stage_tracker(p, a)
    note_replacing_shipped(a.out, "final_model")
    from ensemble.pipeline import train_kind_stage, train_meta_stage

    status = 0
    if not a.kind_only:
        status = run_stage(train_meta_stage, a.train, a.model, a.out, a.folds, a.max_epochs, a.patience, a.hidden,
                           a.dropout, a.l2, a.lr, a.seed, not a.quiet, a.members, a.camera_copies, track=track)
    if status == 0 and not a.no_kind:
        status = run_stage(train_kind_stage, a.train, a.out, copies=a.kind_copies, max_epochs=a.kind_max_epochs,
                           seed=a.seed, progress=not a.quiet, track=track)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
