"""``gatekeeper build``: build or refresh a catalog's index and print a summary."""

from __future__ import annotations

import argparse
import sys

from gatekeeper.commands.common import add_catalog_argument, catalog_arg, load_gate, print_json


def register(parser: argparse.ArgumentParser) -> None:
    """Add the flags of the ``build`` subcommand."""
    add_catalog_argument(parser)
    parser.add_argument("--rebuild", action="store_true", help="rebuild even if the saved index is fresh")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for embedding (default 2)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Build, then summarise: intents, examples, model, dim, thresholds and the tuning's status, time."""
    gate = load_gate(catalog_arg(args), rebuild=args.rebuild, threads=args.threads)
    meta = gate.artifacts_.meta
    summary = {
        "catalog": meta["catalog"], "status": "built" if gate.rebuilt_ else "up to date",
        "intents": len(meta["intents"]), "conversation_pack_intents": len(gate.catalog_.pack_intents),
        "examples": meta["examples"], "out_of_scope": meta["out_of_scope"],
        "out_of_scope_pack": meta["pack_out_of_scope"], "out_of_scope_pack_dropped": meta["pack_dropped"],
        "prototypes": meta["prototypes"], "embedded": meta["embedded"] if gate.rebuilt_ else 0,
        "model": meta["model"], "dim": meta["dim"], "index": meta["index"], "scorer": meta["scorer"],
        "lexical_features": meta["lexical_features"],
        "threshold": gate.router_.thresholds.global_threshold, "threshold_source": gate.router_.thresholds.source,
        "tuning": gate.tuning_status_, "auto_estimate": meta.get("auto_estimate"),
        "intent_estimate": meta.get("intent_estimate"),
        "build_seconds": meta["build_seconds"],
    }
    warnings = [*gate.catalog_.warnings, *([f"tuning stale: {gate.tuning_problem_}"] if gate.tuning_problem_ else [])]
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print_json({**summary, "warnings": warnings})
    else:
        from gatekeeper.core.fit import describe_auto_estimate  # loaded with the gate already
        from gatekeeper.core.intent_estimate import describe_intent_estimate

        width = max(map(len, summary))
        described = {"auto_estimate": describe_auto_estimate(summary["auto_estimate"]),
                     "intent_estimate": describe_intent_estimate(summary["intent_estimate"])}
        for key, value in {**summary, **described}.items():
            print(f"{key:<{width}}  {round(value, 4) if isinstance(value, float) else value}")
    return 0
