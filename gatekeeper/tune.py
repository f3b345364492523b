"""Calibrate a gate on labelled traffic: refit the score calibrator, then pick thresholds by a policy.

The calibrator is refitted on the validation rows, and the thresholds are
chosen on cross-fitted (out-of-fold) calibrated scores, so the operating point
is not picked on scores the calibrator was fitted to.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
from sklearn.model_selection import StratifiedKFold

from gatekeeper.errors import UserError
from gatekeeper.build import AUTO_FALSE_REJECT
from gatekeeper.evaluation import ScoredSet, metrics
from gatekeeper.gate import Gate
from gatekeeper.router import Thresholds
from gatekeeper.scoring import HeadScorer
from gatekeeper.thresholds import (OperatingPoint, operating_points, pick_max_false_reject, pick_min_cost,
                                   pick_min_oos_recall, pick_youden)
from gatekeeper.tuning_file import Tuning, resolve_thresholds

CALIBRATION_FOLDS = 5
#: An intent needs this many validation rows routed to it for a threshold of its own.
PER_INTENT_MIN_ROWS = 10
#: Pseudo-rows of the global threshold mixed into each per-intent threshold (shrinkage strength).
PER_INTENT_PRIOR_ROWS = 20


@dataclass(frozen=True)
class Policy:
    """How to choose the operating point on the ROC curve."""

    kind: str = "max_false_reject"
    max_false_reject: float = AUTO_FALSE_REJECT
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


@dataclass
class TuneResult:
    """Everything ``tune`` decided, for saving and reporting."""

    tuning: Tuning
    points: list[OperatingPoint]
    chosen: OperatingPoint
    in_scope_scores: np.ndarray
    oos_scores: np.ndarray
    thresholds: Thresholds


def tune(gate: Gate, scored: ScoredSet, policy: Policy, per_intent: bool, override: bool) -> TuneResult:
    """Fit the calibrator and thresholds of ``gate`` on the scored validation set."""
    inside = scored.in_scope
    if inside.all() or not inside.any():
        raise UserError("tuning needs both in-scope and out-of-scope rows; mark off-topic rows with label "
                        "'oos' or name their label with --oos-label")
    scorer = gate.router.scorer
    calibrator = None
    scores = scored.scores
    if isinstance(scorer, HeadScorer):
        scores = _cross_fitted_scores(scorer, scored.batch.features, inside)
        calibrator = scorer.refit_calibrator(scored.batch.features, inside).calibrator()
    points = operating_points(scores[inside], scores[~inside])
    chosen = policy.pick(points, oos_share=float((~inside).mean()))
    per_intent_thresholds = (_per_intent_thresholds(scored, scores, chosen.threshold, policy,
                                                    gate.catalog.intent_names()) if per_intent else {})
    tuning = Tuning(fingerprint=gate.artifacts.fingerprint, global_threshold=chosen.threshold,
                    per_intent=per_intent_thresholds, override=override, calibrator=calibrator,
                    policy=asdict(policy))
    thresholds = resolve_thresholds(gate.catalog, gate.artifacts.auto_threshold, tuning)
    tuning.validation = metrics(replace(scored, batch=replace(scored.batch, score=scores)), thresholds.per_intent)
    return TuneResult(tuning=tuning, points=points, chosen=chosen, in_scope_scores=scores[inside],
                      oos_scores=scores[~inside], thresholds=thresholds)


def _cross_fitted_scores(scorer: HeadScorer, features: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Calibrated scores of each row from a calibrator fitted on the other folds."""
    folds = min(CALIBRATION_FOLDS, int(inside.sum()), int((~inside).sum()))
    if folds < 2:
        return scorer.refit_calibrator(features, inside).calibrate(features)
    scores = np.zeros(len(inside), dtype=np.float32)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    for train, test in splitter.split(features, inside):
        scores[test] = scorer.refit_calibrator(features[train], inside[train]).calibrate(features[test])
    return scores


def _per_intent_thresholds(scored: ScoredSet, scores: np.ndarray, global_threshold: float, policy: Policy,
                           names: list[str]) -> dict[str, float]:
    """Thresholds for intents with enough validation rows, shrunk toward the global threshold.

    Rows are grouped by the intent they are routed to (the top-1 prediction),
    since that intent's threshold is the one applied to them. A group needs
    ``PER_INTENT_MIN_ROWS`` in-scope rows and at least one off-topic row; the
    policy picks its own operating point, which is then averaged with the
    global threshold, weighted by rows (``PER_INTENT_PRIOR_ROWS`` for the global).
    """
    result = {}
    predicted = scored.predicted_intent
    inside = scored.in_scope
    for intent_id, name in enumerate(names):
        rows = predicted == intent_id
        group_in, group_oos = scores[rows & inside], scores[rows & ~inside]
        if len(group_in) < PER_INTENT_MIN_ROWS or not len(group_oos):
            continue
        local = policy.pick(operating_points(group_in, group_oos), float((~inside).mean())).threshold
        weight = len(group_in) / (len(group_in) + PER_INTENT_PRIOR_ROWS)
        result[name] = float(weight * local + (1 - weight) * global_threshold)
    return result

