"""Variants tried on the 10-shot catalogs of issue #16 and not kept: the figures of docs/quality.md.

    python benchmarks/fewshot_variants.py [--datasets clinc150 smp2017] [--json OUT] [--state-dir DIR]

The 10-shot catalogs are those of ``benchmarks/quality.py --few-shot 10``
(the K training texts of each intent with the smallest SHA-256, no
out-of-scope rows), and so are the held-out-intent splits (seed 0). Three
kinds of variant, each beside its own baseline:

* **catalog variants**, built through :class:`~gatekeeper.gate.Gate` as a team
  would write them: every example also without one word (or, in Chinese,
  one character) at a position chosen by a hash of the text, once or twice
  (simple-transform paraphrase augmentation); each intent's name as its
  description. Rows: ``auto`` accuracy / AUROC / OOS recall / false-reject
  rate, tuned AUROC, held-out-intent ``auto`` AUROC.
* **calibrator features** (``tuned``: the calibrator refitted on validation
  by scikit-learn, AUROC on test): the gate's three features, plus the share
  of the message's character n-grams (2 characters or more) found in the
  catalog's examples, or plus the cosine to the nearest example minus the
  median nearest-sibling cosine of that example's intent.
* **heads on the embedding alone** (scikit-learn, the pack as the
  out-of-scope class, no n-grams; accuracy, and AUROC of the best intent
  score): multinomial logistic regression, the same with convex
  combinations of two examples of different intents added to the
  out-of-scope class (pseudo-outliers, after Zhan et al., 2021,
  "Out-of-Scope Intent Detection with Self-Supervision and Discriminative
  Training", ACL), one-vs-rest logistic regressions, and a one-layer MLP
  (accuracy only).

``--second-encoder`` adds the catalog built on USE and all-MiniLM-L6-v2
concatenated (each unit-length, weighed 1/sqrt(2); English only, so CLINC150
only; needs the ``st`` extra). About 4 minutes on 2 cores with the query
embeddings cached (``--state-dir``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from contextlib import closing
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.quality import (DATASETS, CachedQueries, auto_metrics, few_shot_pairs, held_out_split,  # noqa: E402
                                read_split, tuned_metrics, write_catalog)
from gatekeeper.catalog.oos_pack import pack_entries  # noqa: E402
from gatekeeper.commands.import_cmd import document_from_pairs  # noqa: E402
from gatekeeper.core.lexical import char_wb_ngrams  # noqa: E402
from gatekeeper.core.scoring import nearest_similarities  # noqa: E402
from gatekeeper.embedders.base import normalise_rows  # noqa: E402
from gatekeeper.gate import Gate  # noqa: E402
from gatekeeper.measure.evaluation import score_rows  # noqa: E402

SHOTS = 10
MLP_ROW = "MLP (512 hidden, alpha 0.01), 3 seeds"
ONE_VS_REST_ROW = "one-vs-rest logistic regression"


@lru_cache(maxsize=None)
def splits_of(key: str) -> tuple[list, list, list]:
    """The train, validation and test rows of a data set, read once."""
    return tuple(read_split(DATASETS[key][0], split) for split in ("train", "validation", "test"))


def dropped_token_variants(text: str, count: int) -> list[str]:
    """``text`` without one token (a word, or a character in text without spaces), ``count`` times."""
    tokens, joiner = (text.split(), " ") if " " in text.strip() else (list(text), "")
    if len(tokens) < 3:
        return []
    start = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16)
    variants = [joiner.join(tokens[:at] + tokens[at + 1:])
                for at in ((start + step * 7919) % len(tokens) for step in range(count))]
    return [variant for variant in dict.fromkeys(variants) if variant != text]


def augmented_document(pairs: list, oos: set[str], name: str, count: int) -> dict:
    """The catalog of ``pairs`` plus each example's :func:`dropped_token_variants` under its intent."""
    extra = [(variant, label) for text, label in pairs for variant in dropped_token_variants(text, count)]
    return document_from_pairs(pairs + extra, oos, name)


def named_document(pairs: list, oos: set[str], name: str) -> dict:
    """The catalog of ``pairs`` with each intent's name (underscores as spaces) as its description."""
    document = document_from_pairs(pairs, oos, name)
    for intent in document["intents"]:
        intent["description"] = intent["name"].replace("_", " ")
    return document


def catalog_row(work: Path, embedder, key: str, label: str, make: Callable[[list, set, str], dict]) -> dict:
    """A catalog variant's ``auto`` and tuned figures, and its held-out-intent ``auto`` AUROC."""
    oos = DATASETS[key][1]
    train, valid, test = splits_of(key)
    pairs = few_shot_pairs(train, oos, SHOTS)
    name = f"{key}-" + re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    path = write_catalog(work, name, make(pairs, oos, name))
    auto = auto_metrics(path, embedder, test, oos)
    tuned = tuned_metrics(path, embedder, valid, test, oos)
    kept, _, h_test, _ = held_out_split(pairs, valid, test, oos, seed=0)
    held_out = auto_metrics(write_catalog(work, f"{name}-held-out", make(kept, oos, f"{name}-held-out")),
                            embedder, h_test, oos)
    return {"dataset": key, "variant": label, "accuracy": auto["in_scope_accuracy"], "auroc": auto["auroc"],
            "oos_recall": auto["oos_recall"], "false_reject_rate": auto["false_reject_rate"],
            "tuned_auroc": tuned["auroc"], "held_out_auroc": held_out["auroc"]}


def calibrator_rows(work: Path, embedder, key: str) -> list[dict]:
    """Tuned AUROC with the gate's three features and with each extra feature, on the catalog and held out."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    oos = DATASETS[key][1]
    train, valid, test = splits_of(key)
    pairs = few_shot_pairs(train, oos, SHOTS)
    held, h_valid, h_test, _ = held_out_split(pairs, valid, test, oos, seed=0)
    results: dict[str, dict] = {}
    splits = {"catalog": (pairs, valid, test), "held_out": (held, h_valid, h_test)}
    for split, (kept, s_valid, s_test) in splits.items():
        name = f"{key}-features-{split}"
        gate = Gate(embedder=embedder).fit(write_catalog(work, name, document_from_pairs(kept, oos, name)))
        extra = _extra_features(gate, kept, embedder)
        featured = {part: _featured(gate, rows, oos, extra) for part, rows in (("valid", s_valid), ("test", s_test))}
        for variant, columns in (("three features (as the gate)", [0, 1, 2]), ("+ n-gram coverage", [0, 1, 2, 3]),
                                 ("+ cosine relative to its intent", [0, 1, 2, 4])):
            (fit_x, fit_y), (test_x, test_y) = ((x[:, columns], y) for x, y in (featured["valid"], featured["test"]))
            scaler = StandardScaler().fit(fit_x)
            model = LogisticRegression(C=1.0).fit(scaler.transform(fit_x), fit_y)
            auroc = roc_auc_score(test_y, model.decision_function(scaler.transform(test_x)))
            results.setdefault(variant, {"dataset": key, "variant": variant})[f"{split}_auroc"] = float(auroc)
    return list(results.values())


def _extra_features(gate: Gate, pairs: list, embedder) -> Callable[[list], np.ndarray]:
    """(n-gram coverage, cosine to the nearest example minus its intent's median sibling cosine) of messages."""
    known = set().union(*(_grams(text) for text, _ in pairs))
    index, n_intents = gate.artifacts_.index, len(gate.catalog_.intents)
    own = index.labels >= 0
    sims = index.vectors[own] @ index.vectors[own].T
    np.fill_diagonal(sims, -1.0)
    siblings = np.where(index.labels[own][:, None] == index.labels[own][None, :], sims, -1.0).max(axis=1)
    typical = np.array([np.median(siblings[index.labels[own] == intent]) for intent in range(n_intents)])

    def features(rows: list) -> np.ndarray:
        coverage = [len(grams & known) / max(1, len(grams)) for grams in (_grams(text) for text, _ in rows)]
        per_intent, _ = nearest_similarities(index, embedder.encode([t for t, _ in rows], is_query=True), n_intents)
        return np.c_[coverage, per_intent.max(axis=1) - typical[per_intent.argmax(axis=1)]]

    return features


def _grams(text: str) -> set[str]:
    """The text's character n-grams of two characters or more."""
    return {gram for gram in char_wb_ngrams(text) if len(gram.strip()) >= 2}


def _featured(gate: Gate, rows: list, oos: set[str], extra: Callable[[list], np.ndarray]
              ) -> tuple[np.ndarray, np.ndarray]:
    """The gate's calibrator features of ``rows`` with the two extra ones, and which rows are in scope."""
    scored = score_rows(gate, rows, oos, show_progress=False)
    return np.c_[scored.batch.features, extra(rows)], np.array([label not in oos for _, label in rows])


def embedding_head_rows(embedder, key: str) -> list[dict]:
    """Heads on the embedding alone: logistic regression, MLP, and pseudo-outliers in the out-of-scope class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.neural_network import MLPClassifier

    oos = DATASETS[key][1]
    train, valid, test = splits_of(key)
    pack = embedder.encode([text for _, text in pack_entries()])
    pairs = few_shot_pairs(train, oos, SHOTS)
    held, _, h_test, _ = held_out_split(pairs, valid, test, oos, seed=0)
    rows: dict[str, dict] = {}
    for split, (kept, s_test) in {"catalog": (pairs, test), "held_out": (held, h_test)}.items():
        intents = sorted({label for _, label in kept})
        x = embedder.encode([text for text, _ in kept])
        y = np.array([intents.index(label) for _, label in kept])
        queries = embedder.encode([text for text, _ in s_test], is_query=True)
        truth = np.array([intents.index(label) if label in intents else -1 for _, label in s_test])
        in_scope = truth >= 0
        for variant, pseudo in (("logistic regression", 0.0), ("+ pseudo-outliers, 1 per example", 1.0),
                                ("+ pseudo-outliers, 1 per example, weight 0.3", 0.3)):
            inputs, labels, weights = _with_pseudo_outliers(x, y, pack, len(intents), pseudo)
            model = LogisticRegression(C=10.0, max_iter=3000).fit(inputs, labels, sample_weight=weights)
            logits = model.decision_function(queries)[:, :len(intents)]
            entry = rows.setdefault(variant, {"dataset": key, "variant": variant})
            entry[f"{split}_accuracy"] = float((logits.argmax(axis=1) == truth)[in_scope].mean())
            entry[f"{split}_auroc"] = float(roc_auc_score(in_scope, logits.max(axis=1)))
        inputs, labels, _ = _with_pseudo_outliers(x, y, pack, len(intents), 0.0)
        one_vs_rest = OneVsRestClassifier(LogisticRegression(C=10.0, max_iter=3000)).fit(inputs, labels)
        scores = one_vs_rest.decision_function(queries)[:, :len(intents)]
        entry = rows.setdefault(ONE_VS_REST_ROW, {"dataset": key, "variant": ONE_VS_REST_ROW})
        entry[f"{split}_accuracy"] = float((scores.argmax(axis=1) == truth)[in_scope].mean())
        entry[f"{split}_auroc"] = float(roc_auc_score(in_scope, scores.max(axis=1)))
        for seed in range(3):
            mlp = MLPClassifier((512,), alpha=1e-2, max_iter=500, random_state=seed).fit(inputs, labels)
            predicted = mlp.predict_proba(queries)[:, :len(intents)].argmax(axis=1)
            entry = rows.setdefault(MLP_ROW, {"dataset": key, "variant": MLP_ROW})
            entry.setdefault(f"{split}_accuracy_runs", []).append(float((predicted == truth)[in_scope].mean()))
    return list(rows.values())


def _with_pseudo_outliers(x: np.ndarray, y: np.ndarray, pack: np.ndarray, n_intents: int, weight: float
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Examples and the pack (class ``n_intents``), plus one mix of two examples of different intents per example
    (halfway, +-0.1) in the out-of-scope class at ``weight`` (none at 0)."""
    inputs, labels = [x, pack], [y, np.full(len(pack), n_intents)]
    weights = [np.ones(len(x)), np.ones(len(pack))]
    if weight > 0:
        rng = np.random.default_rng(0)
        first, second = rng.integers(0, len(x), (2, 3 * len(x)))
        keep = y[first] != y[second]
        first, second = first[keep][:len(x)], second[keep][:len(x)]
        share = rng.uniform(0.4, 0.6, len(first))[:, None]
        inputs.append(normalise_rows(share * x[first] + (1 - share) * x[second]))
        labels.append(np.full(len(first), n_intents))
        weights.append(np.full(len(first), weight))
    return np.vstack(inputs), np.concatenate(labels), np.concatenate(weights)


class ConcatenatedEmbedder:
    """Two embedders' unit vectors side by side, each weighed 1/sqrt(2) (cosine = the mean of the two cosines)."""

    def __init__(self, parts: Sequence):
        self.parts, self.dim = list(parts), sum(part.dim for part in parts)
        self.fingerprint = "concatenated:" + "+".join(part.fingerprint for part in parts)

    def encode(self, texts: Sequence[str], *, is_query: bool = False) -> np.ndarray:
        vectors = np.hstack([part.encode(texts, is_query=is_query) for part in self.parts])
        return (vectors / np.sqrt(len(self.parts))).astype(np.float32)


def format_row(row: dict) -> str:
    """One printed line: the dataset, the variant and its figures."""
    figures = " ".join(f"{key} {value:.3f}" if isinstance(value, float) else
                       f"{key} {'/'.join(f'{v:.3f}' for v in value)}" for key, value in row.items()
                       if key not in ("dataset", "variant"))
    return f"{row['dataset']:<9} {row['variant']:<46} {figures}"


def main() -> None:
    """Run every variant on the selected datasets, print one line each and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--json", default="benchmarks/results/fewshot_variants.json")
    parser.add_argument("--state-dir", help="keep builds and query embeddings here (default: a temporary directory)")
    parser.add_argument("--second-encoder", action="store_true",
                        help="also USE + all-MiniLM-L6-v2 concatenated on CLINC150 (needs the 'st' extra)")
    args = parser.parse_args()
    from gatekeeper.embedders.use_multilingual import UseMultilingualEmbedder

    rows: list[dict] = []

    def report(new: list[dict]) -> None:
        for row in new:
            rows.append(row)
            print(format_row(row), flush=True)

    with tempfile.TemporaryDirectory(prefix="gatekeeper-variants-") as temp:
        work = Path(temp)
        state = Path(args.state_dir) if args.state_dir else work / "state"
        os.environ["GATEKEEPER_STATE_DIR"] = str(state)
        use = UseMultilingualEmbedder(threads=2)
        with closing(CachedQueries(use, state / "queries.sqlite")) as embedder:
            for key in args.datasets:
                report([catalog_row(work, embedder, key, "10-shot (as benchmarks/quality.py)", document_from_pairs),
                        catalog_row(work, embedder, key, "+ 1 example without a token",
                                    lambda p, o, n: augmented_document(p, o, n, 1)),
                        catalog_row(work, embedder, key, "+ 2 examples without a token",
                                    lambda p, o, n: augmented_document(p, o, n, 2)),
                        catalog_row(work, embedder, key, "+ intent name as description", named_document)])
                report(calibrator_rows(work, embedder, key))
                report(embedding_head_rows(embedder, key))
        if args.second_encoder and "clinc150" in args.datasets:
            from gatekeeper.embedders.sentence_transformers import SentenceTransformersEmbedder

            both = ConcatenatedEmbedder([use, SentenceTransformersEmbedder(threads=2)])
            with closing(CachedQueries(both, state / "queries-concatenated.sqlite")) as embedder:
                report([catalog_row(work, embedder, "clinc150", "USE + all-MiniLM-L6-v2 concatenated",
                                    document_from_pairs)])
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "shots": SHOTS, "rows": rows}, indent=2,
                              ensure_ascii=False), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
