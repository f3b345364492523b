"""The rest of the OpenAI API: every other ``/v1/{path}`` is relayed to the upstream, ungated.

``/v1/models``, ``/v1/embeddings``, ``/v1/files``... reach the upstream as the
caller sent them (method, path, query, body, headers with the caller's
``Authorization``; see :mod:`gatekeeper.server.upstream` for the header rules),
and the response comes back streamed as it arrives. Include this router after
the gated routes: it matches every ``/v1`` path, so a route added after it is
never reached.
"""

from __future__ import annotations

from urllib.parse import unquote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from gatekeeper.server.config import UPSTREAM_HINT
from gatekeeper.server.metrics import Metrics
from gatekeeper.server.schemas import error_body
from gatekeeper.server.upstream import Upstream, UpstreamError, relay

PREFIX = "/v1/"
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def passthrough_router(upstream: Upstream | None, metrics: Metrics) -> APIRouter:
    """The router relaying ``/v1/{path}`` to ``upstream`` (503 for every path when there is none)."""
    router = APIRouter()

    def count(failure: UpstreamError) -> None:
        metrics.upstream_errors.labels(status=str(failure.status)).inc()

    @router.api_route(PREFIX + "{path:path}", methods=METHODS, include_in_schema=False)
    async def relay_to_upstream(request: Request) -> Response:
        """Relay the request to the upstream and stream its response back."""
        path = request.scope.get("raw_path", request.url.path.encode()).decode("utf-8", "replace")[len(PREFIX):]
        if upstream is None:
            return JSONResponse(error_body(f"no upstream is configured, so {PREFIX}{path} cannot be relayed; "
                                           f"{UPSTREAM_HINT}", "service_unavailable", "no_upstream"), 503)
        if any(unquote(segment) in (".", "..") for segment in path.split("/")):
            return JSONResponse(error_body(f"the path {PREFIX}{path} has a '.' or '..' segment, which is not "
                                           "relayed; send the path without it", "invalid_request_error",
                                           "invalid_path"), 400)
        try:
            response = await upstream.send(request.method, path, request.headers, await request.body(),
                                           request.query_params.multi_items())
        except UpstreamError as failure:
            count(failure)
            return failure.response()
        return StreamingResponse(relay(response, count), status_code=response.status, headers=response.headers)

    return router
