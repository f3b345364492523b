"""Hardening (issue #13): inputs that cannot be encoded, shared upstream state, error shapes, secrets in the
upstream URL, upstream headers, the passthrough of the rest of /v1, and server timing settings.

The sidecar in process, with the in-memory fake upstream of :mod:`tests.fake_upstream`; a body cut short over real
HTTP on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.responses import StreamingResponse

from gatekeeper.embedders import EmbeddingError
from gatekeeper.logs import JsonFormatter
from gatekeeper.server.batching import MicroBatcher
from gatekeeper.server.config import ServerSettings, describe, mask_url
from gatekeeper.server.serve_cmd import uvicorn_options
from gatekeeper.server.upstream import Upstream
from tests.fake_upstream import (
    EMBEDDING_DIM,
    RATE_LIMIT_HEADERS,
    REDIRECT_TARGET,
    UPSTREAM_COOKIE,
    UPSTREAM_MODELS,
)
from tests.server_fixtures import OFF_TOPIC, ON_TOPIC, chat_body, free_port

#: A lone surrogate, as the JSON escape a client sends: valid JSON syntax, but not Unicode.
LONE_SURROGATE = "\\ud800"
URL_PASSWORD = "pw-do-not-leak"
URL_KEY = "key-do-not-leak"


def raw_json(document: object, **raw_values: str) -> bytes:
    """``document`` as JSON, with each ``"<name>"`` placeholder string replaced by the raw JSON ``raw_values[name]``."""
    text = json.dumps(document)
    for name, raw in raw_values.items():
        text = text.replace(f'"<{name}>"', raw)
    return text.encode()


def post(sidecar, path: str, content: bytes, **headers: str) -> httpx.Response:
    return sidecar.client.post(path, content=content, headers={"content-type": "application/json", **headers})


def openai_error(response: httpx.Response, status: int) -> dict:
    """The ``error`` object of an OpenAI-style JSON error response with ``status``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["message"] and error["type"]
    return error


@contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """What the sidecar logs while the block runs, as JSON lines with extras: gatekeeper's logs (every level),
    uvicorn's, and warnings from anything else (unconfigured libraries' logs go nowhere below that)."""
    output = io.StringIO()
    handler = logging.StreamHandler(output)
    handler.setFormatter(JsonFormatter())
    loggers = {logging.getLogger(name): level for name, level in (
        ("gatekeeper", logging.DEBUG), ("uvicorn", logging.DEBUG), ("uvicorn.error", logging.DEBUG),
        ("uvicorn.access", logging.DEBUG), ("", logging.WARNING))}
    levels = [logger.level for logger in loggers]
    for logger, level in loggers.items():
        logger.addHandler(handler)
        logger.setLevel(level)
    try:
        yield output
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(handler)
            logger.setLevel(level)


@pytest.fixture
def sidecar(telecom_gate, memory_upstream, asgi_sidecar):
    """Enforce mode, forwarding to the fake upstream."""
    return asgi_sidecar(telecom_gate, upstream=memory_upstream)


# 1. One bad text never fails anyone else's micro-batch.

def test_a_text_that_is_not_unicode_fails_alone_with_a_400_naming_it(sidecar, telecom_gate):
    good = [f"我想查第{i}个月的话费" for i in range(10)] + [OFF_TOPIC, ON_TOPIC]
    poison = [raw_json({"text": "<t>"}, t=f'"x{LONE_SURROGATE}"'),
              raw_json({"texts": ["ok", "<t>"]}, t=f'"{LONE_SURROGATE}y"'),
              raw_json({"messages": [{"role": "user", "content": "<t>"}]}, t=f'"话费{LONE_SURROGATE}"')]

    async def burst(client: httpx.AsyncClient) -> tuple[list[httpx.Response], list[httpx.Response]]:
        requests = [client.post("/v1/gate", json={"text": text}) for text in good]
        requests += [client.post("/v1/gate", content=body, headers={"content-type": "application/json"})
                     for body in poison * 2]
        responses = await asyncio.gather(*requests)
        return responses[:len(good)], responses[len(good):]

    good_responses, poison_responses = sidecar.run_async(burst)
    for text, response in zip(good, good_responses):
        assert response.status_code == 200, response.text
        expected = telecom_gate.decide(text)
        assert (response.json()["accepted"], response.json()["intent"]) == (expected.accepted, expected.intent)
    params = [openai_error(response, 400)["param"] for response in poison_responses]
    assert params == ["text", "texts.1", "messages.0.content"] * 2
    error = openai_error(poison_responses[0], 400)
    assert error["code"] == "invalid_unicode" and "UTF-8" in error["message"]
    assert sidecar.metric("gatekeeper_embedding_failures_total", policy="fail_open") == 0
    assert sidecar.metric("gatekeeper_decisions_total", decision="error", intent="none", mode="enforce") == 0


class Utf8Embedder:
    """Fails, like the real encoder, on a batch holding any text that is not encodable as UTF-8."""

    dim = 2
    fingerprint = "utf8"

    def __init__(self, failure: type[Exception] | None = None):
        self.failure = failure
        self.calls: list[list[str]] = []

    def encode(self, texts, *, is_query: bool = False) -> np.ndarray:
        self.calls.append(list(texts))
        time.sleep(0.02)  # long enough for concurrent callers to queue into one batch
        if self.failure is not None:
            raise self.failure("backend down")
        for text in texts:
            text.encode("utf-8")
        return np.array([[float(len(text)), 1.0] for text in texts], dtype=np.float32)


def embed_concurrently(embedder: Utf8Embedder, texts: list[str]) -> list[object]:
    async def scenario() -> list[object]:
        batcher = MicroBatcher()
        try:
            return await asyncio.gather(*(batcher.embed(embedder, [text]) for text in texts), return_exceptions=True)
        finally:
            await batcher.close()

    return asyncio.run(scenario())


def test_a_merged_encoder_call_that_fails_is_retried_request_by_request():
    texts = [f"bad {i}\ud800" if i % 3 == 1 else f"good {i}" for i in range(9)]
    embedder = Utf8Embedder()
    outcomes = embed_concurrently(embedder, texts)
    for text, outcome in zip(texts, outcomes):
        if "\ud800" in text:
            assert isinstance(outcome, UnicodeEncodeError)
        else:
            assert outcome.tolist() == [[float(len(text)), 1.0]]
    assert any(len(call) > 1 and any("\ud800" in text for text in call) for call in embedder.calls)  # merged
    assert len(embedder.calls) <= 2 * len(texts)  # one split at most: each text encoded at most twice
    assert all(sum(text in call for call in embedder.calls) <= 2 for text in texts)


def test_a_backend_failure_is_not_retried_request_by_request():
    embedder = Utf8Embedder(failure=EmbeddingError)
    outcomes = embed_concurrently(embedder, [f"t {i}" for i in range(6)])
    assert all(isinstance(outcome, EmbeddingError) for outcome in outcomes)
    assert sum(len(call) for call in embedder.calls) == 6  # every text went to the encoder once


# 2. No cookie jar shared between callers.

def test_a_cookie_the_upstream_sets_for_one_caller_is_never_sent_for_another(sidecar, memory_upstream):
    first = sidecar.client.post("/v1/chat/completions", json=chat_body(ON_TOPIC, model="mock-cookie"))
    assert first.status_code == 200
    sidecar.client.post("/v1/chat/completions", json=chat_body(ON_TOPIC))
    sidecar.client.post("/v1/chat/completions", json=chat_body(ON_TOPIC),
                        headers={"cookie": "mine=caller-three"})
    sidecar.client.get("/v1/models")
    assert [request.headers.get("cookie") for request in memory_upstream.requests] == [None, None, "mine=caller-three",
                                                                                   None]
    assert UPSTREAM_COOKIE.split("=")[1] not in str(first.headers)  # set-cookie stays upstream


# 3. Every error is OpenAI-style JSON; streams never just stop.

@pytest.mark.parametrize(("body", "param"), [
    (raw_json(chat_body(ON_TOPIC, model="<m>"), m=f'"gpt{LONE_SURROGATE}"'), "model"),
    (raw_json(chat_body(OFF_TOPIC, model="<m>", stream=True), m=f'"gpt{LONE_SURROGATE}"'), "model"),
    (raw_json(chat_body(ON_TOPIC, tools=[{"type": "function", "function": {"name": "<n>"}}]),
              n=f'"f{LONE_SURROGATE}"'), "tools.0.function.name"),
    (raw_json(chat_body(ON_TOPIC, metadata={"<k>": "v"}), k=f'"k{LONE_SURROGATE}"'), "metadata"),
])
def test_a_lone_surrogate_anywhere_in_a_chat_request_is_a_400(sidecar, memory_upstream, body, param):
    error = openai_error(post(sidecar, "/v1/chat/completions", body), 400)
    assert (error["param"], error["code"]) == (param, "invalid_unicode")
    assert memory_upstream.requests == []


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_number_is_a_400(sidecar, memory_upstream, stream, number):
    body = raw_json(chat_body(ON_TOPIC, temperature="<x>", stream=stream), x=number)
    error = openai_error(post(sidecar, "/v1/chat/completions", body), 400)
    assert (error["param"], error["code"]) == ("temperature", "invalid_json")
    assert number in error["message"] and "finite number" in error["message"]
    assert memory_upstream.requests == []


def test_an_unexpected_exception_is_a_500_json_error_logged_on_the_server(sidecar):
    async def explode() -> None:
        raise RuntimeError("internal detail the client must not see")

    sidecar.app.add_api_route("/test/explode", explode)
    with captured_logs() as logs:
        response = sidecar.client.get("/test/explode")
    error = openai_error(response, 500)
    assert error["code"] == "internal_error"
    assert "internal detail" not in response.text and "Traceback" not in response.text
    assert "internal detail the client must not see" in logs.getvalue() and "Traceback" in logs.getvalue()


def test_a_stream_that_fails_midway_ends_with_an_error_event_and_done(sidecar):
    def events() -> Iterator[bytes]:
        yield b'data: {"n": 1}\n\n'
        raise RuntimeError("broken generator")

    async def broken_stream() -> StreamingResponse:
        return StreamingResponse(events(), media_type="text/event-stream")

    sidecar.app.add_api_route("/test/broken-stream", broken_stream)
    with captured_logs() as logs:
        with sidecar.client.stream("GET", "/test/broken-stream") as response:
            assert response.status_code == 200
            lines = [line for line in response.iter_lines() if line]
    assert lines[0] == 'data: {"n": 1}'
    assert json.loads(lines[-2].removeprefix("data: "))["error"]["code"] == "internal_error"
    assert lines[-1] == "data: [DONE]"
    assert "broken generator" in logs.getvalue()


# 4. Secrets in the upstream URL.

def secret_url(host_port: str) -> str:
    return f"http://alice:{URL_PASSWORD}@{host_port}/v1?api-key={URL_KEY}&api-version=2024-06-01"


def test_mask_url_masks_userinfo_and_query_values():
    masked = mask_url(secret_url("127.0.0.1:8000"))
    assert masked == "http://***@127.0.0.1:8000/v1?api-key=***&api-version=***"
    assert mask_url("https://api.example.com/v1") == "https://api.example.com/v1"
    settings = ServerSettings(catalog="intents", upstream_base_url=secret_url("127.0.0.1:8000"))
    printed = describe(settings, {})
    assert URL_PASSWORD not in printed and URL_KEY not in printed and "alice" not in printed


@pytest.mark.parametrize("model", ["test-model", "mock-500", "mock-redirect", "mock-401"])
def test_url_secrets_never_reach_a_response_or_a_log(telecom_gate, memory_upstream, asgi_sidecar, model):
    sidecar = asgi_sidecar(telecom_gate, upstream=memory_upstream,
                           upstream_base_url=secret_url(memory_upstream.base_url[7:-3]), upstream_timeout_s=2)
    down = asgi_sidecar(telecom_gate, upstream_base_url=secret_url(f"127.0.0.1:{free_port()}"))
    with captured_logs() as logs:
        responses = [target.client.post("/v1/chat/completions", json=chat_body(ON_TOPIC, model=model))
                     for target in (sidecar, down)]
        responses.append(down.client.get("/v1/models"))
        responses.append(sidecar.client.get("/v1/nothing"))  # its 404 quotes the URL
    for text in [logs.getvalue(), *(response.text + str(response.headers) for response in responses)]:
        assert URL_PASSWORD not in text and URL_KEY not in text
    assert [response.status_code for response in responses[1:]] == [502, 502, 404]
    assert "api-key=***" in responses[1].json()["error"]["message"]
    assert memory_upstream.requests[0].path.endswith(f"?api-key={URL_KEY}&api-version=2024-06-01")  # still sent


def test_the_callers_authorization_wins_over_credentials_in_the_url(telecom_gate, memory_upstream, asgi_sidecar):
    sidecar = asgi_sidecar(telecom_gate, upstream=memory_upstream,
                           upstream_base_url=secret_url(memory_upstream.base_url[7:-3]))
    for headers in ({"authorization": "Bearer caller-key"}, {}):
        sidecar.client.post("/v1/chat/completions", json=chat_body(ON_TOPIC), headers=headers)
        sidecar.client.get("/v1/models", headers=headers)
    basic = "Basic " + base64.b64encode(f"alice:{URL_PASSWORD}".encode()).decode()
    assert [request.headers.get("authorization") for request in memory_upstream.requests] == [
        "Bearer caller-key", "Bearer caller-key", basic, basic]


# 5. Upstream headers.

@pytest.mark.parametrize(("model", "status"), [("mock-429", 429), ("mock-503", 502)])
def test_rate_limit_headers_come_back_with_errors(sidecar, model, status):
    response = sidecar.client.post("/v1/chat/completions", json=chat_body(ON_TOPIC, model=model))
    openai_error(response, status)
    for name, value in RATE_LIMIT_HEADERS.items():
        assert response.headers[name] == value
    assert response.headers["x-gatekeeper-decision"] == "accepted"


def test_upstream_headers_are_relayed_but_never_the_gates_own(sidecar):
    response = sidecar.client.post("/v1/chat/completions", json=chat_body(ON_TOPIC, model="mock-headers"))
    assert response.status_code == 200
    assert response.headers["x-ratelimit-remaining-requests"] == "41"
    assert response.headers["openai-processing-ms"] == "12"
    assert response.headers["x-gatekeeper-decision"] == "accepted"
    assert "x-gatekeeper-debug" not in response.headers
    assert "forged" not in str(response.headers)


def test_an_upstream_redirect_is_not_followed(sidecar, memory_upstream):
    response = sidecar.client.post("/v1/chat/completions", json=chat_body(ON_TOPIC, model="mock-redirect"))
    error = openai_error(response, 502)
    assert error["code"] == "upstream_redirect" and error["upstream_status"] == 307
    assert REDIRECT_TARGET in error["message"] and "upstream_base_url" in error["message"]
    assert len(memory_upstream.requests) == 1


# 6. The rest of the OpenAI API is relayed.

def test_the_openai_client_lists_models_and_embeds_through_the_sidecar(sidecar, memory_upstream):
    client = sidecar.openai_client("caller-key")
    assert [model.id for model in client.models.list()] == list(UPSTREAM_MODELS)
    embeddings = client.embeddings.create(model="fake-embed", input=["ab", "abcd"], encoding_format="float")
    assert [item.embedding for item in embeddings.data] == [[2.0] * EMBEDDING_DIM, [4.0] * EMBEDDING_DIM]
    assert [(request.path, request.headers["authorization"]) for request in memory_upstream.requests] == [
        ("/v1/models", "Bearer caller-key"), ("/v1/embeddings", "Bearer caller-key")]
    assert memory_upstream.requests[1].body["input"] == ["ab", "abcd"]


def test_passthrough_keeps_method_query_and_upstream_errors(sidecar, memory_upstream):
    deleted = sidecar.client.delete("/v1/files/file-1")
    assert deleted.json() == {"id": "file-1", "object": "file", "deleted": True}
    sidecar.client.get("/v1/models", params={"limit": "2", "tag": "a b"})
    assert memory_upstream.requests[1].path == "/v1/models?limit=2&tag=a+b"
    assert openai_error(sidecar.client.get("/v1/nothing"), 404)["code"] == "not_found"
    dotted = sidecar.client.get("/v1/%2e%2e/metrics")
    assert openai_error(dotted, 400)["code"] == "invalid_path"
    assert len(memory_upstream.requests) == 3


def test_a_relayed_body_cut_short_upstream_is_cut_short_for_the_caller_too(telecom_gate, fake_upstream, start_sidecar):
    """Over real sockets: the server ends the connection mid-body, which an in-process client cannot show."""
    served = start_sidecar(telecom_gate, upstream=fake_upstream)
    with captured_logs() as logs:
        with pytest.raises(httpx.RemoteProtocolError):  # an incomplete body, never a silently truncated one
            httpx.get(f"{served.base_url}/v1/files/file-broken/content", timeout=10)
    assert served.metric("gatekeeper_upstream_errors_total", status="502") == 1
    assert "upstream_stream_failed" in logs.getvalue()


def test_gated_routes_keep_their_handlers(sidecar, memory_upstream):
    chat = sidecar.client.post("/v1/chat/completions", json=chat_body(OFF_TOPIC))
    assert chat.headers["x-gatekeeper-decision"] == "rejected"
    assert sidecar.client.post("/v1/gate", json={"text": ON_TOPIC}).json()["accepted"]
    assert memory_upstream.requests == []


def test_passthrough_without_an_upstream_is_a_503(telecom_gate, asgi_sidecar):
    sidecar = asgi_sidecar(telecom_gate)
    error = openai_error(sidecar.client.get("/v1/models"), 503)
    assert error["code"] == "no_upstream" and "GATEKEEPER_UPSTREAM_BASE_URL" in error["message"]


# 7. Small ones.

def test_the_admin_bearer_scheme_is_case_insensitive(telecom_gate, asgi_sidecar, tmp_path: Path):
    sidecar = asgi_sidecar(telecom_gate, admin_token="tok-1", catalog=str(tmp_path / "missing.yaml"))
    statuses = {header: sidecar.client.post("/admin/reload", headers={"authorization": header}).status_code
                for header in ("bearer tok-1", "BEARER tok-1", "Bearer tok-2", "tok-1", "Basic tok-1")}
    # Past the token check, the reload itself fails (no catalog at that path): 422, not 401.
    assert statuses == {"bearer tok-1": 422, "BEARER tok-1": 422, "Bearer tok-2": 401, "tok-1": 401,
                        "Basic tok-1": 401}


@pytest.mark.parametrize("stream", [0, 1, "true"])
def test_stream_must_be_a_json_boolean(sidecar, memory_upstream, stream):
    response = sidecar.client.post("/v1/chat/completions", json=chat_body(ON_TOPIC, stream=stream))
    assert openai_error(response, 422)["param"] == "stream"
    assert memory_upstream.requests == []


def test_keep_alive_outlasts_the_upstream_pool_and_shutdown_fits_the_grace_period():
    settings = ServerSettings(catalog="intents", upstream_base_url="http://127.0.0.1:8000/v1")
    config = uvicorn.Config("gatekeeper.server.app:create_app", **uvicorn_options(settings))
    assert config.timeout_keep_alive == settings.keep_alive_s == 10
    assert config.timeout_graceful_shutdown == settings.graceful_shutdown_s == 25  # below Kubernetes' 30 s
    upstream = Upstream(settings.upstream_base_url, None, 60, 5, settings.upstream_keepalive_expiry_s)
    assert upstream._client._transport._pool._keepalive_expiry == 4 < config.timeout_keep_alive
    asyncio.run(upstream.close())
