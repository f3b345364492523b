"""Micro-batching: concurrent requests share single encoder calls, run in a worker thread.

Requests queue their texts; one worker task takes them in order and runs the
encoder in a dedicated single thread (so encoder calls never compete for the
CPU with each other, and the event loop stays free). Batches form on their own:

* idle server: the first request goes to the encoder at once, no waiting;
* under load: everything that queued while the encoder was busy goes in the
  next call, and, when more than one request was waiting, the worker collects
  for up to ``max_wait_s`` more (a few hundred microseconds; the event loop's
  timer resolution is about a millisecond) before calling the encoder.

So single-request latency is never raised, and throughput under load rises
with the batch size. A call that fails on one request's input is retried
request by request, so that request fails alone.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from gatekeeper.embedders import Embedder, EmbeddingError

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    embedder: Embedder
    texts: list[str]
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Batches :meth:`embed` calls of concurrent coroutines into single encoder calls."""

    def __init__(self, max_batch: int = 64, max_wait_s: float = 0.0003,
                 on_batch: Callable[[int], None] | None = None):
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gatekeeper-encoder")

    async def embed(self, embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` as queries with ``embedder``, sharing an encoder call with concurrent callers.

        Raises whatever the encoder raised.
        """
        if not texts:
            return np.zeros((0, embedder.dim), dtype=np.float32)
        if self._worker is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run(), name="gatekeeper-batcher")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(embedder, list(texts), future))
        return await future

    async def close(self) -> None:
        """Stop the worker and the encoder thread; waiting callers are cancelled."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            while self._queue is not None and not self._queue.empty():
                self._queue.get_nowait().future.cancel()
            self._worker = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0].texts)
            size = self._take_ready(batch, size)
            if len(batch) > 1 and self.max_wait_s > 0:
                size = await self._collect(batch, size)
            await self._encode(batch)

    def _take_ready(self, batch: list[_Pending], size: int) -> int:
        """Add what is already queued, up to ``max_batch`` texts."""
        assert self._queue is not None
        while size < self.max_batch and not self._queue.empty():
            item = self._queue.get_nowait()
            batch.append(item)
            size += len(item.texts)
        return size

    async def _collect(self, batch: list[_Pending], size: int) -> int:
        """Wait up to ``max_wait_s`` for more requests (only called when there is load)."""
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while size < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                item = await asyncio.wait_for(self._queue.get(), remaining)
            except TimeoutError:
                break
            batch.append(item)
            size += len(item.texts)
        return size

    async def _encode(self, batch: list[_Pending]) -> None:
        """One encoder call per embedder in the batch (one, except right after a model-changing reload).

        If a call for several requests fails on its input (any error but
        :class:`EmbeddingError`), each request is retried alone, once, so one
        request's bad text never fails another's. An :class:`EmbeddingError`
        means the backend itself failed (model missing, endpoint down, bad
        reply): it goes to every caller at once, since retrying each would only
        multiply the outage's latency.
        """
        groups: dict[int, list[_Pending]] = {}
        for item in batch:
            groups.setdefault(id(item.embedder), []).append(item)
        for items in groups.values():
            error = await self._encode_together(items)
            if error is None:
                continue
            if len(items) == 1 or isinstance(error, EmbeddingError):
                failures = [(item, error) for item in items]
            else:
                log.warning("batch_split", extra={"requests": len(items), "error": type(error).__name__})
                failures = [(item, await self._encode_together([item])) for item in items]
            for item, failure in failures:
                if failure is not None and not item.future.done():
                    item.future.set_exception(failure)

    async def _encode_together(self, items: list[_Pending]) -> Exception | None:
        """Encode the texts of ``items`` in one call and give each caller its rows; the call's error, or None."""
        texts = [text for item in items for text in item.texts]
        if self._on_batch:
            self._on_batch(len(texts))
        try:
            vectors = await asyncio.get_running_loop().run_in_executor(
                self._executor, _encode_queries, items[0].embedder, texts)
            if len(vectors) != len(texts):
                raise EmbeddingError(f"the encoder returned {len(vectors)} vectors for {len(texts)} texts")
        except Exception as error:  # the caller applies its failure policy
            return error
        start = 0
        for item in items:
            if not item.future.done():
                item.future.set_result(vectors[start:start + len(item.texts)])
            start += len(item.texts)
        return None


def _encode_queries(embedder: Embedder, texts: list[str]) -> np.ndarray:
    return embedder.encode(texts, is_query=True)
