"""``gatekeeper eval``: quality of the gate on a labelled file, as a report a team lead can act on.

The human report explains every figure in plain words, ranks intents worst
first and lists the worst mistakes with their texts; ``--errors FILE`` writes
every mistake as JSON lines for relabelling; ``--json`` prints one object.
"""

from __future__ import annotations

import argparse
import json
import unicodedata
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from gatekeeper.commands.common import (add_catalog_argument, add_data_arguments, add_oos_label_argument, catalog_arg,
                                        labelled_rows, load_gate, oos_labels, print_json)
from gatekeeper.errors import UserError
from gatekeeper.gate import Gate
from gatekeeper.measure.evaluation import (ERROR_KINDS, FALSE_ACCEPT, FALSE_REJECT, FLAG_MIN_ROWS, FLAG_RATIO, ErrorRow,
                                   IntentQuality, confused_pairs, error_rows, metrics, per_intent_metrics, score_rows)
from gatekeeper.store.files import atomic_replace, check_writable
from gatekeeper.store.tuning_file import tuning_path

#: Mistakes of each kind listed by default.
DEFAULT_SHOW = 10
#: Terminal columns a message may take in the lists of mistakes (the --errors file has them whole).
TEXT_COLUMNS = 60

#: (key of :func:`metrics`, label, what it means), in the order they are printed.
EXPLAINED_METRICS = (
    ("false_reject_rate", "false-reject rate",
     "in-scope messages the gate refused (customers who got the canned reply instead of help); lower is better"),
    ("oos_recall", "OOS recall", "off-topic messages the gate refused (LLM calls saved); higher is better"),
    ("oos_precision", "OOS precision", "refused messages that really were off topic (the rest are false rejects)"),
    ("rejected_share", "rejected share", "all messages answered with the canned reply instead of the LLM"),
    ("in_scope_accuracy", "in-scope accuracy",
     "in-scope messages whose nearest intent is the right one, whether accepted or refused"),
    ("accuracy_with_oos", "accuracy with OOS",
     "messages handled right end to end: in scope accepted as the right intent, off topic refused"),
    ("auroc", "AUROC",
     "how well the score separates in scope from off topic at any threshold: 1.0 = perfectly, 0.5 = chance"),
    ("fpr_at_95_tpr", "FPR at 95% TPR",
     "off-topic messages let through at the threshold that accepts 95% of in-scope ones; lower is better"),
)

#: What each threshold source means, for the report header.
THRESHOLD_SOURCES = {
    "auto": "auto: set so that at most 5% of the catalog's own examples are refused",
    "catalog": "catalog: written in the catalog",
    "tuned": "tuned: by 'gatekeeper tune', read from {tuning}",
}


def register(parser: argparse.ArgumentParser) -> None:
    """Add the flags of the ``eval`` subcommand."""
    add_catalog_argument(parser)
    parser.add_argument("--data", required=True, metavar="TEST.jsonl", help='rows of {"text": ..., "label": ...}')
    add_data_arguments(parser)
    add_oos_label_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--show", type=_count, default=DEFAULT_SHOW, metavar="N",
                        help=f"false rejects and false accepts listed, worst first (default {DEFAULT_SHOW})")
    parser.add_argument("--errors", type=Path, metavar="FILE",
                        help='write every mistake as JSON lines {"text", "label", "predicted", "score", "threshold", '
                             '"kind"} for relabelling')
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Score the file at the catalog's current thresholds, then print the report (and write ``--errors``)."""
    if args.errors:
        check_errors_destination(args.errors)
    catalog_path = catalog_arg(args)
    gate = load_gate(catalog_path)
    rows = labelled_rows(args.data, args.format, args.text_field, args.label_field)
    scored = score_rows(gate, rows, oos_labels(args), show_progress=not args.json, source=args.data)
    thresholds, names = gate.router_.thresholds.per_intent, gate.catalog_.intent_names()
    result = metrics(scored, thresholds)
    result["threshold_source"] = gate.router_.thresholds.source
    intents = per_intent_metrics(scored, thresholds, names)
    errors = error_rows(scored, thresholds, names)
    result["per_intent"] = [asdict(quality) for quality in intents]
    counts = Counter(error.kind for error in errors)
    result["errors"] = {kind: counts[kind] for kind in ERROR_KINDS}
    estimate = gate.artifacts_.meta.get("intent_estimate")
    result["expected_in_scope_accuracy"] = estimate["accuracy"] if estimate else None
    if args.errors:
        write_errors(args.errors, errors)
    if args.json:
        print_json(result)
        return 0
    _print_header(catalog_path, gate, args.data, len(rows), result)
    _print_metrics(result)
    _print_expected_accuracy(result["expected_in_scope_accuracy"], result["in_scope_accuracy"])
    _print_intents(intents, result["false_reject_rate"])
    n_in = result["n"] - result["n_oos"]
    _print_errors([e for e in errors if e.kind == FALSE_REJECT], args.show, args.errors,
                  f"false rejects: in scope but refused, {counts[FALSE_REJECT]} of {n_in} in-scope rows "
                  "(furthest below the threshold first)")
    _print_errors([e for e in errors if e.kind == FALSE_ACCEPT], args.show, args.errors,
                  f"false accepts: off topic but let through, {counts[FALSE_ACCEPT]} of {result['n_oos']} "
                  "off-topic rows (furthest above the threshold first)")
    pairs = confused_pairs(scored, names)
    if pairs:
        print("\nmost confused intents (true -> predicted: count)")
        for true, predicted, count in pairs:
            print(f"  {true} -> {predicted}: {count}")
    if args.errors:
        print(f"\nwrote {len(errors)} mistakes ({', '.join(f'{counts[k]} {k}' for k in ERROR_KINDS)}) "
              f"to {args.errors}")
    return 0


def check_errors_destination(path: Path) -> None:
    """Raise :class:`UserError` if the ``--errors`` file could not be written; nothing is created.

    Called before scoring, so a bad path fails in a second, not after the whole file is scored.
    """
    try:
        check_writable(path)
    except OSError as error:
        raise UserError(f"--errors {path}: cannot write the errors file there ({error}); "
                        "choose a writable file path; nothing was scored or written") from None


def write_errors(path: Path, errors: list[ErrorRow]) -> None:
    """Write every mistake to ``path`` as JSON lines, atomically (:func:`gatekeeper.store.files.atomic_replace`).

    On failure nothing is left behind and the error is a :class:`UserError`.
    """
    try:
        with atomic_replace(path) as temp, temp.open("x", encoding="utf-8") as handle:
            for error in errors:
                handle.write(json.dumps(error.to_dict(), ensure_ascii=False) + "\n")
    except OSError as error:
        raise UserError(f"--errors {path}: cannot write the errors file ({error.strerror or error}); "
                        "nothing was written") from None


def display_width(text: str) -> int:
    """Terminal columns ``text`` takes: two for East Asian wide and full-width characters, none for combining marks."""
    return sum(0 if unicodedata.combining(char) else 2 if unicodedata.east_asian_width(char) in "WF" else 1
               for char in text)


def pad(text: str, width: int, right: bool = False) -> str:
    """``text`` filled with spaces to ``width`` terminal columns, aligned left (or ``right``)."""
    fill = " " * max(0, width - display_width(text))
    return fill + text if right else text + fill


def clip(text: str, width: int) -> str:
    """``text`` on one line, cut to at most ``width`` terminal columns with a trailing '…' when cut."""
    text = " ".join(text.split())
    if display_width(text) <= width:
        return text
    while display_width(text) > width - 1:
        text = text[:-1]
    return text + "…"


def _print_header(catalog_path: str, gate: Gate, data: str, n_read: int, result: dict) -> None:
    """Which catalog, data and thresholds were measured, and how many rows of each kind."""
    n, n_oos = result["n"], result["n_oos"]
    skipped = f" ({n_read - n} rows with an empty text skipped)" if n_read > n else ""
    source = THRESHOLD_SOURCES[result["threshold_source"]].format(tuning=tuning_path(catalog_path))
    print(f"catalog     {catalog_path} ({gate.catalog_.name}, {len(gate.catalog_.intents)} intents)")
    print(f"data        {data}")
    print(f"rows        {n}: {n - n_oos} in scope, {n_oos} off topic{skipped}")
    print(f"thresholds  {source}")
    print("            a message is accepted when its score reaches the threshold of its nearest intent")


def _print_metrics(result: dict) -> None:
    """One line per figure: its value and what it means."""
    print("\nquality at these thresholds")
    width = max(len(label) for _, label, _ in EXPLAINED_METRICS)
    for key, label, meaning in EXPLAINED_METRICS:
        print(f"  {label:<{width}}  {_number(result[key]):>5}  {meaning}")


def _print_expected_accuracy(expected: dict | None, measured: float | None) -> None:
    """What the build expected of the intent choice (``gatekeeper build``'s ``intent_estimate``) beside this data's
    in-scope accuracy, with a hint when the data does worse than the examples' interval."""
    if not expected or measured is None:
        return
    print(f"  the build expected an in-scope accuracy of {expected['rate']:.3f} (95% {expected['low']:.3f}-"
          f"{expected['high']:.3f}) from the catalog's own examples, each scored by a head fitted without it")
    if measured < expected["low"]:
        print("  this data does worse: its in-scope messages are unlike the examples; add the ones routed to the "
              "wrong intent or refused (below) to their intent's examples")


def _print_intents(intents: list[IntentQuality], overall_false_reject: float | None) -> None:
    """The per-intent table, worst F1 first, with over-refused intents flagged."""
    if not intents:
        return
    print("\nper intent, worst F1 first (a refused message counts as predicted off topic)")
    width = max(display_width("intent"), *(display_width(q.intent) for q in intents))
    print(f"  {pad('intent', width)}  {'rows':>5}  {'precision':>9}  {'recall':>6}  {'F1':>5}  {'false-reject':>12}")
    for q in intents:
        # A flagged intent has refusals, so the overall rate is above 0.
        flag = f"  << {q.false_reject_rate / overall_false_reject:.1f}x the overall rate" if q.flagged else ""
        print(f"  {pad(q.intent, width)}  {q.support:>5}  {_number(q.precision):>9}  {_number(q.recall):>6}  "
              f"{_number(q.f1):>5}  {_number(q.false_reject_rate):>12}{flag}")
    if any(q.flagged for q in intents):
        print(f"  << refuses over {FLAG_RATIO:g}x the overall false-reject rate ({_number(overall_false_reject)}) "
              f"with at least {FLAG_MIN_ROWS} rows: check its false rejects below; relabel the wrong labels, "
              "add the rest to its examples")


def _print_errors(errors: list[ErrorRow], show: int, errors_file: Path | None, title: str) -> None:
    """The first ``show`` of ``errors`` (one kind, worst first) with score, threshold and text."""
    print(f"\n{title}")
    if not errors or not show:
        return
    shown = errors[:show]
    routes = [e.predicted if e.kind == FALSE_ACCEPT else f"{e.label} -> {e.predicted}" for e in shown]
    heading = "routed" if shown[0].kind == FALSE_ACCEPT else "label -> routed"
    width = max(display_width(heading), *map(display_width, routes))
    print(f"  {'score':>6}  {'threshold':>9}  {pad(heading, width)}  text")
    for error, route in zip(shown, routes):
        print(f"  {error.score:>6.3f}  {error.threshold:>9.3f}  {pad(route, width)}  {clip(error.text, TEXT_COLUMNS)}")
    if len(errors) > show:
        where = f"all in {errors_file}" if errors_file else "--errors FILE writes them all"
        print(f"  ... and {len(errors) - show} more ({where})")


def _number(value: float | None) -> str:
    """A rate with three decimals, or 'n/a' when there were no rows to measure it on."""
    return "n/a" if value is None else f"{value:.3f}"


def _count(text: str) -> int:
    """A whole number >= 0, for ``--show``."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value
