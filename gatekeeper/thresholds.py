"""Threshold policies: turn in-scope and out-of-scope score samples into one operating point.

A message is accepted when its score is >= the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_curve


def threshold_for_false_reject(in_scope_scores: np.ndarray, max_false_reject: float) -> float:
    """The highest threshold that rejects at most ``max_false_reject`` of ``in_scope_scores``."""
    scores = np.sort(np.asarray(in_scope_scores, dtype=np.float64))
    if len(scores) == 0:
        raise ValueError("no in-scope scores to set a threshold from")
    allowed = int(np.floor(max_false_reject * len(scores)))
    return float(scores[min(allowed, len(scores) - 1)])


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold with the rates it gives on labelled data."""

    threshold: float
    false_reject_rate: float
    oos_recall: float


def operating_points(in_scope_scores: np.ndarray, oos_scores: np.ndarray) -> list[OperatingPoint]:
    """Every distinct operating point of the ROC curve (in-scope is the positive class)."""
    labels = np.r_[np.ones(len(in_scope_scores)), np.zeros(len(oos_scores))]
    scores = np.r_[in_scope_scores, oos_scores]
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    finite = np.isfinite(thresholds)
    return [OperatingPoint(float(t), float(1 - tp), float(1 - fp))
            for t, tp, fp in zip(thresholds[finite], tpr[finite], fpr[finite])]


def pick_max_false_reject(points: list[OperatingPoint], rate: float) -> OperatingPoint:
    """Highest OOS recall with at most ``rate`` in-scope messages rejected."""
    allowed = [p for p in points if p.false_reject_rate <= rate + 1e-12]
    return max(allowed, key=lambda p: (p.oos_recall, -p.false_reject_rate)) if allowed else min(
        points, key=lambda p: p.false_reject_rate)


def pick_min_oos_recall(points: list[OperatingPoint], recall: float) -> OperatingPoint:
    """Fewest false rejects with at least ``recall`` of out-of-scope messages rejected."""
    allowed = [p for p in points if p.oos_recall >= recall - 1e-12]
    return min(allowed, key=lambda p: (p.false_reject_rate, -p.oos_recall)) if allowed else max(
        points, key=lambda p: p.oos_recall)


def pick_min_cost(points: list[OperatingPoint], oos_share: float, cost_llm_call: float,
                  cost_false_reject: float) -> OperatingPoint:
    """Lowest expected cost per message: an off-topic message let through costs one LLM call,
    an in-scope message refused costs ``cost_false_reject``."""
    def cost(p: OperatingPoint) -> float:
        return (oos_share * (1 - p.oos_recall) * cost_llm_call
                + (1 - oos_share) * p.false_reject_rate * cost_false_reject)
    return min(points, key=cost)


def pick_youden(points: list[OperatingPoint]) -> OperatingPoint:
    """Maximum of TPR - FPR (Youden's J)."""
    return max(points, key=lambda p: (1 - p.false_reject_rate) - (1 - p.oos_recall))
