"""Per-intent actions and Unicode intent names, in process and (for curl) over real HTTP: forward, reply, handoff,
the conversation pack, percent-encoded intent headers (read with the official ``openai`` client and with curl),
metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from urllib.parse import quote, unquote

import httpx
import pytest

from gatekeeper.gate import Gate
from tests.server_fixtures import chat_body, write_catalog

RETURNS = "退货申请"
HOURS = "营业时间"
SHOP_ZH = {
    "version": 1, "name": "服装店",
    "defaults": {"reject_reply": {"zh": "抱歉，我只能回答本店订单和售后问题。", "default": "Sorry, orders and returns only."}},
    "intents": [
        {"name": RETURNS, "tags": ["售后"], "examples": [
            "我想退货", "衣服不合适能退吗", "怎么申请退款", "退货流程是什么", "买的鞋子太小了要退",
            "I want to return this jacket", "how do I send back an item", "退款什么时候到账"]},
        {"name": HOURS, "action": "reply",
         "reply": {"zh": "门店每天 10:00-22:00 营业。", "en": "We are open 10:00-22:00 every day.",
                   "default": "10:00-22:00"},
         "examples": ["你们几点开门", "几点关门", "营业时间是几点到几点", "周末营业吗", "what are your opening hours",
                      "when do you close", "are you open on sundays"]},
    ],
}


@pytest.fixture(scope="module")
def shop_gate(tmp_path_factory, use_embedder) -> Gate:
    """A Chinese-named catalog with a reply intent, plus the built-in packs."""
    path = tmp_path_factory.mktemp("shop") / "shop.yaml"
    write_catalog(path, SHOP_ZH)
    return Gate(embedder=use_embedder).fit(path)


@pytest.fixture
def sidecar(shop_gate, memory_upstream, asgi_sidecar):
    return asgi_sidecar(shop_gate, upstream=memory_upstream)


def chat(sidecar, text: str, **extra: object) -> httpx.Response:
    return sidecar.client.post("/v1/chat/completions", json=chat_body(text, **extra))


@pytest.mark.parametrize("text,intent,action,language", [
    ("你好", "greeting", "reply", "zh"),
    ("在吗", "greeting", "reply", "zh"),
    ("谢谢", "thanks", "reply", "zh"),
    ("Hi", "greeting", "reply", "en"),
    ("thanks, that's all", "thanks", "reply", "en"),
    ("I want to speak to a human", "human_agent", "handoff", "en"),
    ("转人工", "human_agent", "handoff", "zh"),
    ("周六你们开门吗", HOURS, "reply", "zh"),
])
def test_conversation_and_reply_intents_are_answered_without_the_llm(sidecar, memory_upstream, shop_gate, text,
                                                                      intent, action, language):
    response = chat(sidecar, text)
    assert response.status_code == 200
    assert response.headers["x-gatekeeper-action"] == action
    assert response.headers["x-gatekeeper-decision"] == "accepted"
    assert unquote(response.headers["x-gatekeeper-intent"]) == intent
    content = response.json()["choices"][0]["message"]["content"]
    assert content == shop_gate.catalog_.intent(intent).answer(language)
    assert memory_upstream.requests == []
    assert sidecar.metric("gatekeeper_actions_total", action=action, mode="enforce") == 1
    assert sidecar.metric("gatekeeper_llm_calls_saved_total") == 1
    assert sidecar.metric("gatekeeper_rejected_calls_total", reason="below_threshold") == 0
    assert sidecar.metric("gatekeeper_decisions_total", decision="accepted", intent=intent, mode="enforce") == 1


def test_a_chinese_intent_is_forwarded_with_a_percent_encoded_header(sidecar, memory_upstream):
    client = sidecar.openai_client()
    raw = client.chat.completions.with_raw_response.create(
        model="test-model", messages=[{"role": "user", "content": "我买的裤子想退"}])
    assert raw.headers["x-gatekeeper-intent"] == quote(RETURNS, safe="") == "%E9%80%80%E8%B4%A7%E7%94%B3%E8%AF%B7"
    assert unquote(raw.headers["x-gatekeeper-intent"]) == RETURNS
    assert raw.headers["x-gatekeeper-action"] == "forward"
    assert raw.parse().choices[0].message.content  # the upstream's answer
    assert len(memory_upstream.requests) == 1
    assert sidecar.metric("gatekeeper_actions_total", action="forward", mode="enforce") == 1
    assert sidecar.metric("gatekeeper_llm_calls_saved_total") == 0


def test_curl_sees_ascii_headers_and_raw_utf8_json(shop_gate, memory_upstream, start_sidecar):
    served = start_sidecar(shop_gate, upstream=memory_upstream)  # curl needs a socket
    headers = subprocess.run(["curl", "-s", "-D", "-", "-o", "/dev/null", "-H", "content-type: application/json",
                              "--data-binary", json.dumps(chat_body("我买的裤子想退")),
                              f"{served.base_url}/v1/chat/completions"], capture_output=True, timeout=30).stdout
    headers.decode("ascii")  # every header byte is ASCII
    assert b"x-gatekeeper-intent: %E9%80%80%E8%B4%A7%E7%94%B3%E8%AF%B7" in headers
    body = subprocess.run(["curl", "-s", "-H", "content-type: application/json", "--data-binary",
                           json.dumps({"text": "我买的裤子想退"}), f"{served.base_url}/v1/gate"],
                          capture_output=True, timeout=30).stdout
    assert f'"intent":"{RETURNS}"'.encode() in body  # raw UTF-8, not \u escapes
    decision = json.loads(body)
    assert decision["action"] == "forward" and decision["tags"] == ["售后"]


def test_gate_endpoint_reports_actions(sidecar):
    response = sidecar.client.post("/v1/gate", json={"texts": ["你好", "转人工", "今天天气怎么样"]})
    decisions = response.json()["decisions"]
    assert [(d["intent"], d["action"]) for d in decisions[:2]] == [("greeting", "reply"), ("human_agent", "handoff")]
    assert decisions[2]["accepted"] is False and decisions[2]["action"] == "reject"


def test_streamed_reply_intent(sidecar, memory_upstream, shop_gate):
    with sidecar.client.stream("POST", "/v1/chat/completions", json=chat_body("你好", stream=True)) as response:
        assert response.headers["x-gatekeeper-action"] == "reply"
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0][len("data: "):])
    assert first["choices"][0]["delta"]["content"] == shop_gate.catalog_.intent("greeting").answer("zh")
    assert memory_upstream.requests == []


def test_shadow_mode_forwards_reply_intents_but_counts_them(shop_gate, memory_upstream, asgi_sidecar):
    sidecar = asgi_sidecar(shop_gate, upstream=memory_upstream, mode="shadow")
    response = chat(sidecar, "你好")
    assert response.headers["x-gatekeeper-action"] == "reply"
    assert len(memory_upstream.requests) == 1
    assert sidecar.metric("gatekeeper_actions_total", action="reply", mode="shadow") == 1
    assert sidecar.metric("gatekeeper_llm_calls_saved_total") == 0


def test_prometheus_exposes_chinese_intent_labels(sidecar):
    chat(sidecar, "我买的裤子想退")
    text = sidecar.client.get("/metrics").content.decode("utf-8")
    assert f'gatekeeper_decisions_total{{decision="accepted",intent="{RETURNS}",mode="enforce"}} 1.0' in text
    assert 'gatekeeper_actions_total{action="handoff",mode="enforce"} 0.0' in text


def test_off_topic_gets_the_reject_reply_in_its_language(sidecar, memory_upstream):
    for text, expected in (("今天天气怎么样", "抱歉，我只能回答本店订单和售后问题。"),
                           ("write me a poem about autumn", "Sorry, orders and returns only.")):
        response = chat(sidecar, text)
        assert response.headers["x-gatekeeper-action"] == "reject"
        assert response.json()["choices"][0]["message"]["content"] == expected
    assert memory_upstream.requests == []


def test_catalog_warnings_are_printed_by_build(tmp_path):
    path = tmp_path / "thin.yaml"
    path.write_text("intents:\n  - name: 发票\n    examples: [开发票]\n  - name: 退货\n    description: 顾客要退货退款\n",
                    encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "gatekeeper", "build", "--catalog", str(path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"warning: {path}:2: intents[0] (发票): only 1 example(s)" in result.stderr
    assert f"warning: {path}:4: intents[1] (退货): no examples" in result.stderr
    assert "out_of_scope_pack " in result.stdout
