"""A safe ``gatekeeper tune``: bad input refused with nothing written, before/after table, .prev, --dry-run,
rows scored like the sidecar, and tuning that survives catalog edits (re-derived, or stale and said so)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import httpx
import pytest

from gatekeeper.commands.common import labelled_rows
from gatekeeper.errors import UserError
from gatekeeper.gate import Gate
from gatekeeper.measure.evaluation import score_rows
from gatekeeper.measure.tune import Policy, TunePreview, preview
from gatekeeper.server.decision_log import DecisionLog
from tests.server_fixtures import write_catalog

#: A small bilingual shop catalog (builds in about a second).
SHOP = {
    "version": 1, "name": "shop", "conversation_pack": "none",
    "defaults": {"reject_reply": {"zh": "抱歉，我只处理订单问题。", "en": "Sorry, I only help with orders."}},
    "intents": [
        {"name": "查物流", "examples": ["我的快递到哪了", "订单什么时候发货", "帮我查一下物流", "包裹怎么还没到",
                                      "where is my order", "track my parcel"]},
        {"name": "退款", "examples": ["我要退款", "怎么申请退货退款", "钱什么时候退回来", "退款进度查询",
                                    "I want my money back", "how do I get a refund"]},
    ],
    "out_of_scope": ["今天天气怎么样", "讲个笑话", "红烧肉怎么做", "what's the weather today", "tell me a joke", "write a poem"],
}
IN_SCOPE = {
    "查物流": ["我的包裹到哪里了", "快递三天了还没到", "订单显示已发货但是没有物流信息", "能帮我查下快递单号吗", "什么时候能送到",
            "物流一直没更新", "我买的东西发货了吗", "快递员什么时候派送", "订单还在仓库吗", "包裹显示已签收但我没收到",
            "has my package shipped", "when will my order arrive", "my delivery is late", "where is my parcel now",
            "can you track order 12345", "the tracking number does not work", "is my order on the way",
            "how long until delivery"],
    "退款": ["我想退款", "退货以后钱多久到账", "申请退款被拒绝了怎么办", "怎么取消订单并退款", "退款到哪个账户",
           "商品有质量问题我要退钱", "退款一直没到账", "可以只退款不退货吗", "退款申请怎么提交", "我要退掉这个订单",
           "refund my purchase", "I want to return this item for a refund", "when will I get my refund",
           "my refund has not arrived", "how do I cancel and get my money back", "the refund was rejected",
           "can I get a refund without returning it", "refund status please"],
}
OFF_TOPIC = ["明天会下雨吗", "推荐一部好看的电影", "北京有什么好玩的地方", "怎么学习编程", "给我写一首诗", "一加一等于几",
             "今晚吃什么好", "足球比赛谁赢了", "帮我翻译这句话", "你喜欢什么颜色", "怎么减肥最快", "股票明天会涨吗",
             "讲一个鬼故事", "猫为什么喜欢睡觉", "what's the capital of France", "recommend a good book",
             "how do I bake bread", "who won the election", "tell me a fun fact", "what is the meaning of life",
             "how tall is mount everest", "play some music", "what time is it in Tokyo", "how to fix my bike",
             "write me a love letter", "what's 17 times 23", "best pizza recipe", "how do airplanes fly",
             "translate hello into Spanish", "who painted the Mona Lisa", "what's a good name for a dog",
             "how many planets are there"]
#: Every labelled row: 36 in scope, 32 off topic (labelled "chat", so --oos-label chat is needed).
ROWS = [{"text": text, "label": label} for label, texts in IN_SCOPE.items() for text in texts] + [
    {"text": text, "label": "chat"} for text in OFF_TOPIC]
POLICY_FLAGS = ("--oos-label", "chat", "--max-false-reject", "0.1")

#: A follow-up the telecom sidecar accepts only with its earlier turn (tests/test_server_conversation.py).
EARLIER, FOLLOW_UP = "我这个月话费怎么扣了这么多", "那另一个呢?"
#: A turn the shop catalog (no conversation pack) rescues FOLLOW_UP with, by the joined text.
SHOP_EARLIER = "我的快递三天了还没到"


def gatekeeper(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gatekeeper", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its content, to show that nothing was written."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    """The shop catalog and its labelled rows (valid.jsonl) in a fresh folder; returns the catalog path."""
    write_catalog(tmp_path / "shop.yaml", SHOP)
    write_jsonl(tmp_path / "valid.jsonl", ROWS)
    return tmp_path / "shop.yaml"


def refused(shop: Path, data: Path, *extra: str) -> str:
    """Run tune, check it failed cleanly (exit 2, no traceback) and wrote nothing; return its stderr."""
    before = files(shop.parent)
    result = gatekeeper("tune", "--catalog", shop, "--data", data, *POLICY_FLAGS, *extra)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert files(shop.parent) == before
    return result.stderr


def test_a_hash_mode_decision_log_is_refused_with_the_fix(shop, telecom_gate, tmp_path):
    log_path = tmp_path / "decisions.jsonl"
    log = DecisionLog(log_path, text_mode="hash")
    log.write(telecom_gate, telecom_gate.decide(EARLIER), endpoint="/v1/chat/completions", mode="enforce",
              outcome="accepted", language="zh")
    log.close()
    row = json.loads(log_path.read_text(encoding="utf-8"))
    data = write_jsonl(tmp_path / "labelled.jsonl", [*ROWS, {**row, "label": "查物流"}])
    error = refused(shop, data)
    assert f"{data}:{len(ROWS) + 1}: this decision-log row has no text" in error
    assert "decision_log_text=hash" in error and "decision_log_text=redact" in error
    assert "collect traffic again" in error


def test_too_little_data_is_refused_with_the_numbers_and_the_override(shop, tmp_path):
    few = write_jsonl(tmp_path / "few.jsonl", ROWS[:12] + ROWS[-8:])
    error = refused(shop, few)
    assert "12 in-scope and 8 off-topic rows" in error and "at least 30 of each" in error
    assert "Label more rows" in error and "--min-rows N" in error
    result = gatekeeper("tune", "--catalog", shop, "--data", few, *POLICY_FLAGS, "--min-rows", "8")
    assert result.returncode == 0, result.stderr
    assert json.loads(shop.with_name("shop.tuning.json").read_text())["stored_rows"]["min_rows"] == 8


def test_an_unwritable_report_folder_is_refused_before_anything_is_written(shop, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder", encoding="utf-8")
    error = refused(shop, shop.with_name("valid.jsonl"), "--report", blocker / "report")
    assert f"--report {blocker / 'report'}: cannot write a report there" in error


def test_a_broken_jsonl_line_is_refused_naming_the_line(shop, tmp_path):
    data = tmp_path / "broken.jsonl"
    write_jsonl(data, ROWS)
    data.write_text(data.read_text(encoding="utf-8") + '{"text": "快递到哪了", "label": \n', encoding="utf-8")
    assert f"{data}:{len(ROWS) + 1}: not valid JSON" in refused(shop, data)


def test_an_unknown_label_is_refused_naming_it(shop, tmp_path):
    data = write_jsonl(tmp_path / "unknown.jsonl", [*ROWS, {"text": "退款什么时候到", "label": "退款申请"}])
    error = refused(shop, data)
    assert "'退款申请': 1 row; did you mean '退款'?" in error and "nothing was measured or written" in error


def test_a_context_that_is_not_a_list_of_messages_is_refused_naming_the_line(shop, tmp_path):
    data = write_jsonl(tmp_path / "context.jsonl", [*ROWS, {"text": "那另一个呢?", "label": "查物流", "context": "快递"}])
    error = refused(shop, data)
    assert f'{data}:{len(ROWS) + 1}: "context" must be a list of the earlier user messages' in error


def test_dry_run_prints_the_table_and_writes_nothing(shop):
    before = files(shop.parent)
    result = gatekeeper("tune", "--catalog", shop, "--data", shop.with_name("valid.jsonl"), *POLICY_FLAGS,
                        "--dry-run", "--report", shop.with_name("report"))
    assert result.returncode == 0, result.stderr
    assert "false-reject rate" in result.stdout and "dry run: nothing written" in result.stdout
    assert files(shop.parent) == before


def test_tune_shows_before_and_after_and_keeps_the_previous_tuning(shop):
    data = shop.with_name("valid.jsonl")
    tuning, stored = shop.with_name("shop.tuning.json"), shop.with_name("shop.tuning.data.jsonl")
    first = gatekeeper("tune", "--catalog", shop, "--data", data, *POLICY_FLAGS)
    assert first.returncode == 0, first.stderr
    table = {line[:24].strip(): line[24:].split() for line in first.stdout.splitlines()[:7]}
    assert table[""] == ["before", "after"]
    assert table["threshold source"] == ["auto", "tuned"]
    assert set(table) >= {"global threshold", "per-intent thresholds", "false-reject rate", "off-topic recall",
                          "LLM calls saved / 1,000"}
    assert "on 68 rows (36 in scope, 32 off topic)" in first.stdout
    saved = json.loads(tuning.read_text(encoding="utf-8"))
    assert saved["stored_rows"] == {"per_intent": False, "min_rows": 30, "rows": 68,
                                    "sha256": hashlib.sha256(stored.read_bytes()).hexdigest()}
    assert labelled_rows(stored) == [(row["text"], "oos" if row["label"] == "chat" else row["label"]) for row in ROWS]
    first_files = files(shop.parent)

    dry = gatekeeper("tune", "--catalog", shop, "--data", data, "--oos-label", "chat", "--youden", "--dry-run")
    assert dry.returncode == 0 and files(shop.parent) == first_files
    assert dry.stdout.splitlines()[1].split()[-2:] == ["tuned", "tuned"]

    second = gatekeeper("tune", "--catalog", shop, "--data", data, "--oos-label", "chat", "--youden")
    assert second.returncode == 0, second.stderr
    assert shop.with_name("shop.tuning.prev.json").read_bytes() == first_files["shop.tuning.json"]
    assert shop.with_name("shop.tuning.prev.data.jsonl").read_bytes() == first_files["shop.tuning.data.jsonl"]
    assert json.loads(tuning.read_text(encoding="utf-8"))["policy"]["kind"] == "youden"


def test_preview_says_what_tune_would_change_without_writing(shop, use_embedder):
    gate = Gate(embedder=use_embedder).fit(shop)
    rows = [(row["text"], row["label"]) for row in ROWS]
    before = files(shop.parent)
    result = preview(gate, rows, Policy(max_false_reject=0.1), oos_labels=["chat"])
    assert isinstance(result, TunePreview) and files(shop.parent) == before
    assert (result.rows, result.in_scope, result.off_topic) == (68, 36, 32)
    assert (result.before["threshold_source"], result.after["threshold_source"]) == ("auto", "tuned")
    assert set(result.before) == set(result.after) == {"threshold_source", "global_threshold", "per_intent_thresholds",
                                                       "false_reject_rate", "oos_recall", "llm_calls_saved_per_1000"}
    assert result.after["false_reject_rate"] <= 0.1
    json.dumps(asdict(result))  # JSON-ready
    with pytest.raises(UserError, match="2 in-scope and 2 off-topic rows"):
        preview(gate, rows[:2] + rows[-2:], Policy(), oos_labels=["chat"])


def test_rows_with_context_are_scored_the_way_the_sidecar_decided_them(shop, use_embedder, telecom_gate,
                                                                         fake_upstream, start_sidecar, tmp_path):
    gate = Gate(embedder=use_embedder).fit(shop)
    log_path = tmp_path / "decisions.jsonl"
    sidecar = start_sidecar(gate, upstream_base_url=fake_upstream.base_url, decision_log=str(log_path))
    response = httpx.post(f"{sidecar.base_url}/v1/chat/completions", timeout=10, json={"model": "m", "messages": [
        {"role": "user", "content": SHOP_EARLIER}, {"role": "assistant", "content": "正在为您查询。"},
        {"role": "user", "content": FOLLOW_UP}]})
    assert response.headers["x-gatekeeper-followup"] == "true" and not gate.decide(FOLLOW_UP).accepted
    logged = json.loads(log_path.read_text(encoding="utf-8"))
    rows = labelled_rows(write_jsonl(tmp_path / "labelled.jsonl", [{**logged, "label": "查物流"}]))
    assert rows == [(FOLLOW_UP, "查物流", (SHOP_EARLIER,))]
    scored = score_rows(gate, rows, {"oos"}, show_progress=False)
    assert scored.texts == [SHOP_EARLIER]  # the turn that set the topic decided (issue #14): its score is the one used
    assert float(scored.scores[0]) == pytest.approx(float(response.headers["x-gatekeeper-score"]), abs=1e-3)
    assert score_rows(gate, [rows[0][:2]], {"oos"}, show_progress=False).texts == [FOLLOW_UP]
    # With the conversation pack, "那另一个呢?" is a continuation: it takes the decision of its context.
    continuation = score_rows(telecom_gate, [(FOLLOW_UP, "bill_inquiry", (EARLIER,))], {"oos"}, show_progress=False)
    assert continuation.texts == [EARLIER]


def tuned_shop(shop: Path) -> dict:
    """Tune the shop catalog, then edit it (one more example): the saved tuning no longer matches."""
    result = gatekeeper("tune", "--catalog", shop, "--data", shop.with_name("valid.jsonl"), *POLICY_FLAGS)
    assert result.returncode == 0, result.stderr
    saved = json.loads(shop.with_name("shop.tuning.json").read_text(encoding="utf-8"))
    edited = json.loads(json.dumps(SHOP))
    edited["intents"][1]["examples"].append("退款什么时候到账")
    write_catalog(shop, edited)
    return saved


def test_a_catalog_edit_re_derives_the_thresholds_with_the_same_policy(shop, use_embedder, start_sidecar):
    saved = tuned_shop(shop)
    tuning_bytes = shop.with_name("shop.tuning.json").read_bytes()
    gate = Gate(embedder=use_embedder).fit(shop)
    assert gate.tuning_status_ == "re-derived" and gate.tuning_problem_ is None
    assert gate.artifacts_.fingerprint != saved["fingerprint"] == json.loads(tuning_bytes)["fingerprint"]
    assert gate.tuning_.fingerprint == gate.artifacts_.fingerprint and gate.router_.thresholds.source == "tuned"
    assert gate.tuning_.policy == saved["policy"] and gate.tuning_.stored_rows == saved["stored_rows"]
    assert gate.tuning_.validation["false_reject_rate"] <= saved["policy"]["max_false_reject"]
    assert gate.tuning_version_ is not None and shop.with_name("shop.tuning.json").read_bytes() == tuning_bytes
    sidecar = start_sidecar(gate)
    ready = httpx.get(f"{sidecar.base_url}/readyz", timeout=10).json()
    assert (ready["tuning"], ready["tuning_problem"]) == ("re-derived", None)
    assert sidecar.metric("gatekeeper_tuning_stale") == 0


def test_without_its_stored_rows_the_tuning_is_stale_and_says_so(shop, use_embedder, start_sidecar):
    tuned_shop(shop)
    stored = shop.with_name("shop.tuning.data.jsonl")
    stored.unlink()
    built = gatekeeper("build", "--catalog", shop)
    assert built.returncode == 0, built.stderr
    assert "tuning                     stale" in built.stdout and "threshold_source           auto" in built.stdout
    assert "warning: tuning stale: the catalog or model changed since 'gatekeeper tune'" in built.stderr
    assert f"{stored}: the labelled rows tune stored are missing" in built.stderr
    gate = Gate(embedder=use_embedder).fit(shop)
    assert gate.tuning_status_ == "stale" and gate.tuning_ is None
    sidecar = start_sidecar(gate)
    ready = httpx.get(f"{sidecar.base_url}/readyz", timeout=10).json()
    assert ready["ready"] is True and ready["tuning"] == "stale" and "tuning.data.jsonl" in ready["tuning_problem"]
    assert sidecar.metric("gatekeeper_tuning_stale") == 1


def test_a_renamed_intent_makes_the_tuning_stale_naming_the_label(shop, use_embedder):
    tuned_shop(shop)
    renamed = json.loads(json.dumps(SHOP))
    renamed["intents"][1]["name"] = "退款申请"
    write_catalog(shop, renamed)
    gate = Gate(embedder=use_embedder).fit(shop)
    assert gate.tuning_status_ == "stale"
    assert "'退款': 18 rows; did you mean '退款申请'?" in gate.tuning_problem_
