"""Fixtures for the sidecar tests: a recording fake LLM upstream and a real uvicorn server, both on loopback.

Import the fixtures into a test module with
``from tests.server_fixtures import fake_upstream, start_sidecar  # noqa: F401``.

The fake upstream (stdlib ``http.server``, real HTTP and SSE) records every
request and behaves according to the request's ``model``:

* ``mock-500``: HTTP 500 with an error body;
* ``mock-401``: HTTP 401 with an OpenAI-style error body;
* ``mock-slow``: answers only after :data:`SLOW_SECONDS`;
* ``mock-stall``: starts a stream, then stalls for :data:`SLOW_SECONDS`;
* ``mock-gzip``: the stream, gzip-compressed (``content-encoding: gzip``);
* ``mock-429`` / ``mock-503``: that status with ``retry-after`` and ``x-ratelimit-*`` headers;
* ``mock-redirect``: a 307 to :data:`REDIRECT_TARGET`;
* ``mock-cookie``: the completion, setting the cookie :data:`UPSTREAM_COOKIE`;
* ``mock-headers``: the completion with :data:`UPSTREAM_HEADERS` (rate limits, and forged gate headers);
* anything else: a ``chat.completion`` (or, with ``stream: true``, three SSE
  chunks a little apart, then ``[DONE]``) echoing the last user message.

``POST /v1/responses`` echoes the last user input as ``echo: <text>``: a
``response`` object, or (``stream: true``) ``response.created``, one
``response.output_text.delta`` and ``response.completed`` events.

Beyond chat completions it answers ``GET /v1/models`` (:data:`UPSTREAM_MODELS`),
``POST /v1/embeddings`` (vectors of :data:`EMBEDDING_DIM` made from each
input's length), ``DELETE /v1/files/{id}`` and ``GET /v1/files/file-broken/content``
(a body cut short); any other path is a 404.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import pytest
import uvicorn
import yaml
from prometheus_client import CollectorRegistry

from gatekeeper.gate import Gate
from gatekeeper.server.app import create_app
from gatekeeper.server.config import ServerSettings
from gatekeeper.server.serve_cmd import uvicorn_options

SLOW_SECONDS = 3.0
UPSTREAM_MODELS = ("fake-chat", "fake-embed")
EMBEDDING_DIM = 4
REDIRECT_TARGET = "http://127.0.0.1:9/v1/chat/completions"
UPSTREAM_COOKIE = "session=set-for-one-caller"
RATE_LIMIT_HEADERS = {"retry-after": "7", "x-ratelimit-remaining-requests": "0",
                      "x-ratelimit-reset-requests": "7s"}
UPSTREAM_HEADERS = {"x-ratelimit-remaining-requests": "41", "x-gatekeeper-decision": "forged-by-upstream",
                    "x-gatekeeper-debug": "forged-by-upstream", "openai-processing-ms": "12",
                    "x-request-id": "req-from-upstream"}
STREAM_PIECES = ("Hello", " from", " upstream")
START_TIMEOUT_S = 20.0


@dataclass
class RecordedRequest:
    """One request the fake upstream received."""

    path: str
    headers: dict[str, str]
    body: dict


@dataclass
class FakeUpstream:
    """A running fake upstream."""

    server: ThreadingHTTPServer
    requests: list[RecordedRequest] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (ending in /v1)."""
        return f"http://127.0.0.1:{self.server.server_port}/v1"


def _handler(upstream: FakeUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            """Quiet."""

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
            self._record(body)
            if self.path == "/v1/embeddings":
                return self._embeddings(body)
            if self.path == "/v1/responses":
                return self._responses(body)
            model = body.get("model")
            if model in ("mock-429", "mock-503"):
                return self._json(int(model[-3:]), {"error": {"message": "slow down", "type": "rate_limit_error"}},
                                  RATE_LIMIT_HEADERS)
            if model == "mock-redirect":
                return self._json(307, {}, {"location": REDIRECT_TARGET})
            if model == "mock-500":
                return self._json(500, {"error": {"message": "upstream exploded", "type": "server_error"}})
            if model == "mock-401":
                return self._json(401, {"error": {"message": "bad key", "type": "invalid_request_error",
                                                  "code": "invalid_api_key"}})
            if model == "mock-slow":
                time.sleep(SLOW_SECONDS)
            last = next((m.get("content") for m in reversed(body.get("messages", [])) if m.get("role") == "user"),
                        "")
            if body.get("stream"):
                return self._stream(model, stall=model == "mock-stall", gzipped=model == "mock-gzip")
            extra = {"mock-cookie": {"set-cookie": f"{UPSTREAM_COOKIE}; Path=/"},
                     "mock-headers": UPSTREAM_HEADERS}.get(model)
            self._json(200, {"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": model,
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": f"echo: {last}"}}],
                             "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}, extra)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._record({})
            if self.path.split("?")[0] == "/v1/models":
                return self._json(200, {"object": "list", "data": [
                    {"id": name, "object": "model", "created": 1, "owned_by": "fake"} for name in UPSTREAM_MODELS]})
            if self.path == "/v1/files/file-broken/content":  # promises more bytes than it sends, then hangs up
                self.send_response(200)
                self.send_header("content-type", "application/octet-stream")
                self.send_header("content-length", "1000")
                self.end_headers()
                self.wfile.write(b"partial")
                self.close_connection = True
                return None
            self._not_found()

        def do_DELETE(self) -> None:  # noqa: N802 - http.server's naming
            self._record({})
            if self.path.startswith("/v1/files/"):
                return self._json(200, {"id": self.path.rsplit("/", 1)[-1], "object": "file", "deleted": True})
            self._not_found()

        def _record(self, body: dict) -> None:
            upstream.requests.append(RecordedRequest(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                     body))

        def _not_found(self) -> None:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error",
                                       "code": "not_found"}})

        def _embeddings(self, body: dict) -> None:
            inputs = body.get("input")
            inputs = [inputs] if isinstance(inputs, str) else inputs
            self._json(200, {"object": "list", "model": body.get("model"),
                             "data": [{"object": "embedding", "index": i,
                                       "embedding": [float(len(text))] * EMBEDDING_DIM}
                                      for i, text in enumerate(inputs)],
                             "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}})

        def _responses(self, body: dict) -> None:
            """A Responses API answer echoing the last user input: a ``response`` object, or its SSE events."""
            items = body.get("input")
            items = [{"role": "user", "content": items}] if isinstance(items, str) else items or []
            last = next((item.get("content") for item in reversed(items) if item.get("role") == "user"), "")
            if isinstance(last, list):
                last = " ".join(part.get("text", "") for part in last if part.get("type") == "input_text")
            text = f"echo: {last}"
            response = {"id": "resp_up", "object": "response", "created_at": 1, "status": "completed",
                        "model": body.get("model"), "output": [
                            {"id": "msg_up", "type": "message", "role": "assistant", "status": "completed",
                             "content": [{"type": "output_text", "text": text, "annotations": []}]}],
                        "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}}
            if not body.get("stream"):
                return self._json(200, response)
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("connection", "close")
            self.end_headers()
            events = [("response.created", {"response": {**response, "status": "in_progress", "output": []}}),
                      ("response.output_text.delta", {"item_id": "msg_up", "output_index": 0, "content_index": 0,
                                                      "delta": text}),
                      ("response.completed", {"response": response})]
            for number, (kind, data) in enumerate(events):
                event = {"type": kind, "sequence_number": number, **data}
                self.wfile.write(f"event: {kind}\ndata: {json.dumps(event)}\n\n".encode())
                self.wfile.flush()
            self.close_connection = True

        def _json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("x-upstream", "fake")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, model: str, stall: bool, gzipped: bool) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            if gzipped:
                self.send_header("content-encoding", "gzip")
            self.end_headers()
            compressor = zlib.compressobj(wbits=31)  # gzip framing, flushed per event so it still streams
            events = [{"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": model,
                       "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                      for piece in STREAM_PIECES]
            events[-1]["choices"][0]["finish_reason"] = "stop"
            for event in [*(f"data: {json.dumps(e)}\n\n" for e in events), "data: [DONE]\n\n"]:
                data = event.encode()
                if gzipped:
                    data = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                time.sleep(SLOW_SECONDS if stall else 0.05)
            if gzipped:
                tail = compressor.flush()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(tail), tail))
            self.wfile.write(b"0\r\n\r\n")

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """The sidecar hanging up on a slow answer (timeout tests) is expected: no traceback."""


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    """A recording fake OpenAI-compatible upstream on 127.0.0.1 (a free port)."""
    server = _QuietServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    upstream = FakeUpstream(server)
    server.RequestHandlerClass = _handler(upstream)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield upstream
    server.shutdown()
    server.server_close()
    thread.join(5)


@dataclass
class RunningSidecar:
    """A sidecar served by uvicorn in a background thread."""

    base_url: str
    app: object
    registry: CollectorRegistry
    server: uvicorn.Server
    thread: threading.Thread

    def metric(self, name: str, **labels: str) -> float:
        """A sample's current value (0 if it has not been recorded)."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def settled_metric(self, name: str, expected: float, **labels: str) -> float:
        """The sample's value once it equals ``expected`` or 2 s have passed.

        For metrics recorded after the response is sent (request counts, the
        in-flight gauge), which a client can read a moment too early.
        """
        deadline = time.monotonic() + 2.0
        while self.metric(name, **labels) != expected and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.metric(name, **labels)

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for it (bounded)."""
        self.server.should_exit = True
        self.thread.join(START_TIMEOUT_S)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def start_sidecar() -> Iterator[Callable[..., RunningSidecar]]:
    """Factory: ``start_sidecar(gate, **settings)`` serves ``gate`` on a free loopback port until the test ends,
    with the uvicorn options ``gatekeeper serve`` uses (:func:`uvicorn_options`: timeouts, the HTTP protocol)."""
    running: list[RunningSidecar] = []

    def start(gate: Gate | None, **settings: object) -> RunningSidecar:
        settings.setdefault("catalog", gate.catalog_path_ if gate is not None else "intents")
        registry = CollectorRegistry()
        resolved = ServerSettings(**settings)
        app = create_app(resolved, gate=gate, registry=registry)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        options = {name: value for name, value in uvicorn_options(resolved).items()
                   if name not in ("host", "port", "workers", "log_level")}  # the socket is given; quieter logs
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", **options))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started, "the sidecar did not start"
        sidecar = RunningSidecar(f"http://127.0.0.1:{port}", app, registry, server, thread)
        running.append(sidecar)
        return sidecar

    yield start
    for sidecar in running:
        sidecar.stop()


#: Messages for the bundled telecom catalog (intents/telecom_zh.yaml).
ON_TOPIC = "我这个月话费怎么扣了这么多"
OFF_TOPIC = "今天天气怎么样"
OFF_TOPIC_EN = "what's a good recipe for lasagne?"


def chat_body(text: str, **extra: object) -> dict:
    """A one-turn chat completion request."""
    return {"model": "test-model", "messages": [{"role": "user", "content": text}], **extra}


#: A small catalog that builds in about a second, so reload tests can rebuild for real.
SHOP = {
    "version": 1, "name": "shop", "conversation_pack": "none",
    "defaults": {"reject_reply": {"en": "Sorry, I only help with orders.", "zh": "抱歉，我只处理订单问题。"}},
    "intents": [
        {"name": "order_status", "examples": ["where is my order", "has my package shipped", "track my parcel",
                                             "when will my order arrive"]},
        {"name": "refund", "examples": ["I want my money back", "how do I get a refund", "refund my purchase",
                                       "return this item for a refund"]},
    ],
    "out_of_scope": ["what's the weather today", "tell me a joke", "who won the football", "recipe for pancakes",
                     "write a poem", "what is the capital of France"],
}
NEW_INTENT = {"name": "delivery_address", "examples": ["change my delivery address", "ship to a different address",
                                                      "update the address on my order", "wrong address on the parcel"]}


def write_catalog(path: Path, document: dict) -> None:
    """Write a catalog document as YAML."""
    path.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False), encoding="utf-8")
