"""Forwarding chat completions to the OpenAI-compatible upstream, and mapping its failures.

The request body goes upstream as the caller sent it (parsed JSON, re-encoded),
through the official ``openai`` AsyncOpenAI client's raw-response path, so
unknown parameters (tools, provider extensions) pass untouched. The response
is relayed raw: non-streaming bodies as they are, SSE streams chunk by chunk
as they arrive.

Failures become OpenAI-style error JSON and never hang:

* upstream 5xx or connection failure -> 502;
* no response headers, or a stream chunk gap, longer than the read timeout -> 504;
* upstream 4xx -> passed through (the caller's request or key is at fault);
* a failure after a stream has started -> one ``data: {"error": ...}`` event,
  then ``data: [DONE]``, since the status line is already sent.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import httpx
import openai

from gatekeeper.server.config import mask_url
from gatekeeper.server.schemas import error_body

log = logging.getLogger(__name__)

#: Upstream response headers relayed to the caller (the server sets its own framing, date and server).
RELAYED_HEADER_PREFIXES = ("content-type", "x-", "openai-")


class UpstreamError(Exception):
    """The upstream call failed; ``status`` and ``body`` are what the caller gets."""

    def __init__(self, status: int, body: dict):
        self.status = status
        self.body = body
        super().__init__(body["error"]["message"])


@dataclass
class UpstreamResponse:
    """An upstream response whose headers are in and whose body is not read yet."""

    status: int
    headers: dict[str, str]
    raw: object  # the client's response object: aiter_raw(), aread(), aclose()

    async def read(self) -> bytes:
        """The whole body, then close; raises :class:`UpstreamError` if reading fails."""
        try:
            return await self.raw.aread()
        except Exception as error:  # any transport failure of the underlying HTTP client
            raise _transport_error(error, "reading the upstream response") from None
        finally:
            await self.raw.aclose()


class Upstream:
    """An OpenAI-compatible endpoint reached with the ``openai`` client (no retries, bounded timeouts)."""

    def __init__(self, base_url: str, api_key: str | None, timeout_s: float, connect_timeout_s: float):
        self.base_url = base_url
        self.timeout_s = timeout_s
        self._has_key = bool(api_key)
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or "unset", max_retries=0,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s))

    async def chat_completions(self, body: dict, authorization: str | None) -> UpstreamResponse:
        """POST ``body`` to ``/chat/completions``; returns once the response headers are in.

        ``authorization`` is the caller's header, sent instead of the configured
        key. Raises :class:`UpstreamError` for every failure.
        """
        headers: dict[str, str | openai.Omit] = {}
        if authorization:
            headers["Authorization"] = authorization
        elif not self._has_key:
            headers["Authorization"] = openai.Omit()
        try:
            raw = await self._client.post("/chat/completions", cast_to=httpx.Response, body=body, stream=True,
                                          options={"headers": headers})
        except openai.APITimeoutError:
            raise UpstreamError(504, error_body(
                f"the upstream sent no response within {self.timeout_s:g}s", "upstream_timeout",
                "upstream_timeout")) from None
        except openai.APIConnectionError as error:
            raise UpstreamError(502, error_body(
                f"could not reach the upstream at {mask_url(self.base_url)}: {error.__cause__ or error}",
                "upstream_error", "upstream_unreachable")) from None
        except openai.APIStatusError as error:
            raise _status_error(error) from None
        headers = {k: v for k, v in raw.headers.items() if k.lower().startswith(RELAYED_HEADER_PREFIXES)}
        return UpstreamResponse(raw.status_code, headers, raw)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.close()


async def relay(response: UpstreamResponse, on_error: Callable[[UpstreamError], None]) -> AsyncIterator[bytes]:
    """Yield the upstream body's bytes as they arrive; a mid-stream failure ends it with an SSE error event.

    The bytes are decoded (gzip, deflate...) because ``content-encoding`` is
    not relayed: the caller gets a plain stream whatever the upstream sent.
    """
    try:
        async for chunk in response.raw.aiter_bytes():
            yield chunk
    except Exception as error:  # any transport failure of the underlying HTTP client
        failure = _transport_error(error, "relaying the upstream stream")
        on_error(failure)
        log.warning("upstream_stream_failed", extra={"status": failure.status, "error": type(error).__name__})
        yield f"data: {json.dumps(failure.body)}\n\ndata: [DONE]\n\n".encode()
    finally:
        await response.raw.aclose()


def _status_error(error: openai.APIStatusError) -> UpstreamError:
    status = error.status_code
    if 400 <= status < 500:
        # The SDK has already unwrapped the upstream's {"error": {...}} into ``body``.
        if isinstance(error.body, dict) and "message" in error.body:
            return UpstreamError(status, {"error": error.body})
        return UpstreamError(status, error_body(f"the upstream rejected the request: {error.message}",
                                                "invalid_request_error", str(status)))
    return UpstreamError(502, error_body(f"the upstream failed with HTTP {status}: {error.message}",
                                         "upstream_error", "upstream_status", upstream_status=status))


def _transport_error(error: BaseException, doing: str) -> UpstreamError:
    """504 for a timeout of the HTTP client (httpx, or the fork the openai SDK uses), else 502."""
    timeout = isinstance(error, TimeoutError) or any(cls.__name__ == "TimeoutException" for cls in type(error).__mro__)
    if timeout:
        return UpstreamError(504, error_body(f"the upstream timed out while {doing}", "upstream_timeout",
                                             "upstream_timeout"))
    return UpstreamError(502, error_body(f"the upstream failed while {doing}: {type(error).__name__}",
                                         "upstream_error", "upstream_failed"))
