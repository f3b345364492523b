"""The OpenAI-compatible upstream: forwarding requests, relaying responses, mapping failures.

One ``httpx`` connection pool, shared by the gated endpoints (chat completions, responses) and the
passthrough of the rest of ``/v1``. It keeps no state between callers: no
cookie jar (a cookie the upstream sets for one caller is never sent with
another's request; a caller's own ``Cookie`` header is forwarded as sent), and
no credentials of one caller for another. Redirects are not followed.

Request headers: the caller's, without hop-by-hop, ``host``, ``content-length``
and ``accept-encoding`` (bodies are decoded here). ``Authorization`` is the
caller's; without one, the configured key (``Bearer``), else the credentials
of the base URL (``Basic``). Query parameters of the base URL (``?api-version``,
``?api-key``) go with every request. Secrets of the base URL are masked in every
message and log.

Response headers are relayed (``retry-after``, ``x-ratelimit-*``, ``openai-*``...
included, on errors too), except hop-by-hop and framing headers, ``set-cookie``
and ``x-gatekeeper-*`` (the gate's own). Failures become OpenAI-style errors
and never hang:

* upstream 5xx or connection failure -> 502; a redirect (3xx) -> 502
  ``upstream_redirect``, naming the masked target to configure instead;
* no response headers, or a stream chunk gap, longer than the read timeout -> 504;
  so is a whole response (headers and body or stream) longer than the total
  deadline, however steadily it trickles;
* upstream 4xx -> its status, with its ``{"error": ...}`` body (or one made
  from its text): the caller's request or key is at fault;
* a failure after an SSE stream has started -> one ``data: {"error": ...}``
  event, then ``data: [DONE]``; any other body is aborted, so the caller sees
  an incomplete body, never a silently truncated one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import AsyncIterator, Callable, Mapping
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import httpx
from fastapi.responses import JSONResponse

from gatekeeper.server.config import mask_url, redact, url_secrets
from gatekeeper.server.schemas import error_body

log = logging.getLogger(__name__)

#: Headers that describe one connection, not the message (RFC 9110 7.6.1), never relayed either way.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                        "te", "trailer", "trailers", "transfer-encoding", "upgrade"})
#: Caller headers not forwarded: the client sets host, length and the encodings it can decode itself.
NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "accept-encoding"}
#: Upstream headers not relayed: the server sets its own framing, date and server; cookies stay upstream.
NOT_RELAYED = HOP_BY_HOP | {"content-length", "content-encoding", "date", "server", "set-cookie"}
#: Reserved for the gate's own headers: dropped from the upstream's.
GATE_HEADER_PREFIX = "x-gatekeeper-"
#: Most characters of a non-JSON upstream error body quoted in the error message.
ERROR_TEXT_CHARS = 500


class UpstreamError(Exception):
    """The upstream call failed; ``status``, ``body`` and ``headers`` are what the caller gets."""

    def __init__(self, status: int, body: dict, headers: Mapping[str, str] | None = None):
        self.status = status
        self.body = body
        self.headers = dict(headers or {})
        super().__init__(body["error"]["message"])

    def response(self, headers: Mapping[str, str] | None = None) -> JSONResponse:
        """The error response, with the upstream's relayed headers and then ``headers``."""
        return JSONResponse(self.body, status_code=self.status, headers={**self.headers, **(headers or {})})


@dataclass
class UpstreamResponse:
    """A successful (2xx) upstream response whose headers are in and whose body is not read yet."""

    status: int
    headers: dict[str, str]
    raw: httpx.Response = field(repr=False)
    #: When the whole body must be in (event loop time), or None.
    deadline: float | None = None

    @property
    def is_event_stream(self) -> bool:
        """Whether the body is Server-Sent Events."""
        return self.raw.headers.get("content-type", "").startswith("text/event-stream")

    async def read(self) -> bytes:
        """The whole (decoded) body, then close; raises :class:`UpstreamError` if reading fails."""
        try:
            async with asyncio.timeout_at(self.deadline):
                return await self.raw.aread()
        except (httpx.HTTPError, TimeoutError) as error:
            raise _transport_error(error, "reading the upstream response") from None
        finally:
            await self.raw.aclose()


class Upstream:
    """An OpenAI-compatible endpoint at ``base_url`` (no retries, no redirects, bounded timeouts).

    ``transport`` carries the requests instead of the network when given (an
    ``httpx`` async transport: tests serve an in-memory fake upstream there);
    the connection limits and the connect and read timeouts are the network
    transport's, so they do not apply to it (the deadline does).
    """

    def __init__(self, base_url: str, api_key: str | None, timeout_s: float, connect_timeout_s: float,
                 keepalive_expiry_s: float, deadline_s: float | None = None,
                 transport: httpx.AsyncBaseTransport | None = None):
        parts = urlsplit(base_url)
        self.masked_url = mask_url(base_url)
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self._secrets = url_secrets(base_url) + ([api_key] if api_key else [])
        self._fallback_authorization = (f"Bearer {api_key}" if api_key
                                        else _basic_authorization(parts.username, parts.password))
        self._params = parse_qsl(parts.query, keep_blank_values=True)
        self._base_url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query="", fragment=""))
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(keepalive_expiry=keepalive_expiry_s),
            follow_redirects=False, cookies=_no_cookie_jar(), transport=transport)

    async def post_json(self, path: str, body: dict, caller_headers: Mapping[str, str]) -> UpstreamResponse:
        """POST ``body`` (the caller's JSON) to ``path`` (``chat/completions``, ``responses``); returns once the
        response headers are in.

        Raises :class:`UpstreamError` for every failure.
        """
        content = json.dumps(body, ensure_ascii=False, allow_nan=False).encode()
        headers = {**caller_headers, "content-type": "application/json"}
        return await self.send("POST", path, headers, content)

    async def send(self, method: str, path: str, caller_headers: Mapping[str, str], content: bytes = b"",
                   params: list[tuple[str, str]] | None = None) -> UpstreamResponse:
        """Send a request to ``path`` with the caller's headers.

        ``path`` is percent-encoded, relative to the base URL, and free of dot
        segments (``..``), which would leave it. Returns once the response
        headers are in; raises :class:`UpstreamError` for every failure, a
        non-2xx status included. The whole response, body included, must be
        in within ``deadline_s`` of now.
        """
        request = self._client.build_request(
            method, f"{self._base_url.rstrip('/')}/{path.lstrip('/')}", params=[*self._params, *(params or [])],
            headers=self._request_headers(caller_headers), content=content or None)
        deadline = None if self.deadline_s is None else asyncio.get_running_loop().time() + self.deadline_s
        try:
            async with asyncio.timeout_at(deadline):
                raw = await self._client.send(request, stream=True)
                if not 200 <= raw.status_code < 300:
                    raise self._failed(await self._status_error(raw))
        except httpx.TimeoutException:
            raise self._failed(_timeout_error(f"the upstream sent no response within {self.timeout_s:g}s (setting "
                                              "upstream_timeout_s)")) from None
        except TimeoutError:
            raise self._failed(_timeout_error(f"the upstream's response did not arrive within {self.deadline_s:g}s "
                                              "(setting upstream_deadline_s)")) from None
        except httpx.HTTPError as error:
            raise self._failed(UpstreamError(502, error_body(
                f"could not reach the upstream at {self.masked_url}: "
                f"{redact(str(error) or type(error).__name__, self._secrets)}",
                "upstream_error", "upstream_unreachable"))) from None
        return UpstreamResponse(raw.status_code, relayed_headers(raw.headers), raw, deadline)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    def _request_headers(self, caller_headers: Mapping[str, str]) -> dict[str, str]:
        headers = {name.lower(): value for name, value in caller_headers.items()
                   if name.lower() not in NOT_FORWARDED}
        if self._fallback_authorization and "authorization" not in headers:
            headers["authorization"] = self._fallback_authorization
        return headers

    async def _status_error(self, raw: httpx.Response) -> UpstreamError:
        """The error of a non-2xx upstream response (read, then closed)."""
        status = raw.status_code
        headers = relayed_headers(raw.headers)  # retry-after, x-ratelimit-*... (429, 503)
        try:
            text = (await raw.aread()).decode(errors="replace")
        except httpx.HTTPError:
            text = ""
        finally:
            await raw.aclose()
        if 300 <= status < 400:  # no headers relayed: its location would send the caller around the gate
            target = mask_url(str(raw.url.join(raw.headers.get("location", ""))))
            return UpstreamError(502, error_body(
                f"the upstream redirected (HTTP {status}) to {target}, and redirects are not followed; set "
                "upstream_base_url to the URL it redirects to", "upstream_error", "upstream_redirect",
                upstream_status=status))
        upstream_error = _error_object(text)
        message = redact(upstream_error["message"] if upstream_error else text[:ERROR_TEXT_CHARS], self._secrets)
        if status < 500 and upstream_error is not None:
            return UpstreamError(status, {"error": {**upstream_error, "message": message}}, headers)
        if status < 500:
            return UpstreamError(status, error_body(f"the upstream rejected the request (HTTP {status}): {message}",
                                                    "invalid_request_error", str(status)), headers)
        return UpstreamError(502, error_body(f"the upstream failed with HTTP {status}: {message}", "upstream_error",
                                             "upstream_status", upstream_status=status), headers)

    @staticmethod
    def _failed(failure: UpstreamError) -> UpstreamError:
        """Log the failure (its status and code: never a message, which may quote the upstream), return it."""
        log.log(logging.WARNING if failure.status >= 500 else logging.INFO, "upstream_failed",
                extra={"status": failure.status, "code": failure.body["error"].get("code")})
        return failure


def relayed_headers(headers: httpx.Headers) -> dict[str, str]:
    """The upstream response headers the caller gets (see the module docstring)."""
    return {name: value for name, value in headers.items()
            if name not in NOT_RELAYED and not name.startswith(GATE_HEADER_PREFIX)}


async def relay(response: UpstreamResponse, on_error: Callable[[UpstreamError], None]) -> AsyncIterator[bytes]:
    """Yield the upstream body's bytes as they arrive, decoded (``content-encoding`` is not relayed).

    A failure midway ends an SSE stream with an error event and ``data: [DONE]``
    (the status line is already sent); any other body is aborted by raising
    the :class:`UpstreamError`, so the caller sees an incomplete body.
    """
    chunks = response.raw.aiter_bytes()
    try:
        while True:
            try:
                async with asyncio.timeout_at(response.deadline):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            yield chunk
    except (httpx.HTTPError, TimeoutError) as error:
        failure = _transport_error(error, "relaying the upstream response")
        on_error(failure)
        log.warning("upstream_stream_failed", extra={"status": failure.status, "error": type(error).__name__})
        if not response.is_event_stream:
            raise failure from None
        # A blank line first ends an event the upstream left half-sent, so the error event stands on its own.
        yield f"\n\ndata: {json.dumps(failure.body, ensure_ascii=False)}\n\ndata: [DONE]\n\n".encode()
    finally:
        await response.raw.aclose()


def _no_cookie_jar() -> CookieJar:
    """A cookie jar that never stores a cookie (it accepts none from any domain): the client serves every caller."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


def _basic_authorization(username: str | None, password: str | None) -> str | None:
    """``Basic`` credentials from a URL's ``user:password@`` part, or None without one."""
    if username is None and password is None:
        return None
    token = base64.b64encode(f"{unquote(username or '')}:{unquote(password or '')}".encode()).decode()
    return f"Basic {token}"


def _error_object(text: str) -> dict | None:
    """The ``error`` object of an OpenAI-style error body, or None if ``text`` is not one."""
    try:
        payload = json.loads(text)
    except ValueError:
        return None
    error = payload.get("error") if isinstance(payload, dict) else None
    return error if isinstance(error, dict) and isinstance(error.get("message"), str) else None


def _transport_error(error: httpx.HTTPError | TimeoutError, doing: str) -> UpstreamError:
    """504 for a timeout (a chunk gap past the read timeout, or the response's deadline passed), else 502."""
    if isinstance(error, TimeoutError):
        return _timeout_error(f"the upstream's response passed its deadline (setting upstream_deadline_s) while "
                              f"{doing}")
    if isinstance(error, httpx.TimeoutException):
        return _timeout_error(f"the upstream timed out while {doing}")
    return UpstreamError(502, error_body(f"the upstream failed while {doing}: {type(error).__name__}",
                                         "upstream_error", "upstream_failed"))


def _timeout_error(message: str) -> UpstreamError:
    """A 504 ``upstream_timeout``."""
    return UpstreamError(504, error_body(message, "upstream_timeout", "upstream_timeout"))
