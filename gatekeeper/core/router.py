"""The threshold router: scores -> a :class:`Decision` per message."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from gatekeeper.catalog.schema import Catalog, pick_reply
from gatekeeper.core.scoring import ScoreBatch, Scorer

#: Intents listed in a decision's ``top_k``.
TOP_K = 3

REASON_BELOW_THRESHOLD = "below_threshold"
REASON_NEAREST_OUT_OF_SCOPE = "nearest_out_of_scope"
REASON_EMPTY = "empty_input"
REASON_NOT_TEXT = "not_text"

#: What the sidecar does with a message: an accepted intent's ``action``, or the canned reject reply.
#: A ``continue`` intent's message alone (no conversation) is answered with its reply.
ACTION_REJECT = "reject"
ACTIONS = ("forward", "reply", "handoff", ACTION_REJECT)
ACTION_CONTINUE = "continue"


@dataclass(frozen=True)
class IntentScore:
    """An intent and its score for one message."""

    intent: str
    score: float


@dataclass(frozen=True)
class Decision:
    """What the gate decided for one message, and why."""

    text: str
    accepted: bool
    intent: str | None
    score: float
    threshold: float
    margin: float
    reason: str | None
    top_k: list[IntentScore] = field(default_factory=list)
    truncated: bool = False
    #: forward, reply or handoff (the accepted intent's action), or reject.
    action: str = ACTION_REJECT
    #: The intent's ``tags`` from the catalog.
    tags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True)
class Thresholds:
    """The threshold of every intent, in catalog order, and the global one they fall back to."""

    global_threshold: float
    per_intent: np.ndarray
    #: Where the global threshold came from: 'catalog', 'auto' or 'tuned'.
    source: str


class Router:
    """Applies per-intent thresholds to a scorer's output."""

    def __init__(self, catalog: Catalog, scorer: Scorer, thresholds: Thresholds):
        self.catalog = catalog
        self.scorer = scorer
        self.thresholds = thresholds
        self._names = catalog.intent_names()
        self._actions = ["reply" if intent.action == ACTION_CONTINUE else intent.action for intent in catalog.intents]
        self._continues = [intent.action == ACTION_CONTINUE for intent in catalog.intents]
        self._tags = [list(intent.tags) for intent in catalog.intents]
        self._thresholds = [float(value) for value in thresholds.per_intent]

    def decide_vectors(self, texts: list[str], vectors: np.ndarray, truncated: list[bool]) -> list[Decision]:
        """Decide messages whose (normalised) texts were embedded as ``vectors``."""
        if len(texts) == 0:
            return []
        return self.decide_scores(texts, self.scorer.score(vectors, texts), truncated)

    def decide_scores(self, texts: list[str], batch: ScoreBatch, truncated: list[bool]) -> list[Decision]:
        """Turn a :class:`ScoreBatch` into decisions."""
        best = batch.intent_scores.argmax(axis=1).tolist()
        k = min(TOP_K, batch.intent_scores.shape[1])
        ranked = np.argsort(-batch.intent_scores, axis=1)[:, :k].tolist()
        thresholds = self._thresholds
        decisions = []
        for text, intent_id, score, nearest_negative, columns, scores, flag in zip(
                texts, best, batch.score.tolist(), batch.nearest_out_of_scope.tolist(), ranked,
                batch.intent_scores.tolist(), truncated):
            threshold = thresholds[intent_id]
            accepted = score >= threshold
            reason = None
            if not accepted:
                reason = REASON_NEAREST_OUT_OF_SCOPE if nearest_negative else REASON_BELOW_THRESHOLD
            top = [IntentScore(self._names[j], round(scores[j], 6)) for j in columns]
            decisions.append(Decision(text=text, accepted=accepted, intent=self._names[intent_id],
                                      score=round(score, 6), threshold=round(threshold, 6),
                                      margin=round(score - threshold, 6), reason=reason, top_k=top, truncated=flag,
                                      action=self._actions[intent_id] if accepted else ACTION_REJECT,
                                      tags=self._tags[intent_id]))
        return decisions

    def empty_decision(self, text: str, reason: str) -> Decision:
        """The decision for a message that cannot be scored (empty, or not text): rejected."""
        threshold = self.thresholds.global_threshold
        return Decision(text=text, accepted=False, intent=None, score=0.0, threshold=round(threshold, 6),
                        margin=round(-threshold, 6), reason=reason)

    def continues(self, decision: Decision) -> bool:
        """Whether ``decision`` accepted a message whose intent follows the conversation (``action: continue``)."""
        return decision.accepted and decision.intent is not None and self._continues[self._names.index(decision.intent)]

    def reply(self, decision: Decision, language: str) -> str | None:
        """The canned answer in ``language`` for a decision the LLM must not see, or None to forward it.

        Rejected: the nearest intent's reject reply (else the catalog's);
        accepted as a ``reply`` or ``handoff`` intent: that intent's answer.
        """
        if decision.action == ACTION_REJECT:
            return self.reject_reply(decision.intent, language)
        return self.catalog.intent(decision.intent).answer(language) if decision.intent else None

    def reject_reply(self, intent_name: str | None, language: str) -> str:
        """The canned reply for a rejected message: its nearest intent's, else (None) the catalog default."""
        reply = self.catalog.defaults.reject_reply
        if intent_name is not None:
            reply = self.catalog.intent(intent_name).reject_reply or reply
        return pick_reply(reply, language)
