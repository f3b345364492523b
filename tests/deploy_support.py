"""Helpers for the tests of deploy/: locating external tools and reading the dashboard's PromQL."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

DEPLOY = REPO / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "gatekeeper.json"
#: The sidecar's metrics (a contract with the server): the dashboard must use every one.
METRICS = [
    "gatekeeper_decisions_total", "gatekeeper_rejected_calls_total", "gatekeeper_shadow_rejections_total",
    "gatekeeper_score", "gatekeeper_gate_latency_seconds", "gatekeeper_upstream_latency_seconds",
    "gatekeeper_upstream_errors_total", "gatekeeper_llm_calls_saved_total", "gatekeeper_tokens_saved_total",
    "gatekeeper_catalog_info", "gatekeeper_reloads_total", "gatekeeper_in_flight_requests",
    "gatekeeper_embedding_failures_total", "gatekeeper_requests_total", "gatekeeper_batch_size",
    "gatekeeper_actions_total",
]

#: What the Grafana variables the dashboard uses stand for when its queries run outside Grafana.
GRAFANA_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
    "job": ".*",
    "instance": ".*",
}


def require(present: bool, what: str, install_hint: str) -> None:
    """Fail the test under CI (``CI=true``) if ``what`` is missing; skip it elsewhere."""
    if present:
        return
    message = f"{what} is not installed ({install_hint})"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_tool(name: str, install_hint: str = "Debian: apt-get install prometheus") -> str:
    """The path of executable ``name``; see :func:`require` for what happens when it is missing."""
    path = shutil.which(name)
    require(path is not None, name, install_hint)
    return str(path)


@dataclass(frozen=True)
class PanelQuery:
    """One PromQL target of a dashboard panel."""

    panel: str
    ref_id: str
    expr: str

    @property
    def name(self) -> str:
        """A readable id, e.g. for test parameters: ``panel title/refId``."""
        return f"{self.panel}/{self.ref_id}"


def load_dashboard(path: Path = DASHBOARD) -> dict:
    """The dashboard JSON as a dict."""
    return json.loads(path.read_text(encoding="utf-8"))


def panel_queries(dashboard: dict) -> list[PanelQuery]:
    """Every target expression of every panel (rows' nested panels included)."""
    queries = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                queries.append(PanelQuery(inner["title"], target["refId"], target["expr"]))
    return queries


def substitute_variables(expr: str, values: dict[str, str] = GRAFANA_VARIABLES) -> str:
    """``expr`` with Grafana's ``$name`` and ``${name}`` replaced; an unknown variable raises KeyError."""
    return re.sub(r"\$\{?(\w+)\}?", lambda match: values[match.group(1)], expr)
