"""``gatekeeper import``: turn a labelled file (JSON lines, CSV, TSV) into a catalog YAML file."""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import yaml

from gatekeeper.catalog.checks import text_key
from gatekeeper.catalog.labelled_data import LabelledRow, is_oos_label
from gatekeeper.catalog.loader import CatalogError, load_catalog
from gatekeeper.catalog.schema import SCHEMA_VERSION, Catalog, intent_key, normalise_intent_name
from gatekeeper.commands.common import (add_data_arguments, add_oos_label_argument, oos_labels, print_warning,
                                        read_rows)
from gatekeeper.errors import UserError
from gatekeeper.store.files import atomic_replace

#: Conflicting rows listed in an error before "... and N more".
_CONFLICTS_SHOWN = 10


def register(parser: argparse.ArgumentParser) -> None:
    """Add the flags of the ``import`` subcommand."""
    parser.add_argument("data", metavar="DATA", help="labelled rows: .jsonl objects, or .csv/.tsv with a header, "
                                                     "each with a text and a label")
    parser.add_argument("--out", required=True, metavar="CATALOG.yaml", help="catalog file to write")
    add_data_arguments(parser)
    add_oos_label_argument(parser)
    parser.add_argument("--name", help="catalog name (default: the output file's stem)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Read the labelled file, group it into intents, write the catalog atomically, print a summary."""
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"{out} is a directory; pass a file name such as {out / 'catalog.yaml'}")
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; pass --force to overwrite it")
    grouped = group_rows(read_rows(args.data, args.format, args.text_field, args.label_field), oos_labels(args))
    if not grouped.intents:
        raise UserError(f"{args.data}: no in-scope rows: every label is an out-of-scope label; keep some rows "
                        "labelled with the intents the service handles")
    for message in merge_warnings(grouped):
        print_warning(message)
    catalog = write_catalog(out, catalog_document(grouped, args.name or out.stem), args.data)
    for message in catalog.warnings:
        print_warning(message)
    examples = sum(map(len, grouped.intents.values()))
    duplicates = f" (duplicates dropped: {_rows(grouped.duplicates)})" if grouped.duplicates else ""
    print(f"wrote {out}: {len(grouped.intents)} intents, {examples} examples, "
          f"{len(grouped.out_of_scope)} out-of-scope examples{duplicates}")
    return 0


@dataclass
class GroupedRows:
    """Labelled rows grouped into intents (first-seen order) and out-of-scope examples, duplicates dropped."""

    #: Intent name -> its examples.
    intents: dict[str, list[str]]
    out_of_scope: list[str]
    #: The spellings (with row counts) of each intent whose label came in more than one spelling.
    merged: dict[str, Counter]
    #: Rows dropped because the same text (up to case and spaces) was already in the same group.
    duplicates: int


def group_rows(rows: Iterable[LabelledRow], oos: Iterable[str]) -> GroupedRows:
    """Group labelled rows into intents and out-of-scope examples.

    Labels equal up to case (``intent_key``) are one intent, named by the
    label's most frequent spelling (the first seen on a tie). A text seen again
    in the same group is dropped as a duplicate; a text under two groups is a
    :class:`UserError` listing every such row, since the catalog refuses it.
    """
    spellings: dict[str, Counter] = {}
    texts: dict[str, list[str]] = {}  # group ("" = out of scope) -> texts
    first_row: dict[str, tuple[str, LabelledRow]] = {}  # text key -> (group, first row with that text)
    conflicts: list[tuple[LabelledRow, LabelledRow]] = []
    duplicates = 0
    for row in rows:
        group = "" if is_oos_label(row.label, oos) else intent_key(row.label)
        if group:
            spellings.setdefault(group, Counter())[row.label] += 1
        first_group, first = first_row.setdefault(text_key(row.text), (group, row))
        if first is row:
            texts.setdefault(group, []).append(row.text)
        elif first_group == group:
            duplicates += 1
        else:
            conflicts.append((row, first))
    if conflicts:
        raise _conflict_error(conflicts)
    names = {group: counts.most_common(1)[0][0] for group, counts in spellings.items()}
    return GroupedRows(intents={names[group]: examples for group, examples in texts.items() if group},
                       out_of_scope=texts.get("", []),
                       merged={names[group]: counts for group, counts in spellings.items() if len(counts) > 1},
                       duplicates=duplicates)


def _conflict_error(conflicts: list[tuple[LabelledRow, LabelledRow]]) -> UserError:
    shown = [f"  {row.source}:{row.line}: {row.text!r} is labelled {row.label!r} here but {first.label!r} at "
             f"line {first.line}" for row, first in conflicts[:_CONFLICTS_SHOWN]]
    if len(conflicts) > _CONFLICTS_SHOWN:
        shown.append(f"  ... and {len(conflicts) - _CONFLICTS_SHOWN} more")
    return UserError(f"{conflicts[0][0].source}: messages repeated under another label "
                     f"({_rows(len(conflicts))}):\n" + "\n".join(shown) + "\nfix: a message belongs to one intent "
                     "(or is out of scope); correct the label of one of the rows or delete it; nothing was written")


def merge_warnings(grouped: GroupedRows) -> list[str]:
    """One warning per intent made of labels that differ only in case (or surrounding spaces)."""
    return [f"labels {', '.join(f'{spelling!r} ({_rows(count)})' for spelling, count in counts.most_common())} "
            f"differ only in case or surrounding spaces, so they were merged into the intent {name!r}"
            for name, counts in grouped.merged.items()]


def catalog_document(grouped: GroupedRows, name: str) -> dict:
    """A catalog (as plain data) with one intent per group, and the out-of-scope examples.

    The conversation pack is off: in labelled data the labels already say what
    greetings, thanks and the like are (their own intents, or out of scope),
    and pack intents the data never uses would blur ``eval`` and ``tune``.
    The out-of-scope pack stays on (the default).
    """
    return {
        "version": SCHEMA_VERSION,
        "name": name,
        "conversation_pack": "none",
        "defaults": {"threshold": "auto"},
        "intents": [{"name": intent, "examples": examples} for intent, examples in grouped.intents.items()],
        "out_of_scope": grouped.out_of_scope,
    }


def document_from_pairs(pairs: Iterable[tuple[str, str]], oos: Iterable[str], name: str) -> dict:
    """:func:`catalog_document` for (text, label) pairs already in memory (benchmarks, tests)."""
    rows = [LabelledRow(text, normalise_intent_name(label), name, number)
            for number, (text, label) in enumerate(pairs, 1)]
    return catalog_document(group_rows(rows, oos), name)


def write_catalog(out: Path, document: dict, source: str) -> Catalog:
    """Write ``document`` to ``out`` atomically: a temp file beside it, proved valid, then renamed over ``out``.

    On any failure nothing is left behind (no output, no temp file) and the
    error is a :class:`UserError` naming ``source``, the data it came from.
    Returns the catalog as loaded from ``out`` (its warnings name ``out``).
    """
    try:
        with atomic_replace(out) as temp:
            with temp.open("x", encoding="utf-8") as handle:
                yaml.safe_dump(document, handle, allow_unicode=True, sort_keys=False, width=1000)
            catalog = _validated(temp, source)
    except OSError as error:
        raise UserError(f"{out}: cannot write the catalog ({error.strerror or error}); nothing was written") from None
    # Its warnings point at lines of the file just written, not of the temp file.
    return catalog.model_copy(update={"sources": [str(out)],
                                      "warnings": [w.replace(str(temp), str(out)) for w in catalog.warnings]})


def _validated(path: Path, source: str) -> Catalog:
    try:
        return load_catalog(path)
    except CatalogError as error:
        problems = "; ".join(f"{problem.field}: {problem.message}" if problem.field else problem.message
                             for problem in error.problems)
        raise UserError(f"{source}: the catalog made from this file does not load: {problems}; "
                        "nothing was written") from None


def _rows(count: int) -> str:
    return f"{count} row{'s' if count > 1 else ''}"
