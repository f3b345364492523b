"""``gatekeeper route``: decide messages given as arguments or read from stdin."""

from __future__ import annotations

import argparse
import sys

from gatekeeper.cli import add_catalog_argument, catalog_arg, print_json
from gatekeeper.commands.common import load_gate
from gatekeeper.router import Decision

#: Lines of stdin decided per encoder call.
STDIN_BATCH = 64


def register(parser: argparse.ArgumentParser) -> None:
    """Add the flags of the ``route`` subcommand."""
    add_catalog_argument(parser)
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="messages (default: one per stdin line)")
    parser.add_argument("--json", action="store_true", help="one JSON object per message")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print a decision per message."""
    gate = load_gate(catalog_arg(args))
    if args.texts:
        _emit(gate.decide_many(args.texts), args.json)
        return 0
    batch: list[str] = []
    for line in sys.stdin:
        batch.append(line.rstrip("\n"))
        if len(batch) == STDIN_BATCH:
            _emit(gate.decide_many(batch), args.json)
            batch = []
    _emit(gate.decide_many(batch), args.json)
    return 0


def _emit(decisions: list[Decision], as_json: bool) -> None:
    for decision in decisions:
        if as_json:
            print_json(decision.to_dict())
            continue
        verdict = "ACCEPT" if decision.accepted else "REJECT"
        why = f"  ({decision.reason})" if decision.reason else ""
        print(f"{verdict}  {decision.intent or '-':<28} score={decision.score:.3f} "
              f"threshold={decision.threshold:.3f}{why}  {decision.text}", flush=True)
