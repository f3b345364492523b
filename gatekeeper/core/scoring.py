"""Scoring rules: how in-scope a message is, and which intent it is nearest to.

Two scorers share one interface (:class:`Scorer`), chosen by how much data the
catalog has:

* :class:`NearestPrototypeScorer` -- cosine to the nearest prototype (FAISS),
  penalised when an out-of-scope example is nearer. Works zero-shot, from
  intent descriptions alone.
* :class:`HeadScorer` -- a logistic-regression head over the frozen embeddings
  and, by default, character n-gram features of the text (:mod:`gatekeeper.core.lexical`),
  with an out-of-scope class when the catalog has negatives. Its logits are
  combined with the prototype similarities by a small calibrator into
  P(in scope). It is much better at both picking the intent and spotting
  off-topic messages (docs/quality.md has the comparison).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np
from scipy import sparse

from gatekeeper.core.calibrator import Calibrator
from gatekeeper.core.head_solver import HeadInputs, fit_multinomial
from gatekeeper.core.index import OUT_OF_SCOPE, PrototypeIndex
from gatekeeper.core.lexical import CharNgrams, TfidfRows

#: Prototypes retrieved per query; enough to rank several intents.
SEARCH_K = 16
#: Inverse regularisation of the head. A generic setting for unit-length sentence
#: embeddings of a few hundred dims (and L2-normalised n-gram rows beside them).
HEAD_C = 10.0
#: L-BFGS iteration cap and gradient tolerance of the head fit (scikit-learn's defaults).
HEAD_MAX_ITER = 200
HEAD_TOL = 1e-4
#: The head needs this many examples per intent on average; below it, nearest-prototype scoring is used.
HEAD_MIN_EXAMPLES_PER_INTENT = 3
#: Out-of-scope examples needed before they become a class of the head.
HEAD_MIN_NEGATIVES = 5
#: Bias of a head's class that had no rows to fit (a fold without an intent's examples): it never wins.
ABSENT_CLASS_BIAS = -1e4

#: A head: weights (d, classes) and biases (classes,).
Head = tuple[np.ndarray, np.ndarray]


@dataclass
class ScoreBatch:
    """Scores of n messages against K intents."""

    #: (n, K) per-intent scores used to rank intents (higher is better).
    intent_scores: np.ndarray
    #: (n,) the in-scope score compared with the threshold.
    score: np.ndarray
    #: (n,) True where an out-of-scope example (or class) beats every intent.
    nearest_out_of_scope: np.ndarray
    #: (n, F) raw features that a calibrator combines (empty for uncalibrated scorers).
    features: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))


class Scorer(Protocol):
    """Scores messages against a fitted catalog."""

    name: str

    def score(self, queries: np.ndarray, texts: Sequence[str]) -> ScoreBatch:
        """Score messages: their unit-length query vectors (n, d) and their texts."""
        ...

    def state(self) -> dict[str, np.ndarray]:
        """Arrays that :func:`load_scorer` needs to rebuild this scorer."""
        ...


def nearest_similarities(index: PrototypeIndex, queries: np.ndarray, n_intents: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Per-intent max cosine over the retrieved prototypes, and the max cosine to any negative.

    Intents not among the ``SEARCH_K`` nearest prototypes get -1.
    """
    sims, ids = index.search(queries, SEARCH_K)
    # One table row per query: a column per intent and a last one for negatives (and for the id -1 HNSW pads a
    # short result with, whose similarity is below -1, so it never counts).
    width = n_intents + 1
    cells = index.label_columns(n_intents)[ids]
    cells += np.arange(0, len(queries) * width, width)[:, None]
    table = np.full(len(queries) * width, -1.0, dtype=np.float32)
    np.maximum.at(table, cells.ravel(), sims.ravel())
    table = table.reshape(len(queries), width)
    return table[:, :n_intents], table[:, n_intents]


class NearestPrototypeScorer:
    """Cosine to the nearest intent prototype, minus how much nearer an out-of-scope example is."""

    name = "nearest"

    def __init__(self, index: PrototypeIndex, n_intents: int):
        self._index = index
        self._n_intents = n_intents

    def score(self, queries: np.ndarray, texts: Sequence[str]) -> ScoreBatch:
        """Score messages by their vectors (n, d); the texts are not used."""
        per_intent, negative = nearest_similarities(self._index, queries, self._n_intents)
        best = per_intent.max(axis=1)
        penalty = np.maximum(negative - best, 0.0)
        return ScoreBatch(intent_scores=per_intent, score=best - penalty, nearest_out_of_scope=negative > best)

    def state(self) -> dict[str, np.ndarray]:
        """Nothing beyond the index."""
        return {}


class HeadScorer:
    """Logistic-regression head plus a calibrator giving P(in scope).

    The head's weights are (d + n-gram features, classes): the first d rows
    apply to the embedding, the rest to ``lexical``'s features (none without it).
    """

    name = "head"

    def __init__(self, index: PrototypeIndex, n_intents: int, head: Head, calibrator: Calibrator,
                 lexical: CharNgrams | None = None):
        self._index = index
        self._n_intents = n_intents
        self.lexical = lexical
        # float64, so a message's logits do not depend on the batch it is scored in: float32 products round
        # differently for different batch shapes (BLAS's sums), which moved a decision's sixth decimal.
        self.head_weights = head[0].astype(np.float64)
        self.head_bias = head[1].astype(np.float64)
        self.calibrator = calibrator

    @property
    def has_negative_class(self) -> bool:
        """Whether the head has an out-of-scope class (its last column)."""
        return self.head_weights.shape[1] == self._n_intents + 1

    def lexical_rows(self, texts: Sequence[str]) -> TfidfRows | None:
        """The n-gram features of ``texts`` (CSR arrays), or None when the head uses none."""
        return None if self.lexical is None else self.lexical.rows(texts)

    def features(self, queries: np.ndarray, lexical_rows: TfidfRows | sparse.csr_matrix | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Calibrator features (n, 3), head logits of the intents (n, K), and nearest-negative mask.

        ``lexical_rows`` are the messages' :meth:`lexical_rows` (or the same rows as a CSR matrix).
        """
        dim = queries.shape[1]
        logits = queries @ self.head_weights[:dim] + self.head_bias
        if lexical_rows is not None:
            logits += sparse_product(lexical_rows, self.head_weights[dim:])
        intent_logits = logits[:, :self._n_intents]
        best_logit = intent_logits.max(axis=1)
        per_intent, negative = nearest_similarities(self._index, queries, self._n_intents)
        best_cos = per_intent.max(axis=1)
        if self.has_negative_class:
            nearest_negative = logits[:, -1] > best_logit
        else:
            nearest_negative = negative > best_cos
        features = np.empty((len(queries), 3))
        features[:, 0], features[:, 1], features[:, 2] = best_logit, best_cos, negative
        return features, intent_logits, nearest_negative

    def score(self, queries: np.ndarray, texts: Sequence[str]) -> ScoreBatch:
        """Score messages: their unit-length query vectors (n, d) and their texts."""
        features, intent_logits, nearest_negative = self.features(queries, self.lexical_rows(texts))
        return ScoreBatch(intent_scores=softmax(intent_logits), score=self.calibrator.probability(features),
                          nearest_out_of_scope=nearest_negative, features=features)

    def with_calibrator(self, calibrator: Calibrator) -> "HeadScorer":
        """A copy using ``calibrator`` (refitted by ``gatekeeper tune``)."""
        return HeadScorer(self._index, self._n_intents, (self.head_weights, self.head_bias), calibrator,
                          self.lexical)

    def state(self) -> dict[str, np.ndarray]:
        """The head's, the calibrator's and the n-gram featuriser's parameters."""
        return {"head_weights": self.head_weights, "head_bias": self.head_bias, **self.calibrator.state(),
                **(self.lexical.state() if self.lexical is not None else {})}


def sparse_product(rows: TfidfRows | sparse.csr_matrix, weights: np.ndarray) -> np.ndarray:
    """``rows @ weights`` for CSR rows and dense float64 ``weights``: scipy's values (each row's terms added in
    order), without scipy's per-call checks, which cost more than the product for a few messages.

    Each row is summed on its own, so its values do not depend on the other rows.
    """
    terms = weights[rows.indices] * rows.data[:, None]  # float32 values widen exactly, as in scipy
    product = np.zeros((len(rows.indptr) - 1, weights.shape[1]))
    bounds = rows.indptr.tolist()
    for row, (start, stop) in enumerate(zip(bounds, bounds[1:])):
        if stop > start:  # summed along the rows' axis: in order, term by term
            np.add.reduce(terms[start:stop], axis=0, out=product[row])
    return product


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def head_inputs(vectors: np.ndarray, lexical_rows: sparse.csr_matrix | None) -> HeadInputs:
    """What a head is fitted on: the embeddings and, if there are any, their n-gram features (two blocks)."""
    return HeadInputs(vectors, lexical_rows)


def fit_head(inputs: HeadInputs, labels: np.ndarray, n_intents: int,
             init: Head | None = None, tol: float = HEAD_TOL) -> Head:
    """Fit the multinomial head on :func:`head_inputs`; out-of-scope rows form class K if there are enough.

    The objective is scikit-learn's ``LogisticRegression(C=HEAD_C)`` (tests
    compare the two), solved by :func:`gatekeeper.core.head_solver.fit_multinomial`
    without stacking the dense embedding into a sparse matrix. Call it inside
    :func:`gatekeeper.core.parallel.single_threaded_pool` (or ``single_threaded``):
    one BLAS thread per fit is much faster here.

    Returns weights (d, K or K+1) and biases, with columns in intent order.
    ``init`` is an earlier head of the same shape to start from (a warm start:
    same optimum, fewer iterations); ``tol`` is the solver's gradient tolerance.
    """
    weights, bias, _ = fit_head_with_gradient(inputs, labels, n_intents, init, tol)
    return weights, bias


def fit_head_with_gradient(inputs: HeadInputs, labels: np.ndarray, n_intents: int, init: Head | None = None,
                           tol: float = HEAD_TOL, tilt: Head | None = None, workers: int = 1
                           ) -> tuple[np.ndarray, np.ndarray, Head]:
    """:func:`fit_head`, also returning the objective's gradient where the solver stopped, laid out as a
    head (weight rows, bias row; zeros for absent classes).

    ``tilt`` is such a gradient of an earlier fit whose head is ``init``: the
    fit then learns what changed since; ``workers`` threads share each step's
    rows (see :func:`gatekeeper.core.head_solver.fit_multinomial`).
    """
    negatives = labels == OUT_OF_SCOPE
    use_negatives = negatives.sum() >= HEAD_MIN_NEGATIVES
    keep = np.ones(len(labels), bool) if use_negatives else ~negatives
    n_classes = n_intents + (1 if use_negatives else 0)
    present, targets = np.unique(np.where(negatives, n_intents, labels)[keep], return_inverse=True)
    start, shift = None, None
    if init is not None and init[0].shape == (inputs.shape[1], n_classes):
        start_bias = init[1][present]
        start = init[0][:, present], np.where(start_bias == ABSENT_CLASS_BIAS, 0.0, start_bias)
        if tilt is not None and tilt[0].shape == init[0].shape:
            shift = np.vstack([tilt[0][:, present], tilt[1][None, present]])
    # scikit-learn fits two classes as one binary model, penalising its one weight vector, the difference
    # of the two columns here: twice the penalty on the columns gives the same optimum.
    penalty = (2.0 if len(present) == 2 else 1.0) / (HEAD_C * len(targets))
    fitted = fit_multinomial(inputs[keep], targets, len(present), penalty, tol, HEAD_MAX_ITER, start, shift,
                             workers)
    weights = np.zeros((inputs.shape[1], n_classes), dtype=np.float32)
    bias = np.full(n_classes, ABSENT_CLASS_BIAS, dtype=np.float32)
    gradient = np.zeros((inputs.shape[1] + 1, n_classes), dtype=np.float32)
    weights[:, present] = fitted.weights
    bias[present] = fitted.bias
    gradient[:, present] = fitted.gradient
    return weights, bias, (gradient[:-1], gradient[-1])


def uses_head(labels: np.ndarray, n_intents: int, own_intents: Sequence[int] | None = None) -> bool:
    """Whether the catalog has enough examples for the head scorer.

    The catalog's own intents (``own_intents``, by default all; built-in
    pack intents are not its own) need :data:`HEAD_MIN_EXAMPLES_PER_INTENT`
    prototypes each on median, and the head needs two classes: two intents,
    or one and enough negatives.
    """
    in_scope = labels[labels != OUT_OF_SCOPE]
    negatives = len(labels) - len(in_scope)
    counts = np.bincount(in_scope, minlength=n_intents)
    own = counts[list(own_intents)] if own_intents is not None else counts
    return ((n_intents >= 2 or negatives >= HEAD_MIN_NEGATIVES)
            and float(np.median(own)) >= HEAD_MIN_EXAMPLES_PER_INTENT)


def load_scorer(name: str, index: PrototypeIndex, n_intents: int, state: dict[str, np.ndarray]) -> Scorer:
    """Rebuild a scorer from :meth:`Scorer.state`."""
    if name == NearestPrototypeScorer.name:
        return NearestPrototypeScorer(index, n_intents)
    lexical = (CharNgrams(state["lexical_vocabulary"], state["lexical_idf"])
               if "lexical_vocabulary" in state else None)
    return HeadScorer(index, n_intents, (state["head_weights"], state["head_bias"]), Calibrator.from_state(state),
                      lexical)
