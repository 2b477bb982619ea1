"""The review's rules: the colour of a verdict, and which photos Apply moves.

Verdict at threshold ``t`` for a blur probability ``p`` (the page draws the same colours, with the band sent by
the server):

* **uncertain** (amber) when ``|p - t| < UNCERTAIN_BAND``: too close to call;
* **blurry** (red) when ``p >= t + UNCERTAIN_BAND``;
* **sharp** (green) when ``p <= t - UNCERTAIN_BAND``.

Apply moves a photo when the user **rejected** it (``r``), or when its verdict is **blurry** and the user did not
mark it **keep** (``k``). Uncertain photos stay unless rejected, so nothing is moved on a coin toss; photos that
could not be read or are not scored yet stay unless rejected.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, NamedTuple, Optional

UNCERTAIN_BAND = 0.1
"""Half-width of the amber band around the threshold, in probability."""

KEEP, REJECT = "keep", "reject"
OVERRIDES = (KEEP, REJECT)


def verdict(p: Optional[float], threshold: float, band: float = UNCERTAIN_BAND) -> Optional[str]:
    """'sharp', 'uncertain' or 'blurry' for a probability; None when there is none (not scored, unreadable)."""
    if p is None:
        return None
    if abs(p - threshold) < band:
        return "uncertain"
    return "blurry" if p > threshold else "sharp"


class Rejected(NamedTuple):
    """A photo Apply would move: its key, why ('rejected' by the user or 'blurry'), and its probability."""

    key: str
    reason: str
    p: Optional[float]


def rejected(photos: Iterable[tuple[str, Optional[float]]], overrides: Mapping[str, str],
             threshold: float) -> list[Rejected]:
    """The photos Apply moves, from ``(key, p)`` pairs, the user's overrides and the threshold, in the order given."""
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold)):
        raise ValueError("threshold must be a number")
    out = []
    for key, p in photos:
        choice = overrides.get(key)
        if choice == REJECT:
            out.append(Rejected(key, "rejected", p))
        elif choice != KEEP and verdict(p, threshold) == "blurry":
            out.append(Rejected(key, "blurry", p))
    return out


__all__ = ["KEEP", "OVERRIDES", "REJECT", "Rejected", "UNCERTAIN_BAND", "rejected", "verdict"]
