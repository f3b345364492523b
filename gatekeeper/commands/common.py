"""What several subcommands share: the ``--catalog`` flag, JSON output, loading a gate with a progress bar,
reading labelled data files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gatekeeper.catalog.labelled_data import EXTENSIONS, FORMATS, OOS_LABEL, LabelledRow, Row, read_labelled
from gatekeeper.catalog.schema import intent_key
from gatekeeper.progress import build_progress

if TYPE_CHECKING:
    from gatekeeper.gate import Gate


def add_catalog_argument(parser: argparse.ArgumentParser) -> None:
    """The shared ``--catalog`` flag (defaults to ``$GATEKEEPER_CATALOG`` or ``intents/``)."""
    parser.add_argument("--catalog", default=None,
                        help="catalog file or directory (default: $GATEKEEPER_CATALOG or intents/)")


def catalog_arg(args: argparse.Namespace) -> str:
    """The catalog path of a parsed command line."""
    from gatekeeper.catalog.loader import default_catalog_path

    return args.catalog or default_catalog_path()


def print_json(obj: object) -> None:
    """One JSON object per line, UTF-8 kept readable."""
    print(json.dumps(obj, ensure_ascii=False), flush=True)


def rate(text: str) -> float:
    """An argparse ``type``: a rate between 0 and 1 (argparse names it "rate" in its error)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a rate between 0 and 1")
    return value


def row_count(text: str) -> int:
    """An argparse ``type``: a number of rows, at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a row count of 1 or more")
    return value


def add_oos_label_argument(parser: argparse.ArgumentParser) -> None:
    """The shared, repeatable ``--oos-label`` flag."""
    parser.add_argument("--oos-label", action="append", default=[], metavar="LABEL",
                        help=f"label meaning out of scope (repeatable, any case; '{OOS_LABEL}' always does)")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The shared ``--format``, ``--text-field`` and ``--label-field`` flags of a labelled data file."""
    extensions = ", ".join(f"{ext}={fmt}" for ext, fmt in EXTENSIONS.items())
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help=f"format of the data file (default: from its extension: {extensions})")
    parser.add_argument("--text-field", default="text", metavar="NAME",
                        help="JSON field or CSV/TSV column holding the user message (default: text)")
    parser.add_argument("--label-field", default="label", metavar="NAME",
                        help="JSON field or CSV/TSV column holding the intent label (default: label)")


def oos_labels(args: argparse.Namespace) -> frozenset[str]:
    """The out-of-scope labels of a parsed command line, as :func:`~gatekeeper.catalog.schema.intent_key` keys.

    Compare a label with ``intent_key(label) in oos_labels(args)``, or use
    :func:`gatekeeper.catalog.labelled_data.is_oos_label`.
    """
    return frozenset(intent_key(label) for label in (OOS_LABEL, *args.oos_label))


def load_gate(catalog_path: str, rebuild: bool = False, threads: int = 1) -> Gate:
    """Load a gate, showing a progress bar if the catalog must be embedded."""
    from gatekeeper.gate import Gate

    update, close = build_progress()
    try:
        return Gate(threads=threads, rebuild=rebuild).fit(catalog_path, progress=update)
    finally:
        close()


def read_rows(path: str | Path, fmt: str | None = None, text_field: str = "text",
              label_field: str = "label") -> list[LabelledRow]:
    """The rows of a labelled JSON-lines, CSV or TSV file, its warnings printed on stderr.

    See :func:`gatekeeper.catalog.labelled_data.read_labelled`: labels are normalised
    and every mistake is a ``UserError`` naming the file and the line.
    """
    data = read_labelled(path, fmt, text_field, label_field)
    for message in data.warnings:
        print_warning(message)
    return data.rows


def labelled_rows(path: str | Path, fmt: str | None = None, text_field: str = "text",
                  label_field: str = "label") -> list[Row]:
    """(text, label) pairs of a labelled file, as :func:`read_rows` reads it, with their context when they have one
    (:meth:`~gatekeeper.catalog.labelled_data.LabelledRow.as_row`)."""
    return [row.as_row() for row in read_rows(path, fmt, text_field, label_field)]


def print_warning(message: str) -> None:
    """One warning on stderr, for the user to read."""
    print(f"warning: {message}", file=sys.stderr)
