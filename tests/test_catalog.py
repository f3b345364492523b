"""Catalog loading: merging, and one precise error (file, line, field) per mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gatekeeper.catalog.loader import CatalogError, load_catalog
from tests.conftest import INTENTS

GOOD = """\
version: 1
name: demo
defaults:
  threshold: auto
intents:
  - name: billing
    description: Questions about bills
    examples:
      - "why is my bill so high"
      - "explain this charge"
  - name: refunds
    examples:
      - "I want my money back"
out_of_scope:
  - "tell me a joke"
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def single_problem(path: Path):
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    assert len(caught.value.problems) == 1, caught.value
    return caught.value.problems[0]


def test_good_catalog_loads(catalog_dir):
    catalog = load_catalog(write(catalog_dir, "a.yaml", GOOD))
    assert catalog.name == "demo"
    assert catalog.intent_names()[:2] == ["billing", "refunds"] and "greeting" in catalog.pack_intents
    assert catalog.out_of_scope == ["tell me a joke"]


def test_bundled_catalogs_load_alone_and_merged():
    telecom = load_catalog(INTENTS / "telecom_zh.yaml")
    banking = load_catalog(INTENTS / "banking_en.yaml")
    ecommerce = load_catalog(INTENTS / "ecommerce_zh.yaml")
    merged = load_catalog(INTENTS)
    own = [intent for catalog in (telecom, banking, ecommerce) for intent in catalog.intents
           if intent.name not in catalog.pack_intents]
    # The telecom catalog's own human_agent replaces the pack's: the merge has the pack's intents once.
    assert len(merged.intents) == len(own) + len(merged.pack_intents)
    assert "human_agent" in banking.pack_intents
    assert "human_agent" not in telecom.pack_intents and "human_agent" not in merged.pack_intents
    assert all(len(intent.examples) >= 15 and intent.description for intent in own)
    assert not telecom.warnings and not banking.warnings and not ecommerce.warnings
    # Each file's defaults stay with its own intents.
    by_name = {intent.name: intent for intent in merged.intents}
    assert "星河" in by_name["bill_inquiry"].reject_reply["zh"]
    assert by_name["bill_inquiry"].reject_reply != by_name["balance_inquiry"].reject_reply


# (text replaced in GOOD, replacement, line, field, fragment of the message)
SINGLE_MISTAKES = {
    "unknown key": ("    description:", "    descripton:", 7, "intents[0].descripton",
                    "did you mean 'description'"),
    "no examples, no description": ("out_of_scope:", "  - name: empty_one\nout_of_scope:", 14,
                                    "intents[2] (empty_one)", "no examples and no description"),
    "default threshold above 1": ("threshold: auto", "threshold: 1.5", 4, "defaults.threshold", "outside [-1, 1]"),
    "default threshold below -1": ("threshold: auto", "threshold: -2", 4, "defaults.threshold", "outside [-1, 1]"),
    "threshold not a number": ("threshold: auto", "threshold: high", 4, "defaults.threshold",
                               "must be a number between -1 and 1, or 'auto'"),
    "intent threshold out of range": ("  - name: refunds\n", "  - name: refunds\n    threshold: 3\n", 12,
                                      "intents[1].threshold", "outside [-1, 1]"),
    "intent threshold 'auto'": ("  - name: refunds\n", "  - name: refunds\n    threshold: auto\n", 12,
                                "intents[1].threshold", "delete the line to use the file's default threshold"),
    "example not a string": ('"explain this charge"', "42", 10, "intents[0].examples[1]", "must be a string"),
    "empty example": ('"explain this charge"', '"   "', 10, "intents[0].examples[1]", "empty"),
    "empty out-of-scope example": ('"tell me a joke"', '""', 15, "out_of_scope[0]", "empty"),
    "control character in intent name": ("name: refunds", 'name: "refunds\\u0007"', 11, "intents[1].name",
                                         "control or invisible characters (U+0007)"),
    "reply action without reply": ("  - name: refunds\n", "  - name: refunds\n    action: reply\n", 11,
                                   "intents[1]", "action 'reply' needs a 'reply' text"),
    "reply on a forward intent": ("  - name: refunds\n", "  - name: refunds\n    reply: hi\n", 11,
                                  "intents[1]", "only used with action 'reply' or 'handoff'"),
    "bad reply language key": ("threshold: auto\n", "threshold: auto\n  reject_reply: {Chinese: 不行}\n", 5,
                               "defaults.reject_reply", "'Chinese' is not a language key"),
    "full-width colon": ("    description: Questions", "    description：Questions", 7, "",
                         "full-width colon '：' after 'description'"),
    "scorer setting not a boolean": ("defaults:\n", "scorer:\n  lexical_features: maybe\ndefaults:\n", 4,
                                     "scorer.lexical_features", "must be true or false"),
}


@pytest.mark.parametrize("mistake", SINGLE_MISTAKES, ids=list(SINGLE_MISTAKES))
def test_each_mistake_is_located(catalog_dir, mistake):
    old, new, line, field, fragment = SINGLE_MISTAKES[mistake]
    assert old in GOOD
    path = write(catalog_dir, "a.yaml", GOOD.replace(old, new, 1))
    problem = single_problem(path)
    assert (problem.file, problem.line, problem.field) == (str(path), line, field)
    assert fragment in problem.message


def test_duplicate_intent_across_files(catalog_dir):
    write(catalog_dir, "a.yaml", GOOD)
    second = write(catalog_dir, "b.yaml", "intents:\n  - name: other\n    examples: [\"x\"]\n"
                   "  - name: refunds\n    examples: [\"give it back\"]\n")
    problem = single_problem(catalog_dir)
    assert (problem.file, problem.line, problem.field) == (str(second), 4, "intents[1].name")
    assert "duplicate intent 'refunds'" in problem.message and "a.yaml:11" in problem.message


def test_broken_yaml_syntax(catalog_dir):
    path = write(catalog_dir, "a.yaml", GOOD.replace('      - "explain this charge"', '      - "explain this charge'))
    problem = single_problem(path)
    # The scanner notices the unclosed quote further down; the message points back to the list it is in.
    assert problem.file == str(path) and problem.line >= 10
    assert "broken YAML syntax" in problem.message and "at line 9" in problem.message


def test_conflicting_model_sections(catalog_dir):
    write(catalog_dir, "a.yaml", "model:\n  backend: use-multilingual\n" + GOOD)
    second = write(catalog_dir, "b.yaml", "model:\n  backend: openai\nintents:\n  - name: x\n    examples: [\"y\"]\n")
    problem = single_problem(catalog_dir)
    assert (problem.file, problem.line, problem.field) == (str(second), 1, "model")


def test_all_problems_reported_at_once(catalog_dir):
    text = GOOD.replace("    description:", "    descripton:").replace('"explain this charge"', "42")
    with pytest.raises(CatalogError) as caught:
        load_catalog(write(catalog_dir, "a.yaml", text))
    assert {p.field for p in caught.value.problems} == {"intents[0].descripton", "intents[0].examples[1]"}


def test_cli_reports_catalog_errors_without_traceback(catalog_dir):
    path = write(catalog_dir, "a.yaml", GOOD.replace("threshold: auto", "threshold: 7"))
    result = subprocess.run([sys.executable, "-m", "gatekeeper", "route", "--catalog", str(path), "hello"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"{path}:4: defaults.threshold:" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_catalog_path(tmp_path):
    with pytest.raises(CatalogError) as caught:
        load_catalog(tmp_path / "nope.yaml")
    assert "no such file" in str(caught.value)


def test_each_files_threshold_stays_with_its_own_intents(catalog_dir):
    write(catalog_dir, "a.yaml", "defaults:\n  threshold: 0.5\nintents:\n  - name: a_one\n    examples: [\"x\"]\n")
    write(catalog_dir, "b.yaml", "defaults:\n  threshold: auto\nintents:\n  - name: b_one\n    examples: [\"y\"]\n")
    catalog = load_catalog(catalog_dir)
    by_name = {intent.name: intent for intent in catalog.intents}
    assert by_name["a_one"].threshold == 0.5
    assert by_name["b_one"].threshold is None and catalog.defaults.threshold == "auto"


def test_conflicting_max_chars_across_files(catalog_dir):
    write(catalog_dir, "a.yaml", "defaults:\n  max_chars: 100\nintents:\n  - name: a_one\n    examples: [\"x\"]\n")
    second = write(catalog_dir, "b.yaml", "defaults:\n  max_chars: 5000\nintents:\n  - name: b_one\n"
                   "    examples: [\"y\"]\n")
    problem = single_problem(catalog_dir)
    assert (problem.file, problem.line, problem.field) == (str(second), 2, "defaults.max_chars")
    assert "conflicts with 100" in problem.message and "set the same value" in problem.message
