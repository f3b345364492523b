"""What several subcommands share: loading a gate with a progress bar, reading JSON lines."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Iterator

from gatekeeper.errors import UserError
from gatekeeper.gate import Gate
from gatekeeper.progress import build_progress


#: Labels that always mean "out of scope" in a labelled file.
DEFAULT_OOS_LABELS = ("oos",)


def add_oos_label_argument(parser: argparse.ArgumentParser) -> None:
    """The shared, repeatable ``--oos-label`` flag."""
    parser.add_argument("--oos-label", action="append", default=[], metavar="LABEL",
                        help="label meaning out of scope (repeatable; 'oos' always does)")


def oos_labels(args: argparse.Namespace) -> set[str]:
    """The out-of-scope labels of a parsed command line."""
    return {*DEFAULT_OOS_LABELS, *args.oos_label}


def load_gate(catalog_path: str, rebuild: bool = False, threads: int = 1) -> Gate:
    """Load a gate, showing a progress bar if the catalog must be embedded."""
    update, close = build_progress()
    try:
        return Gate.load(catalog_path, progress=update, rebuild=rebuild, threads=threads)
    finally:
        close()


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON-lines file; errors name file and line."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file; pass a JSON-lines file of {{\"text\": ..., \"label\": ...}} rows")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as error:
                raise UserError(f"{path}:{number}: not valid JSON ({error.msg}); each line must be one "
                                "JSON object") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{number}: expected a JSON object with 'text' and 'label'")
            yield number, row


def labelled_rows(path: str | Path) -> list[tuple[str, str]]:
    """(text, label) pairs of a labelled JSON-lines file; a row without both is an error naming its line."""
    rows = []
    for number, row in read_jsonl(path):
        text, label = row.get("text"), row.get("label")
        if not isinstance(text, str) or not isinstance(label, str):
            raise UserError(f"{path}:{number}: each row needs a string 'text' and a string 'label'")
        rows.append((text, label))
    if not rows:
        raise UserError(f"{path}: the file has no rows")
    return rows
