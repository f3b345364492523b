"""Catalog -> embeddings -> prototype index -> fitted scorer, saved on disk and reused until stale.

The saved artifacts carry a fingerprint of the catalog's texts, the embedding
model and the artifact format; loading with a different fingerprint rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import sparse

from gatekeeper.catalog_checks import text_key
from gatekeeper.catalog_schema import Catalog
from gatekeeper.embedders.base import Embedder
from gatekeeper.embedders.cache import EmbeddingCache
from gatekeeper.head_fitting import CROSS_FIT_FOLDS, Heads, fit_heads, fold_ids, load_heads, save_heads
from gatekeeper.index import OUT_OF_SCOPE, PrototypeIndex, read_meta
from gatekeeper.lexical import CharNgrams
from gatekeeper.oos_pack import keep_mask, pack_entries, pack_fingerprint
from gatekeeper.scoring import (HEAD_MIN_NEGATIVES, HeadScorer, NearestPrototypeScorer, Scorer, fit_calibrator,
                                head_inputs, load_scorer, nearest_similarities, uses_head)
from gatekeeper.thresholds import threshold_for_false_reject

#: Bump whenever what a build produces changes, so old saves rebuild
#: (v2: hash-stable folds, saved heads; v3: n-gram features in the head; v4: out-of-scope pack).
ARTIFACT_VERSION = 4
STATE_ENV = "GATEKEEPER_STATE_DIR"
#: Default policy for ``threshold: auto``: at most this share of in-scope messages wrongly rejected.
AUTO_FALSE_REJECT = 0.05
#: Zero-shot ``auto``: at most this share of held-out out-of-scope examples accepted.
AUTO_NEGATIVES_ACCEPTED = 0.1

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
    root = Path(os.environ[STATE_ENV]) if os.environ.get(STATE_ENV) else path.parent / ".gatekeeper"
    return root / path.stem


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
    prototypes, vectors, pack_kept = _add_pack(prototypes, pack, vectors)
    index = PrototypeIndex.build(vectors, prototypes.labels)
    n_intents = len(catalog.intents)
    own = [i for i, name in enumerate(catalog.intent_names()) if name not in catalog.pack_intents]
    scorer, auto_threshold, heads = _fit_scorer(index, n_intents, own, prototypes.texts,
                                                catalog.scorer.lexical_features, previous, progress)
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
        "build_seconds": round(time.perf_counter() - started, 3),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return Artifacts(index=index, scorer=scorer, auto_threshold=auto_threshold, meta=meta), heads


def _add_pack(prototypes: Prototypes, pack: list[tuple[str, str]], vectors: np.ndarray
              ) -> tuple[Prototypes, np.ndarray, int]:
    """The prototypes and their vectors with the ``pack`` entries (the last rows of ``vectors``) that the
    catalog leaves standing (:func:`keep_mask`) added as negatives; also how many were kept."""
    own, pack_vectors = vectors[:len(prototypes.texts)], vectors[len(prototypes.texts):]
    keep = keep_mask(pack_vectors, [category for category, _ in pack], own[prototypes.labels != OUT_OF_SCOPE])
    kept = [text for (_, text), chosen in zip(pack, keep) if chosen]
    merged = Prototypes(texts=prototypes.texts + kept,
                        labels=np.concatenate([prototypes.labels, np.full(len(kept), OUT_OF_SCOPE, np.int32)]))
    return merged, np.concatenate([own, pack_vectors[keep]]), len(kept)


def _fit_scorer(index: PrototypeIndex, n_intents: int, own_intents: list[int], texts: list[str],
                lexical_features: bool, previous: Heads | None, progress: ProgressCallback | None = None
                ) -> tuple[Scorer, float, Heads | None]:
    """Choose and fit the scorer, and derive the ``auto`` threshold from out-of-fold scores.

    ``own_intents`` are the ids of the catalog's own intents (not a pack's). ``texts`` are the index's rows as text; with ``lexical_features`` the head
    also gets their character n-grams. ``progress`` hears ("fit", heads done, heads in all).
    """
    labels = index.labels
    if not uses_head(labels, n_intents, own_intents):
        scorer = NearestPrototypeScorer(index, n_intents)
        return scorer, _nearest_auto_threshold(index, n_intents), None
    folds = fold_ids(texts)
    vectors = index.vectors
    lexical, lexical_rows = CharNgrams.fit_transform(texts) if lexical_features else (None, None)
    vocabulary = lexical.vocabulary if lexical is not None else np.array([], dtype=str)

    def out_of_fold(fold: int, head: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        return _out_of_fold_features(vectors, labels, n_intents, folds, fold, head, lexical_rows)

    if progress:
        progress("fit", 0, CROSS_FIT_FOLDS + 1)
    heads, per_fold = fit_heads(head_inputs(vectors, lexical_rows), vocabulary, labels, n_intents, folds,
                                previous, out_of_fold, on_fitted=partial(progress, "fit") if progress else None)
    features = np.zeros((len(labels), 3))
    for fold, values in enumerate(per_fold):
        features[folds == fold] = values
    in_scope = labels != OUT_OF_SCOPE
    if in_scope.all():
        # No negatives: the score is the standardised head logit, squashed to (0, 1).
        mean, scale = features.mean(axis=0), np.maximum(features.std(axis=0), 1e-9)
        calibration = (np.array([1.0, 0.0, 0.0]), 0.0, mean, scale)
    else:
        calibration = fit_calibrator(features, in_scope)
    scorer = HeadScorer(index, n_intents, *heads.full, *calibration, lexical)
    scores = scorer.calibrate(features)
    return scorer, threshold_for_false_reject(scores[in_scope], AUTO_FALSE_REJECT), heads


def _out_of_fold_features(vectors: np.ndarray, labels: np.ndarray, n_intents: int, folds: np.ndarray, fold: int,
                          head: tuple[np.ndarray, np.ndarray], lexical_rows: sparse.csr_matrix | None
                          ) -> np.ndarray:
    """Calibrator features of the rows in ``fold``, from its ``head`` and an index of the other folds' rows."""
    held_out, rest = folds == fold, folds != fold
    if not held_out.any():
        return np.zeros((0, 3))
    fold_index = PrototypeIndex.build(vectors[rest], labels[rest], hnsw=False)
    probe = HeadScorer(fold_index, n_intents, *head, np.zeros(3), 0.0, np.zeros(3), np.ones(3))
    return probe.features(vectors[held_out], None if lexical_rows is None else lexical_rows[held_out])[0]


def _nearest_auto_threshold(index: PrototypeIndex, n_intents: int) -> float:
    """``auto`` threshold for nearest-prototype scoring.

    With two or more prototypes for every intent: the leave-one-out score of
    each example at the default false-reject rate. Otherwise (descriptions
    only, zero-shot) there are no in-scope scores to learn from, so the
    negatives set it: the threshold accepts at most :data:`AUTO_NEGATIVES_ACCEPTED`
    of the out-of-scope examples (the catalog's and the pack's), each scored
    without itself in the index. With neither, the highest similarity
    between two different intents' prototypes: a message must be nearer to
    an intent than the intents are to each other.
    """
    labels = index.labels
    in_scope = labels != OUT_OF_SCOPE
    vectors = index.vectors
    counts = np.bincount(labels[in_scope], minlength=n_intents)
    if counts.min() >= 2:
        sims = vectors[in_scope] @ vectors[in_scope].T
        np.fill_diagonal(sims, -np.inf)
        same = labels[in_scope][:, None] == labels[in_scope][None, :]
        best = np.where(same, sims, -np.inf).max(axis=1)
        return threshold_for_false_reject(best, AUTO_FALSE_REJECT)
    if (~in_scope).sum() >= HEAD_MIN_NEGATIVES:
        return float(np.quantile(_held_out_negative_scores(index, n_intents), 1 - AUTO_NEGATIVES_ACCEPTED))
    per_intent, _ = nearest_similarities(index, vectors[in_scope], n_intents)
    per_intent[np.arange(int(in_scope.sum())), labels[in_scope]] = -1.0
    return float(per_intent.max())


def _held_out_negative_scores(index: PrototypeIndex, n_intents: int) -> np.ndarray:
    """Nearest-prototype scores of the negatives, each fold's scored against an index without that fold."""
    labels, vectors = index.labels, index.vectors
    negative = np.flatnonzero(labels == OUT_OF_SCOPE)
    folds = np.zeros(len(labels), dtype=np.int32)
    folds[negative] = np.arange(len(negative)) % CROSS_FIT_FOLDS
    scores = []
    for fold in range(CROSS_FIT_FOLDS):
        held_out = np.zeros(len(labels), dtype=bool)
        held_out[negative[folds[negative] == fold]] = True
        rest = PrototypeIndex.build(vectors[~held_out], labels[~held_out], hnsw=False)
        scores.append(NearestPrototypeScorer(rest, n_intents).score(vectors[held_out], []).score)
    return np.concatenate(scores)


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
