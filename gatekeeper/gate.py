"""The gate: one object holding catalog, embedder, index, scorer and thresholds.

This is the straight data path, catalog -> embed -> index -> score -> decide,
that the CLI and the server both use.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from gatekeeper.build import Artifacts, ProgressCallback, load_or_build
from gatekeeper.catalog import load_catalog
from gatekeeper.catalog_schema import Catalog
from gatekeeper.embedders import Embedder, make_embedder
from gatekeeper.router import REASON_EMPTY, REASON_NOT_TEXT, Decision, Router
from gatekeeper.scoring import HeadScorer
from gatekeeper.text import normalise
from gatekeeper.tuning_file import Tuning, load_tuning, resolve_thresholds, tuning_version

#: :attr:`Gate.tuning_status`: no tuning file; its thresholds in force; re-derived from its stored rows after a
#: catalog change; or stale: not re-derivable, so the catalog's own or auto thresholds are in force.
TUNING_NONE, TUNING_TUNED, TUNING_REDERIVED, TUNING_STALE = "none", "tuned", "re-derived", "stale"


@dataclass
class Gate:
    """A loaded catalog, ready to decide messages."""

    catalog_path: str
    catalog: Catalog
    embedder: Embedder
    artifacts: Artifacts
    router: Router
    tuning: Tuning | None
    rebuilt: bool
    #: One of the ``TUNING_*`` values.
    tuning_status: str = TUNING_NONE
    #: Why the tuning is stale, and the fix (None unless stale).
    tuning_problem: str | None = None
    #: :func:`~gatekeeper.tuning_file.tuning_version` of :attr:`tuning` (None without one).
    tuning_version: str | None = None

    @classmethod
    def load(cls, catalog_path: str | Path, embedder: Embedder | None = None, threads: int = 1,
             progress: ProgressCallback | None = None, rebuild: bool = False, catalog: Catalog | None = None
             ) -> "Gate":
        """Load the catalog at ``catalog_path``, building its index if absent or stale.

        ``embedder`` is reused when given (e.g. across reloads), else created
        from the catalog's ``model`` section. ``catalog`` is that file already
        parsed, if the caller has it. Raises
        :class:`gatekeeper.catalog.CatalogError` for a bad catalog.

        The saved tuning applies as is while the catalog and model are those
        it was made for; after a change, its thresholds and calibrator are
        re-derived from the rows it stored, with its policy
        (:func:`gatekeeper.tune.rederive`, :attr:`tuning_status`).
        """
        catalog = catalog or load_catalog(catalog_path)
        embedder = embedder or make_embedder(catalog.model, threads=threads)
        artifacts, rebuilt = load_or_build(catalog, catalog_path, embedder, progress=progress, force=rebuild)
        gate = cls(str(catalog_path), catalog, embedder, artifacts, _router(catalog, artifacts, None), None, rebuilt)
        tuning = load_tuning(catalog_path)
        if tuning is None:
            return gate
        if tuning.fingerprint == artifacts.fingerprint:
            return gate.with_tuning(tuning, TUNING_TUNED)
        from gatekeeper.tune import rederive  # imported here: re-deriving scores rows with a Gate

        return rederive(gate, tuning)

    def with_tuning(self, tuning: Tuning | None, status: str, problem: str | None = None) -> "Gate":
        """This gate with ``tuning``'s thresholds and calibrator in force (None: the catalog's own, or auto)."""
        return replace(self, router=_router(self.catalog, self.artifacts, tuning), tuning=tuning,
                       tuning_status=status, tuning_problem=problem,
                       tuning_version=tuning_version(tuning) if tuning is not None else None)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed already-normalised messages as queries."""
        return self.embedder.encode(list(texts), is_query=True)

    def prepare(self, message: object) -> tuple[str, bool, str | None]:
        """Normalise one message: (clean text, truncated, reason it cannot be scored or None)."""
        if not isinstance(message, str):
            return "", False, REASON_NOT_TEXT
        text, truncated = normalise(message, self.catalog.defaults.max_chars)
        return text, truncated, (None if text else REASON_EMPTY)

    def prepare_many(self, messages: Sequence[object]) -> tuple[list[tuple[str, bool, str | None]], list[int]]:
        """:meth:`prepare` every message; also the positions of the scorable ones (their texts need embedding)."""
        prepared = [self.prepare(message) for message in messages]
        return prepared, [i for i, (_, _, reason) in enumerate(prepared) if reason is None]

    def decide_many(self, messages: Sequence[object]) -> list[Decision]:
        """Decide several messages with one encoder call."""
        prepared, scorable = self.prepare_many(messages)
        vectors = self.embed([prepared[i][0] for i in scorable])
        return self.decide_prepared(prepared, scorable, vectors)

    def decide_prepared(self, prepared: list[tuple[str, bool, str | None]], scorable: list[int],
                        vectors: np.ndarray) -> list[Decision]:
        """Decisions for :meth:`prepare` outputs, given the vectors of the ``scorable`` ones."""
        scored = self.router.decide_vectors([prepared[i][0] for i in scorable], vectors,
                                            [prepared[i][1] for i in scorable])
        by_position = dict(zip(scorable, scored))
        return [by_position.get(i) or self.router.empty_decision(text, reason or REASON_EMPTY)
                for i, (text, _, reason) in enumerate(prepared)]

    def decide(self, message: object) -> Decision:
        """Decide one message."""
        return self.decide_many([message])[0]


def _router(catalog: Catalog, artifacts: Artifacts, tuning: Tuning | None) -> Router:
    """The router of a catalog's artifacts with ``tuning``'s calibrator and thresholds, if any."""
    scorer = artifacts.scorer
    if tuning is not None and tuning.calibrator and isinstance(scorer, HeadScorer):
        scorer = scorer.with_parameters(tuning.calibrator)
    return Router(catalog, scorer, resolve_thresholds(catalog, artifacts.auto_threshold, tuning))
