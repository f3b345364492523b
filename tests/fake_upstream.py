"""A recording fake of an OpenAI-compatible LLM upstream: one behaviour table, served two ways.

:meth:`FakeUpstream.answer` records every request and decides the reply;
:func:`in_memory` serves it through an ``httpx`` transport (no socket: the
sidecar's ``create_app(..., upstream_transport=...)``), :func:`on_loopback`
over real HTTP on 127.0.0.1 (stdlib ``http.server``). Either way the replies
are the same bytes, streams arrive piece by piece, and the fake behaves
according to the request's ``model``:

* ``mock-500``: HTTP 500 with an error body;
* ``mock-401``: HTTP 401 with an OpenAI-style error body;
* ``mock-slow``: answers only after :data:`SLOW_SECONDS`;
* ``mock-stall``: starts a stream, then stalls for :data:`SLOW_SECONDS` after each event;
* ``mock-gzip``: the stream, gzip-compressed (``content-encoding: gzip``);
* ``mock-429`` / ``mock-503``: that status with ``retry-after`` and ``x-ratelimit-*`` headers;
* ``mock-redirect``: a 307 to :data:`REDIRECT_TARGET`;
* ``mock-cookie``: the completion, setting the cookie :data:`UPSTREAM_COOKIE`;
* ``mock-headers``: the completion with :data:`UPSTREAM_HEADERS` (rate limits, and forged gate headers);
* anything else: a ``chat.completion`` (or, with ``stream: true``, the
  :data:`STREAM_PIECES` as three SSE chunks 50 ms apart, then ``[DONE]``)
  echoing the last user message.

``POST /v1/responses`` echoes the last user input as ``echo: <text>``: a
``response`` object, or (``stream: true``) ``response.created``, one
``response.output_text.delta`` and ``response.completed`` events.

Beyond chat completions it answers ``GET /v1/models`` (:data:`UPSTREAM_MODELS`),
``POST /v1/embeddings`` (vectors of :data:`EMBEDDING_DIM` made from each
input's length), ``DELETE /v1/files/{id}`` and ``GET /v1/files/file-broken/content``
(a body cut short: the connection drops before the promised length); any other
path is a 404. Timeouts are the network's: a sidecar reading from the
in-memory fake has no read timeout, so timeout tests serve it on loopback.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import AsyncIterator, Iterator, Mapping

import httpx

SLOW_SECONDS = 3.0
#: The pause after each chunk of a stream.
STREAM_GAP_S = 0.05
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
#: The base URL of the in-memory fake (no such host: nothing resolves it, its transport answers).
MEMORY_BASE_URL = "http://fake-upstream.invalid/v1"


@dataclass
class RecordedRequest:
    """One request the fake upstream received: its path (with the query), headers (lower-case names), JSON body
    (``{}`` for a GET or DELETE)."""

    path: str
    headers: dict[str, str]
    body: dict


@dataclass
class Reply:
    """What the fake sends: the status line and headers, then ``pieces`` of body.

    A ``stream`` is sent chunked, piece by piece, ``gap_s`` after each; any
    other body carries its ``content-length``. ``cut_short``: the connection
    drops after the pieces, before the length the headers promised.
    """

    status: int
    headers: dict[str, str]
    pieces: list[bytes]
    stream: bool = False
    gap_s: float = 0.0
    #: How long the fake waits before it answers at all.
    delay_s: float = 0.0
    cut_short: bool = False


@dataclass
class FakeUpstream:
    """The fake's behaviour and its record of requests, whichever way it is served.

    ``transport`` is the in-memory transport to give the sidecar (:func:`in_memory`);
    None when the fake is served at ``base_url`` over the network (:func:`on_loopback`).
    """

    base_url: str
    transport: httpx.AsyncBaseTransport | None = None
    requests: list[RecordedRequest] = field(default_factory=list)

    def answer(self, method: str, target: str, headers: Mapping[str, str], content: bytes) -> Reply:
        """Record the request for ``target`` (path and query), and the reply to it."""
        body = json.loads(content or b"{}") if method == "POST" else {}
        self.requests.append(RecordedRequest(target, {name.lower(): value for name, value in headers.items()}, body))
        path = target.split("?")[0]
        if method == "POST":
            return _embeddings(body) if path == "/v1/embeddings" else (
                _responses(body) if path == "/v1/responses" else _chat(body))
        if method == "GET" and path == "/v1/models":
            return _json(200, {"object": "list", "data": [
                {"id": name, "object": "model", "created": 1, "owned_by": "fake"} for name in UPSTREAM_MODELS]})
        if method == "GET" and path == "/v1/files/file-broken/content":
            return Reply(200, {"content-type": "application/octet-stream", "content-length": "1000"}, [b"partial"],
                         cut_short=True)
        if method == "DELETE" and path.startswith("/v1/files/"):
            return _json(200, {"id": path.rsplit("/", 1)[-1], "object": "file", "deleted": True})
        return _json(404, {"error": {"message": f"no route {target}", "type": "invalid_request_error",
                                     "code": "not_found"}})


def _chat(body: dict) -> Reply:
    """A chat completion (or its stream) echoing the last user message, or the failure its ``model`` asks for."""
    model = body.get("model")
    if model in ("mock-429", "mock-503"):
        return _json(int(model[-3:]), {"error": {"message": "slow down", "type": "rate_limit_error"}},
                     RATE_LIMIT_HEADERS)
    if model == "mock-redirect":
        return _json(307, {}, {"location": REDIRECT_TARGET})
    if model == "mock-500":
        return _json(500, {"error": {"message": "upstream exploded", "type": "server_error"}})
    if model == "mock-401":
        return _json(401, {"error": {"message": "bad key", "type": "invalid_request_error", "code": "invalid_api_key"}})
    if body.get("stream"):
        reply = _chat_stream(model, stall=model == "mock-stall", gzipped=model == "mock-gzip")
    else:
        last = next((m.get("content") for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
        reply = _json(200, {"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": model,
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": f"echo: {last}"}}],
                            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}},
                      {"mock-cookie": {"set-cookie": f"{UPSTREAM_COOKIE}; Path=/"},
                       "mock-headers": UPSTREAM_HEADERS}.get(model))
    reply.delay_s = SLOW_SECONDS if model == "mock-slow" else 0.0
    return reply


def _chat_stream(model: str, stall: bool, gzipped: bool) -> Reply:
    """The :data:`STREAM_PIECES` as ``chat.completion.chunk`` events, then ``[DONE]``; gzipped, each event flushed
    on its own so it still streams."""
    events = [{"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": model,
               "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
              for piece in STREAM_PIECES]
    events[-1]["choices"][0]["finish_reason"] = "stop"
    pieces = [f"data: {json.dumps(event)}\n\n".encode() for event in events] + [b"data: [DONE]\n\n"]
    headers = {"content-type": "text/event-stream"}
    if gzipped:
        compressor = zlib.compressobj(wbits=31)  # gzip framing
        pieces = [compressor.compress(piece) + compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
                  for piece, last in zip(pieces, [False] * (len(pieces) - 1) + [True])]
        headers["content-encoding"] = "gzip"
    return Reply(200, headers, pieces, stream=True, gap_s=SLOW_SECONDS if stall else STREAM_GAP_S)


def _responses(body: dict) -> Reply:
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
        return _json(200, response)
    events = [("response.created", {"response": {**response, "status": "in_progress", "output": []}}),
              ("response.output_text.delta", {"item_id": "msg_up", "output_index": 0, "content_index": 0,
                                              "delta": text}),
              ("response.completed", {"response": response})]
    return Reply(200, {"content-type": "text/event-stream"}, [
        f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': number, **data})}\n\n".encode()
        for number, (kind, data) in enumerate(events)], stream=True)


def _embeddings(body: dict) -> Reply:
    """Vectors of :data:`EMBEDDING_DIM`, each made from its input's length."""
    inputs = body.get("input")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    return _json(200, {"object": "list", "model": body.get("model"),
                       "data": [{"object": "embedding", "index": i, "embedding": [float(len(text))] * EMBEDDING_DIM}
                                for i, text in enumerate(inputs)],
                       "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}})


def _json(status: int, payload: dict, headers: Mapping[str, str] | None = None) -> Reply:
    """A JSON reply, marked ``x-upstream: fake``, with ``headers``."""
    data = json.dumps(payload).encode()
    return Reply(status, {"content-type": "application/json", "content-length": str(len(data)),
                          "x-upstream": "fake", **(headers or {})}, [data])


# -- served in memory ------------------------------------------------------------------------------------------------

def in_memory() -> FakeUpstream:
    """The fake, served by an ``httpx`` transport (its :attr:`FakeUpstream.transport`) at :data:`MEMORY_BASE_URL`."""
    upstream = FakeUpstream(MEMORY_BASE_URL)

    async def handle(request: httpx.Request) -> httpx.Response:
        reply = upstream.answer(request.method, request.url.raw_path.decode(), request.headers, await request.aread())
        await asyncio.sleep(reply.delay_s)
        return httpx.Response(reply.status, headers=reply.headers, content=_body(reply))

    upstream.transport = httpx.MockTransport(handle)
    return upstream


async def _body(reply: Reply) -> AsyncIterator[bytes]:
    """The reply's body as it arrives: piece by piece, ``gap_s`` after each; a drop when it is cut short."""
    for piece in reply.pieces:
        yield piece
        await asyncio.sleep(reply.gap_s)
    if reply.cut_short:
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


# -- served over real HTTP on loopback -------------------------------------------------------------------------------

@contextmanager
def on_loopback() -> Iterator[FakeUpstream]:
    """The fake, served on 127.0.0.1 (a free port) by a stdlib HTTP server until the block ends."""
    server = _QuietServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    upstream = FakeUpstream(f"http://127.0.0.1:{server.server_port}/v1")
    server.RequestHandlerClass = _handler(upstream)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield upstream
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _handler(upstream: FakeUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            """Quiet."""

        def serve(self) -> None:
            """Write :meth:`FakeUpstream.answer`'s reply: chunked and flushed piece by piece if it streams."""
            content = self.rfile.read(int(self.headers.get("content-length", 0)))
            reply = upstream.answer(self.command, self.path, self.headers, content)
            time.sleep(reply.delay_s)
            self.send_response(reply.status)
            for name, value in {**reply.headers, **({"transfer-encoding": "chunked"} if reply.stream else {})}.items():
                self.send_header(name, value)
            self.end_headers()
            for piece in reply.pieces:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if reply.stream else piece)
                self.wfile.flush()
                time.sleep(reply.gap_s)
            if reply.stream:
                self.wfile.write(b"0\r\n\r\n")
            if reply.cut_short:
                self.close_connection = True

        do_GET = do_POST = do_DELETE = serve

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """The sidecar hanging up on a slow answer (timeout tests) is expected: no traceback."""
