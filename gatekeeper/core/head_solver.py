"""The head's solver: L2-regularised multinomial logistic regression over a dense and a sparse block.

The head's input is a 512-column dense embedding beside a few thousand sparse
n-gram columns. A solver that takes one matrix (scikit-learn's) needs them
stacked into one sparse matrix, and then multiplies the dense half as sparse,
five times slower than BLAS does. Here the blocks stay apart: the logits are
``dense @ W_dense + lexical @ W_lexical + b`` and the gradient
``dense.T @ R`` and ``lexical.T @ R``, the dense products in float32 BLAS, the
softmax, loss and the solver's state in float64.

The objective and stopping rule are scikit-learn's ``LogisticRegression(solver="lbfgs")``
(multinomial): mean log-loss plus ``||W||^2 / (2 C n)``, intercepts
unpenalised, stopping when no gradient entry exceeds ``tol`` (its ``gtol``);
tests compare the optimum with scikit-learn's. The minimiser is plain L-BFGS
with SciPy's strong-Wolfe line search (:func:`_lbfgs` says why not L-BFGS-B).

A fit also returns the gradient it stopped at, and takes an earlier fit's as
a ``tilt``: from a warm start, it then minimises the objective minus that
gradient's linear term, whose gradient at the earlier optimum is only what an
edit of the data changed (see :func:`fit_multinomial`).
"""

from __future__ import annotations

import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import sparse

#: Steps L-BFGS remembers (SciPy's default) and trial points per line search (scikit-learn's setting).
_MEMORY = 10
_MAX_LINE_SEARCH = 50


@dataclass(frozen=True)
class HeadInputs:
    """What a head is fitted on: the embeddings (n, d), and their n-gram features (n, v) or None."""

    dense: np.ndarray
    lexical: sparse.csr_matrix | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, d + v): the shape of the two blocks side by side."""
        width = 0 if self.lexical is None else self.lexical.shape[1]
        return self.dense.shape[0], self.dense.shape[1] + width

    def __getitem__(self, rows: np.ndarray) -> "HeadInputs":
        """The inputs of the selected rows (a boolean mask or indices)."""
        return HeadInputs(self.dense[rows], None if self.lexical is None else self.lexical[rows])

    def __matmul__(self, weights: np.ndarray) -> np.ndarray:
        """``[dense, lexical] @ weights`` for weights of shape (d + v, k), without stacking the blocks."""
        dim = self.dense.shape[1]
        product = self.dense @ weights[:dim]
        if self.lexical is not None:
            product += self.lexical @ weights[dim:]
        return product


@dataclass(frozen=True)
class SolverResult:
    """Fitted weights (d + v, k) and biases (k,), float32, the solver's iteration count, and the objective's
    gradient there (d + v + 1, k): weight rows, then the biases' row."""

    weights: np.ndarray
    bias: np.ndarray
    iterations: int
    gradient: np.ndarray


def fit_multinomial(inputs: HeadInputs, targets: np.ndarray, n_classes: int, penalty: float, tol: float,
                    max_iter: int, init: tuple[np.ndarray, np.ndarray] | None = None,
                    tilt: np.ndarray | None = None, workers: int = 1) -> SolverResult:
    """Minimise mean log-loss + ``penalty / 2 * ||W||^2`` over classes ``0..n_classes-1``.

    ``targets`` are class ids; ``init`` is a starting point (weights (d + v, k),
    biases (k,)), else zeros. Stops when no gradient entry exceeds ``tol`` or
    after ``max_iter`` iterations. Run it with single-threaded BLAS (see
    :mod:`gatekeeper.core.parallel`): several fits in parallel beat one fit on
    several threads.

    ``tilt`` (d + v + 1, k) is the gradient an earlier fit stopped at (its
    :attr:`SolverResult.gradient`), ``init`` that fit's solution: the solver
    then minimises the objective minus ``tilt . W``, to ``tol``. The earlier
    fit left a residual gradient up to its own tolerance; a warm start at a
    tolerance below it would spend its iterations on that residual, the tilt
    leaves it in place and spends them on what the data's change moved. The
    returned gradient is the objective's own, tilt included.

    ``workers`` > 1 evaluates the objective in that many blocks of rows at
    once, one thread each (for a fit that would otherwise leave cores idle;
    the sums then round differently, in the last bits).
    """
    rows = inputs.shape[1] + 1
    start = np.zeros((rows, n_classes))
    if init is not None:
        start[:-1], start[-1] = init
    shift = None if tilt is None else np.asarray(tilt, dtype=np.float64).ravel()
    workers = max(1, min(workers, len(targets)))
    with (ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gatekeeper-rows") if workers > 1
          else nullcontext()) as pool:
        objective = (_RowBlocks(inputs, targets, n_classes, penalty, pool, workers) if pool
                     else _Objective(inputs, targets, n_classes, penalty))
        solution, gradient, iterations = _lbfgs(objective if shift is None else _Tilted(objective, shift),
                                                start.ravel(), tol, max_iter)
    if shift is not None:
        gradient = gradient + shift
    solution = solution.reshape(rows, n_classes).astype(np.float32)
    return SolverResult(weights=solution[:-1], bias=solution[-1], iterations=iterations,
                        gradient=gradient.reshape(rows, n_classes).astype(np.float32))


def _lbfgs(objective: Callable[[np.ndarray], tuple[float, np.ndarray]], start: np.ndarray, tol: float,
           max_iter: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Minimise ``objective`` (value and gradient) by L-BFGS from ``start``: the point, the gradient there and
    the iterations taken.

    SciPy's L-BFGS-B also handles bounds, and its step costs O(memory^2) per
    parameter per iteration: measured on SMP2017's head (190k parameters), it
    took 8x the time of the objective itself (4.6 s of a 5.7 s fit). Without
    bounds, the two-loop recursion below costs O(memory) per parameter; the
    step length comes from SciPy's strong-Wolfe line search.
    """
    # Imported at fit time only: loading a built catalog stays light.
    from scipy.optimize import line_search

    cached = _LastValue(objective)
    point, (value, gradient) = start, cached(start)
    steps: deque[tuple[np.ndarray, np.ndarray, float]] = deque(maxlen=_MEMORY)
    for iteration in range(max_iter):
        if np.abs(gradient).max() <= tol:
            return point, gradient, iteration
        direction = _two_loop(gradient, steps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # SciPy's LineSearchWarning: handled below
            length = line_search(cached.value, cached.gradient, point, direction, gradient, value,
                                 maxiter=_MAX_LINE_SEARCH)[0]
        if length is None:  # no acceptable step along the direction: as close as the arithmetic allows
            return point, gradient, iteration
        step = length * direction
        point = point + step
        new_value, new_gradient = cached(point)
        change = new_gradient - gradient
        curvature = float(step @ change)
        if curvature > 0:
            steps.append((step, change, 1.0 / curvature))
        value, gradient = new_value, new_gradient
    return point, gradient, max_iter


def _two_loop(gradient: np.ndarray, steps: deque[tuple[np.ndarray, np.ndarray, float]]) -> np.ndarray:
    """The L-BFGS search direction: minus the inverse-Hessian estimate from ``steps`` times the gradient.

    With no steps yet, the steepest descent of unit length, as SciPy's L-BFGS-B takes: from a warm
    start, where the gradient is tiny, a step of the gradient's own length would be far too short.
    """
    if not steps:
        return -gradient / float(np.linalg.norm(gradient))
    direction = -gradient
    alphas = []
    for step, change, rho in reversed(steps):
        alpha = rho * float(step @ direction)
        direction -= alpha * change
        alphas.append(alpha)
    step, change, rho = steps[-1]
    direction *= 1.0 / (rho * float(change @ change))  # s.y / y.y: the usual initial Hessian scale
    for (step, change, rho), alpha in zip(steps, reversed(alphas)):
        direction += (alpha - rho * float(change @ direction)) * step
    return direction


class _LastValue:
    """An objective returning (value, gradient), remembered at the last point: the line search asks for each."""

    def __init__(self, objective: Callable[[np.ndarray], tuple[float, np.ndarray]]):
        self._objective = objective
        self._point: np.ndarray | None = None
        self._result: tuple[float, np.ndarray] = (0.0, np.zeros(0))

    def __call__(self, point: np.ndarray) -> tuple[float, np.ndarray]:
        """Value and gradient at ``point``."""
        if self._point is None or not np.array_equal(point, self._point):
            self._point, self._result = point.copy(), self._objective(point)
        return self._result

    def value(self, point: np.ndarray) -> float:
        """The objective's value at ``point``."""
        return self(point)[0]

    def gradient(self, point: np.ndarray) -> np.ndarray:
        """The objective's gradient at ``point``."""
        return self(point)[1]


class _RowBlocks:
    """:class:`_Objective` with its rows cut into ``blocks`` evaluated at once in ``pool``: the blocks' mean
    losses and gradients weighted by their share of the rows, plus the penalty."""

    def __init__(self, inputs: HeadInputs, targets: np.ndarray, n_classes: int, penalty: float,
                 pool: ThreadPoolExecutor, blocks: int):
        bounds = np.linspace(0, len(targets), blocks + 1).astype(int)
        self.parts = [(_Objective(inputs[np.arange(low, high)], targets[low:high], n_classes, 0.0),
                       (high - low) / len(targets)) for low, high in zip(bounds[:-1], bounds[1:])]
        self.n_classes = n_classes
        self.penalty = penalty
        self.pool = pool

    def __call__(self, flat: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean log-loss plus penalty, and its gradient (flat, float64)."""
        results = list(self.pool.map(lambda part: part[0](flat), self.parts))
        value = sum(share * part_value for (_, share), (part_value, _) in zip(self.parts, results))
        gradient = sum(share * part_gradient for (_, share), (_, part_gradient) in zip(self.parts, results))
        weights = flat.reshape(-1, self.n_classes)[:-1]
        gradient.reshape(-1, self.n_classes)[:-1] += self.penalty * weights
        return value + 0.5 * self.penalty * float(np.einsum("ij,ij->", weights, weights)), gradient


class _Tilted:
    """``objective`` minus the linear term ``shift . point``: value and gradient."""

    def __init__(self, objective: Callable[[np.ndarray], tuple[float, np.ndarray]], shift: np.ndarray):
        self._objective = objective
        self._shift = shift

    def __call__(self, point: np.ndarray) -> tuple[float, np.ndarray]:
        """Value and gradient at ``point``."""
        value, gradient = self._objective(point)
        return value - float(self._shift @ point), gradient - self._shift


class _Objective:
    """Loss and gradient of :func:`fit_multinomial` at a flat parameter vector (weights rows, then biases)."""

    def __init__(self, inputs: HeadInputs, targets: np.ndarray, n_classes: int, penalty: float):
        self.dense = np.ascontiguousarray(inputs.dense, dtype=np.float32)
        self.lexical = None if inputs.lexical is None else inputs.lexical.astype(np.float32).tocsr()
        # lexical.T as CSR once: its products with the residuals are then row-parallel scans like the forward ones.
        self.lexical_t = None if self.lexical is None else self.lexical.T.tocsr()
        self.rows = np.arange(len(targets))
        self.targets = np.asarray(targets)
        self.n_classes = n_classes
        self.penalty = penalty

    def __call__(self, flat: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean log-loss plus penalty, and its gradient (flat, float64)."""
        params = flat.reshape(-1, self.n_classes)
        weights, dim = params[:-1], self.dense.shape[1]
        single = weights.astype(np.float32)
        logits = (self.dense @ single[:dim]).astype(np.float64)
        if self.lexical is not None:
            logits += self.lexical @ single[dim:]
        logits += params[-1]
        logits -= logits.max(axis=1, keepdims=True)
        picked = logits[self.rows, self.targets]
        np.exp(logits, out=logits)
        totals = logits.sum(axis=1)
        n = len(self.targets)
        loss = float(np.log(totals).sum() - picked.sum()) / n
        residual = logits / totals[:, None]  # softmax probabilities ...
        residual[self.rows, self.targets] -= 1.0  # ... minus the one-hot targets
        residual /= n
        single_residual = residual.astype(np.float32)
        gradient = np.empty_like(params)
        gradient[:dim] = self.dense.T @ single_residual
        if self.lexical_t is not None:
            gradient[dim:-1] = self.lexical_t @ single_residual
        gradient[:-1] += self.penalty * weights
        gradient[-1] = residual.sum(axis=0)
        loss += 0.5 * self.penalty * float(np.einsum("ij,ij->", weights, weights))
        return loss, gradient.ravel()
