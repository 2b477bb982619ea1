#!/usr/bin/env python3
"""Stage 4: train the dense meta-network on CNN patch statistics plus focus measures; write final_model/.

Writes final_model/meta.keras, meta.onnx and metadata.json (data fingerprint and counts, hyper-parameters,
cross-validated metrics, thresholds, date, library versions). It trains on every training image and is validated
and Platt-calibrated on out-of-fold predictions over scene folds: of every image by default, or only of the
scenes CNN.py --meta-fraction kept away from the CNN. Several such networks, one per seed (--members), are
averaged into the one shipped model. Then the kind head (defocus or motion, the blur's extent, the motion's angle)
is trained into final_model/kind.onnx; --kind-only trains only that, beside an existing meta-network. Then the
content classifier (photo or document: final_model/content.json) and the native-scale meta-network
(final_model/meta_native.*, for --scale native and for documents at --scale auto), both on rendered pages
(ensemble.documents) and, for native scale, large photos made from the training photos; --stages picks the parts.
"""
from ensemble.cli_common import (add_mlflow_arg, count_arg, in_repo, note_replacing_shipped, positive_float,
                                  positive_int, positive_int_list, run_stage, stage_parser, stage_tracker)

STAGES = ("meta", "kind", "content", "native")


def stage_list(text: str) -> tuple[str, ...]:
    """'meta,native' -> ('meta', 'native'); an unknown part is an argparse error."""
    import argparse

    parts = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in parts if s not in STAGES]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"unknown part(s) {','.join(unknown) or text!r}: "
                                         f"choose from {','.join(STAGES)}")
    return parts


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
    kind.add_argument("--stages", type=stage_list, default=",".join(STAGES),
                      help=f"the parts to train, comma-separated, of {','.join(STAGES)}; each other part in --out "
                           "is left as it is")
    kind.add_argument("--kind-only", action="store_true", help="the same as --stages kind")
    kind.add_argument("--no-kind", action="store_true", help="every part but the kind head")
    p.add_argument("--kind-copies", type=positive_int, default=4,
                   help="synthetic blurs (defocus, Gaussian, motion) of each sharp photo the kind head learns from")
    p.add_argument("--kind-max-epochs", type=positive_int, default=300, help="epoch limit of each kind-head network")
    p.add_argument("--content-pages", type=positive_int, default=600,
                   help="rendered pages (training fonts and layouts) the content classifier learns documents from")
    p.add_argument("--native-pages", type=positive_int, default=3000,
                   help="rendered pages the native-scale meta-network learns from (those within 15 %% of the OCR "
                        "boundary are left out)")
    p.add_argument("--native-photo-copies", type=positive_int, default=2,
                   help="large photos made from each training photo for the native-scale meta-network")
    p.add_argument("--native-members", type=positive_int, default=3,
                   help="native-scale meta-networks averaged into the shipped one")
    p.add_argument("--workers", type=positive_int, default=2, help="processes rendering pages and photos")
    add_mlflow_arg(p)
    a = p.parse_args(argv)
    track = stage_tracker(p, a)
    note_replacing_shipped(a.out, "final_model")
    from ensemble.pipeline import train_content_stage, train_kind_stage, train_meta_stage, train_native_stage

    stages = ("kind",) if a.kind_only else tuple(s for s in a.stages if s != "kind" or not a.no_kind)
    runs = {
        "meta": lambda: run_stage(train_meta_stage, a.train, a.model, a.out, a.folds, a.max_epochs, a.patience,
                                  a.hidden, a.dropout, a.l2, a.lr, a.seed, not a.quiet, a.members, a.camera_copies,
                                  track=track),
        "kind": lambda: run_stage(train_kind_stage, a.train, a.out, copies=a.kind_copies,
                                  max_epochs=a.kind_max_epochs, seed=a.seed, progress=not a.quiet, track=track),
        "content": lambda: run_stage(train_content_stage, a.train, a.out, pages=a.content_pages, seed=a.seed,
                                     workers=a.workers, progress=not a.quiet, track=track),
        "native": lambda: run_stage(train_native_stage, a.train, a.model, a.out, pages=a.native_pages,
                                    photo_copies=a.native_photo_copies, folds=a.folds, members=a.native_members,
                                    max_epochs=a.max_epochs, patience=a.patience, seed=a.seed, workers=a.workers,
                                    progress=not a.quiet, track=track),
    }
    for stage in STAGES:  # in this order whatever the order asked: each part needs only the data and the CNN
        if stage in stages:
            status = runs[stage]()
            if status:
                return status
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
