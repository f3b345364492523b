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
from typing import Iterable, Iterator, Sequence

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
        return self._rows(_analyse(texts))

    def _rows(self, analysed: Iterable[list[str]]) -> sparse.csr_matrix:
        """TF-IDF rows of analysed texts (their n-gram lists)."""
        indptr, indices, values = [0], [np.zeros(0, np.int32)], [np.zeros(0, np.float32)]
        for grams in analysed:
            found = [self._columns[gram] for gram in grams if gram in self._columns]
            columns, counts = np.unique(np.asarray(found, dtype=np.int32), return_counts=True)
            weights = (1.0 + np.log(counts, dtype=np.float32)) * self.idf[columns]
            norm = float(np.sqrt(weights @ weights))
            indices.append(columns)
            values.append(weights / norm if norm > 0 else weights)
            indptr.append(indptr[-1] + len(columns))
        return sparse.csr_matrix((np.concatenate(values), np.concatenate(indices), np.array(indptr, dtype=np.int32)),
                                 shape=(len(indptr) - 1, self.size))

    def _weigh(self, counts: sparse.csr_matrix, column: np.ndarray) -> sparse.csr_matrix:
        """The rows :meth:`_rows` makes, from n-gram counts (texts, n-grams) and each n-gram's column (-1: none).

        The row norms are taken row by row, as :meth:`_rows` takes them, so the values are the same bits.
        """
        found = counts.tocoo()
        columns = column[found.col]
        kept = columns >= 0
        rows = sparse.csr_matrix((found.data[kept], (found.row[kept], columns[kept])),
                                 shape=(counts.shape[0], self.size))
        rows.sort_indices()
        values = (1.0 + np.log(rows.data.astype(np.float32))) * self.idf[rows.indices]
        for start, end in zip(rows.indptr[:-1].tolist(), rows.indptr[1:].tolist()):
            weights = values[start:end]
            norm = float(np.sqrt(weights @ weights))
            if norm > 0:
                values[start:end] = weights / norm
        return sparse.csr_matrix((values, rows.indices.astype(np.int32), rows.indptr.astype(np.int32)),
                                 shape=rows.shape)

    def state(self) -> dict[str, np.ndarray]:
        """The arrays the constructor takes back (plain strings and floats, no pickles)."""
        return {"lexical_vocabulary": self.vocabulary, "lexical_idf": self.idf}
