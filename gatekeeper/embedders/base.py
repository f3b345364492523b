"""The one small interface every embedding backend implements."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from gatekeeper.errors import EmbeddingError


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors."""

    #: Vector width.
    dim: int
    #: Changes whenever the model or any setting that changes its vectors changes.
    fingerprint: str

    def encode(self, texts: Sequence[str], *, is_query: bool = False) -> np.ndarray:
        """Embed ``texts`` into a float32 array of shape (len(texts), dim), rows of unit length.

        ``is_query`` marks user messages (as opposed to catalog examples), for models
        that want an instruction in front of queries.
        """
        ...


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    """Return ``vectors`` as C-contiguous float32 with every row scaled to unit length."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise EmbeddingError(f"expected a 2-D array of embeddings, got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    vectors /= norms
    return vectors


def settings_fingerprint(kind: str, settings: dict[str, Any]) -> str:
    """A short stable hash of a backend kind and the settings that shape its vectors."""
    payload = json.dumps({"kind": kind, **settings}, sort_keys=True, ensure_ascii=False)
    return f"{kind}:{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def query_texts(texts: Sequence[str], instruction: str, is_query: bool) -> list[str]:
    """``texts`` with ``instruction`` in front when they are queries and an instruction is set."""
    if is_query and instruction:
        return [instruction + text for text in texts]
    return list(texts)
