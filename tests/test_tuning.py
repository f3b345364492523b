"""import -> build -> tune -> eval on the shared datasets, through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gatekeeper.core.thresholds import (operating_points, pick_max_false_reject, pick_min_cost, pick_min_oos_recall,
                                   pick_youden, threshold_for_false_reject)
from tests.conftest import SHARED_DATA

SMP = SHARED_DATA / "smp2017_ecdt"
CLINC = SHARED_DATA / "clinc150"


def gatekeeper(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "gatekeeper", *args], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def smp_catalog(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smp") / "smp.yaml"
    gatekeeper("import", str(SMP / "train.jsonl"), "--out", str(out), "--oos-label", "chat")
    return out


def test_import_makes_a_catalog(smp_catalog):
    from gatekeeper.catalog.loader import load_catalog

    catalog = load_catalog(smp_catalog)
    labels = {json.loads(line)["label"] for line in (SMP / "train.jsonl").open(encoding="utf-8")}
    assert set(catalog.intent_names()) == labels - {"chat"}  # imported catalogs have no conversation pack
    assert len(catalog.out_of_scope) > 100


def test_import_refuses_to_overwrite(smp_catalog):
    result = subprocess.run([sys.executable, "-m", "gatekeeper", "import", str(SMP / "train.jsonl"),
                             "--out", str(smp_catalog)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--force" in result.stderr


def test_import_names_the_bad_line(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"text": "hi", "label": "greet"}\n{"text": "oops"\n', encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "gatekeeper", "import", str(data), "--out",
                             str(tmp_path / "x.yaml")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"{data}:2: not valid JSON" in result.stderr


def test_tune_then_eval_uses_saved_thresholds(smp_catalog, tmp_path):
    before = json.loads(gatekeeper("eval", "--catalog", str(smp_catalog), "--data", str(SMP / "test.jsonl"),
                                   "--oos-label", "chat", "--json").stdout)
    assert before["threshold_source"] == "auto"
    report = tmp_path / "report"
    tuned = gatekeeper("tune", "--catalog", str(smp_catalog), "--data", str(SMP / "validation.jsonl"),
                       "--oos-label", "chat", "--per-intent", "--report", str(report))
    assert "saved" in tuned.stdout
    saved = json.loads(smp_catalog.with_name("smp.tuning.json").read_text())
    assert saved["policy"]["kind"] == "max_false_reject" and saved["calibrator"]
    assert saved["validation"]["false_reject_rate"] <= 0.08
    for name in ("roc.png", "scores.png", "report.md", "report.json"):
        assert (report / name).stat().st_size > 1000
    after = json.loads(gatekeeper("eval", "--catalog", str(smp_catalog), "--data", str(SMP / "test.jsonl"),
                                  "--oos-label", "chat", "--json").stdout)
    assert after["threshold_source"] == "tuned"
    for key in ("n", "n_oos", "in_scope_accuracy", "auroc", "oos_recall", "false_reject_rate", "oos_precision",
                "accuracy_with_oos", "fpr_at_95_tpr"):
        assert key in after
    assert after["n"] == 667 and after["n_oos"] == 51
    assert after["auroc"] >= 0.96 and after["in_scope_accuracy"] >= 0.92
    assert after["oos_recall"] >= 0.75 and after["false_reject_rate"] <= 0.08
    # route picks the tuned thresholds up with no extra flag.
    routed = json.loads(gatekeeper("route", "--catalog", str(smp_catalog), "--json", "今天天气怎么样").stdout)
    assert routed["threshold"] == pytest.approx(saved["per_intent"].get(routed["intent"], saved["global_threshold"]),
                                                abs=1e-5)


def test_eval_table_lists_confused_intents(smp_catalog):
    out = gatekeeper("eval", "--catalog", str(smp_catalog), "--data", str(SMP / "test.jsonl"),
                     "--oos-label", "chat").stdout
    assert "in-scope accuracy" in out and "per intent, worst F1 first" in out and "most confused intents" in out


def test_tune_without_out_of_scope_rows_is_a_clear_error(smp_catalog, tmp_path):
    data = tmp_path / "only_in.jsonl"
    data.write_text('{"text": "打开微信", "label": "app"}\n', encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "gatekeeper", "tune", "--catalog", str(smp_catalog),
                             "--data", str(data)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--oos-label" in result.stderr and "Traceback" not in result.stderr


def test_policies_pick_the_documented_points():
    rng = np.random.default_rng(0)
    inside, outside = rng.normal(1.0, 0.5, 2000), rng.normal(-1.0, 0.5, 500)
    points = operating_points(inside, outside)
    point = pick_max_false_reject(points, 0.05)
    assert point.false_reject_rate <= 0.05
    assert point.oos_recall == max(p.oos_recall for p in points if p.false_reject_rate <= 0.05)
    point = pick_min_oos_recall(points, 0.99)
    assert point.oos_recall >= 0.99
    youden = pick_youden(points)
    assert abs(youden.threshold) < 0.2  # equal spreads: J peaks half-way between the means
    cheap_refusals = pick_min_cost(points, 0.2, cost_llm_call=1.0, cost_false_reject=0.01)
    dear_refusals = pick_min_cost(points, 0.2, cost_llm_call=1.0, cost_false_reject=100.0)
    assert cheap_refusals.threshold > dear_refusals.threshold
    assert threshold_for_false_reject(np.arange(100.0), 0.05) == 5.0


@pytest.mark.slow
def test_clinc150_protocol_meets_quality_floor(tmp_path):
    """The full protocol on CLINC150: import train, tune on validation, eval on test."""
    catalog = tmp_path / "clinc.yaml"
    gatekeeper("import", str(CLINC / "train.jsonl"), "--out", str(catalog))
    gatekeeper("tune", "--catalog", str(catalog), "--data", str(CLINC / "validation.jsonl"))
    result = json.loads(gatekeeper("eval", "--catalog", str(catalog), "--data", str(CLINC / "test.jsonl"),
                                   "--json").stdout)
    assert result["auroc"] >= 0.97
    assert result["oos_recall"] >= 0.85 and result["false_reject_rate"] <= 0.06
    assert result["in_scope_accuracy"] >= 0.95
