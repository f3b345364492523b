"""An in-memory LRU of recent query vectors, in front of any embedding backend.

Customer-service traffic repeats itself ("hi", "人工客服", "cancel my order"):
a message seen recently skips the encoder. Only queries (``is_query=True``)
are cached here; catalog texts have the on-disk cache of
:mod:`gatekeeper.store.embedding_cache`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Sequence

import numpy as np

from gatekeeper.embedders.base import Embedder, EmbeddingError

#: Query vectors kept by default (512-d float32: 2 KB each, 8 MB in all).
DEFAULT_SIZE = 4096


class QueryCachingEmbedder:
    """Wraps an :class:`Embedder`; remembers the vectors of the last ``size`` distinct query texts."""

    def __init__(self, inner: Embedder, size: int = DEFAULT_SIZE):
        self.inner = inner
        self.fingerprint = inner.fingerprint
        self.size = size
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        """The backend's dimension (asked only when needed: an endpoint may have to be probed for it)."""
        return self.inner.dim

    def encode(self, texts: Sequence[str], *, is_query: bool = False) -> np.ndarray:
        """Embed ``texts``; queries seen recently come from the cache, the rest from the backend."""
        if not is_query or self.size <= 0:
            return self.inner.encode(texts, is_query=is_query)
        with self._lock:
            found = {text: self._vectors[text] for text in texts if text in self._vectors}
            for text in found:
                self._vectors.move_to_end(text)
        missing = [text for text in dict.fromkeys(texts) if text not in found]
        if missing:
            fresh = self.inner.encode(missing, is_query=True)
            if len(fresh) != len(missing):  # never cache a vector under another text
                raise EmbeddingError(f"the encoder returned {len(fresh)} vectors for {len(missing)} texts")
            found.update(zip(missing, fresh))
            with self._lock:  # copies: a row view would keep its whole batch array alive in the cache
                self._vectors.update(zip(missing, map(np.copy, fresh)))
                while len(self._vectors) > self.size:
                    self._vectors.popitem(last=False)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([found[text] for text in texts])
