"""Section 6: prototype search, exact (flat) vs HNSW, at growing prototype counts.

Prototypes are random unit vectors of dim 512. Queries are prototypes with
noise added (cosine about 0.8 to their source), so each has a clear nearest
neighbour, as a paraphrase of a catalog example does. Search uses the
gate's own settings (k = SEARCH_K, HNSW M and efSearch from gatekeeper.core.index)
with one query per call and one FAISS thread, as the server searches.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

DIM = 512
QUERIES = 200


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _per_query_ms(index, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """Median single-query search time (ms) and the top-1 id of each query."""
    times, top = [], []
    for query in queries:
        row = query[None, :]
        started = time.perf_counter()
        _, ids = index.search(row, k)
        times.append(time.perf_counter() - started)
        top.append(ids[0, 0])
    return float(np.median(times) * 1e3), np.array(top)


def _hnsw(vectors: np.ndarray, budget_s: float):
    """An HNSW index over ``vectors``, added in chunks until done or ``budget_s`` is spent.

    Returns the index, the number of vectors it holds, and the build time.
    """
    import faiss

    from gatekeeper.core.index import HNSW_EF_SEARCH, HNSW_NEIGHBOURS

    faiss.omp_set_num_threads(2)  # building is parallel; searching below is single-threaded
    index = faiss.IndexHNSWFlat(DIM, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efSearch = HNSW_EF_SEARCH
    started = time.perf_counter()
    chunk = 50_000
    for start in range(0, len(vectors), chunk):
        index.add(vectors[start:start + chunk])
        if time.perf_counter() - started > budget_s:
            break
    faiss.omp_set_num_threads(1)
    return index, index.ntotal, time.perf_counter() - started


def run(work: Path, quick: bool) -> dict:
    """Flat and HNSW latency per query, HNSW recall@1 and build time, per prototype count."""
    import faiss

    from gatekeeper.core.scoring import SEARCH_K

    sizes = (1_000, 10_000, 30_000, 100_000) if quick else (1_000, 10_000, 30_000, 100_000, 1_000_000)
    hnsw_budget_s = 60.0 if quick else 300.0
    rng = np.random.default_rng(0)
    results: dict = {"index_queries": QUERIES, "index_hnsw_build_budget_s": hnsw_budget_s}
    for size in sizes:
        vectors = _unit(rng.standard_normal((size, DIM), dtype=np.float32))
        sources = rng.integers(0, size, QUERIES)
        noise = _unit(rng.standard_normal((QUERIES, DIM), dtype=np.float32))
        queries = _unit(vectors[sources] * 0.8 + noise * 0.6)
        faiss.omp_set_num_threads(1)
        flat = faiss.IndexFlatIP(DIM)
        flat.add(vectors)
        flat_ms, exact_top = _per_query_ms(flat, queries, SEARCH_K)
        del flat
        hnsw, held, build_s = _hnsw(vectors, hnsw_budget_s)
        label = f"{size // 1000}k" if size < 1_000_000 else f"{size // 1_000_000}m"
        if held < size:
            # the build budget ran out: queries and exact answers come from the indexed subset
            queries = _unit(vectors[sources % held] * 0.8 + noise * 0.6)
            subset = faiss.IndexFlatIP(DIM)
            subset.add(vectors[:held])
            _, exact_top = _per_query_ms(subset, queries, SEARCH_K)
            del subset
        hnsw_ms, hnsw_top = _per_query_ms(hnsw, queries, SEARCH_K)
        del hnsw
        results.update({f"index_flat_ms_{label}": flat_ms, f"index_hnsw_ms_{label}": hnsw_ms,
                        f"index_hnsw_recall1_{label}": float(np.mean(hnsw_top == exact_top)),
                        f"index_hnsw_build_s_{label}": build_s, f"index_hnsw_size_{label}": held})
        del vectors
    return results
