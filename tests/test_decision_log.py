"""The decision log: rows worth learning from (context, request id, gate version), text modes, redaction, rotation."""

from __future__ import annotations

import hashlib
import json
import random
import re

import httpx
import pytest

from gatekeeper.commands.common import labelled_rows
from gatekeeper.errors import UserError
from gatekeeper.redaction import redact
from gatekeeper.server.config import resolve_settings
from gatekeeper.server.decision_log import DecisionLog
from tests.server_fixtures import OFF_TOPIC, ON_TOPIC, chat_body

#: A conversation whose latest message the sidecar accepts only as a follow-up (tests/test_server_conversation.py).
EARLIER, FOLLOW_UP = "我这个月话费怎么扣了这么多", "那另一个呢?"
CONVERSATION = [{"role": "user", "content": EARLIER}, {"role": "assistant", "content": "您的话费包括月租和流量费。"},
                {"role": "user", "content": FOLLOW_UP}]
#: A message with personal data, and how it is logged in redact mode (NFKC turns "，" into ",").
WITH_PHONE = "我的手机号是13812345678，这个月话费怎么扣了这么多"
WITH_PHONE_REDACTED = "我的手机号是[PHONE],这个月话费怎么扣了这么多"

REDACTED = [
    ("我的手机号13812345678，帮我查话费", "我的手机号[PHONE],帮我查话费"),
    ("手机 138-1234-5678 或 138 1234 5678", "手机 [PHONE] 或 [PHONE]"),
    ("座机010-12345678，或者(0755)1234567", "座机[PHONE],或者[PHONE]"),
    ("客服电话400-810-8888打不通", "客服电话[PHONE]打不通"),
    ("邮箱 zhang.san@qq.com 收不到电子发票", "邮箱 [EMAIL] 收不到电子发票"),
    ("身份证号110105199003071234，实名认证失败", "身份证号[ID],实名认证失败"),
    ("身份证11010519900307123X", "身份证[ID]"),
    ("银行卡6222 0212 3456 7890 123扣款失败", "银行卡[CARD]扣款失败"),
    ("用卡号6222021234567890缴费", "用卡号[CARD]缴费"),
    ("订单号202405171234还没到", "订单号[NUMBER]还没到"),
    ("验证码483920收不到", "验证码[NUMBER]收不到"),
    ("全角号码１３８１２３４５６７８", "全角号码[PHONE]"),
    ("5G套餐每月128元，2024年办的", "5G套餐每月128元,2024年办的"),
    ("call me at +1 (415) 555-0123 about my bill", "call me at [PHONE] about my bill"),
    ("my number is 415-555-0123", "my number is [PHONE]"),
    ("+86 138 1234 5678 has no signal", "[PHONE] has no signal"),
    ("send the invoice to john.doe@example.co.uk", "send the invoice to [EMAIL]"),
    ("card 4111-1111-1111-1111 was charged twice", "card [CARD] was charged twice"),
    ("the router at 192.168.1.100 is down", "the router at [IP] is down"),
    ("my plan costs $39.99 a month", "my plan costs $39.99 a month"),
]


@pytest.mark.parametrize(("text", "expected"), REDACTED)
def test_redaction_masks_personal_data_in_chinese_and_english(text, expected):
    assert redact(text) == expected


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_redact_is_the_default_text_mode():
    settings, _ = resolve_settings({}, env={})
    assert settings.decision_log_text == "redact"


@pytest.mark.parametrize("mode", ["redact", "full", "hash"])
def test_rows_say_which_gate_decided_what_with_which_context(telecom_gate, fake_upstream, start_sidecar, tmp_path,
                                                              mode):
    path = tmp_path / "decisions.jsonl"
    sidecar = start_sidecar(telecom_gate, upstream_base_url=fake_upstream.base_url, decision_log=str(path),
                            decision_log_text=mode)
    follow_up = httpx.post(f"{sidecar.base_url}/v1/chat/completions", timeout=10, headers={"x-request-id": "req-1"},
                           json={"model": "m", "messages": CONVERSATION, "user": "customer-42"})
    assert follow_up.headers["x-gatekeeper-followup"] == "true"
    httpx.post(f"{sidecar.base_url}/v1/chat/completions", json=chat_body(WITH_PHONE), timeout=10,
               headers={"x-request-id": "req-2"})
    httpx.post(f"{sidecar.base_url}/v1/chat/completions", json=chat_body(OFF_TOPIC), timeout=10,
               headers={"x-request-id": "req-3"})
    gated = httpx.post(f"{sidecar.base_url}/v1/gate", json={"text": ON_TOPIC}, timeout=10)
    rows = read_rows(path)
    summary = [(r["request_id"], r["endpoint"], r["action"], r["outcome"], r["accepted"], r["followup"]) for r in rows]
    assert summary == [
        ("req-1", "/v1/chat/completions", "forward", "accepted", True, True),
        ("req-2", "/v1/chat/completions", "forward", "accepted", True, False),
        ("req-3", "/v1/chat/completions", "reject", "rejected", False, False),
        (gated.headers["x-request-id"], "/v1/gate", "forward", "accepted", True, False)]
    first = rows[0]
    assert (first["catalog"], first["fingerprint"], first["tuning"]) == ("telecom-zh",
                                                                         telecom_gate.artifacts_.fingerprint, None)
    assert first["intent"] == "bill_inquiry" and first["language"] == "zh" and first["mode"] == "enforce"
    assert first["score"] == pytest.approx(float(follow_up.headers["x-gatekeeper-score"]), abs=1e-4)
    assert first["user"] == hashlib.sha256(b"customer-42").hexdigest() and rows[1]["user"] is None
    assert all(r["text_mode"] == mode for r in rows)
    if mode == "hash":
        assert not {"text", "context"} & set(first)
        assert first["text_sha256"] == hashlib.sha256(FOLLOW_UP.encode()).hexdigest()
        assert first["context_sha256"] == [hashlib.sha256(EARLIER.encode()).hexdigest()]
        assert WITH_PHONE not in path.read_text(encoding="utf-8")
    else:
        assert (first["text"], first["context"]) == (FOLLOW_UP, [EARLIER])
        assert rows[1]["text"] == (WITH_PHONE_REDACTED if mode == "redact" else WITH_PHONE.replace("，", ","))
        assert ("13812345678" in path.read_text(encoding="utf-8")) == (mode == "full")
        assert rows[1]["context"] == [] and rows[2]["text"] == OFF_TOPIC
    # The Responses API passes its OpenAI `user` field on to the decision as chat completions do.
    answered = httpx.post(f"{sidecar.base_url}/v1/responses", timeout=10, headers={"x-request-id": "req-5"},
                          json={"model": "m", "input": ON_TOPIC, "user": "customer-43"})
    assert answered.status_code == 200
    last = read_rows(path)[-1]
    assert (last["request_id"], last["endpoint"], last["user"]) == (
        "req-5", "/v1/responses", hashlib.sha256(b"customer-43").hexdigest())


def test_logged_rows_are_labelled_rows_with_their_context(telecom_gate, fake_upstream, start_sidecar, tmp_path):
    path = tmp_path / "decisions.jsonl"
    sidecar = start_sidecar(telecom_gate, upstream_base_url=fake_upstream.base_url, decision_log=str(path))
    httpx.post(f"{sidecar.base_url}/v1/chat/completions", json={"model": "m", "messages": CONVERSATION}, timeout=10)
    httpx.post(f"{sidecar.base_url}/v1/chat/completions", json=chat_body(OFF_TOPIC), timeout=10)
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps({**row, "label": row["intent"] if row["accepted"] else "oos"},
                                           ensure_ascii=False) + "\n" for row in read_rows(path)), encoding="utf-8")
    assert labelled_rows(labelled) == [(FOLLOW_UP, "bill_inquiry", (EARLIER,)), (OFF_TOPIC, "oos")]


def test_request_ids_are_echoed_generated_or_replaced(telecom_gate, start_sidecar):
    sidecar = start_sidecar(telecom_gate)
    given = httpx.post(f"{sidecar.base_url}/v1/gate", json={"text": ON_TOPIC}, headers={"x-request-id": "abc-123"},
                       timeout=10)
    assert given.headers["x-request-id"] == "abc-123"
    made = [httpx.get(f"{sidecar.base_url}/healthz", timeout=10).headers["x-request-id"] for _ in range(2)]
    assert all(re.fullmatch("[0-9a-f]{32}", made_id) for made_id in made) and made[0] != made[1]
    too_long = httpx.get(f"{sidecar.base_url}/healthz", headers={"x-request-id": "x" * 200}, timeout=10)
    assert re.fullmatch("[0-9a-f]{32}", too_long.headers["x-request-id"])
    error = httpx.post(f"{sidecar.base_url}/v1/gate", content=b"{not json", headers={"x-request-id": "bad-body-1",
                       "content-type": "application/json"}, timeout=10)
    assert error.status_code == 400 and error.headers["x-request-id"] == "bad-body-1"
    assert error.headers.get_list("x-request-id") == ["bad-body-1"]


def test_the_upstreams_request_id_is_kept_beside_ours(telecom_gate, fake_upstream, start_sidecar):
    sidecar = start_sidecar(telecom_gate, upstream_base_url=fake_upstream.base_url)
    response = httpx.post(f"{sidecar.base_url}/v1/chat/completions", json=chat_body(ON_TOPIC, model="mock-headers"),
                          headers={"x-request-id": "ours-1"}, timeout=10)
    assert response.status_code == 200
    assert response.headers.get_list("x-request-id") == ["ours-1"]
    assert response.headers["x-upstream-request-id"] == "req-from-upstream"


def test_the_log_rotates_by_size(telecom_gate, tmp_path):
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, text_mode="full", max_bytes=4000, backups=2)
    decision = telecom_gate.decide(ON_TOPIC)
    for _ in range(60):
        log.write(telecom_gate, decision, endpoint="/v1/gate", mode="enforce", outcome="accepted", language="zh")
    log.close()
    files = sorted(file.name for file in tmp_path.iterdir())
    assert files == ["decisions.jsonl", "decisions.jsonl.1", "decisions.jsonl.2"]
    for name in files:
        rows = read_rows(tmp_path / name)
        assert rows and all(row["text"] == ON_TOPIC for row in rows)
        assert (tmp_path / name).stat().st_size <= 4000


def test_rotation_settings_reach_the_log(telecom_gate, start_sidecar, tmp_path):
    path = tmp_path / "decisions.jsonl"
    sidecar = start_sidecar(telecom_gate, decision_log=str(path), decision_log_max_bytes=1500, decision_log_backups=1)
    for _ in range(8):
        httpx.post(f"{sidecar.base_url}/v1/gate", json={"text": ON_TOPIC}, timeout=10)
    assert sorted(file.name for file in tmp_path.iterdir()) == ["decisions.jsonl", "decisions.jsonl.1"]


def test_an_unwritable_path_is_a_start_up_error_and_nothing_is_written(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the log's folder should be", encoding="utf-8")
    with pytest.raises(UserError, match=r"decision_log .*not-a-folder/d\.jsonl: cannot append to it \(.+\); point "
                                        "decision_log at a writable file"):
        DecisionLog(blocker / "d.jsonl")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["not-a-folder"]


def test_sampling_keeps_about_the_share_asked_for(telecom_gate, tmp_path):
    decision = telecom_gate.decide(ON_TOPIC)
    log = DecisionLog(tmp_path / "d.jsonl", sample=0.25, rng=random.Random(7))
    for _ in range(400):
        log.write(telecom_gate, decision, endpoint="/v1/gate", mode="enforce", outcome="accepted", language="zh")
    log.close()
    assert 70 <= len((tmp_path / "d.jsonl").read_text(encoding="utf-8").splitlines()) <= 130
