"""``gatekeeper tune``: calibrate thresholds from labelled traffic with ROC curves.

Before writing, it prints what would change (before: the thresholds in force,
after: the tuned ones, both on the given rows); ``--dry-run`` stops there.
The previous tuning is kept as ``x.tuning.prev.json``.
"""

from __future__ import annotations

import argparse
import sys
import time

from gatekeeper.commands.common import (add_catalog_argument, add_data_arguments, add_oos_label_argument, catalog_arg,
                                        labelled_rows, load_gate, oos_labels, rate, row_count)
from gatekeeper.core.thresholds import IntentFalseRejects
from gatekeeper.measure.report import check_report_destination, write_report
from gatekeeper.measure.tune import MIN_ROWS, Policy, TunePreview, plan
from gatekeeper.store.tuning_file import save_tuning

#: The policy when none is given on the command line (its numbers are the flags' defaults too).
DEFAULT_POLICY = Policy()


def register(parser: argparse.ArgumentParser) -> None:
    """Add the flags of the ``tune`` subcommand."""
    add_catalog_argument(parser)
    parser.add_argument("--data", required=True, metavar="VALID.jsonl", help='rows of {"text": ..., "label": ...}')
    add_data_arguments(parser)
    add_oos_label_argument(parser)
    policy = parser.add_mutually_exclusive_group()
    policy.add_argument("--max-false-reject", type=rate, metavar="R",
                        help="highest OOS recall with at most R of in-scope rows rejected "
                             f"(default {DEFAULT_POLICY.max_false_reject})")
    policy.add_argument("--min-oos-recall", type=rate, metavar="R",
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
    parser.add_argument("--min-rows", type=row_count, default=MIN_ROWS, metavar="N",
                        help=f"fewest in-scope and fewest off-topic rows to tune on (default {MIN_ROWS}; lower it "
                             "only if you know the thresholds will be noisy)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the before/after table and write nothing (no tuning file, no report)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Tune, print the before/after table, save next to the catalog (the previous tuning kept as .prev)."""
    started = time.perf_counter()
    catalog_path = catalog_arg(args)
    if args.report and not args.dry_run:
        check_report_destination(args.report)
    gate = load_gate(catalog_path)
    rows = labelled_rows(args.data, args.format, args.text_field, args.label_field)
    tuned = plan(gate, rows, _policy(args), args.per_intent, oos_labels=oos_labels(args), override=args.override,
                 min_rows=args.min_rows, source=args.data, show_progress=True)
    print(preview_table(tuned.preview))
    print(far_above_policy(tuned.result.intent_false_rejects, gate.catalog_.intent_names(), args.per_intent))
    if args.dry_run:
        print("dry run: nothing written")
        return 0
    for path in save_tuning(catalog_path, tuned.result.tuning, tuned.rows):
        print(f"saved {path}")
    result = tuned.result
    chosen = result.chosen
    print(f"policy {result.tuning.policy['kind']}: threshold {chosen.threshold:.4f}, "
          f"false-reject rate {chosen.false_reject_rate:.1%}, OOS recall {chosen.oos_recall:.1%}")
    if result.tuning.per_intent:
        print(f"per-intent thresholds: {len(result.tuning.per_intent)} of {len(gate.catalog_.intents)} intents")
    auroc = result.tuning.validation.get("auroc")
    print(f"validation AUROC {auroc:.4f}" if auroc is not None else "validation AUROC n/a")
    if args.report:
        for written in write_report(args.report, result, gate.catalog_.name):
            print(f"wrote {written}")
    print(f"took {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return 0


def far_above_policy(rates: list[IntentFalseRejects], names: list[str], per_intent: bool) -> str:
    """The intents refused far more often than the policy allows (see :func:`gatekeeper.measure.tune.intent_false_rejects`)."""
    flagged = [rate for rate in rates if rate.flagged]
    if not flagged:
        return "no intent's own false-reject rate is far above the policy"
    lines = [f"intents refused far more often than the policy allows ({len(flagged)}; 95% interval above it):"]
    width = max(len(names[rate.intent]) for rate in flagged)
    lines += [f"  {names[rate.intent]:<{width}}  {rate.refused:>4} of {rate.rows:<4} refused  {rate.rate:6.1%}  "
              f"(95% {rate.low:.1%}-{rate.high:.1%})" for rate in flagged]
    lines.append("  (with --per-intent each has a threshold of its own, shrunk toward the global one)" if per_intent
                 else "  tune with --per-intent to give them thresholds of their own, shrunk toward the global one")
    return "\n".join(lines)


def preview_table(preview: TunePreview) -> str:
    """The before/after table of a :class:`~gatekeeper.measure.tune.TunePreview`, as printed by ``tune``."""
    lines = [("", "before", "after")]
    for label, key, form in (("threshold source", "threshold_source", "{}"),
                             ("global threshold", "global_threshold", "{:.4f}"),
                             ("per-intent thresholds", "per_intent_thresholds", "{}"),
                             ("false-reject rate", "false_reject_rate", "{:.1%}"),
                             ("off-topic recall", "oos_recall", "{:.1%}"),
                             ("LLM calls saved / 1,000", "llm_calls_saved_per_1000", "{:.0f}")):
        lines.append((label, form.format(preview.before[key]), form.format(preview.after[key])))
    width = max(len(line[0]) for line in lines)
    table = "\n".join(f"{label:<{width}}  {before:>8}  {after:>8}" for label, before, after in lines)
    return (f"{table}\non {preview.rows} rows ({preview.in_scope} in scope, {preview.off_topic} off topic); after: "
            "cross-fitted scores of the refitted calibrator")


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


