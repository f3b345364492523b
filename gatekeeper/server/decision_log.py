"""Sampled decision logging to JSON lines, with the message text hashed, left out or kept.

Each row: ``ts`` (ISO 8601 UTC), ``endpoint``, ``mode``, ``action`` (what the
sidecar did: accepted, rejected, shadow-rejected), the gate's ``accepted``, ``intent``, ``score``, ``threshold``, ``reason``,
``followup``, ``language``, and the text per ``text_mode``:

* ``keep``: ``"text"`` (the normalised message, as the gate saw it);
* ``hash``: ``"text_sha256"`` of that text (join logs without storing them);
* ``redact``: no text at all, only ``"text_chars"``.

A request whose encoder call failed (fail-open, fail-closed) has no decision
and no row; ``gatekeeper_embedding_failures_total`` counts it.

Rows with ``text`` are what ``gatekeeper tune`` reads back as unlabelled
traffic; label them (add ``"label"``) to use them as validation data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from datetime import datetime, timezone
from pathlib import Path

from gatekeeper.errors import UserError
from gatekeeper.router import Decision

log = logging.getLogger(__name__)


class DecisionLog:
    """Appends a sampled share of decisions to a JSONL file."""

    def __init__(self, path: str | Path, sample: float = 1.0, text_mode: str = "hash",
                 rng: random.Random | None = None):
        self.path = Path(path)
        self.sample = sample
        self.text_mode = text_mode
        self._rng = rng or random.Random()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8", buffering=1)
        except OSError as error:
            raise UserError(f"decision_log {self.path}: cannot append to it ({error.strerror}); "
                            "point decision_log at a writable file") from None

    def write(self, decision: Decision, *, endpoint: str, mode: str, action: str, language: str,
              followup: bool = False) -> None:
        """Log one decision if it falls in the sample."""
        if self.sample < 1.0 and self._rng.random() >= self.sample:
            return
        row: dict[str, object] = {"ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
        row.update(self._text_fields(decision.text))
        row.update(endpoint=endpoint, mode=mode, action=action, accepted=decision.accepted,
                   intent=decision.intent, score=decision.score, threshold=decision.threshold,
                   reason=decision.reason, followup=followup, language=language)
        try:
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        except OSError as error:  # a full disk must not fail requests
            log.warning("decision_log_write_failed", extra={"path": str(self.path), "error": str(error)})

    def close(self) -> None:
        """Flush and close the file."""
        self._file.close()

    def _text_fields(self, text: str) -> dict[str, object]:
        if self.text_mode == "keep":
            return {"text": text}
        if self.text_mode == "hash":
            return {"text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
        return {"text_chars": len(text)}
