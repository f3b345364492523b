"""Request ids: the caller's ``x-request-id`` (or a new one) on every response and decision-log row.

:class:`RequestIdMiddleware` takes the request's ``x-request-id`` when it is
1 to 128 visible ASCII characters, else makes a new one (32 hex digits). It
exposes the id as ``request.state.request_id`` and through
:func:`current_request_id` (a context variable, for code that has no request
object, such as the decision log), and sets it as the ``x-request-id`` header
of the response, whatever produced it (an error, a canned reply, the
upstream). An ``x-request-id`` the upstream sent back is kept as
``x-upstream-request-id``, for the LLM provider's support.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
UPSTREAM_HEADER = b"x-upstream-request-id"
_VALID = re.compile(rb"[\x21-\x7e]{1,128}")
_current: ContextVar[str | None] = ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being handled, or None outside a request."""
    return _current.get()


class RequestIdMiddleware:
    """Gives every HTTP request an id and echoes it in the response's ``x-request-id`` header."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _caller_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": _with_id(message.get("headers", []), request_id.encode())}
            await send(message)

        token = _current.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _current.reset(token)


def _caller_id(scope: Scope) -> str | None:
    """The request's own ``x-request-id`` if it is usable (visible ASCII, at most 128 characters)."""
    for name, value in scope.get("headers", []):
        if name.lower() == HEADER:
            return value.decode("ascii") if _VALID.fullmatch(value) else None
    return None


def _with_id(headers: list[tuple[bytes, bytes]], request_id: bytes) -> list[tuple[bytes, bytes]]:
    """``headers`` with ours as ``x-request-id``; another one (the upstream's) moves to ``x-upstream-request-id``."""
    kept = [(UPSTREAM_HEADER if name.lower() == HEADER else name, value) for name, value in headers
            if not (name.lower() == HEADER and value == request_id)]
    return [*kept, (HEADER, request_id)]
