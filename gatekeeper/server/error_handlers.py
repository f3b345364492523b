"""Every error as OpenAI-style JSON (``{"error": {"message", "type", "param", "code"}}``): bad JSON 400, bad
schema 422, not ready or overloaded 503, other HTTP errors as they are."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from gatekeeper.server.batching import Overloaded
from gatekeeper.server.config import RETRY_AFTER_S
from gatekeeper.server.schemas import error_body
from gatekeeper.server.service import EmbeddingFailure
from gatekeeper.server.state import NotReady

log = logging.getLogger(__name__)


def error_response(status: int, body: dict, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error response with an OpenAI-style ``body`` (:func:`gatekeeper.server.schemas.error_body`)."""
    return JSONResponse(body, status_code=status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    """Every error as OpenAI-style JSON: bad JSON 400, bad schema 422, not ready 503, HTTP errors as they are."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        try:
            json.loads(await request.body())
        except ValueError as bad_json:
            return error_response(400, error_body(f"the request body is not valid JSON: {bad_json}",
                                                  "invalid_request_error", "invalid_json"))
        problems = error.errors()
        described = [f"{'.'.join(str(part) for part in problem['loc'][1:]) or 'body'}: {problem['msg']}"
                     for problem in problems]
        param = ".".join(str(part) for part in problems[0]["loc"][1:]) or None
        return error_response(422, error_body("invalid request: " + "; ".join(described), "invalid_request_error",
                                              "invalid_request", param))

    @app.exception_handler(NotReady)
    async def not_ready(_: Request, error: NotReady) -> JSONResponse:
        return error_response(503, error_body(f"the gate is not ready: {error}", "service_unavailable", "not_ready"))

    @app.exception_handler(Overloaded)
    async def overloaded(_: Request, error: Overloaded) -> JSONResponse:
        log.warning("request_shed", extra={"reason": "encoder_queue"})
        return error_response(503, error_body(f"the gate is overloaded: {error}", "service_unavailable", "overloaded"),
                              {"retry-after": str(RETRY_AFTER_S)})

    @app.exception_handler(EmbeddingFailure)
    async def embedding_failed(_: Request, error: EmbeddingFailure) -> JSONResponse:
        return error_response(503, error_body(f"the embedding backend failed: {error}", "service_unavailable",
                                              error.code))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return error_response(error.status_code, error_body(str(error.detail), "invalid_request_error", None),
                              getattr(error, "headers", None))
