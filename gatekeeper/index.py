"""The FAISS index of topic prototypes: every example, description and out-of-scope example.

Each vector carries the id of its intent (or :data:`OUT_OF_SCOPE` for a negative
example). Search is exact inner product (cosine, as vectors are unit length)
below :data:`HNSW_CROSSOVER` prototypes and HNSW above it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

#: Label of an out-of-scope (negative) prototype.
OUT_OF_SCOPE = -1
#: Prototype count from which HNSW replaces exact search. Measured (docs/performance.md, one query,
#: one thread, d=512): exact search takes 0.5 ms at 10k prototypes and 3.6 ms at 30k, HNSW 0.9 and
#: 1.2 ms with recall@1 of 1.0 at both; the curves cross between the two.
HNSW_CROSSOVER = 20_000
HNSW_NEIGHBOURS = 32
HNSW_EF_SEARCH = 128

_INDEX_FILE = "prototypes.faiss"
_LABELS_FILE = "prototypes.npz"
_META_FILE = "meta.json"


@dataclass
class PrototypeIndex:
    """Unit vectors with an intent id each, searchable by cosine similarity."""

    labels: np.ndarray
    faiss_index: faiss.Index
    #: :meth:`label_columns` by intent count, made once per index.
    _columns: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def build(cls, vectors: np.ndarray, labels: np.ndarray, hnsw: bool | None = None) -> "PrototypeIndex":
        """Index ``vectors`` (n, d) with intent ids ``labels`` (n,).

        ``hnsw`` forces the index type; by default HNSW is used from
        :data:`HNSW_CROSSOVER` prototypes up.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int32)
        if len(vectors) != len(labels):
            raise ValueError(f"{len(vectors)} vectors but {len(labels)} labels")
        use_hnsw = len(vectors) >= HNSW_CROSSOVER if hnsw is None else hnsw
        dim = vectors.shape[1]
        if use_hnsw:
            index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = HNSW_EF_SEARCH
        else:
            index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return cls(labels=labels, faiss_index=index)

    @property
    def vectors(self) -> np.ndarray:
        """The prototypes' vectors (n, d), read back from the FAISS index.

        Only builds need them, so a served gate keeps them once, inside FAISS;
        each call makes a copy, so take it once where it is used repeatedly.
        """
        return self.faiss_index.reconstruct_n(0, self.faiss_index.ntotal)

    @property
    def kind(self) -> str:
        """'hnsw' or 'flat'."""
        return "hnsw" if isinstance(self.faiss_index, faiss.IndexHNSWFlat) else "flat"

    def __len__(self) -> int:
        return len(self.labels)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar prototypes of each query: (similarities, prototype ids), both (n, k)."""
        k = min(k, len(self))
        return self.faiss_index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def label_columns(self, n_intents: int) -> np.ndarray:
        """Each prototype's column in a table of ``n_intents + 1`` columns, indexed by prototype id.

        An intent's prototypes map to its id; negatives, and the id -1 FAISS
        pads a short result with (the extra last entry), to ``n_intents``.
        Made once per intent count: searches index it with their ids.
        """
        columns = self._columns.get(n_intents)
        if columns is None:
            labels = np.append(self.labels, OUT_OF_SCOPE).astype(np.intp)
            columns = self._columns[n_intents] = np.where(labels == OUT_OF_SCOPE, n_intents, labels)
        return columns

    def save(self, folder: Path, meta: dict) -> None:
        """Write the index, its labels and ``meta`` (which must hold the build fingerprint) to ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.faiss_index, str(folder / _INDEX_FILE))
        np.savez(folder / _LABELS_FILE, labels=self.labels)
        # meta.json is written last: a folder without it is an unfinished save and is ignored.
        (folder / _META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False))

    @classmethod
    def load(cls, folder: Path, fingerprint: str) -> "PrototypeIndex | None":
        """Load the index saved in ``folder`` if it was built for ``fingerprint``; else None (stale or absent)."""
        meta = read_meta(folder)
        if meta is None or meta.get("fingerprint") != fingerprint:
            return None
        with np.load(folder / _LABELS_FILE) as arrays:
            labels = arrays["labels"]
        return cls(labels=labels, faiss_index=faiss.read_index(str(folder / _INDEX_FILE)))


def search_on_one_thread() -> None:
    """Make every FAISS search of this process single-threaded, once, at start (the sidecar's).

    A served batch is a few dozen queries: OpenMP's threads would add nothing
    but their spinning after each parallel region, which burns a core the
    encoder needs. Set once for the process, never per request.
    """
    faiss.omp_set_num_threads(1)


def read_meta(folder: Path) -> dict | None:
    """The metadata of the index saved in ``folder``, or None if there is none."""
    try:
        return json.loads((folder / _META_FILE).read_text())
    except (OSError, ValueError):
        return None
