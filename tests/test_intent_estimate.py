"""The build's intent estimate: held-out predictions of the catalog's examples, summed up for people."""

from __future__ import annotations

import numpy as np

from gatekeeper.core.intent_estimate import describe_intent_estimate, intent_estimate

NAMES = ["退货", "换货", "查询物流", "greeting"]


def test_counts_right_intents_per_intent_and_the_confused_pairs():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3, -1, -1])
    picked = np.array([0, 1, 1, 0, 0, 1, 1, 2, 2, 0, 0, 0, 2])
    texts = [f"text {row}" for row in range(len(labels))]
    estimate = intent_estimate(labels, picked, texts, own_intents=[0, 1, 2], names=NAMES, basis="cross-fitted")
    # Rows of the pack's intent (3) and negatives (-1) are not the catalog's examples.
    assert estimate["accuracy"]["n"] == 9 and estimate["accuracy"]["rate"] == 6 / 9
    assert estimate["accuracy"]["low"] < 6 / 9 < estimate["accuracy"]["high"]
    assert estimate["per_intent"] == {"退货": {"right": 2, "n": 4}, "换货": {"right": 2, "n": 3},
                                      "查询物流": {"right": 2, "n": 2}}
    assert estimate["confused"] == [{"intent": "退货", "picked": "换货", "examples": 2, "of": 4,
                                     "texts": ["text 1", "text 2"]},
                                    {"intent": "换货", "picked": "退货", "examples": 1, "of": 3, "texts": ["text 4"]}]
    line = describe_intent_estimate(estimate)
    assert line.startswith("right intent for 66.7% of held-out examples (95% ")
    assert "of 9) [cross-fitted]" in line and "most confused: 退货 -> 换货 (2 of 4), 换货 -> 退货 (1 of 3)" in line


def test_a_catalog_without_examples_of_its_own_has_no_estimate():
    labels = np.array([3, 3, -1])
    assert intent_estimate(labels, np.array([3, 3, 3]), ["a", "b", "c"], own_intents=[0, 1, 2], names=NAMES,
                           basis="x") is None
    assert describe_intent_estimate(None).startswith("not estimated")


def test_all_right_shows_no_confused_pairs():
    labels = np.array([0, 1, 2])
    estimate = intent_estimate(labels, labels.copy(), ["a", "b", "c"], own_intents=[0, 1, 2], names=NAMES, basis="x")
    assert estimate["confused"] == [] and "most confused" not in describe_intent_estimate(estimate)
