"""The conversation rule: when the earlier turns decide the latest user message (issue #14).

:func:`gatekeeper.core.conversation.decide_turn` gathers the texts and makes the one
encoder call; this module judges them, from the gate's own scores only (no
length limit, no word list):

* **Evidence of a message** (:func:`assess`): its decision, the out-of-scope
  margin of the head's embedding half (the out-of-scope class logit minus the
  best intent logit: the n-gram half reads topic words, the embedding the
  task; :mod:`gatekeeper.core.offtopic`), and the cosines of its nearest intent
  prototype and nearest negative (an ``out_of_scope`` example or a pack entry).
* **Confidently off topic on its own** (:func:`off_topic`): the off-topic veto
  of :mod:`gatekeeper.core.offtopic` (:func:`conversation_veto`), or a negative at
  least
  ``off_topic_similarity`` near, no further than ``off_topic_gap`` behind the
  nearest intent prototype, with an out-of-scope margin of at least
  ``off_topic_margin``. A bare address, a number, a date, "and the other one?"
  are far from every catalog text, so they are not confidently off topic
  that way: they depend on the conversation. When the bot's last turn asks
  something (it has a question mark, ``?`` or ``？``) the answer may resemble
  an off-topic request ("明天上午十点以后" and a weather question), so the
  negative must be ``answer_similarity`` near.
* **Or the head alone is decisive**: an out-of-scope margin of at least
  ``decisive_margin`` (6 logits), whatever the nearest negative, for an
  off-topic request the pack has nothing near ("is London property a good
  investment", "the fastest route to Heathrow": nearest negative 0.34). Out
  of fold (each catalog text scored by the cross-fitted head that did not
  see it), no in-scope example of the three bundled catalogs gets more than
  4.8-5.6 and half their negatives get more than 5.9-6.6; the development
  set's slot answers get at most 5.7 (addresses 4.1-5.1). Not after a
  question of the bot (an answer may be anything), and not in a catalog
  without a ``continue`` intent, where "why?" and "raise it" have no
  prototypes and sit beyond the in-scope range too.
* **The conversation's topic** (:func:`conversation_topic`): the latest earlier
  user turn that says something, over all the earlier turns read
  (``context_turns``): in scope when it was accepted as a ``forward`` or
  ``handoff`` intent, off topic when the bot answered it with the catalog's
  canned reject reply or it is confidently off topic; turns with no topic of
  their own (acknowledgements, greetings, earlier follow-ups and slot answers)
  are passed over.
* **The latest message**: accepted on its own, it stays accepted unless the
  conversation's veto rejects it or its last clause is confidently off topic
  ("ok thanks. btw what does git rebase do": an acknowledgement followed by a
  new request; the clause is embedded in a second, short encoder call, only
  for a message accepted with the conversation's help or that the embedding
  half of the head leans off topic for: :func:`worth_a_clause`). Otherwise, in a
  conversation whose topic is in scope, it is a follow-up unless it, or its
  last clause, is confidently off topic; in an off-topic conversation, or one
  with no topic yet, it is decided alone (a ``continue`` intent's message is
  rejected after an off-topic turn and answered with its reply when nothing
  came before).

The defaults were chosen on four fifths of ``tests/data/conversations/dev.jsonl``
(docs/sidecar.md, *Conversations*) for the default model (USE multilingual);
the similarities are the encoder's geometry: re-check them with
``python benchmarks/conversations.py`` after changing models.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence
from weakref import WeakKeyDictionary

import numpy as np

from gatekeeper.catalog.schema import pick_reply
from gatekeeper.core.conversation_policy import FollowupPolicy
from gatekeeper.core.offtopic import embedding_margins, nearest_similarities_of, veto_rule
from gatekeeper.core.router import ACTION_CONTINUE, ACTION_REJECT, REASON_NEAREST_OUT_OF_SCOPE, Decision, Router
from gatekeeper.core.scoring import nearest_similarities
from gatekeeper.core.text import normalise

if TYPE_CHECKING:
    from gatekeeper.gate import Gate  # the public object these functions read; imported for types only

#: Actions of an accepted message that has a topic of its own.
TOPICAL_ACTIONS = frozenset({"forward", "handoff"})
#: Where a message splits into clauses: after CJK or ASCII sentence and clause punctuation, and after a full stop
#: that a space follows ("12.99" stays whole).
_CLAUSE_BREAK = re.compile(r"(?<=[。！？!?；;，,、…])|(?<=\.)(?=\s)")
_QUESTION_MARKS = ("?", "？")
#: The off-topic veto's bars (:mod:`gatekeeper.core.offtopic`): the head's embedding half puts the out-of-scope class this
#: many logits ahead, and the nearest negative is at least this near.
CONVERSATION_VETO_MARGIN = 2.0
CONVERSATION_VETO_NEGATIVE = 0.50
#: A message accepted on its own has its last clause looked at when the embedding half of the head leans off topic
#: for it by at least this (logits): "好的。对了明天杭州下不下雨" does, "我要投诉，宽带修了三次还是坏" does not.
CLAUSE_MARGIN = 0.5


@dataclass(frozen=True)
class Evidence:
    """What the gate's scores say about one message."""

    decision: Decision
    #: The out-of-scope class logit minus the best intent logit of the head's embedding half (None: no such class).
    oos_margin: float | None
    #: Cosine of the nearest intent prototype among the retrieved ones (-1: none).
    nearest_intent: float
    #: Cosine of the nearest negative among the retrieved ones (-1: none).
    nearest_negative: float
    #: Accepted as an intent with ``action: continue``.
    continues: bool

    @property
    def topical(self) -> bool:
        """Accepted as an intent with a topic of its own (``forward`` or ``handoff``)."""
        return self.decision.accepted and self.decision.action in TOPICAL_ACTIONS and not self.continues


def assess(gate: Gate, prepared: list[tuple[str, bool, str | None]], vectors: np.ndarray) -> list[Evidence]:
    """The decision and evidence of each prepared message (all scorable), given their vectors: one pass of the
    scorer, the decisions those of :meth:`gatekeeper.core.router.Router.decide_vectors`.

    A message's evidence depends on nothing else, so the last :data:`EVIDENCE_CACHE` of each gate are kept: an
    earlier turn was assessed when it was the latest message (as the query LRU keeps its vector).
    """
    cache = _EVIDENCE.setdefault(gate.router_, _EvidenceCache())
    found = [cache.get((text, flag)) for text, flag, _ in prepared]
    missing = [row for row, evidence in enumerate(found) if evidence is None]
    if missing:
        for row, evidence in zip(missing, _assess(gate, [prepared[row] for row in missing], vectors[missing])):
            found[row] = evidence
            cache.put((prepared[row][0], prepared[row][1]), evidence)
    return found  # type: ignore[return-value]


def _assess(gate: Gate, prepared: list[tuple[str, bool, str | None]], vectors: np.ndarray) -> list[Evidence]:
    texts = [text for text, _, _ in prepared]
    router = gate.router_
    batch = router.scorer.score(vectors, texts)
    margins = embedding_margins(router.scorer, vectors)
    nearest = nearest_similarities_of(batch)
    if nearest is None:
        per_intent, negative = nearest_similarities(gate.artifacts_.index, vectors, len(gate.catalog_.intents))
        nearest = per_intent.max(axis=1), negative
    decisions = router.decide_scores(texts, batch, [flag for _, flag, _ in prepared])
    return [Evidence(decision=decision, oos_margin=None if margins is None else float(margins[row]),
                     nearest_intent=float(nearest[0][row]), nearest_negative=float(nearest[1][row]),
                     continues=router.continues(decision))
            for row, decision in enumerate(decisions)]


#: Evidence kept per gate (:func:`assess`).
EVIDENCE_CACHE = 4096


class _EvidenceCache:
    """A small LRU of evidence by (normalised text, truncated)."""

    def __init__(self, size: int = EVIDENCE_CACHE):
        self.size = size
        self._items: OrderedDict[tuple[str, bool], Evidence] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, bool]) -> Evidence | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: tuple[str, bool], evidence: Evidence) -> None:
        with self._lock:
            self._items[key] = evidence
            while len(self._items) > self.size:
                self._items.popitem(last=False)


_EVIDENCE: "WeakKeyDictionary[Router, _EvidenceCache]" = WeakKeyDictionary()


class LazyEvidence(Sequence[Evidence]):
    """The evidence of earlier turns whose vectors are known, each assessed when first asked for: the rule reads
    them newest first and usually stops at the first."""

    def __init__(self, gate: Gate, prepared: list[tuple[str, bool, str | None]], vectors: np.ndarray):
        self._gate, self._prepared, self._vectors = gate, prepared, vectors
        self._found: dict[int, Evidence] = {}

    def __len__(self) -> int:
        return len(self._prepared)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        index = range(len(self))[index]
        if index not in self._found:
            self._found[index] = assess(self._gate, [self._prepared[index]], self._vectors[index:index + 1])[0]
        return self._found[index]


def conversation_veto(evidence: Evidence, min_negative: float = 0.0) -> bool:
    """The off-topic veto of :mod:`gatekeeper.core.offtopic` at :data:`CONVERSATION_VETO_MARGIN` and
    :data:`CONVERSATION_VETO_NEGATIVE` (``min_negative`` raises the similarity bars, after a bot question)."""
    if evidence.oos_margin is None:
        return False
    return bool(veto_rule(np.array([evidence.oos_margin]), np.array([evidence.nearest_intent]),
                          np.array([evidence.nearest_negative]), min_negative, CONVERSATION_VETO_MARGIN,
                          CONVERSATION_VETO_NEGATIVE)[0])


def off_topic(evidence: Evidence, policy: FollowupPolicy, answering: bool = False, covered: bool = True,
              decisive: bool | None = None) -> bool:
    """Whether a message is confidently off topic on its own (module doc); ``answering``: after a bot question;
    ``covered``: the catalog has a ``continue`` intent (else the bar is at least ``uncovered_similarity``);
    ``decisive``: whether an out-of-scope margin of ``decisive_margin`` decides alone (default: ``covered``; only
    where context-dependent messages have prototypes of their own is the margin beyond the in-scope range)."""
    negative, intent, margin = evidence.nearest_negative, evidence.nearest_intent, evidence.oos_margin
    bar = policy.answer_similarity if answering else policy.off_topic_similarity
    if not covered:
        bar = max(bar, policy.uncovered_similarity)
    if margin is None:  # no out-of-scope class: the index alone
        return negative >= bar and negative > intent
    if conversation_veto(evidence, bar if answering or not covered else 0.0):
        return True
    if (covered if decisive is None else decisive) and not answering and margin >= policy.decisive_margin:
        return True
    return negative >= bar and negative >= intent - policy.off_topic_gap and margin >= policy.off_topic_margin


def has_continue_intent(router: Router) -> bool:
    """Whether the catalog has an intent with ``action: continue`` (the conversation pack's ``continuation``)."""
    return any(intent.action == ACTION_CONTINUE for intent in router.catalog.intents)


def worth_a_clause(latest: Evidence) -> bool:
    """Whether an accepted latest message's last clause is worth a look (a second, short encoder call): it is
    accepted only with the conversation's help, or the embedding half of the head leans off topic for it."""
    return (not latest.topical or latest.oos_margin is None
            or latest.oos_margin >= CLAUSE_MARGIN)


def last_clause(text: str) -> str | None:
    """The last clause of a message of several ("好的。帮我算下37×29" -> "帮我算下37×29"), or None."""
    clauses = [clause.strip() for clause in _CLAUSE_BREAK.split(text) if clause.strip()]
    clauses = [clause for clause in clauses if any(ch.isalnum() for ch in clause)]
    return clauses[-1] if len(clauses) > 1 else None


def asks(reply: str | None) -> bool:
    """Whether the bot's turn asks the user something (it has a question mark)."""
    return bool(reply) and any(mark in reply for mark in _QUESTION_MARKS)


_CANNED: "WeakKeyDictionary[Router, frozenset[str]]" = WeakKeyDictionary()


def canned_rejections(router: Router) -> frozenset[str]:
    """The catalog's reject replies in every language it has (normalised): the bot's answer to a rejected turn."""
    found = _CANNED.get(router)
    if found is None:
        catalog = router.catalog
        replies = [catalog.defaults.reject_reply] + [intent.reject_reply for intent in catalog.intents
                                                     if intent.reject_reply]
        texts = set()
        for reply in replies:
            languages = list(reply) if isinstance(reply, dict) else ["default"]
            texts.update(normalise(pick_reply(reply, language), 1 << 30)[0] for language in languages)
        found = _CANNED[router] = frozenset(texts)
    return found


#: :func:`conversation_topic` found an off-topic conversation.
OFF_TOPIC = "off_topic"


def conversation_topic(router: Router, turns: Sequence[Evidence], replies: Sequence[str | None],
                       policy: FollowupPolicy) -> Evidence | str | None:
    """The evidence of the earlier turn that sets the conversation's topic, :data:`OFF_TOPIC`, or None (module doc).

    ``turns`` are the earlier user turns, oldest first; ``replies`` the bot's
    answer to each (None: none or unknown), aligned from the newest turn.
    """
    canned = canned_rejections(router)
    aligned = list(replies)[-len(turns):] if len(turns) else []
    aligned = [None] * (len(turns) - len(aligned)) + aligned
    for index in range(len(turns) - 1, -1, -1):  # newest first; ``turns`` may assess each one only when asked
        evidence, reply = turns[index], aligned[index]
        if reply is not None and normalise(reply, 1 << 30)[0] in canned:
            return OFF_TOPIC
        if evidence.topical:
            return evidence
        if evidence.decision.accepted:  # a greeting, thanks, an acknowledgement: no topic of its own
            continue
        if off_topic(evidence, policy, covered=has_continue_intent(router)):
            return OFF_TOPIC
    return None


@dataclass(frozen=True)
class Judgement:
    """The rule's verdict on the latest message."""

    decision: Decision
    #: Accepted because of the earlier turns.
    followup: bool = False
    #: The normalised text of the earlier turn whose decision was taken (None: the message's own).
    context_text: str | None = None


def judge(latest: Evidence, clause: Evidence | None, turns: Sequence[Evidence], replies: Sequence[str | None],
          router: Router, policy: FollowupPolicy) -> Judgement:
    """Decide the latest message with its earlier turns (module doc). ``clause``: its last clause, if it has several."""
    text, truncated = latest.decision.text, latest.decision.truncated
    if latest.topical or (latest.decision.accepted and not latest.continues):
        if len(turns) and conversation_veto(latest):
            return Judgement(_rejected(latest.decision, text, truncated))
        if clause is not None and off_topic(clause, policy, decisive=has_continue_intent(router)):
            return Judgement(_rejected(clause.decision, text, truncated))
        return Judgement(latest.decision)
    if not len(turns):
        return Judgement(latest.decision)
    topic = conversation_topic(router, turns, replies, policy)
    if topic is None:
        return Judgement(latest.decision)
    if topic == OFF_TOPIC:
        if latest.continues:  # no topic of its own: it follows the off-topic conversation
            earlier = next((turns[i] for i in range(len(turns) - 1, -1, -1) if not turns[i].decision.accepted), None)
            if earlier is None:
                return Judgement(_rejected(latest.decision, text, truncated))
            return Judgement(_rejected(earlier.decision, text, truncated), context_text=earlier.decision.text)
        return Judgement(latest.decision)
    answering = asks(replies[-1] if replies else None)
    covered = has_continue_intent(router)
    # The leeway after a bot question is for an answer, the whole message; a clause after it is a new request.
    for piece, leeway in ((latest, answering), (clause, False)):
        if piece is not None and off_topic(piece, policy, leeway, covered):
            return Judgement(_rejected(piece.decision, text, truncated))
    return Judgement(replace(topic.decision, text=text, truncated=truncated), followup=True,
                     context_text=topic.decision.text)


def _rejected(decision: Decision, text: str, truncated: bool) -> Decision:
    """``decision`` as the latest message's rejection (its own text, rejected, the reject action)."""
    if decision.accepted:
        decision = replace(decision, accepted=False, action=ACTION_REJECT, reason=REASON_NEAREST_OUT_OF_SCOPE)
    return replace(decision, text=text, truncated=truncated)
