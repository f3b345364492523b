"""The live gate, its first load, and atomic reloads.

A reload builds the new :class:`Gate` in a worker thread while the old one
keeps serving, then swaps one reference; requests in flight finish on the gate
they started with. The embedder is reused when the catalog's ``model``
section is unchanged, so a reload does not load the model again. A catalog
that fails to load leaves the old gate serving and raises. A new embedder
encodes one text before the gate goes live, so /readyz means warm.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from gatekeeper.catalog.loader import load_catalog
from gatekeeper.embedders import EmbeddingError
from gatekeeper.gate import TUNING_STALE, Gate
from gatekeeper.server.metrics import Metrics

log = logging.getLogger(__name__)

WARM_UP_TEXT = "warm-up"

class NotReady(Exception):
    """No gate is loaded yet (or the first load failed)."""


class GateState:
    """Holds the gate being served and swaps it on reload."""

    def __init__(self, catalog_path: str | Path, metrics: Metrics, threads: int = 1, gate: Gate | None = None):
        self.catalog_path = str(catalog_path)
        self.metrics = metrics
        self.threads = threads
        self.load_error: str | None = None
        self._lock = asyncio.Lock()
        self._gate: Gate | None = None
        if gate is not None:
            self._install(gate)

    @property
    def gate(self) -> Gate:
        """The gate now serving; raises :class:`NotReady` before the first successful load."""
        if self._gate is None:
            raise NotReady(self.load_error or "the catalog is still loading")
        return self._gate

    @property
    def ready(self) -> bool:
        """Whether a gate is loaded."""
        return self._gate is not None

    async def load(self) -> None:
        """First load (in a worker thread); a failure is kept in :attr:`load_error`, not raised."""
        try:
            await self._replace(count=False)
        except Exception as error:  # reported by /readyz and the log; the process stays up for /healthz
            self.load_error = f"{type(error).__name__}: {error}"
            log.error("catalog_load_failed", extra={"catalog": self.catalog_path, "error": self.load_error})

    async def reload(self) -> dict:
        """Build a new gate from the catalog on disk and swap it in; returns a summary.

        Raises whatever loading raised (e.g. :class:`gatekeeper.catalog.loader.CatalogError`),
        with the old gate still serving. Counted in ``gatekeeper_reloads_total``.
        """
        return await self._replace(count=True)

    async def _replace(self, count: bool) -> dict:
        async with self._lock:
            started = time.perf_counter()
            current = self._gate
            try:
                gate, reused = await asyncio.to_thread(self._build, current)
            except Exception as error:
                if count:
                    self.metrics.reloads.labels(result="failure").inc()
                log.warning("catalog_reload_failed", extra={"catalog": self.catalog_path,
                                                            "error": f"{type(error).__name__}: {error}"})
                raise
            self._install(gate)
            self.load_error = None
            if count:
                self.metrics.reloads.labels(result="success").inc()
            summary = {"catalog": gate.catalog_.name, "path": self.catalog_path, "intents": len(gate.catalog_.intents),
                       "fingerprint": gate.artifacts_.fingerprint, "rebuilt": gate.rebuilt_, "embedder_reused": reused,
                       "seconds": round(time.perf_counter() - started, 3)}
            log.info("catalog_loaded", extra=summary)
            for warning in gate.catalog_.warnings:
                log.warning("catalog_warning", extra={"catalog": self.catalog_path, "warning": warning})
            return summary

    def _build(self, current: Gate | None) -> tuple[Gate, bool]:
        catalog = load_catalog(self.catalog_path)
        reuse = current.embedder_ if current is not None and current.catalog_.model == catalog.model else None
        gate = Gate(embedder=reuse, threads=self.threads).fit(catalog)
        if reuse is None:  # a lazily loaded model's first call is slow: not a user's; and its vectors must fit
            width = gate.embed([WARM_UP_TEXT]).shape[1]
            built = gate.artifacts_.meta.get("dim", width)
            if width != built:
                raise EmbeddingError(f"the embedding model returns {width}-dimensional vectors, but the catalog's "
                                     f"index was built with {built}-dimensional ones: point the catalog's model "
                                     "section at the model it was built with, or rebuild the index (gatekeeper "
                                     "build --rebuild)")
        return gate, reuse is not None

    def _install(self, gate: Gate) -> None:
        self._gate = gate
        self.metrics.set_catalog(catalog=gate.catalog_.name, fingerprint=gate.artifacts_.fingerprint,
                                 model=str(gate.artifacts_.meta.get("model", gate.embedder_.fingerprint)),
                                 intents=len(gate.catalog_.intents))
        self.metrics.keep_intents(gate.catalog_.intent_names())
        self.metrics.tuning_stale.set(gate.tuning_status_ == TUNING_STALE)
