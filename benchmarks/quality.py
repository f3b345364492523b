"""Reproduce the quality table of docs/quality.md on the shared datasets.

    python benchmarks/quality.py [--datasets clinc150 smp2017] [--json OUT]

Protocol for every row: build a catalog from the train split, pick the
threshold on the validation split (5% false rejects unless the row says
otherwise), measure on the test split. Rows:

* ``maxcos (naive)``: max cosine to any in-scope training example, the
  reference baseline of issue #4;
* ``nearest``: gatekeeper's nearest-prototype scorer (out-of-scope examples
  as negatives), tuned threshold;
* ``head, auto``: the default scorer with the ``auto`` threshold from the
  catalog alone (no validation data);
* ``head, tuned``: the default protocol (``import`` -> ``tune`` -> ``eval``);
* ``zero-shot``: descriptions only, written from the intent names;
* ``held-out intents``: a fifth of the intents removed from the catalog and
  counted as out of scope in validation and test, to check generalisation to
  off-topic traffic the catalog never described (``--held-out-seeds N``
  repeats it with N different random fifths).

``--no-lexical-features`` writes every catalog with ``scorer:
{lexical_features: false}`` (the head on the embedding alone);
``--out-of-scope-pack none`` without the built-in out-of-scope pack (the
default uses it, as every catalog does). The conversation-control pack is
off, as in every imported catalog: these data sets label greetings and thanks themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gatekeeper.catalog_schema import normalise_intent_name  # noqa: E402
from gatekeeper.commands.import_cmd import document_from_pairs  # noqa: E402
from gatekeeper.evaluation import ScoredSet, metrics, score_rows  # noqa: E402
from gatekeeper.gate import Gate  # noqa: E402
from gatekeeper.thresholds import threshold_for_false_reject  # noqa: E402
from gatekeeper.tune import Policy, tune  # noqa: E402
from gatekeeper.tuning_file import save_tuning  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
DATASETS = {"clinc150": ("clinc150", {"oos"}), "smp2017": ("smp2017_ecdt", {"chat"})}
METRICS = ("in_scope_accuracy", "auroc", "oos_recall", "false_reject_rate", "fpr_at_95_tpr")
HELD_OUT_SHARE = 0.2


def read_split(folder: str, split: str) -> list[tuple[str, str]]:
    """(text, label) rows of one split."""
    with open(DATA / folder / f"{split}.jsonl", encoding="utf-8") as handle:
        return [(row["text"], row["label"]) for row in map(json.loads, handle)]


#: The ``scorer`` section every benchmark catalog gets (set from the command line).
SCORER_SETTINGS: dict = {}
#: Top-level settings every benchmark catalog gets (the pack flag sets ``out_of_scope_pack``).
CATALOG_SETTINGS: dict = {}


def write_catalog(folder: Path, name: str, document: dict) -> Path:
    """Write a catalog document as YAML (with :data:`SCORER_SETTINGS` and :data:`CATALOG_SETTINGS`)."""
    path = folder / f"{name}.yaml"
    document = {**document, **CATALOG_SETTINGS}
    document = {**document, "scorer": SCORER_SETTINGS} if SCORER_SETTINGS else document
    path.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def tuned_metrics(path: Path, embedder, valid: list, test: list, oos: set[str]) -> dict:
    """``tune`` on validation, then ``eval`` on test, as the CLI does."""
    gate = Gate(embedder=embedder).fit(path)
    result = tune(gate, score_rows(gate, valid, oos, show_progress=False), Policy(), per_intent=False,
                  override=False)
    save_tuning(path, result.tuning, valid)
    gate = Gate(embedder=gate.embedder_).fit(path)
    return metrics(score_rows(gate, test, oos, show_progress=False), gate.router_.thresholds.per_intent)


def auto_metrics(path: Path, embedder, test: list, oos: set[str]) -> dict:
    """``eval`` on test with the catalog's ``auto`` threshold."""
    gate = Gate(embedder=embedder).fit(path)
    return metrics(score_rows(gate, test, oos, show_progress=False), gate.router_.thresholds.per_intent)


def naive_maxcos(path: Path, embedder, valid: list, test: list, oos: set[str]) -> dict:
    """Max cosine to any in-scope example; threshold at 5% false rejects on validation."""
    gate = Gate(embedder=embedder).fit(path)
    index = gate.artifacts_.index
    inside = index.labels >= 0
    prototypes, labels = index.vectors[inside], index.labels[inside]

    def scored(rows: list) -> ScoredSet:
        base = score_rows(gate, rows, oos, show_progress=False)
        sims = gate.embed(base.texts) @ prototypes.T
        per_intent = np.full((len(base.texts), len(gate.catalog_.intents)), -1.0, dtype=np.float32)
        for intent in range(per_intent.shape[1]):
            per_intent[:, intent] = sims[:, labels == intent].max(axis=1)
        base.batch.intent_scores, base.batch.score = per_intent, per_intent.max(axis=1)
        return base

    validation = scored(valid)
    threshold = threshold_for_false_reject(validation.scores[validation.in_scope], 0.05)
    return metrics(scored(test), np.full(len(gate.catalog_.intents), threshold))


def nearest_metrics(path: Path, embedder, valid: list, test: list, oos: set[str]) -> dict:
    """The nearest-prototype scorer on the same index, threshold at 5% false rejects on validation."""
    from gatekeeper.router import Router
    from gatekeeper.scoring import NearestPrototypeScorer

    gate = Gate(embedder=embedder).fit(path)
    scorer = NearestPrototypeScorer(gate.artifacts_.index, len(gate.catalog_.intents))
    gate.router_ = Router(gate.catalog_, scorer, gate.router_.thresholds)
    validation = score_rows(gate, valid, oos, show_progress=False)
    threshold = threshold_for_false_reject(validation.scores[validation.in_scope], 0.05)
    return metrics(score_rows(gate, test, oos, show_progress=False), np.full(len(gate.catalog_.intents), threshold))


def zero_shot_document(train: list, oos: set[str], name: str) -> dict:
    """A catalog with only a description per intent, written from the label name."""
    labels = list(dict.fromkeys(label for _, label in train if label not in oos))
    return {"version": 1, "name": name, "conversation_pack": "none",
            "intents": [{"name": normalise_intent_name(label), "description": label.replace("_", " ")}
                        for label in labels]}


def held_out_split(train: list, valid: list, test: list, oos: set[str], seed: int = 0):
    """Drop a random fifth of the intents from train; relabel their rows as out of scope elsewhere."""
    labels = sorted({label for _, label in train if label not in oos})
    rng = np.random.default_rng(seed)
    dropped = set(rng.choice(labels, size=max(1, int(len(labels) * HELD_OUT_SHARE)), replace=False))
    marker = next(iter(oos))

    def relabel(rows: list) -> list:
        return [(text, marker if label in dropped else label) for text, label in rows]

    return [(t, l) for t, l in train if l not in dropped], relabel(valid), relabel(test), len(dropped)


def run_dataset(key: str, work: Path, embedder, held_out_seeds: int = 1) -> list[dict]:
    """Every row of the table for one dataset."""
    folder, oos = DATASETS[key]
    train, valid, test = (read_split(folder, split) for split in ("train", "validation", "test"))
    rows = []

    def row(mode: str, started: float, values: dict) -> None:
        rows.append({"dataset": key, "mode": mode, **{m: values.get(m) for m in METRICS},
                     "seconds": round(time.perf_counter() - started, 1)})
        print(format_row(rows[-1]), flush=True)

    started = time.perf_counter()
    path = write_catalog(work, key, document_from_pairs(train, oos, key))
    Gate(embedder=embedder).fit(path)  # build once; the modes below reuse it
    row("build", started, {})
    for mode, measure in (("maxcos (naive)", lambda: naive_maxcos(path, embedder, valid, test, oos)),
                          ("nearest", lambda: nearest_metrics(path, embedder, valid, test, oos)),
                          ("head, auto", lambda: auto_metrics(path, embedder, test, oos)),
                          ("head, tuned", lambda: tuned_metrics(path, embedder, valid, test, oos))):
        started = time.perf_counter()
        row(mode, started, measure())
    started = time.perf_counter()
    zero = write_catalog(work, f"{key}-zero-shot", zero_shot_document(train, oos, f"{key}-zero-shot"))
    row("zero-shot, tuned", started, tuned_metrics(zero, embedder, valid, test, oos))
    for seed in range(held_out_seeds):
        started = time.perf_counter()
        kept, h_valid, h_test, n_dropped = held_out_split(train, valid, test, oos, seed=seed)
        held = write_catalog(work, f"{key}-held-out-{seed}", document_from_pairs(kept, oos, f"{key}-held-out"))
        label = f"held-out intents ({n_dropped})" + (f", seed {seed}" if seed else "")
        row(f"{label}, tuned", started, tuned_metrics(held, embedder, h_valid, h_test, oos))
    return rows


def format_row(row: dict) -> str:
    """One line of the printed table."""
    cells = [f"{row[m]:.3f}" if isinstance(row[m], float) else "  -  " for m in METRICS]
    return f"{row['dataset']:<9} {row['mode']:<38} " + " ".join(f"{c:>8}" for c in cells) + f" {row['seconds']:>7}"


def main() -> None:
    """Run the selected datasets, print the table and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--json", default="benchmarks/results/quality.json", help="where to write the results")
    parser.add_argument("--held-out-seeds", type=int, default=1, help="held-out-intent splits per dataset")
    parser.add_argument("--no-lexical-features", action="store_true", help="the head on the embedding alone")
    parser.add_argument("--out-of-scope-pack", choices=("default", "none"), default="default",
                        help="use the built-in out-of-scope pack (default) or not")
    args = parser.parse_args()
    if args.no_lexical_features:
        SCORER_SETTINGS["lexical_features"] = False
    CATALOG_SETTINGS["out_of_scope_pack"] = args.out_of_scope_pack
    from gatekeeper.embedders.use_multilingual import UseMultilingualEmbedder

    with tempfile.TemporaryDirectory(prefix="gatekeeper-quality-") as work:
        os.environ["GATEKEEPER_STATE_DIR"] = str(Path(work) / "state")
        embedder = UseMultilingualEmbedder(threads=2)
        print(f"{'dataset':<9} {'mode':<38} " + " ".join(f"{m[:8]:>8}" for m in
                                                          ("accuracy", "auroc", "oos_rec", "fr_rate", "fpr@95")) +
              f" {'seconds':>7}")
        rows = [row for key in args.datasets
                for row in run_dataset(key, Path(work), embedder, args.held_out_seeds)]
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "model": embedder.fingerprint,
                               "scorer": SCORER_SETTINGS, "catalog": CATALOG_SETTINGS, "rows": rows}, indent=2), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
