"""An in-process embedder for tests of a gate's plumbing, where the real model adds nothing.

Vectors are hashed character 1-3-grams, so similar spellings get similar
vectors and a catalog still fits and decides, in microseconds and with no
model to load. Tests of what a gate decides use the real model
(``use_embedder`` in ``tests/conftest.py``).
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from gatekeeper.embedders.base import normalise_rows


class HashedNgramEmbedder:
    """Texts -> unit vectors of hashed character n-gram counts (the :class:`gatekeeper.embedders.Embedder` interface)."""

    def __init__(self, dim: int = 128):
        self.dim = dim
        self.fingerprint = f"test-hashed-ngrams:{dim}"

    def encode(self, texts: Sequence[str], *, is_query: bool = False) -> np.ndarray:
        """One row per text; a text without characters gets a fixed non-zero row."""
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        vectors[:, 0] = 1e-3
        for row, text in enumerate(texts):
            padded = f" {text.lower()} "
            for size in (1, 2, 3):
                for start in range(len(padded) - size + 1):
                    digest = hashlib.blake2b(padded[start:start + size].encode(), digest_size=4).digest()
                    vectors[row, int.from_bytes(digest, "little") % self.dim] += 1.0
        return normalise_rows(vectors)
