"""Prometheus metrics of the sidecar, created on an injected registry (no global state).

The names and labels are a contract with dashboards and alert rules;
docs/sidecar.md lists them. Label values are bounded: intents come from the
catalog (or "none"), reasons and statuses from fixed sets.
"""

from __future__ import annotations

from typing import Iterable, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gatekeeper.core.router import (ACTIONS, REASON_BELOW_THRESHOLD, REASON_EMPTY, REASON_NEAREST_OUT_OF_SCOPE,
                                    REASON_NOT_TEXT)
from gatekeeper.server.config import EmbeddingFailurePolicy

#: Gate score buckets: a few negative ones for cosine scores, then 0..1 in 0.05 steps.
SCORE_BUCKETS = (-1.0, -0.5, -0.25, *(round(0.05 * i, 2) for i in range(21)))
GATE_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                        0.25, 0.5, 1.0)
UPSTREAM_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)

#: Rejection reason when the encoder failed and the policy is fail_closed.
REASON_FAIL_CLOSED = "fail_closed"
#: Why a chat completion gets the canned reply: the router's reasons, or the encoder failing closed.
REJECTION_REASONS = (REASON_BELOW_THRESHOLD, REASON_NEAREST_OUT_OF_SCOPE, REASON_EMPTY, REASON_NOT_TEXT,
                     REASON_FAIL_CLOSED)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """Every metric the sidecar exports, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry, mode: str = "enforce"):
        self.registry = registry
        self.mode = mode
        self.decisions = Counter("gatekeeper_decisions_total", "Gate decisions, per message decided",
                                 ["decision", "intent", "mode"], registry=registry)
        self.rejected_calls = Counter("gatekeeper_rejected_calls_total",
                                      "Chat completions answered with the canned reply instead of the LLM",
                                      ["reason"], registry=registry)
        self.shadow_rejections = Counter("gatekeeper_shadow_rejections_total",
                                         "Chat completions shadow mode would have rejected (forwarded anyway)",
                                         ["reason"], registry=registry)
        self.score = Histogram("gatekeeper_score", "Gate score of scored messages", buckets=SCORE_BUCKETS,
                               registry=registry)
        self.gate_latency = Histogram("gatekeeper_gate_latency_seconds",
                                      "Time to decide one request (embedding included)",
                                      buckets=GATE_LATENCY_BUCKETS, registry=registry)
        self.upstream_latency = Histogram("gatekeeper_upstream_latency_seconds",
                                          "Time until the upstream's response headers",
                                          buckets=UPSTREAM_LATENCY_BUCKETS, registry=registry)
        self.upstream_errors = Counter("gatekeeper_upstream_errors_total",
                                       "Upstream failures, by the status returned to the caller",
                                       ["status"], registry=registry)
        self.actions = Counter("gatekeeper_actions_total",
                               "Chat completions by the gate's action: forward, reply, handoff or reject "
                               "(in shadow mode what it would have done)", ["action", "mode"], registry=registry)
        self.llm_calls_saved = Counter("gatekeeper_llm_calls_saved_total",
                                       "LLM calls not made: the message was rejected, or answered by a reply or "
                                       "handoff intent", registry=registry)
        self.tokens_saved = Counter("gatekeeper_tokens_saved_total",
                                    "Estimated prompt tokens not sent upstream (CJK characters + other "
                                    "characters / 4)", registry=registry)
        self.catalog_info = Gauge("gatekeeper_catalog_info", "The catalog being served",
                                  ["catalog", "fingerprint", "model", "intents"], registry=registry)
        self.reloads = Counter("gatekeeper_reloads_total", "Catalog reloads", ["result"], registry=registry)
        self.tuning_stale = Gauge("gatekeeper_tuning_stale", "1 when the catalog changed since 'gatekeeper tune' "
                                  "and its thresholds could not be re-derived (auto thresholds in force)",
                                  registry=registry)
        self.in_flight = Gauge("gatekeeper_in_flight_requests", "Requests being handled", registry=registry)
        self.embedding_failures = Counter("gatekeeper_embedding_failures_total",
                                          "Encoder failures, by the policy applied", ["policy"], registry=registry)
        self.requests = Counter("gatekeeper_requests_total", "Requests, by endpoint and status",
                                ["endpoint", "status"], registry=registry)
        self.batch_size = Histogram("gatekeeper_batch_size", "Messages per micro-batched encoder call",
                                    buckets=BATCH_SIZE_BUCKETS, registry=registry)
        self._start_known_series_at_zero()

    def _start_known_series_at_zero(self) -> None:
        """Export every known label value from the start, so that ``increase()`` sees a first event."""
        for reason in REJECTION_REASONS:
            self.rejected_calls.labels(reason=reason)
            self.shadow_rejections.labels(reason=reason)
        for action in ACTIONS:
            self.actions.labels(action=action, mode=self.mode)
        for result in ("success", "failure"):
            self.reloads.labels(result=result)
        for policy in get_args(EmbeddingFailurePolicy):
            self.embedding_failures.labels(policy=policy)
        for status in ("502", "504"):
            self.upstream_errors.labels(status=status)

    def set_catalog(self, catalog: str, fingerprint: str, model: str, intents: int) -> None:
        """Replace the catalog info series with the one now served."""
        self.catalog_info.clear()
        self.catalog_info.labels(catalog=catalog, fingerprint=fingerprint, model=model, intents=str(intents)).set(1)

    def keep_intents(self, intents: Iterable[str]) -> None:
        """Drop the ``decisions_total`` series of intents not in ``intents`` (a reload removed them); ``none`` stays."""
        kept = {*intents, "none"}
        for metric in self.decisions.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels["intent"] not in kept:
                    self.decisions.remove(sample.labels["decision"], sample.labels["intent"], sample.labels["mode"])

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
