"""The FAISS prototype index: search, HNSW, save/load round trip and staleness."""

from __future__ import annotations

import numpy as np

from gatekeeper.core.index import OUT_OF_SCOPE, PrototypeIndex
from gatekeeper.core.scoring import SEARCH_K, nearest_similarities
from gatekeeper.gate import Gate
from gatekeeper.store.artifacts import load_index, save_index, state_dir
from tests.conftest import INTENTS


def random_unit(n: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_flat_search_is_exact():
    vectors = random_unit(500, 64, 0)
    index = PrototypeIndex.build(vectors, np.arange(500) % 7)
    queries = random_unit(20, 64, 1)
    sims, ids = index.search(queries, 5)
    brute = queries @ vectors.T
    np.testing.assert_array_equal(ids[:, 0], brute.argmax(axis=1))
    np.testing.assert_allclose(sims[:, 0], brute.max(axis=1), atol=1e-5)
    assert index.kind == "flat"


def test_nearest_similarities_are_the_per_intent_maxima_of_the_neighbours():
    """Each intent's best cosine among the retrieved prototypes (else -1), and the best negative's (else -1);
    also for an index smaller than the search depth, where HNSW pads its result with id -1."""
    for size, hnsw in ((500, False), (5, True)):
        vectors = random_unit(size, 16, 5)
        labels = np.arange(size) % 5 - 1  # intents 0-3 and negatives
        index = PrototypeIndex.build(vectors, labels, hnsw=hnsw)
        queries = random_unit(8, 16, 6)
        per_intent, negative = nearest_similarities(index, queries, 4)
        sims, ids = index.faiss_index.search(queries, SEARCH_K)  # not clamped: the short index pads with -1
        for row in range(len(queries)):
            found = ids[row] >= 0
            neighbours = dict.fromkeys(range(-1, 4), -1.0)
            for sim, label in zip(sims[row][found], labels[ids[row][found]]):
                neighbours[label] = max(neighbours[label], sim)
            assert per_intent[row].tolist() == [neighbours[intent] for intent in range(4)]
            assert negative[row] == neighbours[OUT_OF_SCOPE]


def test_hnsw_finds_near_duplicates():
    vectors = random_unit(2000, 64, 2)
    index = PrototypeIndex.build(vectors, np.zeros(2000), hnsw=True)
    noisy = vectors[:100] + 0.01 * random_unit(100, 64, 3)
    _, ids = index.search(noisy / np.linalg.norm(noisy, axis=1, keepdims=True), 1)
    assert index.kind == "hnsw"
    assert (ids[:, 0] == np.arange(100)).mean() >= 0.98


def test_round_trip(tmp_path):
    vectors = random_unit(50, 16, 4)
    index = PrototypeIndex.build(vectors, np.arange(50) % 3)
    save_index(tmp_path, index, {"fingerprint": "abc"})
    loaded = load_index(tmp_path, "abc")
    assert loaded is not None
    np.testing.assert_array_equal(loaded.labels, index.labels)
    queries = random_unit(5, 16, 5)
    np.testing.assert_array_equal(loaded.search(queries, 3)[1], index.search(queries, 3)[1])
    assert load_index(tmp_path, "other") is None


def test_stale_index_is_rebuilt(tmp_path, use_embedder):
    path = tmp_path / "telecom.yaml"
    path.write_text((INTENTS / "telecom_zh.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    first = Gate(embedder=use_embedder).fit(path)
    assert first.rebuilt_ and (state_dir(path) / "meta.json").exists()
    again = Gate(embedder=use_embedder).fit(path)
    assert not again.rebuilt_ and again.artifacts_.fingerprint == first.artifacts_.fingerprint
    # Editing one example makes the saved index stale; only that text is embedded again.
    path.write_text(path.read_text(encoding="utf-8").replace("out_of_scope:", "out_of_scope:\n  - \"教我打太极拳\"", 1),
                    encoding="utf-8")
    edited = Gate(embedder=use_embedder).fit(path)
    assert edited.rebuilt_ and edited.artifacts_.fingerprint != first.artifacts_.fingerprint
    assert edited.artifacts_.meta["embedded"] == 1
    assert edited.artifacts_.meta["out_of_scope"] == first.artifacts_.meta["out_of_scope"] + 1
