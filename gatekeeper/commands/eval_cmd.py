"""``gatekeeper eval``: quality of the gate on a labelled file."""

from __future__ import annotations

import argparse

from gatekeeper.cli import add_catalog_argument, catalog_arg, print_json
from gatekeeper.commands.common import (add_data_arguments, add_oos_label_argument, labelled_rows, load_gate,
                                        oos_labels)
from gatekeeper.evaluation import confused_pairs, metrics, score_rows


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand."""
    parser = subparsers.add_parser("eval", help="measure the gate on labelled JSON lines")
    add_catalog_argument(parser)
    parser.add_argument("--data", required=True, metavar="TEST.jsonl", help='rows of {"text": ..., "label": ...}')
    add_data_arguments(parser)
    add_oos_label_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Score the file at the catalog's current thresholds and print the metrics."""
    gate = load_gate(catalog_arg(args))
    rows = labelled_rows(args.data, args.format, args.text_field, args.label_field)
    scored = score_rows(gate, rows, oos_labels(args), show_progress=not args.json, source=args.data)
    result = metrics(scored, gate.router.thresholds.per_intent)
    result["threshold_source"] = gate.router.thresholds.source
    if args.json:
        print_json(result)
        return 0
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    pairs = confused_pairs(scored, gate.catalog.intent_names())
    if pairs:
        print("\nmost confused intents (true -> predicted: count)")
        for true, predicted, count in pairs:
            print(f"  {true} -> {predicted}: {count}")
    return 0
