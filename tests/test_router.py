"""Routing with the real default model: the bundled catalogs, held-out messages and edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from gatekeeper.core.router import REASON_EMPTY, REASON_NEAREST_OUT_OF_SCOPE, REASON_NOT_TEXT
from gatekeeper.gate import Gate

# Messages written for these tests; none appears in the catalogs.
TELECOM_IN_SCOPE = {
    "我这个月话费怎么扣了这么多": "bill_inquiry",
    "上个月账单里有一笔12块的增值业务费是什么": "bill_inquiry",
    "流量还剩多少啊，月底前够不够用": "data_usage",
    "家里宽带从昨晚开始就连不上了，灯一直闪红": "broadband_repair",
    "地下车库一点信号都没有，电话打不出去": "signal_problem",
    "想把号码转到别的运营商，需要什么条件": "number_portability",
    "下个月去日本出差，手机怎么开通漫游": "international_roaming",
    "帮我开一张上个月话费的电子发票": "invoice",
    "我的积分能换什么东西": "loyalty_points",
    "现在这个套餐太贵了，想换个便宜点的": "plan_change",
}
TELECOM_OUT_OF_SCOPE = [
    "今天天气怎么样",
    "帮我写一首关于秋天的诗",
    "红烧肉怎么做才好吃",
    "勾股定理是什么意思",
    "推荐几部好看的科幻电影",
    "周末去杭州玩有什么攻略",
]
BANKING_IN_SCOPE = {
    "I was charged twice for the same card payment": "duplicate_or_unrecognised_charge",
    "there's a payment on my statement from a shop I've never been to": "duplicate_or_unrecognised_charge",
    "I left my debit card in a taxi, please block it": "card_lost_or_stolen",
    "how much money do I have in my current account": "balance_inquiry",
    "the money I sent to my landlord on Monday still hasn't shown up": "transfer_not_arrived",
    "what's the interest rate on your fixed savings account": "interest_rates",
    "I can't log in to the app, it keeps saying my password is wrong": "online_banking_login_problems",
    "how do I change the address on my account": "update_personal_details",
}
BANKING_OUT_OF_SCOPE = [
    "who won the football game last night",
    "write me a python script to sort a list",
    "what's a good recipe for banana bread",
    "translate 'good morning' into French",
    "can you recommend a good thriller novel",
    "how tall is mount everest",
]


def held_out_accuracy(gate: Gate, in_scope: dict[str, str], out_of_scope: list[str]) -> tuple[float, float]:
    decisions = gate.decide_many(list(in_scope) + out_of_scope)
    inside, outside = decisions[:len(in_scope)], decisions[len(in_scope):]
    accepted_right = np.mean([d.accepted and d.intent == intent for d, intent in zip(inside, in_scope.values())])
    rejected = np.mean([not d.accepted for d in outside])
    return float(accepted_right), float(rejected)


def test_done_criteria_telecom(telecom_gate):
    billing, weather, poem = telecom_gate.decide_many(["我这个月话费怎么扣了这么多", "今天天气怎么样", "帮我写一首关于秋天的诗"])
    assert billing.accepted and billing.intent == "bill_inquiry"
    assert not weather.accepted and not poem.accepted
    assert telecom_gate.router_.thresholds.source == "auto"


def test_done_criteria_banking(banking_gate):
    charge, football, script = banking_gate.decide_many([
        "I was charged twice for the same card payment", "who won the football game last night",
        "write me a python script to sort a list"])
    assert charge.accepted and charge.intent == "duplicate_or_unrecognised_charge"
    assert not football.accepted and not script.accepted


@pytest.mark.parametrize("gate_name,in_scope,out_of_scope", [
    ("telecom_gate", TELECOM_IN_SCOPE, TELECOM_OUT_OF_SCOPE),
    ("banking_gate", BANKING_IN_SCOPE, BANKING_OUT_OF_SCOPE),
])
def test_held_out_messages(request, gate_name, in_scope, out_of_scope):
    accepted_right, rejected = held_out_accuracy(request.getfixturevalue(gate_name), in_scope, out_of_scope)
    assert accepted_right >= 0.9
    assert rejected >= 0.8


def test_decision_fields(telecom_gate):
    decision = telecom_gate.decide("流量包怎么加")
    assert decision.accepted and decision.reason is None
    assert decision.margin == pytest.approx(decision.score - decision.threshold, abs=1e-5)
    assert len(decision.top_k) == 3 and decision.top_k[0].intent == decision.intent
    assert [s.score for s in decision.top_k] == sorted((s.score for s in decision.top_k), reverse=True)


def test_rejection_reason_names_nearest_out_of_scope(banking_gate):
    decision = banking_gate.decide("tell me a funny joke about cats")
    assert not decision.accepted and decision.reason == REASON_NEAREST_OUT_OF_SCOPE


@pytest.mark.parametrize("message,reason", [("", REASON_EMPTY), ("   \n\t ", REASON_EMPTY), (None, REASON_NOT_TEXT),
                                            (42, REASON_NOT_TEXT), (["a"], REASON_NOT_TEXT)])
def test_unscorable_input_is_rejected_with_reason(telecom_gate, message, reason):
    decision = telecom_gate.decide(message)
    assert not decision.accepted and decision.reason == reason and decision.intent is None


def test_overlong_input_is_truncated_not_refused(telecom_gate):
    decision = telecom_gate.decide("宽带坏了，" * 2000)
    assert decision.truncated and len(decision.text) == telecom_gate.catalog_.defaults.max_chars
    assert decision.accepted and decision.intent == "broadband_repair"


def test_batch_equals_single(telecom_gate):
    messages = ["我要开发票", "讲个笑话", "", "国际漫游怎么收费"]
    batch = telecom_gate.decide_many(messages)
    for message, decided in zip(messages, batch):
        single = telecom_gate.decide(message)
        assert (single.accepted, single.intent) == (decided.accepted, decided.intent)
        assert single.score == pytest.approx(decided.score, abs=1e-4)


def test_per_intent_threshold_overrides_default(tmp_path, use_embedder):
    from tests.conftest import INTENTS

    text = (INTENTS / "telecom_zh.yaml").read_text(encoding="utf-8")
    strict = text.replace("  - name: invoice\n", "  - name: invoice\n    threshold: 0.9999999\n", 1)
    path = tmp_path / "strict.yaml"
    path.write_text(strict, encoding="utf-8")
    gate = Gate(embedder=use_embedder).fit(path)
    names = gate.catalog_.intent_names()
    assert gate.router_.thresholds.per_intent[names.index("invoice")] == pytest.approx(0.9999999)
    decision = gate.decide("帮我开一张上个月话费的电子发票")
    assert decision.intent == "invoice" and decision.threshold == pytest.approx(0.9999999, abs=1e-6)
    assert not decision.accepted and decision.reason == "below_threshold"


def test_zero_shot_catalog_from_descriptions(tmp_path, use_embedder):
    path = tmp_path / "zero.yaml"
    path.write_text("""\
name: zero-shot
intents:
  - name: bill
    description: "questions about a phone bill, charges and payments"
  - name: broadband
    description: "home internet and broadband faults, the router and wifi not working"
  - name: roaming
    description: "using the phone abroad: international roaming, charges overseas"
""", encoding="utf-8")
    gate = Gate(embedder=use_embedder).fit(path)
    assert gate.artifacts_.meta["scorer"] == "nearest"
    bill, net, off = gate.decide_many(["why is my phone bill so high this month", "my wifi router keeps dropping",
                                       "what's the capital of Australia"])
    assert bill.accepted and bill.intent == "bill"
    assert net.accepted and net.intent == "broadband"
    assert not off.accepted
