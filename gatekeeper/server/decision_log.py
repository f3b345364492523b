"""Sampled decision logging to size-rotated JSON-lines files, with the text redacted, kept whole or hashed.

Each row is one JSON object:

* ``ts`` (ISO 8601 UTC) and ``request_id`` (the ``x-request-id`` of the response);
* ``catalog``, ``fingerprint`` (catalog + model) and ``tuning`` (the
  :func:`~gatekeeper.store.tuning_file.tuning_version` in force, or null): which gate decided;
* ``endpoint``, ``mode`` (enforce/shadow), ``action`` (the gate's route:
  forward, reply, handoff or reject) and ``outcome`` (what the sidecar did:
  accepted, rejected, shadow-rejected);
* the gate's ``accepted``, ``intent``, ``score``, ``threshold``, ``reason``,
  ``followup`` and the message's ``language``;
* ``text_mode``, then the latest message as the gate saw it (normalised) and
  ``context``, the earlier user turns it was decided with (oldest first),
  per ``text_mode``:

  * ``redact`` (default): ``text`` and ``context`` with phone, e-mail, ID and
    card numbers and long digit runs masked (:mod:`gatekeeper.redaction`);
  * ``full``: ``text`` and ``context`` as they are;
  * ``hash``: only ``text_sha256`` and ``context_sha256`` (to join logs
    without storing text). Nothing to review or retune on: ``gatekeeper tune``
    refuses such rows.
* ``user``: the sha256 of the request's OpenAI ``user`` field, or null.

Rows with ``text`` are what ``gatekeeper tune`` reads back: add a ``label``
(an intent, or ``oos``) and the row, context included, is scored the way the
sidecar decided it. A request whose encoder call failed (fail-open,
fail-closed) has no decision and no row; ``gatekeeper_embedding_failures_total``
counts it.

The file is rotated by size with the standard library's
:class:`~logging.handlers.RotatingFileHandler`: at ``max_bytes`` it becomes
``decisions.jsonl.1`` (the older ones ``.2`` ... up to ``backups``), and a new
file is started; ``max_bytes=0`` never rotates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import sys
from datetime import datetime, timezone
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Sequence

from gatekeeper.core.router import Decision
from gatekeeper.core.text import normalise
from gatekeeper.errors import UserError
from gatekeeper.gate import Gate
from gatekeeper.redaction import redact
from gatekeeper.server.request_id import current_request_id

log = logging.getLogger(__name__)


class DecisionLog:
    """Appends a sampled share of decisions to a size-rotated JSONL file."""

    def __init__(self, path: str | Path, sample: float = 1.0, text_mode: str = "redact", max_bytes: int = 0,
                 backups: int = 5, rng: random.Random | None = None):
        self.path = Path(path)
        self.sample = sample
        self.text_mode = text_mode
        self._rng = rng or random.Random()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handler = _RowHandler(self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        except OSError as error:
            raise UserError(f"decision_log {self.path}: cannot append to it ({error.strerror}); "
                            "point decision_log at a writable file") from None

    def write(self, gate: Gate, decision: Decision, *, endpoint: str, mode: str, outcome: str, language: str,
              followup: bool = False, context: Sequence[str] = (), user: object = None) -> None:
        """Log one decision of ``gate`` if it falls in the sample; ``context`` are the earlier user turns it was
        decided with, ``user`` the request's OpenAI ``user`` field (logged hashed)."""
        if self.sample < 1.0 and self._rng.random() >= self.sample:
            return
        turns = [normalise(turn, gate.catalog_.defaults.max_chars)[0] for turn in context]
        row: dict[str, object] = {
            "ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "request_id": current_request_id(),
            "catalog": gate.catalog_.name, "fingerprint": gate.artifacts_.fingerprint, "tuning": gate.tuning_version_,
            "endpoint": endpoint, "mode": mode, "action": decision.action, "outcome": outcome,
            "accepted": decision.accepted, "intent": decision.intent, "score": decision.score,
            "threshold": decision.threshold, "reason": decision.reason, "followup": followup, "language": language,
            "text_mode": self.text_mode, **self._text_fields(decision.text, turns),
            "user": _sha256(user) if isinstance(user, str) and user else None,
        }
        self._handler.handle(logging.makeLogRecord({"msg": json.dumps(row, ensure_ascii=False)}))

    def close(self) -> None:
        """Flush and close the file."""
        self._handler.close()

    def _text_fields(self, text: str, context: list[str]) -> dict[str, object]:
        if self.text_mode == "hash":
            return {"text_sha256": _sha256(text), "context_sha256": [_sha256(turn) for turn in context]}
        if self.text_mode == "redact":
            return {"text": redact(text), "context": [redact(turn) for turn in context]}
        return {"text": text, "context": context}


class _RowHandler(RotatingFileHandler):
    """Writes one row per record; a failed write (a full disk) is logged, and must not fail the request."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - the logging module's naming
        log.warning("decision_log_write_failed", extra={"path": self.baseFilename, "error": repr(sys.exc_info()[1])})


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
