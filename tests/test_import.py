"""``gatekeeper import`` through the real command line, and the labelled-data reader it shares with eval and tune.

No model is loaded: importing only reads, groups, writes and validates.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import pytest
import yaml

from gatekeeper.catalog.labelled_data import is_oos_label
from gatekeeper.catalog.loader import CatalogError, CatalogProblem, load_catalog
from gatekeeper.cli import build_parser, main
from gatekeeper.commands import import_cmd
from gatekeeper.commands.common import labelled_rows

CHINESE_ROWS = [("明天北京下雨吗", "天气"), ("后天上海多少度", "天气"), ("查一下明早去深圳的航班", "航班"),
                ("CA1234 晚点了吗", "航班"), ("放一首周杰伦的歌", "音乐"), ("来点轻音乐", "音乐"),
                ("你好呀", "闲聊"), ("你是机器人吗", "闲聊")]


def jsonl(rows: list[tuple[str, str]]) -> str:
    return "".join(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n" for text, label in rows)


def write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def run_import(capsys, data: Path, *flags: str, out: str = "catalog.yaml") -> tuple[int, str, str, Path]:
    """(exit code, stdout, stderr, output path) of ``gatekeeper import DATA --out OUT FLAGS``."""
    out_path = data.parent / out
    code = main(["import", str(data), "--out", str(out_path), *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err, out_path


def imported(out: Path) -> dict:
    """The catalog document written by import (the data's own intents, without built-in packs)."""
    return yaml.safe_load(out.read_text(encoding="utf-8"))


def intents_of(out: Path) -> dict[str, list[str]]:
    return {intent["name"]: intent["examples"] for intent in imported(out)["intents"]}


def test_chinese_labels_stay_chinese_and_the_catalog_loads(tmp_path, capsys):
    data = write(tmp_path, "data.jsonl", jsonl(CHINESE_ROWS))
    code, out, _, catalog_path = run_import(capsys, data, "--oos-label", "闲聊")
    assert code == 0
    assert "3 intents, 6 examples, 2 out-of-scope examples" in out
    assert intents_of(catalog_path) == {"天气": ["明天北京下雨吗", "后天上海多少度"],
                                        "航班": ["查一下明早去深圳的航班", "CA1234 晚点了吗"],
                                        "音乐": ["放一首周杰伦的歌", "来点轻音乐"]}
    assert imported(catalog_path)["out_of_scope"] == ["你好呀", "你是机器人吗"]
    assert "天气" in catalog_path.read_text(encoding="utf-8")  # readable, not \u escapes
    catalog = load_catalog(catalog_path)
    assert {"天气", "航班", "音乐"} <= set(catalog.intent_names())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.yaml", "data.jsonl"]  # no temp file left


def test_utf8_bom_file(tmp_path, capsys):
    data = write(tmp_path, "data.jsonl", codecs.BOM_UTF8 + jsonl(CHINESE_ROWS).encode("utf-8"))
    code, _, err, catalog_path = run_import(capsys, data, "--oos-label", "闲聊")
    assert code == 0, err
    assert list(intents_of(catalog_path)) == ["天气", "航班", "音乐"]
    assert "GB18030" not in err


def test_gb18030_file_is_read_with_a_warning(tmp_path, capsys):
    data = write(tmp_path, "data.csv", ("text,label\n" + "".join(f"{t},{lb}\n" for t, lb in CHINESE_ROWS))
                 .encode("gb18030"))
    code, _, err, catalog_path = run_import(capsys, data, "--oos-label", "闲聊")
    assert code == 0, err
    assert list(intents_of(catalog_path)) == ["天气", "航班", "音乐"]
    assert "data.csv: not UTF-8 (line 2), so it was read as GB18030 (GBK)" in err
    assert "iconv -f ENCODING -t UTF-8" in err


def test_utf16_file_with_a_byte_order_mark(tmp_path, capsys):
    """Excel's "Unicode text" export: UTF-16 with a BOM, tab-separated."""
    text = "text\tlabel\n" + "".join(f"{t}\t{lb}\n" for t, lb in CHINESE_ROWS)
    data = write(tmp_path, "export.txt", codecs.BOM_UTF16_LE + text.encode("utf-16-le"))
    code, _, err, catalog_path = run_import(capsys, data, "--format", "tsv", "--oos-label", "闲聊")
    assert code == 0, err
    assert list(intents_of(catalog_path)) == ["天气", "航班", "音乐"]


def test_csv_with_named_columns_quotes_and_multiline_text(tmp_path, capsys):
    data = write(tmp_path, "data.csv", 'id,query,intent\n'
                                       '1,"hello, I want a refund",refund\n'
                                       '2,"two\nlines",refund\n'
                                       '\n'
                                       '3,"say ""hi""",greeting\n'
                                       '4,where is my parcel,delivery\n')
    code, _, err, catalog_path = run_import(capsys, data, "--text-field", "query", "--label-field", "intent")
    assert code == 0, err
    assert intents_of(catalog_path) == {"refund": ["hello, I want a refund", "two\nlines"],
                                        "greeting": ['say "hi"'], "delivery": ["where is my parcel"]}


def test_tsv_and_format_flag(tmp_path, capsys):
    rows = "q\tintent\n我要退货\t退货\n怎么退款\t退款\n"
    tsv = write(tmp_path, "data.tsv", rows)
    code, _, err, catalog_path = run_import(capsys, tsv, "--text-field", "q", "--label-field", "intent")
    assert code == 0, err
    assert intents_of(catalog_path) == {"退货": ["我要退货"], "退款": ["怎么退款"]}
    other = write(tmp_path, "data.txt", rows)
    code, _, err, _ = run_import(capsys, other, "--format", "tsv", "--text-field", "q", "--label-field", "intent",
                                 out="other.yaml")
    assert code == 0, err


def test_oos_label_is_case_insensitive(tmp_path, capsys):
    data = write(tmp_path, "data.jsonl", jsonl([("check my bill", "billing"), ("tell me a joke", "OOS"),
                                                ("weather?", "Oos"), ("sing", " Chitchat ")]))
    code, out, err, catalog_path = run_import(capsys, data, "--oos-label", "chitchat")
    assert code == 0, err
    assert list(intents_of(catalog_path)) == ["billing"]
    assert imported(catalog_path)["out_of_scope"] == ["tell me a joke", "weather?", "sing"]
    assert is_oos_label("OOS", []) and is_oos_label("闲聊", ["闲聊 "]) and not is_oos_label("billing", ["oos"])


def test_labels_differing_in_case_or_spaces_are_merged_with_a_warning(tmp_path, capsys):
    data = write(tmp_path, "data.jsonl", jsonl([("send me my invoice", "Invoice"), ("invoice please", "invoice"),
                                                ("where is the invoice", "invoice "), ("refund", "refund"),
                                                ("invoice please", "INVOICE")]))
    code, out, err, catalog_path = run_import(capsys, data)
    assert code == 0, err
    assert intents_of(catalog_path) == {"invoice": ["send me my invoice", "invoice please", "where is the invoice"],
                                        "refund": ["refund"]}
    assert ("warning: labels 'invoice' (2 rows), 'Invoice' (1 row), 'INVOICE' (1 row) differ only in case or "
            "surrounding spaces, so they were merged into the intent 'invoice'") in err
    assert "duplicates dropped: 1 row" in out


def test_most_frequent_spelling_wins_and_first_seen_breaks_ties(tmp_path, capsys):
    data = write(tmp_path, "data.jsonl", jsonl([("a", "Refund"), ("b", "refund"), ("c", "Billing"), ("d", "billing"),
                                                ("e", "billing")]))
    code, _, err, catalog_path = run_import(capsys, data)
    assert code == 0, err
    assert list(intents_of(catalog_path)) == ["Refund", "billing"]


def test_rows_without_text_are_skipped_with_a_warning(tmp_path, capsys):
    data = write(tmp_path, "data.csv", "text,label\nhello,greet\n   ,greet\nhi,greet\n,,\n")
    code, _, err, catalog_path = run_import(capsys, data)
    assert code == 0, err
    assert intents_of(catalog_path) == {"greet": ["hello", "hi"]}
    assert "data.csv: skipped 1 row with an empty 'text' (line 3)" in err


# name: (file name, content, extra flags, "file:line" (or file) in the message, fragment of the fix)
MISTAKES = {
    "bad JSON line": ("data.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": x}\n', [],
                      "data.jsonl:2: not valid JSON", "each line must be one JSON object"),
    "text not a string": ("data.jsonl", '\n\n{"text": 42, "label": "x"}\n', [], 'data.jsonl:3: "text" must be a string',
                          "put it in double quotes"),
    "missing JSON field": ("data.jsonl", '{"query": "a", "label": "x"}\n', [], 'data.jsonl:1: no "text" field',
                           "pass --text-field NAME"),
    "missing column": ("data.csv", "query,label\na,x\n", [], 'data.csv:1: no column "text" in the header',
                       '(columns found: "query", "label"); the first row must name the columns, and --text-field NAME'),
    "missing label column": ("data.tsv", "text\tintent\na\tx\n", [], 'data.tsv:1: no column "label"',
                             "--label-field NAME"),
    "empty label": ("data.csv", "text,label\na,x\nb,  \n", [], "data.csv:3: the label is empty",
                    "write the intent of this message, or delete the row"),
    "control character in label": ("data.jsonl", '{"text": "a", "label": "bill\\u0007ing"}\n', [],
                                   "data.jsonl:1: the label 'bill\\x07ing' cannot be an intent name",
                                   "retype it with printable characters only"),
    "unknown extension": ("data.txt", "text,label\na,x\n", [], "data.txt: cannot tell the format",
                          "pass --format jsonl|csv|tsv"),
    "undecodable bytes": ("data.jsonl", b'{"text": "a", "label": "x"}\n{"text": "\xff\xfe", "label": "x"}\n', [],
                          "data.jsonl:2: byte 0xff at offset 38 is not UTF-8 or GB18030",
                          "save the file as UTF-8, e.g. iconv -f ENCODING -t UTF-8"),
    "too many fields": ("data.csv", "text,label\nhello, world,greet\n", [], "data.csv:2: the row has 3 fields",
                        'put a text that holds the delimiter in double quotes'),
    "unclosed quote": ("data.csv", 'text,label\na,x\n"b,x\n', [], "data.csv:3: broken CSV",
                       "check the double quotes"),
    "same text, two labels": ("data.jsonl", jsonl([("refund me", "refund"), ("x", "y"), ("Refund  me", "billing")]),
                              [], "data.jsonl:3: 'Refund  me' is labelled 'billing' here but 'refund' at line 1",
                              "correct the label of one of the rows or delete it"),
    "empty file": ("data.jsonl", "", [], "data.jsonl: the file has no labelled rows", "each row needs a 'text'"),
    "only out of scope": ("data.jsonl", jsonl([("hi", "oos")]), [], "data.jsonl: no in-scope rows",
                          "keep some rows labelled with the intents"),
}


@pytest.mark.parametrize("name", MISTAKES)
def test_mistakes_exit_2_name_the_line_and_the_fix_and_write_nothing(tmp_path, capsys, name):
    file_name, content, flags, where, fix = MISTAKES[name]
    data = write(tmp_path, file_name, content)
    code, out, err, catalog_path = run_import(capsys, data, *flags)
    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err
    assert where in err and fix in err, err
    assert not catalog_path.exists()
    assert [p.name for p in tmp_path.iterdir()] == [file_name]


def test_missing_data_file(tmp_path, capsys):
    code, _, err, catalog_path = run_import(capsys, tmp_path / "nope.csv")
    assert code == 2 and "nope.csv: no such file" in err
    assert not catalog_path.exists()


def test_existing_output_is_refused_without_force_and_replaced_with_it(tmp_path, capsys):
    data = write(tmp_path, "data.jsonl", jsonl(CHINESE_ROWS))
    existing = write(tmp_path, "catalog.yaml", "# hand-written, keep me\n")
    code, _, err, _ = run_import(capsys, data)
    assert code == 2 and "catalog.yaml exists; pass --force to overwrite it" in err
    assert existing.read_text(encoding="utf-8") == "# hand-written, keep me\n"
    code, _, err, _ = run_import(capsys, data, "--force")
    assert code == 0, err
    assert "天气" in intents_of(existing)


def test_a_catalog_that_does_not_load_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    """If validation fails, neither the output nor the temp file exists, and an existing output is untouched."""
    def refuse(path):
        raise CatalogError([CatalogProblem(str(path), 3, "intents[0].name", "broken on purpose")])

    monkeypatch.setattr(import_cmd, "load_catalog", refuse)
    data = write(tmp_path, "data.jsonl", jsonl(CHINESE_ROWS))
    code, _, err, catalog_path = run_import(capsys, data)
    assert code == 2
    assert "data.jsonl: the catalog made from this file does not load: intents[0].name: broken on purpose" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]
    existing = write(tmp_path, "catalog.yaml", "# keep\n")
    assert run_import(capsys, data, "--force")[0] == 2
    assert existing.read_text(encoding="utf-8") == "# keep\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.yaml", "data.jsonl"]


def test_eval_and_tune_read_csv_through_the_same_reader(tmp_path):
    data = write(tmp_path, "valid.csv", codecs.BOM_UTF8 + "q,intent\n查话费,Bill \n今天天气,OOS\n".encode("utf-8"))
    assert labelled_rows(data, None, "q", "intent") == [("查话费", "Bill"), ("今天天气", "OOS")]
    for command in ("eval", "tune"):
        args = build_parser().parse_args([command, "--data", str(data), "--format", "csv", "--text-field", "q",
                                          "--label-field", "intent"])
        assert (args.format, args.text_field, args.label_field) == ("csv", "q", "intent")
