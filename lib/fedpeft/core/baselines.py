"""Chance baselines: the score of a predictor that always answers the evaluation set's most frequent label.

A score at or below its baseline carries no signal; reports print each score beside its baseline. Pure functions
of the evaluation labels, so a run stage can record the baseline beside the score it measured.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np


def majority_label(labels: Iterable[int]) -> int:
    """The most frequent label (the smallest one on ties)."""
    values, counts = np.unique(np.asarray(list(labels)), return_counts=True)
    if len(values) == 0:
        raise ValueError("no labels: a chance baseline needs the evaluation set's labels")
    return int(values[np.argmax(counts)])


def majority_baseline(labels: Iterable[int]) -> float:
    """Accuracy (a fraction in [0, 1]) of always predicting the most frequent label of ``labels``."""
    y = np.asarray(list(labels))
    if y.size == 0:
        raise ValueError("no labels: a chance baseline needs the evaluation set's labels")
    return float(np.mean(y == majority_label(y)))


def majority_score(labels: Iterable[int], metric: Callable[[np.ndarray, np.ndarray], float]) -> float:
    """``metric(y_true, y_pred)`` of the constant majority-label predictor, for example macro F1 or binary F1
    (sklearn's metric functions take exactly these arguments)."""
    y = np.asarray(list(labels))
    if y.size == 0:
        raise ValueError("no labels: a chance baseline needs the evaluation set's labels")
    return float(metric(y, np.full_like(y, majority_label(y))))
