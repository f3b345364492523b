"""Catalog -> embeddings -> prototype index -> fitted scorer and ``auto`` threshold, in memory.

:func:`artifact_fingerprint` names what the artifacts depend on (the catalog's
texts, the embedding model, the format); ``gatekeeper.store.artifacts`` saves
them under it and rebuilds when it changes, starting from the previous build's
heads and neighbour lists (:class:`NeighbourLists`).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Callable, NamedTuple

import numpy as np

from gatekeeper.catalog.checks import text_key
from gatekeeper.catalog.oos_pack import keep_mask, pack_entries, pack_fingerprint
from gatekeeper.catalog.schema import Catalog
from gatekeeper.core.calibrator import Calibrator, import_solver
from gatekeeper.core.head_fitting import CROSS_FIT_FOLDS, Heads, fit_heads, fold_ids
from gatekeeper.core.index import OUT_OF_SCOPE, PrototypeIndex, search_on_this_thread_alone
from gatekeeper.core.intent_estimate import intent_estimate
from gatekeeper.core.lexical import CharNgrams
from gatekeeper.core.parallel import available_cores, single_threaded_pool
from gatekeeper.core.scoring import (HEAD_MIN_NEGATIVES, SEARCH_K, Head, HeadInputs, HeadScorer,
                                     NearestPrototypeScorer, Scorer, head_inputs, nearest_similarities, uses_head)
from gatekeeper.core.thresholds import DEFAULT_MAX_FALSE_REJECT, rate_with_interval, threshold_for_false_reject
from gatekeeper.embedders.base import Embedder

if TYPE_CHECKING:
    from gatekeeper.store.embedding_cache import EmbeddingCache

#: Bump whenever what a build produces changes, so old saves rebuild
#: (v2: hash-stable folds, saved heads; v3: n-gram features in the head; v4: out-of-scope pack;
#: v5: calibrator features with the row left out of the index, pack messages also without their category,
#: and the ``auto`` estimate; v6: the full head's last gradient and the rows' neighbour lists kept for the next build;
#: v7: examples with their intent left out as negatives of the ``auto`` calibrator;
#: v8: the intent estimate in the meta).
ARTIFACT_VERSION = 8
#: Zero-shot ``auto``: at most this share of held-out out-of-scope examples accepted.
AUTO_NEGATIVES_ACCEPTED = 0.1
#: Neighbours kept per row beyond what the auto calibration needs (:class:`NeighbourLists`): an edit
#: removing up to this many of a row's neighbours leaves its saved list usable by the next build.
NEIGHBOUR_MARGIN = 8
#: Weight of an example standing in, with its intent left out, for off-topic traffic on an intent the catalog
#: lacks, in the ``auto`` calibrator's fit (other rows weigh 1). Chosen on CLINC150's and SMP2017's 10-shot
#: catalogs (docs/quality.md): at full weight these near misses cost SMP2017 a tenth of its OOS recall.
UNSEEN_INTENT_WEIGHT = 0.2
#: How the head's held-out logits of the catalog's rows are obtained (said in the build's estimates).
HELD_OUT_BASIS = f"head logits cross-fitted ({CROSS_FIT_FOLDS} folds)"

#: Called with (stage, done, total): ("embed", texts embedded, catalog texts), first with 0 done,
#: then ("fit", heads fitted, heads in all).
ProgressCallback = Callable[[str, int, int], None]


@dataclass
class Prototypes:
    """The texts a catalog contributes to the index, with their intent ids."""

    texts: list[str]
    labels: np.ndarray

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> "Prototypes":
        """Every example and description (labelled by intent) and every negative (labelled OUT_OF_SCOPE)."""
        texts: list[str] = []
        labels: list[int] = []
        for intent_id, intent in enumerate(catalog.intents):
            for text in ([intent.description] if intent.description.strip() else []) + intent.examples:
                texts.append(text)
                labels.append(intent_id)
        texts.extend(catalog.out_of_scope)
        labels.extend([OUT_OF_SCOPE] * len(catalog.out_of_scope))
        return cls(texts=texts, labels=np.asarray(labels, dtype=np.int32))

    def pack_candidates(self, catalog: Catalog) -> list[tuple[str, str]]:
        """(category, message) of the out-of-scope pack if the catalog uses it, minus texts it already has."""
        if catalog.out_of_scope_pack == "none":
            return []
        own = {text_key(text) for text in self.texts}
        return [(category, text) for category, text in pack_entries() if text_key(text) not in own]


@dataclass
class NeighbourLists:
    """Each index row's nearest rows (itself among them), most similar first, for the next build to reuse.

    A list holds an exact prefix of the row's neighbours in the whole index,
    padded with id -1 (similarity -inf) where an edit shortened it. Rows are
    named by a hash of their text (:func:`text_keys`), as is their vector.
    """

    keys: np.ndarray
    ids: np.ndarray
    sims: np.ndarray

    @property
    def depth(self) -> int:
        """Neighbours a list holds at most."""
        return self.ids.shape[1]


@dataclass
class Artifacts:
    """Everything routing needs besides the embedder: index, scorer and the auto threshold.

    ``neighbours`` (head scorer only, not loaded back) are kept for the next build.
    """

    index: PrototypeIndex
    scorer: Scorer
    auto_threshold: float
    meta: dict
    neighbours: NeighbourLists | None = None

    @property
    def fingerprint(self) -> str:
        """The catalog+model fingerprint these artifacts were built for."""
        return self.meta["fingerprint"]


def artifact_fingerprint(catalog: Catalog, embedder: Embedder) -> str:
    """Hash of everything the index and scorer depend on: texts, intent order, model, format."""
    content = {
        "version": ARTIFACT_VERSION,
        "model": embedder.fingerprint,
        "scorer": catalog.scorer.model_dump(),
        "intents": [[i.name, i.description, i.examples] for i in catalog.intents],
        "out_of_scope": catalog.out_of_scope,
        "out_of_scope_pack": pack_fingerprint() if catalog.out_of_scope_pack == "default" else None,
    }
    return hashlib.sha256(json.dumps(content, ensure_ascii=False).encode()).hexdigest()[:20]


def build_artifacts(catalog: Catalog, embedder: Embedder, cache: EmbeddingCache | None = None,
                    progress: ProgressCallback | None = None, previous: Heads | None = None,
                    previous_neighbours: NeighbourLists | None = None) -> tuple[Artifacts, Heads | None]:
    """Embed the catalog, index it and fit its scorer (no disk writes besides the embedding cache).

    ``previous`` are the heads of an earlier build of the same intents, to start the fits from;
    ``previous_neighbours`` the neighbour lists of an earlier build with the same model.
    Returns the artifacts and the fitted heads (None for nearest-prototype
    scoring), which are only saved for the next build to start from.
    """
    started = time.perf_counter()
    prototypes = Prototypes.from_catalog(catalog)
    pack = prototypes.pack_candidates(catalog)
    texts = prototypes.texts + [text for _, text in pack]
    total = len(texts)
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if progress:
            progress("embed", done, total)

    advance(0)  # tells the size of the catalog, even when every text is cached
    if cache is not None:
        vectors, embedded = cache.encode(embedder, texts, progress=advance)
    else:
        vectors, embedded = embedder.encode(texts), total
        advance(total)
    own_rows = len(prototypes.texts)
    prototypes, vectors, kept_categories = _add_pack(prototypes, pack, vectors)
    pack_kept = len(kept_categories)
    index = PrototypeIndex.build(vectors, prototypes.labels)
    n_intents = len(catalog.intents)
    own = [i for i, name in enumerate(catalog.intent_names()) if name not in catalog.pack_intents]
    category_ids = {category: number for number, category in enumerate(dict.fromkeys(kept_categories))}
    groups = np.array([-1] * own_rows + [category_ids[category] for category in kept_categories], dtype=np.int32)
    fitted = _fit_scorer(index, n_intents, own, prototypes.texts, catalog.scorer.lexical_features, previous,
                         progress, groups, previous_neighbours)
    heads = fitted.heads
    meta = {
        "fingerprint": artifact_fingerprint(catalog, embedder),
        "catalog": catalog.name,
        "model": embedder.fingerprint,
        "dim": int(vectors.shape[1]),
        "intents": catalog.intent_names(),
        "prototypes": len(prototypes.texts),
        "examples": sum(len(i.examples) for i in catalog.intents),
        "out_of_scope": len(catalog.out_of_scope),
        "pack_out_of_scope": pack_kept,
        "pack_dropped": len(pack) - pack_kept,
        "embedded": embedded,
        "index": index.kind,
        "scorer": fitted.scorer.name,
        "lexical_features": heads.vocabulary.size if heads is not None else 0,
        "auto_threshold": fitted.threshold,
        "auto_estimate": fitted.estimate,
        "intent_estimate": None if fitted.held_out_intents is None else intent_estimate(
            prototypes.labels, fitted.held_out_intents, prototypes.texts, own, catalog.intent_names(), HELD_OUT_BASIS),
        "build_seconds": round(time.perf_counter() - started, 3),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return Artifacts(index=index, scorer=fitted.scorer, auto_threshold=fitted.threshold, meta=meta,
                     neighbours=fitted.neighbours), heads


def _add_pack(prototypes: Prototypes, pack: list[tuple[str, str]], vectors: np.ndarray
              ) -> tuple[Prototypes, np.ndarray, list[str]]:
    """The prototypes and their vectors with the ``pack`` entries (the last rows of ``vectors``) that the
    catalog leaves standing (:func:`keep_mask`) added as negatives; also the category of each kept entry."""
    own, pack_vectors = vectors[:len(prototypes.texts)], vectors[len(prototypes.texts):]
    keep = keep_mask(pack_vectors, [category for category, _ in pack], own[prototypes.labels != OUT_OF_SCOPE])
    kept = [text for (_, text), chosen in zip(pack, keep) if chosen]
    categories = [category for (category, _), chosen in zip(pack, keep) if chosen]
    merged = Prototypes(texts=prototypes.texts + kept,
                        labels=np.concatenate([prototypes.labels, np.full(len(kept), OUT_OF_SCOPE, np.int32)]))
    return merged, np.concatenate([own, pack_vectors[keep]]), categories


def auto_estimate(threshold: float, in_scope_scores: np.ndarray | None, negative_scores: np.ndarray | None,
                  from_pack: np.ndarray | None = None, unseen_topic_scores: np.ndarray | None = None,
                  basis: str = "cross-fitted", unseen_intent_scores: np.ndarray | None = None) -> dict:
    """What the ``auto`` threshold is expected to do, from held-out scores of the catalog's own rows.

    ``in_scope_scores`` are held-out scores of the catalog's examples (None if
    there are none to learn from), ``negative_scores`` those of its
    out-of-scope examples and the pack's messages, ``from_pack`` marking the
    latter, and ``unseen_topic_scores`` the pack's messages scored again with
    their whole pack category left out (off-topic traffic on a topic no
    negative describes), and ``unseen_intent_scores`` the catalog's examples
    scored with their whole intent left out (traffic for an intent the
    catalog lacks). Each rate comes with its Wilson 95% interval
    (:func:`~gatekeeper.core.thresholds.rate_with_interval`); ``basis`` says how
    the scores were held out. docs/quality.md ("Few-shot catalogs") compares
    these estimates with what test sets measure.
    """
    estimate: dict = {"threshold": float(threshold), "policy_false_reject": DEFAULT_MAX_FALSE_REJECT, "basis": basis,
                      "interval": "wilson 95%", "false_reject_rate": None, "off_topic_recall": None,
                      "catalog_out_of_scope_recall": None, "pack_recall": None, "unseen_topic_recall": None,
                      "unseen_intent_recall": None}
    if in_scope_scores is not None and len(in_scope_scores):
        estimate["false_reject_rate"] = rate_with_interval(np.asarray(in_scope_scores) < threshold)
    if negative_scores is not None and len(negative_scores):
        refused = np.asarray(negative_scores) < threshold
        pack = np.zeros(len(refused), bool) if from_pack is None else np.asarray(from_pack, bool)
        estimate["off_topic_recall"] = rate_with_interval(refused)
        if (~pack).any():
            estimate["catalog_out_of_scope_recall"] = rate_with_interval(refused[~pack])
        if pack.any():
            estimate["pack_recall"] = rate_with_interval(refused[pack])
    if unseen_topic_scores is not None and len(unseen_topic_scores):
        estimate["unseen_topic_recall"] = rate_with_interval(np.asarray(unseen_topic_scores) < threshold)
    if unseen_intent_scores is not None and len(unseen_intent_scores):
        estimate["unseen_intent_recall"] = rate_with_interval(np.asarray(unseen_intent_scores) < threshold)
    return estimate


def describe_auto_estimate(estimate: dict | None) -> str:
    """One line for people: what the ``auto`` threshold is expected to refuse (see :func:`auto_estimate`)."""
    if not estimate:
        return "none (built by an older version: rebuild)"

    def rate(value: dict) -> str:
        return f"{value['rate']:.1%} (95% {value['low']:.1%}-{value['high']:.1%} of {value['n']})"

    parts = []
    if estimate["false_reject_rate"]:
        parts.append(f"in scope refused {rate(estimate['false_reject_rate'])}")
    else:
        parts.append("in scope refused: not estimated (too few examples per intent)")
    if estimate["off_topic_recall"]:
        sources = [f"{name} {estimate[key]['rate']:.1%}" for name, key in
                   (("catalog's out_of_scope", "catalog_out_of_scope_recall"), ("pack", "pack_recall"),
                    ("pack, its topic unseen", "unseen_topic_recall"),
                    ("examples, their intent unseen", "unseen_intent_recall")) if estimate.get(key)]
        parts.append(f"off topic refused {rate(estimate['off_topic_recall'])}: {', '.join(sources)}")
    else:
        parts.append("off topic refused: not estimated (no negatives)")
    return "; ".join(parts) + f" [{estimate['basis']}]"


class ScorerFit(NamedTuple):
    """What :func:`_fit_scorer` fits and derives; the last three are None for nearest-prototype scoring."""

    scorer: Scorer
    #: The ``auto`` threshold.
    threshold: float
    #: :func:`auto_estimate` of that threshold.
    estimate: dict
    heads: Heads | None
    neighbours: NeighbourLists | None
    #: The intent each index row's held-out logits pick (:data:`HELD_OUT_BASIS`), for :func:`intent_estimate`.
    held_out_intents: np.ndarray | None


def _fit_scorer(index: PrototypeIndex, n_intents: int, own_intents: list[int], texts: list[str],
                lexical_features: bool, previous: Heads | None, progress: ProgressCallback | None = None,
                groups: np.ndarray | None = None, previous_neighbours: NeighbourLists | None = None) -> ScorerFit:
    """Choose and fit the scorer, and derive the ``auto`` threshold (and :func:`auto_estimate`) from held-out
    features of the catalog's own rows; with the head, also the rows' :class:`NeighbourLists` and the intent
    each row's held-out logits pick.

    ``own_intents`` are the ids of the catalog's own intents (not a pack's). ``texts`` are the index's rows
    as text; with ``lexical_features`` the head also gets their character n-grams. ``progress`` hears
    ("fit", heads done, heads in all). ``groups`` gives each row's out-of-scope pack category (a number,
    -1 for the catalog's own rows). ``previous_neighbours`` are an earlier build's lists (same model).

    Each row's calibrator features are those of a message the gate has not seen:
    the head's logit from the head of the fold that left the row out (3-fold
    cross-fitting), and the two cosines from the full index with the row
    itself left out (an index without a third of the examples, as before, made
    a 10-example intent's own examples look far less typical than its real
    messages, so ``auto`` refused far fewer messages than the policy allows).
    A pack message is used twice, with its nearest negative found with and
    without its own pack category: off-topic traffic is partly on topics some
    negative describes and partly on topics none does. With two intents or
    more, each example of the catalog's own intents is also used as off-topic
    traffic on an intent the catalog lacks (:func:`_unseen_intent_features`,
    weighted :data:`UNSEEN_INTENT_WEIGHT`). The ``auto`` threshold
    rejects :data:`DEFAULT_MAX_FALSE_REJECT` of the examples' held-out scores
    (docs/quality.md, "Few-shot catalogs", compares it with test sets).
    """
    labels = index.labels
    groups = np.full(len(labels), -1, np.int32) if groups is None else np.asarray(groups)
    from_pack = groups >= 0
    if not uses_head(labels, n_intents, own_intents):
        scorer = NearestPrototypeScorer(index, n_intents)
        threshold, in_scores, negative_scores, negative_rows = _nearest_auto_threshold(index, n_intents)
        basis = ("nearest prototype: examples left out one at a time" if in_scores is not None else
                 f"nearest prototype: the threshold refuses {1 - AUTO_NEGATIVES_ACCEPTED:.0%} of the negatives")
        basis += f", negatives held out in {CROSS_FIT_FOLDS} folds" if negative_scores is not None else ""
        return ScorerFit(scorer, threshold, auto_estimate(threshold, in_scores, negative_scores,
                                                         from_pack[negative_rows], basis=basis), None, None, None)
    folds = fold_ids(texts)
    lexical, lexical_rows = CharNgrams.fit_transform(texts) if lexical_features else (None, None)
    vocabulary = lexical.vocabulary if lexical is not None else np.array([], dtype=str)
    inputs = head_inputs(index.vectors, lexical_rows)

    def held_out_logits(fold: int, head: Head) -> np.ndarray:
        return _intent_logits(inputs[folds == fold], head, n_intents)

    if progress:
        progress("fit", 0, CROSS_FIT_FOLDS + 1)
    with single_threaded_pool(available_cores()) as pool:
        # The search takes a core while the fits take the other (more fits than cores in a cold build). Deep
        # enough to leave out a row's pack category, or its whole intent (the labels as groups: a negative's
        # OUT_OF_SCOPE is -1, no group).
        searched = pool.submit(neighbour_lists, index, text_keys(texts),
                               max(_search_depth(groups), _search_depth(labels)), previous_neighbours)
        pool.submit(import_solver)
        heads, per_fold = fit_heads(inputs, vocabulary, labels, n_intents, folds, previous, held_out_logits,
                                    on_fitted=partial(progress, "fit") if progress else None, pool=pool)
        neighbours = searched.result()
    logits = np.zeros((len(labels), n_intents))
    for fold, fold_logits in enumerate(per_fold):
        logits[folds == fold] = fold_logits
    features = np.zeros((len(labels), 3))
    features[:, 0] = logits.max(axis=1)
    features[:, 1], features[:, 2] = _left_out_from_lists(labels, neighbours.sims, neighbours.ids)
    in_scope = labels != OUT_OF_SCOPE
    unseen = features[from_pack].copy()
    unseen[:, 1], unseen[:, 2] = _left_out_from_lists(labels, neighbours.sims, neighbours.ids, groups,
                                                      np.flatnonzero(from_pack))
    unseen_intent = _unseen_intent_features(labels, logits, own_intents, neighbours)
    if in_scope.all():
        calibrator = Calibrator.first_feature(features)
    else:
        calibrator = _fit_auto_calibrator(features, in_scope, unseen, unseen_intent)
    scorer = HeadScorer(index, n_intents, heads.full, calibrator, lexical)
    scores = calibrator.probability(features)
    threshold = threshold_for_false_reject(scores[in_scope], DEFAULT_MAX_FALSE_REJECT)
    estimate = auto_estimate(threshold, scores[in_scope], scores[~in_scope], from_pack[~in_scope],
                             calibrator.probability(unseen), basis=f"{HELD_OUT_BASIS}, cosines with the row left out",
                             unseen_intent_scores=calibrator.probability(unseen_intent))
    return ScorerFit(scorer, threshold, estimate, heads, neighbours, logits.argmax(axis=1))


def _intent_logits(inputs: HeadInputs, head: Head, n_intents: int) -> np.ndarray:
    """The intents' logits (n, K) of ``head`` on the rows of ``inputs``
    (:func:`~gatekeeper.core.scoring.head_inputs`)."""
    weights, bias = head
    return np.asarray(inputs @ weights + bias)[:, :n_intents]


def _unseen_intent_features(labels: np.ndarray, logits: np.ndarray, own_intents: list[int],
                            neighbours: NeighbourLists) -> np.ndarray:
    """Calibrator features of each example of the catalog's ``own_intents`` as a message of an intent the
    catalog lacks: the best cross-fitted ``logits`` (n, K) of the other intents, and the two cosines with every
    example of its intent left out of the index (from the rows' ``neighbours``). Empty with fewer than two
    intents. A pack's intents (greetings, thanks) are not used: they are in scope in every catalog with the
    pack, and as negatives they taught ``auto`` to refuse short conversational turns.

    These are near-miss negatives in the spirit of leave-one-class-out validation
    for open-set recognition: off-topic traffic often asks for something close to the catalog's
    intents, which neither the pack nor the catalog's own ``out_of_scope`` rows describe.
    """
    rows = np.flatnonzero(np.isin(labels, own_intents))
    if logits.shape[1] < 2 or len(rows) == 0:
        return np.zeros((0, 3))
    others = logits[rows].copy()
    others[np.arange(len(rows)), labels[rows]] = -np.inf
    features = np.zeros((len(rows), 3))
    features[:, 0] = others.max(axis=1)
    # The labels are the groups to leave out: each intent's examples one group, a negative's OUT_OF_SCOPE (-1) none.
    features[:, 1], features[:, 2] = _left_out_from_lists(labels, neighbours.sims, neighbours.ids, labels, rows)
    return features


def _fit_auto_calibrator(features: np.ndarray, in_scope: np.ndarray, unseen_topic: np.ndarray,
                         unseen_intent: np.ndarray) -> Calibrator:
    """The ``auto`` calibrator: the held-out ``features`` of the index's rows (``in_scope`` marks the
    intents' examples), with two more sets of negatives: pack messages with their topic unseen and
    examples with their intent unseen, the latter weighted :data:`UNSEEN_INTENT_WEIGHT`."""
    negatives = np.concatenate([unseen_topic, unseen_intent])
    weights = np.concatenate([np.ones(len(features) + len(unseen_topic)),
                              np.full(len(unseen_intent), UNSEEN_INTENT_WEIGHT)])
    return Calibrator.fit(np.concatenate([features, negatives]),
                          np.concatenate([in_scope, np.zeros(len(negatives), bool)]), weights)


def _search_depth(groups: np.ndarray | None) -> int:
    """Neighbours :func:`_left_out_from_lists` needs per row: :data:`SEARCH_K`, the row itself, and its group."""
    grouped = groups is not None and (groups >= 0).any()
    return SEARCH_K + 1 + (int(np.bincount(groups[groups >= 0]).max()) if grouped else 0)


def _left_out_from_lists(labels: np.ndarray, sims: np.ndarray, ids: np.ndarray, groups: np.ndarray | None = None,
                         rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cosine to the nearest intent example and to the nearest negative of each of ``rows``, as
    :func:`~gatekeeper.core.scoring.nearest_similarities` gives them for a message, with the row itself left
    out of the index and, given ``groups``, every row of its group (-1: no group): the
    :data:`~gatekeeper.core.scoring.SEARCH_K` nearest prototypes that remain are those an index without the
    left-out rows would return. From neighbour lists: ``sims`` and ``ids`` (n, depth) of every row, most
    similar first, id -1 past a list's end, at least :func:`_search_depth` deep (or the whole index).
    ``rows`` selects the rows (default all).
    """
    rows = np.arange(len(ids)) if rows is None else np.asarray(rows)
    if len(rows) == 0:
        return np.zeros(0), np.zeros(0)
    sims, ids = sims[rows], ids[rows]
    found = ids >= 0
    safe = np.where(found, ids, 0)
    usable = found & (safe != rows[:, None])
    if groups is not None and (groups >= 0).any():
        own = groups[rows][:, None]
        usable &= (own < 0) | (groups[safe] != own)
    usable &= np.cumsum(usable, axis=1) <= SEARCH_K
    inside = labels[safe] != OUT_OF_SCOPE
    nearest_intent = np.where(usable & inside, sims, -1.0).max(axis=1, initial=-1.0)
    nearest_negative = np.where(usable & ~inside, sims, -1.0).max(axis=1, initial=-1.0)
    return nearest_intent, nearest_negative


def text_keys(texts: list[str]) -> np.ndarray:
    """A 64-bit hash of each text, naming its row across builds (:class:`NeighbourLists`)."""
    return np.array([int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
                     for text in texts], dtype=np.uint64)


def neighbour_lists(index: PrototypeIndex, keys: np.ndarray, depth: int, previous: NeighbourLists | None = None
                    ) -> NeighbourLists:
    """Every row's ``depth`` + :data:`NEIGHBOUR_MARGIN` nearest rows of ``index`` (exact; reused lists keep
    their depth, between ``depth`` and ``depth`` + twice the margin), its rows named by ``keys``.

    With ``previous`` lists of the same texts' vectors, a row that was
    there keeps its list: its neighbours that are gone leave it, the added
    rows enter where they are nearer (:func:`_merge_added`). Only the added
    rows, and rows left with fewer than ``depth`` known neighbours, are
    searched. Without ``previous`` (or with repeated keys), every row is.
    The search runs on the calling thread alone (it runs beside the fits).
    """
    n = len(keys)
    vectors = index.vectors
    reusable = (previous is not None and depth <= previous.depth <= depth + 2 * NEIGHBOUR_MARGIN
                and len(np.unique(keys)) == n and len(np.unique(previous.keys)) == len(previous.keys))
    # Lists as deep as the previous build's while they are deep enough and not much deeper, so that an edit
    # growing the largest intent by a few rows still reuses them.
    stored = previous.depth if reusable else depth + NEIGHBOUR_MARGIN
    if reusable:
        ids, sims, known = _merge_added(previous, keys, vectors)
        stale = np.flatnonzero(known < min(depth, n))
    else:
        ids, sims = np.full((n, stored), -1, np.int32), np.full((n, stored), -np.inf, np.float32)
        stale = np.arange(n)
    if len(stale):
        search_on_this_thread_alone()
        found_sims, found_ids = index.search(vectors[stale], stored)
        width = found_ids.shape[1]
        ids[stale], sims[stale] = -1, -np.inf
        ids[stale, :width], sims[stale, :width] = found_ids, np.where(found_ids >= 0, found_sims, -np.inf)
    return NeighbourLists(keys=keys, ids=ids, sims=sims)


def _merge_added(previous: NeighbourLists, keys: np.ndarray, vectors: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``previous`` lists carried over to the rows named ``keys`` (vectors ``vectors``), with the rows it
    lacked merged in: lists (ids, sims), and how many leading neighbours of each are known exactly.

    A previous list is an exact prefix: rows missing from it are no nearer than
    its last entry. After dropping removed rows and merging in the added ones,
    the entries at least as near as that bound are still exact; an added row
    (no previous list) knows none.
    """
    stored = previous.depth
    position = {key: row for row, key in enumerate(keys.tolist())}
    old_to_new = np.array([position.get(key, -1) for key in previous.keys.tolist()], dtype=np.int64)
    new_to_old = np.full(len(keys), -1, dtype=np.int64)
    new_to_old[old_to_new[old_to_new >= 0]] = np.flatnonzero(old_to_new >= 0)
    kept, added = np.flatnonzero(new_to_old >= 0), np.flatnonzero(new_to_old < 0)
    old_ids, old_sims = previous.ids[new_to_old[kept]], previous.sims[new_to_old[kept]]
    listed = old_ids >= 0
    bound = np.where(listed, old_sims, np.inf).min(axis=1)
    mapped = np.where(listed, old_to_new[np.maximum(old_ids, 0)], -1)
    merged_ids = np.concatenate([mapped, np.broadcast_to(added, (len(kept), len(added)))], axis=1)
    merged_sims = np.concatenate([np.where(mapped >= 0, old_sims, -np.inf),
                                  vectors[kept] @ vectors[added].T], axis=1).astype(np.float32)
    exact = (merged_ids >= 0) & (merged_sims >= bound[:, None])
    changed = np.flatnonzero((mapped < 0).any(axis=1) | exact[:, stored:].any(axis=1))
    ids = np.full((len(keys), stored), -1, np.int32)
    sims = np.full((len(keys), stored), -np.inf, np.float32)
    ids[kept], sims[kept] = merged_ids[:, :stored], merged_sims[:, :stored]
    order = np.argsort(-merged_sims[changed], axis=1, kind="stable")[:, :stored]
    ids[kept[changed]] = np.take_along_axis(merged_ids[changed], order, axis=1)
    sims[kept[changed]] = np.take_along_axis(merged_sims[changed], order, axis=1)
    known = np.zeros(len(keys), dtype=np.int64)
    known[kept] = exact.sum(axis=1)
    unknown = np.arange(stored)[None, :] >= known[:, None]
    ids[unknown], sims[unknown] = -1, -np.inf
    return ids, sims, known


def _nearest_auto_threshold(index: PrototypeIndex, n_intents: int
                            ) -> tuple[float, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """``auto`` threshold for nearest-prototype scoring, with the held-out scores it rests on.

    With two or more prototypes for every intent: the leave-one-out score of
    each example at the default false-reject rate. Otherwise (descriptions
    only, zero-shot) there are no in-scope scores to learn from, so the
    negatives set it: the threshold accepts at most :data:`AUTO_NEGATIVES_ACCEPTED`
    of the out-of-scope examples (the catalog's and the pack's), each scored
    without itself in the index. With neither, the highest similarity
    between two different intents' prototypes: a message must be nearer to
    an intent than the intents are to each other.

    Also returns the held-out in-scope scores (None without them), the
    held-out negatives' scores (None without enough negatives) and the
    index rows of those negatives, for :func:`auto_estimate`.
    """
    labels = index.labels
    in_scope = labels != OUT_OF_SCOPE
    vectors = index.vectors
    counts = np.bincount(labels[in_scope], minlength=n_intents)
    negative_rows = np.flatnonzero(~in_scope)
    negatives = (_held_out_negative_scores(index, n_intents) if len(negative_rows) >= HEAD_MIN_NEGATIVES
                 else None)
    if negatives is None:
        negative_rows = negative_rows[:0]
    if counts.min() >= 2:
        sims = vectors[in_scope] @ vectors[in_scope].T
        np.fill_diagonal(sims, -np.inf)
        same = labels[in_scope][:, None] == labels[in_scope][None, :]
        best = np.where(same, sims, -np.inf).max(axis=1)
        return threshold_for_false_reject(best, DEFAULT_MAX_FALSE_REJECT), best, negatives, negative_rows
    if negatives is not None:
        return float(np.quantile(negatives, 1 - AUTO_NEGATIVES_ACCEPTED)), None, negatives, negative_rows
    per_intent, _ = nearest_similarities(index, vectors[in_scope], n_intents)
    per_intent[np.arange(int(in_scope.sum())), labels[in_scope]] = -1.0
    return float(per_intent.max()), None, None, negative_rows


def _held_out_negative_scores(index: PrototypeIndex, n_intents: int) -> np.ndarray:
    """Nearest-prototype scores of the negatives (in index order), each fold's scored against an index
    without that fold."""
    labels, vectors = index.labels, index.vectors
    negative = np.flatnonzero(labels == OUT_OF_SCOPE)
    folds = np.zeros(len(labels), dtype=np.int32)
    folds[negative] = np.arange(len(negative)) % CROSS_FIT_FOLDS
    scores = np.zeros(len(labels), dtype=np.float32)
    for fold in range(CROSS_FIT_FOLDS):
        held_out = np.zeros(len(labels), dtype=bool)
        held_out[negative[folds[negative] == fold]] = True
        rest = PrototypeIndex.build(vectors[~held_out], labels[~held_out], hnsw=False)
        scores[held_out] = NearestPrototypeScorer(rest, n_intents).score(vectors[held_out], []).score
    return scores[negative]
