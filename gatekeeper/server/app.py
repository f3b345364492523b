"""The FastAPI app: ``create_app(settings, gate=None, registry=None, upstream_transport=None)`` builds the parts and
composes the routers.

Routers, one module each: ``POST /v1/chat/completions`` (:mod:`~gatekeeper.server.chat`) and ``POST /v1/responses``
(:mod:`~gatekeeper.server.responses`): gate, then forward or answer with the canned reply; ``POST /v1/gate``
(:mod:`~gatekeeper.server.gate_endpoint`): the decision only; ``/healthz``, ``/readyz``, ``/metrics``
(:mod:`~gatekeeper.server.probes`); ``POST /admin/reload`` and SIGHUP (:mod:`~gatekeeper.server.admin`); every
other ``/v1`` path relayed to the upstream (:mod:`~gatekeeper.server.passthrough`). Every error is OpenAI-style JSON
(:mod:`~gatekeeper.server.error_handlers`).
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from gatekeeper.gate import Gate
from gatekeeper.server.admin import admin_router, keep, watch_sighup
from gatekeeper.server.batching import MicroBatcher
from gatekeeper.server.chat import chat_router
from gatekeeper.server.config import ServerSettings
from gatekeeper.server.decision_log import DecisionLog
from gatekeeper.server.error_handlers import add_error_handlers
from gatekeeper.server.gate_endpoint import gate_router
from gatekeeper.server.metrics import Metrics
from gatekeeper.server.middleware import (
    AccessLogMiddleware,
    BodyLimitMiddleware,
    ErrorGuardMiddleware,
    RequestMetricsMiddleware,
    StrictJsonMiddleware,
)
from gatekeeper.server.passthrough import passthrough_router
from gatekeeper.server.probes import probes_router
from gatekeeper.server.request_id import RequestIdMiddleware
from gatekeeper.server.responses import responses_router
from gatekeeper.server.service import GateService
from gatekeeper.server.state import GateState
from gatekeeper.server.upstream import Upstream


def create_app(settings: ServerSettings, gate: Gate | None = None, registry: CollectorRegistry | None = None,
               upstream_transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """Build the sidecar app.

    ``gate`` is served as is when given (tests, embedding); otherwise the
    catalog at ``settings.catalog`` is loaded in the background after start-up,
    and ``/readyz`` says when it is ready. Metrics go to ``registry`` (a fresh
    one when None). Requests to the upstream at ``settings.upstream_base_url``
    go over ``upstream_transport`` when given (an ``httpx`` async transport,
    e.g. an in-memory fake upstream in tests), else over the network.
    """
    metrics = Metrics(registry or CollectorRegistry(), mode=settings.mode)
    state = GateState(settings.catalog, metrics, threads=settings.threads, gate=gate)
    batcher = MicroBatcher(settings.batch_max_size, settings.batch_wait_us / 1e6, on_batch=metrics.batch_size.observe,
                           max_chars=settings.batch_max_chars, max_queued=settings.max_queued_texts,
                           long_chars=settings.long_text_chars)
    decision_log = (DecisionLog(settings.decision_log, settings.decision_log_sample, settings.decision_log_text,
                                settings.decision_log_max_bytes, settings.decision_log_backups)
                    if settings.decision_log else None)
    service = GateService(settings, state, metrics, batcher, decision_log)
    upstream = (Upstream(settings.upstream_base_url,
                         settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None,
                         settings.upstream_timeout_s, settings.upstream_connect_timeout_s,
                         settings.upstream_keepalive_expiry_s, settings.upstream_deadline_s, upstream_transport)
                if settings.upstream_base_url else None)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        background: set[asyncio.Task] = set()
        if not state.ready:
            keep(background, asyncio.create_task(state.load()))
        stop_watching = watch_sighup(state, background)
        try:
            yield
        finally:
            stop_watching()
            await batcher.close()
            if upstream is not None:
                await upstream.close()
            if decision_log is not None:
                decision_log.close()

    app = FastAPI(title="gatekeeper sidecar", summary="Intent gate in front of an OpenAI-compatible LLM",
                  lifespan=lifespan, redirect_slashes=False)  # a redirect would be built from the client's Host
    app.state.metrics = metrics
    app.state.gate_state = state
    app.add_middleware(StrictJsonMiddleware)  # middleware added last runs first
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s,
                       budget_bytes=settings.max_buffered_body_bytes)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    app.add_middleware(ErrorGuardMiddleware)
    if settings.access_log_sample > 0:
        app.add_middleware(AccessLogMiddleware, sample=settings.access_log_sample)
    app.add_middleware(RequestIdMiddleware)  # outermost: every response carries x-request-id
    add_error_handlers(app)

    app.include_router(chat_router(service, upstream, metrics))
    app.include_router(responses_router(service, upstream, metrics))
    app.include_router(gate_router(service))
    app.include_router(probes_router(state, metrics))
    app.include_router(admin_router(settings, state))
    app.include_router(passthrough_router(upstream, metrics))  # last: it matches every other /v1 path
    return app
