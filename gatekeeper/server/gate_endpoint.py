"""``POST /v1/gate``: the gate's decision only, for one text, a batch of texts or a conversation's latest turn."""

from __future__ import annotations

from dataclasses import fields

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gatekeeper.core.router import Decision
from gatekeeper.server.schemas import ERROR_RESPONSES, GateBatchResponse, GateDecision, GateRequest
from gatekeeper.server.service import GateService


def gate_router(service: GateService) -> APIRouter:
    """The router of ``POST /v1/gate``."""
    router = APIRouter()

    @router.post("/v1/gate", response_model=GateDecision | GateBatchResponse, responses=ERROR_RESPONSES)
    async def gate_decision(body: GateRequest) -> JSONResponse:
        """The gate's decision only: ``text`` -> one decision, ``texts`` -> a batch, ``messages`` -> latest turn."""
        if body.texts is not None:
            return JSONResponse({"decisions": [decision_json(d) for d in await service.decide_texts(body.texts)]})
        if body.messages is not None:
            turn = await service.decide_messages([message.model_dump() for message in body.messages])
            return JSONResponse(decision_json(turn.decision, turn.followup))
        return JSONResponse(decision_json((await service.decide_texts([body.text]))[0]))

    return router


def decision_json(decision: Decision, followup: bool = False) -> dict:
    """A decision as ``/v1/gate`` answers it (:class:`GateDecision`'s JSON), built directly: the endpoint returns
    it as is, sparing FastAPI's validation of its own output against the response model on every request."""
    body = {name: getattr(decision, name) for name in _DECISION_FIELDS}
    body["top_k"] = [{"intent": item.intent, "score": item.score} for item in decision.top_k]
    body["followup"] = followup
    return body


_DECISION_FIELDS = tuple(item.name for item in fields(Decision))


_DECISION_FIELDS = tuple(item.name for item in fields(Decision))
