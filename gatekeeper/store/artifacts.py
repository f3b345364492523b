"""A catalog's built artifacts on disk: the state folder, saved under a fingerprint and reused until stale.

The folder holds the FAISS index and its labels, the scorer's arrays, what the
next build starts from (the heads, the full head's last gradient, the rows'
neighbour lists) and ``meta.json``, written last: a folder
without it is an unfinished save and is ignored. Loading with another
fingerprint (other texts, model or format) gives None, and the caller rebuilds.
"""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path

import faiss
import numpy as np

from gatekeeper import environment
from gatekeeper.catalog.schema import Catalog
from gatekeeper.core.fit import Artifacts, NeighbourLists, ProgressCallback, artifact_fingerprint, build_artifacts
from gatekeeper.core.head_fitting import Heads
from gatekeeper.core.index import PrototypeIndex
from gatekeeper.core.scoring import load_scorer
from gatekeeper.embedders.base import Embedder
from gatekeeper.store.embedding_cache import EmbeddingCache

_INDEX_FILE = "prototypes.faiss"
_LABELS_FILE = "prototypes.npz"
_SCORER_FILE = "scorer.npz"
_HEADS_FILE = "heads.npz"
_NEIGHBOURS_FILE = "neighbours.npz"
_META_FILE = "meta.json"


def state_dir(catalog_path: str | Path) -> Path:
    """Where a catalog's built artifacts live: ``$GATEKEEPER_STATE_DIR`` or ``.gatekeeper/`` beside it."""
    path = Path(catalog_path).resolve()
    root = environment.read(environment.STATE_DIR)
    return (Path(root) if root else path.parent / ".gatekeeper") / path.stem


def load_or_build(catalog: Catalog, catalog_path: str | Path, embedder: Embedder,
                  progress: ProgressCallback | None = None, force: bool = False) -> tuple[Artifacts, bool]:
    """Load the saved artifacts if still fresh, else build and save them.

    Returns the artifacts and whether they were (re)built.
    """
    folder = state_dir(catalog_path)
    fingerprint = artifact_fingerprint(catalog, embedder)
    if not force:
        loaded = load_artifacts(folder, fingerprint, len(catalog.intents))
        if loaded is not None:
            return loaded, False
    with closing(EmbeddingCache(folder.parent / "embeddings.sqlite")) as cache:
        artifacts, heads = build_artifacts(catalog, embedder, cache=cache, progress=progress,
                                           previous=load_heads(folder, catalog.intent_names()),
                                           previous_neighbours=load_neighbours(folder, embedder.fingerprint))
    save_artifacts(folder, artifacts, heads)
    return artifacts, True


def save_artifacts(folder: Path, artifacts: Artifacts, heads: Heads | None = None) -> None:
    """Write ``artifacts`` to ``folder``, its metadata last; with ``heads``, also what the next build starts
    from (the heads and the neighbour lists)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / _SCORER_FILE, **artifacts.scorer.state())
    if heads is not None:
        save_heads(folder, artifacts.meta["intents"], heads)
    if heads is not None and artifacts.neighbours is not None:
        lists = artifacts.neighbours
        np.savez(folder / _NEIGHBOURS_FILE, model=np.array(artifacts.meta["model"]), keys=lists.keys, ids=lists.ids,
                 sims=lists.sims)
    save_index(folder, artifacts.index, artifacts.meta)


def load_artifacts(folder: Path, fingerprint: str, n_intents: int) -> Artifacts | None:
    """The artifacts saved in ``folder`` if built for ``fingerprint``, else None (stale, absent or unfinished)."""
    index = load_index(folder, fingerprint)
    if index is None:
        return None
    meta = read_meta(folder) or {}
    with np.load(folder / _SCORER_FILE) as arrays:
        state = {key: arrays[key] for key in arrays.files}
    scorer = load_scorer(meta["scorer"], index, n_intents, state)
    return Artifacts(index=index, scorer=scorer, auto_threshold=float(meta["auto_threshold"]), meta=meta)


def save_index(folder: Path, index: PrototypeIndex, meta: dict) -> None:
    """Write the index, its labels and ``meta`` (which must hold the build fingerprint) to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index.faiss_index, str(folder / _INDEX_FILE))
    np.savez(folder / _LABELS_FILE, labels=index.labels)
    # meta.json is written last: a folder without it is an unfinished save and is ignored.
    (folder / _META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False))


def load_index(folder: Path, fingerprint: str) -> PrototypeIndex | None:
    """The index saved in ``folder`` if it was built for ``fingerprint``; else None (stale or absent)."""
    meta = read_meta(folder)
    if meta is None or meta.get("fingerprint") != fingerprint:
        return None
    with np.load(folder / _LABELS_FILE) as arrays:
        labels = arrays["labels"]
    return PrototypeIndex(labels=labels, faiss_index=faiss.read_index(str(folder / _INDEX_FILE)))


def read_meta(folder: Path) -> dict | None:
    """The metadata of the artifacts saved in ``folder``, or None if there is none."""
    try:
        return json.loads((folder / _META_FILE).read_text())
    except (OSError, ValueError):
        return None


def save_heads(folder: Path, intents: list[str], heads: Heads) -> None:
    """Keep ``heads`` in ``folder`` for the next build of a catalog with the same ``intents``."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"intents": np.array(intents, dtype=str), "vocabulary": np.asarray(heads.vocabulary, dtype=str),
              "full_weights": heads.full[0], "full_bias": heads.full[1]}
    for fold, (weights, bias) in enumerate(heads.folds):
        arrays[f"fold{fold}_weights"], arrays[f"fold{fold}_bias"] = weights, bias
    if heads.full_gradient is not None:
        arrays["full_gradient_weights"], arrays["full_gradient_bias"] = heads.full_gradient
    np.savez(folder / _HEADS_FILE, **arrays)


def load_heads(folder: Path, intents: list[str]) -> Heads | None:
    """The heads saved in ``folder`` if they were fitted for the same ``intents`` in the same order, else None."""
    try:
        with np.load(folder / _HEADS_FILE) as arrays:
            if arrays["intents"].tolist() != intents:
                return None
            n_folds = sum(1 for key in arrays.files if key.startswith("fold") and key.endswith("_weights"))
            gradient = ((arrays["full_gradient_weights"], arrays["full_gradient_bias"])
                        if "full_gradient_weights" in arrays.files else None)
            return Heads(full=(arrays["full_weights"], arrays["full_bias"]),
                         folds=[(arrays[f"fold{fold}_weights"], arrays[f"fold{fold}_bias"])
                                for fold in range(n_folds)],
                         vocabulary=arrays["vocabulary"], full_gradient=gradient)
    except (OSError, KeyError, ValueError):
        return None


def load_neighbours(folder: Path, model: str) -> NeighbourLists | None:
    """The neighbour lists saved in ``folder`` if their vectors came from ``model``, else None."""
    try:
        with np.load(folder / _NEIGHBOURS_FILE) as arrays:
            if str(arrays["model"]) != model:
                return None
            return NeighbourLists(keys=arrays["keys"], ids=arrays["ids"], sims=arrays["sims"])
    except (OSError, KeyError, ValueError):
        return None
