"""ASGI middleware: the last-resort error guard, request counting, the body size limit, and strict JSON bodies."""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Iterator

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gatekeeper.server.metrics import Metrics
from gatekeeper.server.schemas import error_body

log = logging.getLogger(__name__)

#: Endpoints counted in ``gatekeeper_requests_total`` and the in-flight gauge (a bounded label set), whose
#: JSON bodies are checked by :class:`StrictJsonMiddleware`.
API_ENDPOINTS = ("/v1/chat/completions", "/v1/gate")
#: A UTF-16 surrogate code point: in a Python string only from an unpaired ``\uD800``-``\uDFFF`` JSON escape.
_SURROGATE = re.compile("[\ud800-\udfff]")


class ErrorGuardMiddleware:
    """The last resort for an exception no handler caught: logged with its traceback, never shown to the client.

    Before the response has started, the client gets a 500 OpenAI-style error.
    During an SSE stream it gets a final ``data: {"error": ...}`` event and
    ``data: [DONE]``, never a stream that just stops. Any other body is left
    incomplete, so the server closes the connection and the client sees it
    failed.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = event_stream = False

        async def tracking_send(message: Message) -> None:
            nonlocal started, event_stream
            if message["type"] == "http.response.start":
                started = True
                event_stream = dict(message.get("headers", [])).get(b"content-type", b"").startswith(
                    b"text/event-stream")
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:  # the last resort: every exception, whatever raised it
            log.error("unhandled_error", exc_info=True,
                      extra={"method": scope["method"], "path": scope["path"], "error": type(error).__name__})
            failure = error_body(f"the sidecar failed on this request ({type(error).__name__}); the details are in "
                                 "its log: report the time of the request", "server_error", "internal_error")
            if not started:
                await _send_json(send, 500, failure)
            elif event_stream:
                await send({"type": "http.response.body", "more_body": False,
                            "body": f"data: {json.dumps(failure)}\n\ndata: [DONE]\n\n".encode()})


class RequestMetricsMiddleware:
    """Counts API requests by endpoint and response status, and tracks how many are in flight."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in API_ENDPOINTS:
            await self.app(scope, receive, send)
            return
        status = "500"

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(endpoint=scope["path"], status=status).inc()


class BodyLimitMiddleware:
    """Answers 413 (OpenAI error format) to request bodies over ``max_bytes``, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        messages = None
        if declared is None or not declared.isdigit() or int(declared) <= self.max_bytes:
            messages = await _read_body(receive, self.max_bytes)
        if messages is None:
            await _send_json(send, 413, error_body(
                f"the request body is larger than the limit of {self.max_bytes} bytes (setting max_body_bytes)",
                "invalid_request_error", "request_too_large"))
            return
        await self.app(scope, _replay(messages, receive), send)


class StrictJsonMiddleware:
    """Answers 400 to a JSON body of an API endpoint that nothing downstream could take, naming the field.

    Python's JSON parser accepts two things that then fail far from the
    request: ``NaN`` and ``Infinity`` (not JSON; the upstream request cannot be
    encoded) and unpaired surrogate escapes such as ``"\\ud800"`` (not Unicode:
    neither the encoder nor the upstream request can encode them as UTF-8).
    Bodies that are not JSON at all are left to the endpoint's own 400.
    """

    def __init__(self, app: ASGIApp, paths: tuple[str, ...] = API_ENDPOINTS):
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        messages = await _read_body(receive)
        problem = json_problem(b"".join(message.get("body", b"") for message in messages))
        if problem is not None:
            await _send_json(send, 400, problem)
            return
        await self.app(scope, _replay(messages, receive), send)


def json_problem(body: bytes) -> dict | None:
    """The 400 error body for the first non-finite number or unpaired surrogate in ``body``, or None."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # not JSON (or absurdly nested): the endpoint's own error says so
        return None
    for path, value, is_key in _walk(document):
        param = ".".join(path) or None
        where = param or "the body"
        if isinstance(value, float) and not math.isfinite(value):
            return error_body(f"the request body is not valid JSON: {where} is {json.dumps(value)}, and JSON has "
                              "no NaN or Infinity; send a finite number", "invalid_request_error", "invalid_json",
                              param)
        match = _SURROGATE.search(value) if isinstance(value, str) else None
        if match is not None:
            what = f"a key in {where}" if is_key else where
            return error_body(f"{what} has an unpaired surrogate escape (\\u{ord(match.group()):04x} at character "
                              f"{match.start()}), which is not Unicode and cannot be encoded as UTF-8; send "
                              "well-formed text (a pair such as \\ud83d\\ude00 is fine)", "invalid_request_error",
                              "invalid_unicode", param)
    return None


def _walk(document: object) -> Iterator[tuple[list[str], object, bool]]:
    """Every key and scalar of a parsed JSON document in order, as (path, value, is_key); no recursion."""
    stack: list[tuple[list[str], object]] = [([], document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key in value:
                yield path, key, True
            stack.extend(reversed([([*path, key], item) for key, item in value.items()]))
        elif isinstance(value, list):
            stack.extend(reversed([([*path, str(index)], item) for index, item in enumerate(value)]))
        else:
            yield path, value, False


async def _read_body(receive: Receive, max_bytes: int | None = None) -> list[Message] | None:
    """The request's messages up to the end of its body; None as soon as the body exceeds ``max_bytes``."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages
        size += len(message.get("body", b""))
        if max_bytes is not None and size > max_bytes:
            return None
        if not message.get("more_body", False):
            return messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives ``messages`` again, then what ``receive`` gives."""
    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return replay


async def _send_json(send: Send, status: int, body: dict) -> None:
    """A complete JSON response (ASCII-escaped, so any text in ``body`` encodes)."""
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
