"""The built-in bilingual out-of-scope pack: off-topic messages every catalog is contrasted with.

``gatekeeper/catalog/packs/out_of_scope.yaml`` holds several hundred Chinese and
English messages in categories (chit-chat, weather, homework, coding,
creative writing, jailbreaks, off-topic tasks that borrow on-topic words...),
written for this project. A catalog uses them as extra negatives unless it
says ``out_of_scope_pack: none``. At build time (:func:`keep_mask`) the pack
gives way to the catalog: an entry nearly the same as one of the catalog's
intent examples is dropped, and so is a whole category that the catalog
covers (a general assistant with a weather intent keeps none of the weather
entries), so the pack never teaches as off topic what the catalog handles.
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
#: A category is covered by the catalog, and dropped whole, when at least :data:`COVERED_SHARE`
#: of its entries have an intent example at cosine :data:`RELATED_SIMILARITY` or more. On CLINC150
#: (which has weather, translation, recipe and small-talk intents) those four categories go;
#: on the bundled telecom and banking catalogs none does.
RELATED_SIMILARITY = 0.6
COVERED_SHARE = 0.25


@lru_cache(maxsize=1)
def pack_entries() -> tuple[tuple[str, str], ...]:
    """(category, message) for every message of the pack, in file order, each message once."""
    data = yaml.safe_load(PACK_FILE.read_text(encoding="utf-8"))
    entries = {text: category["name"] for category in data["categories"] for language in ("zh", "en")
               for text in category.get(language, [])}
    return tuple((category, text) for text, category in entries.items())


def pack_fingerprint() -> str:
    """A hash of the pack's content and filter, so changing either rebuilds every catalog that uses it."""
    settings = f"{MAX_SIMILARITY_TO_INTENTS} {RELATED_SIMILARITY} {COVERED_SHARE}"
    content = "\n".join(f"{category}\t{text}" for category, text in pack_entries())
    return hashlib.sha256(f"{settings}\n{content}".encode()).hexdigest()[:16]


def keep_mask(pack_vectors: np.ndarray, categories: list[str], intent_vectors: np.ndarray) -> np.ndarray:
    """True for each pack entry (unit vectors, with its category) that the catalog's examples leave standing.

    An entry goes when an intent example is at :data:`MAX_SIMILARITY_TO_INTENTS`
    or nearer, or when its category is covered (see :data:`COVERED_SHARE`).
    """
    if len(intent_vectors) == 0 or len(pack_vectors) == 0:
        return np.ones(len(pack_vectors), dtype=bool)
    nearest = (pack_vectors @ intent_vectors.T).max(axis=1)
    related = nearest >= RELATED_SIMILARITY
    names = np.asarray(categories)
    covered = [name for name in set(categories) if related[names == name].mean() >= COVERED_SHARE]
    return (nearest < MAX_SIMILARITY_TO_INTENTS) & ~np.isin(names, covered)
