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

from itertools import chain
from typing import NamedTuple, Sequence

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
    return list(chain.from_iterable(_word_ngrams(word) for word in text.lower().split()))


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


def _gram_counts(texts: Sequence[str]) -> tuple[list[str], sparse.csr_matrix]:
    """Every n-gram of ``texts`` (as :func:`char_wb_ngrams` cuts them), and how often each text has each:
    a (texts, n-grams) count matrix. Each distinct word is cut once."""
    word_ids: dict[str, int] = {}
    tokens = [[word_ids.setdefault(word, len(word_ids)) for word in text.lower().split()] for text in texts]
    gram_ids: dict[str, int] = {}
    per_word = [np.array([gram_ids.setdefault(gram, len(gram_ids)) for gram in _word_ngrams(word)], dtype=np.int64)
                for word in word_ids]
    words = np.fromiter(chain.from_iterable(tokens), dtype=np.int64)
    sizes = np.array([len(grams) for grams in per_word], dtype=np.int64)
    columns = np.concatenate([per_word[word] for word in words.tolist()] or [np.zeros(0, np.int64)])
    rows = np.repeat(np.repeat(np.arange(len(texts)), [len(words_of) for words_of in tokens]),
                     sizes[words] if len(words) else np.zeros(0, np.int64))
    counts = sparse.csr_matrix((np.ones(len(columns), dtype=np.int64), (rows, columns)),
                               shape=(len(texts), len(gram_ids)))
    counts.sum_duplicates()
    return list(gram_ids), counts


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

        Returns the featuriser and the features of ``texts``, the values :meth:`transform` gives.
        IDF is scikit-learn's smoothed one: ``ln((1 + texts) / (1 + texts with the n-gram)) + 1``.
        The n-grams are counted in one sparse matrix (:func:`_gram_counts`), not text by text.
        """
        grams, counts = _gram_counts(texts)
        in_texts = np.bincount(counts.indices, minlength=len(grams))
        chosen = np.array(sorted(np.flatnonzero(in_texts >= MIN_TEXTS).tolist(), key=grams.__getitem__),
                          dtype=np.int64)
        featuriser = cls(np.array([grams[gram] for gram in chosen.tolist()], dtype=str),
                         np.log((1 + len(texts)) / (1 + in_texts[chosen].astype(np.float64))) + 1)
        column = np.full(len(grams), -1, dtype=np.int64)
        column[chosen] = np.arange(len(chosen))
        return featuriser, featuriser._weigh(counts, column)

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

    def _weigh(self, counts: sparse.csr_matrix, column: np.ndarray) -> sparse.csr_matrix:
        """The rows :meth:`transform` makes, from n-gram counts (texts, n-grams) and each n-gram's column (-1: none).

        The row norms are taken row by row, as :meth:`_tfidf` takes them, so the values are the same bits.
        """
        found = counts.tocoo()
        columns = column[found.col]
        kept = columns >= 0
        rows = sparse.csr_matrix((found.data[kept], (found.row[kept], columns[kept])),
                                 shape=(counts.shape[0], self.size))
        rows.sort_indices()
        values = (1.0 + np.log(rows.data.astype(np.float32))) * self.idf[rows.indices]
        _normalise(values, rows.indptr.tolist())
        return sparse.csr_matrix((values, rows.indices.astype(np.int32), rows.indptr.astype(np.int32)),
                                 shape=rows.shape)

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
