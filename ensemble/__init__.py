"""Blur Ensemble: find blurry and out-of-focus photos with a patch CNN, focus measures and a calibrated meta-network.

    from ensemble import BlurDetector
    BlurDetector.load().predict_path("photo.jpg")

Importing this package never imports TensorFlow (only training does), and names load on first use so that
``blur-detect --help`` starts instantly.
"""
__version__ = "0.1.0"
__all__ = ["BlurDetector", "BlurResult", "ImageError", "__version__"]


def __getattr__(name):
    if name in ("BlurDetector", "BlurResult"):
        from . import detector

        return getattr(detector, name)
    if name == "ImageError":
        from .imageio import ImageError

        return ImageError
    raise AttributeError(f"module 'ensemble' has no attribute {name!r}")
