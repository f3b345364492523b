"""The tuning report: Chinese names render in the images, JSON keeps them readable, and ``--report`` is
checked before any tuning work."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from gatekeeper.cli import EXIT_USAGE, main
from gatekeeper.core.router import Thresholds
from gatekeeper.core.thresholds import operating_points
from gatekeeper.errors import UserError
from gatekeeper.measure import fonts
from gatekeeper.measure.report import check_report_destination, write_report
from gatekeeper.measure.tune import Policy, TuneResult
from gatekeeper.store.tuning_file import Tuning, tuning_path
from tests.conftest import INTENTS

CATALOG_NAME = "星河通信客服"
INTENT_SHIFTS = {"话费查询": 0.05, "套餐变更": -0.03, "宽带报修": 0.01}


def chinese_result() -> TuneResult:
    """A tuning result with Chinese intent names, built from synthetic scores (no model)."""
    rng = np.random.default_rng(0)
    inside, outside = rng.beta(8, 1.5, 300), rng.beta(1.2, 6, 60)
    points = operating_points(inside, outside)
    chosen = Policy().pick(points, oos_share=len(outside) / (len(inside) + len(outside)))
    per_intent = {name: chosen.threshold + shift for name, shift in INTENT_SHIFTS.items()}
    tuning = Tuning(fingerprint="test", global_threshold=chosen.threshold, per_intent=per_intent,
                    policy=asdict(Policy()), validation={"auroc": 0.97})
    thresholds = Thresholds(global_threshold=chosen.threshold, per_intent=np.array(list(per_intent.values())),
                            source="tuned")
    return TuneResult(tuning=tuning, points=points, chosen=chosen, in_scope_scores=inside, oos_scores=outside,
                      thresholds=thresholds)


def test_report_renders_chinese_names(tmp_path, caplog):
    assert fonts.find_cjk_font(), f"no CJK font installed; bash .ci/run installs {fonts.FONT_PACKAGE}"
    caplog.set_level(logging.WARNING, logger="matplotlib")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = write_report(tmp_path, chinese_result(), CATALOG_NAME)
    missing = [str(w.message) for w in caught if "missing from font" in str(w.message)]
    assert not missing, missing
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("matplotlib")]
    assert [p.name for p in written] == ["roc.png", "scores.png", "intents.png", "report.md", "report.json"]
    for png in written[:3]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    raw = (tmp_path / "report.json").read_text(encoding="utf-8")
    assert CATALOG_NAME in raw and all(name in raw for name in INTENT_SHIFTS) and "\\u" not in raw
    assert json.loads(raw)["tuning"]["per_intent"].keys() == INTENT_SHIFTS.keys()
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| 话费查询 | " in markdown and "![Per-intent thresholds](intents.png)" in markdown


def test_missing_cjk_font_is_reported_only_for_cjk_text(monkeypatch, caplog):
    import matplotlib
    from matplotlib import font_manager

    # Only matplotlib's bundled fonts: DejaVu has no Chinese, and "Last Resort" only has placeholder boxes.
    bundled = Path(matplotlib.get_data_path()).resolve()
    monkeypatch.setattr(font_manager.fontManager, "ttflist", [
        entry for entry in font_manager.fontManager.ttflist if Path(entry.fname).resolve().is_relative_to(bundled)])
    monkeypatch.setattr(font_manager, "findSystemFonts", lambda *args, **kwargs: [])
    monkeypatch.setattr(logging.getLogger("gatekeeper"), "propagate", True)
    monkeypatch.setattr(logging.getLogger("gatekeeper"), "handlers", [])  # as before any in-process CLI run
    caplog.set_level(logging.WARNING, logger="gatekeeper")
    assert fonts.find_cjk_font() is None
    assert fonts.cjk_font_settings(["billing", "bill_inquiry"]) == {}
    assert not caplog.records
    assert fonts.cjk_font_settings(["话费查询"]) == {}
    [record] = caplog.records
    assert record.getMessage() == "no_cjk_font" and record.hint == fonts.MISSING_CJK_FONT
    assert "empty boxes" in record.hint and "apt-get install fonts-wqy-microhei" in record.hint


def test_report_destination_must_be_writable(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for folder in (blocker, blocker / "report"):
        with pytest.raises(UserError, match="choose a writable folder"):
            check_report_destination(folder)
    check_report_destination(tmp_path / "new" / "report")
    assert not (tmp_path / "new").exists()


def test_report_needs_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UserError, match=r"pip install -e '\.\[report\]'"):
        check_report_destination(tmp_path)


def test_tune_checks_report_folder_before_tuning(tmp_path, monkeypatch, capsys):
    catalog = Path(shutil.copy(INTENTS / "telecom_zh.yaml", tmp_path / "telecom_zh.yaml"))
    data = tmp_path / "valid.jsonl"
    data.write_text('{"text": "帮我查下这个月的话费", "label": "bill_inquiry"}\n'
                    '{"text": "今天天气怎么样", "label": "oos"}\n', encoding="utf-8")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    # main() would point gatekeeper's log handler at this test's captured stderr for the rest of the session.
    monkeypatch.setattr("gatekeeper.logs.configure_logging", lambda level=None: None)
    code = main(["tune", "--catalog", str(catalog), "--data", str(data), "--report", str(blocker / "report")])
    assert code == EXIT_USAGE
    assert "choose a writable folder" in capsys.readouterr().err
    assert not tuning_path(catalog).exists()
