"""The decision-only API, health and readiness, and the metrics endpoint (the decision log: test_decision_log.py)."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.server_fixtures import OFF_TOPIC, ON_TOPIC, chat_body


@pytest.fixture
def sidecar(telecom_gate, asgi_sidecar):
    """A sidecar without upstream: /v1/gate needs none."""
    return asgi_sidecar(telecom_gate)


def gate(sidecar, body: dict) -> httpx.Response:
    return sidecar.client.post("/v1/gate", json=body)


def test_gate_one_text_matches_the_library_decision(sidecar, telecom_gate):
    for text in (ON_TOPIC, OFF_TOPIC):
        response = gate(sidecar, {"text": text})
        assert response.status_code == 200
        assert response.json() == {**telecom_gate.decide(text).to_dict(), "followup": False}


def test_gate_batch_keeps_order_and_unscorable_messages(sidecar):
    decisions = gate(sidecar, {"texts": [ON_TOPIC, "   ", OFF_TOPIC]}).json()["decisions"]
    assert [d["accepted"] for d in decisions] == [True, False, False]
    assert decisions[1]["reason"] == "empty_input"
    assert sidecar.metric("gatekeeper_decisions_total", decision="rejected", intent="none", mode="enforce") == 1


def test_gate_messages_uses_the_conversation(sidecar):
    messages = [{"role": "system", "content": "你是客服"}, {"role": "user", "content": ON_TOPIC},
                {"role": "assistant", "content": "好的"}, {"role": "user", "content": "那另一个呢?"}]
    decision = gate(sidecar, {"messages": messages}).json()
    assert decision["accepted"] is True
    assert decision["followup"] is True
    assert decision["text"] == "那另一个呢?"
    alone = gate(sidecar, {"messages": messages[-1:]}).json()
    # Alone it opens a conversation: the pack's continuation intent answers it, nothing is forwarded.
    assert (alone["intent"], alone["action"], alone["followup"]) == ("continuation", "reply", False)


def test_gate_does_not_need_an_upstream_and_never_calls_one(telecom_gate, memory_upstream, asgi_sidecar):
    sidecar = asgi_sidecar(telecom_gate, upstream=memory_upstream)
    assert gate(sidecar, {"text": ON_TOPIC}).json()["accepted"] is True
    assert memory_upstream.requests == []


def test_openapi_schema_documents_the_typed_models(sidecar):
    schema = sidecar.client.get("/openapi.json").json()
    models = schema["components"]["schemas"]
    assert {"GateRequest", "GateDecision", "GateBatchResponse", "ChatCompletionRequest", "ErrorResponse",
            "ReloadResponse", "ReadyResponse"} <= set(models)
    assert set(models["GateDecision"]["properties"]) >= {"accepted", "intent", "score", "threshold", "reason",
                                                          "top_k", "followup"}
    assert "/v1/chat/completions" in schema["paths"] and "/admin/reload" in schema["paths"]


def test_health_and_readiness(sidecar, telecom_gate):
    assert sidecar.client.get("/healthz").json() == {"status": "ok"}
    ready = sidecar.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "catalog": "telecom-zh", "intents": len(telecom_gate.catalog_.intents),
                            "fingerprint": telecom_gate.artifacts_.fingerprint, "tuning": "none",
                            "tuning_problem": None, "error": None}


def test_not_ready_when_the_catalog_cannot_load(asgi_sidecar, tmp_path):
    sidecar = asgi_sidecar(None, catalog=str(tmp_path / "missing.yaml"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ready = sidecar.client.get("/readyz")
        if ready.json()["error"] != "loading":
            break
        time.sleep(0.05)
    assert ready.status_code == 503
    assert ready.json()["ready"] is False and "missing.yaml" in ready.json()["error"]
    assert sidecar.client.get("/healthz").status_code == 200
    response = sidecar.client.post("/v1/chat/completions", json=chat_body(ON_TOPIC))
    assert response.status_code == 503 and response.json()["error"]["code"] == "not_ready"


def test_metrics_endpoint_is_prometheus_text(sidecar, telecom_gate):
    gate(sidecar, {"text": ON_TOPIC})
    response = sidecar.client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    for name in ("gatekeeper_decisions_total", "gatekeeper_rejected_calls_total", "gatekeeper_shadow_rejections_total",
                 "gatekeeper_score_bucket", "gatekeeper_gate_latency_seconds_bucket",
                 "gatekeeper_upstream_latency_seconds_bucket", "gatekeeper_upstream_errors_total",
                 "gatekeeper_llm_calls_saved_total", "gatekeeper_tokens_saved_total", "gatekeeper_catalog_info",
                 "gatekeeper_reloads_total", "gatekeeper_in_flight_requests", "gatekeeper_embedding_failures_total",
                 "gatekeeper_requests_total", "gatekeeper_batch_size_bucket"):
        assert f"# TYPE {name.removesuffix('_bucket')}" in text or name in text, name
    assert (f'gatekeeper_catalog_info{{catalog="telecom-zh",fingerprint="{telecom_gate.artifacts_.fingerprint}",'
            f'intents="{len(telecom_gate.catalog_.intents)}",model=') in text
    assert 'gatekeeper_score_bucket{le="-0.25"}' in text and 'gatekeeper_score_bucket{le="0.95"}' in text
    assert 'gatekeeper_gate_latency_seconds_bucket{le="0.0005"}' in text
