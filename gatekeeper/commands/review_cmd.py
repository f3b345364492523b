"""``gatekeeper review``: label logged traffic on a local page, most useful messages first.

``gatekeeper review LOG.jsonl --catalog CATALOG --labels LABELS.jsonl`` serves
the page on http://127.0.0.1:8765/ until stopped (Ctrl-C). ``--export-csv
FILE`` and ``--import-csv FILE`` exchange labels with a spreadsheet instead of
serving. See :mod:`gatekeeper.review`.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from gatekeeper.commands.common import add_catalog_argument, catalog_arg, rate, row_count
from gatekeeper.errors import UserError
from gatekeeper.review.ordering import DEFAULT_NEAR

DEFAULT_PORT = 8765


def register(parser: argparse.ArgumentParser) -> None:
    """Add the flags of the ``review`` subcommand."""
    parser.description = ("Serve a page to label the messages of a decision log (or any JSONL with a \"text\" per line), "
                    "most worth a label first; every label is saved to --labels at once, in the format "
                    "'gatekeeper tune --data' and 'eval --data' read.")
    parser.add_argument("log", metavar="LOG.jsonl",
                        help="decision log (written with decision_log_text redact or full) or JSONL of messages")
    add_catalog_argument(parser)
    parser.add_argument("--labels", required=True, metavar="LABELS.jsonl",
                        help='labels file, read at start and appended to at every label: {"text", "label", '
                             '"context"?, "request_id"?} rows, off-topic as "oos"')
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--near", type=float, default=DEFAULT_NEAR, metavar="M",
                        help=f"|score - threshold| up to which a message counts as near the threshold and is shown "
                             f"first (default {DEFAULT_NEAR})")
    policy = parser.add_mutually_exclusive_group()
    policy.add_argument("--max-false-reject", type=rate, metavar="R",
                        help="preview policy, as in tune: highest OOS recall with at most R of in-scope rows rejected")
    policy.add_argument("--min-oos-recall", type=rate, metavar="R",
                        help="preview policy, as in tune: fewest false rejects with at least R of off-topic rows "
                             "rejected")
    policy.add_argument("--youden", action="store_true", help="preview policy, as in tune: maximise TPR - FPR")
    parser.add_argument("--min-rows", type=row_count, default=None, metavar="N",
                        help="in-scope and off-topic rows the preview needs, as in tune (default: tune's)")
    parser.add_argument("--export-csv", metavar="FILE",
                        help="write every message and its label as CSV (UTF-8 with BOM, for Excel) and exit")
    parser.add_argument("--import-csv", metavar="FILE",
                        help="merge labels from a spreadsheet (columns text,label[,context as a JSON list]; "
                             "label an intent, oos, or skip to leave a row alone) and exit")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Import and/or export CSV, or serve the page until stopped."""
    catalog_path = catalog_arg(args)
    if args.import_csv or args.export_csv:
        return _exchange(args, catalog_path)
    import uvicorn
    from tqdm import tqdm

    from gatekeeper.review.app import ReviewSession, create_app

    sock = _listen(args.host, args.port)  # a busy port fails now, not after the messages are decided
    print(f"reading {args.log} and deciding the messages the log has no decision for ...", file=sys.stderr,
          flush=True)
    with tqdm(desc="deciding messages", unit="msg", file=sys.stderr, disable=None, leave=False) as bar:
        session = ReviewSession.open(args.log, catalog_path, args.labels, policy=_policy(args), near=args.near,
                                     min_rows=args.min_rows, progress=bar.update)
    for warning in session.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    counts = session.counts()
    decided = sum(item.decided_here for item in session.items)
    print(f"{counts['messages']} messages ({decided} decided by the catalog's gate), {counts['messages_left']} "
          f"still to label; labels saved to {args.labels}")
    print(f"open http://{_url_host(args.host)}:{args.port}/  (stop with Ctrl-C)", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(session, host=args.host), log_level="warning"))
    server.run(sockets=[sock])
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port``; :class:`UserError` naming the fix if that is not possible."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({error.strerror}); pass another --port, e.g. --port "
                        f"{port + 1}") from None
    return sock


def _exchange(args: argparse.Namespace, catalog_path: str) -> int:
    """``--import-csv`` (merged first) and ``--export-csv``, without serving."""
    from gatekeeper.catalog.loader import load_catalog
    from gatekeeper.review.labels import LabelStore, export_csv, import_csv
    from gatekeeper.review.ordering import decide_missing, order_items, read_messages

    messages = read_messages(args.log)
    for warning in messages.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    store = LabelStore.open(args.labels)
    if args.import_csv:
        names = load_catalog(catalog_path).intent_names()
        summary = import_csv(args.import_csv, store, names, messages.items)
        for warning in summary.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(f"imported {args.import_csv} into {args.labels}: {summary.changed} labels saved, "
              f"{summary.unchanged} already the same, {summary.skipped} rows left as skip")
    if args.export_csv:
        items = messages.items
        if messages.undecided:
            from gatekeeper.commands.common import load_gate
            items = decide_missing(load_gate(catalog_path), items)
        out = Path(args.export_csv)
        try:
            out.write_bytes(export_csv(order_items(items, args.near), store))
        except OSError as error:
            raise UserError(f"{out}: cannot write the CSV ({error.strerror})") from None
        print(f"wrote {out}: {len(items)} messages, {sum(store.counts()[k] for k in ('in_scope', 'oos'))} labels "
              "(UTF-8 with BOM; unlabelled rows say skip)")
    return 0


def _policy(args: argparse.Namespace):
    from gatekeeper.measure.tune import Policy

    if args.min_oos_recall is not None:
        return Policy(kind="min_oos_recall", min_oos_recall=args.min_oos_recall)
    if args.youden:
        return Policy(kind="youden")
    if args.max_false_reject is not None:
        return Policy(kind="max_false_reject", max_false_reject=args.max_false_reject)
    return Policy()




def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
