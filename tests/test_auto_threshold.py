"""The ``auto`` threshold's footing: left-out neighbour features, the build's estimate, per-intent false rejects.

No model: small hand-made vectors, so every expected value can be worked out by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

from gatekeeper.core.fit import (NeighbourLists, _left_out_from_lists, _search_depth, _unseen_intent_features,
                                auto_estimate, describe_auto_estimate, neighbour_lists, text_keys)
from gatekeeper.core.index import OUT_OF_SCOPE, PrototypeIndex
from gatekeeper.core.thresholds import per_intent_false_reject, rate_with_interval, wilson_interval


def _left_out_neighbours(index: PrototypeIndex, groups: np.ndarray | None = None, rows: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """The build's left-out cosines from a fresh search of ``rows`` (default all): the reference the saved and
    merged neighbour lists must agree with."""
    rows = np.arange(len(index.labels)) if rows is None else rows
    if len(rows) == 0:
        return np.zeros(0), np.zeros(0)
    sims, ids = index.search(index.vectors, _search_depth(groups))
    return _left_out_from_lists(index.labels, sims, ids, groups, rows)


def unit(*rows: list[float]) -> np.ndarray:
    vectors = np.asarray(rows, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture()
def index() -> PrototypeIndex:
    # rows 0-1: intent 0; rows 2-4: negatives, 2 and 3 of one pack category, 4 of another
    vectors = unit([1, 0, 0], [1, 0.2, 0], [0, 1, 0], [0, 1, 0.1], [0.3, 0.3, 1])
    return PrototypeIndex.build(vectors, np.array([0, 0, OUT_OF_SCOPE, OUT_OF_SCOPE, OUT_OF_SCOPE]), hnsw=False)


def _random_catalog(seed: int, rows: int = 400) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Texts, unit vectors (a text's vector depends on the text alone), labels and pack groups."""
    texts = [f"text {seed}-{row}" for row in range(rows)]
    return texts, _vectors_of(texts), np.arange(rows) % 7 - 1, np.where(np.arange(rows) % 11 == 0, np.arange(rows) % 3, -1)


def _vectors_of(texts: list[str]) -> np.ndarray:
    vectors = np.stack([np.random.default_rng(int(text_keys([text])[0])).normal(size=24) for text in texts])
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _features(texts: list[str], vectors: np.ndarray, labels: np.ndarray, groups: np.ndarray,
              previous: NeighbourLists | None) -> tuple[NeighbourLists, list[np.ndarray]]:
    index = PrototypeIndex.build(vectors, labels, hnsw=False)
    lists = neighbour_lists(index, text_keys(texts), _search_depth(groups), previous)
    pack = np.flatnonzero(groups >= 0)
    return lists, [*_left_out_from_lists(labels, lists.sims, lists.ids),
                   *_left_out_from_lists(labels, lists.sims, lists.ids, groups, pack)]


def test_neighbour_lists_after_an_edit_equal_a_fresh_search():
    texts, vectors, labels, groups = _random_catalog(0)
    previous, _ = _features(texts, vectors, labels, groups, None)
    # remove 30 rows (some nearest to many), edit 5 texts, add 12 and reorder everything
    kept = [row for row in range(len(texts)) if row % 13 != 5]
    new_texts = [texts[row] if row % 80 else texts[row] + " edited" for row in kept] + [f"added {i}" for i in range(12)]
    order = np.random.default_rng(1).permutation(len(new_texts))
    new_texts = [new_texts[i] for i in order]
    new_labels, new_groups = (np.arange(len(new_texts)) % 7 - 1)[order], np.where(order % 11 == 0, order % 3, -1)
    new_vectors = _vectors_of(new_texts)
    warm, warm_features = _features(new_texts, new_vectors, new_labels, new_groups, previous)
    cold, cold_features = _features(new_texts, new_vectors, new_labels, new_groups, None)
    for ours, fresh in zip(warm_features, cold_features):
        np.testing.assert_allclose(ours, fresh, atol=1e-6)
    depth = _search_depth(new_groups)
    np.testing.assert_array_equal(warm.ids[:, :depth], cold.ids[:, :depth])


def test_a_removed_rows_saved_list_is_not_used():
    texts, vectors, labels, groups = _random_catalog(2)
    previous, _ = _features(texts, vectors, labels, groups, None)
    poisoned = NeighbourLists(keys=previous.keys, ids=previous.ids.copy(), sims=previous.sims.copy())
    poisoned.sims[0] = 5.0  # row 0's list, wrong: must not reach any row once row 0 is gone
    poisoned.ids[0] = 1
    _, warm_features = _features(texts[1:], vectors[1:], labels[1:], groups[1:], poisoned)
    _, cold_features = _features(texts[1:], vectors[1:], labels[1:], groups[1:], None)
    for ours, fresh in zip(warm_features, cold_features):
        np.testing.assert_allclose(ours, fresh, atol=1e-6)


def test_neighbours_leave_the_row_itself_out(index):
    nearest_intent, nearest_negative = _left_out_neighbours(index)
    sims = index.vectors @ index.vectors.T
    # row 0's nearest intent example is row 1 (not itself), row 2's nearest negative is row 3
    assert nearest_intent[0] == pytest.approx(sims[0, 1], abs=1e-6)
    assert nearest_negative[2] == pytest.approx(sims[2, 3], abs=1e-6)
    assert nearest_negative[4] == pytest.approx(max(sims[4, 2], sims[4, 3]), abs=1e-6)


def test_neighbours_can_leave_a_whole_group_out(index):
    groups = np.array([-1, -1, 0, 0, 1])
    sims = index.vectors @ index.vectors.T
    _, nearest_negative = _left_out_neighbours(index, groups, np.array([2, 4]))
    # row 2's sibling (row 3, same category) is skipped: its nearest negative is row 4
    assert nearest_negative[0] == pytest.approx(sims[2, 4], abs=1e-6)
    assert nearest_negative[1] == pytest.approx(max(sims[4, 2], sims[4, 3]), abs=1e-6)
    empty = _left_out_neighbours(index, groups, np.array([], dtype=int))
    assert len(empty[0]) == len(empty[1]) == 0


def test_unseen_intent_features_hide_the_example_s_whole_intent():
    # rows 0-1: intent 0; rows 2-3: intent 1; row 4: a negative
    vectors = unit([1, 0, 0], [1, 0.2, 0], [0.6, 1, 0], [0.5, 1, 0.2], [0, 0, 1])
    index = PrototypeIndex.build(vectors, np.array([0, 0, 1, 1, OUT_OF_SCOPE]), hnsw=False)
    logits = np.array([[5.0, 1.0], [4.0, 2.0], [0.5, 3.0], [-1.0, 6.0], [0.0, 0.0]])
    lists = neighbour_lists(index, np.arange(5, dtype=np.uint64), _search_depth(index.labels))
    features = _unseen_intent_features(index.labels, logits, [0, 1], lists)
    sims = index.vectors @ index.vectors.T
    assert features.shape == (4, 3)  # the intents' examples only
    # the best logit of the other intent, and the nearest example of the other intent, not the sibling
    assert features[:, 0] == pytest.approx([1.0, 2.0, 0.5, -1.0])
    assert features[0, 1] == pytest.approx(max(sims[0, 2], sims[0, 3]), abs=1e-6)
    assert features[2, 1] == pytest.approx(max(sims[2, 0], sims[2, 1]), abs=1e-6)
    assert features[:, 2] == pytest.approx(sims[:4, 4], abs=1e-6)
    assert _unseen_intent_features(index.labels[:2], logits[:2, :1], [0], lists).shape == (0, 3)
    assert len(_unseen_intent_features(index.labels, logits, [1], lists)) == 2  # intent 0 a pack's: not used


def test_auto_estimate_reports_rates_with_intervals():
    in_scope = np.r_[np.full(95, 0.9), np.full(5, 0.1)]
    negatives = np.r_[np.full(8, 0.1), np.full(2, 0.9)]
    estimate = auto_estimate(0.5, in_scope, negatives, from_pack=np.r_[np.ones(6, bool), np.zeros(4, bool)],
                             unseen_topic_scores=np.array([0.1, 0.9, 0.9]), basis="test",
                             unseen_intent_scores=np.array([0.1, 0.9]))
    assert estimate["false_reject_rate"] == rate_with_interval(in_scope < 0.5)
    assert estimate["false_reject_rate"]["rate"] == pytest.approx(0.05)
    assert estimate["off_topic_recall"]["rate"] == pytest.approx(0.8)
    assert estimate["pack_recall"]["rate"] == pytest.approx(1.0) and estimate["pack_recall"]["n"] == 6
    assert estimate["catalog_out_of_scope_recall"]["rate"] == pytest.approx(0.5)
    assert estimate["unseen_topic_recall"]["rate"] == pytest.approx(1 / 3)
    assert estimate["unseen_intent_recall"]["rate"] == pytest.approx(0.5)
    low, high = wilson_interval(5, 100)
    assert (estimate["false_reject_rate"]["low"], estimate["false_reject_rate"]["high"]) == pytest.approx((low, high))
    assert low < 0.05 < high
    line = describe_auto_estimate(estimate)
    assert line.startswith("in scope refused 5.0% (95% ") and "pack, its topic unseen 33.3%" in line
    assert "examples, their intent unseen 50.0%" in line
    assert "not estimated" in describe_auto_estimate(auto_estimate(0.5, None, None))
    assert "rebuild" in describe_auto_estimate(None)


def test_per_intent_false_reject_flags_an_intent_far_above_the_policy():
    rng = np.random.default_rng(0)
    predicted = np.repeat(np.arange(4), 40)
    scores = rng.uniform(0.5, 1.0, len(predicted))
    scores[np.flatnonzero(predicted == 2)[:12]] = 0.1  # intent 2: 12 of 40 refused
    scores[np.flatnonzero(predicted == 3)[:3]] = 0.1  # intent 3: 3 of 40, within the noise of 5%
    result = per_intent_false_reject(scores, predicted, np.full(4, 0.4))
    assert result[0].intent == 2 and result[0].flagged and result[0].rate == pytest.approx(0.3)
    assert {q.intent: q.flagged for q in result} == {0: False, 1: False, 2: True, 3: False}
    assert (result[0].low, result[0].high) == pytest.approx(wilson_interval(12, 40))
    # grouped by the true intent instead of the routed one, with one threshold for all
    by_label = per_intent_false_reject(scores, np.zeros(len(scores), int), 0.4, intents=predicted)
    assert [q.intent for q in by_label if q.flagged] == [2]
    assert per_intent_false_reject(scores[:2], predicted[:2], 0.4, min_rows=5)[0].flagged is False
