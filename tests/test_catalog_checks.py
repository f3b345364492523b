"""Catalogs that validate but would make a useless gate: each is an error naming file, line and fix, or a
warning that ``gatekeeper build`` prints; and Unicode intent names, reply languages and the packs."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatekeeper.catalog.loader import CatalogError, load_catalog
from gatekeeper.catalog.schema import pick_reply
from gatekeeper.core.text import detect_language

TWO_INTENTS = """\
version: 1
name: shop
intents:
  - name: 退货申请
    examples: ["我想退货", "衣服不合适能退吗", "怎么申请退款"]
  - name: Invoice
    examples: ["I need an invoice", "send me my invoice", "where is my receipt"]
"""


def write(folder: Path, text: str, name: str = "c.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list:
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    return caught.value.problems


def test_unicode_intent_names_are_kept_normalised(catalog_dir):
    text = TWO_INTENTS.replace("name: 退货申请", "name: \"  退货申请 \"").replace("name: Invoice", "name: Ｉｎｖｏｉｃｅ")
    catalog = load_catalog(write(catalog_dir, text))
    assert catalog.intent_names()[:2] == ["退货申请", "Invoice"]  # trimmed, NFKC (full-width letters folded)


def test_intent_names_differing_only_by_case_are_one_intent(catalog_dir):
    path = write(catalog_dir, TWO_INTENTS + "  - name: invoice \n    examples: [\"bill copy\"]\n")
    [problem] = problems_of(path)
    assert (problem.line, problem.field) == (8, "intents[2].name")
    assert "duplicate intent 'invoice'" in problem.message and f"{path}:6" in problem.message


@pytest.mark.parametrize("text", ["", "version: 1\nname: x\n", "out_of_scope:\n  - \"tell me a joke\"\n"])
def test_a_catalog_without_intents_is_an_error(catalog_dir, text):
    path = write(catalog_dir, text)
    [problem] = problems_of(path)
    assert problem.file == str(path) and problem.field == "intents"
    assert "no intents" in problem.message and "add an 'intents:' list" in problem.message


def test_the_same_text_under_two_intents_is_an_error(catalog_dir):
    path = write(catalog_dir, TWO_INTENTS.replace('"where is my receipt"', '"怎么申请退款"'))
    [problem] = problems_of(path)
    assert (problem.line, problem.field) == (7, "intents[1].examples[2]")
    assert "also an example of intent '退货申请'" in problem.message and f"{path}:5" in problem.message


def test_the_same_text_in_scope_and_out_of_scope_is_an_error(catalog_dir):
    path = write(catalog_dir, TWO_INTENTS + "out_of_scope:\n  - \"我想退货\"\n  - \"讲个笑话\"\n")
    [problem] = problems_of(path)
    assert (problem.line, problem.field) == (9, "out_of_scope[0]")
    assert "both an example of intent '退货申请' and out of scope" in problem.message


def test_one_intent_without_any_negatives_is_an_error(catalog_dir):
    text = ("out_of_scope_pack: none\nintents:\n  - name: 退货申请\n"
            "    examples: [\"我想退货\", \"能退吗\", \"退款\"]\n")
    [problem] = problems_of(write(catalog_dir, text))
    assert (problem.line, problem.field) == (3, "intents[0] (退货申请)")
    assert "nothing to reject" in problem.message and "out_of_scope_pack: default" in problem.message


def test_thin_catalogs_load_with_warnings(catalog_dir):
    text = ("out_of_scope_pack: none\nintents:\n  - name: a\n    description: orders\n"
            "  - name: b\n    examples: [\"x\", \"y\"]\n  - name: c\n    examples: [\"p\", \"q\", \"r\", \"q\"]\n")
    catalog = load_catalog(write(catalog_dir, text))
    joined = "\n".join(catalog.warnings)
    assert len(catalog.warnings) == 4, joined
    assert "c.yaml:1: out_of_scope: no out-of-scope examples" in joined
    assert "c.yaml:3: intents[0] (a): no examples" in joined and "zero-shot" in joined
    assert "c.yaml:5: intents[1] (b): only 2 example(s)" in joined
    assert "c.yaml:8: intents[2].examples[3]: 'q' is listed twice" in joined


def test_ime_punctuation_gets_its_own_error(catalog_dir):
    path = write(catalog_dir, TWO_INTENTS.replace("name: shop", "name：shop").replace(
        "  - name: Invoice", "\u3000 - name: Invoice"))
    problems = problems_of(path)
    assert [(p.line, p.message.split(";")[0]) for p in problems] == [
        (2, "full-width colon '：' after 'name'"), (6, "full-width space (U+3000) in the indentation")]


def test_a_non_utf8_catalog_names_the_fix(catalog_dir):
    path = catalog_dir / "c.yaml"
    path.write_bytes(TWO_INTENTS.encode("gb18030"))
    [problem] = problems_of(path)
    assert problem.line == 4 and "not UTF-8" in problem.message and "iconv -f GB18030" in problem.message


def test_a_utf8_bom_is_accepted(catalog_dir):
    path = catalog_dir / "c.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + TWO_INTENTS.encode())
    assert load_catalog(path).name == "shop"


def test_conversation_pack_is_added_and_overridable(catalog_dir):
    catalog = load_catalog(write(catalog_dir, TWO_INTENTS))
    assert set(catalog.pack_intents) == {"greeting", "thanks", "goodbye", "human_agent", "continuation"}
    assert {catalog.intent(n).action for n in catalog.pack_intents} == {"reply", "handoff", "continue"}
    own = TWO_INTENTS + ("  - name: Greeting\n    action: forward\n    examples: [\"hello there\", \"hi\", \"hey\"]\n"
                         "conversation_pack: default\n")
    replaced = load_catalog(write(catalog_dir, own))
    assert "greeting" not in replaced.pack_intents and replaced.intent("Greeting").action == "forward"
    off = load_catalog(write(catalog_dir, TWO_INTENTS + "conversation_pack: none\n"))
    assert off.pack_intents == [] and off.intent_names() == ["退货申请", "Invoice"]


def test_pack_examples_the_catalog_rejects_are_left_out(catalog_dir):
    catalog = load_catalog(write(catalog_dir, TWO_INTENTS + "out_of_scope:\n  - \"你好\"\n"))
    assert "你好" not in catalog.intent("greeting").examples


def test_pack_settings_must_agree_across_files(catalog_dir):
    write(catalog_dir, TWO_INTENTS + "out_of_scope_pack: none\n", "a.yaml")
    second = write(catalog_dir, "out_of_scope_pack: default\nintents:\n  - name: c\n    examples: [\"p\", \"q\", \"r\"]\n",
                   "b.yaml")
    [problem] = problems_of(catalog_dir)
    assert (problem.file, problem.line, problem.field) == (str(second), 1, "out_of_scope_pack")


@pytest.mark.parametrize("text,language", [("你好，我的话费", "zh"), ("hello", "en"), ("こんにちは", "ja"),
                                           ("東京の天気", "ja"), ("안녕하세요", "ko"), ("Привет", "ru"),
                                           ("5G套餐怎么改", "zh"), ("12345", "default"), ("", "default")])
def test_language_by_script(text, language):
    assert detect_language(text) == language


def test_replies_in_any_language_with_fallbacks():
    replies = {"zh": "不行", "ja": "だめ", "default": "No"}
    assert [pick_reply(replies, lang) for lang in ("zh", "ja", "ko", "en", "default")] == [
        "不行", "だめ", "No", "No", "No"]
    assert pick_reply("每种语言都一样", "ko") == "每种语言都一样"
    assert pick_reply({"zh": "不行", "en": "No"}, "ko") == "No"  # no default: English, then the first given
