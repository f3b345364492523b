"""Failure behaviour: upstream errors, timeouts and outages, encoder failures, bad requests, no upstream.

The sidecar runs in process; the upstream is the in-memory fake, except where its network timeouts are the point
(the fake on loopback) or it is down (a closed port)."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest

from gatekeeper.embedders import EmbeddingError
from tests.server_fixtures import OFF_TOPIC, ON_TOPIC, chat_body, free_port


class FailingEmbedder:
    """An encoder that always fails (failure injection)."""

    dim = 512
    fingerprint = "failing"

    def encode(self, texts, *, is_query: bool = False) -> np.ndarray:
        raise EmbeddingError("injected encoder failure")


@pytest.fixture
def failing_gate(telecom_gate):
    """The telecom gate with an encoder that always fails."""
    return telecom_gate.with_embedder(FailingEmbedder())


def post_chat(sidecar, body: dict, **kwargs) -> httpx.Response:
    return sidecar.client.post("/v1/chat/completions", json=body, **kwargs)


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None,
                        passed_through: bool = False) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= ({"message", "type"} if passed_through else {"message", "type", "param", "code"})
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def test_upstream_500_becomes_502(telecom_gate, memory_upstream, asgi_sidecar):
    sidecar = asgi_sidecar(telecom_gate, upstream=memory_upstream)
    response = post_chat(sidecar, chat_body(ON_TOPIC, model="mock-500"))
    error = assert_openai_error(response, 502, "upstream_status")
    assert error["upstream_status"] == 500
    assert response.headers["x-gatekeeper-decision"] == "accepted"
    assert sidecar.metric("gatekeeper_upstream_errors_total", status="502") == 1


def test_upstream_500_on_a_stream_becomes_502(telecom_gate, memory_upstream, asgi_sidecar):
    sidecar = asgi_sidecar(telecom_gate, upstream=memory_upstream)
    assert_openai_error(post_chat(sidecar, chat_body(ON_TOPIC, model="mock-500", stream=True)), 502)


def test_upstream_4xx_is_passed_through(telecom_gate, memory_upstream, asgi_sidecar):
    sidecar = asgi_sidecar(telecom_gate, upstream=memory_upstream)
    error = assert_openai_error(post_chat(sidecar, chat_body(ON_TOPIC, model="mock-401")), 401, "invalid_api_key",
                                passed_through=True)
    assert error["message"] == "bad key"
    assert sidecar.metric("gatekeeper_upstream_errors_total", status="401") == 1


@pytest.mark.parametrize("stream", [False, True])
def test_slow_upstream_times_out_with_504(telecom_gate, fake_upstream, asgi_sidecar, stream):
    sidecar = asgi_sidecar(telecom_gate, upstream=fake_upstream, upstream_timeout_s=0.5)
    started = time.perf_counter()
    response = post_chat(sidecar, chat_body(ON_TOPIC, model="mock-slow", stream=stream))
    assert time.perf_counter() - started < 2.5
    assert_openai_error(response, 504, "upstream_timeout")
    assert sidecar.metric("gatekeeper_upstream_errors_total", status="504") == 1


def test_a_stream_that_stalls_midway_ends_with_an_error_event(telecom_gate, fake_upstream, asgi_sidecar):
    sidecar = asgi_sidecar(telecom_gate, upstream=fake_upstream, upstream_timeout_s=0.5)
    started = time.perf_counter()
    with sidecar.client.stream("POST", "/v1/chat/completions",
                               json=chat_body(ON_TOPIC, model="mock-stall", stream=True)) as response:
        assert response.status_code == 200  # the status line went out with the first chunk
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    assert time.perf_counter() - started < 2.5
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "Hello"
    assert json.loads(events[-2])["error"]["code"] == "upstream_timeout"
    assert events[-1] == "[DONE]"
    assert sidecar.metric("gatekeeper_upstream_errors_total", status="504") == 1


def test_upstream_down_is_502_at_once(telecom_gate, asgi_sidecar):
    sidecar = asgi_sidecar(telecom_gate, upstream_base_url=f"http://127.0.0.1:{free_port()}/v1")
    started = time.perf_counter()
    error = assert_openai_error(post_chat(sidecar, chat_body(ON_TOPIC)), 502, "upstream_unreachable")
    assert time.perf_counter() - started < 2.5
    assert "could not reach the upstream" in error["message"]
    assert sidecar.metric("gatekeeper_upstream_errors_total", status="502") == 1


def test_embedding_failure_fail_open_forwards(failing_gate, memory_upstream, asgi_sidecar):
    sidecar = asgi_sidecar(failing_gate, upstream=memory_upstream)  # fail_open is the default
    for text in (ON_TOPIC, OFF_TOPIC):
        response = post_chat(sidecar, chat_body(text))
        assert response.status_code == 200
        assert response.headers["x-gatekeeper-decision"] == "fail-open"
        assert response.headers["x-gatekeeper-intent"] == "none"
    assert len(memory_upstream.requests) == 2
    assert sidecar.metric("gatekeeper_embedding_failures_total", policy="fail_open") == 2
    assert sidecar.metric("gatekeeper_decisions_total", decision="error", intent="none", mode="enforce") == 2


def test_embedding_failure_fail_closed_sends_the_canned_reply(failing_gate, memory_upstream, asgi_sidecar):
    sidecar = asgi_sidecar(failing_gate, upstream=memory_upstream, embedding_failure="fail_closed")
    response = post_chat(sidecar, chat_body(ON_TOPIC))
    assert response.status_code == 200
    assert response.headers["x-gatekeeper-decision"] == "fail-closed"
    assert response.json()["choices"][0]["message"]["content"] == failing_gate.catalog_.defaults.reject_reply["zh"]
    assert memory_upstream.requests == []
    assert sidecar.metric("gatekeeper_embedding_failures_total", policy="fail_closed") == 1
    assert sidecar.metric("gatekeeper_rejected_calls_total", reason="fail_closed") == 1


def test_embedding_failure_in_shadow_mode_never_blocks(failing_gate, memory_upstream, asgi_sidecar):
    sidecar = asgi_sidecar(failing_gate, upstream=memory_upstream, embedding_failure="fail_closed",
                            mode="shadow")
    response = post_chat(sidecar, chat_body(ON_TOPIC))
    assert response.headers["x-gatekeeper-decision"] == "shadow-rejected"
    assert len(memory_upstream.requests) == 1
    assert sidecar.metric("gatekeeper_shadow_rejections_total", reason="fail_closed") == 1
    assert sidecar.metric("gatekeeper_rejected_calls_total", reason="fail_closed") == 0


def test_embedding_failure_on_the_gate_endpoint_is_503(failing_gate, asgi_sidecar):
    sidecar = asgi_sidecar(failing_gate)
    response = sidecar.client.post("/v1/gate", json={"text": ON_TOPIC})
    assert_openai_error(response, 503, "embedding_failed")
    assert sidecar.metric("gatekeeper_embedding_failures_total", policy="fail_open") == 1


def test_body_over_the_limit_is_413(telecom_gate, memory_upstream, asgi_sidecar):
    sidecar = asgi_sidecar(telecom_gate, upstream=memory_upstream, max_body_bytes=2000)
    assert post_chat(sidecar, chat_body("话费" * 200)).status_code == 200  # under the limit (~1.3 kB)
    error = assert_openai_error(post_chat(sidecar, chat_body("话费" * 1000)), 413, "request_too_large")
    assert "2000 bytes" in error["message"]

    def chunked():  # no content-length: the limit is enforced on the bytes streamed
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        yield "话费".encode() * 1000
        yield b'"}]}'

    response = sidecar.client.post("/v1/chat/completions", content=chunked(),
                                   headers={"content-type": "application/json"})
    assert_openai_error(response, 413)
    assert sidecar.settled_metric("gatekeeper_requests_total", 2, endpoint="/v1/chat/completions", status="413") == 2
    assert len(memory_upstream.requests) == 1


@pytest.mark.parametrize("content", [b'{"model": "m", "messages": [', b"", b"not json"])
def test_invalid_json_is_400(telecom_gate, asgi_sidecar, content):
    sidecar = asgi_sidecar(telecom_gate)
    for path in ("/v1/chat/completions", "/v1/gate"):
        response = sidecar.client.post(path, content=content, headers={"content-type": "application/json"})
        assert "not valid JSON" in assert_openai_error(response, 400, "invalid_json")["message"]


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": "hi"}, "messages"),
    ({"model": "m", "messages": [{"content": "hi"}]}, "messages.0.role"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": "sometimes"}, "stream"),
    ([1, 2], None),
])
def test_invalid_chat_schema_is_422(telecom_gate, memory_upstream, asgi_sidecar, body, param):
    sidecar = asgi_sidecar(telecom_gate, upstream=memory_upstream)
    error = assert_openai_error(post_chat(sidecar, body), 422, "invalid_request")
    assert error["param"] == param
    assert error["message"].startswith("invalid request: ")
    assert memory_upstream.requests == []


@pytest.mark.parametrize("body", [{}, {"text": "a", "texts": ["b"]}, {"text": 3}, {"texts": []}, {"txt": "a"}])
def test_invalid_gate_schema_is_422(telecom_gate, asgi_sidecar, body):
    sidecar = asgi_sidecar(telecom_gate)
    assert_openai_error(sidecar.client.post("/v1/gate", json=body), 422, "invalid_request")


def test_without_upstream_accepted_requests_get_503_and_gate_works(telecom_gate, asgi_sidecar):
    sidecar = asgi_sidecar(telecom_gate)
    response = post_chat(sidecar, chat_body(ON_TOPIC))
    error = assert_openai_error(response, 503, "no_upstream")
    assert "--upstream-base-url" in error["message"] and "GATEKEEPER_UPSTREAM_BASE_URL" in error["message"]
    assert response.headers["x-gatekeeper-decision"] == "accepted"
    rejected = post_chat(sidecar, chat_body(OFF_TOPIC))
    assert rejected.status_code == 200
    assert rejected.headers["x-gatekeeper-decision"] == "rejected"
    decision = sidecar.client.post("/v1/gate", json={"text": ON_TOPIC}).json()
    assert decision["accepted"] is True


def test_unknown_route_is_an_openai_style_404(telecom_gate, asgi_sidecar):
    sidecar = asgi_sidecar(telecom_gate)  # (every /v1 path is relayed to the upstream: tests/test_server_hardening.py)
    assert_openai_error(sidecar.client.get("/nothing"), 404)
