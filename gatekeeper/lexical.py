"""Character n-gram TF-IDF features: the lexical half of the head's input.

A sentence embedding blurs the surface cues that often separate neighbouring
intents (a product name, a code, one decisive word). Character n-grams keep
them, need no tokeniser and so work the same way for Chinese and English.
The head is fitted on both at once (``[embedding, n-grams]``); docs/quality.md
has the measured gain.

Only the vocabulary and the IDF weights are fitted, from the catalog's own
texts; no labels are involved.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer

#: n-gram lengths, counted within words (a Chinese sentence without spaces is one word).
NGRAM_RANGE = (1, 3)
#: An n-gram must occur in at least this many catalog texts to become a feature.
MIN_TEXTS = 2


def _vectorizer(vocabulary: dict[str, int] | None = None, min_df: int = 1) -> TfidfVectorizer:
    """The one vectorizer configuration, for fitting (``min_df``) or rebuilding (``vocabulary``)."""
    return TfidfVectorizer(analyzer="char_wb", ngram_range=NGRAM_RANGE, sublinear_tf=True, min_df=min_df,
                           dtype=np.float32, vocabulary=vocabulary)


class CharNgrams:
    """A fitted character n-gram TF-IDF featuriser (rows are L2-normalised)."""

    def __init__(self, vectorizer: TfidfVectorizer):
        self._vectorizer = vectorizer
        self.vocabulary = np.asarray(vectorizer.get_feature_names_out(), dtype=str)

    @classmethod
    def fit(cls, texts: Sequence[str]) -> "CharNgrams":
        """Learn the vocabulary and IDF weights of ``texts`` (at least :data:`MIN_TEXTS` of them)."""
        return cls(_vectorizer(min_df=MIN_TEXTS).fit(list(texts)))

    @classmethod
    def from_state(cls, vocabulary: np.ndarray, idf: np.ndarray) -> "CharNgrams":
        """Rebuild from :meth:`state`."""
        vectorizer = _vectorizer(vocabulary={str(term): i for i, term in enumerate(vocabulary)})
        vectorizer.idf_ = np.asarray(idf, dtype=np.float32)
        return cls(vectorizer)

    @property
    def size(self) -> int:
        """Number of features."""
        return len(self.vocabulary)

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        """Features of ``texts``: (n, size), float32, sparse."""
        return self._vectorizer.transform(list(texts))

    def state(self) -> dict[str, np.ndarray]:
        """The arrays :meth:`from_state` needs (plain strings and floats, no pickles)."""
        return {"lexical_vocabulary": self.vocabulary, "lexical_idf": self._vectorizer.idf_.astype(np.float32)}
