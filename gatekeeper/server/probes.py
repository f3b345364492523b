"""Probes for the orchestrator and Prometheus: ``GET /healthz`` (liveness), ``GET /readyz`` (model and index
loaded) and ``GET /metrics``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from gatekeeper.server.metrics import CONTENT_TYPE, Metrics
from gatekeeper.server.schemas import HealthResponse, ReadyResponse
from gatekeeper.server.state import GateState


def probes_router(state: GateState, metrics: Metrics) -> APIRouter:
    """The router of ``/healthz``, ``/readyz`` and ``/metrics``."""
    router = APIRouter()

    @router.get("/healthz", response_model=HealthResponse)
    async def healthz() -> HealthResponse:
        """Liveness: the process answers."""
        return HealthResponse()

    @router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
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

    @router.get("/metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus text format."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return router
