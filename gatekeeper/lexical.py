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


def _vectorizer(min_df: int = 1) -> TfidfVectorizer:
    """The one vectorizer configuration: fits the vocabulary and IDF, and supplies the analyzer."""
    return TfidfVectorizer(analyzer="char_wb", ngram_range=NGRAM_RANGE, sublinear_tf=True, min_df=min_df,
                           dtype=np.float32)


class CharNgrams:
    """Character n-gram TF-IDF features over a fixed vocabulary (rows are L2-normalised)."""

    def __init__(self, vocabulary: np.ndarray, idf: np.ndarray):
        self.vocabulary = np.asarray(vocabulary, dtype=str)
        self.idf = np.asarray(idf, dtype=np.float32)
        self._columns = {term: column for column, term in enumerate(self.vocabulary.tolist())}
        self._analyze = _vectorizer().build_analyzer()

    @classmethod
    def fit_transform(cls, texts: Sequence[str]) -> tuple["CharNgrams", sparse.csr_matrix]:
        """Learn the vocabulary and IDF weights of ``texts`` (at least :data:`MIN_TEXTS` of them).

        Returns the featuriser and the features of ``texts`` (one pass over them).
        """
        vectorizer = _vectorizer(min_df=MIN_TEXTS)
        rows = vectorizer.fit_transform(list(texts))
        return cls(vectorizer.get_feature_names_out(), vectorizer.idf_), rows.tocsr()

    @property
    def size(self) -> int:
        """Number of features."""
        return len(self.vocabulary)

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        """Features of ``texts``: (n, size), float32, sparse.

        The same values as scikit-learn's ``TfidfVectorizer.transform``
        (1 + log count, times IDF, L2-normalised; tests compare the two) from
        the same analyzer, without its per-call validation, which costs ~0.4 ms
        a message and would be a third of the gate's latency.
        """
        indptr = np.zeros(len(texts) + 1, dtype=np.int32)
        indices, values = [np.zeros(0, np.int32)], [np.zeros(0, np.float32)]
        for row, text in enumerate(texts):
            found = [self._columns[gram] for gram in self._analyze(text) if gram in self._columns]
            columns, counts = np.unique(np.asarray(found, dtype=np.int32), return_counts=True)
            weights = (1.0 + np.log(counts, dtype=np.float32)) * self.idf[columns]
            norm = float(np.sqrt(weights @ weights))
            indices.append(columns)
            values.append(weights / norm if norm > 0 else weights)
            indptr[row + 1] = indptr[row] + len(columns)
        return sparse.csr_matrix((np.concatenate(values), np.concatenate(indices), indptr),
                                 shape=(len(texts), self.size))

    def state(self) -> dict[str, np.ndarray]:
        """The arrays the constructor takes back (plain strings and floats, no pickles)."""
        return {"lexical_vocabulary": self.vocabulary, "lexical_idf": self.idf}
