"""What the gated endpoints (``/v1/chat/completions``, ``/v1/responses``) share over HTTP: the
``x-gatekeeper-*`` headers of a decision, and forwarding an accepted request to the upstream."""

from __future__ import annotations

import time
from typing import Mapping
from urllib.parse import quote

from fastapi.responses import JSONResponse, Response, StreamingResponse

from gatekeeper.server.config import UPSTREAM_HINT
from gatekeeper.server.metrics import Metrics
from gatekeeper.server.schemas import error_body
from gatekeeper.server.service import ChatOutcome
from gatekeeper.server.upstream import Upstream, UpstreamError, relay


def gate_headers(outcome: ChatOutcome) -> dict[str, str]:
    """The ``x-gatekeeper-*`` headers of a gated request's response.

    Header values are Latin-1 only, so the intent name is percent-encoded as
    UTF-8 (RFC 3986; ASCII names such as ``bill_inquiry`` are unchanged):
    ``urllib.parse.unquote`` gives back ``退货申请`` from ``%E9%80%80...``.
    """
    decision = outcome.decision
    intent = decision.intent if decision is not None and decision.intent else "none"
    action = decision.action if decision is not None else ("forward" if not outcome.blocked else "reject")
    headers = {"x-gatekeeper-decision": outcome.action, "x-gatekeeper-action": action,
               "x-gatekeeper-intent": quote(intent, safe="")}
    if decision is not None:
        headers["x-gatekeeper-score"] = f"{decision.score:.4f}"
    if outcome.followup:
        headers["x-gatekeeper-followup"] = "true"
    return headers


async def forward(upstream: Upstream | None, metrics: Metrics, path: str, body: dict,
                  caller_headers: Mapping[str, str], stream: bool, headers: dict[str, str]) -> Response:
    """Send an accepted request's JSON ``body`` to the upstream's ``path`` as it came; the upstream's response
    (relayed chunk by chunk when ``stream``), or its error, with the gate's ``headers`` added."""
    if upstream is None:
        return JSONResponse(error_body(f"no upstream is configured, so accepted requests to /v1/{path} cannot be "
                                       f"forwarded; {UPSTREAM_HINT} (/v1/gate works without one)",
                                       "service_unavailable", "no_upstream"), 503, headers)

    def count(failure: UpstreamError) -> None:
        metrics.upstream_errors.labels(status=str(failure.status)).inc()

    started = time.perf_counter()
    try:
        response = await upstream.post_json(path, body, caller_headers)
        metrics.upstream_latency.observe(time.perf_counter() - started)
        content = None if stream else await response.read()
    except UpstreamError as failure:
        count(failure)
        return failure.response(headers)
    if content is None:
        return StreamingResponse(relay(response, count), status_code=response.status,
                                 headers={**response.headers, **headers})
    return Response(content, status_code=response.status, headers={**response.headers, **headers})
