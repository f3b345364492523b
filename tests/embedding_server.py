"""A small OpenAI-compatible ``/v1/embeddings`` server on loopback, for backend tests.

It speaks the real wire format over real HTTP. Vectors are derived from a hash
of each input so equal texts get equal vectors. It records every request and
can fail or stall its first requests, to exercise retries and timeouts. Its
``fault`` can be switched at any time: ``"wrong_dim"`` answers vectors one
element short, ``"nan"`` vectors of NaN (as the ``NaN`` token Python's JSON
writes), ``None`` answers well again; so can ``delay_s``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np


class EmbeddingServer:
    """Serves ``POST /v1/embeddings`` on 127.0.0.1 at a free port."""

    def __init__(self, dim: int = 32, fail_first: int = 0, delay_s: float = 0.0):
        self.dim = dim
        self.fail_first = fail_first
        self.delay_s = delay_s
        self.fault: str | None = None
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        """The ``/v1`` base URL clients should use."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> "EmbeddingServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def vector(self, text: str, dimensions: int | None) -> list[float]:
        """The (unnormalised) vector this server returns for ``text``."""
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        values = np.random.default_rng(seed).normal(size=self.dim)
        return values[: dimensions or self.dim].tolist()

    def faulty(self, vector: list[float]) -> list[float]:
        """``vector`` as the current :attr:`fault` spoils it."""
        if self.fault == "wrong_dim":
            return vector[:-1]
        if self.fault == "nan":
            return [float("nan")] * len(vector)
        return vector

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    failing = len(server.requests) <= server.fail_first
                if server.delay_s:
                    time.sleep(server.delay_s)
                if self.path != "/v1/embeddings":
                    return self._reply(404, {"error": {"message": "not found"}})
                if failing:
                    return self._reply(500, {"error": {"message": "injected failure", "type": "server_error"}})
                inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
                data = [{"object": "embedding", "index": i, "embedding": server.faulty(server.vector(
                    t, body.get("dimensions")))} for i, t in enumerate(inputs)]
                # Real servers may return rows out of order; the client must sort by index.
                self._reply(200, {"object": "list", "data": data[::-1], "model": body["model"],
                                  "usage": {"prompt_tokens": 1, "total_tokens": 1}})

            def _reply(self, status: int, payload: dict) -> None:
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        return Handler
