"""What an image shows: 'photo' or 'document' (text pages, forms, tables, line drawings), from cheap measures of
its analysis-scale grey picture. STUB: being written (see the issue-20 work); the interface is fixed.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CONTENT_FILE = "content.json"
CONTENTS = ("photo", "document")


class ContentModel:
    """P(document) of analysis-scale grey images; ``classify`` gives 'photo' or 'document'."""

    def __init__(self, params: dict):
        self.params = params
        self.threshold = float(params.get("threshold", 0.5))

    @classmethod
    def load(cls, folder) -> "ContentModel | None":
        """``folder``/content.json, or None when there is none."""
        path = Path(folder) / CONTENT_FILE
        return cls(json.loads(path.read_text())) if path.exists() else None

    def predict_proba(self, grays) -> np.ndarray:
        raise NotImplementedError

    def classify(self, gray: np.ndarray) -> str:
        return CONTENTS[int(self.predict_proba([gray])[0] >= self.threshold)]
