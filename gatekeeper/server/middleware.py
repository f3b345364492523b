"""ASGI middleware: the last-resort error guard, request counting, a sampled access log, bounded body reading,
and strict JSON bodies."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
import time
from typing import Callable, Iterator

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gatekeeper.server.config import RETRY_AFTER_S
from gatekeeper.server.metrics import Metrics
from gatekeeper.server.schemas import error_body

log = logging.getLogger(__name__)
access_log = logging.getLogger("gatekeeper.server.access")

#: Endpoints counted in ``gatekeeper_requests_total`` and the in-flight gauge (a bounded label set), whose
#: JSON bodies are checked by :class:`StrictJsonMiddleware`.
API_ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/gate")
#: A UTF-16 surrogate code point: in a Python string only from an unpaired ``\uD800``-``\uDFFF`` JSON escape.
_SURROGATE = re.compile("[\ud800-\udfff]")
#: What a body must contain for :func:`json_problem` to find anything: ``NaN``, ``Infinity``, a surrogate escape,
#: a UTF-8-encoded surrogate (Python's parser lets those through too), or a NUL byte (UTF-16 or UTF-32 JSON, which
#: the parser also reads). Most bodies have none of them, so they are not parsed twice.
_SUSPECT = re.compile(rb"NaN|Infinity|\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]|\x00")
#: The status a request is counted with when its client disconnected before the response (nginx's convention).
CLIENT_CLOSED = 499
#: Bodies longer than this are checked in a worker thread (a 1 MB body takes a few milliseconds).
BIG_BODY_BYTES = 65_536


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


class AccessLogMiddleware:
    """Logs a random ``sample`` share of HTTP requests as structured lines: the ``access`` event of the
    ``gatekeeper.server.access`` logger, with method, path, status, duration and request id.

    One line per request costs the event loop a few percent of a core at a
    thousand requests a second, so the sidecar logs none by default
    (``access_log_sample`` 0: this middleware is not even installed); the
    request counts and latencies are in the metrics.
    """

    def __init__(self, app: ASGIApp, sample: float, chance: Callable[[], float] = random.random):
        self.app = app
        self.sample = sample
        self.chance = chance

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.chance() >= self.sample:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            access_log.info("access", extra={
                "method": scope["method"], "path": scope["path"], "status": status,
                "ms": round((time.perf_counter() - started) * 1e3, 2),
                "request_id": scope.get("state", {}).get("request_id")})


class _Refused(Exception):
    """A request refused while its body was read: what to answer (the connection is closed after it)."""

    def __init__(self, status: int, body: dict, headers: dict[str, str] | None = None):
        super().__init__(body["error"]["message"])
        self.status = status
        self.body = body
        self.headers = headers or {}


class BodyLimitMiddleware:
    """Reads each request's whole body, within bounds, before the app runs; then runs it while the client stays.

    The bounds, each answered OpenAI-style, then the connection is closed:

    * a body over ``max_bytes``, declared or streamed: 413 ``request_too_large``;
    * a body not complete ``timeout_s`` after its headers: 408 ``request_timeout``
      (a slow or stalled client holds no connection and no buffer for long);
    * all requests' bodies together over ``budget_bytes`` (a body is held until
      its request ends): 503 ``overloaded`` with ``Retry-After``.

    With the whole body read, the only message left to receive is the client's
    disconnect. If it comes before the response has started, the app is
    cancelled, so nothing keeps working for a caller that is gone (an upstream
    call, a decision waiting for the encoder), and the request is counted with
    status 499 (the client closed it).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float, budget_bytes: int):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.budget_bytes = budget_bytes
        #: Bytes of request bodies held now, all requests together.
        self.held = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = reserved = 0

        def take(size: int) -> None:
            nonlocal received, reserved
            received += size
            if received > self.max_bytes:
                raise self._too_large()
            if self.held + size > self.budget_bytes:
                raise self._overloaded()
            self.held += size
            reserved += size

        try:
            try:
                messages = await self._read(scope, receive, take)
            except _Refused as refusal:
                await _send_json(send, refusal.status, refusal.body, {**refusal.headers, "connection": "close"})
                return
            await self._run(scope, messages, receive, send)
        finally:
            self.held -= reserved

    async def _read(self, scope: Scope, receive: Receive, take: Callable[[int], None]) -> list[Message]:
        """The body's messages; raises :class:`_Refused` past a bound."""
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise self._too_large()
        if declared.isdigit() and self.held + int(declared) > self.budget_bytes:
            raise self._overloaded()
        try:
            async with asyncio.timeout(self.timeout_s):
                return await _read_body(receive, take)
        except TimeoutError:
            log.info("body_timeout", extra={"path": scope["path"], "timeout_s": self.timeout_s})
            raise _Refused(408, error_body(
                f"the request body did not arrive within {self.timeout_s:g}s of its headers (setting "
                "body_timeout_s); send the whole body at once", "invalid_request_error", "request_timeout")) from None

    async def _run(self, scope: Scope, messages: list[Message], receive: Receive, send: Send) -> None:
        """Run the app; cancel it if the client disconnects before the response starts."""
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        app = asyncio.ensure_future(self.app(scope, _replay(messages, receive), tracking_send))
        left = False

        def client_left(message: asyncio.Future) -> None:
            nonlocal left
            if not message.cancelled() and not started and not app.done():
                left = True
                app.cancel()

        gone = asyncio.ensure_future(receive())  # the body is read: only a disconnect (or the response's end) is left
        gone.add_done_callback(client_left)  # a callback, not asyncio.wait: the same, in fewer steps of the loop
        try:
            await app  # done, or its response is under way (a stream notices a disconnect itself)
        except asyncio.CancelledError:
            if not left or asyncio.current_task().cancelling():  # the server is cutting this request, the app with it
                raise
        finally:
            gone.remove_done_callback(client_left)
            gone.cancel()
        if left and not started:  # the client left first
            log.info("client_disconnected", extra={"path": scope["path"]})
            await send({"type": "http.response.start", "status": CLIENT_CLOSED, "headers": []})

    def _too_large(self) -> _Refused:
        return _Refused(413, error_body(
            f"the request body is larger than the limit of {self.max_bytes} bytes (setting max_body_bytes)",
            "invalid_request_error", "request_too_large"))

    def _overloaded(self) -> _Refused:
        log.warning("request_shed", extra={"reason": "body_budget", "held_bytes": self.held})
        return _Refused(503, error_body(
            f"the sidecar holds {self.held} bytes of request bodies, near its limit of {self.budget_bytes} "
            "(setting max_buffered_body_bytes); retry after a moment", "service_unavailable", "overloaded"),
            {"retry-after": str(RETRY_AFTER_S)})


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
        body = b"".join(message.get("body", b"") for message in messages)
        # Parsing a big body takes milliseconds: in a worker thread, so other requests are not held up meanwhile.
        problem = await asyncio.to_thread(json_problem, body) if len(body) > BIG_BODY_BYTES else json_problem(body)
        if problem is not None:
            await _send_json(send, 400, problem)
            return
        await self.app(scope, _replay(messages, receive), send)


def json_problem(body: bytes) -> dict | None:
    """The 400 error body for the first non-finite number or unpaired surrogate in ``body``, or None."""
    if not _SUSPECT.search(body):
        return None
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


async def _read_body(receive: Receive, take: Callable[[int], None] | None = None) -> list[Message]:
    """The request's messages up to the end of its body; ``take`` is called with each chunk's size, and may raise."""
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages
        if take is not None:
            take(len(message.get("body", b"")))
        if not message.get("more_body", False):
            return messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives ``messages`` again, then what ``receive`` gives."""
    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return replay


async def _send_json(send: Send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    """A complete JSON response (ASCII-escaped, so any text in ``body`` encodes), with extra ``headers``."""
    data = json.dumps(body).encode()
    extra = [(name.encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": data})
