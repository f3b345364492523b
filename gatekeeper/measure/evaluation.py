"""Score labelled messages with a gate, and measure how well it separates in-scope from off-topic.

Shared by ``gatekeeper eval`` and ``gatekeeper tune``.
"""

from __future__ import annotations

import difflib
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve
from tqdm import tqdm

from gatekeeper.catalog.labelled_data import Row
from gatekeeper.catalog.schema import intent_key
from gatekeeper.core.conversation import rejected_in_context
from gatekeeper.core.offtopic import vetoed_scores
from gatekeeper.core.scoring import ScoreBatch
from gatekeeper.errors import UserError
from gatekeeper.gate import Gate

#: Texts embedded per encoder call while scoring a file.
EMBED_BATCH = 256

#: :func:`per_intent_metrics` flags an intent whose false-reject rate is over this multiple of the overall one ...
FLAG_RATIO = 2.0
#: ... and that has at least this many in-scope rows.
FLAG_MIN_ROWS = 3

#: The kinds of mistake :func:`error_rows` reports, in the order it lists them.
FALSE_REJECT, FALSE_ACCEPT, WRONG_INTENT = "false_reject", "false_accept", "wrong_intent"
ERROR_KINDS = (FALSE_REJECT, FALSE_ACCEPT, WRONG_INTENT)


@dataclass
class ScoredSet:
    """A labelled file scored by a gate. Index arrays refer to the catalog's intent order."""

    #: The normalised texts that were scored (of a row with context, the text that decided it: :func:`score_rows`).
    texts: list[str]
    #: The (text, label) rows as read from the file, aligned with ``texts`` (rows with an empty text are dropped).
    rows: list[tuple[str, str]]
    #: True for in-scope rows.
    in_scope: np.ndarray
    #: Catalog intent id of each in-scope row (-1 for out-of-scope rows or unknown labels).
    true_intent: np.ndarray
    batch: ScoreBatch
    #: True for rows with context that the conversation rule rejected although their scored text passes alone
    #: (:func:`~gatekeeper.core.conversation.rejected_in_context`; their scores are already lowered, as the sidecar decides).
    vetoed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @property
    def predicted_intent(self) -> np.ndarray:
        """Top-1 intent id of every row."""
        return self.batch.intent_scores.argmax(axis=1)

    @property
    def scores(self) -> np.ndarray:
        """The gate score of every row."""
        return self.batch.score


def score_rows(gate: Gate, rows: Sequence[Row], oos_labels: set[str], show_progress: bool = True,
               source: str = "the data") -> ScoredSet:
    """Embed and score every (text, label) row; rows that normalise to nothing are dropped.

    A (text, label, context) row is scored the way the sidecar decides it,
    with :func:`~gatekeeper.core.conversation.decide_turn` (default follow-up
    settings): a follow-up with its earlier turns, a ``continue`` intent's
    message with its context's decision. Only the text whose score decided
    (:attr:`~gatekeeper.core.conversation.TurnDecision.scored_text`) is scored.

    Labels match intent names case-insensitively (:func:`intent_key`). A label
    that is neither an intent nor in ``oos_labels`` is a :class:`UserError`
    listing every such label, so nothing is measured or tuned on rows the
    catalog cannot score.
    """
    names = {intent_key(name): i for i, name in enumerate(gate.catalog_.intent_names())}
    oos_keys = {intent_key(label) for label in oos_labels}
    _check_labels([row[1] for row in rows], names, oos_keys, gate.catalog_.intent_names(), source)
    kept: list[tuple[str, str]] = []
    texts: list[str] = []
    vetoed: list[bool] = []
    for text, label, *context in rows:
        turn = gate.decide_turn(text, context[0]) if context else None
        clean = turn.scored_text if turn is not None else gate.prepare(text)[0]
        if clean:
            kept.append((text, label))
            texts.append(clean)
            vetoed.append(turn is not None and rejected_in_context(turn))
    if not kept:
        raise UserError(f"{source}: no scorable rows: every text is empty")
    parts = []
    with tqdm(total=len(texts), desc="scoring", unit="text", file=sys.stderr,
              disable=None if show_progress and len(texts) > EMBED_BATCH else True) as bar:
        for start in range(0, len(texts), EMBED_BATCH):
            parts.append(gate.embed(texts[start:start + EMBED_BATCH]))
            bar.update(min(EMBED_BATCH, len(texts) - start))
    vectors = np.concatenate(parts)
    batch = gate.router_.scorer.score(vectors, texts)
    if any(vetoed):  # rejected by the conversation rule although the text alone passes: as the sidecar decided
        batch = replace(batch, score=vetoed_scores(batch.score, np.array(vetoed)))
    in_scope = np.array([intent_key(label) not in oos_keys for _, label in kept])
    true_intent = np.array([names[intent_key(label)] if inside else -1 for (_, label), inside in zip(kept, in_scope)])
    return ScoredSet(texts=texts, rows=kept, in_scope=in_scope, true_intent=true_intent, batch=batch,
                     vetoed=np.array(vetoed, dtype=bool))


def _check_labels(labels: list[str], intents: dict[str, int], oos_keys: set[str], names: list[str],
                  source: str) -> None:
    """Raise a :class:`UserError` naming every label that is no intent and no out-of-scope label."""
    unknown = Counter(label for label in labels if intent_key(label) not in intents and intent_key(label) not in oos_keys)
    if not unknown:
        return
    lines = []
    for label, count in unknown.most_common():
        near = difflib.get_close_matches(label, names, n=2, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(n) for n in near)}?" if near else "no intent has a similar name"
        lines.append(f"  {label!r}: {count} row{'s' if count > 1 else ''}; {hint}")
    raise UserError(
        f"{source}: {len(unknown)} label{'s are' if len(unknown) > 1 else ' is'} not an intent of the catalog "
        f"({sum(unknown.values())} rows):\n" + "\n".join(lines) + "\n"
        "fix: rename them to the catalog's intent names, mark off-topic labels with --oos-label LABEL, or add "
        "the intents to the catalog; nothing was measured or written")


def metrics(scored: ScoredSet, thresholds: np.ndarray) -> dict:
    """The quality figures of a scored set at the given per-intent thresholds."""
    inside = scored.in_scope
    predicted = scored.predicted_intent
    accepted = accepted_mask(scored, thresholds)
    n_in, n_oos = int(inside.sum()), int((~inside).sum())
    result: dict = {"n": int(len(inside)), "n_oos": n_oos}
    result["in_scope_accuracy"] = _rate(predicted[inside] == scored.true_intent[inside])
    if n_in and n_oos:
        labels = inside.astype(int)
        result["auroc"] = float(roc_auc_score(labels, scored.scores))
        fpr, tpr, _ = roc_curve(labels, scored.scores)
        result["fpr_at_95_tpr"] = float(fpr[np.searchsorted(tpr, 0.95, side="left")])
    else:
        result["auroc"] = result["fpr_at_95_tpr"] = None
    result["oos_recall"] = _rate(~accepted[~inside])
    result["false_reject_rate"] = _rate(~accepted[inside])
    rejected = ~accepted
    result["oos_precision"] = _rate(~inside[rejected])
    correct = np.where(inside, accepted & (predicted == scored.true_intent), rejected)
    result["accuracy_with_oos"] = _rate(correct)
    result["rejected_share"] = _rate(rejected)
    return result


def accepted_mask(scored: ScoredSet, thresholds: np.ndarray) -> np.ndarray:
    """Which rows the gate lets through: score >= the threshold of the row's routed (top-1) intent."""
    return scored.scores >= thresholds[scored.predicted_intent]


@dataclass(frozen=True)
class IntentQuality:
    """How well the gate handles one intent, end to end (see :func:`per_intent_metrics`)."""

    intent: str
    #: In-scope rows labelled with this intent.
    support: int
    #: Rows the gate accepted as this intent.
    predicted: int
    #: Share of ``predicted`` that really are this intent (None when nothing was accepted as it).
    precision: float | None
    #: Share of ``support`` accepted as this intent (None without rows).
    recall: float | None
    f1: float
    #: Share of ``support`` the gate refused (None without rows).
    false_reject_rate: float | None
    #: False-reject rate over :data:`FLAG_RATIO` times the overall one, with at least :data:`FLAG_MIN_ROWS` rows.
    flagged: bool


def per_intent_metrics(scored: ScoredSet, thresholds: np.ndarray, names: list[str]) -> list[IntentQuality]:
    """Precision, recall, F1 and false-reject rate of every intent that has rows or was predicted, worst first.

    End to end, as a customer sees it: a row counts as predicted intent X only
    if the gate accepted it as X (a refused row is predicted off topic), so
    off-topic rows let through as X lower X's precision and refused rows of X
    lower its recall. Sorted by F1 ascending, then false-reject rate
    descending, then support descending.
    """
    accepted = accepted_mask(scored, thresholds)
    predicted = np.where(accepted, scored.predicted_intent, -1)
    truth = np.where(scored.in_scope, scored.true_intent, -1)
    overall = _rate(~accepted[scored.in_scope])
    result = []
    for intent, name in enumerate(names):
        labelled, chosen = truth == intent, predicted == intent
        support, n_predicted = int(labelled.sum()), int(chosen.sum())
        if not support and not n_predicted:
            continue
        hits = int((labelled & chosen).sum())
        refused = _rate(~accepted[labelled])
        flagged = (support >= FLAG_MIN_ROWS and refused is not None and overall is not None
                   and refused > FLAG_RATIO * overall)
        result.append(IntentQuality(intent=name, support=support, predicted=n_predicted,
                                    precision=hits / n_predicted if n_predicted else None,
                                    recall=hits / support if support else None,
                                    f1=2 * hits / (support + n_predicted), false_reject_rate=refused, flagged=flagged))
    return sorted(result, key=lambda q: (q.f1, -(q.false_reject_rate or 0.0), -q.support, q.intent))


@dataclass(frozen=True)
class ErrorRow:
    """One message the gate got wrong, in the form ``gatekeeper eval --errors`` writes it."""

    #: The message as written in the data file.
    text: str
    #: Its intent (the catalog's spelling) or, off topic, its label as in the file.
    label: str
    #: The routed (top-1) intent.
    predicted: str
    score: float
    #: The routed intent's threshold.
    threshold: float
    #: One of :data:`ERROR_KINDS`.
    kind: str

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def error_rows(scored: ScoredSet, thresholds: np.ndarray, names: list[str]) -> list[ErrorRow]:
    """Every mistake of the gate, grouped by kind in :data:`ERROR_KINDS` order, the worst of each kind first.

    ``false_reject``: in scope but refused, furthest below the threshold
    first. ``false_accept``: off topic but let through, and ``wrong_intent``:
    in scope, let through as another intent; both furthest above the threshold first.
    """
    accepted = accepted_mask(scored, thresholds)
    predicted = scored.predicted_intent
    errors = []
    for row, ((text, label), inside, ok) in enumerate(zip(scored.rows, scored.in_scope, accepted)):
        if inside and not ok:
            kind = FALSE_REJECT
        elif not inside and ok:
            kind = FALSE_ACCEPT
        elif inside and predicted[row] != scored.true_intent[row]:
            kind = WRONG_INTENT
        else:
            continue
        errors.append(ErrorRow(text=text, label=names[scored.true_intent[row]] if inside else label,
                               predicted=names[predicted[row]], score=round(float(scored.scores[row]), 6),
                               threshold=round(float(thresholds[predicted[row]]), 6), kind=kind))
    return sorted(errors, key=lambda e: (ERROR_KINDS.index(e.kind),
                                         (e.score - e.threshold) * (1 if e.kind == FALSE_REJECT else -1)))


def confused_pairs(scored: ScoredSet, names: list[str], top: int = 10) -> list[tuple[str, str, int]]:
    """The most frequent (true intent, predicted intent) mistakes among known in-scope rows."""
    mask = scored.in_scope & (scored.true_intent >= 0) & (scored.predicted_intent != scored.true_intent)
    counts = Counter(zip(scored.true_intent[mask], scored.predicted_intent[mask]))
    return [(names[t], names[p], n) for (t, p), n in counts.most_common(top)]


def _rate(mask: np.ndarray) -> float | None:
    return float(np.mean(mask)) if len(mask) else None
