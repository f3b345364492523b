"""The label file of a review, saved at once, and its CSV export and import.

``LABELS.jsonl`` holds one row per labelled message, ``{"text", "label",
"context"?, "request_id"?}``, the label an intent name of the catalog or
``oos`` (out of scope): the file ``gatekeeper tune --data`` and ``eval --data``
read. A new label is appended and fsynced before the page hears back; a
changed or undone label rewrites the file atomically (temp file, fsync,
rename), so the file never holds two labels for one message and is never
half written. A file edited by hand may: the newest (last) label of a
message wins.

Skipped messages are no label ``tune`` could read, so they go to a file
beside it, ``LABELS.skipped.jsonl`` (``{"text", "context"?, "skipped": true|false}``,
appended, newest wins).

CSV (:func:`export_csv`, :func:`import_csv`), for teams that label in a
spreadsheet: UTF-8 with a byte-order mark, so Excel opens Chinese intact;
columns ``text,label,context`` (a JSON list of the earlier turns) and, for
reading only, the gate's decision. Unlabelled messages are exported with the
label ``skip``: replace it with an intent name or ``oos``; rows still ``skip``
are left alone on import.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from gatekeeper.catalog.labelled_data import OOS_LABEL
from gatekeeper.catalog.schema import intent_key, normalise_intent_name
from gatekeeper.errors import UserError
from gatekeeper.review.ordering import ReviewItem, message_key, parse_json_line

#: The label of a message looked at and left for later (never written to the label file).
SKIP = "skip"

#: CSV columns written by :func:`export_csv`; :func:`import_csv` reads ``text``, ``label`` and ``context``.
CSV_COLUMNS = ("text", "label", "context", "request_id", "gate_intent", "gate_decision", "score", "threshold")

#: Cells starting with these are formulas to a spreadsheet: written with a leading apostrophe, read without.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def skipped_path(labels_path: str | Path) -> Path:
    """The file of skipped messages beside ``labels_path`` (``labels.jsonl`` -> ``labels.skipped.jsonl``)."""
    path = Path(labels_path)
    return path.with_name(f"{path.stem}.skipped{path.suffix or '.jsonl'}")


@dataclass
class LabelStore:
    """The labels of a review: read from ``path`` (and its skipped file), saved at every change.

    Thread-safe. ``state(key)`` is a message's label (an intent name or
    ``oos``), :data:`SKIP`, or None.
    """

    path: Path
    _labels: dict[str, dict] = field(default_factory=dict)
    _skipped: dict[str, dict] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    #: Bumped at every change (the page's figures are cached per version).
    version: int = 0

    @classmethod
    def open(cls, path: str | Path) -> "LabelStore":
        """The store of ``path``; a missing file is an empty store (created at the first label)."""
        store = cls(Path(path))
        if store.path.is_dir():
            raise UserError(f"{store.path} is a directory; pass a file name such as {store.path / 'labels.jsonl'}")
        for number, row in _jsonl_rows(store.path):
            text, label = row.get("text"), row.get("label")
            if not isinstance(text, str) or not isinstance(label, str) or not label.strip():
                raise UserError(f'{store.path}:{number}: each row needs a "text" and a "label" (strings), such as '
                                '{"text": "我要退货", "label": "申请退货"}; fix or delete the row')
            key = message_key(text, _context(row, f"{store.path}:{number}"))
            store._labels.pop(key, None)  # the newest wins, and goes last
            store._labels[key] = {**row, "label": normalise_intent_name(label)}
        skip_file = skipped_path(store.path)
        for number, row in _jsonl_rows(skip_file):
            if not isinstance(row.get("text"), str):
                raise UserError(f'{skip_file}:{number}: each row needs a "text"; fix or delete the row')
            key = message_key(row["text"], _context(row, f"{skip_file}:{number}"))
            store._skipped.pop(key, None)
            if row.get("skipped", True) is not False:
                store._skipped[key] = row
        for key in store._labels:
            store._skipped.pop(key, None)
        return store

    @property
    def skip_path(self) -> Path:
        """Where skipped messages are recorded."""
        return skipped_path(self.path)

    def state(self, key: str) -> str | None:
        """The label of the message ``key``, :data:`SKIP`, or None."""
        with self._lock:
            if key in self._labels:
                return self._labels[key]["label"]
            return SKIP if key in self._skipped else None

    def rows(self) -> list[dict]:
        """Every labelled row, oldest label first, as written in the file."""
        with self._lock:
            return [dict(row) for row in self._labels.values()]

    def skipped_keys(self) -> list[str]:
        """Keys of the skipped messages."""
        with self._lock:
            return list(self._skipped)

    def counts(self) -> dict[str, int]:
        """Labelled rows in scope and out of scope, and skipped messages."""
        with self._lock:
            oos = sum(intent_key(row["label"]) == OOS_LABEL for row in self._labels.values())
            return {"in_scope": len(self._labels) - oos, "oos": oos, "skipped": len(self._skipped)}

    def set(self, text: str, context: Sequence[str], state: str | None, request_id: str | None = None) -> str | None:
        """Give the message a label (an intent name or ``oos``), :data:`SKIP` it, or (None) clear it; saved at once.

        Returns its previous state, for undo.
        """
        key = message_key(text, context)
        with self._lock:
            previous = self.state(key)
            if state == previous:
                return previous
            had_label = key in self._labels
            if state is None or state == SKIP:
                if had_label:
                    del self._labels[key]
                    self._rewrite()
            else:
                row = {"text": text, "label": state}
                if context:
                    row["context"] = list(context)
                if request_id:
                    row["request_id"] = request_id
                old = self._labels.pop(key, None)
                self._labels[key] = {**(old or {}), **row}
                if had_label:
                    self._rewrite()
                else:
                    _append(self.path, self._labels[key])
            if (state == SKIP) != (previous == SKIP):
                mark = {"text": text, **({"context": list(context)} if context else {}), "skipped": state == SKIP}
                _append(self.skip_path, mark)
                if state == SKIP:
                    self._skipped[key] = mark
                else:
                    self._skipped.pop(key, None)
            self.version += 1
            return previous

    def _rewrite(self) -> None:
        """Write every label to the file atomically: a temp file beside it, fsynced, renamed over it."""
        temp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        try:
            with temp.open("x", encoding="utf-8") as handle:
                handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in self._labels.values())
                handle.flush()
                os.fsync(handle.fileno())
            temp.replace(self.path)
            _fsync_dir(self.path.parent)
        except OSError as error:
            raise UserError(f"{self.path}: cannot save the labels ({error.strerror})") from None
        finally:
            temp.unlink(missing_ok=True)


def _append(path: Path, row: dict) -> None:
    """Append one JSON line and fsync it (and, for a new file, its folder)."""
    new = not path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if new:
            _fsync_dir(path.parent)
    except OSError as error:
        raise UserError(f"{path}: cannot save the label ({error.strerror}); point --labels at a writable file"
                        ) from None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _jsonl_rows(path: Path) -> Iterable[tuple[int, dict]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; convert it with iconv -f ENCODING -t UTF-8") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read the file ({error.strerror})") from None
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield number, parse_json_line(path, number, line)


def _context(row: dict, where: str) -> list[str]:
    context = row.get("context") or []
    if not isinstance(context, list) or not all(isinstance(turn, str) for turn in context):
        raise UserError(f'{where}: "context" must be a list of the earlier user turns (strings), such as '
                        '["我昨天买的鞋", "尺码不对"]')
    return [turn for turn in context if turn.strip()]


def resolve_label(label: str, intent_names: Sequence[str]) -> str | None:
    """``label`` as stored: the catalog's spelling of an intent, ``oos``, :data:`SKIP`, or None if it is unknown.

    Intent names match regardless of case and surrounding spaces, as in ``tune`` and ``eval``.
    """
    key = intent_key(label)
    if key == OOS_LABEL:
        return OOS_LABEL
    for name in intent_names:
        if intent_key(name) == key:
            return name
    return SKIP if key == SKIP else None


# ---------------------------------------------------------------- CSV

def export_csv(items: Sequence[ReviewItem], store: LabelStore) -> bytes:
    """Every message of the review (in review order), then labelled rows not in the log, as CSV bytes.

    UTF-8 with a byte-order mark and CRLF line ends, as Excel expects; the
    label of an unlabelled or skipped message is ``skip``.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    seen = set()
    for item in items:
        seen.add(item.key)
        label = store.state(item.key)
        decision = "" if item.accepted is None else ("accepted" if item.accepted else "rejected")
        writer.writerow(_cells(item.text, label or SKIP, item.context, item.request_id, item.intent or "", decision,
                               item.score, item.threshold))
    for row in store.rows():
        context = row.get("context") or []
        if message_key(row["text"], context) in seen:
            continue
        writer.writerow(_cells(row["text"], row["label"], context, row.get("request_id"), "", "", None, None))
    return ("\ufeff" + buffer.getvalue()).encode("utf-8")


def _cells(text: str, label: str, context: Sequence[str], request_id: str | None, intent: str, decision: str,
           score: float | None, threshold: float | None) -> list[str]:
    return [_safe_cell(text), label, json.dumps(list(context), ensure_ascii=False) if context else "",
            _safe_cell(request_id or ""), intent, decision, "" if score is None else f"{score:.6f}",
            "" if threshold is None else f"{threshold:.6f}"]


def _safe_cell(value: str) -> str:
    """A cell a spreadsheet shows as text: an apostrophe before what it would take for a formula."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def _unsafe_cell(value: str) -> str:
    return value[1:] if value.startswith("'") and value[1:].startswith(_FORMULA_START) else value


@dataclass
class ImportSummary:
    """What :func:`import_csv` merged."""

    #: Rows whose label was new or different, and so saved.
    changed: int
    #: Rows whose label was already the same.
    unchanged: int
    #: Rows still labelled ``skip``, left alone.
    skipped: int
    warnings: list[str]


def import_csv(path: str | Path, store: LabelStore, intent_names: Sequence[str],
               items: Sequence[ReviewItem] = ()) -> ImportSummary:
    """Merge the labels of a CSV (or TSV, JSON lines) file into ``store``; the file's label wins.

    Read with :func:`gatekeeper.catalog.labelled_data.read_labelled` (UTF-8 with or
    without BOM, UTF-16, GB18030, the same errors as ``tune``): columns
    ``text`` and ``label``, and optionally ``context`` (a JSON list of the
    earlier turns). A row without context matches the log's message with
    that text when only one has it. Every label must be an intent of the
    catalog, ``oos`` or ``skip``; otherwise nothing is merged and the error
    lists each unknown label with the nearest intent names.
    """
    from gatekeeper.catalog.labelled_data import read_labelled

    data = read_labelled(path)
    contexts = _contexts(path)
    resolved, unknown = [], {}
    for row in data.rows:
        label = resolve_label(row.label, intent_names)
        if label is None:
            unknown.setdefault(row.label, []).append(row.line)
        resolved.append(label)
    if unknown:
        raise UserError(_unknown_labels(path, unknown, intent_names))
    by_text: dict[str, list[ReviewItem]] = {}
    for item in items:
        by_text.setdefault(item.text.strip(), []).append(item)
    keys = {item.key: item for item in items}
    changed = unchanged = skipped = 0
    for row, label in zip(data.rows, resolved):
        if label == SKIP:
            skipped += 1
            continue
        text = _unsafe_cell(row.text)
        row_context = getattr(row, "context", ())  # JSON lines carry it; CSV has the column read below
        context = list(row_context) if row_context else contexts.get(row.line)
        request_id = None
        if context is None:
            same_text = by_text.get(text.strip(), [])
            match = same_text[0] if len(same_text) == 1 else keys.get(message_key(text))
            context = match.context if match else []
            text = match.text if match else text
            request_id = match.request_id if match else None
        else:
            match = keys.get(message_key(text, context))
            request_id = match.request_id if match else None
        if store.state(message_key(text, context)) == label:
            unchanged += 1
            continue
        store.set(text, context, label, request_id)
        changed += 1
    return ImportSummary(changed=changed, unchanged=unchanged, skipped=skipped, warnings=data.warnings)


def _contexts(path: str | Path) -> dict[int, list[str]]:
    """line -> context of the rows of a CSV whose ``context`` cell is not empty (none without the column)."""
    from gatekeeper.catalog.labelled_data import read_labelled

    try:
        # The same reader, with the context column read as the text: rows without context are dropped.
        data = read_labelled(path, text_field="context")
    except UserError:  # no context column, or no row with context: read_labelled already passed on the rest
        return {}
    contexts = {}
    for row in data.rows:
        try:
            context = json.loads(row.text)
        except ValueError:
            context = None
        if not isinstance(context, list) or not all(isinstance(turn, str) for turn in context):
            raise UserError(f"{path}:{row.line}: the context must be a JSON list of the earlier user turns, such as "
                            '["我昨天买的鞋", "尺码不对"]; leave the cell empty for a message without context')
        contexts[row.line] = [turn for turn in context if turn.strip()]
    return contexts


def _unknown_labels(path: str | Path, unknown: dict[str, list[int]], names: Sequence[str]) -> str:
    lines = []
    for label, rows in unknown.items():
        near = difflib.get_close_matches(label, list(names), n=2, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(n) for n in near)}?" if near else "no intent has a similar name"
        where = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        lines.append(f"  {label!r}: {len(rows)} row{'s' if len(rows) > 1 else ''} (line{'s' if len(rows) > 1 else ''} "
                     f"{where}); {hint}")
    return (f"{path}: {len(unknown)} label{'s are' if len(unknown) > 1 else ' is'} not an intent of the catalog:\n"
            + "\n".join(lines) + f"\nfix: write an intent name of the catalog, {OOS_LABEL} for an off-topic message, "
            f"or {SKIP} to leave a row unlabelled; nothing was imported")
