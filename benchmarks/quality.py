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
  off-topic traffic the catalog never described, with the ``auto`` and the
  tuned threshold (``--held-out-seeds N`` repeats it with N different random
  fifths).

``--no-lexical-features`` writes every catalog with ``scorer:
{lexical_features: false}`` (the head on the embedding alone);
``--out-of-scope-pack none`` without the built-in out-of-scope pack (the
default uses it, as every catalog does). The conversation-control pack is
off, as in every imported catalog: these data sets label greetings and thanks themselves.

Few-shot rows (``--few-shot 10 20``, the default; ``--few-shot`` alone for
none) repeat the protocol where most teams start: per intent, the K training
examples with the smallest SHA-256 of their text (deterministic, and
independent of the file's order), and no out-of-scope examples at all (on
day one a team has no off-topic traffic; the built-in pack is its off-topic
side). Each K gets the ``auto`` row (with what the build estimated it would
do), the tuned row, the held-out-intent splits, and the in-domain splits:

* ``in-domain``: a third of the intents of one domain removed from the
  catalog, and only their messages counted as off topic (the data set's own
  off-topic rows are left out), so every off-topic message is a request
  close to intents the gate keeps, the weakest case. CLINC150's intents
  come in 10 domains of 15 (Larson et al., 2019, "An Evaluation Dataset for
  Intent Classification and Out-of-Scope Prediction", EMNLP; each row of
  the shared file carries its ``domain``): one split per domain, each
  holding out the 5 intents with the smallest SHA-256 of their name.
  SMP2017 has no domains; :data:`SMP2017_GROUP` is one group of related
  intents (audio-visual media and reading), held out a third at a time
  (3 splits). ``--in-domain-full`` runs the same splits on the full
  catalogs as well (a CLINC150 build each, about 5 minutes more).

``--no-full-data`` runs the few-shot rows only. ``--state-dir DIR`` keeps
the build state and an embedding cache of the validation and test messages
between runs (each text is embedded once); a build is reused while its
catalog, model and artifact version are unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gatekeeper.catalog.schema import normalise_intent_name  # noqa: E402
from gatekeeper.commands.import_cmd import document_from_pairs  # noqa: E402
from gatekeeper.core.thresholds import threshold_for_false_reject  # noqa: E402
from gatekeeper.gate import Gate  # noqa: E402
from gatekeeper.measure.evaluation import ScoredSet, metrics, score_rows  # noqa: E402
from gatekeeper.measure.tune import Policy, tune  # noqa: E402
from gatekeeper.store.tuning_file import save_tuning  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
DATASETS = {"clinc150": ("clinc150", {"oos"}), "smp2017": ("smp2017_ecdt", {"chat"})}
METRICS = ("in_scope_accuracy", "auroc", "oos_recall", "false_reject_rate", "fpr_at_95_tpr")
HELD_OUT_SHARE = 0.2
#: The in-domain group of SMP2017 (which has no domains of its own): its audio-visual media and reading
#: intents, which share titles, channels and verbs such as 看/听/播放 (watch, listen, play).
SMP2017_GROUP = ("video", "epg", "tvchannel", "radio", "cinemas", "novel", "music")
#: Share of a domain's intents held out in an in-domain split.
IN_DOMAIN_SHARE = 1 / 3


def read_split(folder: str, split: str) -> list[tuple[str, str]]:
    """(text, label) rows of one split."""
    with open(DATA / folder / f"{split}.jsonl", encoding="utf-8") as handle:
        return [(row["text"], row["label"]) for row in map(json.loads, handle)]


def sha(text: str) -> str:
    """The SHA-256 of a text (hex), the key of the deterministic samples and splits."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def few_shot_pairs(train: list, oos: set[str], shots: int) -> list[tuple[str, str]]:
    """Per intent, the ``shots`` distinct training texts with the smallest SHA-256; no out-of-scope rows."""
    texts: dict[str, list[str]] = {}
    for text, label in train:
        if label not in oos:
            texts.setdefault(label, []).append(text)
    return [(text, label) for label, group in texts.items() for text in sorted(set(group), key=sha)[:shots]]


def domains(key: str) -> dict[str, list[str]]:
    """The groups of related intents of a data set: CLINC150's 10 domains (from its rows' ``domain``), SMP2017's one."""
    if key == "smp2017":
        return {"media": list(SMP2017_GROUP)}
    grouped: dict[str, set[str]] = {}
    with open(DATA / DATASETS[key][0] / "train.jsonl", encoding="utf-8") as handle:
        for row in map(json.loads, handle):
            if row["label"] not in DATASETS[key][1]:
                grouped.setdefault(row["domain"], set()).add(row["label"])
    return {name: sorted(labels) for name, labels in grouped.items()}


def in_domain_splits(key: str) -> list[tuple[str, set[str]]]:
    """(name, held-out intents) of every in-domain split: the smallest-hash third of each CLINC150 domain,
    and each third of SMP2017's group in turn."""
    splits = []
    for name, labels in domains(key).items():
        ordered = sorted(labels, key=sha)
        size = max(1, round(len(ordered) * IN_DOMAIN_SHARE))
        if len(domains(key)) > 1:
            splits.append((name, set(ordered[:size])))
        else:
            turns = round(1 / IN_DOMAIN_SHARE)
            splits += [(f"{name} {turn + 1}/{turns}", set(ordered[turn::turns])) for turn in range(turns)]
    return splits


class CachedQueries:
    """An embedder whose query vectors (validation and test messages) are kept in an on-disk cache."""

    def __init__(self, inner, path: Path):
        from gatekeeper.store.embedding_cache import EmbeddingCache

        self.inner, self.fingerprint, self.dim = inner, inner.fingerprint, inner.dim
        self._cache = EmbeddingCache(path)
        self._as_query = _QueryView(inner)

    def encode(self, texts: Sequence[str], *, is_query: bool = False):
        if not is_query:
            return self.inner.encode(texts)
        return self._cache.encode(self._as_query, list(texts))[0]

    def close(self) -> None:
        self._cache.close()


class _QueryView:
    """``inner`` encoding every text as a query, under a fingerprint of its own (for the cache's keys)."""

    def __init__(self, inner):
        self.inner, self.dim, self.fingerprint = inner, inner.dim, f"{inner.fingerprint}:query"

    def encode(self, texts: Sequence[str], *, is_query: bool = True):
        return self.inner.encode(texts, is_query=True)


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
    """``eval`` on test with the catalog's ``auto`` threshold, with what the build estimated (``estimate``,
    ``intent_estimate``)."""
    gate = Gate(embedder=embedder).fit(path)
    measured = metrics(score_rows(gate, test, oos, show_progress=False), gate.router_.thresholds.per_intent)
    return {**measured, "estimate": gate.artifacts_.meta.get("auto_estimate"),
            "intent_estimate": gate.artifacts_.meta.get("intent_estimate"),
            "build_seconds": gate.artifacts_.meta.get("build_seconds")}


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
    from gatekeeper.core.router import Router
    from gatekeeper.core.scoring import NearestPrototypeScorer

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


def in_domain_split(train: list, valid: list, test: list, oos: set[str], held: set[str]):
    """Train without the ``held`` intents; validation and test with only their rows as off topic (relabelled)."""
    marker = next(iter(oos))

    def relabel(rows: list) -> list:
        return [(text, marker if label in held else label) for text, label in rows if label not in oos]

    return [(t, l) for t, l in train if l not in held], relabel(valid), relabel(test)


def mean_metrics(runs: list[dict]) -> dict:
    """The mean of each metric over runs, with the range of AUROC (``auroc_min``, ``auroc_max``)."""
    values = {m: float(np.mean([run[m] for run in runs if run.get(m) is not None])) for m in METRICS}
    aurocs = [run["auroc"] for run in runs if run.get("auroc") is not None]
    return {**values, "auroc_min": min(aurocs), "auroc_max": max(aurocs)}


def run_dataset(key: str, work: Path, embedder, held_out_seeds: int = 1, few_shot: Sequence[int] = (),
                in_domain_full: bool = False, full_data: bool = True) -> list[dict]:
    """Every row of the table for one dataset."""
    folder, oos = DATASETS[key]
    train, valid, test = (read_split(folder, split) for split in ("train", "validation", "test"))
    rows = []

    def row(mode: str, started: float, values: dict, **extra) -> None:
        rows.append({"dataset": key, "mode": mode, **{m: values.get(m) for m in METRICS},
                     "seconds": round(time.perf_counter() - started, 1), **extra})
        print(format_row(rows[-1]), flush=True)
        if values.get("estimate"):
            print(format_estimate(values["estimate"], values.get("intent_estimate")), flush=True)
            rows[-1]["estimate"] = values["estimate"]
            rows[-1]["intent_estimate"] = values.get("intent_estimate")

    def auto_and_tuned(label: str, name: str, pairs: list, h_valid: list, h_test: list, **extra) -> None:
        started = time.perf_counter()
        path = write_catalog(work, name, document_from_pairs(pairs, oos, name))
        row(f"{label}, auto", started, auto_metrics(path, embedder, h_test, oos), **extra)
        started = time.perf_counter()
        row(f"{label}, tuned", started, tuned_metrics(path, embedder, h_valid, h_test, oos), **extra)

    def in_domain(label: str, name: str, pairs: list) -> None:
        per_mode: dict[str, list[dict]] = {"auto": [], "tuned": []}
        started = time.perf_counter()
        splits = in_domain_splits(key)
        for number, (split, held) in enumerate(splits):
            kept, d_valid, d_test = in_domain_split(pairs, valid, test, oos, held)
            path = write_catalog(work, f"{name}-domain-{number}", document_from_pairs(kept, oos, name))
            per_mode["auto"].append(auto_metrics(path, embedder, d_test, oos))
            per_mode["tuned"].append(tuned_metrics(path, embedder, d_valid, d_test, oos))
            for mode, runs in per_mode.items():
                rows.append({"dataset": key, "mode": f"{label}, in-domain split {split}, {mode}", "split": True,
                             "held_out": sorted(held), **{m: runs[-1].get(m) for m in METRICS}})
        for mode, runs in per_mode.items():
            mean = mean_metrics(runs)
            row(f"{label}, in-domain ({len(splits)} splits), {mode}", started, mean,
                auroc_min=mean["auroc_min"], auroc_max=mean["auroc_max"])
            print(f"{'':<9} {'':<38} AUROC from {mean['auroc_min']:.3f} to {mean['auroc_max']:.3f}", flush=True)

    if full_data:
        full_data_rows(key, work, embedder, train, valid, test, row)
        for seed in range(held_out_seeds):
            kept, h_valid, h_test, n_dropped = held_out_split(train, valid, test, oos, seed=seed)
            label = f"held-out intents ({n_dropped})" + (f", seed {seed}" if seed else "")
            auto_and_tuned(label, f"{key}-held-out-{seed}", kept, h_valid, h_test)
    if in_domain_full:
        in_domain("full", f"{key}-full", train)
    for shots in few_shot:
        pairs = few_shot_pairs(train, oos, shots)
        auto_and_tuned(f"{shots}-shot", f"{key}-{shots}-shot", pairs, valid, test)
        for seed in range(held_out_seeds):
            kept, h_valid, h_test, n_dropped = held_out_split(pairs, valid, test, oos, seed=seed)
            label = f"{shots}-shot, held-out intents ({n_dropped})" + (f", seed {seed}" if seed else "")
            auto_and_tuned(label, f"{key}-{shots}-shot-held-out-{seed}", kept, h_valid, h_test)
        in_domain(f"{shots}-shot", f"{key}-{shots}-shot", pairs)
    return rows


def full_data_rows(key: str, work: Path, embedder, train: list, valid: list, test: list, row) -> None:
    """The rows of the full catalog (train split, its out-of-scope rows included), reported through ``row``."""
    oos = DATASETS[key][1]
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


def format_row(row: dict) -> str:
    """One line of the printed table."""
    cells = [f"{row[m]:.3f}" if isinstance(row[m], float) else "  -  " for m in METRICS]
    return f"{row['dataset']:<9} {row['mode']:<38} " + " ".join(f"{c:>8}" for c in cells) + f" {row['seconds']:>7}"


def format_estimate(estimate: dict, intents: dict | None) -> str:
    """The build's ``auto`` estimate (and intent estimate, if any) as printed under an ``auto`` row."""
    def rate(value: dict | None) -> str:
        return "-" if not value else f"{value['rate']:.3f} [{value['low']:.3f}, {value['high']:.3f}] of {value['n']}"

    return (f"{'':<9} {'':<38} estimated: false rejects {rate(estimate['false_reject_rate'])}; off topic refused "
            f"{rate(estimate['off_topic_recall'])} (pack {rate(estimate['pack_recall'])}, its topic unseen "
            f"{rate(estimate.get('unseen_topic_recall'))}, examples with their intent unseen "
            f"{rate(estimate.get('unseen_intent_recall'))}, catalog's own "
            f"{rate(estimate['catalog_out_of_scope_recall'])}); right intent {rate(intents and intents['accuracy'])}")


def main() -> None:
    """Run the selected datasets, print the table and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--json", default="benchmarks/results/quality.json", help="where to write the results")
    parser.add_argument("--held-out-seeds", type=int, default=1, help="held-out-intent splits per dataset")
    parser.add_argument("--no-lexical-features", action="store_true", help="the head on the embedding alone")
    parser.add_argument("--out-of-scope-pack", choices=("default", "none"), default="default",
                        help="use the built-in out-of-scope pack (default) or not")
    parser.add_argument("--few-shot", type=int, nargs="*", default=[10, 20], metavar="K",
                        help="few-shot catalogs of K examples per intent (default 10 20; none if given no K)")
    parser.add_argument("--in-domain-full", action="store_true",
                        help="in-domain splits of the full catalogs too (few-shot ones always get them)")
    parser.add_argument("--no-full-data", action="store_true",
                        help="skip the rows of the full catalogs (build, baselines, head, zero-shot, held-out)")
    parser.add_argument("--state-dir", help="keep build state and query embeddings here between runs "
                                            "(default: a temporary directory)")
    args = parser.parse_args()
    if args.no_lexical_features:
        SCORER_SETTINGS["lexical_features"] = False
    CATALOG_SETTINGS["out_of_scope_pack"] = args.out_of_scope_pack
    from gatekeeper.embedders.use_multilingual import UseMultilingualEmbedder

    with tempfile.TemporaryDirectory(prefix="gatekeeper-quality-") as work:
        state = Path(args.state_dir) if args.state_dir else Path(work) / "state"
        os.environ["GATEKEEPER_STATE_DIR"] = str(state)
        inner = UseMultilingualEmbedder(threads=2)
        print(f"{'dataset':<9} {'mode':<38} " + " ".join(f"{m[:8]:>8}" for m in
                                                          ("accuracy", "auroc", "oos_rec", "fr_rate", "fpr@95")) +
              f" {'seconds':>7}")
        with closing(CachedQueries(inner, state / "queries.sqlite")) as embedder:
            rows = [row for key in args.datasets
                    for row in run_dataset(key, Path(work), embedder, args.held_out_seeds, args.few_shot,
                                           args.in_domain_full, not args.no_full_data)]
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "model": inner.fingerprint,
                               "scorer": SCORER_SETTINGS, "catalog": CATALOG_SETTINGS, "few_shot": args.few_shot,
                               "rows": rows}, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
