"""Sections 2-3: the sidecar's POST /v1/gate under load from ``wrk`` (loopback only, bounded duration).

The load generator is Debian's ``wrk`` (C, one thread; ``.ci/run`` installs
it) with a Lua script that cycles through 20,000 distinct real messages (more
than the query LRU holds, so every decision runs the encoder), and once
through 200 hot messages (all LRU hits). It shares the machine's cores with
the server, so the figures are a lower bound of what the server alone could
do. ``http_event_loop`` says which loop the server ran on (uvicorn takes
uvloop when it is installed).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

from benchmarks.perf_common import CATALOG, Sidecar, message_pool, rss_mb, sidecar

#: Distinct messages of the hot-message point (all served from the query LRU once seen).
HOT_MESSAGES = 200

_LUA = r"""
local bodies = {
%s
}
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", "/v1/gate", {["Content-Type"] = "application/json"},
                    bodies[(counter %% #bodies) + 1])
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT {\"requests\": %%d, \"seconds\": %%f, \"errors\": %%d, \"non2xx\": %%d, " ..
    "\"p50_us\": %%d, \"p90_us\": %%d, \"p99_us\": %%d, \"max_us\": %%d}\n",
    summary.requests, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def wrk_script(folder: Path, texts: list[str]) -> Path:
    """A wrk Lua script POSTing ``{"text": ...}`` bodies, one per message, in turn."""
    rows = ",\n".join("[==[" + json.dumps({"text": text}, ensure_ascii=False) + "]==]" for text in texts)
    path = folder / "gate.lua"
    path.write_text(_LUA % rows, encoding="utf-8")
    return path


def load(base_url: str, script: Path, connections: int, seconds: int) -> dict:
    """Run wrk for ``seconds`` with ``connections`` clients; throughput and latency percentiles."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is missing: apt-get install -y wrk (bash .ci/run installs it)")
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script),
               base_url]
    output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    found = re.search(r"^RESULT (\{.*\})$", output, re.MULTILINE)
    if not found:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    result = json.loads(found.group(1))
    return {"rps": result["requests"] / result["seconds"], "p50_ms": result["p50_us"] / 1e3,
            "p90_ms": result["p90_us"] / 1e3, "p99_ms": result["p99_us"] / 1e3,
            "errors": result["errors"] + result["non2xx"], "requests": result["requests"]}


def _warm(server: Sidecar, script: Path) -> None:
    load(server.base_url, script, 8, 2)


def _mean_batch(base_url: str) -> float:
    """Mean messages per encoder call so far, from the sidecar's /metrics."""
    text = urllib.request.urlopen(base_url + "/metrics", timeout=10).read().decode()
    values = {name: float(value) for name, value in re.findall(r"^gatekeeper_batch_size_(sum|count) (\S+)$", text,
                                                                re.MULTILINE)}
    return values["sum"] / values["count"] if values.get("count") else 0.0


def run(work: Path, quick: bool) -> dict:
    """Throughput and latency at 32 and 128 clients, with micro-batching on and off; hot messages; server RSS."""
    seconds = 5 if quick else 15
    texts = message_pool(20000)
    script = wrk_script(work, texts)
    hot_folder = work / "hot"
    hot_folder.mkdir()
    hot_script = wrk_script(hot_folder, texts[:HOT_MESSAGES])
    results: dict = {"http_load_generator": "wrk 4.x, 1 thread, Lua POST bodies (shares the 2 cores)",
                     "http_seconds_per_point": seconds, "http_distinct_messages": len(texts),
                     "http_event_loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"}
    with sidecar(CATALOG, work / "http-state") as server:
        _warm(server, script)
        results.update({f"serve_idle_{key}": value for key, value in rss_mb(server.pid).items()})
        for connections in (32, 128):
            point = load(server.base_url, script, connections, seconds)
            results.update({f"http_gate_{key}_c{connections}": value for key, value in point.items()})
        results["http_mean_batch"] = _mean_batch(server.base_url)
        results.update({f"serve_{key}": value for key, value in rss_mb(server.pid).items()})  # after load
        _warm(server, hot_script)
        point = load(server.base_url, hot_script, 32, seconds)
        results.update({f"http_gate_hot_{key}_c32": value for key, value in point.items()})
    with sidecar(CATALOG, work / "http-state", "--batch-max-size", "1") as server:
        _warm(server, script)
        point = load(server.base_url, script, 32, seconds)
        results.update({f"http_gate_unbatched_{key}_c32": value for key, value in point.items()})
    results["batching_speedup"] = results["http_gate_rps_c32"] / results["http_gate_unbatched_rps_c32"]
    return results
