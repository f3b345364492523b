"""A content-addressed, on-disk embedding cache.

Vectors are keyed by sha256(model fingerprint, text), so rebuilding a catalog
embeds only new or changed texts, and a model change never serves stale vectors.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from gatekeeper.embedders.base import Embedder
from gatekeeper.errors import EmbeddingError

Progress = Callable[[int], None]


class EmbeddingCache:
    """A SQLite file mapping content hashes to float32 vectors."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")

    @staticmethod
    def key(fingerprint: str, text: str) -> str:
        """The content address of ``text`` embedded by the model ``fingerprint``."""
        return hashlib.sha256(f"{fingerprint}\0{text}".encode()).hexdigest()

    def encode(self, embedder: Embedder, texts: Sequence[str], progress: Progress | None = None,
               batch_size: int = 256) -> tuple[np.ndarray, int]:
        """Embed ``texts`` as catalog documents, reusing cached vectors.

        Returns the vectors and how many texts had to be embedded. ``progress``
        is called with the number of texts embedded after each batch. Vectors
        are stored as float32 (an embedder's float64 ones are converted); an
        embedder whose vectors are not (texts, ``dim``) raises
        :class:`~gatekeeper.errors.EmbeddingError` before its batch is stored,
        and a stored vector of another width (a wrong entry) is embedded again.
        """
        keys = [self.key(embedder.fingerprint, text) for text in texts]
        found = self._lookup(set(keys), embedder.dim)
        missing = list(dict.fromkeys(key_text for key_text in zip(keys, texts) if key_text[0] not in found))
        for start in range(0, len(missing), batch_size):
            part = missing[start:start + batch_size]
            vectors = _checked(embedder, embedder.encode([text for _, text in part]), len(part))
            rows = [(key, vector.tobytes()) for (key, _), vector in zip(part, vectors)]
            self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)", rows)
            self._db.commit()
            found.update({key: vector for (key, _), vector in zip(part, vectors)})
            if progress:
                progress(len(part))
        if not texts:
            return np.zeros((0, embedder.dim), dtype=np.float32), 0
        return np.stack([found[key] for key in keys]).astype(np.float32, copy=False), len(missing)

    def _lookup(self, keys: set[str], dim: int) -> dict[str, np.ndarray]:
        """The stored vectors of ``keys`` that are ``dim`` float32 values wide."""
        found: dict[str, np.ndarray] = {}
        key_list = list(keys)
        for start in range(0, len(key_list), 900):  # SQLite caps bound parameters per statement
            part = key_list[start:start + 900]
            marks = ",".join("?" * len(part))
            for key, blob in self._db.execute(f"SELECT key, vector FROM vectors WHERE key IN ({marks})", part):
                if len(blob) == dim * 4:
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def close(self) -> None:
        """Close the database file."""
        self._db.close()


def _checked(embedder: Embedder, vectors: np.ndarray, texts: int) -> np.ndarray:
    """``vectors`` as float32 rows, if they are one row of ``embedder.dim`` values per text."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.shape != (texts, embedder.dim):
        raise EmbeddingError(f"the embedder {embedder.fingerprint} returned vectors of shape {vectors.shape} for "
                             f"{texts} texts; it must return ({texts}, {embedder.dim}): one row of its dim "
                             "values per text; nothing was cached")
    return vectors
