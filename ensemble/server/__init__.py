"""HTTP service: prediction, model registry and training jobs (``blur-detect serve``)."""
