"""Score labelled messages with a gate, and measure how well it separates in-scope from off-topic.

Shared by ``gatekeeper eval`` and ``gatekeeper tune``.
"""

from __future__ import annotations

import difflib
import sys
from collections import Counter
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve
from tqdm import tqdm

from gatekeeper.catalog_schema import intent_key
from gatekeeper.errors import UserError
from gatekeeper.gate import Gate
from gatekeeper.scoring import ScoreBatch

#: Texts embedded per encoder call while scoring a file.
EMBED_BATCH = 256


@dataclass
class ScoredSet:
    """A labelled file scored by a gate. Index arrays refer to the catalog's intent order."""

    texts: list[str]
    #: True for in-scope rows.
    in_scope: np.ndarray
    #: Catalog intent id of each in-scope row (-1 for out-of-scope rows or unknown labels).
    true_intent: np.ndarray
    batch: ScoreBatch

    @property
    def predicted_intent(self) -> np.ndarray:
        """Top-1 intent id of every row."""
        return self.batch.intent_scores.argmax(axis=1)

    @property
    def scores(self) -> np.ndarray:
        """The gate score of every row."""
        return self.batch.score


def score_rows(gate: Gate, rows: list[tuple[str, str]], oos_labels: set[str], show_progress: bool = True,
               source: str = "the data") -> ScoredSet:
    """Embed and score every (text, label) row; rows that normalise to nothing are dropped.

    Labels match intent names case-insensitively (:func:`intent_key`). A label
    that is neither an intent nor in ``oos_labels`` is a :class:`UserError`
    listing every such label, so nothing is measured or tuned on rows the
    catalog cannot score.
    """
    names = {intent_key(name): i for i, name in enumerate(gate.catalog.intent_names())}
    oos_keys = {intent_key(label) for label in oos_labels}
    _check_labels([label for _, label in rows], names, oos_keys, gate.catalog.intent_names(), source)
    kept: list[tuple[str, str]] = []
    for text, label in rows:
        clean, _, reason = gate.prepare(text)
        if reason is None:
            kept.append((clean, label))
    if not kept:
        raise UserError(f"{source}: no scorable rows: every text is empty")
    texts = [text for text, _ in kept]
    vectors = []
    with tqdm(total=len(texts), desc="scoring", unit="text", file=sys.stderr,
              disable=None if show_progress and len(texts) > EMBED_BATCH else True) as bar:
        for start in range(0, len(texts), EMBED_BATCH):
            vectors.append(gate.embed(texts[start:start + EMBED_BATCH]))
            bar.update(min(EMBED_BATCH, len(texts) - start))
    batch = gate.router.scorer.score(np.concatenate(vectors), texts)
    in_scope = np.array([intent_key(label) not in oos_keys for _, label in kept])
    true_intent = np.array([names[intent_key(label)] if inside else -1 for (_, label), inside in zip(kept, in_scope)])
    return ScoredSet(texts=texts, in_scope=in_scope, true_intent=true_intent, batch=batch)


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
    accepted = scored.scores >= thresholds[predicted]
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


def confused_pairs(scored: ScoredSet, names: list[str], top: int = 10) -> list[tuple[str, str, int]]:
    """The most frequent (true intent, predicted intent) mistakes among known in-scope rows."""
    mask = scored.in_scope & (scored.true_intent >= 0) & (scored.predicted_intent != scored.true_intent)
    counts = Counter(zip(scored.true_intent[mask], scored.predicted_intent[mask]))
    return [(names[t], names[p], n) for (t, p), n in counts.most_common(top)]


def _rate(mask: np.ndarray) -> float | None:
    return float(np.mean(mask)) if len(mask) else None
