"""Gating requests: decide, apply the mode and the encoder-failure policy, count and log.

:class:`GateService` is what the HTTP handlers call; it knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Mapping, Sequence

import numpy as np

from gatekeeper.conversation import (
    FollowupPolicy,
    GatedTexts,
    TurnDecision,
    decide_turn,
    estimate_tokens,
    gated_texts,
    prompt_text,
)
from gatekeeper.gate import Gate
from gatekeeper.router import ACTION_REJECT, REASON_EMPTY, REASON_NOT_TEXT, Decision
from gatekeeper.server.batching import MicroBatcher, Overloaded
from gatekeeper.server.config import ServerSettings
from gatekeeper.server.decision_log import DecisionLog
from gatekeeper.server.metrics import REASON_FAIL_CLOSED, Metrics
from gatekeeper.server.state import GateState
from gatekeeper.text import detect_language

log = logging.getLogger(__name__)


ACCEPTED = "accepted"
REJECTED = "rejected"
SHADOW_REJECTED = "shadow-rejected"
FAIL_OPEN = "fail-open"
FAIL_CLOSED = "fail-closed"


class EmbeddingFailure(Exception):
    """The encoder failed, or gave no decision within ``gate_timeout_s``; the caller applies the configured policy.

    ``code`` is the error code of a ``/v1/gate`` answer: ``embedding_failed`` or ``gate_timeout``.
    """

    def __init__(self, message: str, code: str = "embedding_failed"):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ChatOutcome:
    """What to do with one chat completion request."""

    #: accepted, rejected, shadow-rejected, fail-open or fail-closed (the ``x-gatekeeper-decision`` header).
    action: str
    #: True: answer with the canned reply (reject, reply or handoff), never call the upstream.
    blocked: bool
    #: The gate's decision; None when the encoder failed.
    decision: Decision | None
    followup: bool
    language: str
    gate: Gate


class GateService:
    """Decides messages for the HTTP layer, with metrics and decision logging."""

    def __init__(self, settings: ServerSettings, state: GateState, metrics: Metrics, batcher: MicroBatcher,
                 decision_log: DecisionLog | None = None):
        self.settings = settings
        self.state = state
        self.metrics = metrics
        self.batcher = batcher
        self.decision_log = decision_log
        self.policy = FollowupPolicy(context_turns=settings.context_turns,
                                     off_topic_similarity=settings.followup_off_topic_similarity,
                                     answer_similarity=settings.followup_answer_similarity)

    async def decide_chat(self, messages: Sequence[Mapping], endpoint: str = "/v1/chat/completions",
                          user: object = None) -> ChatOutcome:
        """Gate a chat request (:func:`gated_texts`: its latest user message and every other text the model reads
        after the last assistant turn), applying mode, actions and failure policy; ``endpoint`` and the request's
        OpenAI ``user`` field (hashed) are logged."""
        gate = self.state.gate
        texts = gated_texts(messages)
        language = detect_language(texts.latest if isinstance(texts.latest, str) else "")
        try:
            turn = await self._decide_turn(gate, texts)
        except EmbeddingFailure:
            return self._failed_chat(gate, language, messages)
        decision = turn.decision
        route = decision.action
        self.metrics.actions.labels(action=route, mode=self.settings.mode).inc()
        if route == "forward":
            action, blocked = ACCEPTED, False
        elif route != ACTION_REJECT:  # reply / handoff: answered here, in shadow mode only counted
            action, blocked = ACCEPTED, self.settings.mode != "shadow"
            if blocked:
                self._count_saved(messages)
        elif self.settings.mode == "shadow":
            action, blocked = SHADOW_REJECTED, False
            self.metrics.shadow_rejections.labels(reason=decision.reason).inc()
        else:
            action, blocked = REJECTED, True
            self._count_rejected(decision.reason or REASON_EMPTY, messages)
        self._record(gate, turn, endpoint, action, language, user)
        return ChatOutcome(action, blocked, decision, turn.followup, language, gate)

    @staticmethod
    def reply(outcome: ChatOutcome) -> str:
        """The canned answer of a blocked request, in the message's language: the reject reply, or the
        accepted intent's reply or handoff message."""
        router = outcome.gate.router_
        if outcome.decision is None:
            return router.reject_reply(None, outcome.language)
        return router.reply(outcome.decision, outcome.language) or router.reject_reply(None, outcome.language)

    async def decide_messages(self, messages: Sequence[Mapping]) -> TurnDecision:
        """Decide a conversation as a chat request would be (no mode or policy: decision only).

        Raises :class:`EmbeddingFailure` if the encoder fails.
        """
        gate = self.state.gate
        texts = gated_texts(messages)
        turn = await self._decide_turn(gate, texts)
        language = detect_language(texts.latest if isinstance(texts.latest, str) else "")
        self._record(gate, turn, "/v1/gate", ACCEPTED if turn.decision.accepted else REJECTED, language)
        return turn

    async def decide_texts(self, texts: Sequence[object]) -> list[Decision]:
        """Decide independent messages with one (micro-batched) encoder call.

        Preparing and scoring a batch of long texts takes up to a few hundred
        milliseconds of CPU: both run in a worker thread, never stalling the
        event loop (and every other request) for that long.
        Raises :class:`EmbeddingFailure` if the encoder fails.
        """
        gate = self.state.gate
        started = time.perf_counter()
        prepared, scorable = await asyncio.to_thread(gate.prepare_many, texts)
        async with self._deadline():
            vectors = await self._embed(gate, [prepared[i][0] for i in scorable])
        decisions = await asyncio.to_thread(gate.decide_prepared, prepared, scorable, vectors)
        self.metrics.gate_latency.observe(time.perf_counter() - started)
        for text, decision in zip(texts, decisions, strict=True):
            self._record(gate, TurnDecision(decision), "/v1/gate", ACCEPTED if decision.accepted else REJECTED,
                         detect_language(text if isinstance(text, str) else ""))
        return decisions

    async def _decide_turn(self, gate: Gate, texts: GatedTexts) -> TurnDecision:
        started = time.perf_counter()
        try:
            async with self._deadline():
                return await decide_turn(gate, lambda batch: self._embed(gate, batch), texts.latest, texts.previous,
                                         self.policy, texts.others, texts.replies)
        finally:
            self.metrics.gate_latency.observe(time.perf_counter() - started)

    async def _embed(self, gate: Gate, texts: Sequence[str]) -> np.ndarray:
        try:
            return await self.batcher.embed(gate.embedder_, texts)
        except Overloaded:  # shed with 503, not a decision: no policy applies
            raise
        except Exception as error:  # any encoder failure is subject to the failure policy
            raise self._failure(f"{type(error).__name__}: {error}", str(error)) from error

    @asynccontextmanager
    async def _deadline(self) -> AsyncIterator[None]:
        """Bound a decision by ``gate_timeout_s``; past it the encoder counts as failed (the failure policy applies).

        The caller's place in the encoder queue is given up, so a stalled
        backend or a long queue never makes a request wait longer.
        """
        timeout = self.settings.gate_timeout_s
        try:
            async with asyncio.timeout(timeout):
                yield
        except TimeoutError as error:
            raise self._failure(f"no decision within {timeout:g}s", f"no decision within {timeout:g}s (setting "
                                "gate_timeout_s): the embedding backend is slow or stalled, or the gate is "
                                "overloaded", "gate_timeout") from error

    def _failure(self, logged: str, message: str, code: str = "embedding_failed") -> EmbeddingFailure:
        """Count and log an encoder failure; the :class:`EmbeddingFailure` to raise."""
        policy = self.settings.embedding_failure
        self.metrics.embedding_failures.labels(policy=policy).inc()
        self.metrics.decisions.labels(decision="error", intent="none", mode=self.settings.mode).inc()
        log.warning("embedding_failed", extra={"policy": policy, "error": logged})
        return EmbeddingFailure(message, code)

    def _failed_chat(self, gate: Gate, language: str, messages: Sequence[Mapping]) -> ChatOutcome:
        fail_open = self.settings.embedding_failure == "fail_open"
        self.metrics.actions.labels(action="forward" if fail_open else ACTION_REJECT, mode=self.settings.mode).inc()
        if fail_open:
            return ChatOutcome(FAIL_OPEN, False, None, False, language, gate)
        if self.settings.mode == "shadow":
            self.metrics.shadow_rejections.labels(reason=REASON_FAIL_CLOSED).inc()
            return ChatOutcome(SHADOW_REJECTED, False, None, False, language, gate)
        self._count_rejected(REASON_FAIL_CLOSED, messages)
        return ChatOutcome(FAIL_CLOSED, True, None, False, language, gate)

    def _count_rejected(self, reason: str, messages: Sequence[Mapping]) -> None:
        self.metrics.rejected_calls.labels(reason=reason).inc()
        self._count_saved(messages)

    def _count_saved(self, messages: Sequence[Mapping]) -> None:
        """An LLM call not made: a rejected message, or one answered by a reply or handoff intent."""
        self.metrics.llm_calls_saved.inc()
        self.metrics.tokens_saved.inc(estimate_tokens(prompt_text(messages)))

    def _record(self, gate: Gate, turn: TurnDecision, endpoint: str, outcome: str, language: str,
                user: object = None) -> None:
        """Count a decision (metrics) and log it (sampled), with the earlier turns it was decided with."""
        decision = turn.decision
        self.metrics.decisions.labels(decision=ACCEPTED if decision.accepted else REJECTED,
                                      intent=decision.intent or "none", mode=self.settings.mode).inc()
        if decision.reason not in (REASON_EMPTY, REASON_NOT_TEXT):
            self.metrics.score.observe(decision.score)
        if self.decision_log is not None:
            self.decision_log.write(gate, decision, endpoint=endpoint, mode=self.settings.mode, outcome=outcome,
                                    language=language, followup=turn.followup, context=turn.context, user=user)
