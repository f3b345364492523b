"""``gatekeeper tune``: calibrate thresholds from labelled traffic with ROC curves."""

from __future__ import annotations

import argparse
import sys
import time

from gatekeeper.cli import add_catalog_argument, catalog_arg
from gatekeeper.commands.common import (add_data_arguments, add_oos_label_argument, labelled_rows, load_gate,
                                        oos_labels)
from gatekeeper.evaluation import score_rows
from gatekeeper.report import check_report_destination, write_report
from gatekeeper.tune import Policy, tune
from gatekeeper.tuning_file import save_tuning

#: The policy when none is given on the command line (its numbers are the flags' defaults too).
DEFAULT_POLICY = Policy()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``tune`` subcommand."""
    parser = subparsers.add_parser("tune", help="pick thresholds from labelled traffic (ROC)")
    add_catalog_argument(parser)
    parser.add_argument("--data", required=True, metavar="VALID.jsonl", help='rows of {"text": ..., "label": ...}')
    add_data_arguments(parser)
    add_oos_label_argument(parser)
    policy = parser.add_mutually_exclusive_group()
    policy.add_argument("--max-false-reject", type=_rate, metavar="R",
                        help="highest OOS recall with at most R of in-scope rows rejected "
                             f"(default {DEFAULT_POLICY.max_false_reject})")
    policy.add_argument("--min-oos-recall", type=_rate, metavar="R",
                        help="fewest false rejects with at least R of off-topic rows rejected")
    policy.add_argument("--youden", action="store_true", help="maximise TPR - FPR")
    policy.add_argument("--cost-llm-call", type=float, metavar="C",
                        help="minimum expected cost; an off-topic message let through costs C")
    parser.add_argument("--cost-false-reject", type=float, default=DEFAULT_POLICY.cost_false_reject, metavar="C2",
                        help="with --cost-llm-call: the cost of refusing an in-scope user "
                             f"(default {DEFAULT_POLICY.cost_false_reject:g})")
    parser.add_argument("--per-intent", action="store_true", help="fit thresholds per intent where data allows")
    parser.add_argument("--override", action="store_true",
                        help="let tuned per-intent thresholds replace ones written in the catalog")
    parser.add_argument("--report", metavar="DIR", help="write ROC/histogram PNGs and a Markdown+JSON report")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Tune, save next to the catalog, print the chosen operating point."""
    started = time.perf_counter()
    catalog_path = catalog_arg(args)
    if args.report:
        check_report_destination(args.report)
    gate = load_gate(catalog_path)
    rows = labelled_rows(args.data, args.format, args.text_field, args.label_field)
    scored = score_rows(gate, rows, oos_labels(args), source=args.data)
    print("fitting calibrator and thresholds ...", file=sys.stderr, flush=True)
    result = tune(gate, scored, _policy(args), per_intent=args.per_intent, override=args.override)
    path = save_tuning(catalog_path, result.tuning)
    chosen = result.chosen
    print(f"saved {path}")
    print(f"policy {result.tuning.policy['kind']}: threshold {chosen.threshold:.4f}, "
          f"false-reject rate {chosen.false_reject_rate:.1%}, OOS recall {chosen.oos_recall:.1%}")
    if result.tuning.per_intent:
        print(f"per-intent thresholds: {len(result.tuning.per_intent)} of {len(gate.catalog.intents)} intents")
    auroc = result.tuning.validation.get("auroc")
    print(f"validation AUROC {auroc:.4f}" if auroc is not None else "validation AUROC n/a")
    if args.report:
        for written in write_report(args.report, result, gate.catalog.name):
            print(f"wrote {written}")
    print(f"took {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return 0


def _policy(args: argparse.Namespace) -> Policy:
    if args.min_oos_recall is not None:
        return Policy(kind="min_oos_recall", min_oos_recall=args.min_oos_recall)
    if args.youden:
        return Policy(kind="youden")
    if args.cost_llm_call is not None:
        return Policy(kind="min_cost", cost_llm_call=args.cost_llm_call, cost_false_reject=args.cost_false_reject)
    if args.max_false_reject is not None:
        return Policy(kind="max_false_reject", max_false_reject=args.max_false_reject)
    return DEFAULT_POLICY


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a rate between 0 and 1")
    return value
