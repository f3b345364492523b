"""Reloading the catalog while serving: ``POST /admin/reload`` (bearer token) and SIGHUP. A bad catalog keeps the
previous one serving."""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
from typing import Callable

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, Response

from gatekeeper.catalog.loader import CatalogError
from gatekeeper.embedders import EmbeddingError
from gatekeeper.errors import UserError
from gatekeeper.server.config import ServerSettings
from gatekeeper.server.error_handlers import error_response
from gatekeeper.server.schemas import ErrorResponse, ReloadResponse, error_body
from gatekeeper.server.state import GateState

log = logging.getLogger(__name__)


def admin_router(settings: ServerSettings, state: GateState) -> APIRouter:
    """The router of ``POST /admin/reload``."""
    router = APIRouter()

    @router.post("/admin/reload", response_model=ReloadResponse,
                 responses={status: {"model": ErrorResponse} for status in (400, 401, 403, 422, 500)})
    async def admin_reload(authorization: str | None = Header(None)) -> Response:
        """Reload the catalog from disk (bearer token: GATEKEEPER_ADMIN_TOKEN); a bad catalog keeps the old one."""
        refusal = _check_admin(settings, authorization)
        if refusal is not None:
            return refusal
        try:
            return JSONResponse(ReloadResponse(**await state.reload()).model_dump())
        except CatalogError as error:
            return error_response(422, error_body("the new catalog is invalid; the previous one is still serving",
                                                  "invalid_catalog", "invalid_catalog",
                                                  problems=[str(problem) for problem in error.problems]))
        except (UserError, EmbeddingError, OSError) as error:  # the operator's to fix; the old gate is kept
            return error_response(400, error_body(f"the reload failed, the previous catalog is still serving: "
                                                  f"{type(error).__name__}: {error}", "reload_failed", "reload_failed"))

    return router


def _check_admin(settings: ServerSettings, authorization: str | None) -> Response | None:
    """None if the bearer token is right; else the 403 (disabled) or 401 response."""
    if settings.admin_token is None:
        return error_response(403, error_body("the admin endpoint is disabled; set GATEKEEPER_ADMIN_TOKEN (or "
                                              "admin_token in the config file) to enable it", "permission_error",
                                              "admin_disabled"))
    scheme, _, token = (authorization or "").partition(" ")  # the scheme is case-insensitive (RFC 9110 11.1)
    expected = settings.admin_token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        return error_response(401, error_body("missing or wrong bearer token for the admin endpoint",
                                              "authentication_error", "invalid_admin_token"),
                              {"www-authenticate": "Bearer"})
    return None


def watch_sighup(state: GateState, background: set[asyncio.Task]) -> Callable[[], None]:
    """Reload on SIGHUP (main thread only); returns the function that stops watching."""
    loop = asyncio.get_running_loop()

    def on_sighup() -> None:
        log.info("sighup_reload", extra={"catalog": state.catalog_path})
        keep(background, asyncio.create_task(_reload_logged(state)))

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


def keep(tasks: set[asyncio.Task], task: asyncio.Task) -> None:
    """Hold a reference to a background task until it is done."""
    tasks.add(task)
    task.add_done_callback(tasks.discard)
