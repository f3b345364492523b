"""Micro-batching: concurrent callers share encoder calls; an idle caller never waits."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import numpy as np
import pytest

from gatekeeper.embedders import EmbeddingError
from gatekeeper.server.batching import MicroBatcher


class RecordingEmbedder:
    """Returns [number in the text, length] per text after ``delay`` seconds; records each call's texts."""

    dim = 2
    fingerprint = "recording"

    def __init__(self, delay: float = 0.0, fail: bool = False, rows: int | None = None):
        self.delay = delay
        self.fail = fail
        self.rows = rows
        self.calls: list[list[str]] = []
        self.threads: set[str] = set()

    def encode(self, texts, *, is_query: bool = False) -> np.ndarray:
        assert is_query
        self.calls.append(list(texts))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if self.fail:
            raise EmbeddingError("encoder down")
        vectors = np.array([[float(text.split()[-1]), len(text)] for text in texts], dtype=np.float32)
        return vectors[: self.rows] if self.rows is not None else vectors


def run(coroutine):
    return asyncio.run(coroutine)


async def embed_all(batcher: MicroBatcher, embedder, groups: list[list[str]]) -> list[np.ndarray]:
    try:
        return await asyncio.gather(*(batcher.embed(embedder, texts) for texts in groups))
    finally:
        await batcher.close()


def test_an_idle_request_goes_to_the_encoder_at_once():
    embedder = RecordingEmbedder()

    async def one() -> float:
        batcher = MicroBatcher(max_wait_s=0.2)  # a window far longer than the call
        try:
            started = time.perf_counter()
            await batcher.embed(embedder, ["text 1"])
            return time.perf_counter() - started
        finally:
            await batcher.close()

    assert run(one()) < 0.1
    assert embedder.calls == [["text 1"]]
    assert embedder.threads == {"gatekeeper-encoder_0"}  # off the event loop, in the encoder thread


def test_requests_queued_behind_a_busy_encoder_share_one_call():
    embedder = RecordingEmbedder(delay=0.05)
    groups = [[f"message {i}"] for i in range(20)]
    sizes: list[int] = []
    results = run(embed_all(MicroBatcher(max_batch=64, on_batch=sizes.append), embedder, groups))
    assert sum(sizes) == 20 and len(embedder.calls) == len(sizes) <= 3
    assert max(sizes) >= 10
    for i, vectors in enumerate(results):  # every caller gets its own rows back
        assert vectors.tolist() == [[float(i), len(f"message {i}")]]


def test_multi_text_requests_and_the_batch_limit():
    embedder = RecordingEmbedder(delay=0.02)
    groups = [[f"a {i}", f"b {i}", f"c {i}"] for i in range(10)]
    results = run(embed_all(MicroBatcher(max_batch=8), embedder, groups))
    assert all(len(call) <= 8 + 2 for call in embedder.calls)  # a request is never split: at most max + 2 extra
    assert [r[:, 0].tolist() for r in results] == [[float(i)] * 3 for i in range(10)]


def test_the_collect_window_waits_for_more_only_under_load():
    embedder = RecordingEmbedder(delay=0.03)

    async def staggered() -> None:
        batcher = MicroBatcher(max_batch=64, max_wait_s=0.2)
        try:
            first = asyncio.ensure_future(batcher.embed(embedder, ["x 0"]))
            await asyncio.sleep(0.005)  # encoder busy with x 0: the next two queue up
            second = [asyncio.ensure_future(batcher.embed(embedder, [f"x {i}"])) for i in (1, 2)]
            await asyncio.sleep(0.05)  # they are taken together; within the window a straggler joins
            late = asyncio.ensure_future(batcher.embed(embedder, ["x 3"]))
            await asyncio.gather(first, *second, late)
        finally:
            await batcher.close()

    run(staggered())
    assert embedder.calls == [["x 0"], ["x 1", "x 2", "x 3"]]


def test_callers_that_all_leave_while_a_batch_collects_do_not_stop_the_batcher():
    """Every waiting caller gone during the collect window (a load generator stopping, deadlines) left the worker
    an empty queue to build a call from: it died, and every later request waited out its deadline."""
    embedder = RecordingEmbedder(delay=0.05)

    async def scenario() -> np.ndarray:
        batcher = MicroBatcher(max_wait_s=0.2)
        try:
            first = asyncio.ensure_future(batcher.embed(embedder, ["x 0"]))
            await asyncio.sleep(0.01)  # the encoder is busy with x 0: the next two wait, then are collected
            leaving = [asyncio.ensure_future(batcher.embed(embedder, [f"x {i}"])) for i in (1, 2)]
            await first
            await asyncio.sleep(0.05)  # inside the collect window
            for caller in leaving:
                caller.cancel()
            await asyncio.gather(*leaving, return_exceptions=True)
            return await asyncio.wait_for(batcher.embed(embedder, ["x 3"]), 1.0)
        finally:
            await batcher.close()

    assert run(scenario()).tolist() == [[3.0, 3.0]]
    assert embedder.calls == [["x 0"], ["x 3"]]


def test_an_encoder_failure_reaches_every_caller_of_the_batch_then_recovers():
    embedder = RecordingEmbedder(delay=0.02, fail=True)

    async def scenario() -> list[object]:
        batcher = MicroBatcher()
        try:
            outcomes = await asyncio.gather(*(batcher.embed(embedder, [f"t {i}"]) for i in range(5)),
                                            return_exceptions=True)
            embedder.fail = False
            outcomes.append(await batcher.embed(embedder, ["t 9"]))
            return outcomes
        finally:
            await batcher.close()

    outcomes = run(scenario())
    assert all(isinstance(outcome, EmbeddingError) for outcome in outcomes[:5])
    assert outcomes[5].tolist() == [[9.0, 3.0]]


def test_a_wrong_number_of_vectors_is_an_error():
    with pytest.raises(EmbeddingError, match="returned 1 vectors for 2 texts"):
        run(embed_all(MicroBatcher(), RecordingEmbedder(rows=1), [["a 1", "b 2"]]))


def test_different_embedders_are_never_mixed_in_one_call():
    old, new = RecordingEmbedder(delay=0.02), RecordingEmbedder(delay=0.02)

    async def mixed() -> None:
        batcher = MicroBatcher()
        try:
            await asyncio.gather(*(batcher.embed(old if i % 2 else new, [f"m {i}"]) for i in range(6)))
        finally:
            await batcher.close()

    run(mixed())
    assert sorted(t for call in old.calls for t in call) == ["m 1", "m 3", "m 5"]
    assert sorted(t for call in new.calls for t in call) == ["m 0", "m 2", "m 4"]


def test_empty_input_needs_no_encoder_call():
    embedder = RecordingEmbedder()
    [vectors] = run(embed_all(MicroBatcher(), embedder, [[]]))
    assert vectors.shape == (0, 2) and embedder.calls == []


def test_concurrent_http_requests_are_batched_end_to_end(telecom_gate, asgi_sidecar):
    sidecar = asgi_sidecar(telecom_gate)
    texts = [f"我想查第{i}个月的话费" for i in range(24)]

    async def burst(client: httpx.AsyncClient) -> list[httpx.Response]:
        return await asyncio.gather(*(client.post("/v1/gate", json={"text": text}) for text in texts))

    responses = sidecar.run_async(burst)
    assert [r.json()["text"] for r in responses] == texts
    assert all(r.json()["accepted"] for r in responses)
    calls = sidecar.metric("gatekeeper_batch_size_count")
    assert sidecar.metric("gatekeeper_batch_size_sum") == 24
    assert calls < 24  # at least some requests shared an encoder call
