"""The scan record: one definition for every surface that reports on images (``blur-detect scan`` in each format,
the Python API, the HTTP service, the review page and the Parquet output of a Ray scan).

A record is built by :meth:`ensemble.detector.BlurResult.record` for an image that was read, and by
:func:`error_record` for one that could not be; :data:`RECORD_FIELDS` names its fields in output order. Anything
that writes records with a fixed layout (a csv header, a Parquet schema) derives it from :data:`RECORD_FIELDS`.
"""
from __future__ import annotations

RECORD_FIELDS = ("path", "label", "blur_probability", "laplacian_var", "width", "height", "error",
                 "blur_kind", "blur_kind_probability", "motion_angle", "blur_extent_px", "noise_sigma",
                 "scale", "content")
"""The fields of a scan record, in output order (csv header, json keys, Parquet columns). ``blur_kind`` is text
('defocus', 'motion') or None; the four after it are numbers or None; ``scale`` the scale the image was judged at
('screen' or 'native'; ``--scale auto`` resolves to one of them) and ``content`` what it shows ('photo' or
'document'), both text, None for a file that could not be read (docs/scan.md#the-record)."""

TEXT_FIELDS = frozenset({"path", "label", "error", "blur_kind", "scale", "content"})
INTEGER_FIELDS = frozenset({"width", "height"})
"""The record's text and whole-number fields; every other field is a number (a measure), any of them may be None.
Typed outputs (the Parquet of a Ray scan) take their column types from these."""


def error_record(path: str, reason: str) -> dict:
    """The record of a file that could not be read: label ``error``, ``reason`` (one line), every measure None."""
    record = dict.fromkeys(RECORD_FIELDS)
    record.update(path=path, label="error", error=reason)
    return record


__all__ = ["INTEGER_FIELDS", "RECORD_FIELDS", "TEXT_FIELDS", "error_record"]
