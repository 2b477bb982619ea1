"""Metrics on hand-checked inputs."""
import numpy as np

from ensemble.meta import platt
from ensemble.metrics import best_threshold, classification_report, expected_calibration_error


def test_report_counts_and_rates():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    pred = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    prob = np.array([0.1, 0.6, 0.2, 0.9, 0.8, 0.4, 0.7, 0.3])
    r = classification_report(y, prob, pred)
    assert r["confusion"] == [[3, 1], [1, 3]]
    assert r["accuracy"] == 0.75 and r["precision_blurry"] == 0.75 and r["recall_blurry"] == 0.75
    assert r["roc_auc"] == 15 / 16  # one of the 16 (blurry, sharp) pairs is ranked the wrong way


def test_ece_zero_when_calibrated_and_large_when_not():
    y = np.array([1] * 8 + [0] * 2)
    assert expected_calibration_error(y, np.full(10, 0.8)) < 1e-9
    assert abs(expected_calibration_error(y, np.full(10, 0.2)) - 0.6) < 1e-9


def test_best_threshold_both_directions():
    score = np.array([1.0, 2.0, 3.0, 10.0, 11.0, 12.0])
    y = np.array([1, 1, 1, 0, 0, 0])
    t = best_threshold(score, y, blurry_below=True)
    assert 3.0 < t <= 10.0
    t2 = best_threshold(score, 1 - y)
    assert 3.0 < t2 <= 10.0


def test_platt_recovers_a_known_scale():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, 20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-(0.5 * z - 0.3)))).astype(float)
    a, b = platt(z, y)
    assert abs(a - 0.5) < 0.05 and abs(b + 0.3) < 0.08
