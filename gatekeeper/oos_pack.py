"""The built-in bilingual out-of-scope pack: off-topic messages every catalog is contrasted with.

``gatekeeper/packs/out_of_scope.yaml`` holds several hundred Chinese and
English messages in categories (chit-chat, weather, homework, coding,
creative writing, jailbreaks, off-topic tasks that borrow on-topic words...),
written for this project. A catalog uses them as extra negatives unless it
says ``out_of_scope_pack: none``. Entries too close to one of the catalog's
own intent examples are dropped at build time (:func:`keep_mask`), so a
bank's "report a phishing text" is never taught as off topic by a pack entry
about writing one.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml

PACK_FILE = Path(__file__).parent / "packs" / "out_of_scope.yaml"
#: A pack entry whose cosine to any intent example reaches this is dropped. Paraphrases of one
#: request sit above it with the default model; distinct requests on related words sit below
#: (docs/quality.md shows the pack's effect and how many entries the bundled catalogs drop).
MAX_SIMILARITY_TO_INTENTS = 0.75


@lru_cache(maxsize=1)
def pack_texts() -> tuple[str, ...]:
    """Every message of the pack, in file order, without duplicates."""
    data = yaml.safe_load(PACK_FILE.read_text(encoding="utf-8"))
    texts = [text for category in data["categories"] for language in ("zh", "en")
             for text in category.get(language, [])]
    return tuple(dict.fromkeys(texts))


@lru_cache(maxsize=1)
def pack_categories() -> dict[str, int]:
    """Messages per category (for docs and tests)."""
    data = yaml.safe_load(PACK_FILE.read_text(encoding="utf-8"))
    return {category["name"]: len(category.get("zh", [])) + len(category.get("en", []))
            for category in data["categories"]}


def pack_fingerprint() -> str:
    """A hash of the pack's content, so editing it rebuilds every catalog that uses it."""
    return hashlib.sha256("\n".join(pack_texts()).encode()).hexdigest()[:16]


def keep_mask(pack_vectors: np.ndarray, intent_vectors: np.ndarray) -> np.ndarray:
    """True for each pack entry (unit vectors) below :data:`MAX_SIMILARITY_TO_INTENTS` to every intent example."""
    if len(intent_vectors) == 0 or len(pack_vectors) == 0:
        return np.ones(len(pack_vectors), dtype=bool)
    nearest = (pack_vectors @ intent_vectors.T).max(axis=1)
    return nearest < MAX_SIMILARITY_TO_INTENTS
