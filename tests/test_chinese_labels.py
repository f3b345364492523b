"""Chinese intent names end to end through the CLI: SMP2017 with Chinese labels imports, tunes and evaluates
with exactly the figures of the same data under its ASCII labels; unknown labels are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA

SMP = SHARED_DATA / "smp2017_ecdt"
#: SMP2017's labels in Chinese, as a Chinese team would name them; 闲聊 (chat) is out of scope.
CHINESE = {
    "app": "应用", "bus": "公交", "calc": "计算", "chat": "闲聊", "cinemas": "影院", "contacts": "联系人",
    "cookbook": "菜谱", "datetime": "日期时间", "email": "邮件", "epg": "节目单", "flight": "航班", "health": "健康",
    "lottery": "彩票", "map": "地图", "match": "比赛", "message": "短信", "music": "音乐", "news": "新闻",
    "novel": "小说", "poetry": "诗词", "radio": "电台", "riddle": "谜语", "schedule": "日程", "stock": "股票",
    "telephone": "电话", "train": "火车", "translation": "翻译", "tvchannel": "电视频道", "video": "视频",
    "weather": "天气", "website": "网站",
}


def figures(result: dict) -> dict:
    """The scalar figures of an ``eval --json`` object."""
    return {key: value for key, value in result.items()
            if key not in ("per_intent", "errors", "expected_in_scope_accuracy")}


def per_intent(result: dict) -> dict:
    """``eval --json``'s per-intent figures, flat, keyed by (ASCII label, figure)."""
    ascii_name = {chinese: label for label, chinese in CHINESE.items()} | {label: label for label in CHINESE}
    return {(ascii_name[row["intent"]], key): value for row in result["per_intent"] for key, value in row.items()
            if key != "intent"}


def gatekeeper(*args: str, expect: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "gatekeeper", *args], capture_output=True, text=True, timeout=900)
    assert result.returncode == expect, result.stderr
    return result


def relabelled(folder: Path, split: str, names: dict[str, str]) -> Path:
    out = folder / f"{split}.jsonl"
    with open(SMP / f"{split}.jsonl", encoding="utf-8") as source, open(out, "w", encoding="utf-8") as target:
        for line in source:
            row = json.loads(line)
            target.write(json.dumps({"text": row["text"], "label": names[row["label"]]}, ensure_ascii=False) + "\n")
    return out


def protocol(folder: Path, stem: str, names: dict[str, str]) -> tuple[dict, dict, Path]:
    """import -> eval (auto) -> tune -> eval (tuned), all through the CLI; the two evals' JSON and the catalog."""
    folder.mkdir()
    catalog = folder / f"{stem}.yaml"
    oos = names["chat"]
    gatekeeper("import", str(relabelled(folder, "train", names)), "--out", str(catalog), "--oos-label", oos)
    test = str(relabelled(folder, "test", names))
    auto = json.loads(gatekeeper("eval", "--catalog", str(catalog), "--data", test, "--oos-label", oos,
                                 "--json").stdout)
    gatekeeper("tune", "--catalog", str(catalog), "--data", str(relabelled(folder, "validation", names)),
               "--oos-label", oos, "--per-intent")
    tuned = json.loads(gatekeeper("eval", "--catalog", str(catalog), "--data", test, "--oos-label", oos,
                                  "--json").stdout)
    return auto, tuned, catalog


@pytest.mark.slow
def test_smp2017_with_chinese_labels_gives_the_ascii_figures(tmp_path):
    ascii_auto, ascii_tuned, _ = protocol(tmp_path / "ascii", "smp_ascii", {label: label for label in CHINESE})
    zh_auto, zh_tuned, catalog = protocol(tmp_path / "zh", "smp_zh", CHINESE)
    for zh, ascii_ in ((zh_auto, ascii_auto), (zh_tuned, ascii_tuned)):
        assert figures(zh) == pytest.approx(figures(ascii_), abs=1e-9)
        assert zh["errors"] == ascii_["errors"]
        assert zh["expected_in_scope_accuracy"] == pytest.approx(ascii_["expected_in_scope_accuracy"], abs=1e-9)
        assert per_intent(zh) == pytest.approx(per_intent(ascii_), abs=1e-9)
    assert zh_tuned["in_scope_accuracy"] >= 0.9 and zh_tuned["threshold_source"] == "tuned"
    text = catalog.read_text(encoding="utf-8")
    assert "- name: 天气" in text and "\\u" not in text  # readable Chinese in the YAML
    tuning = catalog.with_name("smp_zh.tuning.json").read_text(encoding="utf-8")
    assert '"天气"' in tuning or '"航班"' in tuning or "per_intent" in tuning
    routed = json.loads(gatekeeper("route", "--catalog", str(catalog), "--json", "明天北京天气怎么样").stdout)
    assert routed["intent"] == "天气" and routed["accepted"]
    assert "天气" in gatekeeper("route", "--catalog", str(catalog), "明天北京天气怎么样").stdout

    # A label the catalog does not know: exit 2, every unknown label listed with a suggestion, nothing written.
    data = tmp_path / "typo.jsonl"
    data.write_text("".join(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n" for text, label in
                            [("明天下雨吗", "天汽"), ("后天下雪吗", "天汽"), ("订张机票", "航班"), ("你好", "问候")]),
                    encoding="utf-8")
    before = catalog.with_name("smp_zh.tuning.json").read_bytes()
    for command in ("eval", "tune"):
        refused = gatekeeper(command, "--catalog", str(catalog), "--data", str(data), "--oos-label", "闲聊", expect=2)
        assert f"{data}: 2 labels are not an intent of the catalog (3 rows)" in refused.stderr
        assert "'天汽': 2 rows; did you mean '天气'?" in refused.stderr
        assert "'问候': 1 row;" in refused.stderr and "--oos-label" in refused.stderr
        assert "Traceback" not in refused.stderr
    assert catalog.with_name("smp_zh.tuning.json").read_bytes() == before
