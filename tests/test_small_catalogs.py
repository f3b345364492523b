"""Day-one catalogs gate sensibly: one intent, descriptions only, no out-of-scope examples, two examples per intent.

The messages come from ``tests/data/small_catalogs/heldout.yaml``, written apart
from the catalogs and from the out-of-scope pack, and never used for tuning.
The floors are well below what ``python benchmarks/small_catalogs.py`` measures
(docs/quality.md), so they catch a broken footing, not noise.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gatekeeper.gate import Gate

CATALOGS = Path(__file__).resolve().parent / "data" / "small_catalogs"
HELDOUT = yaml.safe_load((CATALOGS / "heldout.yaml").read_text(encoding="utf-8"))
#: (share of in-scope messages accepted, share of off-topic messages rejected) at least.
FLOORS = {"one_intent_zh": (0.8, 0.9), "descriptions_zh": (0.6, 0.85), "no_oos_en": (0.85, 0.9),
          "few_examples_en": (0.65, 0.9)}


@pytest.mark.parametrize("stem", sorted(FLOORS))
def test_small_catalog_gates_held_out_messages(stem, use_embedder):
    gate = Gate(embedder=use_embedder).fit(CATALOGS / f"{stem}.yaml")
    accepted = [d.accepted for d in gate.decide_many(HELDOUT[stem]["in_scope"])]
    rejected = [not d.accepted for d in gate.decide_many(HELDOUT[stem]["off_topic"])]
    floor_in, floor_off = FLOORS[stem]
    assert sum(accepted) / len(accepted) >= floor_in, gate.decide_many(HELDOUT[stem]["in_scope"])
    assert sum(rejected) / len(rejected) >= floor_off
    assert gate.artifacts_.meta["pack_out_of_scope"] > 600  # the built-in pack is what it is contrasted with


def test_one_intent_gate_refuses_weather_and_accepts_a_paraphrase(use_embedder):
    gate = Gate(embedder=use_embedder).fit(CATALOGS / "one_intent_zh.yaml")
    weather, trousers = gate.decide_many(["今天天气怎么样", "我买的裤子想退"])
    assert not weather.accepted and trousers.accepted and trousers.intent == "退货申请"
    assert gate.router_.thresholds.global_threshold > 0  # a real threshold, not -1 (everything accepted)


def test_descriptions_only_gate_accepts_a_plain_paraphrase(use_embedder):
    gate = Gate(embedder=use_embedder).fit(CATALOGS / "descriptions_zh.yaml")
    assert gate.artifacts_.meta["scorer"] == "nearest"
    refund, parcel, poem = gate.decide_many(["我买的东西想退货退款", "我的快递到哪了", "帮我写一首关于秋天的诗"])
    assert (refund.accepted, refund.intent) == (True, "退货退款")
    assert (parcel.accepted, parcel.intent) == (True, "物流查询")
    assert not poem.accepted
