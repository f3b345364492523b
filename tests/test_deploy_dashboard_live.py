"""The Grafana dashboard against a live stack: real sidecars, real Prometheus, real traffic.

Two ``gatekeeper serve`` processes run on loopback: one enforcing with the
bundled telecom catalog (default local model), one in shadow mode whose
catalog copy embeds through an OpenAI-compatible embedding server, which the
test later breaks to exercise the fail-open path. A real Prometheus scrapes
both every second and evaluates deploy/prometheus/alerts.yml. After mixed
traffic (zh/en, on/off-topic, empty and image-only messages, upstream errors,
reloads good and bad), every panel query of the dashboard must parse and
return data, and every recording rule must produce a series.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
import yaml

from tests.conftest import INTENTS
from tests.deploy_support import (METRICS, PROMETHEUS_DIR, load_dashboard, panel_queries, require_tool,
                                  substitute_variables)
from tests.embedding_server import EmbeddingServer
from tests.server_fixtures import FakeUpstream, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ADMIN_TOKEN = "live-test-token"
START_TIMEOUT_S = 90.0
SCRAPE_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

ON_TOPIC_ZH = ["帮我查一下{month}月的话费账单", "我想换成{n}元的5G套餐", "家里宽带{n}天没网了，怎么报修",
               "手机流量还剩多少", "怎么办理携号转网", "为什么这个月多扣了{n}块钱"]
ON_TOPIC_EN = ["How much is my phone bill for month {month}?", "I want to switch to the {n} yuan 5G plan",
               "My home broadband has been down for {n} days", "How much mobile data do I have left?"]
OFF_TOPIC_ZH = ["给我讲个笑话", "今天{city}天气怎么样", "推荐一部好看的电影", "帮我写一首关于{city}的诗"]
OFF_TOPIC_EN = ["Write a poem about {city}", "What is the capital of France?", "Recommend a good movie",
                "Give me a recipe for lasagne"]
CITIES = ["北京", "上海", "Paris", "Chengdu"]


def generated_messages(rng: random.Random, count: int) -> list[str]:
    """``count`` messages drawn evenly from on/off-topic zh/en templates, with random fillers."""
    pools = [ON_TOPIC_ZH, ON_TOPIC_EN, OFF_TOPIC_ZH, OFF_TOPIC_EN]
    return [rng.choice(pools[i % len(pools)]).format(month=rng.randint(1, 12), n=rng.randint(2, 199),
                                                     city=rng.choice(CITIES))
            for i in range(count)]


def chat(text: object, model: str = "test-model") -> dict:
    """A one-turn chat completion request body (``text`` may be any JSON content)."""
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``check`` every 0.25 s until it is true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")


class Processes:
    """Subprocesses started by the test, each logging to a file, all stopped at teardown."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.running: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start ``args`` with stdout and stderr in ``<log_dir>/<name>.log``."""
        with (self.log_dir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env={**os.environ, **(env or {})})
        self.running.append((name, process))
        return process

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The end of a process's log, for failure messages."""
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    def stop_all(self) -> None:
        """SIGTERM each process, then SIGKILL whatever has not exited within the timeout."""
        for _, process in self.running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process in self.running:
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT_S)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """A :class:`Processes` whose members are stopped when the test ends, pass or fail."""
    group = Processes(tmp_path)
    try:
        yield group
    finally:
        group.stop_all()


def start_sidecar(processes: Processes, name: str, catalog: Path, upstream: str, state_dir: Path,
                  mode: str) -> str:
    """Run ``gatekeeper serve`` on a free loopback port; its base URL once ``/readyz`` answers 200."""
    port = free_port()
    processes.start(name, [sys.executable, "-m", "gatekeeper", "serve", "--catalog", str(catalog),
                           "--host", "127.0.0.1", "--port", str(port), "--mode", mode,
                           "--upstream-base-url", upstream, "--batch-wait-us", "2000", "--log-level", "warning"],
                    env={"GATEKEEPER_STATE_DIR": str(state_dir), "GATEKEEPER_ADMIN_TOKEN": ADMIN_TOKEN})
    return f"http://127.0.0.1:{port}"


def start_prometheus(processes: Processes, tmp_path: Path, targets: list[str]) -> str:
    """Run Prometheus on a free loopback port, scraping ``targets`` every second with the project's rules."""
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROMETHEUS_DIR / "alerts.yml")],
        "scrape_configs": [{"job_name": "gatekeeper", "static_configs": [{"targets": targets}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    processes.start("prometheus", [require_tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"])
    return f"http://127.0.0.1:{port}"


def remote_embedding_catalog(path: Path, embedding_url: str) -> Path:
    """A copy of the telecom catalog whose model is an OpenAI-compatible embedding endpoint."""
    catalog = yaml.safe_load((INTENTS / "telecom_zh.yaml").read_text(encoding="utf-8"))
    catalog["model"] = {"backend": "openai", "base_url": embedding_url, "model": "test-embedder",
                        "max_retries": 0, "timeout_s": 5}
    path.write_text(yaml.safe_dump(catalog, allow_unicode=True), encoding="utf-8")
    return path


def send(client: httpx.Client, url: str, bodies: list[dict]) -> list[int]:
    """POST every body to ``url``, six at a time; the response statuses."""
    with ThreadPoolExecutor(max_workers=6) as pool:
        return list(pool.map(lambda body: client.post(url, json=body).status_code, bodies))


def query(client: httpx.Client, prometheus: str, expr: str) -> dict:
    """An instant query's JSON answer (status 'success' or 'error')."""
    return client.get(f"{prometheus}/api/v1/query", params={"query": expr}).json()


def scalar(client: httpx.Client, prometheus: str, expr: str) -> float:
    """The value of a single-series instant query; -1 while it has no result."""
    result = query(client, prometheus, expr)["data"]["result"]
    return float(result[0]["value"][1]) if result else -1.0


def test_live_stack_exposes_every_metric_and_feeds_every_panel(fake_upstream: FakeUpstream,  # noqa: F811
                                                               processes: Processes, tmp_path: Path) -> None:
    require_tool("prometheus")  # before starting anything
    rng = random.Random(6)
    catalog = tmp_path / "telecom_zh.yaml"
    catalog.write_text((INTENTS / "telecom_zh.yaml").read_text(encoding="utf-8"), encoding="utf-8")

    with EmbeddingServer() as embeddings, httpx.Client(timeout=30.0) as client:
        enforce = start_sidecar(processes, "enforce", catalog, fake_upstream.base_url, tmp_path / "state-enforce",
                                "enforce")
        shadow = start_sidecar(processes, "shadow", remote_embedding_catalog(tmp_path / "remote.yaml",
                                                                             embeddings.base_url),
                               fake_upstream.base_url, tmp_path / "state-shadow", "shadow")
        prometheus = start_prometheus(processes, tmp_path, [url.removeprefix("http://") for url in (enforce, shadow)])
        for name, url in (("enforce", enforce), ("shadow", shadow)):
            wait_until(lambda: client.get(f"{url}/readyz").status_code == 200, START_TIMEOUT_S,
                       f"sidecar '{name}' to be ready; its log:\n{processes.log_tail(name)}")
        wait_until(lambda: client.get(f"{prometheus}/-/ready").status_code == 200, START_TIMEOUT_S,
                   f"Prometheus to be ready; its log:\n{processes.log_tail('prometheus')}")
        wait_until(lambda: scalar(client, prometheus, 'count(up{job="gatekeeper"} == 1)') == 2, SCRAPE_TIMEOUT_S,
                   "Prometheus to scrape both sidecars")

        exposed = client.get(f"{enforce}/metrics").text
        missing = [metric for metric in METRICS if f"# TYPE {metric} " not in exposed]

        # Enforce: mixed chat and gate traffic, odd inputs, upstream failures, one good and one bad reload.
        statuses = send(client, f"{enforce}/v1/chat/completions",
                        [chat(text) for text in generated_messages(rng, 60)]
                        + [chat(""), chat("   "), chat([{"type": "image_url", "image_url": {"url": "data:,"}}]),
                           chat("帮我查一下这个月的话费账单", model="mock-500")])
        statuses += send(client, f"{enforce}/v1/gate",
                         [{"text": text} for text in generated_messages(rng, 20)]
                         + [{"texts": generated_messages(rng, 8)} for _ in range(4)]
                         + [{"messages": [{"role": "user", "content": text}]} for text in generated_messages(rng, 4)])
        assert 502 in statuses and statuses.count(200) >= len(statuses) - 1, statuses
        reload_url, auth = f"{enforce}/admin/reload", {"authorization": f"Bearer {ADMIN_TOKEN}"}
        assert client.post(reload_url, headers=auth).status_code == 200
        good_catalog = catalog.read_text(encoding="utf-8")
        catalog.write_text(good_catalog.replace("version: 1", "version: 99"), encoding="utf-8")
        assert client.post(reload_url, headers=auth).status_code == 422
        catalog.write_text(good_catalog, encoding="utf-8")

        # Shadow: traffic while the embedding server works, then while it fails (fail-open, and 503 on /v1/gate).
        statuses = send(client, f"{shadow}/v1/chat/completions",
                        [chat(text) for text in generated_messages(rng, 16)] + [chat(""), chat("   ")])
        embeddings.fail_first = 10 ** 9  # every request from now on fails
        statuses += send(client, f"{shadow}/v1/chat/completions", [chat(text) for text in generated_messages(rng, 6)])
        statuses += send(client, f"{shadow}/v1/gate", [{"text": text} for text in generated_messages(rng, 3)])
        assert statuses.count(200) == 24 and statuses.count(503) == 3, statuses

        sent = 64 + 20 + 4 + 4 + 24 + 3
        wait_until(lambda: scalar(client, prometheus, "sum(gatekeeper_requests_total)") == sent, SCRAPE_TIMEOUT_S,
                   f"Prometheus to scrape all {sent} requests")
        time.sleep(2.0)  # two more scrapes, so that every rate window holds the traffic's last samples

        queries = [(q.name, substitute_variables(q.expr)) for q in panel_queries(load_dashboard())]
        queries += [(f"recording rule {rule}", rule) for rule in ("job:gatekeeper_decisions:rate5m",
                                                                  "job:gatekeeper_rejection_ratio:rate5m",
                                                                  "job:gatekeeper_rejection_ratio:rate1d")]
        problems = []
        for name, expr in queries:
            answer = query(client, prometheus, expr)
            if answer["status"] != "success":
                problems.append(f"{name}: {answer.get('error')}  <- {expr}")
            elif not answer["data"]["result"]:
                problems.append(f"{name}: no data  <- {expr}")

    if missing:
        problems.insert(0, f"metrics missing from the real /metrics output: {missing}")
    assert not problems, "\n".join(problems)
