"""The gate: a catalog fitted into an index and a scorer, deciding messages and conversations.

:class:`Gate` follows scikit-learn's estimator conventions: the constructor
takes the parameters (the embedder, its threads), :meth:`Gate.fit` reads a
catalog and sets the fitted state (attributes ending in ``_``) and returns the
gate, :meth:`Gate.tune` refits the thresholds on labelled rows, and
:meth:`Gate.save` / :meth:`Gate.load` write and read one folder with one
manifest. The CLI, the sidecar, the benchmarks and the tests all go through it:
catalog -> embed -> index -> score -> decide.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import secrets
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Coroutine, Iterable, Mapping, Sequence, TypeVar

import numpy as np

from gatekeeper import __version__
from gatekeeper.catalog.loader import load_catalog
from gatekeeper.catalog.schema import Catalog
from gatekeeper.core.calibrator import Calibrator
from gatekeeper.core.fit import Artifacts, ProgressCallback, build_artifacts
from gatekeeper.core.router import REASON_EMPTY, REASON_NOT_TEXT, Decision, Router
from gatekeeper.core.scoring import HeadScorer
from gatekeeper.core.text import normalise
from gatekeeper.embedders import Embedder, make_embedder
from gatekeeper.errors import UserError
from gatekeeper.store.artifacts import load_artifacts, load_or_build, save_artifacts
from gatekeeper.store.tuning_file import Tuning, load_tuning, resolve_thresholds, tuning_version

if TYPE_CHECKING:
    from gatekeeper.catalog.labelled_data import Row
    from gatekeeper.core.conversation import TurnDecision
    from gatekeeper.core.conversation_model import FollowupPolicy
    from gatekeeper.measure.tune import Policy, TunePreview

#: :attr:`Gate.tuning_status_`: no tuning; its thresholds in force; re-derived from its stored rows after a
#: catalog change; or stale: not re-derivable, so the catalog's own or auto thresholds are in force.
TUNING_NONE, TUNING_TUNED, TUNING_REDERIVED, TUNING_STALE = "none", "tuned", "re-derived", "stale"
#: What :meth:`Gate.save` writes first in its folder: the manifest naming everything else.
MANIFEST = "gate.json"
_FORMAT = "gatekeeper-gate"
_FORMAT_VERSION = 1
_CATALOG_FILE = "catalog.json"
_TUNING_FILE = "tuning.json"

Result = TypeVar("Result")
#: A message prepared for scoring: (clean text, truncated, reason it cannot be scored or None).
Prepared = tuple[str, bool, "str | None"]


class NotFittedError(UserError):
    """A gate was asked to decide, tune or save before :meth:`Gate.fit` or :meth:`Gate.load`."""


class Gate:
    """An intent gate: fit it on a catalog, then decide messages and conversations.

    Parameters (kept as given, as in scikit-learn):

    * ``embedder`` -- the :class:`~gatekeeper.embedders.Embedder` to use; None
      (default) makes the one the catalog's ``model`` section names at fit time.
    * ``threads`` -- encoder threads when the embedder is made here.
    * ``rebuild`` -- rebuild the index even when a fresh one is saved.

    Fitted state, set by :meth:`fit` or :meth:`load`: ``catalog_``,
    ``catalog_path_`` (None for a catalog given as an object or a loaded
    gate), ``embedder_``, ``artifacts_`` (index, scorer, auto threshold),
    ``router_`` (thresholds in force), ``rebuilt_``, ``tuning_`` and
    ``tuning_status_`` (one of ``TUNING_*``), ``tuning_problem_`` (why it is
    stale) and ``tuning_version_`` (a short hash the decision log records).

    >>> gate = Gate().fit("intents/telecom_zh.yaml")        # doctest: +SKIP
    >>> gate.decide("我的话费怎么这么多").intent               # doctest: +SKIP
    'bill_inquiry'
    """

    def __init__(self, embedder: Embedder | None = None, *, threads: int = 1, rebuild: bool = False):
        self.embedder = embedder
        self.threads = threads
        self.rebuild = rebuild

    def get_params(self) -> dict[str, Any]:
        """The constructor's parameters, as given."""
        return {"embedder": self.embedder, "threads": self.threads, "rebuild": self.rebuild}

    def __repr__(self) -> str:
        defaults = {name: p.default for name, p in inspect.signature(Gate.__init__).parameters.items()}
        params = ", ".join(f"{key}={value!r}" for key, value in self.get_params().items() if value != defaults[key])
        fitted = (f" fitted on {self.catalog_.name!r}: {len(self.catalog_.intents)} intents, "
                  f"{self.artifacts_.meta['scorer']} scorer, thresholds {self.router_.thresholds.source}"
                  if self.is_fitted else "")
        return f"Gate({params}){fitted}"

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` or :meth:`load` has run."""
        return hasattr(self, "router_")

    # -- fitting -----------------------------------------------------------------------------------------------

    def fit(self, catalog: str | Path | Catalog, progress: ProgressCallback | None = None) -> "Gate":
        """Fit the gate on a catalog (a YAML file or folder, or a :class:`Catalog`) and return it.

        A catalog read from disk keeps its built index in its state folder
        (``$GATEKEEPER_STATE_DIR`` or ``.gatekeeper/`` beside it) and reuses it
        while the catalog and model are unchanged; its saved tuning
        (``gatekeeper tune``) applies as is, or is re-derived from the rows it
        stored after a change (:attr:`tuning_status_`). Raises
        :class:`~gatekeeper.errors.CatalogError` for a bad catalog.
        ``progress`` hears ("embed", done, total) and ("fit", done, total).
        """
        catalog = catalog if isinstance(catalog, Catalog) else load_catalog(catalog)
        embedder = self.embedder or make_embedder(catalog.model, threads=self.threads)
        if catalog.path is not None:
            artifacts, rebuilt = load_or_build(catalog, catalog.path, embedder, progress=progress,
                                               force=self.rebuild)
        else:
            artifacts, rebuilt = build_artifacts(catalog, embedder, progress=progress)[0], True
        self._set_fitted(catalog, embedder, artifacts, rebuilt)
        tuning = load_tuning(catalog.path) if catalog.path is not None else None
        if tuning is None:
            return self
        if tuning.fingerprint == artifacts.fingerprint:
            self._set_tuning(tuning, TUNING_TUNED)
            return self
        from gatekeeper.measure.tune import rederive  # imported here: re-deriving scores rows with this gate

        self._set_tuning(*rederive(self, tuning))
        return self

    def tune(self, rows: Sequence["Row"], policy: "Policy | None" = None, per_intent: bool = False, *,
             oos_labels: Iterable[str] = ("oos",), min_rows: int | None = None) -> "Gate":
        """Refit the calibrator and thresholds on labelled ``rows`` with a business ``policy``; return the gate.

        ``rows`` are ``(text, label)`` or ``(text, label, context)`` tuples
        (labels: intent names, or one of ``oos_labels`` for off-topic
        messages). The default policy refuses at most 5% of in-scope messages.
        :attr:`tuning_preview_` holds the figures before and after. Nothing is
        written: :meth:`save` keeps the tuning with the gate (the CLI's
        ``gatekeeper tune`` writes it beside the catalog). Raises
        :class:`~gatekeeper.errors.UserError` for unknown labels or too few rows.
        """
        from gatekeeper.measure.tune import MIN_ROWS, Policy, plan

        self._check_fitted()
        planned = plan(self, rows, policy or Policy(), per_intent, oos_labels=oos_labels,
                       min_rows=MIN_ROWS if min_rows is None else min_rows)
        self._set_tuning(planned.result.tuning, TUNING_TUNED)
        self.tuning_preview_: TunePreview = planned.preview
        return self

    def with_embedder(self, embedder: Embedder) -> "Gate":
        """A copy of this fitted gate encoding with ``embedder`` (the same model, e.g. wrapped in a cache), with a
        fresh router (no per-router caches shared); this gate is unchanged."""
        self._check_fitted()
        changed = copy.copy(self)
        changed.embedder_ = embedder
        changed._set_tuning(self.tuning_, self.tuning_status_, self.tuning_problem_)
        return changed

    def _set_fitted(self, catalog: Catalog, embedder: Embedder, artifacts: Artifacts, rebuilt: bool) -> None:
        self.catalog_ = catalog
        self.catalog_path_ = catalog.path
        self.embedder_ = embedder
        self.artifacts_ = artifacts
        self.rebuilt_ = rebuilt
        self._set_tuning(None, TUNING_NONE)

    def _set_tuning(self, tuning: Tuning | None, status: str, problem: str | None = None) -> None:
        scorer = self.artifacts_.scorer
        if tuning is not None and tuning.calibrator and isinstance(scorer, HeadScorer):
            scorer = scorer.with_calibrator(Calibrator.from_dict(tuning.calibrator))
        self.router_ = Router(self.catalog_, scorer, resolve_thresholds(self.catalog_, self.artifacts_.auto_threshold,
                                                                        tuning))
        self.tuning_ = tuning
        self.tuning_status_ = status
        self.tuning_problem_ = problem
        self.tuning_version_ = tuning_version(tuning) if tuning is not None else None

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError("this Gate is not fitted yet: call fit(catalog) or Gate.load(folder) first")

    # -- saving ------------------------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Write the fitted gate to ``folder`` (created or replaced whole; readers never see a half-written one).

        The folder holds a manifest (``gate.json``), the catalog as JSON, the
        index and scorer, and the tuning in force. :meth:`load` reads it back
        without rebuilding anything. Returns the folder.
        """
        self._check_fitted()
        target = Path(folder)
        staging = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            staging.mkdir(parents=True)
            catalog = self.catalog_.model_copy(update={"path": None})
            (staging / _CATALOG_FILE).write_text(catalog.model_dump_json(indent=1), encoding="utf-8")
            save_artifacts(staging, self.artifacts_)
            if self.tuning_ is not None:
                (staging / _TUNING_FILE).write_text(json.dumps(asdict(self.tuning_), ensure_ascii=False, indent=2),
                                                    encoding="utf-8")
            manifest = {"format": _FORMAT, "format_version": _FORMAT_VERSION, "gatekeeper": __version__,
                        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "catalog": self.catalog_.name, "fingerprint": self.artifacts_.fingerprint,
                        "model": self.embedder_.fingerprint, "tuning_status": self.tuning_status_,
                        "tuning_problem": self.tuning_problem_,
                        "files": sorted(path.name for path in staging.iterdir())}
            (staging / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")
            _swap_in(staging, target)
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise UserError(f"{target}: cannot save the gate there ({error.strerror}); choose a writable folder") \
                from None
        return target

    @classmethod
    def load(cls, folder: str | Path, embedder: Embedder | None = None, *, threads: int = 1) -> "Gate":
        """A gate saved by :meth:`save`, fitted as it was; nothing is rebuilt.

        ``embedder`` must be the model it was saved with (by default it is
        made from the saved catalog's ``model`` section). Raises
        :class:`~gatekeeper.errors.UserError` when the folder is not a saved
        gate or the embedder is another model.
        """
        folder = Path(folder)
        manifest = _read_manifest(folder)
        catalog = Catalog.model_validate_json((folder / _CATALOG_FILE).read_text(encoding="utf-8"))
        gate = cls(embedder, threads=threads)
        made = embedder or make_embedder(catalog.model, threads=threads)
        if made.fingerprint != manifest["model"]:
            raise UserError(f"{folder}: the gate was saved with model {manifest['model']}, not {made.fingerprint}; "
                            "load it with that model, or fit the catalog again")
        artifacts = load_artifacts(folder, manifest["fingerprint"], len(catalog.intents))
        if artifacts is None:
            raise UserError(f"{folder}: the index files are missing or do not match {MANIFEST}; save the gate again")
        gate._set_fitted(catalog, made, artifacts, rebuilt=False)
        tuning_file = folder / _TUNING_FILE
        if tuning_file.exists():
            gate._set_tuning(Tuning(**json.loads(tuning_file.read_text(encoding="utf-8"))),
                             manifest["tuning_status"], manifest.get("tuning_problem"))
        elif manifest["tuning_status"] == TUNING_STALE:
            gate._set_tuning(None, TUNING_STALE, manifest.get("tuning_problem"))
        return gate

    # -- deciding ----------------------------------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed already-normalised messages as queries."""
        self._check_fitted()
        return self.embedder_.encode(list(texts), is_query=True)

    def prepare(self, message: object) -> Prepared:
        """Normalise one message: (clean text, truncated, reason it cannot be scored or None)."""
        self._check_fitted()
        if not isinstance(message, str):
            return "", False, REASON_NOT_TEXT
        text, truncated = normalise(message, self.catalog_.defaults.max_chars)
        return text, truncated, (None if text else REASON_EMPTY)

    def prepare_many(self, messages: Sequence[object]) -> tuple[list[Prepared], list[int]]:
        """:meth:`prepare` every message; also the positions of the scorable ones (their texts need embedding)."""
        prepared = [self.prepare(message) for message in messages]
        return prepared, [i for i, (_, _, reason) in enumerate(prepared) if reason is None]

    def decide_prepared(self, prepared: list[Prepared], scorable: list[int], vectors: np.ndarray) -> list[Decision]:
        """Decisions for :meth:`prepare_many` outputs, given the vectors of the ``scorable`` ones (one batch:
        one n-gram transform, one head product, one index search)."""
        scored = self.router_.decide_vectors([prepared[i][0] for i in scorable], vectors,
                                             [prepared[i][1] for i in scorable])
        if len(scored) == len(prepared):  # every message was scorable (the usual case)
            return scored
        by_position = dict(zip(scorable, scored))
        return [by_position.get(i) or self.router_.empty_decision(text, reason or REASON_EMPTY)
                for i, (text, _, reason) in enumerate(prepared)]

    def decide_many(self, messages: Sequence[object]) -> list[Decision]:
        """Decide several messages, each on its own, with one encoder call."""
        prepared, scorable = self.prepare_many(messages)
        vectors = self.embed([prepared[i][0] for i in scorable])
        return self.decide_prepared(prepared, scorable, vectors)

    def decide(self, message: object) -> Decision:
        """Decide one message on its own."""
        return self.decide_many([message])[0]

    def decide_turn(self, latest: object, previous: Sequence[str] = (), *, replies: Sequence[str | None] = (),
                    others: Sequence[str] = (), policy: "FollowupPolicy | None" = None) -> "TurnDecision":
        """Decide a user message in its conversation: ``previous`` are the earlier user texts (oldest first),
        ``replies`` the bot's answer to each (optional), ``others`` further texts the model reads that must be in
        scope on their own. The rule is :func:`gatekeeper.core.conversation.decide_turn`'s."""
        return _finish(self._turn(latest, previous, replies, others, policy, self._embed_now))

    def decide_conversation(self, messages: Sequence[Mapping], policy: "FollowupPolicy | None" = None
                            ) -> "TurnDecision":
        """Decide a chat request (OpenAI-style ``{"role", "content"}`` messages) as the sidecar does: its latest
        user message with the conversation rule, and every other text the model reads on its own."""
        from gatekeeper.core.conversation import gated_texts

        texts = gated_texts(messages)
        return self.decide_turn(texts.latest, texts.previous, replies=texts.replies, others=texts.others,
                                policy=policy)

    async def adecide(self, message: object) -> Decision:
        """:meth:`decide` without blocking the event loop (the work runs in a thread)."""
        return (await self.adecide_many([message]))[0]

    async def adecide_many(self, messages: Sequence[object]) -> list[Decision]:
        """:meth:`decide_many` without blocking the event loop (the work runs in a thread)."""
        return await asyncio.to_thread(self.decide_many, messages)

    async def adecide_conversation(self, messages: Sequence[Mapping], policy: "FollowupPolicy | None" = None
                                   ) -> "TurnDecision":
        """:meth:`decide_conversation` without blocking the event loop (encoder calls run in a thread)."""
        from gatekeeper.core.conversation import gated_texts

        texts = gated_texts(messages)
        return await self._turn(texts.latest, texts.previous, texts.replies, texts.others, policy,
                                self._embed_in_thread)

    def _turn(self, latest: object, previous: Sequence[str], replies: Sequence[str | None], others: Sequence[str],
              policy: "FollowupPolicy | None", embed: Any) -> Coroutine[Any, Any, "TurnDecision"]:
        from gatekeeper.core.conversation import decide_turn
        from gatekeeper.core.conversation_model import FollowupPolicy

        self._check_fitted()
        return decide_turn(self, embed, latest, list(previous), policy or FollowupPolicy(), list(others),
                           list(replies))

    async def _embed_now(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(texts)

    async def _embed_in_thread(self, texts: Sequence[str]) -> np.ndarray:
        return await asyncio.to_thread(self.embed, texts)



def _finish(steps: Coroutine[Any, Any, Result]) -> Result:
    """Run a coroutine whose awaits never wait (its embedder answers at once) to its end, without an event loop,
    so it also works inside a running one."""
    try:
        steps.send(None)
    except StopIteration as finished:
        return finished.value
    steps.close()
    raise RuntimeError("a synchronous decision waited on something other than its embedder")


def _read_manifest(folder: Path) -> dict:
    """The manifest of a saved gate; :class:`UserError` naming the fix when ``folder`` is not one."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{folder}: not a saved gate (no {MANIFEST}); save one with Gate.save, or fit a catalog "
                        "with Gate().fit(path)") from None
    except (OSError, ValueError) as error:
        raise UserError(f"{folder / MANIFEST}: unreadable ({error}); save the gate again") from None
    if manifest.get("format") != _FORMAT or manifest.get("format_version") != _FORMAT_VERSION:
        raise UserError(f"{folder / MANIFEST}: not a gate this version can read (format "
                        f"{manifest.get('format')} v{manifest.get('format_version')}); save it again with this version")
    return manifest


def _swap_in(staging: Path, target: Path) -> None:
    """Put the finished folder ``staging`` at ``target``, replacing what was there."""
    if target.exists():
        old = target.with_name(f".{target.name}.{secrets.token_hex(4)}.old")
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(target)
