"""Character n-gram features of the head: fitting, saving, warm starts, the opt-out, and what they are worth."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.feature_extraction.text import TfidfVectorizer

from gatekeeper.catalog.loader import load_catalog
from gatekeeper.commands.import_cmd import document_from_pairs
from gatekeeper.core.fit import build_artifacts
from gatekeeper.core.head_fitting import CROSS_FIT_FOLDS, Heads, fit_heads, fold_ids, realign
from gatekeeper.core.lexical import MIN_TEXTS, NGRAM_RANGE, CharNgrams, char_wb_ngrams
from gatekeeper.core.scoring import HeadScorer, head_inputs, sparse_product
from gatekeeper.gate import Gate
from gatekeeper.measure.evaluation import metrics, score_rows
from gatekeeper.store.artifacts import load_heads, state_dir
from tests.conftest import INTENTS, SHARED_DATA

TEXTS = ["我要查话费", "帮我查一下话费余额", "话费怎么这么贵", "check my balance", "what is my balance", "套餐怎么改"]


def test_vocabulary_keeps_ngrams_shared_by_two_texts():
    lexical, _ = CharNgrams.fit_transform(TEXTS)
    vocabulary = set(lexical.vocabulary.tolist())
    assert {"话费", "查", "bal", "ala"} <= vocabulary  # Chinese words and English fragments alike
    assert "余额" not in vocabulary and "套餐" not in vocabulary  # in one text only
    rows = lexical.transform(["话费余额"])
    assert rows.shape == (1, lexical.size) and rows.dtype == np.float32
    assert np.linalg.norm(rows.toarray()) == pytest.approx(1.0, abs=1e-6)


def test_state_round_trips_without_pickles(tmp_path):
    lexical, _ = CharNgrams.fit_transform(TEXTS)
    np.savez(tmp_path / "state.npz", **lexical.state())
    with np.load(tmp_path / "state.npz", allow_pickle=False) as arrays:
        rebuilt = CharNgrams(arrays["lexical_vocabulary"], arrays["lexical_idf"])
    probe = ["查话费", "my balance please", "完全无关的句子"]
    assert (rebuilt.transform(probe) != lexical.transform(probe)).nnz == 0


def _reference() -> TfidfVectorizer:
    """scikit-learn's vectorizer with the settings :mod:`gatekeeper.core.lexical` reproduces."""
    return TfidfVectorizer(analyzer="char_wb", ngram_range=NGRAM_RANGE, sublinear_tf=True, min_df=MIN_TEXTS,
                           dtype=np.float32)


def test_ngrams_equal_scikit_learns_char_wb_analyzer():
    analyze = _reference().build_analyzer()
    probe = TEXTS + ["Balance!! balance?? 话费话费话费", "", "   ", "a", "ab", "abc", "I  O\tU\n\nx\u3000y\xa0z",
                     "ÄÖÜ Straße İstanbul", "  leading and trailing  ", "5G套餐 vs 4G", "emoji 😀 ok"]
    for text in probe:
        assert char_wb_ngrams(text) == analyze(text), text


def test_fit_and_transform_equal_scikit_learns():
    """The vocabulary, IDF and TF-IDF values of scikit-learn's vectorizer (same n-grams and settings)."""
    reference = _reference().fit(TEXTS)
    lexical, fitted_rows = CharNgrams.fit_transform(TEXTS)
    assert lexical.vocabulary.tolist() == reference.get_feature_names_out().tolist()
    np.testing.assert_allclose(lexical.idf, reference.idf_, rtol=1e-6)
    np.testing.assert_allclose(fitted_rows.toarray(), reference.transform(TEXTS).toarray(), atol=1e-6)
    probe = TEXTS + ["Balance!! balance?? 话费话费话费", "", "nothing known here: xyz", "查"]
    ours, theirs = lexical.transform(probe), reference.transform(probe)
    assert ours.shape == theirs.shape and (ours != 0).toarray().tolist() == (theirs != 0).toarray().tolist()
    np.testing.assert_allclose(ours.toarray(), theirs.toarray(), atol=1e-6)
    assert lexical.transform([]).shape == (0, lexical.size)


def test_scoring_rows_equal_transform_and_do_not_depend_on_the_batch():
    """The scoring path's CSR arrays and product are bit for bit :meth:`transform`'s and scipy's, row by row."""
    lexical, _ = CharNgrams.fit_transform(TEXTS)
    probe = TEXTS + ["Balance!! balance?? 话费话费话费", "", "nothing known here: xyz", "查", "查话费 查话费"]
    matrix, rows = lexical.transform(probe), lexical.rows(probe)
    for ours, theirs in zip(rows, (matrix.indptr, matrix.indices, matrix.data)):
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)
    weights = np.random.default_rng(0).normal(size=(lexical.size, 4))
    product = sparse_product(rows, weights)
    assert np.array_equal(product, matrix @ weights)
    for row, text in enumerate(probe):
        assert np.array_equal(sparse_product(lexical.rows([text]), weights)[0], product[row]), text


def test_realign_moves_rows_to_the_new_vocabulary():
    dim = 2
    weights = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)  # 2 embedding rows, then 'a', 'b', 'c'
    bias = np.ones(3, dtype=np.float32)
    heads = Heads(full=(weights, bias), folds=[(weights + 100, bias)], vocabulary=np.array(["a", "b", "c"]))
    moved = realign(heads, np.array(["b", "c", "d"]))
    full = moved.full[0]
    assert full.shape == (dim + 3, 3)
    np.testing.assert_array_equal(full[:dim], weights[:dim])
    np.testing.assert_array_equal(full[dim:dim + 2], weights[dim + 1:])  # 'b', 'c' kept their weights
    np.testing.assert_array_equal(full[dim + 2], 0)  # 'd' is new
    np.testing.assert_array_equal(moved.folds[0][0][dim:dim + 2], weights[dim + 1:] + 100)
    assert realign(heads, heads.vocabulary) is heads


def _copy_catalog(tmp_path: Path, name: str, **sections: object) -> Path:
    """The bundled telecom catalog under another name, with ``sections`` replaced."""
    document = yaml.safe_load((INTENTS / "telecom_zh.yaml").read_text(encoding="utf-8"))
    document.update(sections)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def test_lexical_features_are_on_by_default_and_can_be_turned_off(tmp_path, use_embedder):
    with_ngrams = Gate(embedder=use_embedder).fit(_copy_catalog(tmp_path, "lexical_on"))
    without = Gate(embedder=use_embedder).fit(_copy_catalog(tmp_path, "lexical_off", scorer={"lexical_features": False}))
    assert with_ngrams.artifacts_.meta["lexical_features"] > 100
    assert isinstance(with_ngrams.router_.scorer, HeadScorer) and with_ngrams.router_.scorer.lexical is not None
    assert without.artifacts_.meta["lexical_features"] == 0 and without.router_.scorer.lexical is None
    assert with_ngrams.artifacts_.fingerprint != without.artifacts_.fingerprint
    for gate in (with_ngrams, without):
        assert gate.decide("我想查一下这个月的话费").intent == "bill_inquiry"
        assert not gate.decide("今天天气怎么样").accepted


def test_saved_scorer_reloads_with_its_ngrams(tmp_path, use_embedder):
    path = _copy_catalog(tmp_path, "lexical_reload")
    built = Gate(embedder=use_embedder).fit(path)
    loaded = Gate(embedder=use_embedder).fit(path)
    assert built.rebuilt_ and not loaded.rebuilt_
    messages = ["我想查一下这个月的话费", "宽带断了怎么办", "帮我写一首诗"]
    assert [d.to_dict() for d in built.decide_many(messages)] == [d.to_dict() for d in loaded.decide_many(messages)]


def test_edit_with_new_ngrams_warm_starts_and_matches_a_cold_build(tmp_path, use_embedder):
    path = _copy_catalog(tmp_path, "lexical_warm")
    Gate(embedder=use_embedder).fit(path)
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    added = ["我的宽带光猫指示灯一直闪红灯", "光猫红灯闪烁上不了网"]
    broadband = next(intent for intent in document["intents"] if intent["name"] == "broadband_repair")
    broadband["examples"].extend(added)
    path.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False), encoding="utf-8")

    previous = load_heads(state_dir(path), load_catalog(path).intent_names())
    warm = Gate(embedder=use_embedder).fit(path)
    assert warm.rebuilt_ and previous is not None
    assert not set(warm.router_.scorer.lexical.vocabulary) <= set(previous.vocabulary)  # realign had work to do
    cold, _ = build_artifacts(warm.catalog_, use_embedder, previous=None)
    probe = [text for intent in warm.catalog_.intents for text in intent.examples] + ["光猫一直闪红灯怎么办"]
    vectors = use_embedder.encode(probe, is_query=True)
    warm_intents = warm.router_.scorer.score(vectors, probe).intent_scores.argmax(axis=1)
    cold_intents = cold.scorer.score(vectors, probe).intent_scores.argmax(axis=1)
    assert (warm_intents == cold_intents).mean() >= 0.99
    assert warm.decide("光猫一直闪红灯怎么办").intent == "broadband_repair"


@pytest.mark.slow
def test_ngrams_raise_accuracy_on_smp2017(tmp_path, use_embedder):
    """The reason the features exist, re-measured: SMP2017 test accuracy with and without them."""
    folder = SHARED_DATA / "smp2017_ecdt"

    def rows(split: str) -> list[tuple[str, str]]:
        with open(folder / f"{split}.jsonl", encoding="utf-8") as handle:
            return [(row["text"], row["label"]) for row in map(json.loads, handle)]

    document = document_from_pairs(rows("train"), {"chat"}, "smp")
    accuracy = {}
    for lexical in (True, False):
        path = tmp_path / f"smp_lexical_{lexical}.yaml"
        path.write_text(yaml.safe_dump({**document, "scorer": {"lexical_features": lexical}}, allow_unicode=True,
                                       sort_keys=False), encoding="utf-8")
        gate = Gate(embedder=use_embedder).fit(path)
        scored = score_rows(gate, rows("test"), {"chat"}, show_progress=False)
        accuracy[lexical] = metrics(scored, gate.router_.thresholds.per_intent)["in_scope_accuracy"]
        shutil.rmtree(state_dir(path), ignore_errors=True)
    assert accuracy[True] >= 0.92
    assert accuracy[True] >= accuracy[False] + 0.02


def test_build_command_reports_the_ngram_features(tmp_path):
    path = _copy_catalog(tmp_path, "lexical_cli")
    result = subprocess.run([sys.executable, "-m", "gatekeeper", "build", "--catalog", str(path), "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["scorer"] == "head" and summary["lexical_features"] > 100


def test_fit_progress_hears_every_head():
    """The build's "fitting scorer" bar advances once per fitted head (full + folds)."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(60, 8)).astype(np.float32)
    labels = np.repeat(np.arange(3), 20).astype(np.int32)
    texts = [f"message {i}" for i in range(60)]
    heard: list[tuple[int, int]] = []
    heads, _ = fit_heads(head_inputs(vectors, None), np.array([], dtype=str), labels, 3, fold_ids(texts), None,
                         lambda fold, head: None, on_fitted=lambda done, total: heard.append((done, total)))
    assert sorted(heard) == [(done, CROSS_FIT_FOLDS + 1) for done in range(1, CROSS_FIT_FOLDS + 2)]
    assert heads.full[0].shape == (8, 3) and len(heads.folds) == CROSS_FIT_FOLDS
