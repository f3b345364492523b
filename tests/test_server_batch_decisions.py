"""Whole decisions off the event loop: a batch of requests is embedded, then scored together in one call;
each request is counted once; the access log is off unless asked for."""

from __future__ import annotations

import asyncio
import logging
import threading

import httpx
import numpy as np
import pytest

from gatekeeper.gate import Gate
from gatekeeper.server.middleware import AccessLogMiddleware, json_problem
from tests.conftest import INTENTS
from tests.server_fixtures import chat_body

ENCODER_THREAD = "gatekeeper-encoder_0"
DECIDER_THREAD = "gatekeeper-decider_0"
#: A follow-up whose rule makes a second encoder call, for its last clause "那另一个呢?".
EARLIER, FOLLOW_UP, CLAUSE = "我这个月话费怎么扣了这么多", "好的。那另一个呢?", "那另一个呢?"


class RecordingGate(Gate):
    """A gate recording the thread and size of every :meth:`decide_prepared` call."""

    def __init__(self, embedder):
        super().__init__(embedder)
        self.scored: list[tuple[str, int]] = []

    def decide_prepared(self, prepared, scorable, vectors):
        self.scored.append((threading.current_thread().name, len(prepared)))
        return super().decide_prepared(prepared, scorable, vectors)


class FlakyEmbedder:
    """The real model, failing on the texts in :attr:`fail_on`; records the thread of every call."""

    def __init__(self, embedder):
        self.embedder = embedder
        self.dim = embedder.dim
        self.fingerprint = embedder.fingerprint
        self.fail_on: set[str] = set()
        self.calls: list[tuple[str, list[str]]] = []

    def encode(self, texts, *, is_query: bool = False) -> np.ndarray:
        self.calls.append((threading.current_thread().name, list(texts)))
        if self.fail_on & set(texts):
            raise RuntimeError("encoder down")
        return self.embedder.encode(texts, is_query=is_query)


@pytest.fixture
def recording_gate(use_embedder, telecom_gate) -> RecordingGate:
    return RecordingGate(use_embedder).fit(INTENTS / "telecom_zh.yaml")  # the index telecom_gate built


@pytest.fixture
def flaky_gate(use_embedder, telecom_gate) -> Gate:
    return Gate(FlakyEmbedder(use_embedder)).fit(INTENTS / "telecom_zh.yaml")


def decisions_counted(sidecar) -> dict[str, float]:
    """Every ``gatekeeper_decisions_total`` sample of the sidecar's own registry, by decision."""
    counted: dict[str, float] = {}
    for metric in sidecar.registry.collect():
        for sample in metric.samples:
            if sample.name == "gatekeeper_decisions_total" and sample.value:
                decision = sample.labels["decision"]
                counted[decision] = counted.get(decision, 0.0) + sample.value
    return counted


def test_concurrent_requests_are_scored_together_in_the_decision_thread(recording_gate, asgi_sidecar):
    texts = [f"我想查第{i}个月的话费" for i in range(20)] + ["今天天气怎么样", "帮我写一首关于秋天的诗"]
    alone = {text: recording_gate.decide(text) for text in texts}  # the same fitted gate, in process, one by one
    recording_gate.scored.clear()
    sidecar = asgi_sidecar(recording_gate)

    async def burst(client: httpx.AsyncClient) -> list[httpx.Response]:
        return await asyncio.gather(*(client.post("/v1/gate", json={"text": text}) for text in texts))

    responses = sidecar.run_async(burst)
    for text, response in zip(texts, responses):
        expected = alone[text]
        body = response.json()
        assert (body["text"], body["accepted"], body["intent"]) == (text, expected.accepted, expected.intent)
        # Scored in a batch or alone, the same figures up to float32 rounding (a product's sums depend on its shape).
        assert body["score"] == pytest.approx(expected.score, abs=1e-5)
        assert body["top_k"][0] == {"intent": expected.top_k[0].intent, "score": pytest.approx(
            expected.top_k[0].score, abs=1e-5)} and body["followup"] is False
    threads = {thread for thread, _ in recording_gate.scored}
    assert threads == {DECIDER_THREAD}  # never on the event loop
    assert sum(size for _, size in recording_gate.scored) == len(texts)
    assert len(recording_gate.scored) == sidecar.metric("gatekeeper_batch_size_count") < len(texts)  # one per call


def test_a_texts_batch_with_empty_and_non_text_entries_keeps_its_order(recording_gate, asgi_sidecar):
    sidecar = asgi_sidecar(recording_gate)
    response = sidecar.client.post("/v1/gate", json={"texts": ["  ", EARLIER, "今天天气怎么样"]})
    decisions = response.json()["decisions"]
    assert [(d["reason"], d["accepted"]) for d in decisions] == [
        ("empty_input", False), (None, True), (decisions[2]["reason"], False)]
    assert recording_gate.scored == [(DECIDER_THREAD, 3)]


def test_a_follow_up_is_resumed_in_the_decision_thread_for_its_second_call(flaky_gate, asgi_sidecar):
    sidecar = asgi_sidecar(flaky_gate)
    messages = [{"role": "user", "content": EARLIER}, {"role": "assistant", "content": "您本月话费为58元。"},
                {"role": "user", "content": FOLLOW_UP}]
    response = sidecar.client.post("/v1/gate", json={"messages": messages})
    assert response.status_code == 200 and response.json()["followup"] is True
    assert response.json()["intent"] == "bill_inquiry"
    assert flaky_gate.embedder_.calls == [(ENCODER_THREAD, [FOLLOW_UP, EARLIER]), (DECIDER_THREAD, [CLAUSE])]


def test_each_request_is_counted_once_when_its_second_encoder_call_fails(flaky_gate, memory_upstream, asgi_sidecar):
    """Issue #12: a failing follow-up counted as an error and again as a decision. Now: one count per request."""
    sidecar = asgi_sidecar(flaky_gate, upstream=memory_upstream, embedding_failure="fail_closed")
    flaky_gate.embedder_.fail_on = {CLAUSE}
    messages = [{"role": "user", "content": EARLIER}, {"role": "assistant", "content": "您本月话费为58元。"},
                {"role": "user", "content": FOLLOW_UP}]
    failed = sidecar.client.post("/v1/gate", json={"messages": messages})
    assert failed.status_code == 503 and failed.json()["error"]["code"] == "embedding_failed"
    closed = sidecar.client.post("/v1/chat/completions", json={"model": "m", "messages": messages})
    assert closed.headers["x-gatekeeper-decision"] == "fail-closed"
    assert sidecar.client.post("/v1/chat/completions", json=chat_body(EARLIER)).headers[
        "x-gatekeeper-decision"] == "accepted"
    assert sidecar.client.post("/v1/gate", json={"texts": [EARLIER, "今天天气怎么样"]}).status_code == 200
    assert [texts for _, texts in flaky_gate.embedder_.calls].count([CLAUSE]) == 2  # the second calls were made
    assert decisions_counted(sidecar) == {"error": 2, "accepted": 2, "rejected": 1}
    assert sidecar.metric("gatekeeper_embedding_failures_total", policy="fail_closed") == 2
    assert len(memory_upstream.requests) == 1


def test_the_access_log_is_off_by_default_and_structured_when_sampled(telecom_gate, asgi_sidecar):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("gatekeeper.server.access")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        quiet = asgi_sidecar(telecom_gate)
        quiet.client.post("/v1/gate", json={"text": EARLIER}).raise_for_status()
        assert not any(entry.cls is AccessLogMiddleware for entry in quiet.app.user_middleware)
        assert records == []
        logged = asgi_sidecar(telecom_gate, access_log_sample=1.0)
        response = logged.client.post("/v1/gate", json={"text": EARLIER})
        logged.client.get("/healthz").raise_for_status()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert [(r.getMessage(), r.method, r.path, r.status) for r in records] == [
        ("access", "POST", "/v1/gate", 200), ("access", "GET", "/healthz", 200)]
    assert records[0].request_id == response.headers["x-request-id"] and records[0].ms > 0


@pytest.mark.parametrize("body", ['{"x": NaN}'.encode("utf-16"), b'{"t": "\xed\xa0\x80"}', b'{"t": "\\udc00"}'],
                         ids=["utf-16 NaN", "utf-8 surrogate", "escaped surrogate"])
def test_bodies_skipped_by_the_quick_check_hold_no_problem(body):
    """The byte-level check that spares most bodies a second parse lets every problem through to the parser."""
    assert json_problem(body)["error"]["code"] in ("invalid_json", "invalid_unicode")
    assert json_problem('{"x": 1, "t": "话费 \\ud83d\\ude00"}'.encode("utf-16")) is None
