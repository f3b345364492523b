"""The clients of the soak test (:mod:`benchmarks.soak`): normal traffic at a fixed rate, and abusers.

Every client talks to 127.0.0.1 only and stops by itself: normal traffic after
a fixed number of requests, abusers when the ``stop`` event is set (a
connection they hold is closed then). The abusers run in a process of their
own (``python -m benchmarks.soak_clients URL ...``, for a fixed time), so
their work never delays the normal clients' own event loop, which would count
as the server's latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path
from dataclasses import dataclass, field
from typing import Awaitable, Iterator

import httpx

#: Texts per abusive /v1/gate batch (the API's limit).
HUGE_BATCH = 256
#: Characters per abusive text: with JSON quoting, the batch's body is just under the 1 MiB body limit.
HUGE_TEXT_CHARS = 4000
#: Declared length and bytes actually sent of a body that then stalls.
STALLED_BODY_BYTES = 1_000_000
STALLED_BODY_SENT = 500_000
#: Stands for each batch's serial number in its texts, so that every text is new (no cache helps).
_SERIAL = "SERIAL##"
#: Requests per second of the poison client.
POISON_RATE = 10.0
#: Bodies a client may not send: lone surrogates, NaN, broken or absurdly nested JSON, wrong shapes, a conversation
#: of 1,000 user turns (each turn is gated: its cost grows with the turns; docs/operations.md).
POISON = [
    ("/v1/gate", b'{"text": "x\\ud800"}'),
    ("/v1/gate", b'{"texts": ["ok", "\\udfff"]}'),
    ("/v1/gate", b'{"texts": ["a"], "n": NaN}'),
    ("/v1/gate", b'{"text": '),
    ("/v1/gate", b"[" * 50_000),
    ("/v1/gate", b'{"text": 3}'),
    ("/v1/gate", b'{"texts": []}'),
    ("/v1/gate", b'{"messages": [' + b", ".join([b'{"role": "user", "content": "hi"}'] * 1000) + b"]}"),
    ("/v1/chat/completions", b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}'),
    ("/v1/chat/completions", b'{"model": "m\\ud800", "messages": [{"role": "user", "content": "hi"}]}'),
]
#: How long an abuser waits after being refused (a 503, or its connection closed): the Retry-After of a 503.
#: One that never waits is a flood of new connections, for rate limits in front of the sidecar, not for it.
RECONNECT_PAUSE_S = 1.0


@dataclass
class Sample:
    """One normal request: its text, latency, status (0: no answer) and decision (accepted, intent)."""

    text: str
    latency_s: float
    status: int
    decision: tuple[bool, str | None] | None


@dataclass
class AbuseTally:
    """What the abusers did and got: ``outcomes`` counts ``"<kind> <status or error>"``, ``held_s`` how long the
    server let each kind of slow connection hang before closing it."""

    outcomes: Counter = field(default_factory=Counter)
    held_s: dict[str, list[float]] = field(default_factory=dict)


async def normal_traffic(client: httpx.AsyncClient, texts: Iterator[str], rate: float, seconds: float
                         ) -> list[Sample]:
    """``/v1/gate`` requests ``{"text": ...}`` at ``rate`` per second for ``seconds``, each sent on time, whatever
    the earlier ones are doing (an open loop, as independent users are)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    for number in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + number / rate - loop.time()))
        tasks.append(asyncio.create_task(_decide(client, next(texts))))
    return list(await asyncio.gather(*tasks))


async def _decide(client: httpx.AsyncClient, text: str) -> Sample:
    started = time.perf_counter()
    try:
        response = await client.post("/v1/gate", json={"text": text})
    except httpx.HTTPError:
        return Sample(text, time.perf_counter() - started, 0, None)
    latency = time.perf_counter() - started
    if response.status_code != 200:
        return Sample(text, latency, response.status_code, None)
    body = response.json()
    return Sample(text, latency, 200, (body["accepted"], body["intent"]))


async def abuse(base_url: str, stop: asyncio.Event, tally: AbuseTally, huge: int, slow_headers: int,
                slow_bodies: int) -> None:
    """Run abusers until ``stop`` is set: poison, ``huge`` clients sending huge batches back to back, and
    ``slow_headers`` + ``slow_bodies`` stalled connections, each reopened once the server closes it."""
    host, port = base_url.removeprefix("http://").split(":")
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        await asyncio.gather(
            *(_huge_batches(client, stop, tally, seed) for seed in range(huge)),
            _poison(client, stop, tally),
            *(_stalled(host, int(port), stop, tally, "slow_headers", _HALF_HEADERS) for _ in range(slow_headers)),
            *(_stalled(host, int(port), stop, tally, "slow_body", _HALF_BODY) for _ in range(slow_bodies)))


async def _huge_batches(client: httpx.AsyncClient, stop: asyncio.Event, tally: AbuseTally, seed: int) -> None:
    """Back-to-back batches of 256 long texts (~1 MB), every text new (no cache helps)."""
    rng = random.Random(seed)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(500)]
    texts = [f"{_SERIAL}-{seed}-{index} " + " ".join(rng.choices(words, k=HUGE_TEXT_CHARS // 5))[:HUGE_TEXT_CHARS]
             for index in range(HUGE_BATCH)]
    template = json.dumps({"texts": texts}).encode()  # encoded once: the load generator must not eat the CPU
    number = 0
    while not stop.is_set():
        number += 1
        body = template.replace(_SERIAL.encode(), b"%08d" % number)
        if not await _count(tally, "huge_batch", client.post("/v1/gate", content=body,
                                                             headers={"content-type": "application/json"})):
            await asyncio.sleep(RECONNECT_PAUSE_S)


async def _poison(client: httpx.AsyncClient, stop: asyncio.Event, tally: AbuseTally) -> None:
    """Bad bodies at :data:`POISON_RATE` per second."""
    number = 0
    while not stop.is_set():
        path, body = POISON[number % len(POISON)]
        number += 1
        await _count(tally, "poison", client.post(path, content=body, headers={"content-type": "application/json"}))
        await asyncio.sleep(1 / POISON_RATE)


async def _count(tally: AbuseTally, kind: str, request: Awaitable[httpx.Response]) -> bool:
    """Send ``request`` and count its outcome; whether it was answered at all, and not with a 503."""
    try:
        response = await request
    except httpx.HTTPError as error:
        tally.outcomes[f"{kind} {type(error).__name__}"] += 1
        return False
    tally.outcomes[f"{kind} {response.status_code}"] += 1
    return response.status_code != 503


_HALF_HEADERS = b"POST /v1/gate HTTP/1.1\r\nHost: soak\r\nContent-Type: applic"
_HALF_BODY = (b"POST /v1/gate HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % STALLED_BODY_BYTES + b'{"texts": ["' + b"a" * STALLED_BODY_SENT)


async def _stalled(host: str, port: int, stop: asyncio.Event, tally: AbuseTally, kind: str, data: bytes) -> None:
    """Send ``data`` (half a request), then wait for the server to answer or close; again, until ``stop``."""
    while not stop.is_set():
        opened = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as error:
            tally.outcomes[f"{kind} {type(error).__name__}"] += 1
            await asyncio.sleep(RECONNECT_PAUSE_S)
            continue
        try:
            writer.write(data)
            answer = await _until_closed(reader, writer, stop)
        except OSError as error:  # the server closed it while we were still sending
            answer = type(error).__name__.encode()
        finally:
            writer.close()
        if answer is None:
            return
        tally.held_s.setdefault(kind, []).append(time.monotonic() - opened)
        outcome = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/1.1 ") else answer or b"closed"
        tally.outcomes[f"{kind} {outcome.decode(errors='replace')}"] += 1
        await asyncio.sleep(RECONNECT_PAUSE_S)


async def _until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: asyncio.Event
                        ) -> bytes | None:
    """What the server sent before closing the connection, or None if ``stop`` came first."""
    reading = asyncio.ensure_future(_drain_then_read(reader, writer))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait((reading, stopping), return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not reading.done():
        reading.cancel()
        return None
    return reading.result()


async def _drain_then_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    await writer.drain()
    return await reader.read()


async def _abuse_for(base_url: str, seconds: float, huge: int, slow_headers: int, slow_bodies: int) -> AbuseTally:
    stop, tally = asyncio.Event(), AbuseTally()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    await abuse(base_url, stop, tally, huge, slow_headers, slow_bodies)
    return tally


def main() -> int:
    """Run the abusers against a server for a fixed time; write what they got as JSON."""
    parser = argparse.ArgumentParser(description="the soak test's abusers (see benchmarks/soak.py)")
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:8080 (loopback)")
    parser.add_argument("--seconds", type=float, required=True, help="how long to abuse it")
    parser.add_argument("--huge", type=int, default=0, help="clients sending huge batches")
    parser.add_argument("--slow-headers", type=int, default=0, help="connections stalled in their headers")
    parser.add_argument("--slow-bodies", type=int, default=0, help="connections stalled in their bodies")
    parser.add_argument("--out", required=True, help="JSON file for the outcomes")
    args = parser.parse_args()
    tally = asyncio.run(_abuse_for(args.url, args.seconds, args.huge, args.slow_headers, args.slow_bodies))
    Path(args.out).write_text(json.dumps({"outcomes": tally.outcomes, "held_s": tally.held_s}), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
