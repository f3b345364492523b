"""``gatekeeper review``: the labelling page, in a real headless browser over real HTTP, with the real model.

The browser is Debian's Chromium (``/usr/bin/chromium``) driven by Selenium
through Debian's ``/usr/bin/chromedriver``; both paths are given explicitly,
so Selenium Manager never runs and nothing is downloaded. Without them these
tests fail under CI (``CI=true``) and are skipped elsewhere
(``apt-get install chromium chromium-driver``; ``bash .ci/run`` does it).

The catalog has Chinese intent names (and one English one); the log mixes
Chinese and English messages, rows the sidecar decided (with its fields) and
bare rows the review decides, some with earlier turns.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
import uvicorn
import yaml

from gatekeeper.catalog.labelled_data import read_labelled
from gatekeeper.cli import main
from gatekeeper.errors import UserError
from gatekeeper.gate import Gate
from gatekeeper.measure.evaluation import metrics, score_rows
from gatekeeper.measure.tune import Policy
from gatekeeper.review.app import ReviewSession, create_app
from gatekeeper.review.labels import LabelStore
from gatekeeper.review.ordering import GROUPS, order_items, read_messages
from tests.deploy_support import require

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: Bound on every wait for the page, the server or a file.
WAIT_S = 20.0
#: Rows per class the preview needs in these tests (tune's default, 30, would take many labels).
MIN_ROWS = 3
SCREENSHOT = Path("/tmp/review.png")

SHOP = {
    "version": 1, "name": "shop-zh", "conversation_pack": "none", "out_of_scope_pack": "none",
    "defaults": {"reject_reply": {"zh": "抱歉，我只处理订单、物流和售后问题。",
                                  "en": "Sorry, I only help with orders, deliveries and returns."}},
    "intents": [
        {"name": "申请退货", "description": "退货、退款、换货 / returns and refunds",
         "examples": ["我想退货", "这个商品怎么退款", "衣服尺码不对想退掉", "退货流程是什么",
                      "I want to return this item", "how do I get a refund"]},
        {"name": "查询物流", "description": "快递到哪了、什么时候送到 / where is my parcel",
         "examples": ["我的快递到哪了", "包裹什么时候能到", "物流信息一直没更新", "帮我查一下订单发货没有",
                      "where is my parcel", "when will my order arrive"]},
        {"name": "修改地址", "description": "修改收货地址、电话 / change the delivery address",
         "examples": ["我要改收货地址", "地址填错了怎么改", "能帮我换个收货地址吗", "收件人电话写错了",
                      "change my delivery address", "I entered the wrong address"]},
        {"name": "Invoice Request", "description": "开发票、发票抬头 / invoices",
         "examples": ["I need an invoice for my order", "can you send me a VAT invoice", "怎么开发票",
                      "发票抬头写错了", "please issue a receipt for my purchase"]},
    ],
    "out_of_scope": ["今天天气怎么样", "给我讲个笑话", "帮我写一首诗", "what's the weather like tomorrow",
                     "tell me a joke", "who won the football game", "1加1等于几", "推荐一部电影"],
}

#: Rows as the sidecar's decision log writes them (text kept), then bare messages for the review to decide.
LOGGED = [
    {"text": "我买的鞋子尺码不合适，可以退吗", "mode": "enforce", "accepted": True, "intent": "申请退货",
     "score": 0.64, "threshold": 0.6, "followup": False, "request_id": "req-1"},
    {"text": "那运费谁出", "context": ["我想退货"], "mode": "enforce", "accepted": True, "intent": "申请退货",
     "score": 0.9, "threshold": 0.6, "followup": True, "request_id": "req-2"},
    {"text": "今天北京下雨吗", "mode": "enforce", "accepted": False, "intent": "查询物流", "score": 0.05,
     "threshold": 0.6, "followup": False, "request_id": "req-3"},
    {"text": "my package still hasn't shown up", "mode": "shadow", "accepted": False, "intent": "查询物流",
     "score": 0.3, "threshold": 0.6, "followup": False, "request_id": "req-4"},
    {"text": "我买的鞋子尺码不合适，可以退吗", "mode": "enforce", "accepted": True, "intent": "申请退货",
     "score": 0.64, "threshold": 0.6, "followup": False, "request_id": "req-5"},
]
BARE = [
    {"text": "我想把收货地址改成公司的"},
    {"text": "can I get a receipt for tax purposes?"},
    {"text": "给我讲个关于程序员的笑话"},
    {"text": "快递三天了还没动", "context": ["我昨天下的单"]},
    {"text": "帮我查一下发票开好了没有"},
    {"text": "how do I send the shoes back"},
    {"text": "你们是机器人吗"},
    {"text": "推荐几本好看的小说"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    """The complete lines of a JSONL file (a line the server is still writing has no newline yet)."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    return [json.loads(line) for line in lines if line.strip()]


def wait_for(condition: Callable[[], object], what: str, timeout: float = WAIT_S) -> object:
    """``condition()``'s first truthy value, polled for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def shop_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("review-catalog") / "shop.yaml"
    path.write_text(yaml.safe_dump(SHOP, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def shop_gate(shop_catalog: Path, use_embedder) -> Gate:
    return Gate(embedder=use_embedder).fit(shop_catalog)


@dataclass
class RunningReview:
    """A review server in a background thread on a free loopback port."""

    base_url: str
    session: ReviewSession
    labels: Path
    log: Path
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def skipped(self) -> Path:
        return self.session.store.skip_path

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.base_url + path, timeout=WAIT_S) as response:
            return response.read()

    def post(self, path: str, body: dict, content_type: str = "application/json") -> tuple[int, dict]:
        request = urllib.request.Request(self.base_url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"content-type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=WAIT_S) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(WAIT_S)


@pytest.fixture
def start_review(shop_gate: Gate, shop_catalog: Path, tmp_path: Path) -> Iterator[Callable[..., RunningReview]]:
    """Factory: ``start_review(rows)`` serves a review of ``rows`` (written as a JSONL log) until the test ends."""
    running: list[RunningReview] = []

    def start(rows: list[dict], name: str = "log") -> RunningReview:
        log = write_jsonl(tmp_path / f"{name}.jsonl", rows)
        labels = tmp_path / f"{name}.labels.jsonl"
        session = ReviewSession.open(log, shop_catalog, labels, gate=shop_gate, min_rows=MIN_ROWS)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(session), log_level="warning", lifespan="off"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        wait_for(lambda: server.started or not thread.is_alive(), "the review server to start")
        assert server.started, "the review server did not start"
        review = RunningReview(f"http://127.0.0.1:{port}", session, labels, log, server, thread)
        running.append(review)
        return review

    yield start
    for review in running:
        review.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    """Debian's headless Chromium through Debian's chromedriver (Selenium Manager never runs)."""
    require(CHROMIUM.exists() and CHROMEDRIVER.exists(), "Chromium and chromedriver",
            "Debian: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--no-first-run", "--window-size=1440,1000", f"--user-data-dir={profile}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    yield driver
    driver.quit()


# ---------------------------------------------------------------- page helpers

class Page:
    """The review page in the browser."""

    def __init__(self, driver, review: RunningReview):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        self.driver, self.review, self.By, self.Keys = driver, review, By, Keys

    def open(self) -> "Page":
        self.driver.get(self.review.base_url + "/")
        self.settle()
        return self

    def settle(self) -> None:
        """Wait until no request of the page is in flight (labels saved, figures loaded)."""
        wait_for(lambda: self.driver.execute_script(
            "return document.body.dataset.busy === '0' && document.querySelectorAll('#list li').length > 0"),
            "the page to settle")

    def rows(self) -> list:
        return self.driver.find_elements(self.By.CSS_SELECTOR, "#list li")

    def row(self, text: str):
        """The list row of message ``text`` (found in one script call: the page re-renders a row it relabels)."""
        element = self.driver.execute_script(
            "return [...document.querySelectorAll('#list li')]"
            ".find((li) => li.querySelector('.text').textContent === arguments[0]) || null", text)
        assert element is not None, f"no row {text!r} on the page"
        return element

    def click_row(self, text: str) -> None:
        self.settle()
        self.row(text).click()
        wait_for(lambda: self.find("#cur-text").text == text, f"{text!r} to be the current message")

    def find(self, selector: str):
        return self.driver.find_element(self.By.CSS_SELECTOR, selector)

    def keys(self, *keys: str) -> None:
        """Type ``keys`` into whatever has the focus (the page itself when nothing does)."""
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.driver).send_keys(*keys).perform()

    def counts(self) -> dict[str, int]:
        return {name: int(self.find(f"#n-{name}").text) for name in ("labelled", "in", "oos", "skipped")}

    def shown_intents(self) -> list[str]:
        return [element.get_attribute("data-intent")
                for element in self.driver.find_elements(self.By.CSS_SELECTOR, "#intents li[data-intent]")]

    def highlighted_intent(self) -> str:
        return self.find("#intents li.hl").get_attribute("data-intent")

    def state_of(self, text: str) -> str:
        self.settle()
        return self.driver.execute_script(
            "const li = [...document.querySelectorAll('#list li')]"
            ".find((li) => li.querySelector('.text').textContent === arguments[0]); return li.dataset.state", text)


def label_rows(path: Path) -> dict[str, dict]:
    """The saved label rows by text."""
    return {row["text"]: row for row in read_jsonl(path)}


def wait_saved(path: Path, text: str, label: str | None) -> dict | None:
    """Wait until the label file has ``label`` for ``text`` (None: no row for it)."""
    if label is None:
        wait_for(lambda: text not in label_rows(path), f"{text!r} to leave {path.name}")
        return None
    return wait_for(lambda: (label_rows(path).get(text) or {}).get("label") == label and label_rows(path)[text],
                    f"{text!r} saved as {label!r}")


def pct(rate: float) -> str:
    return f"{100 * rate:.1f}%"


# ---------------------------------------------------------------- the page

def test_review_page_labels_with_keyboard_and_mouse(start_review, browser, shop_gate, tmp_path):
    """Order, search, label, oos, skip, undo, the live counts and figures, reload: all through the page."""
    review = start_review(LOGGED + BARE)
    page = Page(browser, review).open()

    # Order: nearest the threshold first, then rejected in enforce mode, follow-ups, the rest.
    rows = page.rows()
    texts = [row.find_element(page.By.CSS_SELECTOR, ".text").text for row in rows]
    assert texts == [item.text for item in review.session.items]
    assert len(texts) == len(set(texts)) == 12, "the repeated message is one row"
    groups = [row.get_attribute("data-group") for row in rows]
    margins = [abs(float(row.get_attribute("data-margin"))) for row in rows]
    assert [GROUPS.index(group) for group in groups] == sorted(GROUPS.index(group) for group in groups)
    assert margins[0] == min(margins) and texts[0] == "我买的鞋子尺码不合适，可以退吗" and groups[0] == "near"
    for group in GROUPS:
        within = [margin for margin, g in zip(margins, groups) if g == group]
        assert within == sorted(within), f"group {group} is not nearest first"
    assert groups[texts.index("今天北京下雨吗")] == "rejected"
    assert groups[texts.index("my package still hasn't shown up")] == "rest", "rejected in shadow mode hurt no one"
    assert groups[texts.index("那运费谁出")] == "followup"
    assert "×2" in rows[0].text and "0.640" in rows[0].text and "0.600" in rows[0].text
    assert "上文 / Earlier: 我想退货" in page.row("那运费谁出").text
    assert "上文 / Earlier: 我昨天下的单" in page.row("快递三天了还没动").text
    # The page opens on the first message still to label, with its decision shown.
    assert page.find("#cur-text").text == texts[0]
    assert "0.640" in page.find("#cur-score").text and "0.600" in page.find("#cur-threshold").text
    assert "申请退货" in page.find("#cur-intent").text
    assert page.find("#preview").get_attribute("data-error") == "no labelled rows yet"

    # An intent, from the keyboard: / to search, a Chinese substring, arrows, Enter.
    page.click_row("我想把收货地址改成公司的")
    page.keys("/")
    wait_for(lambda: browser.switch_to.active_element.get_attribute("id") == "search", "the search box to focus")
    page.keys("INVOICE")
    assert page.shown_intents() == ["Invoice Request"], "English matches regardless of case"
    page.keys(page.Keys.ESCAPE, "/", "快递")
    assert page.shown_intents() == ["查询物流"], "a Chinese substring of the description matches"
    page.keys(page.Keys.ESCAPE, "/", "地址")
    assert page.shown_intents() == ["修改地址"] and page.highlighted_intent() == "修改地址"
    page.keys(page.Keys.ESCAPE, "/", "申请")
    assert page.shown_intents() == ["申请退货"]
    page.keys(page.Keys.ESCAPE, "/")
    assert page.shown_intents() == ["申请退货", "查询物流", "修改地址", "Invoice Request"]
    page.keys(page.Keys.ARROW_DOWN, page.Keys.ARROW_DOWN)
    assert page.highlighted_intent() == "修改地址"
    page.keys(page.Keys.ENTER)
    saved = wait_saved(review.labels, "我想把收货地址改成公司的", "修改地址")
    assert saved == {"text": "我想把收货地址改成公司的", "label": "修改地址"}
    page.settle()
    assert page.state_of("我想把收货地址改成公司的") == "修改地址"

    # A message with earlier turns, reached with j/k: its context is saved with the label.
    target = texts.index("快递三天了还没动")
    page.click_row(texts[target - 2])
    page.keys("j", "j", "k", "j")
    wait_for(lambda: page.find("#cur-text").text == "快递三天了还没动", "j/k to reach the message")
    assert "我昨天下的单" in page.find("#cur-context").text
    page.keys("/", "物流", page.Keys.ENTER)
    saved = wait_saved(review.labels, "快递三天了还没动", "查询物流")
    assert saved == {"text": "快递三天了还没动", "label": "查询物流", "context": ["我昨天下的单"]}

    # Out of scope, with the mouse; the log's request id is kept.
    page.click_row("今天北京下雨吗")
    page.find("#btn-oos").click()
    saved = wait_saved(review.labels, "今天北京下雨吗", "oos")
    assert saved == {"text": "今天北京下雨吗", "label": "oos", "request_id": "req-3"}
    page.settle()
    assert page.counts() == {"labelled": 3, "in": 2, "oos": 1, "skipped": 0}

    # Skip: nothing tune would read; recorded beside the labels.
    before = review.labels.read_bytes()
    page.click_row("推荐几本好看的小说")
    page.keys("s")
    wait_for(lambda: read_jsonl(review.skipped)[-1:] == [{"text": "推荐几本好看的小说", "skipped": True}],
             "the skip to be saved")
    page.settle()
    assert review.labels.read_bytes() == before
    assert page.state_of("推荐几本好看的小说") == "skip"
    assert page.counts() == {"labelled": 3, "in": 2, "oos": 1, "skipped": 1}

    # Undo twice: the skip, then the out-of-scope label (the file is rewritten without it).
    page.keys("u")
    wait_for(lambda: read_jsonl(review.skipped)[-1]["skipped"] is False, "the skip to be undone")
    page.settle()
    assert page.state_of("推荐几本好看的小说") == ""
    assert page.find("#cur-text").text == "推荐几本好看的小说", "undo shows the message it changed"
    page.keys("u")
    wait_saved(review.labels, "今天北京下雨吗", None)
    page.settle()
    assert page.state_of("今天北京下雨吗") == ""
    assert set(label_rows(review.labels)) == {"我想把收货地址改成公司的", "快递三天了还没动"}
    assert page.counts() == {"labelled": 2, "in": 2, "oos": 0, "skipped": 0}

    # Too few rows for the policy: the page shows the message tune's preview raises.
    from gatekeeper.measure.tune import preview

    rows_now = review.session.rows()
    with pytest.raises(UserError) as too_few:
        preview(shop_gate, rows_now, Policy(), per_intent=False, min_rows=MIN_ROWS, source=str(review.labels))
    assert page.find("#preview").get_attribute("data-error") == str(too_few.value)
    assert "too little labelled data" in page.find("#preview").text

    # Enough labels: off topic with o, in scope with a (the gate's intent) and with a picked intent.
    for text in ("今天北京下雨吗", "给我讲个关于程序员的笑话", "你们是机器人吗"):
        page.click_row(text)
        page.keys("o")
        wait_saved(review.labels, text, "oos")
    page.click_row("how do I send the shoes back")
    page.keys("a")
    wait_saved(review.labels, "how do I send the shoes back", "申请退货")
    page.click_row("帮我查一下发票开好了没有")
    page.keys("/", "invoice", page.Keys.ENTER)
    wait_saved(review.labels, "帮我查一下发票开好了没有", "Invoice Request")
    page.settle()
    assert page.counts() == {"labelled": 7, "in": 4, "oos": 3, "skipped": 0}

    # The figures: the current thresholds on the labelled rows, and tune's preview, as computed directly.
    rows_now = [row.as_row() for row in read_labelled(review.labels).rows]
    assert sorted(rows_now, key=str) == sorted(review.session.rows(), key=str)
    expected = preview(shop_gate, rows_now, Policy(), per_intent=False, min_rows=MIN_ROWS)
    current = metrics(score_rows(shop_gate, rows_now, {"oos"}, show_progress=False),
                      shop_gate.router_.thresholds.per_intent)
    figures = page.find("#current-figures")
    assert float(figures.get_attribute("data-frr")) == pytest.approx(current["false_reject_rate"])
    assert float(figures.get_attribute("data-recall")) == pytest.approx(current["oos_recall"])
    assert current["false_reject_rate"] == pytest.approx(expected.before["false_reject_rate"])
    assert current["oos_recall"] == pytest.approx(expected.before["oos_recall"])
    assert pct(current["false_reject_rate"]) in figures.text and pct(current["oos_recall"]) in figures.text
    cells = {row.get_attribute("data-key"): [cell.text for cell in row.find_elements(page.By.TAG_NAME, "td")[1:]]
             for row in page.driver.find_elements(page.By.CSS_SELECTOR, "#preview tr[data-key]")}
    assert cells["global_threshold"] == [f"{expected.before['global_threshold']:.3f}",
                                         f"{expected.after['global_threshold']:.3f}"]
    assert cells["false_reject_rate"] == [pct(expected.before["false_reject_rate"]),
                                          pct(expected.after["false_reject_rate"])]
    assert cells["oos_recall"] == [pct(expected.before["oos_recall"]), pct(expected.after["oos_recall"])]
    assert cells["threshold_source"] == [expected.before["threshold_source"], expected.after["threshold_source"]]
    assert cells["llm_calls_saved_per_1000"] == [f"{expected.before['llm_calls_saved_per_1000']:.1f}",
                                                 f"{expected.after['llm_calls_saved_per_1000']:.1f}"]
    assert f"{expected.rows} 条 / rows" in page.find("#preview").text

    # The label file is what tune and eval read: one row per message, labels the catalog knows.
    assert len(read_jsonl(review.labels)) == 7
    assert score_rows(shop_gate, rows_now, {"oos"}, show_progress=False).in_scope.sum() == 4

    # Reopening the page shows every earlier label and the same counts.
    page.open()
    saved = label_rows(review.labels)
    for text in texts:
        assert page.state_of(text) == (saved[text]["label"] if text in saved else ""), text
    assert page.counts() == {"labelled": 7, "in": 4, "oos": 3, "skipped": 0}
    assert "修改地址" in page.row("我想把收货地址改成公司的").text
    assert page.find("#preview").get_attribute("data-error") is None

    # For the team lead: the page as it looks now.
    page.click_row("快递三天了还没动")
    page.settle()
    assert browser.save_screenshot(str(tmp_path / "review.png"))
    assert browser.save_screenshot(str(SCREENSHOT))
    assert (tmp_path / "review.png").stat().st_size > 20_000
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors


def test_page_text_is_chinese_and_english(start_review, browser):
    """Every heading, button and key on the page says it in Chinese and in English."""
    review = start_review(LOGGED, name="bilingual")
    page = Page(browser, review).open()
    body = page.find("body").text
    for phrase in ("标注 / Label", "待标注消息 / Messages", "当前消息 / Current message", "不相关 / Out of scope",
                   "跳过 / Skip", "撤销 / Undo", "快捷键 / Keys", "下一条 / next", "上一条 / previous",
                   "搜索意图 / search intents", "进度与效果 / Progress", "已标注", "Labelled",
                   "当前阈值在已标注数据上 / Current thresholds on the labelled rows", "导出 CSV / Export CSV",
                   "调阈值预览 / What would tune change", "标注为意图 / Label as intent"):
        assert phrase in body, phrase
    for key in ("j", "k", "/", "Enter", "o", "s", "u", "a"):
        assert any(element.text == key for element in page.driver.find_elements(page.By.CSS_SELECTOR, "#keys kbd"))


# ---------------------------------------------------------------- CSV

def test_csv_export_import_round_trip(start_review, shop_catalog, tmp_path, capsys):
    """Export has a BOM and Chinese intact; a spreadsheet's labels (UTF-8 BOM or GB18030) merge back the same."""
    review = start_review(LOGGED + BARE, name="csv")
    labels = {"我想把收货地址改成公司的": ("label", "修改地址"), "快递三天了还没动": ("label", "查询物流"),
              "今天北京下雨吗": ("oos", None), "推荐几本好看的小说": ("skip", None)}
    by_text = {item.text: item for item in review.session.items}
    for text, (action, intent) in labels.items():
        status, _ = review.post("/api/label", {"id": by_text[text].id, "action": action, "intent": intent})
        assert status == 200

    exported = review.get("/export.csv")
    assert exported.startswith(b"\xef\xbb\xbf"), "Excel needs the BOM to read UTF-8"
    table = list(csv.DictReader(io.StringIO(exported.decode("utf-8-sig"))))
    assert [row["text"] for row in table] == [item.text for item in review.session.items]
    exported_labels = {row["text"]: row["label"] for row in table}
    assert exported_labels["我想把收货地址改成公司的"] == "修改地址"
    assert exported_labels["今天北京下雨吗"] == "oos"
    assert exported_labels["推荐几本好看的小说"] == "skip" and exported_labels["你们是机器人吗"] == "skip"
    followup = next(row for row in table if row["text"] == "快递三天了还没动")
    assert json.loads(followup["context"]) == ["我昨天下的单"]
    assert next(row for row in table if row["text"] == "今天北京下雨吗")["request_id"] == "req-3"

    # Into an empty label file: the same labels come back, context and request id included.
    fresh = tmp_path / "fresh.labels.jsonl"
    sheet = tmp_path / "sheet.csv"
    sheet.write_bytes(exported)
    assert main(["review", str(review.log), "--catalog", str(shop_catalog), "--labels", str(fresh),
                 "--import-csv", str(sheet)]) == 0
    assert "3 labels saved" in capsys.readouterr().out
    assert label_rows(fresh) == label_rows(review.labels)
    assert label_rows(fresh)["今天北京下雨吗"]["request_id"] == "req-3"

    # A team labels more rows in the spreadsheet, saved by Excel on Chinese Windows (GB18030), and fixes one.
    for row in table:
        if row["text"] == "你们是机器人吗":
            row["label"] = "OOS"
        if row["text"] == "can I get a receipt for tax purposes?":
            row["label"] = "invoice request"
        if row["text"] == "我想把收货地址改成公司的":
            row["label"] = "查询物流"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]), lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(table)
    gbk_sheet = tmp_path / "sheet-gbk.csv"
    gbk_sheet.write_bytes(buffer.getvalue().encode("gb18030"))
    assert main(["review", str(review.log), "--catalog", str(shop_catalog), "--labels", str(fresh),
                 "--import-csv", str(gbk_sheet)]) == 0
    captured = capsys.readouterr()
    assert "3 labels saved" in captured.out and "read as GB18030" in captured.err
    merged = label_rows(fresh)
    assert merged["你们是机器人吗"]["label"] == "oos"
    assert merged["can I get a receipt for tax purposes?"]["label"] == "Invoice Request", "the catalog's spelling"
    assert merged["我想把收货地址改成公司的"]["label"] == "查询物流", "the spreadsheet's label wins"
    assert merged["快递三天了还没动"]["context"] == ["我昨天下的单"]
    assert len(read_jsonl(fresh)) == len(merged) == 5, "one row per message"

    # A label the catalog does not know: nothing merged, the nearest intent named.
    for row in table:
        if row["text"] == "你们是机器人吗":
            row["label"] = "查询物留"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]), lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(table)
    bad_sheet = tmp_path / "bad.csv"
    bad_sheet.write_text("\ufeff" + buffer.getvalue(), encoding="utf-8")
    before = fresh.read_bytes()
    assert main(["review", str(review.log), "--catalog", str(shop_catalog), "--labels", str(fresh),
                 "--import-csv", str(bad_sheet)]) == 2
    err = capsys.readouterr().err
    assert "'查询物留'" in err and "did you mean '查询物流'" in err and "nothing was imported" in err
    assert fresh.read_bytes() == before


def test_cli_export_matches_page_export(start_review, shop_catalog, tmp_path, capsys):
    """--export-csv writes without serving the same bytes as GET /export.csv (a log the sidecar decided)."""
    review = start_review(LOGGED, name="decided")
    item = review.session.items[0]
    assert review.post("/api/label", {"id": item.id, "action": "label", "intent": "申请退货"})[0] == 200
    out = tmp_path / "export.csv"
    assert main(["review", str(review.log), "--catalog", str(shop_catalog), "--labels", str(review.labels),
                 "--export-csv", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert out.read_bytes() == review.get("/export.csv")
    assert "我买的鞋子尺码不合适，可以退吗,申请退货" in out.read_bytes().decode("utf-8-sig")


# ---------------------------------------------------------------- the command and its errors

def test_review_command_serves_the_page(shop_catalog, tmp_path):
    """``gatekeeper review`` as a user runs it: decides the bare rows, prints the address, serves the page."""
    log = write_jsonl(tmp_path / "log.jsonl", LOGGED + BARE)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    stderr = (tmp_path / "stderr.txt").open("w")
    process = subprocess.Popen([sys.executable, "-m", "gatekeeper", "review", str(log), "--catalog",
                                str(shop_catalog), "--labels", str(tmp_path / "labels.jsonl"), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    try:
        lines: list[str] = []

        def read() -> None:
            for line in process.stdout:
                lines.append(line)

        threading.Thread(target=read, daemon=True).start()
        wait_for(lambda: any("open http://" in line for line in lines) or process.poll() is not None,
                 "the command to print its address", timeout=60)
        assert process.poll() is None, (tmp_path / "stderr.txt").read_text()
        assert f"open http://127.0.0.1:{port}/" in "".join(lines)
        assert "12 messages (8 decided by the catalog's gate)" in "".join(lines)

        def state() -> dict | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=5) as response:
                    return json.loads(response.read())
            except OSError:
                return None

        served = wait_for(state, "the page's data")
        assert len(served["items"]) == 12
        assert {intent["name"] for intent in served["intents"]} == {"申请退货", "查询物流", "修改地址", "Invoice Request"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            assert "标注 / Label" in response.read().decode("utf-8")
    finally:
        process.terminate()
        try:
            process.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=WAIT_S)
        stderr.close()


def test_hash_log_is_refused_with_the_fix(shop_catalog, tmp_path, capsys):
    """A decision log written with decision_log_text=hash has no text to label: exit 2, and how to fix it."""
    log = write_jsonl(tmp_path / "hashed.jsonl", [
        {"ts": "2025-01-01T10:00:00Z", "text_sha256": "ab" * 32, "mode": "enforce", "accepted": False,
         "intent": "申请退货", "score": 0.1, "threshold": 0.6}] * 3)
    assert main(["review", str(log), "--catalog", str(shop_catalog), "--labels", str(tmp_path / "l.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"{log}: no row has a \"text\" field" in err
    assert "decision_log_text redact or full" in err
    assert not (tmp_path / "l.jsonl").exists()


def test_bad_requests_are_refused(start_review):
    """Labels need JSON (no cross-site form posts), a known message and a catalog intent; other hosts are refused."""
    review = start_review(LOGGED, name="bad")
    assert review.post("/api/label", {"id": 0, "action": "oos"}, content_type="text/plain")[0] == 415
    status, body = review.post("/api/label", {"id": 0, "action": "label", "intent": "不存在的意图"})
    assert status == 400 and "不存在的意图" in body["error"]
    assert review.post("/api/label", {"id": 99, "action": "oos"})[0] == 404
    assert review.post("/api/undo", {}) == (200, {"item": None, "counts": review.session.counts(),
                                                  "can_undo": False})
    request = urllib.request.Request(review.base_url + "/api/state", headers={"host": "evil.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=WAIT_S)
    assert refused.value.code == 400
    assert not review.labels.exists()


# ---------------------------------------------------------------- ordering and the label file

def test_order_nearest_threshold_first(tmp_path):
    """near the threshold (nearest first) -> rejected in enforce mode -> follow-ups -> the rest."""
    rows = [
        {"text": "a", "score": 0.9, "threshold": 0.5},                                   # rest
        {"text": "b", "score": 0.1, "threshold": 0.5, "mode": "shadow"},                 # rest (shadow)
        {"text": "c", "score": 0.45, "threshold": 0.5},                                  # near, 0.05
        {"text": "d", "score": 0.2, "threshold": 0.5},                                   # rejected (enforce default)
        {"text": "e", "score": 0.51, "threshold": 0.5},                                  # near, 0.01
        {"text": "f", "score": 0.95, "threshold": 0.5, "followup": True},                # follow-up
        {"text": "g", "score": 0.3, "threshold": 0.5, "mode": "enforce", "accepted": False},  # rejected, 0.2
    ]
    items = order_items(read_messages(write_jsonl(tmp_path / "log.jsonl", rows)).items, near=0.1)
    assert [item.text for item in items] == ["e", "c", "g", "d", "f", "a", "b"]
    assert [item.group for item in items] == ["near", "near", "rejected", "rejected", "followup", "rest", "rest"]
    assert [item.id for item in items] == list(range(7))


def test_label_file_newest_wins_and_stays_tune_readable(tmp_path):
    """A hand-edited file with two labels for a message: the newest wins; a change rewrites it with one row each."""
    path = tmp_path / "labels.jsonl"
    write_jsonl(path, [{"text": "我想退货", "label": "查询物流"}, {"text": "hello", "label": "oos"},
                       {"text": "我想退货", "label": "申请退货", "note": "kept"}])
    store = LabelStore.open(path)
    assert store.state('["我想退货", []]') == "申请退货"
    assert store.counts() == {"in_scope": 1, "oos": 1, "skipped": 0}
    assert store.set("hello", [], "申请退货") == "oos"
    assert read_jsonl(path) == [{"text": "我想退货", "label": "申请退货", "note": "kept"},
                                {"text": "hello", "label": "申请退货"}]
    store.set("新消息", ["上一句"], "oos", request_id="r-9")
    assert read_jsonl(path)[-1] == {"text": "新消息", "label": "oos", "context": ["上一句"], "request_id": "r-9"}
    store.set("新消息", ["上一句"], "skip")
    assert [row["text"] for row in read_jsonl(path)] == ["我想退货", "hello"]
    assert read_jsonl(store.skip_path) == [{"text": "新消息", "context": ["上一句"], "skipped": True}]
    reopened = LabelStore.open(path)
    assert reopened.state('["新消息", ["上一句"]]') == "skip"
    assert [(row.text, row.label) for row in read_labelled(path).rows] == [("我想退货", "申请退货"),
                                                                          ("hello", "申请退货")]
    assert not re.search(r"\.tmp$", " ".join(p.name for p in tmp_path.iterdir())), "no temp file left behind"


def test_csv_cells_a_spreadsheet_would_run_come_back_unchanged(tmp_path, shop_catalog):
    """A message starting like a formula is exported with an apostrophe (Excel shows text) and imported without."""
    from gatekeeper.catalog.loader import load_catalog
    from gatekeeper.review.labels import export_csv, import_csv

    rows = [{"text": "=HYPERLINK(\"http://x\",\"点我\")", "score": 0.1, "threshold": 0.6},
            {"text": "-5元优惠券怎么用", "score": 0.7, "threshold": 0.6}, {"text": "我想退货", "score": 0.9,
                                                                        "threshold": 0.6}]
    items = order_items(read_messages(write_jsonl(tmp_path / "log.jsonl", rows)).items)
    store = LabelStore.open(tmp_path / "labels.jsonl")
    store.set("=HYPERLINK(\"http://x\",\"点我\")", [], "oos")
    data = export_csv(items, store)
    cells = {row["label"]: row["text"] for row in csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
             if row["label"] != "skip"}
    assert cells == {"oos": "'=HYPERLINK(\"http://x\",\"点我\")"}
    sheet = tmp_path / "sheet.csv"
    sheet.write_bytes(data.replace("-5元优惠券怎么用,skip".encode(), "-5元优惠券怎么用,申请退货".encode()))
    assert b"'-5" in data
    fresh = LabelStore.open(tmp_path / "fresh.jsonl")
    summary = import_csv(sheet, fresh, load_catalog(shop_catalog).intent_names(), items)
    assert (summary.changed, summary.skipped) == (2, 1)
    assert {row["text"]: row["label"] for row in fresh.rows()} == {"=HYPERLINK(\"http://x\",\"点我\")": "oos",
                                                                   "-5元优惠券怎么用": "申请退货"}
