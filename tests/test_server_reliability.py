"""Reliability under abuse (issue #13): fair encoder scheduling, slow clients, bad vectors from the embedding
backend, deadlines and load shedding, the small fixes (SIGHUP, disconnects, reloads, redirects, OpenAPI), normal
clients beside abusive ones, and the soak benchmark in its short mode.

The sidecar in process where the app's behaviour is the point; real HTTP and raw sockets on 127.0.0.1 where the
server's is (slow and stalled connections, disconnects, signals, abusive clients). Every loop is bounded in count and
time.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from gatekeeper.embedders import EmbeddingError
from gatekeeper.embedders.openai_endpoint import OpenAIEndpointEmbedder, checked_vectors
from gatekeeper.gate import Gate
from gatekeeper.server.batching import MicroBatcher, Overloaded
from gatekeeper.server.metrics import Metrics
from gatekeeper.server.state import GateState
from tests.conftest import REPO
from tests.embedding_server import EmbeddingServer
from tests.server_fixtures import NEW_INTENT, OFF_TOPIC, ON_TOPIC, SHOP, chat_body, free_port, write_catalog

#: Messages for the telecom catalog whose decisions normal clients check.
NORMAL = [f"我想查第{i}个月的话费" for i in range(8)] + [ON_TOPIC, OFF_TOPIC, "宽带又断网了", "怎么开通国际漫游",
                                                   "推荐几部好看的电影", "what's the weather like tomorrow?",
                                                   "帮我查下流量还剩多少", "我要投诉你们的服务"]
#: A text as long as the catalog keeps (max_chars), costing the encoder ~100 ms.
LONG_TEXT = ("my bill is wrong again and nobody answers the phone " * 40)[:2000]


def run(coroutine):
    return asyncio.run(coroutine)


def gate_json(sidecar, body: dict) -> httpx.Response:
    return sidecar.client.post("/v1/gate", json=body)


def expect_decision(response: httpx.Response, gate: Gate, text: str) -> None:
    """``response`` is a 200 with the decision ``gate`` makes on ``text`` in-process."""
    assert response.status_code == 200, response.text
    expected = gate.decide(text)
    assert (response.json()["accepted"], response.json()["intent"]) == (expected.accepted, expected.intent)


def openai_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["type"]
    return error


# 1. Head-of-line blocking: big requests are encoded in chunks, taking turns.

class CostEmbedder:
    """Takes 10 µs per character of each call (as a real encoder, roughly); vectors [number in the text, length]."""

    dim = 2
    fingerprint = "cost"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts, *, is_query: bool = False) -> np.ndarray:
        self.calls.append(list(texts))
        time.sleep(sum(map(len, texts)) * 1e-5)
        return np.array([[float(text.split()[0]), len(text)] for text in texts], dtype=np.float32)


async def timed(coroutine) -> tuple[object, float]:
    started = time.perf_counter()
    return await coroutine, time.perf_counter() - started


@pytest.mark.parametrize("long_chars", [10**6, 256], ids=["one-lane", "long-texts-lane"])
def test_a_small_request_waits_about_one_chunk_behind_a_big_one(long_chars):
    embedder = CostEmbedder()
    big = [f"{i} {LONG_TEXT}" for i in range(64)]  # ~1.3 s of encoding

    async def scenario():
        batcher = MicroBatcher(max_batch=64, max_chars=4000, long_chars=long_chars)
        try:
            first = asyncio.ensure_future(timed(batcher.embed(embedder, big)))
            await asyncio.sleep(0.05)
            small = await timed(batcher.embed(embedder, ["7 how much is my bill"]))
            return await first, small
        finally:
            await batcher.close()

    (big_vectors, big_s), (small_vectors, small_s) = run(scenario())
    assert small_s < 0.15 < big_s  # one chunk (~40 ms), not the whole big request
    assert big_vectors[:, 0].tolist() == list(range(64)) and small_vectors.tolist() == [[7.0, 21.0]]
    assert all(sum(map(len, call)) <= 4000 or len(call) == 1 for call in embedder.calls)


def test_requests_take_turns_and_mixed_lengths_come_back_in_order():
    embedder = CostEmbedder()
    mixed = [f"{i} {LONG_TEXT if i % 3 else 'short'}" for i in range(9)]  # long ones go to the other lane

    async def scenario():
        batcher = MicroBatcher(max_batch=4, max_chars=10**6)
        try:
            groups = (batcher.embed(embedder, [f"{i} g{n}" for n in range(8)]) for i in (10, 11, 12))
            return await asyncio.gather(*groups, batcher.embed(embedder, mixed))
        finally:
            await batcher.close()

    *groups, mixed_vectors = run(scenario())
    assert [group[:, 0].tolist() for group in groups] == [[float(i)] * 8 for i in (10, 11, 12)]
    assert mixed_vectors[:, 0].tolist() == list(range(9))
    assert mixed_vectors[:, 1].tolist() == [float(len(text)) for text in mixed]
    first_call = next(call for call in embedder.calls if any(" g" in text for text in call))
    assert len(first_call) == 4 and {"10", "11", "12"} <= {text.split()[0] for text in first_call}  # turns


class BlockedEmbedder:
    """Blocks every call until :attr:`release` is set (5 s at most); vectors [number in the text, length]."""

    dim = 2
    fingerprint = "blocked"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[list[str]] = []

    def encode(self, texts, *, is_query: bool = False) -> np.ndarray:
        self.calls.append(list(texts))
        self.release.wait(5)
        return np.array([[float(text.split()[0]), len(text)] for text in texts], dtype=np.float32)


def test_a_full_queue_sheds_at_once_and_a_caller_that_leaves_frees_its_place():
    embedder = BlockedEmbedder()

    async def scenario() -> None:
        batcher = MicroBatcher(max_queued=8)
        try:
            busy = asyncio.ensure_future(batcher.embed(embedder, ["1 a"]))  # taken by the encoder: not queued
            await asyncio.sleep(0.05)
            waiting = [asyncio.ensure_future(batcher.embed(embedder, [f"2 {i}a", f"2 {i}b"])) for i in range(4)]
            await asyncio.sleep(0.01)
            with pytest.raises(Overloaded, match="max_queued_texts=8"):
                await batcher.embed(embedder, ["3 a"])
            with pytest.raises(Overloaded, match="one request may queue at most 2"):
                await batcher.embed(embedder, ["4"] * 3)
            for request in waiting:
                request.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
            assert batcher.queued == 0
            admitted = asyncio.ensure_future(batcher.embed(embedder, ["5 a"]))
            embedder.release.set()
            assert (await admitted).tolist() == [[5.0, 3.0]] and (await busy).tolist() == [[1.0, 3.0]]
        finally:
            embedder.release.set()
            await batcher.close()

    run(scenario())
    assert not any(text.startswith("2 ") for call in embedder.calls for text in call)  # abandoned: never encoded


def test_one_huge_gate_batch_does_not_hold_up_other_clients(telecom_gate, asgi_sidecar):
    sidecar = asgi_sidecar(telecom_gate)
    huge = {"texts": [f"{i} {LONG_TEXT}" for i in range(256)]}  # ~25 s of encoding in one piece

    async def scenario(client: httpx.AsyncClient):
        big = asyncio.ensure_future(client.post("/v1/gate", json=huge))
        await asyncio.sleep(0.3)
        small = []
        for text in NORMAL[:5]:
            started = time.perf_counter()
            small.append((text, await client.post("/v1/gate", json={"text": text}), time.perf_counter() - started))
        return await big, small

    big, small = sidecar.run_async(scenario)
    for text, response, seconds in small:
        expect_decision(response, telecom_gate, text)
        assert seconds < 1.0
    assert "gate_timeout_s" in openai_error(big, 503, "gate_timeout")["message"]  # 2 s, not 25


# 2. Slow clients: header and body deadlines, a bound on buffered bodies.

def connect(sidecar) -> socket.socket:
    host, port = sidecar.base_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_until_closed(sock: socket.socket, limit_s: float = 10) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    sock.settimeout(limit_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data, time.monotonic() - started


def read_response(sock: socket.socket) -> bytes:
    """One whole response (its ``content-length`` bytes of body) from a connection kept open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = int(next(line.split(b":")[1] for line in lines if line.startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def response_json(raw: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


def test_connections_stalled_in_their_headers_are_closed_and_others_are_served(telecom_gate, start_sidecar):
    sidecar = start_sidecar(telecom_gate, header_timeout_s=1)
    silent = [connect(sidecar) for _ in range(30)]
    partial = [connect(sidecar) for _ in range(30)]
    for sock in partial:
        sock.sendall(b"POST /v1/gate HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
    kept_alive = connect(sidecar)  # a whole request, then the first bytes of the next one
    body = json.dumps({"text": ON_TOPIC}).encode()
    kept_alive.sendall(b"POST /v1/gate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert read_response(kept_alive).startswith(b"HTTP/1.1 200")
    kept_alive.sendall(b"POST /v1/gate HTTP/1.1\r\n")
    for text in NORMAL[:4]:  # meanwhile, other clients are served
        expect_decision(gate_json(sidecar, {"text": text}), telecom_gate, text)
    closed = [read_until_closed(sock) for sock in [*silent, *partial, kept_alive]]
    assert all(data == b"" for data, _ in closed)
    assert max(seconds for _, seconds in closed) < 2.5  # 1 s after connecting (the first ones a little less)
    for sock in [*silent, *partial, kept_alive]:
        sock.close()


def test_a_body_that_does_not_arrive_in_time_gets_408(telecom_gate, start_sidecar):
    sidecar = start_sidecar(telecom_gate, body_timeout_s=1)
    stalled = [connect(sidecar) for _ in range(10)]
    for sock in stalled:
        sock.sendall(b"POST /v1/gate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 50000\r\n\r\n" + b'{"texts": ["' + b"a" * 1000)
    expect_decision(gate_json(sidecar, {"text": ON_TOPIC}), telecom_gate, ON_TOPIC)
    for sock in stalled:
        raw, seconds = read_until_closed(sock)
        status, headers, body = response_json(raw)
        assert (status, body["error"]["code"], headers["connection"]) == (408, "request_timeout", "close")
        assert "body_timeout_s" in body["error"]["message"] and seconds < 2.5
        sock.close()
    assert sidecar.settled_metric("gatekeeper_requests_total", 10, endpoint="/v1/gate", status="408") == 10


def test_bodies_held_at_once_are_bounded_and_the_excess_is_shed_with_retry_after(telecom_gate, start_sidecar):
    sidecar = start_sidecar(telecom_gate, max_body_bytes=100_000, max_buffered_body_bytes=300_000, body_timeout_s=2)
    stalled = [connect(sidecar) for _ in range(5)]
    for sock in stalled:  # 60 kB sent of each 90 kB body: four fit in the budget, the fifth does not
        sock.sendall(b"POST /v1/gate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 90000\r\n\r\n" + b"a" * 60_000)
        time.sleep(0.1)
    raw, seconds = read_until_closed(stalled[-1])
    status, headers, body = response_json(raw)
    assert (status, body["error"]["code"], headers["retry-after"]) == (503, "overloaded", "1")
    assert "max_buffered_body_bytes" in body["error"]["message"] and seconds < 1
    expect_decision(gate_json(sidecar, {"text": ON_TOPIC}), telecom_gate, ON_TOPIC)  # small bodies still fit
    for sock in stalled[:-1]:  # the held ones time out, and give their bytes back
        assert read_until_closed(sock)[0].startswith(b"HTTP/1.1 408")
        sock.close()
    stalled[-1].close()
    big = json.dumps({"text": ON_TOPIC}).encode() + b" " * 80_000  # 80 kB: fits again
    response = httpx.post(f"{sidecar.base_url}/v1/gate", content=big, headers={"content-type": "application/json"},
                          timeout=10)
    expect_decision(response, telecom_gate, ON_TOPIC)


# 3. Bad vectors from the openai embedding backend.

@pytest.fixture
def remote(tmp_path: Path) -> Iterator[tuple[EmbeddingServer, Path, Gate]]:
    """An embedding server, the small shop catalog pointed at it, and its gate (index built over HTTP)."""
    with EmbeddingServer(dim=32) as server:
        path = tmp_path / "shop.yaml"
        write_catalog(path, {**SHOP, "model": {"backend": "openai", "base_url": server.base_url, "model": "m",
                                               "timeout_s": 10, "max_retries": 0}})
        yield server, path, Gate().fit(path)


@pytest.mark.parametrize(("fault", "words"), [("wrong_dim", "31-dimensional"), ("nan", "NaN")])
def test_bad_vectors_are_embedding_failures_and_never_cached(remote, memory_upstream, asgi_sidecar, fault, words):
    server, path, gate = remote
    sidecar = asgi_sidecar(gate, upstream=memory_upstream)
    assert gate_json(sidecar, {"text": "where is my order"}).status_code == 200
    server.fault = fault
    assert words in openai_error(gate_json(sidecar, {"text": "refund my purchase"}), 503, "embedding_failed")["message"]
    chat = sidecar.client.post("/v1/chat/completions", json=chat_body("refund my purchase"))
    assert chat.status_code == 200 and chat.headers["x-gatekeeper-decision"] == "fail-open"
    assert sidecar.metric("gatekeeper_embedding_failures_total", policy="fail_open") == 2
    server.fault = None  # the backend recovers: nothing bad was cached
    reference = Gate(embedder=OpenAIEndpointEmbedder(server.base_url, "m")).fit(path).decide("refund my purchase")
    decision = gate_json(sidecar, {"text": "refund my purchase"}).json()
    assert math.isfinite(decision["score"]) and decision["score"] == pytest.approx(reference.score, abs=1e-5)
    assert (decision["accepted"], decision["intent"]) == (reference.accepted, reference.intent)


@pytest.mark.parametrize(("embeddings", "words"), [
    ([[1.0, 2.0], [1.0]], "different widths"), ([[1.0, 2.0, 3.0]], "3-dimensional vectors where 2"),
    ([[math.nan, 1.0]], "NaN"), ([[math.inf, 1.0]], "infinite"), ([[0.0, 0.0]], "all-zero"),
    ([[1e-30, 0.0]], "all-zero"), ([None], "not a list"), ([["a", "b"]], "not numbers")])
def test_every_reply_vector_is_checked(embeddings, words):
    with pytest.raises(EmbeddingError, match=words):
        checked_vectors(embeddings, 2 if "where 2" in words else None)


def test_a_backend_whose_vectors_do_not_fit_the_index_leaves_the_sidecar_not_ready(remote):
    server, path, _ = remote
    server.fault = "wrong_dim"
    state = GateState(path, Metrics(CollectorRegistry()))
    run(state.load())
    assert not state.ready and "31-dimensional vectors, but the catalog's index" in state.load_error


# 4. Deadlines and load shedding.

def test_a_stalled_embedding_backend_meets_the_gate_deadline(remote, memory_upstream, asgi_sidecar):
    server, _, gate = remote
    server.delay_s = 3.0
    open_sidecar = asgi_sidecar(gate, upstream=memory_upstream, gate_timeout_s=0.5)
    closed_sidecar = asgi_sidecar(gate, upstream=memory_upstream, gate_timeout_s=0.5, embedding_failure="fail_closed")
    started = time.perf_counter()
    error = openai_error(gate_json(open_sidecar, {"text": "where is my order"}), 503, "gate_timeout")
    assert "0.5s" in error["message"] and time.perf_counter() - started < 1.5
    chat = open_sidecar.client.post("/v1/chat/completions", json=chat_body("where is my order"))
    assert chat.headers["x-gatekeeper-decision"] == "fail-open" and chat.json()["choices"][0]["message"]["content"]
    closed = closed_sidecar.client.post("/v1/chat/completions", json=chat_body("where is my order"))
    assert closed.headers["x-gatekeeper-decision"] == "fail-closed"
    assert closed.json()["choices"][0]["message"]["content"] == SHOP["defaults"]["reject_reply"]["en"]
    assert time.perf_counter() - started < 4.0
    assert len(memory_upstream.requests) == 1
    assert open_sidecar.metric("gatekeeper_embedding_failures_total", policy="fail_open") == 2


class SlowEmbedder:
    """Half a second per call; random unit vectors of the telecom index's width."""

    dim = 512
    fingerprint = "slow"

    def encode(self, texts, *, is_query: bool = False) -> np.ndarray:
        time.sleep(0.5)
        vectors = np.random.default_rng(len(texts)).normal(size=(len(texts), self.dim)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_a_full_encoder_queue_sheds_requests_with_503_and_retry_after(telecom_gate, memory_upstream, asgi_sidecar):
    sidecar = asgi_sidecar(telecom_gate.with_embedder(SlowEmbedder()), upstream=memory_upstream, max_queued_texts=3,
                           gate_timeout_s=5)

    async def burst(client: httpx.AsyncClient) -> list[httpx.Response]:
        requests = [client.post("/v1/gate", json={"text": f"message {i}"}) for i in range(8)]
        requests.append(client.post("/v1/chat/completions", json=chat_body("message 9")))
        return await asyncio.gather(*requests)

    responses = sidecar.run_async(burst)
    statuses = sorted(response.status_code for response in responses)
    assert statuses.count(200) >= 3 and statuses.count(503) >= 4 and set(statuses) == {200, 503}
    for response in responses:
        if response.status_code == 503:
            assert "max_queued_texts=3" in openai_error(response, 503, "overloaded")["message"]
            assert response.headers["retry-after"] == "1"
    assert sidecar.metric("gatekeeper_embedding_failures_total", policy="fail_open") == 0  # shed, not failed


def test_a_conversation_too_big_to_queue_is_refused_never_forwarded_unchecked(telecom_gate, memory_upstream,
                                                                             asgi_sidecar):
    sidecar = asgi_sidecar(telecom_gate, upstream=memory_upstream)  # fail_open
    messages = [{"role": "user", "content": f"第{i}句"} for i in range(300)]  # every turn is gated: 300 texts
    response = sidecar.client.post("/v1/chat/completions", json={"model": "m", "messages": messages})
    assert "one request may queue at most 256" in openai_error(response, 503, "overloaded")["message"]
    assert memory_upstream.requests == []


class TricklingUpstream:
    """An upstream that sends its answer one byte at a time, 0.1 s apart: the headers (model ``trickle-headers``),
    the JSON body (``trickle-body``) or an SSE stream after its first event (``trickle-stream``). At most 10 s."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/v1"

    @staticmethod
    def _handler() -> type[BaseHTTPRequestHandler]:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                """Quiet."""

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                model = json.loads(self.rfile.read(int(self.headers["content-length"])))["model"]
                head = b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: 1000\r\n\r\n" % (
                    b"text/event-stream" if model == "trickle-stream" else b"application/json")
                event = b'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}\n\n'
                if model != "trickle-headers":
                    self.wfile.write(head + event if model == "trickle-stream" else head)
                    head = event * 2  # the body, or the next events: trickled
                try:
                    for byte in head[:100]:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.1)
                except OSError:  # the sidecar gave up: as it should
                    pass
                self.close_connection = True

        return Handler


@pytest.fixture
def trickling() -> Iterator[TricklingUpstream]:
    upstream = TricklingUpstream()
    upstream.thread.start()
    yield upstream
    upstream.server.shutdown()
    upstream.server.server_close()


@pytest.mark.parametrize("model", ["trickle-headers", "trickle-body"])
def test_an_upstream_trickle_ends_at_the_deadline_with_504(telecom_gate, trickling, asgi_sidecar, model):
    sidecar = asgi_sidecar(telecom_gate, upstream_base_url=trickling.base_url, upstream_timeout_s=1,
                            upstream_deadline_s=1.5)
    started = time.perf_counter()
    response = sidecar.client.post("/v1/chat/completions", json=chat_body(ON_TOPIC, model=model))
    assert "upstream_deadline_s" in openai_error(response, 504, "upstream_timeout")["message"]
    assert time.perf_counter() - started < 3
    assert sidecar.metric("gatekeeper_upstream_errors_total", status="504") == 1


def test_a_trickling_stream_ends_at_the_deadline_with_an_error_event_and_done(telecom_gate, trickling, asgi_sidecar):
    sidecar = asgi_sidecar(telecom_gate, upstream_base_url=trickling.base_url, upstream_timeout_s=1,
                            upstream_deadline_s=1.5)
    started = time.perf_counter()
    with sidecar.client.stream("POST", "/v1/chat/completions",
                               json=chat_body(ON_TOPIC, model="trickle-stream", stream=True)) as response:
        events = [line for line in response.iter_lines() if line]
    assert time.perf_counter() - started < 3
    assert json.loads(events[0].removeprefix("data: "))["choices"][0]["delta"]["content"] == "Hi"
    error = json.loads(events[-2].removeprefix("data: "))["error"]  # on a line of its own, after the half event
    assert error["code"] == "upstream_timeout" and "upstream_deadline_s" in error["message"]
    assert events[-1] == "data: [DONE]"


# 5. Small ones.

def answers(url: str) -> bool:
    """Whether ``url`` answers 200."""
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def until(condition: Callable[[], bool], limit_s: float = 60) -> bool:
    """Poll ``condition`` every 0.1 s until it holds or ``limit_s`` have passed; whether it held."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def successful_reloads(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return float(re.search(r'^gatekeeper_reloads_total\{result="success"\} (\S+)$', text, re.MULTILINE).group(1))


def test_sighup_while_starting_does_not_kill_the_server(tmp_path: Path):
    catalog = tmp_path / "shop.yaml"
    write_catalog(catalog, SHOP)
    url = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "GATEKEEPER_STATE_DIR": str(tmp_path / "state")}
    process = subprocess.Popen([sys.executable, "-m", "gatekeeper", "serve", "--catalog", str(catalog), "--port",
                                url.rsplit(":", 1)[1], "--log-level", "warning"], env=env, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def hang_up_until_listening() -> bool:  # through start-up: imports, catalog check, app, model load
        process.send_signal(signal.SIGHUP)
        return process.poll() is not None or answers(f"{url}/healthz")

    counts: list[float] = []

    def reloads_settled() -> bool:  # hang-ups once it listened were reloads: wait until none is left (1 s)
        counts.append(successful_reloads(url))
        return len(counts) > 10 and counts[-1] == counts[-11]

    try:
        assert process.stdout.readline().startswith("gatekeeper serve: effective configuration")
        assert until(hang_up_until_listening) and process.poll() is None
        assert until(lambda: answers(f"{url}/readyz"))
        assert until(reloads_settled, limit_s=30)
        process.send_signal(signal.SIGHUP)
        assert until(lambda: successful_reloads(url) > counts[-1], limit_s=30)
    finally:
        process.terminate()
        process.wait(30)


def test_a_client_gone_before_the_upstream_answers_cancels_the_upstream_call(telecom_gate, fake_upstream,
                                                                             start_sidecar):
    sidecar = start_sidecar(telecom_gate, upstream_base_url=fake_upstream.base_url, upstream_timeout_s=30)
    body = json.dumps(chat_body(ON_TOPIC, model="mock-slow")).encode()  # the upstream answers after 3 s
    sock = connect(sidecar)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    for _ in range(50):
        if fake_upstream.requests:
            break
        time.sleep(0.02)
    sock.close()
    closed = time.monotonic()
    assert sidecar.settled_metric("gatekeeper_in_flight_requests", 0) == 0
    assert time.monotonic() - closed < 1.5  # not the 3 s the upstream takes
    assert sidecar.metric("gatekeeper_requests_total", endpoint="/v1/chat/completions", status="499") == 1


def test_a_reload_drops_the_decision_series_of_removed_intents(tmp_path: Path, use_embedder, asgi_sidecar):
    path = tmp_path / "shop.yaml"
    write_catalog(path, {**SHOP, "intents": [*SHOP["intents"], NEW_INTENT]})
    sidecar = asgi_sidecar(Gate(embedder=use_embedder).fit(path), admin_token="tok")
    assert gate_json(sidecar, {"text": "change my delivery address"}).json()["intent"] == "delivery_address"
    labels = {"decision": "accepted", "intent": "delivery_address", "mode": "enforce"}
    assert sidecar.metric("gatekeeper_decisions_total", **labels) == 1
    write_catalog(path, SHOP)
    assert sidecar.client.post("/admin/reload", headers={"authorization": "Bearer tok"}).status_code == 200
    assert sidecar.registry.get_sample_value("gatekeeper_decisions_total", labels) is None
    assert 'intent="delivery_address"' not in sidecar.client.get("/metrics").text


def test_a_trailing_slash_is_not_redirected_to_the_callers_host(telecom_gate, asgi_sidecar):
    sidecar = asgi_sidecar(telecom_gate)
    response = sidecar.client.get("/healthz/", headers={"host": "evil.example"})
    assert response.status_code == 404 and "location" not in response.headers


def test_the_openapi_schema_documents_streams_and_the_gate_request_shape(telecom_gate, asgi_sidecar):
    spec = asgi_sidecar(telecom_gate).client.get("/openapi.json").json()
    content = spec["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(content) == {"application/json", "text/event-stream"}
    assert "[DONE]" in content["text/event-stream"]["schema"]["description"]
    assert spec["components"]["schemas"]["GateRequest"]["oneOf"] == [
        {"required": ["text"]}, {"required": ["texts"]}, {"required": ["messages"]}]


# 6. Normal clients beside abusive ones; the soak benchmark.

async def abusive_clients(sidecar, stop: asyncio.Event) -> list[int]:
    """Huge batches, poison and stalled connections until ``stop``; the statuses the HTTP ones got."""
    poison = [b'{"text": "x\\ud800"}', b'{"texts": ["a", NaN]}', b'{"text": ', b"[" * 20_000, b'{"text": 3}']
    huge = {"texts": [f"{i} {LONG_TEXT}" for i in range(256)]}
    statuses: list[int] = []
    host, port = sidecar.base_url.removeprefix("http://").split(":")

    async def stalled(data: bytes) -> None:
        while not stop.is_set():
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(data)
            await asyncio.wait([asyncio.ensure_future(reader.read()), asyncio.ensure_future(stop.wait())],
                               return_when=asyncio.FIRST_COMPLETED)
            writer.close()

    async def repeat(client: httpx.AsyncClient, **request: object) -> None:
        while not stop.is_set():
            statuses.append((await client.post("/v1/gate", **request)).status_code)
            await asyncio.sleep(0.05)

    async with httpx.AsyncClient(base_url=sidecar.base_url, timeout=30) as client:
        tasks = [repeat(client, json=huge), repeat(client, json=huge)]
        tasks += [repeat(client, content=body, headers={"content-type": "application/json"}) for body in poison]
        tasks += [stalled(b"POST /v1/gate HTTP/1.1\r\nHost: x\r\n") for _ in range(20)]
        tasks += [stalled(b"POST /v1/gate HTTP/1.1\r\nContent-Length: 90000\r\n\r\n" + b"a" * 50_000)
                  for _ in range(10)]
        await asyncio.gather(*tasks)
    return statuses


def test_normal_clients_beside_abusive_ones_see_no_errors_and_the_right_decisions(telecom_gate, start_sidecar):
    sidecar = start_sidecar(telecom_gate, header_timeout_s=1, body_timeout_s=1)

    async def scenario():
        stop = asyncio.Event()
        abuse = asyncio.ensure_future(abusive_clients(sidecar, stop))
        await asyncio.sleep(0.5)
        normal = []
        async with httpx.AsyncClient(base_url=sidecar.base_url, timeout=10) as client:
            for text in NORMAL * 3:
                started = time.perf_counter()
                response = await client.post("/v1/gate", json={"text": text})
                normal.append((text, response, time.perf_counter() - started))
                await asyncio.sleep(0.05)
        stop.set()
        return normal, await abuse

    normal, abusive = run(scenario())
    for text, response, seconds in normal:
        expect_decision(response, telecom_gate, text)
        assert seconds < 1.0
    assert 500 not in abusive and {400, 503} <= set(abusive)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_soak_benchmark_keeps_every_normal_request_right_under_abuse(tmp_path: Path):
    out = tmp_path / "soak.json"
    finished = subprocess.run([sys.executable, "benchmarks/soak.py", "--quick", "--json", str(out)], cwd=REPO,
                              capture_output=True, text=True, timeout=280)
    assert out.exists(), finished.stdout + finished.stderr[-3000:]
    document = json.loads(out.read_text(encoding="utf-8"))
    targets = document["targets"]
    # Correctness and memory are asserted here; the latency ratio (p99_ratio) is a speed target, judged by the
    # benchmark itself on a quiet machine (docs/operations.md), not by a timed unit test.
    robust = {"normal_errors_abuse", "wrong_decisions_abuse", "rss_peak_mb", "poison_500"}
    assert robust <= set(targets)
    assert all(targets[key]["met"] for key in robust), targets
    assert document["results"]["normal_requests_all"] > 0
