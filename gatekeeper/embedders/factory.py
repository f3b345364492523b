"""Build the embedder a catalog's ``model`` section asks for."""

from __future__ import annotations

from gatekeeper.catalog.schema import ModelSettings
from gatekeeper.embedders.base import Embedder
from gatekeeper.embedders.query_cache import DEFAULT_SIZE, QueryCachingEmbedder


def make_embedder(settings: ModelSettings, threads: int = 1, query_cache: int = DEFAULT_SIZE) -> Embedder:
    """The backend named by ``settings.backend``, with an LRU of ``query_cache`` recent query vectors in front.

    ``threads`` caps the CPU threads a local model uses per call; ``query_cache=0`` turns the LRU off.
    """
    backend = _make_backend(settings, threads)
    return QueryCachingEmbedder(backend, query_cache) if query_cache > 0 else backend


def _make_backend(settings: ModelSettings, threads: int) -> Embedder:
    if settings.backend == "use-multilingual":
        from gatekeeper.embedders.use_multilingual import UseMultilingualEmbedder

        return UseMultilingualEmbedder(threads=threads, query_instruction=settings.query_instruction)
    if settings.backend == "sentence-transformers":
        from gatekeeper.embedders.sentence_transformers import SentenceTransformersEmbedder

        return SentenceTransformersEmbedder(settings.model, query_instruction=settings.query_instruction,
                                            batch_size=settings.batch_size, threads=threads)
    from gatekeeper.embedders.openai_endpoint import OpenAIEndpointEmbedder

    return OpenAIEndpointEmbedder(
        base_url=settings.base_url or "", model=settings.model or "", api_key_env=settings.api_key_env,
        dimensions=settings.dimensions, query_instruction=settings.query_instruction,
        batch_size=settings.batch_size, timeout_s=float(settings.timeout_s), max_retries=settings.max_retries)
