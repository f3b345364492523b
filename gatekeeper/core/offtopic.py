"""Off-topic evidence of one message from the gate's own scores: the embedding half of the head and the nearest
negative prototype (issue #14, task versus topic).

**Why on-topic words won.** The head scores ``[embedding, character n-grams]``.
The n-gram half learns topic words: "phishing", "bank", "套餐" pull hard
towards the intents that use them, and the out-of-scope class, whose examples
share few n-grams, gets mostly negative n-gram weights. The embedding half
reads the whole sentence, the task included ("write ... pretending to be",
"compose a poem about", "扮演"). So for "write me a convincing phishing email
pretending to be Harbor Bank" the embedding half puts the out-of-scope class
far ahead while the n-grams pull it back to ``fraud_report``; and the
calibrated score (P(in scope)) follows the best intent logit, so the message
was accepted although the pack's ``borrowed_words``, ``creative_writing`` and
``roleplay_reveal`` negatives are its nearest catalog texts.

**The veto** (:func:`veto_rule`): the n-grams tell intents apart, but should
not overrule the embedding on whether a message is off topic at all. A message
is off topic, whatever its calibrated score, when

1. the embedding half of the head puts the out-of-scope class at least a
   margin (logits) ahead of every intent, and its nearest catalog text is a
   negative (an ``out_of_scope`` example or a pack entry) at a cosine of at
   least a bar, no further than the nearest intent example; or
2. it is a near paraphrase of a negative: cosine :data:`PARAPHRASE_NEGATIVE`
   (0.80) or more, :data:`PARAPHRASE_GAP` (0.15) nearer than any intent example.

Everything is fitted on the catalog (its examples, its negatives and the
out-of-scope pack); no word list is involved, so "帮我写个投诉" or "I want to write
a complaint about the branch staff", whose nearest texts are intent examples,
stay in scope.

**Where it applies: inside conversations only.** Part 1 is only as good as the
catalog is dense: with 10 or 20 examples per intent (``benchmarks/quality.py``'s
few-shot rows) an in-scope message is often nearer to one of the pack's ~960
negatives than to the few examples of its intent, and the embedding half is
unsure. Applied to single messages at margin 3 and cosine 0.55 it rejected
0.7-3% more in-scope messages there (55 of CLINC150's 4,500 test messages at 10
shots) and moved those rows' AUROC by up to 0.025; even part 2 alone moved
several few-shot rows by more than 0.002. So single messages are decided as
before, and :mod:`gatekeeper.core.conversation_model` applies the veto to the
messages of a conversation (margin 2, cosine 0.50), where the rule has the
conversation's evidence and a wrong veto costs one later message. ``eval`` and
``tune`` score a row the conversation rule rejected with :func:`vetoed_scores`
(its score times :data:`VETO_FACTOR`), as the sidecar decided it. The fix for
single messages belongs to the head (a calibrator that reads the out-of-scope
class, fitted out of fold; or task-framed negatives built from the catalog's
own examples); the figures are in docs/sidecar.md (*Task versus topic*).
"""

from __future__ import annotations

import numpy as np

from gatekeeper.core.scoring import HeadScorer, ScoreBatch, Scorer

#: The veto's bars for a single message had it applied there (module doc); the conversation rule passes its own.
VETO_MARGIN = 3.0
VETO_MIN_NEGATIVE = 0.55
#: A near paraphrase of a negative: at least this similar, and this much nearer than any intent example.
PARAPHRASE_NEGATIVE = 0.80
PARAPHRASE_GAP = 0.15
#: A vetoed row's calibrated score is multiplied by this in ``eval`` and ``tune``.
VETO_FACTOR = 0.01
#: Columns of :attr:`ScoreBatch.features` (the head scorer's calibrator features).
BEST_COS, NEGATIVE = 1, 2


def embedding_margins(scorer: Scorer, vectors: np.ndarray) -> np.ndarray | None:
    """The out-of-scope class logit minus the best intent logit of the head's embedding half, per message; None
    for a scorer without an out-of-scope class."""
    if not isinstance(scorer, HeadScorer) or not scorer.has_negative_class or len(vectors) == 0:
        return None
    dim = vectors.shape[1]
    logits = vectors @ scorer.head_weights[:dim] + scorer.head_bias
    return (logits[:, -1] - logits[:, :-1].max(axis=1)).astype(np.float64)


def nearest_similarities_of(batch: ScoreBatch) -> tuple[np.ndarray, np.ndarray] | None:
    """(cosine of the nearest intent prototype, cosine of the nearest negative) of each row, from a head scorer's
    features; None for a scorer without them (nearest-prototype scoring penalises negatives itself)."""
    features = batch.features
    if features.ndim != 2 or features.shape[0] != len(batch.score) or features.shape[1] <= NEGATIVE:
        return None
    return features[:, BEST_COS], features[:, NEGATIVE]


def veto_rule(margin: np.ndarray, nearest_intent: np.ndarray, nearest_negative: np.ndarray,
              min_negative: float = 0.0, margin_bar: float = VETO_MARGIN,
              negative_bar: float = VETO_MIN_NEGATIVE) -> np.ndarray:
    """The veto (module doc) on its inputs; ``min_negative`` raises both similarity bars (after a bot question);
    inside a conversation the rule uses lower bars (:mod:`gatekeeper.core.conversation_model`)."""
    headed = ((margin >= margin_bar) & (nearest_negative >= max(negative_bar, min_negative))
              & (nearest_negative >= nearest_intent))
    paraphrase = ((nearest_negative >= max(PARAPHRASE_NEGATIVE, min_negative))
                  & (nearest_negative >= nearest_intent + PARAPHRASE_GAP))
    return headed | paraphrase


def vetoed_scores(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``scores`` with the vetoed rows' multiplied by :data:`VETO_FACTOR`."""
    scores = np.asarray(scores)
    return np.where(mask, scores * VETO_FACTOR, scores).astype(scores.dtype, copy=False)
