"""Thresholds and the policies that pick them: score samples -> one operating point.

A message is accepted when its score is >= the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


#: The default policy, and ``threshold: auto``'s: at most this share of in-scope messages wrongly rejected.
DEFAULT_MAX_FALSE_REJECT = 0.05


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
    from sklearn.metrics import roc_curve  # imported here: deciding messages never needs it

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


#: z of the two-sided 95% intervals reported with rates (``auto`` estimates, per-intent false rejects).
INTERVAL_Z = 1.959964


def wilson_interval(hits: int, n: int, z: float = INTERVAL_Z) -> tuple[float, float]:
    """Wilson score interval of a proportion ``hits / n`` (95% by default); (0, 1) when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    share = hits / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def rate_with_interval(mask: np.ndarray) -> dict:
    """The share of True in ``mask`` with its Wilson 95% interval: {"rate", "low", "high", "n"} (rate None if empty)."""
    mask = np.asarray(mask, dtype=bool)
    low, high = wilson_interval(int(mask.sum()), len(mask))
    return {"rate": float(mask.mean()) if len(mask) else None, "low": low, "high": high, "n": int(len(mask))}


@dataclass(frozen=True)
class IntentFalseRejects:
    """How often one intent's in-scope messages are refused (see :func:`per_intent_false_reject`)."""

    #: Intent id (catalog order).
    intent: int
    #: In-scope messages of this intent.
    rows: int
    #: How many of them were refused.
    refused: int
    rate: float
    #: Wilson 95% interval of ``rate``.
    low: float
    high: float
    #: ``low`` is above the policy's false-reject rate, with at least ``min_rows`` rows: far above
    #: the policy, not by chance.
    flagged: bool


def per_intent_false_reject(in_scope_scores: np.ndarray, predicted: np.ndarray, thresholds: np.ndarray | float,
                            intents: np.ndarray | None = None, max_false_reject: float = 0.05,
                            min_rows: int = 5) -> list[IntentFalseRejects]:
    """Each intent's own false-reject rate, worst first, flagging those far above the policy.

    ``in_scope_scores`` are the gate scores of in-scope messages and
    ``predicted`` their routed (top-1) intent ids, whose threshold applies
    (``thresholds``: one per intent in catalog order, or one for all). Rows
    are grouped by ``intents`` (the intent each message really belongs to,
    e.g. its label) if given, else by ``predicted``. An intent is flagged
    when the lower end of its rate's Wilson 95% interval is above
    ``max_false_reject`` and it has at least ``min_rows`` messages: a policy
    of 5% overall can hide an intent refused a third of the time, and this
    tells it from an intent unlucky in a handful of messages.
    """
    scores = np.asarray(in_scope_scores, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.int64)
    if np.ndim(thresholds) == 0:
        refused = scores < float(thresholds)
    else:
        refused = scores < np.asarray(thresholds, dtype=np.float64)[predicted]
    groups = predicted if intents is None else np.asarray(intents, dtype=np.int64)
    result = []
    for intent in np.unique(groups[groups >= 0]):
        rows = groups == intent
        count, hits = int(rows.sum()), int(refused[rows].sum())
        low, high = wilson_interval(hits, count)
        result.append(IntentFalseRejects(intent=int(intent), rows=count, refused=hits, rate=hits / count, low=low,
                                         high=high, flagged=count >= min_rows and low > max_false_reject))
    return sorted(result, key=lambda q: (-q.low, -q.rate, -q.rows, q.intent))


@dataclass(frozen=True)
class Policy:
    """How to choose the operating point on the ROC curve."""

    kind: str = "max_false_reject"
    max_false_reject: float = DEFAULT_MAX_FALSE_REJECT
    min_oos_recall: float = 0.9
    cost_llm_call: float = 1.0
    cost_false_reject: float = 10.0

    def pick(self, points: list[OperatingPoint], oos_share: float) -> OperatingPoint:
        """The operating point this policy selects."""
        if self.kind == "max_false_reject":
            return pick_max_false_reject(points, self.max_false_reject)
        if self.kind == "min_oos_recall":
            return pick_min_oos_recall(points, self.min_oos_recall)
        if self.kind == "min_cost":
            return pick_min_cost(points, oos_share, self.cost_llm_call, self.cost_false_reject)
        return pick_youden(points)
