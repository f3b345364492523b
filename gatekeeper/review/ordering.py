"""The messages to review: read from a decision log (or any JSONL of messages), decided, ordered.

A row needs ``text`` (a decision log written with ``decision_log_text``
``redact`` or ``full`` has it; a ``hash`` log is refused with that fix); it
may carry ``context`` (the earlier user turns, oldest first) and the gate's
own fields as the decision log writes them
(``score``, ``threshold``, ``intent``, ``accepted``, ``mode``, ``followup``,
``request_id``). Rows without a ``score`` and ``threshold`` are decided by
the catalog's gate (with their context, as the sidecar would). Rows with the
same text and context are one message to label (``count`` says how often it
came).

Order (:func:`order_items`), most worth a label first:

1. **near the threshold**: ``|score - threshold| <= near``, nearest first; a
   label there moves the threshold;
2. **rejected in enforce mode**: customers who got the canned reply (a row
   without ``mode`` counts as enforce, the sidecar's default);
3. **follow-ups**: accepted only thanks to the earlier turns;
4. the rest.

Within each group the message nearest its threshold comes first, then the
log's order.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from gatekeeper.errors import UserError

#: ``|score - threshold|`` up to which a message counts as near the threshold (default of ``--near``).
DEFAULT_NEAR = 0.1

#: Order groups, most worth a label first.
NEAR, REJECTED, FOLLOWUP, REST = "near", "rejected", "followup", "rest"
GROUPS = (NEAR, REJECTED, FOLLOWUP, REST)

#: Texts decided per encoder call.
DECIDE_BATCH = 256

#: The fix for a log without message texts (a decision log written with ``decision_log_text: hash``).
NO_TEXT_FIX = ("the log keeps no message text (a decision log written with decision_log_text=hash keeps only a "
               "hash): the log must be written with decision_log_text redact or full "
               "(GATEKEEPER_DECISION_LOG_TEXT=redact, the default, or full); switch the sidecar's setting, collect "
               "traffic again and review that log")


@dataclass
class ReviewItem:
    """One message to label, with the gate's decision on it."""

    #: Position in review order (0 = most worth a label), set by :func:`order_items`.
    id: int
    #: Identity of the message (text and context), the key of its label (:func:`message_key`).
    key: str
    text: str
    context: list[str]
    score: float | None
    threshold: float | None
    intent: str | None
    accepted: bool | None
    mode: str | None
    followup: bool
    request_id: str | None
    #: 1-based line of its first row in the log.
    line: int
    #: Rows of the log with this text and context.
    count: int = 1
    #: True if the log had no decision and the catalog's gate decided it when the review started.
    decided_here: bool = False
    #: One of :data:`GROUPS`, set by :func:`order_items`.
    group: str = REST

    @property
    def margin(self) -> float | None:
        """``score - threshold``, or None without both."""
        if self.score is None or self.threshold is None:
            return None
        return self.score - self.threshold

    def to_dict(self) -> dict:
        """JSON-ready form for the page."""
        margin = self.margin
        return {"id": self.id, "key": self.key, "text": self.text, "context": self.context,
                "score": self.score, "threshold": self.threshold,
                "margin": None if margin is None else round(margin, 6), "intent": self.intent,
                "accepted": self.accepted, "mode": self.mode, "followup": self.followup,
                "request_id": self.request_id, "line": self.line, "count": self.count,
                "decided_here": self.decided_here, "group": self.group}


@dataclass
class LogMessages:
    """The messages of a log, one item per distinct text and context, and the warnings met reading it."""

    items: list[ReviewItem]
    warnings: list[str] = field(default_factory=list)

    @property
    def undecided(self) -> list[ReviewItem]:
        """Items the log has no decision for."""
        return [item for item in self.items if item.score is None or item.threshold is None]


def message_key(text: str, context: Sequence[str] = ()) -> str:
    """The identity of a message to label: its text and its earlier turns, surrounding spaces ignored."""
    return json.dumps([text.strip(), [turn.strip() for turn in context]], ensure_ascii=False)


def read_messages(path: str | Path) -> LogMessages:
    """The messages of a JSONL decision log or message file, in log order, duplicates merged.

    Raises :class:`UserError` naming the file, the line and the fix: a line
    that is not a JSON object, a field of the wrong type, or a log without any
    message text (a hash-mode decision log; see :data:`NO_TEXT_FIX`).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; pass a decision log or a JSONL file of messages "
                        '(one {"text": ...} object per line)') from None
    except OSError as error:
        raise UserError(f"{path}: cannot read the file ({error.strerror})") from None
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text; decision logs are UTF-8, convert the file with "
                        f"iconv -f ENCODING -t UTF-8") from None
    by_key: dict[str, ReviewItem] = {}
    no_text: list[int] = []
    empty: list[int] = []
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028
        if not line.strip():
            continue
        row = parse_json_line(path, number, line)
        message = row.get("text")
        if message is None:
            no_text.append(number)
            continue
        if not isinstance(message, str):
            raise UserError(f'{path}:{number}: "text" must be a string, got {json.dumps(message)[:40]}')
        if not message.strip():
            empty.append(number)
            continue
        item = _item(path, number, row, message)
        first = by_key.setdefault(item.key, item)
        if first is not item:
            first.count += 1
    warnings = []
    if no_text and not by_key:
        raise UserError(f"{path}: no row has a \"text\" field (line {no_text[0]}"
                        f"{' and the others' if len(no_text) > 1 else ''}); {NO_TEXT_FIX}")
    if no_text:
        warnings.append(f"{path}: skipped {_rows(no_text)} without a \"text\" field ({_lines(no_text)}); "
                        f"{NO_TEXT_FIX}")
    if empty:
        warnings.append(f"{path}: skipped {_rows(empty)} with an empty text ({_lines(empty)})")
    if not by_key:
        raise UserError(f'{path}: no messages; each line must be a JSON object with a "text" field such as '
                        '{"text": "我要退货"}')
    return LogMessages(list(by_key.values()), warnings)


def parse_json_line(path: Path, number: int, line: str) -> dict:
    """Line ``number`` of the JSONL file ``path`` as an object; a :class:`UserError` naming file and line if not."""
    where = f"{path}:{number}"
    try:
        row = json.loads(line)
    except ValueError as error:
        raise UserError(f"{where}: not valid JSON ({error.msg} at column {error.colno}); each line must be one "
                        'JSON object such as {"text": "我要退货"}') from None
    if not isinstance(row, dict):
        raise UserError(f'{where}: expected a JSON object such as {{"text": "我要退货"}}, got {line.strip()[:40]}')
    return row


def _item(path: Path, number: int, row: dict, text: str) -> ReviewItem:
    where = f"{path}:{number}"
    context = row.get("context") or []
    if not isinstance(context, list) or not all(isinstance(turn, str) for turn in context):
        raise UserError(f'{where}: "context" must be a list of the earlier user turns (strings, oldest first) '
                        'such as ["我昨天买的鞋", "尺码不对"]')
    context = [turn for turn in context if turn.strip()]
    score, threshold = _number(row, "score", where), _number(row, "threshold", where)
    accepted = row.get("accepted")
    if accepted is not None and not isinstance(accepted, bool):
        raise UserError(f'{where}: "accepted" must be true or false')
    if accepted is None and score is not None and threshold is not None:
        accepted = score >= threshold
    intent, mode, request_id = (_string(row, name, where) for name in ("intent", "mode", "request_id"))
    return ReviewItem(id=0, key=message_key(text, context), text=text, context=context, score=score,
                      threshold=threshold, intent=intent, accepted=accepted, mode=mode,
                      followup=row.get("followup") is True, request_id=request_id, line=number)


def _number(row: dict, name: str, where: str) -> float | None:
    value = row.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f'{where}: "{name}" must be a number, got {json.dumps(value)[:40]}')
    return float(value)


def _string(row: dict, name: str, where: str) -> str | None:
    value = row.get(name)
    if value is None:
        return None
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise UserError(f'{where}: "{name}" must be a string, got {json.dumps(value)[:40]}')
    return str(value)


def decide_missing(gate, items: Sequence[ReviewItem], progress: Callable[[int], None] | None = None
                   ) -> list[ReviewItem]:
    """``items`` with every undecided one decided by ``gate`` (a :class:`gatekeeper.gate.Gate`).

    A message without context is decided alone; one with context as the
    sidecar decides the latest turn of a conversation
    (:meth:`gatekeeper.gate.Gate.decide_turn` with the default follow-up policy).
    """
    undecided = [i for i, item in enumerate(items) if item.score is None or item.threshold is None]
    result = list(items)
    alone = [i for i in undecided if not items[i].context]
    for start in range(0, len(alone), DECIDE_BATCH):
        chunk = alone[start:start + DECIDE_BATCH]
        for i, decision in zip(chunk, gate.decide_many([items[i].text for i in chunk])):
            result[i] = _decided(items[i], decision, followup=False)
        if progress:
            progress(len(chunk))
    for i in (i for i in undecided if items[i].context):
        turn = gate.decide_turn(items[i].text, items[i].context)
        result[i] = _decided(items[i], turn.decision, followup=turn.followup)
        if progress:
            progress(1)
    return result


def _decided(item: ReviewItem, decision, followup: bool) -> ReviewItem:
    return replace(item, score=float(decision.score), threshold=float(decision.threshold), intent=decision.intent,
                   accepted=bool(decision.accepted), followup=followup, decided_here=True)


def group_of(item: ReviewItem, near: float) -> str:
    """Which of :data:`GROUPS` ``item`` belongs to (see the module doc)."""
    margin = item.margin
    if margin is not None and abs(margin) <= near:
        return NEAR
    if item.accepted is False and (item.mode or "enforce") == "enforce":
        return REJECTED
    if item.followup:
        return FOLLOWUP
    return REST


def order_items(items: Sequence[ReviewItem], near: float = DEFAULT_NEAR) -> list[ReviewItem]:
    """``items`` in review order (see the module doc), each with its ``id`` (position) and ``group`` set."""
    def rank(item: ReviewItem) -> tuple:
        group = group_of(item, near)
        margin = item.margin
        return GROUPS.index(group), math.inf if margin is None else abs(margin), item.line

    ordered = sorted(items, key=rank)
    return [replace(item, id=position, group=group_of(item, near)) for position, item in enumerate(ordered)]


def _rows(lines: list[int]) -> str:
    return f"{len(lines)} row{'s' if len(lines) > 1 else ''}"


def _lines(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:5]))
    return f"line{'s' if len(numbers) > 1 else ''} {shown}{', ...' if len(numbers) > 5 else ''}"
