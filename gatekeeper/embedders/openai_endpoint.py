"""Backend for any OpenAI-compatible ``/v1/embeddings`` endpoint.

Works with OpenAI's text-embedding-3-* and with open models (Qwen3-Embedding,
bge, e5) served by vLLM, SGLang or TEI. The ``openai`` client supplies timeouts
and retries with exponential backoff; this module adds batching and checks:
every reply must hold one finite, non-zero vector per text, all of the width
the first reply had (or ``dimensions``), else :class:`EmbeddingError`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from gatekeeper import environment
from gatekeeper.embedders.base import EmbeddingError, normalise_rows, query_texts, settings_fingerprint


class OpenAIEndpointEmbedder:
    """Embeddings from a remote OpenAI-compatible server."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "GATEKEEPER_EMBEDDING_API_KEY",
                 dimensions: int | None = None, query_instruction: str = "", batch_size: int = 64,
                 timeout_s: float = 30.0, max_retries: int = 3):
        import openai

        if not base_url or not model:
            raise EmbeddingError("the openai embedding backend needs model.base_url and model.model "
                                 "in the catalog (e.g. http://127.0.0.1:8000/v1 and Qwen/Qwen3-Embedding-0.6B)")
        # Local servers usually take any key; a real key is read from the environment, never the catalog.
        api_key = environment.read(api_key_env, "unused")
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s,
                                     max_retries=max_retries)
        self._model = model
        self._dimensions = dimensions
        self._query_instruction = query_instruction
        self._batch_size = batch_size
        self._dim = dimensions
        self.fingerprint = settings_fingerprint("openai", {
            "base_url": base_url.rstrip("/"), "model": model, "dimensions": dimensions,
            "query_instruction": query_instruction})

    @property
    def dim(self) -> int:
        """Vector width, asked of the server once if ``dimensions`` was not set."""
        if self._dim is None:
            self._dim = int(self.encode(["dimension probe"]).shape[1])
        return self._dim

    def encode(self, texts: Sequence[str], *, is_query: bool = False) -> np.ndarray:
        """Embed ``texts``; see :meth:`gatekeeper.embedders.base.Embedder.encode`."""
        import openai

        batch = query_texts(texts, self._query_instruction, is_query)
        if not batch:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        extra = {"dimensions": self._dimensions} if self._dimensions else {}
        chunks = []
        for start in range(0, len(batch), self._batch_size):
            part = batch[start:start + self._batch_size]
            try:
                reply = self._client.embeddings.create(model=self._model, input=part,
                                                       encoding_format="float", **extra)
            except openai.OpenAIError as error:
                raise EmbeddingError(f"embedding endpoint failed: {type(error).__name__}: {error}") from error
            rows = sorted(reply.data, key=lambda item: item.index)
            if len(rows) != len(part):
                raise EmbeddingError(f"embedding endpoint returned {len(rows)} vectors for {len(part)} texts")
            chunks.append(checked_vectors([row.embedding for row in rows], self._dim))
            self._dim = self._dim or chunks[-1].shape[1]  # the first reply fixes the width; every later one must match
        return normalise_rows(np.concatenate(chunks))


#: Vectors shorter than this are taken for zero: they have no direction to compare.
MIN_NORM = 1e-12


def checked_vectors(embeddings: list, dim: int | None) -> np.ndarray:
    """The reply's ``embeddings`` as a float32 array, if each is a finite, non-zero vector of width ``dim``.

    ``dim`` None accepts any one width. Anything else raises :class:`EmbeddingError`,
    so the failure policy applies and no bad vector is ever cached or scored.
    """
    if not all(isinstance(vector, list) for vector in embeddings):
        raise EmbeddingError("embedding endpoint returned an embedding that is not a list of numbers")
    widths = sorted({len(vector) for vector in embeddings})
    if len(widths) > 1:
        raise EmbeddingError(f"embedding endpoint returned vectors of different widths ({'/'.join(map(str, widths))} "
                             "dimensions): the embedding server is faulty; check its logs")
    if dim is not None and widths[0] != dim:
        raise EmbeddingError(f"embedding endpoint returned {widths[0]}-dimensional vectors where {dim} were expected "
                             "(the width the catalog's index was built with): the server now serves another model, "
                             "or model.dimensions changed; point the catalog's model section at the model it was "
                             "built with")
    try:
        vectors = np.asarray(embeddings, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise EmbeddingError(f"embedding endpoint returned vectors that are not numbers ({error})") from None
    wide = vectors.astype(np.float64)
    norms = np.sqrt((wide * wide).sum(axis=1))
    bad = ~np.isfinite(norms) | (norms < MIN_NORM)
    if bad.any():
        raise EmbeddingError(f"embedding endpoint returned {int(bad.sum())} of {len(vectors)} vectors with NaN, "
                             "infinite or all-zero values: the embedding server is faulty; check its logs")
    return vectors
