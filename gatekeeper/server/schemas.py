"""Typed request and response models of the sidecar's HTTP API (they make the OpenAPI schema)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from gatekeeper.core.router import Decision


class ChatMessage(BaseModel):
    """One chat message; fields beyond ``role`` and ``content`` (tool calls, names...) pass through."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(BaseModel):
    """An OpenAI chat completion request; every other parameter (tools, temperature...) passes through."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: dict[str, Any] | None = None
    #: Choices to generate (OpenAI: 1 to 128); a canned reply has ``n`` identical choices.
    n: StrictInt | None = Field(None, ge=1, le=128)


class ResponsesRequest(BaseModel):
    """An OpenAI Responses API request; every other parameter (tools, previous_response_id...) passes through."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    #: A user message, or a list of input items (messages with ``input_text`` parts, tool calls and outputs...).
    input: str | list[dict[str, Any]]
    #: The bot's own instructions: a system prompt before the conversation.
    instructions: str | list[dict[str, Any]] | None = None
    stream: StrictBool = False


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None,
               **extra: object) -> dict:
    """An OpenAI-style error object: ``{"error": {"message", "type", "param", "code", ...}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code, **extra}}


class GateRequest(BaseModel):
    """Exactly one of: ``text`` (one message), ``texts`` (a batch), ``messages`` (a conversation)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "oneOf": [{"required": ["text"]}, {"required": ["texts"]}, {"required": ["messages"]}]})

    text: str | None = Field(None, description="one message: answered with one decision")
    texts: list[str] | None = Field(None, min_length=1, max_length=256,
                                    description="independent messages: answered with {\"decisions\": [...]}")
    messages: list[ChatMessage] | None = Field(None, min_length=1, description="a conversation: its latest user "
                                               "turn is decided as a chat completion's would be")

    @model_validator(mode="after")
    def _exactly_one(self) -> "GateRequest":
        given = [name for name in ("text", "texts", "messages") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError('send exactly one of "text", "texts" or "messages"')
        return self


@dataclass(frozen=True)
class GateDecision(Decision):
    """The gate's decision on one message (:class:`gatekeeper.core.router.Decision`), and whether it is a follow-up.

    ``followup`` is true when the message was accepted only thanks to earlier user turns.
    """

    followup: bool = False

    @classmethod
    def of(cls, decision: Decision, followup: bool = False) -> "GateDecision":
        """From a router :class:`Decision`."""
        return cls(**{item.name: getattr(decision, item.name) for item in fields(decision)}, followup=followup)


class GateBatchResponse(BaseModel):
    """Decisions for a ``texts`` batch, in order."""

    decisions: list[GateDecision]


class ErrorDetail(BaseModel):
    """OpenAI-style error details."""

    model_config = ConfigDict(extra="allow")

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error response: ``{"error": {...}}``."""

    error: ErrorDetail


#: The error statuses of the API endpoints, for a route's ``responses`` (the OpenAPI schema).
ERROR_RESPONSES = {status: {"model": ErrorResponse} for status in (400, 413, 422, 502, 503, 504)}


def streaming_response(description: str, events: str) -> dict:
    """A route's OpenAPI 200 response: JSON, or (``stream: true``) Server-Sent Events described by ``events``."""
    return {"description": description, "content": {
        "application/json": {"schema": {"type": "object"}},
        "text/event-stream": {"schema": {"type": "string", "description": events}}}}


class ReloadResponse(BaseModel):
    """A successful reload."""

    catalog: str
    path: str
    intents: int
    fingerprint: str
    rebuilt: bool
    embedder_reused: bool
    seconds: float


class HealthResponse(BaseModel):
    """Liveness."""

    status: str = "ok"


class ReadyResponse(BaseModel):
    """Readiness: a catalog is loaded and its index built."""

    ready: bool
    catalog: str | None = None
    intents: int | None = None
    fingerprint: str | None = None
    #: The tuning in force: tuned, re-derived (after a catalog edit), stale (auto thresholds) or none.
    tuning: str | None = None
    #: Why the tuning is stale, and the fix.
    tuning_problem: str | None = None
    error: str | None = None
