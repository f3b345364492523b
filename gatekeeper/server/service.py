"""Gating requests: decide, apply the mode and the encoder-failure policy, count and log.

:class:`GateService` is what the HTTP handlers call; it knows nothing of HTTP.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from gatekeeper.conversation import FollowupPolicy, TurnDecision, decide_turn, estimate_tokens, prompt_text, user_turns
from gatekeeper.gate import Gate
from gatekeeper.router import ACTION_REJECT, REASON_EMPTY, REASON_NOT_TEXT, Decision
from gatekeeper.server.batching import MicroBatcher
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
    """The encoder failed; the caller applies the configured policy."""


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
        self.policy = FollowupPolicy(settings.context_turns, settings.followup_max_tokens,
                                     settings.followup_max_similarity)

    async def decide_chat(self, messages: Sequence[Mapping]) -> ChatOutcome:
        """Gate a chat request on its latest user message, applying mode, actions and failure policy."""
        gate = self.state.gate
        latest, previous = user_turns(messages)
        language = detect_language(latest if isinstance(latest, str) else "")
        try:
            turn = await self._decide_turn(gate, latest, previous)
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
        self._record(decision, "/v1/chat/completions", action, language, turn.followup)
        return ChatOutcome(action, blocked, decision, turn.followup, language, gate)

    @staticmethod
    def reply(outcome: ChatOutcome) -> str:
        """The canned answer of a blocked request, in the message's language: the reject reply, or the
        accepted intent's reply or handoff message."""
        router = outcome.gate.router
        if outcome.decision is None:
            return router.reject_reply(None, outcome.language)
        return router.reply(outcome.decision, outcome.language) or router.reject_reply(None, outcome.language)

    async def decide_messages(self, messages: Sequence[Mapping]) -> TurnDecision:
        """Decide a conversation's latest user turn (no mode or policy: decision only).

        Raises :class:`EmbeddingFailure` if the encoder fails.
        """
        gate = self.state.gate
        latest, previous = user_turns(messages)
        turn = await self._decide_turn(gate, latest, previous)
        language = detect_language(latest if isinstance(latest, str) else "")
        self._record(turn.decision, "/v1/gate", ACCEPTED if turn.decision.accepted else REJECTED, language,
                     turn.followup)
        return turn

    async def decide_texts(self, texts: Sequence[object]) -> list[Decision]:
        """Decide independent messages with one (micro-batched) encoder call.

        Raises :class:`EmbeddingFailure` if the encoder fails.
        """
        gate = self.state.gate
        started = time.perf_counter()
        prepared, scorable = gate.prepare_many(texts)
        vectors = await self._embed(gate, [prepared[i][0] for i in scorable])
        decisions = gate.decide_prepared(prepared, scorable, vectors)
        self.metrics.gate_latency.observe(time.perf_counter() - started)
        for text, decision in zip(texts, decisions, strict=True):
            self._record(decision, "/v1/gate", ACCEPTED if decision.accepted else REJECTED,
                         detect_language(text if isinstance(text, str) else ""))
        return decisions

    async def _decide_turn(self, gate: Gate, latest: object, previous: Sequence[str]) -> TurnDecision:
        started = time.perf_counter()
        try:
            return await decide_turn(gate, lambda texts: self._embed(gate, texts), latest, previous, self.policy)
        finally:
            self.metrics.gate_latency.observe(time.perf_counter() - started)

    async def _embed(self, gate: Gate, texts: Sequence[str]) -> np.ndarray:
        try:
            return await self.batcher.embed(gate.embedder, texts)
        except Exception as error:  # any encoder failure is subject to the failure policy
            policy = self.settings.embedding_failure
            self.metrics.embedding_failures.labels(policy=policy).inc()
            self.metrics.decisions.labels(decision="error", intent="none", mode=self.settings.mode).inc()
            log.warning("embedding_failed", extra={"policy": policy, "error": f"{type(error).__name__}: {error}"})
            raise EmbeddingFailure(str(error)) from error

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

    def _record(self, decision: Decision, endpoint: str, action: str, language: str, followup: bool = False) -> None:
        """Count a decision (metrics) and log it (sampled)."""
        self.metrics.decisions.labels(decision=ACCEPTED if decision.accepted else REJECTED,
                                      intent=decision.intent or "none", mode=self.settings.mode).inc()
        if decision.reason not in (REASON_EMPTY, REASON_NOT_TEXT):
            self.metrics.score.observe(decision.score)
        if self.decision_log is not None:
            self.decision_log.write(decision, endpoint=endpoint, mode=self.settings.mode, action=action,
                                    language=language, followup=followup)
