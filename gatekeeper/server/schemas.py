"""Typed request and response models of the sidecar's HTTP API (they make the OpenAPI schema)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from gatekeeper.router import Decision


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


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None,
               **extra: object) -> dict:
    """An OpenAI-style error object: ``{"error": {"message", "type", "param", "code", ...}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code, **extra}}


class GateRequest(BaseModel):
    """Exactly one of: ``text`` (one message), ``texts`` (a batch), ``messages`` (a conversation)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    texts: list[str] | None = Field(None, min_length=1, max_length=256)
    messages: list[ChatMessage] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> "GateRequest":
        given = [name for name in ("text", "texts", "messages") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError('send exactly one of "text", "texts" or "messages"')
        return self


@dataclass(frozen=True)
class GateDecision(Decision):
    """The gate's decision on one message (:class:`gatekeeper.router.Decision`), and whether it is a follow-up.

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
    error: str | None = None
