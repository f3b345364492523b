"""Calibrate a gate on labelled traffic: refit the score calibrator, then pick thresholds by a policy.

The calibrator is refitted on the validation rows, and the thresholds are
chosen on cross-fitted (out-of-fold) calibrated scores, so the operating point
is not picked on scores the calibrator was fitted to.

:func:`preview` says what tuning would change before anything is written;
:func:`rederive` re-picks the thresholds of a saved tuning from the rows it
stored, after a catalog edit.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Iterable, Sequence

import numpy as np
from sklearn.model_selection import StratifiedKFold

from gatekeeper.catalog.labelled_data import OOS_LABEL, Row
from gatekeeper.catalog.schema import intent_key
from gatekeeper.core.calibrator import Calibrator
from gatekeeper.core.offtopic import vetoed_scores
from gatekeeper.core.router import Thresholds
from gatekeeper.core.scoring import HeadScorer
from gatekeeper.core.thresholds import (IntentFalseRejects, OperatingPoint, Policy, operating_points,
                                        per_intent_false_reject)
from gatekeeper.errors import UserError
from gatekeeper.gate import TUNING_REDERIVED, TUNING_STALE, Gate
from gatekeeper.measure.evaluation import ScoredSet, accepted_mask, metrics, score_rows
from gatekeeper.store.tuning_file import Tuning, load_stored_rows, resolve_thresholds, rows_path, tuning_path

log = logging.getLogger(__name__)

#: Fewest in-scope rows, and fewest off-topic rows, a policy is picked on (``--min-rows`` overrides it).
MIN_ROWS = 30
CALIBRATION_FOLDS = 5
#: An intent needs this many validation rows routed to it for a threshold of its own.
PER_INTENT_MIN_ROWS = 10
#: Pseudo-rows of the global threshold mixed into each per-intent threshold (shrinkage strength).
PER_INTENT_PRIOR_ROWS = 20


@dataclass
class TuneResult:
    """Everything ``tune`` decided, for saving and reporting."""

    tuning: Tuning
    points: list[OperatingPoint]
    chosen: OperatingPoint
    in_scope_scores: np.ndarray
    oos_scores: np.ndarray
    thresholds: Thresholds
    #: Every intent's own false-reject rate at ``thresholds`` (cross-fitted scores, rows grouped by their
    #: label), worst first; ``flagged`` ones are far above the policy (:func:`intent_false_rejects`).
    intent_false_rejects: list[IntentFalseRejects] = field(default_factory=list)


def tune(gate: Gate, scored: ScoredSet, policy: Policy, per_intent: bool, override: bool) -> TuneResult:
    """Fit the calibrator and thresholds of ``gate`` on the scored validation set."""
    inside = scored.in_scope
    if inside.all() or not inside.any():
        raise UserError("tuning needs both in-scope and out-of-scope rows; mark off-topic rows with label "
                        "'oos' or name their label with --oos-label")
    scorer = gate.router_.scorer
    calibrator = None
    scores = scored.scores
    if isinstance(scorer, HeadScorer):
        scores = _cross_fitted_scores(scored.batch.features, inside)
        if len(scored.vetoed) == len(scores):  # rows the conversation rule rejected, as score_rows lowered them
            scores = vetoed_scores(scores, scored.vetoed)
        calibrator = Calibrator.fit(scored.batch.features, inside).to_dict()
    points = operating_points(scores[inside], scores[~inside])
    chosen = policy.pick(points, oos_share=float((~inside).mean()))
    per_intent_thresholds = (_per_intent_thresholds(scored, scores, chosen.threshold, policy,
                                                    gate.catalog_.intent_names()) if per_intent else {})
    tuning = Tuning(fingerprint=gate.artifacts_.fingerprint, global_threshold=chosen.threshold,
                    per_intent=per_intent_thresholds, override=override, calibrator=calibrator,
                    policy=asdict(policy))
    thresholds = resolve_thresholds(gate.catalog_, gate.artifacts_.auto_threshold, tuning)
    tuning.validation = metrics(_rescored(scored, scores), thresholds.per_intent)
    return TuneResult(tuning=tuning, points=points, chosen=chosen, in_scope_scores=scores[inside],
                      oos_scores=scores[~inside], thresholds=thresholds,
                      intent_false_rejects=intent_false_rejects(scored, scores, thresholds, policy, chosen))


def intent_false_rejects(scored: ScoredSet, scores: np.ndarray, thresholds: Thresholds, policy: Policy,
                         chosen: OperatingPoint) -> list[IntentFalseRejects]:
    """Each intent's own false-reject rate on the in-scope rows labelled with it, worst first.

    A row is refused when its score is below the threshold of the intent it is
    routed to. An intent is flagged when its rate is far above the policy: the
    lower end of its Wilson 95% interval is above the policy's false-reject
    rate (the chosen operating point's for policies without one), so an
    overall 5% cannot hide an intent refused a third of the time, and a few
    unlucky rows do not raise a flag. ``--per-intent`` gives such intents a
    threshold of their own, shrunk toward the global one.
    """
    inside = scored.in_scope
    limit = policy.max_false_reject if policy.kind == "max_false_reject" else chosen.false_reject_rate
    return per_intent_false_reject(scores[inside], scored.predicted_intent[inside], thresholds.per_intent,
                                   intents=scored.true_intent[inside], max_false_reject=limit)


def _cross_fitted_scores(features: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Calibrated scores of each row from a calibrator fitted on the other folds."""
    folds = min(CALIBRATION_FOLDS, int(inside.sum()), int((~inside).sum()))
    if folds < 2:
        return Calibrator.fit(features, inside).probability(features)
    scores = np.zeros(len(inside), dtype=np.float32)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    for train, test in splitter.split(features, inside):
        scores[test] = Calibrator.fit(features[train], inside[train]).probability(features[test])
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


def check_enough_rows(scored: ScoredSet, min_rows: int, source: str) -> None:
    """Raise :class:`UserError` unless ``scored`` has ``min_rows`` in-scope rows and ``min_rows`` off-topic rows."""
    in_scope, off_topic = int(scored.in_scope.sum()), int((~scored.in_scope).sum())
    if in_scope >= min_rows and off_topic >= min_rows:
        return
    raise UserError(
        f"{source}: too little labelled data to pick thresholds on: {in_scope} in-scope and {off_topic} off-topic "
        f"rows, and a policy needs at least {min_rows} of each, or the thresholds follow the noise of a few rows. "
        f"Label more rows (off-topic rows with 'oos' or a label given with --oos-label), or pass --min-rows N to "
        "tune on fewer (for experts); nothing was written")


@dataclass(frozen=True)
class TunePreview:
    """What tuning would change, measured on the given rows; JSON-ready (``dataclasses.asdict``).

    ``before`` and ``after`` hold the same figures (:func:`figures`), at the
    thresholds in force now and at those tuning would pick.
    """

    before: dict
    after: dict
    #: Rows scored, of which in scope and off topic.
    rows: int
    in_scope: int
    off_topic: int


@dataclass
class TunePlan:
    """A tuning ready to save: the result, its preview, and the rows to store beside it."""

    result: TuneResult
    preview: TunePreview
    #: The rows tuned on, off-topic ones labelled ``oos``, as :func:`~gatekeeper.store.tuning_file.save_tuning` stores them.
    rows: list[Row]


def figures(gate: Gate, scored: ScoredSet, thresholds: Thresholds) -> dict:
    """The figures of a :class:`TunePreview` column: the thresholds, and what they do on ``scored``.

    ``threshold_source`` (auto, catalog or tuned), ``global_threshold``,
    ``per_intent_thresholds`` (intents whose threshold is not the global one),
    ``false_reject_rate`` (in-scope rows refused), ``oos_recall`` (off-topic
    rows refused) and ``llm_calls_saved_per_1000`` (rows refused or answered by
    a ``reply``/``handoff`` intent, per 1,000 rows: the sidecar's
    ``gatekeeper_llm_calls_saved_total``).
    """
    accepted = accepted_mask(scored, thresholds.per_intent)
    answered_here = np.array([intent.action != "forward" for intent in gate.catalog_.intents])
    saved = ~accepted | answered_here[scored.predicted_intent]
    inside = scored.in_scope
    return {"threshold_source": thresholds.source, "global_threshold": float(thresholds.global_threshold),
            "per_intent_thresholds": int((~np.isclose(thresholds.per_intent, thresholds.global_threshold)).sum()),
            "false_reject_rate": float(np.mean(~accepted[inside])), "oos_recall": float(np.mean(~accepted[~inside])),
            "llm_calls_saved_per_1000": float(1000 * np.mean(saved))}


def plan(gate: Gate, rows: Sequence[Row], policy: Policy, per_intent: bool = False, *,
         oos_labels: Iterable[str] = (OOS_LABEL,), override: bool = False, min_rows: int = MIN_ROWS,
         source: str = "the data", show_progress: bool = False) -> TunePlan:
    """Score ``rows``, check there are enough, tune, and compare with the thresholds in force; writes nothing.

    Raises :class:`UserError` for unknown labels, too few rows
    (:func:`check_enough_rows`) or a missing class.
    """
    oos_keys = frozenset(intent_key(label) for label in oos_labels)
    scored, result = _fit(gate, rows, policy, per_intent, override, oos_keys, min_rows, source, show_progress)
    result.tuning.stored_rows = {"per_intent": per_intent, "min_rows": min_rows}
    inside = int(scored.in_scope.sum())
    stored = [(row[0], OOS_LABEL if intent_key(row[1]) in oos_keys else row[1], *row[2:]) for row in rows]
    scores = np.empty(len(scored.rows), dtype=np.float64)
    scores[scored.in_scope], scores[~scored.in_scope] = result.in_scope_scores, result.oos_scores
    comparison = TunePreview(before=figures(gate, scored, gate.router_.thresholds),
                             after=figures(gate, _rescored(scored, scores), result.thresholds),
                             rows=len(scored.rows), in_scope=inside, off_topic=len(scored.rows) - inside)
    return TunePlan(result=result, preview=comparison, rows=stored)


def preview(gate: Gate, rows: Sequence[Row], policy: Policy, per_intent: bool = False, *,
            oos_labels: Iterable[str] = (OOS_LABEL,), override: bool = False, min_rows: int = MIN_ROWS,
            source: str = "the data") -> TunePreview:
    """What ``gatekeeper tune`` would change, without writing anything.

    Signature: ``preview(gate, rows, policy, per_intent=False, *, oos_labels=("oos",), override=False,
    min_rows=30, source="the data") -> TunePreview``.

    ``rows`` are ``(text, label)`` or ``(text, label, context)`` tuples
    (:data:`gatekeeper.catalog.labelled_data.Row`; context: the earlier user turns,
    oldest first); labels are intent names or an ``oos_labels`` label. ``before``
    holds the figures at the gate's thresholds in force, ``after`` those of the
    tuning ``policy`` would pick, on cross-fitted scores (the refitted
    calibrator never scores the rows it was fitted on). Raises
    :class:`UserError` with the fix for unknown labels or too little data.
    """
    return plan(gate, rows, policy, per_intent, oos_labels=oos_labels, override=override, min_rows=min_rows,
                source=source).preview


def rederive(gate: Gate, saved: Tuning) -> tuple[Tuning | None, str, str | None]:
    """The thresholds and calibrator of ``saved`` re-picked on its stored rows by ``gate`` (fitted without tuning):
    the tuning to put in force, its status and, when stale, why.

    For a tuning made for another catalog or model (a fingerprint mismatch):
    the rows ``tune`` stored beside it are scored by the new gate and tuned
    with the saved policy, per-intent choice and minimum row count. The
    result is logged; the status is ``re-derived``, or ``stale`` (no tuning:
    the catalog's own or auto thresholds, and the problem saying why) when
    the rows are missing, changed, too few, or have labels the catalog no
    longer has.
    """
    settings = saved.stored_rows
    try:
        rows = load_stored_rows(gate.catalog_path_, saved)
        _, result = _fit(gate, rows, _saved_policy(saved), bool(settings.get("per_intent")), saved.override,
                         frozenset({OOS_LABEL}), int(settings.get("min_rows", MIN_ROWS)),
                         str(rows_path(tuning_path(gate.catalog_path_))), False)
    except UserError as error:
        problem = (f"the catalog or model changed since 'gatekeeper tune' and its thresholds cannot be re-derived "
                   f"({error}); the catalog's own or auto thresholds are in force until you rerun 'gatekeeper tune'")
        log.warning("tuning_stale", extra={"catalog": gate.catalog_path_, "problem": problem})
        return None, TUNING_STALE, problem
    tuning = replace(result.tuning, stored_rows=settings)
    log.info("tuning_rederived", extra={"catalog": gate.catalog_path_, "rows": settings.get("rows"),
                                        "policy": saved.policy.get("kind"), "threshold": tuning.global_threshold,
                                        "hint": "the catalog or model changed since 'gatekeeper tune'; rerun it to "
                                                "review and keep the new thresholds"})
    return tuning, TUNING_REDERIVED, None


def _fit(gate: Gate, rows: Sequence[Row], policy: Policy, per_intent: bool, override: bool,
         oos_labels: frozenset[str], min_rows: int, source: str, show_progress: bool) -> tuple[ScoredSet, TuneResult]:
    """Score, check there are enough rows, tune."""
    scored = score_rows(gate, rows, set(oos_labels), show_progress=show_progress, source=source)
    check_enough_rows(scored, min_rows, source)
    return scored, tune(gate, scored, policy, per_intent=per_intent, override=override)


def _rescored(scored: ScoredSet, scores: np.ndarray) -> ScoredSet:
    """``scored`` with other scores (the cross-fitted ones tune picks thresholds on)."""
    return replace(scored, batch=replace(scored.batch, score=scores))


def _saved_policy(saved: Tuning) -> Policy:
    """The :class:`Policy` of a saved tuning; :class:`UserError` if the file's ``policy`` is not one."""
    known = {item.name for item in fields(Policy)}
    if not saved.policy or set(saved.policy) - known:
        raise UserError(f"the tuning file's policy {saved.policy} is not one tune writes (keys: {', '.join(known)})")
    return Policy(**saved.policy)
