"""Blur Ensemble: find blurry and out-of-focus photos with a patch CNN, focus measures and a calibrated meta-network.

    from ensemble import BlurDetector
    BlurDetector.load().predict_path("photo.jpg")

Importing this package never imports TensorFlow; only training does.
"""
from .detector import BlurDetector, BlurResult
from .imageio import ImageError

__version__ = "0.1.0"
__all__ = ["BlurDetector", "BlurResult", "ImageError", "__version__"]
