"""deploy/prometheus: promtool validates the config and rules and runs the alert unit tests.

promtool comes with Debian's ``prometheus`` package. Without it these tests
fail under CI (``CI=true``) and are skipped elsewhere.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.conftest import REPO
from tests.deploy_support import (PROMETHEUS_DIR, load_dashboard, panel_queries, require_tool,
                                  substitute_variables)

ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
OPERATIONS = REPO / "docs" / "operations.md"


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess:
    """Run promtool; its exit status is left to the caller."""
    return subprocess.run([require_tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def alert_rules() -> list[dict]:
    """Every alerting rule of alerts.yml."""
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_prometheus_config_is_valid() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_are_valid() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    cases: dict[str, list[bool]] = {}
    for test in yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(bool(case["exp_alerts"]))
    for rule in alert_rules():
        outcomes = cases.get(rule["alert"], [])
        assert True in outcomes, f"{rule['alert']}: no test case where it fires"
        assert False in outcomes, f"{rule['alert']}: no test case where it stays silent"


def test_every_alert_is_labelled_and_documented() -> None:
    anchors = {re.sub(r"[^a-z0-9-]", "", line.lstrip("#").strip().lower().replace(" ", "-"))
               for line in OPERATIONS.read_text(encoding="utf-8").splitlines() if line.startswith("#")}
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        document, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert document == "docs/operations.md" and anchor in anchors, (
            f"{rule['alert']}: runbook {rule['annotations']['runbook']} has no heading in docs/operations.md")


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every panel query (Grafana variables substituted) as a recording rule."""
    queries = panel_queries(load_dashboard())
    rules = [{"record": f"dashboard:query_{number}", "expr": substitute_variables(query.expr)}
             for number, query in enumerate(queries)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    result = promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout

