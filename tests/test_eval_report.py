"""``gatekeeper eval`` as a report a team lead can act on, through the real CLI and the default model.

A small Chinese shop catalog and a labelled file with deliberate mistakes: the
report explains its figures, ranks intents with correct precision and recall,
lists the false rejects and false accepts with their texts, writes every
mistake to ``--errors`` atomically, and stays quiet in a closed pipe.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import unicodedata
from collections import Counter

import pytest
import yaml

#: Packs off, so the built-in conversation and off-topic packs cannot move these figures.
CATALOG = """\
version: 1
name: shop-zh
conversation_pack: none
out_of_scope_pack: none
intents:
  - name: 查询物流
    examples: [我的快递到哪了, 帮我查一下物流, 订单什么时候发货, 包裹怎么还没到, 快递单号是多少, 物流信息一直不更新,
               我买的东西发货了吗, 预计几天能送到, where is my package, has my order shipped]
  - name: 申请退货
    examples: [我要退货, 这个商品怎么退, 收到的东西坏了想退掉, 七天无理由退货怎么申请, 退货运费谁出, 退款什么时候到账,
               衣服尺码不合适想退, 怎么寄回退货商品]
  - name: 修改地址
    examples: [收货地址填错了, 帮我改一下收货地址, 能换个地址送吗, 下单后还能改地址吗, 我搬家了要改地址, 地址写错了怎么办,
               把收件人电话改一下, 修改收货人信息]
out_of_scope: [今天天气怎么样, 给我讲个笑话, 帮我写一首诗, 一加一等于几, 推荐一部好看的电影, 你是谁开发的]
"""

#: (text, label). Labelled wrong on purpose: the last four 修改地址 rows (one is a return, three are off topic,
#: so 修改地址 refuses far more of its rows than the others) and the first off-topic row (a delivery question).
ROWS = [
    ("快递到哪儿了呀", "查询物流"), ("我的包裹发出了没有", "查询物流"), ("物流显示卡在中转站三天了", "查询物流"),
    ("单号查不到信息", "查询物流"), ("什么时候能收到货", "查询物流"), ("发货太慢了吧", "查询物流"),
    ("帮我查查物流到哪了", "查询物流"), ("订单发货了吗", "查询物流"), ("where is my parcel", "查询物流"),
    ("我想把这件衣服退了", "申请退货"), ("退货流程是什么", "申请退货"), ("商品有质量问题要退款", "申请退货"),
    ("退货地址在哪里", "申请退货"), ("已经寄回了什么时候退款", "申请退货"), ("不想要了能退吗", "申请退货"),
    ("东西坏了我要退货", "申请退货"), ("退款多久到账", "申请退货"),
    ("地址填错了能改吗", "修改地址"), ("换一个收货地址", "修改地址"), ("收件人名字写错了", "修改地址"),
    ("我想改成送到公司", "修改地址"), ("帮我把地址改一下", "修改地址"),
    ("我要退货", "修改地址"), ("今天天气怎么样", "修改地址"), ("给我讲个笑话", "修改地址"), ("帮我写一首诗", "修改地址"),
    ("我的快递到哪了", "oos"), ("明天会下雨吗", "oos"), ("讲个笑话听听", "oos"), ("帮我写首关于秋天的诗", "oos"),
    ("三加五等于多少", "oos"), ("最近有什么好看的电视剧", "oos"), ("你喜欢什么颜色", "oos"),
    ("write me a poem about the sea", "oos"), ("股票明天会涨吗", "oos"),
]
INTENTS = ("查询物流", "申请退货", "修改地址")


def gatekeeper(*args: str, expect: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "gatekeeper", *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == expect, result.stderr
    return result


def width(text: str) -> int:
    """Terminal columns, counted independently of the code under test."""
    return sum(2 if unicodedata.east_asian_width(char) in ("W", "F") else 1 for char in text)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """One catalog and data file; ``eval --json --errors`` and the human report (over a stale errors file)."""
    folder = tmp_path_factory.mktemp("eval_report")
    catalog, data, errors = folder / "shop.yaml", folder / "test.jsonl", folder / "out" / "errors.jsonl"
    catalog.write_text(CATALOG, encoding="utf-8")
    data.write_text("".join(json.dumps({"text": t, "label": label}, ensure_ascii=False) + "\n" for t, label in ROWS),
                    encoding="utf-8")
    args = ("eval", "--catalog", str(catalog), "--data", str(data))
    summary = json.loads(gatekeeper(*args, "--json", "--errors", str(errors)).stdout)
    written = [json.loads(line) for line in errors.read_text(encoding="utf-8").splitlines()]
    raw = errors.read_text(encoding="utf-8")
    errors.write_text("stale\n", encoding="utf-8")
    human = gatekeeper(*args, "--errors", str(errors)).stdout
    return {"folder": folder, "args": args, "json": summary, "errors": written, "raw": raw, "human": human,
            "errors_path": errors}


def section(text: str, title: str) -> list[str]:
    """The lines of the report section starting with ``title``, up to the next blank line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def test_header_and_every_metric_explained(report):
    human, summary = report["human"], report["json"]
    assert f"{report['folder'] / 'shop.yaml'}" in human and f"{report['folder'] / 'test.jsonl'}" in human
    assert f"{len(ROWS)}: {len(ROWS) - summary['n_oos']} in scope, {summary['n_oos']} off topic" in human
    assert "thresholds  auto: set so that at most 5% of the catalog's own examples are refused" in human
    explained = {
        "false-reject rate": "customers who got the canned reply instead of help",
        "OOS recall": "LLM calls saved",
        "OOS precision": "refused messages that really were off topic",
        "rejected share": "canned reply instead of the LLM",
        "in-scope accuracy": "nearest intent is the right one",
        "accuracy with OOS": "handled right end to end",
        "AUROC": "1.0 = perfectly, 0.5 = chance",
        "FPR at 95% TPR": "accepts 95% of in-scope ones",
    }
    key = {"false-reject rate": "false_reject_rate", "OOS recall": "oos_recall", "OOS precision": "oos_precision",
           "rejected share": "rejected_share", "in-scope accuracy": "in_scope_accuracy",
           "accuracy with OOS": "accuracy_with_oos", "AUROC": "auroc", "FPR at 95% TPR": "fpr_at_95_tpr"}
    for label, meaning in explained.items():
        line = next(line for line in human.splitlines() if line.strip().startswith(label))
        assert f"{summary[key[label]]:.3f}" in line and meaning in line, line


def test_in_scope_accuracy_is_set_beside_what_the_build_expected(report):
    human, expected = report["human"], report["json"]["expected_in_scope_accuracy"]
    examples = sum(len(intent["examples"]) for intent in yaml.safe_load(CATALOG)["intents"])
    assert expected["n"] == examples and expected["low"] <= expected["rate"] <= expected["high"]
    lines = section(human, "quality at these thresholds")
    assert (f"  the build expected an in-scope accuracy of {expected['rate']:.3f} (95% {expected['low']:.3f}-"
            f"{expected['high']:.3f}) from the catalog's own examples") in "\n".join(lines)
    worse = report["json"]["in_scope_accuracy"] < expected["low"]
    assert any(line.startswith("  this data does worse: its in-scope messages are unlike the examples")
               for line in lines) == worse


def test_per_intent_figures_match_an_independent_count(report):
    """Precision and recall from the data and the --errors file alone agree with --json and the table."""
    summary, errors = report["json"], report["errors"]
    support = Counter(label for _, label in ROWS if label != "oos")
    refused = Counter(e["label"] for e in errors if e["kind"] == "false_reject")
    wrong = Counter(e["label"] for e in errors if e["kind"] == "wrong_intent")
    stolen = Counter(e["predicted"] for e in errors if e["kind"] in ("wrong_intent", "false_accept"))
    overall = sum(refused.values()) / sum(support.values())
    by_name = {row["intent"]: row for row in summary["per_intent"]}
    assert set(INTENTS) <= set(by_name)
    table = section(report["human"], "per intent, worst F1 first")
    header = table[1]
    for name in INTENTS:
        hits = support[name] - refused[name] - wrong[name]
        precision, recall = hits / (hits + stolen[name]), hits / support[name]
        row = by_name[name]
        assert row["support"] == support[name]
        assert row["precision"] == pytest.approx(precision) and row["recall"] == pytest.approx(recall)
        assert row["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
        assert row["false_reject_rate"] == pytest.approx(refused[name] / support[name])
        assert row["flagged"] == (support[name] >= 3 and refused[name] / support[name] > 2 * overall)
        line = next(line for line in table if line.startswith(f"  {name} "))
        assert f"{precision:.3f}" in line and f"{recall:.3f}" in line and ("<<" in line) == row["flagged"]
        assert width(line.split("  <<")[0]) == width(header)  # Chinese names keep the columns aligned
    assert any(row["flagged"] for row in summary["per_intent"])  # 修改地址 refuses its off-topic-looking rows
    f1 = [row["f1"] for row in summary["per_intent"]]
    assert f1 == sorted(f1)  # worst first
    listed = [line.split()[0] for line in table[2:] if not line.startswith("  <<")]
    assert listed == [row["intent"] for row in summary["per_intent"]]


def test_false_rejects_and_false_accepts_are_listed_with_their_texts(report):
    errors, human = report["errors"], report["human"]
    for kind, title in (("false_reject", "false rejects:"), ("false_accept", "false accepts:")):
        rows = [e for e in errors if e["kind"] == kind]
        lines = section(human, title)
        assert f"{len(rows)} of " in lines[0]
        assert rows, f"the data should produce a {kind}"
        for error in rows[:10]:
            line = next(line for line in lines if line.endswith(f"  {error['text']}"))
            assert f"{error['score']:.3f}" in line and f"{error['threshold']:.3f}" in line
            assert error["predicted"] in line
            if kind == "false_reject":
                assert f"{error['label']} -> {error['predicted']}" in line
    assert "most confused intents" in human


def test_errors_file_has_every_mistake_and_matches_json(report):
    errors, summary = report["errors"], report["json"]
    for key in ("n", "n_oos", "in_scope_accuracy", "auroc", "fpr_at_95_tpr", "oos_recall", "false_reject_rate",
                "oos_precision", "accuracy_with_oos", "rejected_share", "threshold_source"):
        assert key in summary
    assert Counter(e["kind"] for e in errors) == {k: v for k, v in summary["errors"].items() if v}
    assert set(summary["errors"]) == {"false_reject", "false_accept", "wrong_intent"}
    assert "我要退货" in report["raw"] and "\\u" not in report["raw"]
    for error in errors:
        assert set(error) == {"text", "label", "predicted", "score", "threshold", "kind"}
        assert (error["score"] >= error["threshold"]) == (error["kind"] != "false_reject")
        assert (error["label"] == "oos") == (error["kind"] == "false_accept")
    mistakes = {(e["text"], e["kind"]) for e in errors}
    assert {("我要退货", "wrong_intent"), ("今天天气怎么样", "false_reject"), ("我的快递到哪了", "false_accept")} <= mistakes
    # The human run replaced the stale file whole, through a temp file that is gone.
    assert report["errors_path"].read_text(encoding="utf-8") == report["raw"]
    assert [p.name for p in report["errors_path"].parent.iterdir()] == ["errors.jsonl"]
    assert f"wrote {len(errors)} mistakes" in report["human"]


def test_unwritable_errors_path_fails_before_scoring_and_writes_nothing(report, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x", encoding="utf-8")
    result = gatekeeper(*report["args"], "--errors", str(blocker / "errors.jsonl"), expect=2)
    assert f"--errors {blocker / 'errors.jsonl'}: cannot write the errors file" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert [p.name for p in tmp_path.iterdir()] == ["not_a_folder"]


@pytest.mark.parametrize("reader", ["head -3", "true"])
def test_closed_pipe_exits_quietly(report, reader):
    """``| head -3`` (reader leaves mid-output) and ``| true`` (reader gone before any output)."""
    command = shlex.join([sys.executable, "-m", "gatekeeper", *report["args"]])
    result = subprocess.run(["bash", "-c", f"set -o pipefail; {command} | {reader}; exit ${{PIPESTATUS[0]}}"],
                            capture_output=True, text=True, timeout=600)
    assert "Traceback" not in result.stderr and "Broken pipe" not in result.stderr, result.stderr
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == (3 if reader.startswith("head") else 0)
