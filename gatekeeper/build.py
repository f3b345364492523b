"""Catalog -> embeddings -> prototype index -> fitted scorer, saved on disk and reused until stale.

The saved artifacts carry a fingerprint of the catalog's texts, the embedding
model and the artifact format; loading with a different fingerprint rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from gatekeeper import environment
from gatekeeper.catalog_checks import text_key
from gatekeeper.catalog_schema import Catalog
from gatekeeper.embedders.base import Embedder
from gatekeeper.embedders.cache import EmbeddingCache
from gatekeeper.head_fitting import CROSS_FIT_FOLDS, Heads, fit_heads, fold_ids, load_heads, save_heads
from gatekeeper.index import OUT_OF_SCOPE, PrototypeIndex, read_meta
from gatekeeper.lexical import CharNgrams
from gatekeeper.oos_pack import keep_mask, pack_entries, pack_fingerprint
from gatekeeper.scoring import (HEAD_MIN_NEGATIVES, SEARCH_K, HeadInputs, HeadScorer, NearestPrototypeScorer,
                                Scorer, fit_calibrator, head_inputs, load_scorer, nearest_similarities, uses_head)
from gatekeeper.thresholds import DEFAULT_MAX_FALSE_REJECT, rate_with_interval, threshold_for_false_reject

#: Bump whenever what a build produces changes, so old saves rebuild
#: (v2: hash-stable folds, saved heads; v3: n-gram features in the head; v4: out-of-scope pack;
#: v5: calibrator features with the row left out of the index, pack messages also without their category,
#: and the ``auto`` estimate; v6: examples with their intent left out as negatives of the ``auto`` calibrator).
ARTIFACT_VERSION = 6
#: Zero-shot ``auto``: at most this share of held-out out-of-scope examples accepted.
AUTO_NEGATIVES_ACCEPTED = 0.1
#: Weight of an example standing in, with its intent left out, for off-topic traffic on an intent the catalog
#: lacks, in the ``auto`` calibrator's fit (other rows weigh 1). Chosen on CLINC150's and SMP2017's 10-shot
#: catalogs (docs/quality.md): at full weight these near misses cost SMP2017 a tenth of its OOS recall.
UNSEEN_INTENT_WEIGHT = 0.2

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
class Artifacts:
    """Everything routing needs besides the embedder: index, scorer and the auto threshold."""

    index: PrototypeIndex
    scorer: Scorer
    auto_threshold: float
    meta: dict

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


def state_dir(catalog_path: str | Path) -> Path:
    """Where a catalog's built artifacts live: ``$GATEKEEPER_STATE_DIR`` or ``.gatekeeper/`` beside it."""
    path = Path(catalog_path).resolve()
    root = environment.read(environment.STATE_DIR)
    return (Path(root) if root else path.parent / ".gatekeeper") / path.stem


def load_or_build(catalog: Catalog, catalog_path: str | Path, embedder: Embedder,
                  progress: ProgressCallback | None = None, force: bool = False) -> tuple[Artifacts, bool]:
    """Load the saved artifacts if still fresh, else build and save them.

    Returns the artifacts and whether they were (re)built.
    """
    folder = state_dir(catalog_path)
    fingerprint = artifact_fingerprint(catalog, embedder)
    if not force:
        loaded = load_artifacts(folder, fingerprint, len(catalog.intents))
        if loaded is not None:
            return loaded, False
    with closing(EmbeddingCache(folder.parent / "embeddings.sqlite")) as cache:
        artifacts, heads = build_artifacts(catalog, embedder, cache=cache, progress=progress,
                                           previous=load_heads(folder, catalog.intent_names()))
    save_artifacts(folder, artifacts, heads)
    return artifacts, True


def build_artifacts(catalog: Catalog, embedder: Embedder, cache: EmbeddingCache | None = None,
                    progress: ProgressCallback | None = None, previous: Heads | None = None
                    ) -> tuple[Artifacts, Heads | None]:
    """Embed the catalog, index it and fit its scorer (no disk writes besides the embedding cache).

    ``previous`` are the heads of an earlier build of the same intents, to start the fits from.
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
    scorer, auto_threshold, heads, estimate = _fit_scorer(index, n_intents, own, prototypes.texts,
                                                          catalog.scorer.lexical_features, previous, progress,
                                                          groups)
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
        "scorer": scorer.name,
        "lexical_features": heads.vocabulary.size if heads is not None else 0,
        "auto_threshold": auto_threshold,
        "auto_estimate": estimate,
        "build_seconds": round(time.perf_counter() - started, 3),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return Artifacts(index=index, scorer=scorer, auto_threshold=auto_threshold, meta=meta), heads


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
    (:func:`~gatekeeper.thresholds.rate_with_interval`); ``basis`` says how
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


def _fit_scorer(index: PrototypeIndex, n_intents: int, own_intents: list[int], texts: list[str],
                lexical_features: bool, previous: Heads | None, progress: ProgressCallback | None = None,
                groups: np.ndarray | None = None) -> tuple[Scorer, float, Heads | None, dict]:
    """Choose and fit the scorer, and derive the ``auto`` threshold (and :func:`auto_estimate`) from held-out
    features of the catalog's own rows.

    ``own_intents`` are the ids of the catalog's own intents (not a pack's). ``texts`` are the index's rows
    as text; with ``lexical_features`` the head also gets their character n-grams. ``progress`` hears
    ("fit", heads done, heads in all). ``groups`` gives each row's out-of-scope pack category (a number,
    -1 for the catalog's own rows).

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
        return scorer, threshold, None, auto_estimate(threshold, in_scores, negative_scores, from_pack[negative_rows],
                                                      basis=basis)
    folds = fold_ids(texts)
    lexical, lexical_rows = CharNgrams.fit_transform(texts) if lexical_features else (None, None)
    vocabulary = lexical.vocabulary if lexical is not None else np.array([], dtype=str)
    inputs = head_inputs(index.vectors, lexical_rows)

    def held_out_logits(fold: int, head: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        return _intent_logits(inputs[folds == fold], head, n_intents)

    if progress:
        progress("fit", 0, CROSS_FIT_FOLDS + 1)
    heads, per_fold = fit_heads(inputs, vocabulary, labels, n_intents, folds, previous, held_out_logits,
                                on_fitted=partial(progress, "fit") if progress else None)
    logits = np.zeros((len(labels), n_intents))
    for fold, fold_logits in enumerate(per_fold):
        logits[folds == fold] = fold_logits
    features = np.zeros((len(labels), 3))
    features[:, 0] = logits.max(axis=1)
    features[:, 1], features[:, 2] = _left_out_neighbours(index)
    in_scope = labels != OUT_OF_SCOPE
    unseen = features[from_pack].copy()
    unseen[:, 1], unseen[:, 2] = _left_out_neighbours(index, groups, np.flatnonzero(from_pack))
    unseen_intent = _unseen_intent_features(index, logits, own_intents)
    if in_scope.all():
        # No negatives: the score is the standardised head logit, squashed to (0, 1).
        mean, scale = features.mean(axis=0), np.maximum(features.std(axis=0), 1e-9)
        calibration = (np.array([1.0, 0.0, 0.0]), 0.0, mean, scale)
    else:
        calibration = _fit_auto_calibrator(features, in_scope, unseen, unseen_intent)
    scorer = HeadScorer(index, n_intents, *heads.full, *calibration, lexical)
    scores = scorer.calibrate(features)
    threshold = threshold_for_false_reject(scores[in_scope], DEFAULT_MAX_FALSE_REJECT)
    estimate = auto_estimate(threshold, scores[in_scope], scores[~in_scope], from_pack[~in_scope],
                             scorer.calibrate(unseen),
                             basis=f"head logits cross-fitted ({CROSS_FIT_FOLDS} folds), cosines with the row left "
                                   "out", unseen_intent_scores=scorer.calibrate(unseen_intent))
    return scorer, threshold, heads, estimate


def _intent_logits(inputs: HeadInputs, head: tuple[np.ndarray, np.ndarray], n_intents: int) -> np.ndarray:
    """The intents' logits (n, K) of ``head`` on the rows of ``inputs`` (:func:`gatekeeper.scoring.head_inputs`)."""
    weights, bias = head
    return np.asarray(inputs @ weights + bias)[:, :n_intents]


def _unseen_intent_features(index: PrototypeIndex, logits: np.ndarray, own_intents: list[int]) -> np.ndarray:
    """Calibrator features of each example of the catalog's ``own_intents`` as a message of an intent the
    catalog lacks: the best cross-fitted ``logits`` (n, K) of the other intents, and the two cosines with every
    example of its intent left out of the index (:func:`_left_out_neighbours`). Empty with fewer than two
    intents. A pack's intents (greetings, thanks) are not used: they are in scope in every catalog with the
    pack, and as negatives they taught ``auto`` to refuse short conversational turns.

    These are near-miss negatives in the spirit of leave-one-class-out validation
    for open-set recognition: off-topic traffic often asks for something close to the catalog's
    intents, which neither the pack nor the catalog's own ``out_of_scope`` rows describe.
    """
    labels = index.labels
    rows = np.flatnonzero(np.isin(labels, own_intents))
    if logits.shape[1] < 2 or len(rows) == 0:
        return np.zeros((0, 3))
    others = logits[rows].copy()
    others[np.arange(len(rows)), labels[rows]] = -np.inf
    features = np.zeros((len(rows), 3))
    features[:, 0] = others.max(axis=1)
    intents = np.where(labels != OUT_OF_SCOPE, labels, -1).astype(np.int32)
    features[:, 1], features[:, 2] = _left_out_neighbours(index, intents, rows)
    return features


def _fit_auto_calibrator(features: np.ndarray, in_scope: np.ndarray, unseen_topic: np.ndarray,
                         unseen_intent: np.ndarray) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """The ``auto`` calibrator: the held-out ``features`` of the index's rows (``in_scope`` marks the
    intents' examples), with two more sets of negatives: pack messages with their topic unseen and
    examples with their intent unseen, the latter weighted :data:`UNSEEN_INTENT_WEIGHT`."""
    negatives = np.concatenate([unseen_topic, unseen_intent])
    weights = np.concatenate([np.ones(len(features) + len(unseen_topic)),
                              np.full(len(unseen_intent), UNSEEN_INTENT_WEIGHT)])
    return fit_calibrator(np.concatenate([features, negatives]),
                          np.concatenate([in_scope, np.zeros(len(negatives), bool)]), weights)


def _left_out_neighbours(index: PrototypeIndex, groups: np.ndarray | None = None, rows: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Cosine to the nearest intent example and to the nearest negative of each of ``rows`` (default all)
    of the index, as :func:`~gatekeeper.scoring.nearest_similarities` gives them for a message, with the
    row itself left out of the index and, given ``groups``, every row of its group (-1: no group).

    The :data:`~gatekeeper.scoring.SEARCH_K` nearest prototypes that remain
    are those an index without the left-out rows would return: the index is
    searched deeper by their number, and they are skipped.
    """
    rows = np.arange(len(index.labels)) if rows is None else rows
    labels = index.labels
    if len(rows) == 0:
        return np.zeros(0), np.zeros(0)
    grouped = groups is not None and (groups >= 0).any()
    depth = SEARCH_K + 1 + (int(np.bincount(groups[groups >= 0]).max()) if grouped else 0)
    sims, ids = index.search(index.vectors[rows], depth)
    found = ids >= 0
    safe = np.where(found, ids, 0)
    usable = found & (safe != rows[:, None])
    if grouped:
        own = groups[rows][:, None]
        usable &= (own < 0) | (groups[safe] != own)
    usable &= np.cumsum(usable, axis=1) <= SEARCH_K
    inside = labels[safe] != OUT_OF_SCOPE
    nearest_intent = np.where(usable & inside, sims, -1.0).max(axis=1, initial=-1.0)
    nearest_negative = np.where(usable & ~inside, sims, -1.0).max(axis=1, initial=-1.0)
    return nearest_intent, nearest_negative


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


def save_artifacts(folder: Path, artifacts: Artifacts, heads: Heads | None = None) -> None:
    """Write ``artifacts`` (and ``heads``, for the next build to start from) to ``folder``; its metadata last."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "scorer.npz", **artifacts.scorer.state())
    if heads is not None:
        save_heads(folder, artifacts.meta["intents"], heads)
    artifacts.index.save(folder, artifacts.meta)


def load_artifacts(folder: Path, fingerprint: str, n_intents: int) -> Artifacts | None:
    """The artifacts saved in ``folder`` if built for ``fingerprint``, else None (stale, absent or unfinished)."""
    index = PrototypeIndex.load(folder, fingerprint)
    if index is None:
        return None
    meta = read_meta(folder) or {}
    with np.load(folder / "scorer.npz") as arrays:
        state = {key: arrays[key] for key in arrays.files}
    scorer = load_scorer(meta["scorer"], index, n_intents, state)
    return Artifacts(index=index, scorer=scorer, auto_threshold=float(meta["auto_threshold"]), meta=meta)
