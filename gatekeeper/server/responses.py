"""``POST /v1/responses``: the OpenAI Responses API, gated like chat completions.

The request's ``instructions`` are the bot's opening system prompt and its
``input`` the conversation (:func:`response_messages`), gated by the same rule
as chat messages (:func:`gatekeeper.core.conversation.gated_texts`). An in-scope
request goes to the upstream's ``/responses`` unchanged; a blocked one
(off topic, or a ``reply``/``handoff`` intent) gets the canned reply as a
``response`` object, or as the Responses SSE events with ``stream: true``.
Usage is zero tokens: no model ran.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Iterator, Mapping

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from gatekeeper.server.gated import forward, gate_headers
from gatekeeper.server.metrics import Metrics
from gatekeeper.server.schemas import ERROR_RESPONSES, ResponsesRequest
from gatekeeper.server.service import GateService
from gatekeeper.server.upstream import Upstream

PATH = "/v1/responses"


def responses_router(service: GateService, upstream: Upstream | None, metrics: Metrics) -> APIRouter:
    """The router of ``POST /v1/responses`` (include it before the passthrough router, which matches every path)."""
    router = APIRouter()

    @router.post(PATH, responses={200: {"description": "a response object or its SSE events"}, **ERROR_RESPONSES})
    async def responses(body: ResponsesRequest, request: Request) -> Response:
        """Gate the input; forward to the upstream, or answer with the catalog's canned reply."""
        raw = await request.json()  # forwarded as sent, not as re-serialised by the model
        outcome = await service.decide_chat(response_messages(raw), endpoint=PATH, user=raw.get("user"))
        headers = gate_headers(outcome)
        if not outcome.blocked:
            return await forward(upstream, metrics, "responses", raw, request.headers, body.stream, headers)
        response = canned_response(service.reply(outcome), body.model or "gatekeeper", raw.get("instructions"))
        if body.stream:
            return StreamingResponse(canned_response_events(response), headers=headers,
                                     media_type="text/event-stream")
        return JSONResponse(response, headers=headers)

    return router


def response_messages(body: Mapping) -> list[dict]:
    """A Responses API request as chat messages for the gate.

    ``instructions`` become the opening system messages (the bot's own prompt,
    not gated); a string ``input`` is one user message. Input items keep their
    role; an item without one is a tool's result when its type ends in
    ``_output`` (``function_call_output``...), else the model's own item
    (``function_call``, ``reasoning``...), an assistant turn.
    """
    instructions = body.get("instructions")
    items = body.get("input")
    opening = ([{"role": "system", "content": instructions}] if isinstance(instructions, str) else
               [{"role": "system", "content": item.get("content")} for item in instructions or []
                if isinstance(item, Mapping)])
    items = [{"role": "user", "content": items}] if isinstance(items, str) else items or []
    return [*opening, *({"role": _item_role(item), "content": item.get("content")}
                        for item in items if isinstance(item, Mapping))]


def _item_role(item: Mapping) -> str:
    """An input item's role: its own, else ``tool`` for a tool's output, else ``assistant``."""
    role = item.get("role")
    if isinstance(role, str):
        return role
    return "tool" if str(item.get("type", "")).endswith("_output") else "assistant"


def canned_response(reply: str, model: str, instructions: object = None) -> dict:
    """A completed ``response`` object whose one output message is ``reply``."""
    now = int(time.time())
    message = {"id": f"msg_gk_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
               "status": "completed",
               "content": [{"type": "output_text", "text": reply, "annotations": [], "logprobs": []}]}
    return {
        "id": f"resp_gk_{uuid.uuid4().hex[:24]}", "object": "response", "created_at": now, "completed_at": now,
        "status": "completed", "error": None, "incomplete_details": None, "instructions": instructions,
        "model": model, "output": [message], "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        "metadata": {},
        "usage": {"input_tokens": 0, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 0,
                  "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 0},
    }


def canned_response_events(response: dict) -> Iterator[bytes]:
    """``response`` (from :func:`canned_response`) as the Responses SSE events OpenAI sends, each an ``event:``
    and a ``data:`` line: created, in progress, the message and its text (one delta), completed."""
    message = response["output"][0]
    part = message["content"][0]
    started = {**response, "status": "in_progress", "completed_at": None, "output": []}
    where = {"item_id": message["id"], "output_index": 0, "content_index": 0}
    events = [
        ("response.created", {"response": started}),
        ("response.in_progress", {"response": started}),
        ("response.output_item.added", {"output_index": 0, "item": {**message, "status": "in_progress",
                                                                    "content": []}}),
        ("response.content_part.added", {**where, "part": {**part, "text": ""}}),
        ("response.output_text.delta", {**where, "delta": part["text"], "logprobs": []}),
        ("response.output_text.done", {**where, "text": part["text"], "logprobs": []}),
        ("response.content_part.done", {**where, "part": part}),
        ("response.output_item.done", {"output_index": 0, "item": message}),
        ("response.completed", {"response": response}),
    ]
    for number, (kind, data) in enumerate(events):
        payload = json.dumps({"type": kind, "sequence_number": number, **data}, ensure_ascii=False)
        yield f"event: {kind}\ndata: {payload}\n\n".encode()
