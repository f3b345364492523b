"""Embedding backends behind one interface: :class:`Embedder`."""

from gatekeeper.embedders.base import Embedder, EmbeddingError
from gatekeeper.embedders.factory import make_embedder

__all__ = ["Embedder", "EmbeddingError", "make_embedder"]
