"""L2-regularised multinomial logistic regression, fitted with L-BFGS in float32.

The objective, solver and stopping rule are scikit-learn's
``LogisticRegression(C=C, max_iter=max_iter)`` with its default ``lbfgs``
solver, so the optimum is the same; what differs is speed. scikit-learn
keeps the parameters in float64, so every evaluation multiplies the float32
embeddings by float64 weights, which converts the whole matrix each time;
here both products run as float32 BLAS calls on the original rows (about 3x
faster on unit-length sentence embeddings), and the fit can start from
earlier weights (a warm start when a catalog changes a little).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize


@dataclass
class SoftmaxModel:
    """Fitted weights (d, k), biases (k,) for the sorted ``classes`` (k,), and L-BFGS iterations used."""

    weights: np.ndarray
    bias: np.ndarray
    classes: np.ndarray
    iterations: int


def fit_softmax(vectors: np.ndarray, targets: np.ndarray, c: float, max_iter: int,
                init: tuple[np.ndarray, np.ndarray] | None = None, tol: float = 1e-4) -> SoftmaxModel:
    """Fit ``targets`` (n,) on ``vectors`` (n, d) with inverse regularisation ``c``.

    Minimises mean cross-entropy + ||W||^2 / (2 c n) (biases unpenalised), as
    scikit-learn does; with two classes the penalty is doubled, which makes
    the symmetric two-column solution equal to scikit-learn's binomial one.
    ``init`` is (weights (d, k), biases (k,)) for the classes present in ``targets``.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    classes, codes = np.unique(targets, return_inverse=True)
    n, d = x.shape
    k = len(classes)
    if k < 2:
        raise ValueError("need at least two classes to fit")
    onehot = np.zeros((n, k), dtype=np.float32)
    rows = np.arange(n)
    onehot[rows, codes] = 1.0
    l2 = (2.0 if k == 2 else 1.0) / (c * n)

    def loss_and_gradient(flat: np.ndarray) -> tuple[float, np.ndarray]:
        weights = flat[:d * k].reshape(d, k).astype(np.float32)
        bias = flat[d * k:].astype(np.float32)
        logits = x @ weights
        logits += bias
        logits -= logits.max(axis=1, keepdims=True)
        true_class = logits[rows, codes].sum(dtype=np.float64)
        np.exp(logits, out=logits)
        norm = logits.sum(axis=1, keepdims=True)
        loss = float(np.log(norm).sum(dtype=np.float64) - true_class) / n
        logits /= norm
        logits -= onehot  # now the gradient of the loss per row and class
        grad_w = (x.T @ logits).astype(np.float64) / n + l2 * flat[:d * k].reshape(d, k)
        grad_b = logits.sum(axis=0, dtype=np.float64) / n
        loss += 0.5 * l2 * float(flat[:d * k] @ flat[:d * k])
        return loss, np.concatenate([grad_w.ravel(), grad_b])

    start = np.zeros(d * k + k)
    if init is not None:
        start[:d * k] = np.asarray(init[0], dtype=np.float64).ravel()
        start[d * k:] = init[1]
    result = minimize(loss_and_gradient, start, method="L-BFGS-B", jac=True,
                      options={"maxiter": max_iter, "maxls": 50, "gtol": tol, "ftol": 64 * np.finfo(float).eps})
    return SoftmaxModel(weights=result.x[:d * k].reshape(d, k).astype(np.float32),
                        bias=result.x[d * k:].astype(np.float32), classes=classes, iterations=int(result.nit))
