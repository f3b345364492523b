"""The FAISS index of topic prototypes: every example, description and out-of-scope example.

Each vector carries the id of its intent (or :data:`OUT_OF_SCOPE` for a negative
example). Search is exact inner product (cosine, as vectors are unit length)
below :data:`HNSW_CROSSOVER` prototypes and HNSW above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


def search_on_this_thread_alone() -> None:
    """Make the calling thread's FAISS searches single-threaded.

    OpenMP keeps the thread count per calling thread: a limit set in the main
    thread (``threadpoolctl``'s too) does not reach other threads. So the
    sidecar's decision thread calls this when it starts (a served batch is a
    few dozen queries: OpenMP's threads would add nothing but their spinning,
    on the core the encoder needs), and so does a build's search beside its
    fits. Set once per thread, never per request.
    """
    faiss.omp_set_num_threads(1)
