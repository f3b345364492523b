"""Character n-gram TF-IDF features: the lexical half of the head's input.

A sentence embedding blurs the surface cues that often separate neighbouring
intents (a product name, a code, one decisive word). Character n-grams keep
them, need no tokeniser and so work the same way for Chinese and English.
The head is fitted on both at once (``[embedding, n-grams]``); docs/quality.md
has the measured gain.

Only the vocabulary and the IDF weights are fitted, from the catalog's own
texts; no labels are involved. The values are scikit-learn's
``TfidfVectorizer(analyzer="char_wb", ngram_range=NGRAM_RANGE, sublinear_tf=True,
min_df=MIN_TEXTS)`` (tests compare the two), computed here so that loading and
using a built catalog does not import scikit-learn.
"""

from __future__ import annotations

from collections import Counter
from itertools import chain
from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np
from scipy import sparse

#: n-gram lengths, counted within words (a Chinese sentence without spaces is one word).
NGRAM_RANGE = (1, 3)
#: An n-gram must occur in at least this many catalog texts to become a feature.
MIN_TEXTS = 2


def char_wb_ngrams(text: str) -> list[str]:
    """The character n-grams of ``text``, lower-cased, within words padded by one space each side.

    The same n-grams, in the same order, as scikit-learn's ``char_wb`` analyzer
    with ``ngram_range=NGRAM_RANGE``.
    """
    return next(_analyse([text]))


def _analyse(texts: Iterable[str]) -> Iterator[list[str]]:
    """:func:`char_wb_ngrams` of each text; each distinct word is cut into n-grams once per call."""
    words: dict[str, list[str]] = {}
    for text in texts:
        grams: list[str] = []
        for word in text.lower().split():
            found = words.get(word)
            if found is None:
                found = words[word] = _word_ngrams(word)
            grams += found
        yield grams


def _word_ngrams(word: str) -> list[str]:
    """One word's n-grams: a padded word no longer than ``n`` counts once, whole, and ends the longer lengths."""
    padded = f" {word} "
    grams: list[str] = []
    for n in range(NGRAM_RANGE[0], NGRAM_RANGE[1] + 1):
        if len(padded) <= n:
            grams.append(padded)
            break
        grams += [padded[start:start + n] for start in range(len(padded) - n + 1)]
    return grams


class TfidfRows(NamedTuple):
    """TF-IDF rows as the three arrays of a CSR matrix (as :meth:`CharNgrams.transform`'s), without the matrix."""

    #: (n + 1,) int32: row i's entries are ``indptr[i]:indptr[i + 1]``.
    indptr: np.ndarray
    #: (entries,) int32 columns, ascending within each row.
    indices: np.ndarray
    #: (entries,) float32 values.
    data: np.ndarray


class CharNgrams:
    """Character n-gram TF-IDF features over a fixed vocabulary (rows are L2-normalised)."""

    def __init__(self, vocabulary: np.ndarray, idf: np.ndarray):
        self.vocabulary = np.asarray(vocabulary, dtype=str)
        self.idf = np.asarray(idf, dtype=np.float32)
        self._columns = {term: column for column, term in enumerate(self.vocabulary.tolist())}

    @classmethod
    def fit_transform(cls, texts: Sequence[str]) -> tuple["CharNgrams", sparse.csr_matrix]:
        """Learn the vocabulary and IDF weights of ``texts`` (n-grams in at least :data:`MIN_TEXTS` of them).

        Returns the featuriser and the features of ``texts`` (each text analysed once).
        IDF is scikit-learn's smoothed one: ``ln((1 + texts) / (1 + texts with the n-gram)) + 1``.
        """
        analysed = list(_analyse(texts))
        in_texts = Counter(gram for grams in analysed for gram in set(grams))
        vocabulary = sorted(gram for gram, count in in_texts.items() if count >= MIN_TEXTS)
        counts = np.array([in_texts[gram] for gram in vocabulary], dtype=np.float64)
        featuriser = cls(np.array(vocabulary, dtype=str), np.log((1 + len(analysed)) / (1 + counts)) + 1)
        return featuriser, featuriser._rows(analysed)

    @property
    def size(self) -> int:
        """Number of features."""
        return len(self.vocabulary)

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        """Features of ``texts``: (n, size), float32, sparse.

        1 + log count, times IDF, L2-normalised: scikit-learn's values, without
        its per-call validation, which costs ~0.4 ms a message and would be a
        third of the gate's latency.
        """
        return self._matrix(self.rows(texts))

    def rows(self, texts: Sequence[str]) -> TfidfRows:
        """:meth:`transform`'s rows as CSR arrays, without building a scipy matrix (the scoring path's form)."""
        columns = self._columns
        word_columns: dict[str, list[int]] = {}
        found_rows = []
        for text in texts:
            found: list[int] = []
            for word in text.lower().split():
                found_in_word = word_columns.get(word)
                if found_in_word is None:
                    found_in_word = word_columns[word] = [column for column in map(columns.get, _word_ngrams(word))
                                                          if column is not None]
                found += found_in_word
            found_rows.append(found)
        return self._tfidf(found_rows)

    def _rows(self, analysed: Iterable[list[str]]) -> sparse.csr_matrix:
        """TF-IDF rows of analysed texts (their n-gram lists)."""
        columns = self._columns
        return self._matrix(self._tfidf([[columns[gram] for gram in grams if gram in columns] for grams in analysed]))

    def _tfidf(self, found_rows: list[list[int]]) -> TfidfRows:
        """TF-IDF rows from each text's vocabulary columns, one per n-gram occurrence (in any order).

        Counted for the whole batch at once; each row's values are those of
        the row alone (its norm is its own dot product).
        """
        n_rows, stride = len(found_rows), max(self.size, 1)
        keys = np.fromiter(chain.from_iterable(found_rows), dtype=np.int64)
        if n_rows > 1:  # a key per (row, column), so one sort counts every row
            keys += np.arange(0, n_rows * stride, stride, dtype=np.int64).repeat(list(map(len, found_rows)))
        keys.sort()
        first = np.empty(len(keys) + 1, dtype=bool)  # where a distinct key starts, and the end
        first[0] = first[-1] = True
        np.not_equal(keys[1:], keys[:-1], out=first[1:-1])
        bounds = first.nonzero()[0]
        rows, columns = np.divmod(keys[bounds[:-1]], stride)
        weights = (1.0 + np.log(bounds[1:] - bounds[:-1], dtype=np.float32)) * self.idf[columns]
        indptr = np.zeros(n_rows + 1, dtype=np.int32)
        np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
        _normalise(weights, indptr.tolist())
        return TfidfRows(indptr, columns.astype(np.int32), weights)

    def _matrix(self, rows: TfidfRows) -> sparse.csr_matrix:
        """``rows`` as an (n, size) scipy matrix."""
        return sparse.csr_matrix(rows[::-1], shape=(len(rows.indptr) - 1, self.size))

    def state(self) -> dict[str, np.ndarray]:
        """The arrays the constructor takes back (plain strings and floats, no pickles)."""
        return {"lexical_vocabulary": self.vocabulary, "lexical_idf": self.idf}


def _normalise(weights: np.ndarray, bounds: list[int]) -> None:
    """Divide each row of ``weights`` (``bounds[i]:bounds[i + 1]``) by its L2 norm, in place."""
    for start, stop in zip(bounds, bounds[1:]):
        if stop > start:
            row = weights[start:stop]
            row /= np.sqrt(row @ row)
