"""How much the head's character n-gram features add, and which n-gram setting was chosen.

    python benchmarks/lexical_ablation.py [--datasets clinc150 smp2017] [--json OUT]

For each dataset: the train split (out-of-scope rows as the extra class, as
``gatekeeper import`` makes them) fits gatekeeper's own head (``fit_head``,
same C and solver) on the embeddings alone and on the embeddings followed by
TF-IDF n-grams of several settings. It prints top-1 in-scope accuracy on the
validation split, which chose the default, and on the test split, and the fit
time. docs/quality.md quotes its output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.quality import DATASETS, read_split  # noqa: E402
from gatekeeper.core.index import OUT_OF_SCOPE  # noqa: E402
from gatekeeper.core.lexical import MIN_TEXTS, NGRAM_RANGE  # noqa: E402
from gatekeeper.core.parallel import single_threaded  # noqa: E402
from gatekeeper.core.scoring import fit_head, head_inputs  # noqa: E402

#: name -> TfidfVectorizer settings (None: embeddings only). The first n-gram row is gatekeeper's default.
VARIANTS: dict[str, dict | None] = {
    "embedding only": None,
    f"+ char {NGRAM_RANGE[0]}-{NGRAM_RANGE[1]}, min {MIN_TEXTS} texts (default)":
        {"analyzer": "char_wb", "ngram_range": NGRAM_RANGE, "min_df": MIN_TEXTS},
    "+ char 1-3, min 1 text": {"analyzer": "char_wb", "ngram_range": (1, 3), "min_df": 1},
    "+ char 1-4, min 2 texts": {"analyzer": "char_wb", "ngram_range": (1, 4), "min_df": 2},
    "+ char 1-4, min 1 text": {"analyzer": "char_wb", "ngram_range": (1, 4), "min_df": 1},
    "+ words 1-2 (whitespace tokens)": {"analyzer": "word", "ngram_range": (1, 2), "min_df": 1,
                                        "token_pattern": r"(?u)\b\w+\b"},
}


def encoded_split(embedder, folder: str, split: str) -> tuple[np.ndarray, list[str], list[str]]:
    """Vectors, texts and labels of one split."""
    rows = read_split(folder, split)
    texts = [text for text, _ in rows]
    return embedder.encode(texts), texts, [label for _, label in rows]


def run_dataset(key: str, embedder) -> list[dict]:
    """Every variant on one dataset."""
    folder, oos = DATASETS[key]
    train_vectors, train_texts, train_labels = encoded_split(embedder, folder, "train")
    intents = sorted({label for label in train_labels if label not in oos})
    ids = {name: i for i, name in enumerate(intents)}
    labels = np.array([ids.get(label, OUT_OF_SCOPE) for label in train_labels], dtype=np.int32)
    evaluated = {}
    for split in ("validation", "test"):
        vectors, texts, split_labels = encoded_split(embedder, folder, split)
        inside = np.array([label not in oos for label in split_labels])
        truth = np.array([ids[label] for label, keep in zip(split_labels, inside) if keep])
        evaluated[split] = (vectors[inside], [t for t, keep in zip(texts, inside) if keep], truth)
    rows = []
    for name, settings in VARIANTS.items():
        vectorizer = None
        if settings is not None:
            vectorizer = TfidfVectorizer(sublinear_tf=True, dtype=np.float32, **settings).fit(train_texts)
        started = time.perf_counter()
        with single_threaded():
            weights, bias = fit_head(head_inputs(train_vectors, vectorizer and vectorizer.transform(train_texts)),
                                     labels, len(intents))
        seconds = time.perf_counter() - started
        row = {"dataset": key, "variant": name, "features": 0 if vectorizer is None else len(vectorizer.vocabulary_),
               "fit_seconds": round(seconds, 1)}
        for split, (vectors, texts, truth) in evaluated.items():
            inputs = head_inputs(vectors, vectorizer and vectorizer.transform(texts))
            logits = inputs @ weights + bias
            row[split] = float(np.mean(np.asarray(logits)[:, :len(intents)].argmax(axis=1) == truth))
        rows.append(row)
        print(f"{key:<9} {name:<44} {row['features']:>7} {row['validation']:>10.4f} {row['test']:>8.4f} "
              f"{row['fit_seconds']:>8}", flush=True)
    return rows


def main() -> None:
    """Run the selected datasets, print the table and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--json", default="benchmarks/results/lexical_ablation.json")
    args = parser.parse_args()
    from gatekeeper.embedders.use_multilingual import UseMultilingualEmbedder

    embedder = UseMultilingualEmbedder(threads=2)
    print(f"{'dataset':<9} {'variant':<44} {'features':>7} {'val acc':>10} {'test acc':>8} {'fit s':>8}")
    rows = [row for key in args.datasets for row in run_dataset(key, embedder)]
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
