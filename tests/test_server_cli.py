"""``gatekeeper serve`` as a process: effective configuration printed with secrets masked, SIGHUP reload."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.server_fixtures import SHOP, chat_body, free_port, write_catalog

START_TIMEOUT_S = 90


def wait_until(predicate, timeout: float, what: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited while waiting for {what}"
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_serve_prints_masked_config_and_reloads_on_sighup(tmp_path: Path):
    catalog = tmp_path / "shop.yaml"
    write_catalog(catalog, SHOP)
    config = tmp_path / "gk.yaml"
    config.write_text("decision_log_text: full\nlog_level: warning\n", encoding="utf-8")
    port = free_port()
    env = {**os.environ, "GATEKEEPER_MODE": "shadow", "GATEKEEPER_ADMIN_TOKEN": "tok-secret-1",
           "GATEKEEPER_UPSTREAM_API_KEY": "sk-secret-2",
           "GATEKEEPER_UPSTREAM_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"}
    output = (tmp_path / "out.txt").open("w+", encoding="utf-8")
    process = subprocess.Popen([sys.executable, "-m", "gatekeeper", "serve", "--catalog", str(catalog),
                                "--port", str(port), "--mode", "enforce", "--config", str(config)],
                               env=env, stdout=output, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{base}/readyz", timeout=2).status_code == 200, START_TIMEOUT_S,
                   "readiness", process)
        printed = Path(output.name).read_text(encoding="utf-8")
        assert "effective configuration" in printed
        assert "sk-secret-2" not in printed and "tok-secret-1" not in printed
        lines = {line.split()[0]: line for line in printed.splitlines() if " = " in line}
        assert "***" in lines["admin_token"] and "(env)" in lines["admin_token"]
        assert "***" in lines["upstream_api_key"]
        assert "enforce" in lines["mode"] and "(flag)" in lines["mode"]
        assert "full" in lines["decision_log_text"] and "(file)" in lines["decision_log_text"]

        def reply() -> str:
            response = httpx.post(f"{base}/v1/chat/completions", json=chat_body("tell me a joke"), timeout=10)
            return response.json()["choices"][0]["message"]["content"]

        assert reply() == "Sorry, I only help with orders."
        write_catalog(catalog, {**SHOP, "defaults": {"reject_reply": {"en": "Reloaded by SIGHUP.", "zh": "已重载"}}})
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: reply() == "Reloaded by SIGHUP.", 30, "the SIGHUP reload", process)
        assert 'gatekeeper_reloads_total{result="success"} 1.0' in httpx.get(f"{base}/metrics", timeout=10).text
    finally:
        process.terminate()
        try:
            process.wait(15)
        finally:
            if process.poll() is None:
                process.kill()
            output.close()
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal it captured.
    assert process.returncode in (0, -signal.SIGTERM)


def test_serve_refuses_a_bad_catalog_before_starting(tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "gatekeeper", "serve", "--catalog", str(tmp_path / "none.yaml"),
                             "--port", str(free_port())], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "catalog error" in result.stderr and "none.yaml" in result.stderr


def test_serve_refuses_bad_settings(tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "gatekeeper", "serve", "--catalog", str(tmp_path / "x.yaml")],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "GATEKEEPER_PORT": "eighty"})
    assert result.returncode == 2
    assert "port (from GATEKEEPER_PORT)" in result.stderr
