"""Fixtures for the sidecar tests: the sidecar in process or on a real uvicorn server, in front of a recording fake
LLM upstream (:mod:`tests.fake_upstream`) in memory or on loopback.

``tests/conftest.py`` registers this module as a plugin (``pytest_plugins``),
so every test module can ask for its fixtures by name without importing them;
import only the helpers (``chat_body``, ``free_port``, the texts).

* :func:`asgi_sidecar` drives the app in process: Starlette's test client
  (the ``httpx`` API over an ASGI transport), the app's lifespan run (its
  encoder and decision threads, the background catalog load), responses
  streamed as the app sends them; ``httpx.AsyncClient`` over
  ``httpx.ASGITransport`` for concurrent requests.
  What it cannot show is the HTTP server's part: uvicorn's options and
  timeouts, connections and disconnects, the framing of a body cut short,
  other programs (curl, Prometheus) talking to it. Those tests use
  :func:`start_sidecar`, on a loopback port.
* :func:`memory_upstream` serves the fake in memory (the app's ``upstream_transport``);
  :func:`fake_upstream` serves the same fake on 127.0.0.1, for the tests of
  network timeouts, the real-socket sidecar end to end and other processes.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Iterator, TypeVar

import httpx
import openai
import pytest
import uvicorn
import yaml
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from gatekeeper.gate import Gate
from gatekeeper.server.app import create_app
from gatekeeper.server.config import ServerSettings
from gatekeeper.server.serve_cmd import uvicorn_options
from tests.fake_upstream import FakeUpstream, in_memory, on_loopback

START_TIMEOUT_S = 20.0
T = TypeVar("T")


@pytest.fixture
def memory_upstream() -> FakeUpstream:
    """The recording fake OpenAI-compatible upstream, in memory: pass it as ``upstream=`` to a sidecar."""
    return in_memory()


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    """The same fake, served over real HTTP on 127.0.0.1 (a free port)."""
    with on_loopback() as upstream:
        yield upstream


@dataclass
class Sidecar:
    """A sidecar app and the registry its metrics go to."""

    app: FastAPI
    registry: CollectorRegistry

    def metric(self, name: str, **labels: str) -> float:
        """A sample's current value (0 if it has not been recorded)."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def settled_metric(self, name: str, expected: float, **labels: str) -> float:
        """The sample's value once it equals ``expected`` or 2 s have passed.

        For metrics recorded after the response is sent (request counts, the
        in-flight gauge), which a client can read a moment too early.
        """
        deadline = time.monotonic() + 2.0
        while self.metric(name, **labels) != expected and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.metric(name, **labels)


@dataclass
class AsgiSidecar(Sidecar):
    """A sidecar driven in process: ``client`` sends requests straight to the app (no socket)."""

    #: Starlette's test client (an ``httpx2.Client``, the ``httpx`` API) over the app: its lifespan runs while the
    #: test does, each response streams as the app sends it.
    client: TestClient

    def openai_client(self, api_key: str = "test") -> openai.OpenAI:
        """The official client, talking to the sidecar through :attr:`client`."""
        return openai.OpenAI(base_url=str(self.client.base_url.join("/v1")), api_key=api_key, max_retries=0,
                             http_client=self.client)

    def run_async(self, main: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
        """``main(client)``'s result, awaited in the app's event loop with ``client`` an ``httpx.AsyncClient``
        over the app (``httpx.ASGITransport``, which reads each body whole): for concurrent requests."""

        async def with_client() -> T:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(self.app),
                                         base_url=str(self.client.base_url)) as client:
                return await main(client)

        return self.client.portal.call(with_client)


@dataclass
class RunningSidecar(Sidecar):
    """A sidecar served by uvicorn in a background thread."""

    base_url: str
    #: An ``httpx.Client`` for ``base_url`` (10 s timeout).
    client: httpx.Client
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        """Close the client, ask uvicorn to exit and wait for it (bounded)."""
        self.client.close()
        self.server.should_exit = True
        self.thread.join(START_TIMEOUT_S)


def sidecar_app(gate: Gate | None, upstream: FakeUpstream | None,
                settings: dict[str, object]) -> tuple[FastAPI, CollectorRegistry, ServerSettings]:
    """The app serving ``gate`` (the catalog at ``settings["catalog"]`` when None) with ``settings``, forwarding to
    ``upstream`` unless ``settings`` name another ``upstream_base_url``; its registry and settings."""
    settings.setdefault("catalog", gate.catalog_path_ if gate is not None else "intents")
    if upstream is not None:
        settings.setdefault("upstream_base_url", upstream.base_url)
    registry = CollectorRegistry()
    resolved = ServerSettings(**settings)
    return (create_app(resolved, gate=gate, registry=registry,
                       upstream_transport=upstream.transport if upstream is not None else None), registry, resolved)


@pytest.fixture
def asgi_sidecar() -> Iterator[Callable[..., AsgiSidecar]]:
    """Factory: ``asgi_sidecar(gate, upstream=None, **settings)`` runs the app serving ``gate`` in process until the
    test ends (:func:`sidecar_app`); an exception that escapes the app fails the request that raised it."""
    with ExitStack() as running:

        def start(gate: Gate | None, upstream: FakeUpstream | None = None, **settings: object) -> AsgiSidecar:
            app, registry, _ = sidecar_app(gate, upstream, settings)
            return AsgiSidecar(app, registry, running.enter_context(TestClient(app, follow_redirects=False)))

        yield start


@pytest.fixture
def start_sidecar() -> Iterator[Callable[..., RunningSidecar]]:
    """Factory: ``start_sidecar(gate, upstream=None, **settings)`` serves the app (:func:`sidecar_app`) on a free
    loopback port until the test ends, with the uvicorn options ``gatekeeper serve`` uses (:func:`uvicorn_options`:
    timeouts, the HTTP protocol)."""
    running: list[RunningSidecar] = []

    def start(gate: Gate | None, upstream: FakeUpstream | None = None, **settings: object) -> RunningSidecar:
        app, registry, resolved = sidecar_app(gate, upstream, settings)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        options = {name: value for name, value in uvicorn_options(resolved).items()
                   if name not in ("host", "port", "workers", "log_level")}  # the socket is given; quieter logs
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", **options))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started, "the sidecar did not start"
        base_url = f"http://127.0.0.1:{port}"
        sidecar = RunningSidecar(app, registry, base_url, httpx.Client(base_url=base_url, timeout=10), server, thread)
        running.append(sidecar)
        return sidecar

    yield start
    for sidecar in running:
        sidecar.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: Messages for the bundled telecom catalog (intents/telecom_zh.yaml).
ON_TOPIC = "我这个月话费怎么扣了这么多"
OFF_TOPIC = "今天天气怎么样"
OFF_TOPIC_EN = "what's a good recipe for lasagne?"


def chat_body(text: str, **extra: object) -> dict:
    """A one-turn chat completion request."""
    return {"model": "test-model", "messages": [{"role": "user", "content": text}], **extra}


#: A small catalog that builds in about a second, so reload tests can rebuild for real.
SHOP = {
    "version": 1, "name": "shop", "conversation_pack": "none",
    "defaults": {"reject_reply": {"en": "Sorry, I only help with orders.", "zh": "抱歉，我只处理订单问题。"}},
    "intents": [
        {"name": "order_status", "examples": ["where is my order", "has my package shipped", "track my parcel",
                                             "when will my order arrive"]},
        {"name": "refund", "examples": ["I want my money back", "how do I get a refund", "refund my purchase",
                                       "return this item for a refund"]},
    ],
    "out_of_scope": ["what's the weather today", "tell me a joke", "who won the football", "recipe for pancakes",
                     "write a poem", "what is the capital of France"],
}
NEW_INTENT = {"name": "delivery_address", "examples": ["change my delivery address", "ship to a different address",
                                                      "update the address on my order", "wrong address on the parcel"]}


def write_catalog(path: Path, document: dict) -> None:
    """Write a catalog document as YAML."""
    path.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False), encoding="utf-8")
