"""The review page's server: a FastAPI app over one :class:`ReviewSession`.

Routes (all on the loopback address by default; the ``Host`` header must name it):

* ``GET /``: the page (``static/index.html``: plain HTML, CSS and JS, no build step);
* ``GET /api/state``: the messages in review order, with their labels, the intents and the counts;
* ``POST /api/label`` ``{"id", "action": "label"|"oos"|"skip", "intent"?}``: label a message, saved at once;
* ``POST /api/undo``: undo this session's latest label;
* ``GET /api/stats``: counts, the current thresholds' figures on the labelled rows, the ``tune`` preview;
* ``GET /export.csv``: every message and label as CSV (UTF-8 with BOM, for Excel).

POST bodies must be JSON (``content-type: application/json``): a page of
another site cannot send those to this server without a CORS preflight, which
it never grants.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from gatekeeper.catalog.labelled_data import OOS_LABEL
from gatekeeper.errors import UserError
from gatekeeper.review.labels import SKIP, LabelStore, export_csv, resolve_label
from gatekeeper.review.ordering import DEFAULT_NEAR, ReviewItem, decide_missing, order_items, read_messages

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"


@dataclass
class ReviewSession:
    """A log under review: its ordered messages, the gate that scores them, the label store."""

    gate: object  # gatekeeper.gate.Gate
    items: list[ReviewItem]
    store: LabelStore
    log_path: str
    catalog_path: str
    policy: object  # gatekeeper.measure.tune.Policy
    near: float = DEFAULT_NEAR
    #: In-scope and off-topic rows the preview needs, as ``tune --min-rows`` (None: tune's default).
    min_rows: int | None = None
    warnings: list[str] = field(default_factory=list)
    #: This session's label changes, newest last: (item id, previous state).
    _history: list[tuple[int, str | None]] = field(default_factory=list)
    #: Guards the label store and the history; label changes never wait for the figures.
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: One computation of the figures at a time (they use the gate).
    _stats_lock: threading.Lock = field(default_factory=threading.Lock)
    _stats: tuple[int, dict] | None = None

    @classmethod
    def open(cls, log_path: str | Path, catalog_path: str | Path, labels_path: str | Path, gate=None,
             policy=None, near: float = DEFAULT_NEAR, min_rows: int | None = None,
             progress: Callable[[int], None] | None = None) -> "ReviewSession":
        """Read the log and the labels, decide the rows the log has no decision for, order the messages.

        ``gate`` is loaded from ``catalog_path`` when not given. Query vectors
        are cached in memory, so the figures are recomputed quickly after each label.
        """
        from gatekeeper.embedders.query_cache import QueryCachingEmbedder
        from gatekeeper.measure.tune import Policy

        messages = read_messages(log_path)
        store = LabelStore.open(labels_path)
        if gate is None:
            from gatekeeper.commands.common import load_gate
            gate = load_gate(str(catalog_path))
        if not isinstance(gate.embedder_, QueryCachingEmbedder):
            gate = gate.with_embedder(QueryCachingEmbedder(gate.embedder_))
        items = order_items(decide_missing(gate, messages.items, progress), near)
        return cls(gate=gate, items=items, store=store, log_path=str(log_path), catalog_path=str(catalog_path),
                   policy=policy or Policy(), near=near, min_rows=min_rows, warnings=messages.warnings)

    # ------------------------------------------------------------ reading

    def intents(self) -> list[dict]:
        """The catalog's intents for the picker: name, description, and whether a built-in pack brought it."""
        packs = set(self.gate.catalog_.pack_intents)
        return [{"name": intent.name, "description": intent.description, "pack": intent.name in packs}
                for intent in self.gate.catalog_.intents]

    def state(self) -> dict:
        """Everything the page shows at load."""
        return {
            "files": {"log": self.log_path, "catalog": self.catalog_path, "labels": str(self.store.path),
                      "skipped": str(self.store.skip_path)},
            "near": self.near,
            "intents": self.intents(),
            "items": [{**item.to_dict(), "state": self.store.state(item.key)} for item in self.items],
            "counts": self.counts(),
            "warnings": self.warnings,
            "can_undo": bool(self._history),
        }

    def counts(self) -> dict:
        """Labelled rows in scope / off topic, skipped messages, and messages of this log still to label."""
        states = [self.store.state(item.key) for item in self.items]
        return {**self.store.counts(), "messages": len(self.items),
                "messages_done": sum(state is not None for state in states),
                "messages_left": sum(state is None for state in states)}

    # ------------------------------------------------------------ writing

    def label(self, item_id: int, action: str, intent: str | None = None) -> dict:
        """Label message ``item_id`` (``action`` label with ``intent``, oos or skip); saved before returning."""
        item = self._item(item_id)
        if action == "oos":
            state = OOS_LABEL
        elif action == "skip":
            state = SKIP
        elif action == "label":
            state = resolve_label(intent or "", self.gate.catalog_.intent_names())
            if state in (None, SKIP):
                raise LookupError(f"{intent!r} is not an intent of the catalog {self.catalog_path}")
        else:
            raise LookupError(f"unknown action {action!r}; use label, oos or skip")
        with self._lock:
            previous = self.store.set(item.text, item.context, state, item.request_id)
            if previous != state:
                self._history.append((item.id, previous))
        return self._changed(item)

    def undo(self) -> dict | None:
        """Put back the state of the message changed last in this session; None if nothing is left to undo."""
        with self._lock:
            if not self._history:
                return None
            item_id, previous = self._history.pop()
            item = self.items[item_id]
            self.store.set(item.text, item.context, previous, item.request_id)
        return self._changed(item)

    def _changed(self, item: ReviewItem) -> dict:
        return {"item": {"id": item.id, "state": self.store.state(item.key)}, "counts": self.counts(),
                "can_undo": bool(self._history)}

    def _item(self, item_id: int) -> ReviewItem:
        if type(item_id) is not int or not 0 <= item_id < len(self.items):
            raise KeyError(f"no message {item_id!r}")
        return self.items[item_id]

    # ------------------------------------------------------------ figures

    def rows(self) -> list[tuple]:
        """The labelled rows as ``eval`` and ``tune`` read the label file: (text, label[, context])."""
        return [(row["text"], row["label"], tuple(row["context"])) if row.get("context")
                else (row["text"], row["label"]) for row in self.store.rows()]

    def stats(self) -> dict:
        """Counts, the current thresholds' figures on the labelled rows, and the ``tune`` preview.

        Cached until the labels change.
        """
        with self._stats_lock:
            with self._lock:
                version, rows, counts = self.store.version, self.rows(), self.counts()
            cached = self._stats
            if cached is not None and cached[0] == version:
                return cached[1]
            result = {"counts": counts, "rows": len(rows), "current": self._current(rows),
                      "preview": self._preview(rows), "policy": _policy_dict(self.policy)}
            self._stats = (version, result)
            return result

    def _current(self, rows: list[tuple]) -> dict | None:
        """False-reject rate and off-topic recall of the gate as it is, on the labelled rows."""
        if not rows:
            return None
        from gatekeeper.measure.evaluation import metrics, score_rows

        try:
            scored = score_rows(self.gate, rows, {OOS_LABEL}, show_progress=False, source=str(self.store.path))
        except UserError as error:
            return {"error": str(error)}
        figures = metrics(scored, self.gate.router_.thresholds.per_intent)
        n_in = figures["n"] - figures["n_oos"]
        frr, recall = figures["false_reject_rate"], figures["oos_recall"]
        return {"n": figures["n"], "n_in_scope": n_in, "n_oos": figures["n_oos"],
                "false_reject_rate": frr, "false_rejects": None if frr is None else round(frr * n_in),
                "oos_recall": recall, "oos_caught": None if recall is None else round(recall * figures["n_oos"]),
                "threshold": self.gate.router_.thresholds.global_threshold,
                "threshold_source": self.gate.router_.thresholds.source}

    def _preview(self, rows: list[tuple]) -> dict:
        """What ``gatekeeper tune --dry-run`` would change with the session's policy, or the reason it cannot tell."""
        if not rows:
            return {"error": "no labelled rows yet"}
        try:
            from gatekeeper.measure.tune import preview
        except ImportError:
            return {"error": "this version of gatekeeper has no tune preview (gatekeeper.measure.tune.preview)"}
        try:
            extra = {} if self.min_rows is None else {"min_rows": self.min_rows}
            result = preview(self.gate, rows, self.policy, per_intent=False, source=str(self.store.path), **extra)
        except UserError as error:
            return {"error": str(error)}
        except Exception as error:  # noqa: BLE001 - the page shows it; the log has the traceback
            log.exception("review_preview_failed")
            return {"error": f"the preview failed: {error}"}
        return {"before": _jsonable(result.before), "after": _jsonable(result.after), "rows": result.rows,
                "in_scope": result.in_scope, "off_topic": result.off_topic}

    def export_csv(self) -> bytes:
        """:func:`gatekeeper.review.labels.export_csv` of this session."""
        return export_csv(self.items, self.store)


def _policy_dict(policy: object) -> dict:
    from dataclasses import asdict, is_dataclass

    return asdict(policy) if is_dataclass(policy) else {}


def _jsonable(value: object) -> object:
    """Plain JSON types of a preview's figures (numpy numbers and arrays included)."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if isinstance(value, float) and value != value:  # NaN
        return None
    return value


def create_app(session: ReviewSession, host: str = "127.0.0.1"):
    """The FastAPI app of ``session``; requests must name ``host`` (or localhost) in their ``Host`` header."""
    app = FastAPI(title="gatekeeper review", docs_url=None, redoc_url=None, openapi_url=None)
    loopback = {"127.0.0.1", "localhost", "::1", "[::1]"}
    wildcard = host in ("0.0.0.0", "::", "")
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=["*"] if wildcard else sorted(loopback | {host}))
    no_store = {"cache-control": "no-store"}

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=no_store)

    async def json_body(request: Request) -> dict | JSONResponse:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return error(415, "send JSON (content-type: application/json)")
        try:
            body = await request.json()
        except ValueError:
            return error(400, "the body is not valid JSON")
        return body if isinstance(body, dict) else error(400, "the body must be a JSON object")

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=no_store)

    @app.get("/api/state")
    def state() -> JSONResponse:
        return JSONResponse(session.state(), headers=no_store)

    @app.get("/api/stats")
    def stats() -> JSONResponse:
        return JSONResponse(session.stats(), headers=no_store)

    @app.post("/api/label")
    async def label(request: Request) -> JSONResponse:
        body = await json_body(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            result = await run_in_threadpool(session.label, body.get("id"), body.get("action"), body.get("intent"))
        except KeyError as missing:
            return error(404, str(missing.args[0]))
        except LookupError as bad:
            return error(400, str(bad))
        except UserError as failed:
            return error(500, str(failed))
        return JSONResponse(result, headers=no_store)

    @app.post("/api/undo")
    async def undo(request: Request) -> JSONResponse:
        body = await json_body(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            result = await run_in_threadpool(session.undo)
        except UserError as failed:
            return error(500, str(failed))
        return JSONResponse(result or {"item": None, "counts": session.counts(), "can_undo": False},
                            headers=no_store)

    @app.get("/export.csv")
    def export() -> Response:
        name = f"{Path(session.store.path).stem}.csv"
        return Response(session.export_csv(), media_type="text/csv; charset=utf-8",
                        headers={**no_store, "content-disposition":
                                 f"attachment; filename=\"labels.csv\"; filename*=UTF-8''{quote(name)}"})

    return app
