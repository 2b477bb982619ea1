"""Blur Ensemble: find blurry and out-of-focus photos with a patch CNN, focus measures and a calibrated meta-network.

    from ensemble import BlurDetector
    BlurDetector.load().predict_path("photo.jpg")

Importing this package never imports TensorFlow (only training does), and names load on first use so that
``blur-detect --help`` starts instantly.
"""
__version__ = "0.1.0"

_PUBLIC = {  # name -> the module that defines it (imported on first use)
    "BlurDetector": "detector",   # load the model; predict_path / predict_paths / predict_array
    "BlurResult": "detector",     # one verdict; .record(path) is the scan record
    "LABELS": "detector",         # a record's labels: blurry, sharp, flat, error
    "ImageError": "imageio",      # an unreadable image (one-line reason)
    "load_image": "imageio",      # decode a file at the analysis scale, as the models see it
    "expand_paths": "scan",       # files and folders -> the images a scan reads
    "scan_paths": "scan",         # decode and score many images on worker threads
    "plan_moves": "sorting",      # where blurry files would go
    "apply_moves": "sorting",     # move them, journalled
    "undo": "sorting",            # put them back from a journal
}
__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'ensemble' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
