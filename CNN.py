#!/usr/bin/env python3
"""Stage 3: train the from-scratch patch CNN on data/train.pkl and write it to model/.

Writes model/cnn.keras (best checkpoint), model/cnn.onnx (the fast runtime), training_log.csv,
training_curves.png and cnn.json. By default the CNN trains on every training photo; --meta-fraction keeps a share
of the scenes away from it, so that train.py can judge the meta-network on the CNN's honest outputs. Uses a GPU when
TensorFlow sees one, the CPU otherwise.
"""
from ensemble.cli_common import (in_repo, note_replacing_shipped, positive_float, positive_int, run_stage,
                                  stage_parser)


def main(argv=None):
    p = stage_parser(__doc__)
    p.add_argument("--train", default=in_repo("data/train.pkl"), help="training pickle from load_traindata.py")
    p.add_argument("--out", default=in_repo("model"), help="output folder")
    p.add_argument("--epochs", type=positive_int, default=14,
                   help="epochs (with --meta-fraction, early stopping may end sooner)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="patches per batch")
    p.add_argument("--lr", type=positive_float, default=2e-3, help="peak learning rate (cosine decay)")
    p.add_argument("--width", type=positive_float, default=1.0,
                   help="filter-count multiplier of every CNN layer (1.0: 16, 32, 64, 96); cost grows as its square")
    p.add_argument("--patches-per-image", type=positive_int, default=16, help="textured patches drawn from each image")
    p.add_argument("--no-synthetic-blur", action="store_true",
                   help="do not add artificially blurred copies of the sharp photos")
    p.add_argument("--no-camera-effects", action="store_true",
                   help="train on the patches as they are, without random sensor noise, exposure, noise reduction "
                        "and JPEG recompression (the default adds them to sharp and blurred patches alike)")
    p.add_argument("--meta-fraction", type=float, default=0.0,
                   help="share of scenes kept away from the CNN, to validate the meta-network on (0: none; "
                        "then every epoch runs and the last is kept)")
    p.add_argument("--patience", type=int, default=5,
                   help="early-stopping patience in epochs (only with --meta-fraction)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    a = p.parse_args(argv)
    note_replacing_shipped(a.out, "model")
    from ensemble.pipeline import train_cnn_stage

    return run_stage(train_cnn_stage, a.train, a.out, a.epochs, a.batch_size, a.lr, a.patches_per_image,
                     not a.no_synthetic_blur, a.meta_fraction, a.patience, a.seed, 0 if a.quiet else 2,
                     width=a.width, camera_effects=not a.no_camera_effects)


if __name__ == "__main__":
    raise SystemExit(main())
