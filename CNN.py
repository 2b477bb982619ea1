#!/usr/bin/env python3
"""Stage 3: train the from-scratch patch CNN on data/train.pkl and write it to model/.

Writes model/cnn.keras (best checkpoint), model/cnn.onnx (the fast runtime), training_log.csv,
training_curves.png and cnn.json. By default the CNN trains on every training photo; --meta-fraction keeps a share
of the scenes away from it, so that train.py can judge the meta-network on the CNN's honest outputs. Uses a GPU when
the Keras backend (KERAS_BACKEND: tensorflow, jax or torch) sees one, the CPU otherwise (docs/gpu.md).
"""
from ensemble.cli_common import (add_mlflow_arg, in_repo, note_replacing_shipped, positive_float, positive_int,
                                  run_stage, stage_parser, stage_tracker)


def batch_size_arg(text: str):
    """argparse type of --batch-size: 'auto' or a whole number of at least 1."""
    return "auto" if text.strip().lower() == "auto" else positive_int(text)


def main(argv=None):
    p = stage_parser(__doc__)
    p.add_argument("--train", default=in_repo("data/train.pkl"), help="training pickle from load_traindata.py")
    p.add_argument("--out", default=in_repo("model"), help="output folder")
    p.add_argument("--epochs", type=positive_int, default=14,
                   help="epochs (with --meta-fraction, early stopping may end sooner)")
    p.add_argument("--batch-size", type=batch_size_arg, default="auto",
                   help="patches per batch, or 'auto': 128 on a CPU, 512 on a GPU (docs/gpu.md)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="peak learning rate, cosine decay (default: 2e-3; with --batch-size auto, 2e-3 × √(batch / 128): "
                        "2e-3 on a CPU, 4e-3 at a GPU's 512)")
    p.add_argument("--precision", choices=("auto", "float32", "mixed"), default="auto",
                   help="auto: mixed precision on a GPU of compute capability 7.0 or more (float16 under "
                        "TensorFlow, bfloat16 under JAX and torch), float32 elsewhere; the saved model is float32")
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
    add_mlflow_arg(p)
    a = p.parse_args(argv)
    track = stage_tracker(p, a)
    note_replacing_shipped(a.out, "model")
    from ensemble.pipeline import train_cnn_stage

    return run_stage(train_cnn_stage, a.train, a.out, a.epochs, a.batch_size, a.lr, a.patches_per_image,
                     not a.no_synthetic_blur, a.meta_fraction, a.patience, a.seed, 0 if a.quiet else 2,
                     width=a.width, camera_effects=not a.no_camera_effects, precision=a.precision, track=track)


if __name__ == "__main__":
    raise SystemExit(main())
