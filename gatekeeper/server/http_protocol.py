"""uvicorn's HTTP/1.1 protocol with a deadline for request headers.

uvicorn times out idle keep-alive connections only, and the first byte of a
new request stops that clock: a client that connects and sends nothing, or
sends headers byte by byte, or half of them, held its connection and its
buffers for as long as it liked. Here the request line and headers must be
complete ``header_timeout_s`` after the connection opened, or after the first
byte of the next request on a kept-alive connection; otherwise the
connection is closed. (Bodies have their own deadline, in
:class:`gatekeeper.server.middleware.BodyLimitMiddleware`.)
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


class HeaderTimeoutProtocol(H11Protocol):
    """:class:`H11Protocol`, closing a connection whose request headers are not complete in ``header_timeout_s``."""

    def __init__(self, *args: Any, header_timeout_s: float, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self._header_clock: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock: the first request's headers are due."""
        super().connection_made(transport)
        self._start_clock()

    def data_received(self, data: bytes) -> None:
        """Start the clock on the first byte of a request; stop it once its headers are in."""
        cycle = self.cycle
        if self._between_requests():
            self._start_clock()
        super().data_received(data)
        if self.cycle is not cycle:  # the headers are in: a new request started
            self._stop_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clock."""
        self._stop_clock()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _start_clock(self) -> None:
        if self._header_clock is None:
            self._header_clock = self.loop.call_later(self.header_timeout_s, self._headers_overdue)

    def _stop_clock(self) -> None:
        if self._header_clock is not None:
            self._header_clock.cancel()
            self._header_clock = None

    def _headers_overdue(self) -> None:
        self._header_clock = None
        if self._between_requests() and not self.transport.is_closing():
            log.info("header_timeout", extra={"client": "%s:%d" % self.client if self.client else None,
                                              "timeout_s": self.header_timeout_s})
            self.transport.close()
