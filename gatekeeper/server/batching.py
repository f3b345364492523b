"""Micro-batching: concurrent requests share encoder calls, run in worker threads, taking turns fairly.

Requests queue their texts; a worker task builds encoder calls from them and
runs the encoder in a dedicated thread (so the event loop stays free). Batches
form on their own:

* idle server: the first request goes to the encoder at once, no waiting;
* under load: the waiting requests share the next call, and, when more than
  one request is waiting, the worker collects for up to ``max_wait_s`` more (a
  few hundred microseconds; the event loop's timer resolution is about a
  millisecond) before calling the encoder.

No request holds the encoder for long. A call takes at most ``max_batch``
texts and ``max_chars`` characters (always at least one text), taken
round-robin, one text per waiting request in turn. So a big request is encoded
in chunks, and a small one that arrives meanwhile is in the very next call:
it waits about one chunk, not the whole big request.

A text cannot be split, and one of a couple of thousand characters takes the
encoder ~100 ms. So texts longer than ``long_chars`` go to a second lane, its
own queue and encoder thread: short messages, nearly all of real traffic,
never wait behind a long one. With no long texts about, that lane is idle.

The queue is bounded: past ``max_queued`` waiting texts, or past a quarter of
that for one request, :meth:`MicroBatcher.embed` raises :class:`Overloaded` at
once. A caller that stops waiting (a deadline, a client gone) leaves the
queue, so abandoned texts are never encoded. A call that fails on one
request's input is retried request by request, so that request fails alone.

A request may come with a ``finish`` function (:meth:`MicroBatcher.process`):
once all of its texts are embedded, the lane's decision thread hands their
vectors to it, together with every other request of the same ``finish`` that
the encoder call completed, and the request gets what it returns (a gate's
decisions). So a batch is scored in one go, off the event loop, which only
queues requests and wakes their callers; and while the decision thread scores
one batch, the encoder thread already encodes the next (the two overlap where
NumPy, BLAS and FAISS release the GIL).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from gatekeeper.core.index import search_on_this_thread_alone
from gatekeeper.embedders import Embedder, EmbeddingError

log = logging.getLogger(__name__)


#: Turns the vectors of several requests (one array per payload, in order) into each request's result, in a
#: lane's decision thread. A result that is an exception fails that request with it; an exception raised fails every
#: request of the call as :class:`FinishFailed`.
Finish = Callable[[list[Any], list[np.ndarray]], list[Any]]


class Overloaded(Exception):
    """The encoder queue is full: shed the request (503 with Retry-After), do not wait."""


class FinishFailed(Exception):
    """A request's ``finish`` raised after its texts were embedded (a bug, not an encoder failure); the error is
    chained as ``__cause__``."""


@dataclass(eq=False)  # compared by identity: the same texts may be queued twice
class _Pending:
    """One caller's texts in a lane; ``taken`` of them went to the encoder, their vectors are in ``parts``.

    With a ``finish``, the caller gets ``finish([payload], [vectors])[0]`` instead of the vectors.
    """

    embedder: Embedder
    texts: list[str]
    future: asyncio.Future = field(repr=False)
    finish: Finish | None = None
    payload: Any = field(default=None, repr=False)
    taken: int = 0
    parts: list[np.ndarray] = field(default_factory=list, repr=False)

    @property
    def waiting(self) -> int:
        """Texts not sent to the encoder yet."""
        return len(self.texts) - self.taken


@dataclass(frozen=True)
class _Slice:
    """Texts ``start`` to ``start + count`` of one caller, in an encoder call."""

    item: _Pending
    start: int
    count: int

    @property
    def texts(self) -> list[str]:
        """The texts of the slice."""
        return self.item.texts[self.start:self.start + self.count]


class MicroBatcher:
    """Batches :meth:`embed` calls of concurrent coroutines into fair, bounded encoder calls, in two lanes."""

    def __init__(self, max_batch: int = 64, max_wait_s: float = 0.0003,
                 on_batch: Callable[[int], None] | None = None, max_chars: int = 1024, max_queued: int = 1024,
                 long_chars: int = 256):
        self.max_queued = max_queued
        #: One request may take a quarter of the queue at most, so a few big ones never crowd out everyone else.
        self.max_per_request = max(1, max_queued // 4)
        self.long_chars = long_chars
        self._short = _Lane("gatekeeper-encoder", max_batch, max_wait_s, max_chars, on_batch)
        self._long = _Lane("gatekeeper-encoder-long", max_batch, max_wait_s, max_chars, on_batch)

    @property
    def queued(self) -> int:
        """Texts waiting for the encoder."""
        return self._short.queued + self._long.queued

    async def embed(self, embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` as queries with ``embedder``, sharing encoder calls with concurrent callers.

        Raises :class:`Overloaded` at once when ``texts`` do not fit in the
        queue, or are more than one request may queue, else whatever the encoder raised.
        """
        if not texts:
            return np.zeros((0, embedder.dim), dtype=np.float32)
        self._admit(len(texts))
        long = np.array([len(text) > self.long_chars for text in texts])
        if long.all() or not long.any():
            return await (self._long if long[0] else self._short).embed(embedder, list(texts))
        lanes = [asyncio.ensure_future(lane.embed(embedder, [text for text, chosen in zip(texts, mask) if chosen]))
                 for lane, mask in ((self._short, ~long), (self._long, long))]
        try:
            short, longer = await asyncio.gather(*lanes)
        except BaseException:  # a failure, or the caller stopped waiting: the other lane stops too
            for lane in lanes:
                lane.cancel()
            raise
        vectors = np.empty((len(texts), short.shape[1]), dtype=short.dtype)
        vectors[~long], vectors[long] = short, longer
        return vectors

    async def process(self, embedder: Embedder, texts: Sequence[str], finish: Finish, payload: Any) -> Any:
        """Embed ``texts`` as :meth:`embed` does, then, in the decision thread, ``finish`` them with ``payload``.

        Requests of the same ``finish`` completed by one encoder call are
        finished together, in one call of ``finish``. A request with a long
        text goes whole to the long texts' lane. Raises as :meth:`embed` does,
        the exception a ``finish`` returned for this request, or
        :class:`FinishFailed` if it raised.
        """
        if not texts:  # nothing to encode: finished here, at once
            return _result(_finish_group(finish, [payload], [np.zeros((0, embedder.dim), dtype=np.float32)])[0])
        self._admit(len(texts))
        lane = self._long if any(len(text) > self.long_chars for text in texts) else self._short
        return _result(await lane.embed(embedder, list(texts), finish, payload))

    def _admit(self, count: int) -> None:
        """Raise :class:`Overloaded` unless ``count`` more texts of one request fit in the queue."""
        if count > self.max_per_request:
            raise Overloaded(f"this request needs {count} texts encoded, and one request may queue at most "
                             f"{self.max_per_request} (a quarter of max_queued_texts={self.max_queued}); send fewer "
                             "texts or messages")
        queued = self.queued
        if queued + count > self.max_queued:
            raise Overloaded(f"{queued} texts are already waiting for the encoder (limit max_queued_texts="
                             f"{self.max_queued}); retry after a moment, or add replicas")

    async def close(self) -> None:
        """Stop the workers and the lanes' threads; waiting callers are cancelled."""
        await self._short.close()
        await self._long.close()


class _Lane:
    """One encoder thread, its fair queue, the worker that turns the queue into encoder calls, and the decision
    thread that finishes the requests those calls complete."""

    def __init__(self, thread_name: str, max_batch: int, max_wait_s: float, max_chars: int,
                 on_batch: Callable[[int], None] | None):
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_chars = max_chars
        self.queued = 0
        self._on_batch = on_batch
        self._waiting: deque[_Pending] = deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        # The decision thread's FAISS searches run on it alone (OpenMP's thread count is per thread).
        self._decider = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name.replace("encoder", "decider"),
                                           initializer=search_on_this_thread_alone)

    async def embed(self, embedder: Embedder, texts: list[str], finish: Finish | None = None,
                    payload: Any = None) -> Any:
        """Queue ``texts`` (at least one) and wait for their vectors, or with a ``finish``, its result for them."""
        if self._worker is None:
            self._arrived = asyncio.Event()
            self._worker = asyncio.create_task(self._run(), name="gatekeeper-batcher")
        pending = _Pending(embedder, texts, asyncio.get_running_loop().create_future(), finish, payload)
        self._waiting.append(pending)
        self.queued += len(texts)
        self._arrived.set()
        try:
            return await pending.future
        except asyncio.CancelledError:  # the caller stopped waiting: its texts leave the queue
            self._drop(pending)
            raise

    async def close(self) -> None:
        """Stop the worker and the threads; waiting callers are cancelled."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        while self._waiting:
            self._waiting.popleft().future.cancel()
        self.queued = 0
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._decider.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        assert self._arrived is not None
        while True:
            while not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
            if len(self._waiting) > 1 and self.max_wait_s > 0:
                await self._collect()
            if self._waiting:  # every caller may have left while it collected (clients gone, deadlines)
                await self._encode(self._next_call())

    async def _collect(self) -> None:
        """Wait up to ``max_wait_s`` for more requests (only called when there is load)."""
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while self.queued < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _next_call(self) -> list[_Slice]:
        """The texts of the next encoder call, and rotate the queue.

        One text per waiting request in turn (requests of the first one's
        embedder only: never two models in one call), until the call holds
        ``max_batch`` texts or the next text would pass ``max_chars``. Requests
        served go to the back of the queue, so the others go first next time.
        """
        embedder = self._waiting[0].embedder
        members = [item for item in self._waiting if item.embedder is embedder]
        counts = dict.fromkeys(members, 0)
        available = sum(item.waiting for item in members)
        size = chars = 0
        full = False
        while not full and size < available:
            for item in members:
                position = item.taken + counts[item]
                if position == len(item.texts):
                    continue
                length = len(item.texts[position])
                if size == self.max_batch or (size and chars + length > self.max_chars):
                    full = True
                    break
                counts[item] += 1
                size += 1
                chars += length
        call = [_Slice(item, item.taken, count) for item, count in counts.items() if count]
        for part in call:
            part.item.taken += part.count
            self.queued -= part.count
            self._waiting.remove(part.item)
            if part.item.waiting:
                self._waiting.append(part.item)
        return call

    def _drop(self, item: _Pending) -> None:
        """Take ``item`` out of the queue (failed, or its caller stopped waiting)."""
        if item in self._waiting:
            self._waiting.remove(item)
            self.queued -= item.waiting
        item.taken = len(item.texts)

    async def _encode(self, call: list[_Slice]) -> None:
        """One encoder call; if it fails on its input, each request's part is retried alone, once.

        So one request's bad text never fails another's. An
        :class:`EmbeddingError` means the backend itself failed (model missing,
        endpoint down, bad reply): it goes to every caller in the call at once,
        since retrying each would only multiply the outage's latency. A failed
        request leaves the queue.
        """
        error = await self._encode_together(call)
        if error is None:
            return
        if len(call) == 1 or isinstance(error, EmbeddingError):
            failures = [(part, error) for part in call]
        else:
            log.warning("batch_split", extra={"requests": len(call), "error": type(error).__name__})
            failures = [(part, await self._encode_together([part])) for part in call]
        for part, failure in failures:
            if failure is not None:
                self._drop(part.item)
                if not part.item.future.done():
                    part.item.future.set_exception(failure)

    async def _encode_together(self, call: list[_Slice]) -> Exception | None:
        """Encode the slices in one call; hand each caller its rows when all of its texts are done, or, with a
        ``finish``, hand the request to the decision thread (:meth:`_decide`).

        Returns the call's error, or None.
        """
        texts = [text for part in call for text in part.texts]
        if self._on_batch:
            self._on_batch(len(texts))
        try:
            vectors = await asyncio.get_running_loop().run_in_executor(
                self._executor, _encode_queries, call[0].item.embedder, texts)
        except Exception as error:  # the caller applies its failure policy
            return error
        offset = 0
        done: list[_Pending] = []
        for part in call:
            item = part.item
            item.parts.append(vectors[offset:offset + part.count])
            offset += part.count
            if part.start + part.count == len(item.texts) and not item.future.done():
                if item.finish is None:
                    item.future.set_result(_joined(item.parts))
                else:
                    done.append(item)
        if done:
            self._decide(done)
        return None

    def _decide(self, items: list[_Pending]) -> None:
        """Finish ``items`` in the decision thread; each caller gets its result when that is done. The worker does
        not wait for it: the next encoder call starts meanwhile."""
        decided = asyncio.get_running_loop().run_in_executor(self._decider, _finish_all, items)
        decided.add_done_callback(functools.partial(_deliver, items))


def _encode_queries(embedder: Embedder, texts: list[str]) -> np.ndarray:
    """In the encoder thread: the query vectors of ``texts``, one per text."""
    vectors = embedder.encode(texts, is_query=True)
    if len(vectors) != len(texts):
        raise EmbeddingError(f"the encoder returned {len(vectors)} vectors for {len(texts)} texts")
    return vectors


def _finish_all(items: list[_Pending]) -> list[Any]:
    """In the decision thread: each item's result; the items of one ``finish`` are finished together."""
    groups: dict[Finish, list[int]] = {}
    for position, item in enumerate(items):
        groups.setdefault(item.finish, []).append(position)  # type: ignore[arg-type]
    results: list[Any] = [None] * len(items)
    for finish, positions in groups.items():
        finished = _finish_group(finish, [items[p].payload for p in positions], [_joined(items[p].parts)
                                                                                for p in positions])
        for position, result in zip(positions, finished):
            results[position] = result
    return results


def _deliver(items: list[_Pending], decided: asyncio.Future) -> None:
    """On the event loop: hand each caller still waiting its result (nothing if the lane closed meanwhile)."""
    if decided.cancelled():
        return
    for item, result in zip(items, decided.result()):
        if not item.future.done():
            item.future.set_result(result)


def _finish_group(finish: Finish, payloads: list[Any], vectors: list[np.ndarray]) -> list[Any]:
    """``finish`` applied to requests together; if it raises, each request's result is a :class:`FinishFailed`."""
    try:
        results = finish(payloads, vectors)
        if len(results) != len(payloads):
            raise RuntimeError(f"{finish.__name__} returned {len(results)} results for {len(payloads)} requests")
        return results
    except Exception as error:  # a bug: every request of the group fails with it, the thread goes on
        log.exception("finish_failed", extra={"requests": len(payloads), "error": type(error).__name__})
        return [_chained(FinishFailed(f"deciding the request failed after its encoder call: "
                                      f"{type(error).__name__}: {error}"), error) for _ in payloads]


def _chained(failure: Exception, cause: Exception) -> Exception:
    """``failure`` with ``cause`` as its ``__cause__``."""
    failure.__cause__ = cause
    return failure


def _result(result: Any) -> Any:
    """A finished request's result; raised when it is an exception."""
    if isinstance(result, BaseException):
        raise result
    return result


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """The rows of a request encoded in one or more calls, in order."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
