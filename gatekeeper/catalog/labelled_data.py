"""Labelled rows (a user message and its intent label) read from JSON lines, CSV or TSV.

Shared by ``gatekeeper import``, ``eval`` and ``tune``. Every mistake is a
:class:`~gatekeeper.errors.UserError` naming the file, the line and the fix;
what is worth knowing but not fatal (the file was read as GB18030, rows without
a text were skipped) comes back as warnings for the command to print.

Encoding: UTF-8, with or without a byte-order mark, is read as is; so is
UTF-16 with a byte-order mark (Excel's "Unicode text"). A file that is not
valid UTF-8 is read as GB18030, with a warning. GB18030 is a superset of GBK
and GB2312, the encodings Excel and WPS write on Chinese Windows, so this is
what most non-UTF-8 files of Chinese teams are. Detection is reliable in the
direction that matters: UTF-8 is tried first and is so strict that text in
another encoding almost never passes it, so a UTF-8 file is never misread.
The remaining risk is a file in a third encoding (Big5, Latin-1) whose bytes
happen to decode as GB18030 into wrong characters; the warning says the file
was not UTF-8 and how to convert it, so the user can check rather than be
refused for the common case. Bytes that decode in neither encoding are an
error naming the line and byte offset.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from gatekeeper.catalog.schema import intent_key, intent_name_problem, normalise_intent_name
from gatekeeper.errors import UserError

#: The formats :func:`read_labelled` reads, as named by ``--format``.
FORMATS = ("jsonl", "csv", "tsv")

#: The format of each known file extension.
EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv"}

#: The label that always means "out of scope", in any case.
OOS_LABEL = "oos"

#: Line numbers listed in a warning about skipped rows before "...".
_LINES_SHOWN = 5

#: The optional JSON-lines field of the earlier user turns a message was decided with (the decision log writes it).
CONTEXT_FIELD = "context"

#: A labelled message as scoring takes it: (text, label), or (text, label, context) with the earlier user turns,
#: oldest first, that the sidecar decided it with.
Row = tuple[str, str] | tuple[str, str, tuple[str, ...]]


@dataclass(frozen=True)
class LabelledRow:
    """One labelled message; ``label`` is normalised (NFKC, trimmed), ``line`` is 1-based in ``source``."""

    text: str
    label: str
    source: str
    line: int
    #: The earlier user turns, oldest first (JSON lines' ``context`` field); empty for a message on its own.
    context: tuple[str, ...] = ()

    def as_row(self) -> Row:
        """(text, label), or (text, label, context) when the message has earlier turns."""
        return (self.text, self.label, self.context) if self.context else (self.text, self.label)


@dataclass(frozen=True)
class LabelledData:
    """The rows of a labelled file and the warnings met while reading it."""

    rows: list[LabelledRow]
    warnings: list[str]


def read_labelled(path: str | Path, fmt: str | None = None, text_field: str = "text",
                  label_field: str = "label") -> LabelledData:
    """Read the labelled rows of a JSON-lines, CSV or TSV file.

    ``fmt`` ("jsonl", "csv" or "tsv") defaults to the format of the file's
    extension. JSON lines hold one object per line; CSV and TSV start with a
    header row. ``text_field`` and ``label_field`` name the fields (columns)
    read. Blank lines are skipped, and so are rows whose text is empty (with a
    warning). Labels are normalised with
    :func:`~gatekeeper.catalog.schema.normalise_intent_name`. Raises
    :class:`UserError` naming the file, the line and the fix.
    """
    path = Path(path)
    source = str(path)
    text, warnings = _decode(source, _read_bytes(path))
    records = _records(_format(path, fmt), source, text, text_field, label_field)
    rows: list[LabelledRow] = []
    no_text: list[int] = []
    for line, message, raw_label, context in records:
        if not message.strip():
            no_text.append(line)
            continue
        rows.append(LabelledRow(message, _label(raw_label, f"{source}:{line}"), source, line, context))
    if no_text:
        warnings.append(f"{source}: skipped {len(no_text)} row{'s' if len(no_text) > 1 else ''} with an empty "
                        f"{text_field!r} ({_lines(no_text)}); write the user message there or delete the row")
    if not rows:
        raise UserError(f"{source}: the file has no labelled rows; each row needs a {text_field!r} (the user "
                        f"message) and a {label_field!r} (its intent)")
    return LabelledData(rows, warnings)


def _format(path: Path, fmt: str | None) -> str:
    """``fmt`` if given, else the format of ``path``'s extension; an unknown one is an error naming ``--format``."""
    if fmt is None:
        fmt = EXTENSIONS.get(path.suffix.lower())
        if fmt is None:
            raise UserError(f"{path}: cannot tell the format from the extension {path.suffix or '(none)'!r}; "
                            f"name the file .jsonl, .csv or .tsv, or pass --format {'|'.join(FORMATS)}")
    elif fmt not in FORMATS:
        raise UserError(f"unknown data format {fmt!r}; use one of {', '.join(FORMATS)}")
    return fmt


def is_oos_label(label: str, oos_labels: Iterable[str]) -> bool:
    """True if ``label`` means out of scope: 'oos' or one of ``oos_labels``, ignoring case and surrounding spaces."""
    key = intent_key(label)
    return key == OOS_LABEL or any(key == intent_key(oos) for oos in oos_labels)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; pass a labelled file (.jsonl, .csv or .tsv)") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read the file ({error.strerror})") from None


def _decode(source: str, data: bytes) -> tuple[str, list[str]]:
    """The text of the file and the warnings about its encoding (see the module docstring)."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), []
        except UnicodeDecodeError as error:
            raise _undecodable(source, data, error, "UTF-16") from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff"), []  # not utf-8-sig: its error offsets skip the BOM
    except UnicodeDecodeError as not_utf8:
        try:
            text = data.decode("gb18030")
        except UnicodeDecodeError:
            raise _undecodable(source, data, not_utf8, "UTF-8 or GB18030 (GBK)") from None
        return text, [f"{source}: not UTF-8 (line {_line_at(data, not_utf8)}), so it was read as GB18030 (GBK); "
                      "if the texts or labels look garbled, convert the file to UTF-8 and run again: "
                      f"{_iconv(source)}"]


def _undecodable(source: str, data: bytes, error: UnicodeDecodeError, tried: str) -> UserError:
    return UserError(f"{source}:{_line_at(data, error)}: byte 0x{data[error.start]:02x} at offset {error.start} "
                     f"is not {tried} text; save the file as UTF-8, e.g. {_iconv(source)}")


def _line_at(data: bytes, error: UnicodeDecodeError) -> int:
    """1-based line of the byte where ``error`` happened."""
    return data[:error.start].decode(error.encoding, errors="replace").count("\n") + 1


def _iconv(source: str) -> str:
    path = Path(source)
    return f"iconv -f ENCODING -t UTF-8 {source} > {path.with_name(f'{path.stem}.utf8{path.suffix}')}"


def _records(fmt: str, source: str, text: str, text_field: str, label_field: str
             ) -> Iterator[tuple[int, str, str, tuple[str, ...]]]:
    """(line, text, raw label, context) of every non-blank row of a decoded file (CSV and TSV have no context)."""
    if fmt == "jsonl":
        return _json_records(source, text, text_field, label_field)
    return _delimited_records(source, text, "," if fmt == "csv" else "\t", text_field, label_field)


def _json_records(source: str, text: str, text_field: str, label_field: str
                  ) -> Iterator[tuple[int, str, str, tuple[str, ...]]]:
    example = f'{{"{text_field}": "我要查话费", "{label_field}": "话费查询"}}'
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            row = json.loads(line)
        except ValueError as error:
            raise UserError(f"{where}: not valid JSON ({error.msg} at column {error.colno}); each line must be "
                            f"one JSON object such as {example}{_array_hint(line)}") from None
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected a JSON object such as {example}, got {_json_type(row)}"
                            f"{_array_hint(line)}")
        if text_field not in row and "text_sha256" in row:
            raise UserError(f"{where}: this decision-log row has no text, only its hash: the log was written with "
                            "decision_log_text=hash, which keeps no text to score or tune on; switch the sidecar to "
                            "decision_log_text=redact (the default) or full, and collect traffic again")
        yield number, _json_string(row, text_field, "--text-field", where), \
            _json_string(row, label_field, "--label-field", where), _json_context(row, where)


def _json_string(row: dict, field: str, flag: str, where: str) -> str:
    if field not in row:
        found = ", ".join(f'"{key}"' for key in row) or "none"
        raise UserError(f'{where}: no "{field}" field (fields found: {found}); pass {flag} NAME to read another '
                        "field")
    value = row[field]
    if not isinstance(value, str):
        raise UserError(f'{where}: "{field}" must be a string, got {_json_type(value)} '
                        f"{json.dumps(value, ensure_ascii=False)[:40]}; put it in double quotes")
    return value


def _json_context(row: dict, where: str) -> tuple[str, ...]:
    """The row's earlier user turns: a list of strings, or nothing (missing or null)."""
    value = row.get(CONTEXT_FIELD)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(turn, str) for turn in value):
        raise UserError(f'{where}: "{CONTEXT_FIELD}" must be a list of the earlier user messages (strings, oldest '
                        f"first), got {json.dumps(value, ensure_ascii=False)[:60]}; fix it or delete the field")
    return tuple(turn for turn in value if turn.strip())


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", bool: "a boolean", int: "a number", float: "a number",
             type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _array_hint(line: str) -> str:
    if not line.lstrip().startswith("["):
        return ""
    return "; for a JSON array, write one object per line instead: jq -c '.[]' data.json > data.jsonl"


def _delimited_records(source: str, text: str, delimiter: str, text_field: str, label_field: str
                       ) -> Iterator[tuple[int, str, str]]:
    """Rows of a CSV/TSV text whose first non-blank record is the header."""
    kind = "CSV" if delimiter == "," else "TSV"
    records = _non_blank_records(source, text, delimiter, kind)
    header = next(records, None)
    if header is None:
        return
    where = f"{source}:{header[0]}"
    columns = [cell.strip() for cell in header[1]]
    text_at = _column(columns, text_field, "--text-field", where)
    label_at = _column(columns, label_field, "--label-field", where)
    for start, cells in records:
        if len(cells) != len(columns):
            raise UserError(f"{source}:{start}: the row has {len(cells)} fields but the header has {len(columns)}; "
                            "put a text that holds the delimiter in double quotes (\"...\"), or check that the "
                            f"file is really {kind}")
        yield start, cells[text_at], cells[label_at], ()


def _non_blank_records(source: str, text: str, delimiter: str, kind: str) -> Iterator[tuple[int, list[str]]]:
    """(line where it starts, cells) of each record with a non-blank cell; broken quoting is an error."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    end = 0
    try:
        for cells in reader:
            start, end = end + 1, reader.line_num
            if any(cell.strip() for cell in cells):
                yield start, cells
    except csv.Error as error:
        raise UserError(f"{source}:{reader.line_num}: broken {kind} ({error}); check the double quotes on this "
                        'line and the lines before (a quote inside a quoted field is written twice: "")') from None


def _column(columns: list[str], field: str, flag: str, where: str) -> int:
    if field not in columns:
        found = ", ".join(f'"{column}"' for column in columns)
        raise UserError(f'{where}: no column "{field}" in the header (columns found: {found}); the first row '
                        f"must name the columns, and {flag} NAME reads another column")
    return columns.index(field)


def _label(raw: str, where: str) -> str:
    """``raw`` normalised into an intent name; an empty or unusable label is an error at ``where``."""
    label = normalise_intent_name(raw)
    if not label:
        raise UserError(f"{where}: the label is empty; write the intent of this message, or delete the row")
    problem = intent_name_problem(label)
    if problem:
        raise UserError(f"{where}: the label {label!r} cannot be an intent name: {problem}")
    return label


def _lines(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:_LINES_SHOWN]))
    return f"line{'s' if len(numbers) > 1 else ''} {shown}{', ...' if len(numbers) > _LINES_SHOWN else ''}"
