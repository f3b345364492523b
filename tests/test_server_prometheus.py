"""A real Prometheus server scrapes the sidecar's /metrics; PromQL sees the rejected calls."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.deploy_support import require_tool
from tests.server_fixtures import OFF_TOPIC, OFF_TOPIC_EN, ON_TOPIC, chat_body, free_port

POLL_TIMEOUT_S = 45


@pytest.fixture
def prometheus(tmp_path: Path):
    """Factory: start Prometheus on a free loopback port scraping ``target`` every second; killed at teardown."""
    binary = require_tool("prometheus")
    processes: list[subprocess.Popen] = []

    def start(target: str) -> str:
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "gatekeeper", "scrape_interval": "1s", "scrape_timeout": "1s",
                                "static_configs": [{"targets": [target]}]}],
        }), encoding="utf-8")
        port = free_port()
        log = (tmp_path / "prometheus.log").open("w")
        processes.append(subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT))
        return f"http://127.0.0.1:{port}"

    yield start
    for process in processes:
        process.kill()
        process.wait(10)


def query(prometheus_url: str, promql: str) -> float | None:
    """The single value of an instant query, or None while it has no result."""
    try:
        result = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": promql}, timeout=5).json()
    except httpx.HTTPError:
        return None
    values = result.get("data", {}).get("result", [])
    return float(values[0]["value"][1]) if values else None


@pytest.mark.slow
def test_prometheus_counts_the_rejected_calls(telecom_gate, fake_upstream, start_sidecar, prometheus):
    sidecar = start_sidecar(telecom_gate, upstream_base_url=fake_upstream.base_url)
    prometheus_url = prometheus(sidecar.base_url.removeprefix("http://"))
    for text in (OFF_TOPIC, OFF_TOPIC_EN, OFF_TOPIC, ON_TOPIC, ON_TOPIC):
        httpx.post(f"{sidecar.base_url}/v1/chat/completions", json=chat_body(text), timeout=10)
    assert len(fake_upstream.requests) == 2
    expected = {
        'sum(gatekeeper_rejected_calls_total{job="gatekeeper"})': 3.0,
        'gatekeeper_llm_calls_saved_total{job="gatekeeper"}': 3.0,
        'sum(gatekeeper_decisions_total{job="gatekeeper", decision="accepted", mode="enforce"})': 2.0,
        'sum(gatekeeper_requests_total{job="gatekeeper", endpoint="/v1/chat/completions", status="200"})': 5.0,
        'count(gatekeeper_catalog_info{job="gatekeeper", catalog="telecom-zh"})': 1.0,
    }
    seen: dict[str, float | None] = {}
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while time.monotonic() < deadline:
        seen = {promql: query(prometheus_url, promql) for promql in expected}
        if seen == expected:
            break
        time.sleep(0.5)
    assert seen == expected
