"""Gating requests: decide, apply the mode and the encoder-failure policy, count and log.

:class:`GateService` is what the HTTP handlers call; it knows nothing of HTTP.
Every request is decided in the micro-batcher's decision thread, scored there
with the other requests of its encoder call (:mod:`gatekeeper.server.worker`);
the event loop prepares it, waits, then counts and logs the decision. Each request
is counted once in ``gatekeeper_decisions_total``: with its decisions, or as
one ``error`` when the encoder failed (whatever the rule tried meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from gatekeeper.core.conversation import (
    FollowupPolicy,
    GatedTexts,
    TurnDecision,
    estimate_tokens,
    gated_texts,
    prompt_text,
)
from gatekeeper.core.router import ACTION_REJECT, REASON_EMPTY, REASON_NOT_TEXT, Decision
from gatekeeper.core.text import detect_language
from gatekeeper.gate import Gate
from gatekeeper.server.batching import Finish, FinishFailed, MicroBatcher, Overloaded
from gatekeeper.server.config import ServerSettings
from gatekeeper.server.decision_log import DecisionLog
from gatekeeper.server.metrics import REASON_FAIL_CLOSED, Metrics
from gatekeeper.server.state import GateState
from gatekeeper.server.worker import TextsJob, TurnJob, decide_texts, decide_turns

log = logging.getLogger(__name__)


ACCEPTED = "accepted"
REJECTED = "rejected"
SHADOW_REJECTED = "shadow-rejected"
FAIL_OPEN = "fail-open"
FAIL_CLOSED = "fail-closed"


#: Messages of a ``/v1/gate`` request with more characters than this are prepared (normalised, ~0.1 ms per 1,000
#: characters) in a worker thread; fewer cost the event loop less than the hop to the thread.
BIG_REQUEST_CHARS = 2_048


class EmbeddingFailure(Exception):
    """The encoder failed, or gave no decision within ``gate_timeout_s``; the caller applies the configured policy.

    ``code`` is the error code of a ``/v1/gate`` answer: ``embedding_failed`` or ``gate_timeout``.
    """

    def __init__(self, message: str, code: str = "embedding_failed", logged: str | None = None):
        super().__init__(message)
        self.code = code
        #: The short form for the log.
        self.logged = logged or message


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
        """Decide independent messages, scored in the decision thread with the rest of their batch.

        A request of many long texts takes milliseconds to prepare: that runs
        in a worker thread, never stalling the event loop (and every other
        request) for that long. Raises :class:`EmbeddingFailure` if the encoder fails.
        """
        gate = self.state.gate
        started = time.perf_counter()
        size = sum(len(text) for text in texts if isinstance(text, str))
        job = TextsJob.of(gate, texts) if size <= BIG_REQUEST_CHARS else await asyncio.to_thread(TextsJob.of, gate,
                                                                                                 texts)
        decisions = await self._decide(gate, job.queries, decide_texts, job)
        self.metrics.gate_latency.observe(time.perf_counter() - started)
        for text, decision in zip(texts, decisions, strict=True):
            self._record(gate, TurnDecision(decision), "/v1/gate", ACCEPTED if decision.accepted else REJECTED,
                         detect_language(text) if self.decision_log is not None and isinstance(text, str) else "")
        return decisions

    async def _decide_turn(self, gate: Gate, texts: GatedTexts) -> TurnDecision:
        """The conversation rule's decision on ``texts``, resumed in the decision thread after the loop's first
        step (:class:`TurnJob`)."""
        started = time.perf_counter()
        try:
            job = TurnJob.start(gate, texts, self.policy)
            if isinstance(job, TurnDecision):
                return job
            return await self._decide(gate, job.texts, decide_turns, job)
        finally:
            self.metrics.gate_latency.observe(time.perf_counter() - started)

    async def _decide(self, gate: Gate, texts: Sequence[str], finish: Finish, job: Any) -> Any:
        """``finish``'s result for ``job`` from the decision thread once ``texts`` are embedded.

        An encoder failure, or no result within ``gate_timeout_s``, raises
        :class:`EmbeddingFailure` (the failure policy applies), counted here,
        once per request. Past the deadline the request gives up its place in
        the encoder queue, so a stalled backend or a long queue never makes it
        wait longer. :class:`Overloaded` (shed with 503) and a bug after the
        encoder call (:class:`FinishFailed`, a 500) are raised as they are: no
        policy applies.
        """
        timeout = self.settings.gate_timeout_s
        try:
            async with asyncio.timeout(timeout) as deadline:
                return await self.batcher.process(gate.embedder_, texts, finish, job)
        except (Overloaded, FinishFailed):
            raise
        except Exception as error:  # the encoder failed, or was too slow
            failure = (EmbeddingFailure(f"no decision within {timeout:g}s (setting gate_timeout_s): the embedding "
                                        "backend is slow or stalled, or the gate is overloaded", "gate_timeout",
                                        f"no decision within {timeout:g}s") if deadline.expired()
                       else EmbeddingFailure(str(error), logged=f"{type(error).__name__}: {error}"))
            self._count_failure(failure)
            raise failure from error

    def _count_failure(self, failure: EmbeddingFailure) -> None:
        """Count and log a request the encoder failed (its one count in ``gatekeeper_decisions_total``)."""
        policy = self.settings.embedding_failure
        self.metrics.embedding_failures.labels(policy=policy).inc()
        self.metrics.decisions.labels(decision="error", intent="none", mode=self.settings.mode).inc()
        log.warning("embedding_failed", extra={"policy": policy, "error": failure.logged})

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
