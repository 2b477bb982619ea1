"""Camera focus monitor (``blur-detect cameras``)."""
