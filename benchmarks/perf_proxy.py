"""Section 4: what the sidecar adds to a forwarded chat completion, against calling the upstream directly.

The upstream is a minimal OpenAI-compatible ASGI app under uvicorn, in its
own process on loopback (the test suite's ``http.server`` fake writes its
reply in pieces, which meets delayed ACKs and adds ~40 ms to direct calls,
swamping what is measured here). Requests
are sequential and interleaved (direct, via the sidecar, direct, ...), so both
series see the same machine state.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.perf_common import CATALOG, ROOT, free_port, percentiles_ms, sidecar


_COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "bench",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}).encode()


async def _upstream_app(scope: dict, receive, send) -> None:
    """A minimal OpenAI-compatible upstream: reads the request, answers one fixed chat completion."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(_COMPLETION)).encode())]})
    await send({"type": "http.response.body", "body": _COMPLETION})


def serve_upstream(port: int) -> None:
    """Serve the minimal upstream on 127.0.0.1:``port`` until terminated."""
    import uvicorn

    uvicorn.run(_upstream_app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")


def _on_topic_messages(limit: int) -> list[str]:
    """The catalog's own examples: messages the gate accepts, so they are forwarded."""
    document = yaml.safe_load(CATALOG.read_text(encoding="utf-8"))
    return [example for intent in document["intents"] for example in intent.get("examples", [])][:limit]


def run(work: Path, quick: bool) -> dict:
    """p50/p99 of a chat completion sent directly and through the sidecar; their difference."""
    import httpx

    port = free_port()
    upstream = subprocess.Popen([sys.executable, "-c", f"from benchmarks.perf_proxy import serve_upstream; "
                                 f"serve_upstream({port})"], cwd=ROOT)
    upstream_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_ready_post(upstream_url, upstream)
        with sidecar(CATALOG, work / "proxy-state", "--upstream-base-url", upstream_url) as server, \
                httpx.Client(timeout=30) as client:
            messages = _on_topic_messages(120 if quick else 270)
            targets = {"direct": upstream_url, "proxied": server.base_url + "/v1"}
            timings: dict[str, list[float]] = {name: [] for name in targets}
            forwarded = 0
            for round_ in range(2):  # the first round warms connections and code paths
                for text in messages:
                    body = {"model": "bench", "messages": [{"role": "user", "content": text}]}
                    for name, base in targets.items():
                        started = time.perf_counter()
                        response = client.post(base + "/chat/completions", json=body)
                        elapsed = time.perf_counter() - started
                        response.raise_for_status()
                        if round_:
                            timings[name].append(elapsed)
                            forwarded += name == "proxied" and response.headers.get(
                                "x-gatekeeper-decision") == "accepted"
    finally:
        upstream.terminate()
        upstream.wait(10)
    direct, proxied = percentiles_ms(timings["direct"]), percentiles_ms(timings["proxied"])
    return {"proxy_requests": len(timings["proxied"]), "proxy_forwarded_share": forwarded / len(messages),
            "upstream_direct_p50_ms": direct["p50"], "upstream_direct_p99_ms": direct["p99"],
            "proxied_p50_ms": proxied["p50"], "proxied_p99_ms": proxied["p99"],
            "proxy_overhead_p50_ms": proxied["p50"] - direct["p50"]}


def wait_ready_post(base_url: str, process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """Wait until the fake upstream accepts a chat completion."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the fake upstream exited")
        try:
            httpx.post(base_url + "/chat/completions", json={"model": "x", "messages": []}, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError("the fake upstream did not start")
