"""``POST /v1/chat/completions``: gate the text the model reads, then forward to the upstream or answer with the
catalog's canned reply (streamed when asked)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from gatekeeper.server.gated import forward, gate_headers
from gatekeeper.server.metrics import Metrics
from gatekeeper.server.replies import canned_completion, canned_stream
from gatekeeper.server.schemas import ERROR_RESPONSES, ChatCompletionRequest, streaming_response
from gatekeeper.server.service import GateService
from gatekeeper.server.upstream import Upstream


def chat_router(service: GateService, upstream: Upstream | None, metrics: Metrics) -> APIRouter:
    """The router of ``POST /v1/chat/completions``."""
    router = APIRouter()

    @router.post("/v1/chat/completions", responses={200: streaming_response(
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

    return router
