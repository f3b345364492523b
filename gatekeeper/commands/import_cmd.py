"""``gatekeeper import``: turn labelled JSON lines into a catalog YAML file."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from gatekeeper.catalog import load_catalog
from gatekeeper.catalog_schema import SCHEMA_VERSION, intent_name_for_label
from gatekeeper.commands.common import add_oos_label_argument, labelled_rows, oos_labels
from gatekeeper.errors import UserError

def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``import`` subcommand."""
    parser = subparsers.add_parser("import", help="make a catalog from labelled JSON lines")
    parser.add_argument("data", metavar="DATA.jsonl", help='rows of {"text": ..., "label": ...}')
    parser.add_argument("--out", required=True, metavar="CATALOG.yaml", help="catalog file to write")
    add_oos_label_argument(parser)
    parser.add_argument("--name", help="catalog name (default: the output file's stem)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Write the catalog, then load it back to prove it valid."""
    out = Path(args.out)
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; pass --force to overwrite it")
    document = catalog_document(labelled_rows(args.data), oos_labels=oos_labels(args),
                                name=args.name or out.stem)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False, width=1000), encoding="utf-8")
    catalog = load_catalog(out)
    examples = sum(len(intent.examples) for intent in catalog.intents)
    print(f"wrote {out}: {len(catalog.intents)} intents, {examples} examples, "
          f"{len(catalog.out_of_scope)} out-of-scope examples")
    return 0


def catalog_document(rows: list[tuple[str, str]], oos_labels: set[str], name: str) -> dict:
    """A catalog (as plain data) with one intent per label, in first-seen order, duplicates dropped."""
    intents: dict[str, list[str]] = {}
    negatives: list[str] = []
    for text, label in rows:
        if not text.strip():
            continue
        target = negatives if label in oos_labels else intents.setdefault(label, [])
        if text not in target:
            target.append(text)
    if not intents:
        raise UserError("no in-scope rows: every label is an out-of-scope label")
    return {
        "version": SCHEMA_VERSION,
        "name": name,
        "defaults": {"threshold": "auto"},
        "intents": [{"name": intent_name_for_label(label), "examples": examples} for label, examples in intents.items()],
        "out_of_scope": negatives,
    }

