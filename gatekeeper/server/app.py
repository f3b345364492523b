"""The FastAPI app: ``create_app(settings, gate=None, registry=None, upstream_transport=None)``.

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/responses``
(:mod:`gatekeeper.server.responses`) (gate, then forward or answer with the
canned reply), ``POST /v1/gate`` (decision only), ``GET /healthz``,
``GET /readyz``, ``GET /metrics`` and ``POST /admin/reload`` (also on SIGHUP);
every other ``/v1`` path is relayed to the upstream (:mod:`gatekeeper.server.passthrough`).
Every error is OpenAI-style JSON: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
from contextlib import asynccontextmanager
from dataclasses import fields
from typing import AsyncIterator, Callable

import httpx
from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException

from gatekeeper.catalog import CatalogError
from gatekeeper.embedders import EmbeddingError
from gatekeeper.errors import UserError
from gatekeeper.gate import Gate
from gatekeeper.router import Decision
from gatekeeper.server.batching import MicroBatcher, Overloaded
from gatekeeper.server.config import RETRY_AFTER_S, ServerSettings
from gatekeeper.server.decision_log import DecisionLog
from gatekeeper.server.gated import forward, gate_headers
from gatekeeper.server.metrics import CONTENT_TYPE, Metrics
from gatekeeper.server.middleware import (
    AccessLogMiddleware,
    BodyLimitMiddleware,
    ErrorGuardMiddleware,
    RequestMetricsMiddleware,
    StrictJsonMiddleware,
)
from gatekeeper.server.passthrough import passthrough_router
from gatekeeper.server.replies import canned_completion, canned_stream
from gatekeeper.server.request_id import RequestIdMiddleware
from gatekeeper.server.responses import responses_router
from gatekeeper.server.schemas import (
    ERROR_RESPONSES,
    ChatCompletionRequest,
    ErrorResponse,
    GateBatchResponse,
    GateDecision,
    GateRequest,
    HealthResponse,
    ReadyResponse,
    ReloadResponse,
    error_body,
    streaming_response,
)
from gatekeeper.server.service import EmbeddingFailure, GateService
from gatekeeper.server.state import GateState, NotReady
from gatekeeper.server.upstream import Upstream

log = logging.getLogger(__name__)


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
            _keep(background, asyncio.create_task(state.load()))
        stop_watching = _watch_sighup(state, background)
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
    _add_error_handlers(app)

    @app.post("/v1/chat/completions", responses={200: streaming_response(
        "a chat.completion, or with stream: true its chunks as Server-Sent Events",
        "`data: {chat.completion.chunk}` events, then `data: [DONE]`; a failure midway is a final "
        "`data: {\"error\": ...}` event before `data: [DONE]`"), **ERROR_RESPONSES})
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        """Gate the text the model reads (the latest user message and everything after the last assistant turn);
        forward to the upstream, or answer with the catalog's canned reply (``n`` choices)."""
        raw = await request.json()  # forwarded as sent, not as re-serialised by the model
        outcome = await service.decide_chat(raw["messages"], user=raw.get("user"))
        headers = gate_headers(outcome)
        if outcome.blocked:
            reply = service.reply(outcome)
            model = body.model or "gatekeeper"
            if body.stream:
                include_usage = bool((body.stream_options or {}).get("include_usage"))
                return StreamingResponse(canned_stream(reply, model, include_usage, body.n or 1), headers=headers,
                                         media_type="text/event-stream")
            return JSONResponse(canned_completion(reply, model, body.n or 1), headers=headers)
        return await forward(upstream, metrics, "chat/completions", raw, request.headers, body.stream, headers)

    @app.post("/v1/gate", response_model=GateDecision | GateBatchResponse, responses=ERROR_RESPONSES)
    async def gate_decision(body: GateRequest) -> JSONResponse:
        """The gate's decision only: ``text`` -> one decision, ``texts`` -> a batch, ``messages`` -> latest turn."""
        if body.texts is not None:
            return JSONResponse({"decisions": [decision_json(d) for d in await service.decide_texts(body.texts)]})
        if body.messages is not None:
            turn = await service.decide_messages([message.model_dump() for message in body.messages])
            return JSONResponse(decision_json(turn.decision, turn.followup))
        return JSONResponse(decision_json((await service.decide_texts([body.text]))[0]))

    @app.get("/healthz", response_model=HealthResponse)
    async def healthz() -> HealthResponse:
        """Liveness: the process answers."""
        return HealthResponse()

    @app.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
    async def readyz() -> Response:
        """Readiness: the model is loaded and the catalog's index is ready."""
        if not state.ready:
            return JSONResponse(ReadyResponse(ready=False, error=state.load_error or "loading").model_dump(),
                                status_code=503)
        current = state.gate
        return JSONResponse(ReadyResponse(ready=True, catalog=current.catalog_.name,
                                          intents=len(current.catalog_.intents),
                                          fingerprint=current.artifacts_.fingerprint, tuning=current.tuning_status_,
                                          tuning_problem=current.tuning_problem_).model_dump())

    @app.get("/metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus text format."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/admin/reload", response_model=ReloadResponse,
              responses={status: {"model": ErrorResponse} for status in (400, 401, 403, 422, 500)})
    async def admin_reload(authorization: str | None = Header(None)) -> Response:
        """Reload the catalog from disk (bearer token: GATEKEEPER_ADMIN_TOKEN); a bad catalog keeps the old one."""
        refusal = _check_admin(settings, authorization)
        if refusal is not None:
            return refusal
        try:
            return JSONResponse(ReloadResponse(**await state.reload()).model_dump())
        except CatalogError as error:
            return _error(422, error_body("the new catalog is invalid; the previous one is still serving",
                                          "invalid_catalog", "invalid_catalog",
                                          problems=[str(problem) for problem in error.problems]))
        except (UserError, EmbeddingError, OSError) as error:  # the operator's to fix; the old gate is kept
            return _error(400, error_body(f"the reload failed, the previous catalog is still serving: "
                                          f"{type(error).__name__}: {error}", "reload_failed", "reload_failed"))

    app.include_router(responses_router(service, upstream, metrics))
    app.include_router(passthrough_router(upstream, metrics))  # last: it matches every other /v1 path
    return app


def decision_json(decision: Decision, followup: bool = False) -> dict:
    """A decision as ``/v1/gate`` answers it (:class:`GateDecision`'s JSON), built directly: the endpoint returns
    it as is, sparing FastAPI's validation of its own output against the response model on every request."""
    body = {name: getattr(decision, name) for name in _DECISION_FIELDS}
    body["top_k"] = [{"intent": item.intent, "score": item.score} for item in decision.top_k]
    body["followup"] = followup
    return body


_DECISION_FIELDS = tuple(item.name for item in fields(Decision))


def _check_admin(settings: ServerSettings, authorization: str | None) -> Response | None:
    """None if the bearer token is right; else the 403 (disabled) or 401 response."""
    if settings.admin_token is None:
        return _error(403, error_body("the admin endpoint is disabled; set GATEKEEPER_ADMIN_TOKEN (or admin_token "
                                      "in the config file) to enable it", "permission_error", "admin_disabled"))
    scheme, _, token = (authorization or "").partition(" ")  # the scheme is case-insensitive (RFC 9110 11.1)
    expected = settings.admin_token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        return _error(401, error_body("missing or wrong bearer token for the admin endpoint",
                                      "authentication_error", "invalid_admin_token"),
                      {"www-authenticate": "Bearer"})
    return None


def _error(status: int, body: dict, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as OpenAI-style JSON: bad JSON 400, bad schema 422, not ready 503, HTTP errors as they are."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        try:
            json.loads(await request.body())
        except ValueError as bad_json:
            return _error(400, error_body(f"the request body is not valid JSON: {bad_json}", "invalid_request_error",
                                          "invalid_json"))
        problems = error.errors()
        described = [f"{'.'.join(str(part) for part in problem['loc'][1:]) or 'body'}: {problem['msg']}"
                     for problem in problems]
        param = ".".join(str(part) for part in problems[0]["loc"][1:]) or None
        return _error(422, error_body("invalid request: " + "; ".join(described), "invalid_request_error",
                                      "invalid_request", param))

    @app.exception_handler(NotReady)
    async def not_ready(_: Request, error: NotReady) -> JSONResponse:
        return _error(503, error_body(f"the gate is not ready: {error}", "service_unavailable", "not_ready"))

    @app.exception_handler(Overloaded)
    async def overloaded(_: Request, error: Overloaded) -> JSONResponse:
        log.warning("request_shed", extra={"reason": "encoder_queue"})
        return _error(503, error_body(f"the gate is overloaded: {error}", "service_unavailable", "overloaded"),
                      {"retry-after": str(RETRY_AFTER_S)})

    @app.exception_handler(EmbeddingFailure)
    async def embedding_failed(_: Request, error: EmbeddingFailure) -> JSONResponse:
        return _error(503, error_body(f"the embedding backend failed: {error}", "service_unavailable", error.code))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return _error(error.status_code, error_body(str(error.detail), "invalid_request_error", None),
                      getattr(error, "headers", None))


def _watch_sighup(state: GateState, background: set[asyncio.Task]) -> Callable[[], None]:
    """Reload on SIGHUP (main thread only); returns the function that stops watching."""
    loop = asyncio.get_running_loop()

    def on_sighup() -> None:
        log.info("sighup_reload", extra={"catalog": state.catalog_path})
        _keep(background, asyncio.create_task(_reload_logged(state)))

    try:
        previous = signal.getsignal(signal.SIGHUP)  # `gatekeeper serve` ignores it while starting
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    except (ValueError, RuntimeError, NotImplementedError, AttributeError):
        log.info("sighup_unavailable", extra={"reason": "not the main thread or no SIGHUP; use POST /admin/reload"})
        return lambda: None

    def stop() -> None:  # back to what it was, not to the default action, which ends the process
        loop.remove_signal_handler(signal.SIGHUP)
        signal.signal(signal.SIGHUP, signal.SIG_DFL if previous is None else previous)

    return stop


async def _reload_logged(state: GateState) -> None:
    try:
        await state.reload()
    except Exception:  # already logged and counted by GateState.reload; the old gate keeps serving
        return


def _keep(tasks: set[asyncio.Task], task: asyncio.Task) -> None:
    """Hold a reference to a background task until it is done."""
    tasks.add(task)
    task.add_done_callback(tasks.discard)
