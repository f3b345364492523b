"""The head and its cross-fitted copies: fitted in parallel, warm-started from the previous build.

The catalog's rows are split into folds by a hash of their text, so editing a
catalog moves only the edited rows. Each build saves its heads (the full one
and one per fold) beside the index; the next build of a catalog with the same
intents starts every fit from them, and since the data barely changed, the
fits converge in a few iterations instead of dozens. Heads over n-gram
features are saved with their vocabulary and realigned to the new one first
(:func:`realign`), since an edit can add or drop n-grams.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np

from gatekeeper.core.parallel import available_cores, single_threaded_pool
from gatekeeper.core.scoring import HEAD_TOL, Head, HeadInputs, fit_head

CROSS_FIT_FOLDS = 3
#: Gradient tolerance of a warm-started full head. At the cold tolerance an
#: edit of a few rows out of thousands moves the mean-loss gradient less than
#: the tolerance, so the solver would stop at once and ignore the edit; ten
#: times tighter, the added examples are learnt (checked on CLINC150: an edit
#: of 3 rows, and the head's test predictions agree with a cold fit's at 99.6%).
WARM_FULL_HEAD_TOL = HEAD_TOL / 10

Result = TypeVar("Result")


@dataclass
class Heads:
    """The head fitted on every row, and one per fold fitted on the rows outside that fold."""

    full: Head
    folds: list[Head]
    #: The n-grams whose weights follow the embedding's in every head (empty without n-gram features).
    vocabulary: np.ndarray


def fold_ids(texts: list[str], n_folds: int = CROSS_FIT_FOLDS) -> np.ndarray:
    """The fold of each row, from a hash of its text (stable when other rows change)."""
    return np.array([int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little") % n_folds
                     for text in texts], dtype=np.int32)


def fit_heads(inputs: HeadInputs, vocabulary: np.ndarray, labels: np.ndarray, n_intents: int,
              folds: np.ndarray, previous: Heads | None, per_fold: Callable[[int, Head], Result],
              on_fitted: Callable[[int, int], None] | None = None) -> tuple[Heads, list[Result]]:
    """Fit the full head and every fold's head, each warm-started from ``previous`` if given.

    ``inputs`` are :func:`gatekeeper.core.scoring.head_inputs` over ``vocabulary``'s n-grams.
    ``folds`` holds each row's fold in ``range(CROSS_FIT_FOLDS)`` (see :func:`fold_ids`).
    ``per_fold(fold, head)`` runs as soon as that fold's head is fitted, alongside
    the remaining fits (a warm full head takes longest); returns the heads and
    the results of ``per_fold`` in fold order. ``on_fitted(done, total)`` is
    called as each fit finishes (for a progress bar).
    """
    masks = [np.ones(len(labels), bool)] + [folds != fold for fold in range(CROSS_FIT_FOLDS)]
    if previous is None or len(previous.folds) != CROSS_FIT_FOLDS:
        jobs = [(mask, None, HEAD_TOL) for mask in masks]
    else:
        previous = realign(previous, vocabulary)
        jobs = [(masks[0], previous.full, WARM_FULL_HEAD_TOL)]
        jobs += [(mask, init, HEAD_TOL) for mask, init in zip(masks[1:], previous.folds)]

    def fit(mask: np.ndarray, init: Head | None, tol: float) -> Head:
        return fit_head(inputs[mask], labels[mask], n_intents, init=init, tol=tol)

    with single_threaded_pool(available_cores()) as pool:
        fitted = [pool.submit(fit, *job) for job in jobs]
        if on_fitted is not None:
            finished = iter(range(1, len(jobs) + 1))  # next() on an iterator is atomic under the GIL
            for future in fitted:
                future.add_done_callback(lambda _: on_fitted(next(finished), len(jobs)))
        # Queued after every fit, so a follow-up only ever waits for a fit that is already running.
        followers = [pool.submit(lambda fold, head: per_fold(fold, head.result()), fold, head)
                     for fold, head in enumerate(fitted[1:])]
        heads = Heads(full=fitted[0].result(), folds=[head.result() for head in fitted[1:]], vocabulary=vocabulary)
        return heads, [follower.result() for follower in followers]


def realign(heads: Heads, vocabulary: np.ndarray) -> Heads:
    """``heads`` with their n-gram rows moved to where ``vocabulary`` has them; new n-grams start at 0."""
    if np.array_equal(heads.vocabulary, vocabulary):
        return heads
    dim = heads.full[0].shape[0] - len(heads.vocabulary)
    _, new_rows, old_rows = np.intersect1d(vocabulary, heads.vocabulary, assume_unique=True, return_indices=True)

    def move(head: Head) -> Head:
        weights, bias = head
        moved = np.zeros((dim + len(vocabulary), weights.shape[1]), dtype=weights.dtype)
        moved[:dim] = weights[:dim]
        moved[dim + new_rows] = weights[dim + old_rows]
        return moved, bias

    return Heads(full=move(heads.full), folds=[move(head) for head in heads.folds], vocabulary=vocabulary)
