"""The calibrator: P(in scope) from a message's raw score features, by logistic regression on standardised ones.

One object holds its parameters; the build fits it on cross-fitted features,
``gatekeeper tune`` refits it on labelled traffic and saves it as JSON
(:meth:`Calibrator.to_dict`), and the state folder keeps it as arrays
(:meth:`Calibrator.state`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np

from gatekeeper.core.parallel import single_threaded

#: Keys of :meth:`Calibrator.state` (the names the state folder has always used).
_STATE_KEYS = ("calibrator_weights", "calibrator_bias", "feature_mean", "feature_scale")


@dataclass(frozen=True)
class Calibrator:
    """``sigmoid(((features - mean) / scale) @ weights + bias)``: the probability that a message is in scope."""

    weights: np.ndarray
    bias: float
    mean: np.ndarray
    scale: np.ndarray

    def __post_init__(self) -> None:
        for name in ("weights", "mean", "scale"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        object.__setattr__(self, "bias", float(self.bias))

    @classmethod
    def fit(cls, features: np.ndarray, in_scope: np.ndarray, weights: np.ndarray | None = None) -> "Calibrator":
        """Logistic regression of in-scope (True) against out-of-scope rows, each row weighing ``weights``
        (default 1) before the classes are balanced."""
        # Imported at fit time only (:func:`import_solver`): loading a built catalog stays light.
        from sklearn.linear_model import LogisticRegression

        mean = features.mean(axis=0)
        scale = features.std(axis=0)
        scale[scale < 1e-9] = 1.0
        model = LogisticRegression(C=1.0, max_iter=1000, class_weight="balanced")
        with single_threaded():
            model.fit((features - mean) / scale, in_scope.astype(int), sample_weight=weights)
        return cls(model.coef_[0], float(model.intercept_[0]), mean, scale)

    @classmethod
    def first_feature(cls, features: np.ndarray) -> "Calibrator":
        """With no negatives to fit on: the standardised first feature (the head's logit), squashed to (0, 1)."""
        weights = np.zeros(features.shape[1])
        weights[0] = 1.0
        return cls(weights, 0.0, features.mean(axis=0), np.maximum(features.std(axis=0), 1e-9))

    def probability(self, features: np.ndarray) -> np.ndarray:
        """P(in scope) of each row of ``features`` (n, F), as float32."""
        z = ((features - self.mean) / self.scale) @ self.weights + self.bias
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def to_dict(self) -> dict[str, list[float] | float]:
        """The parameters, JSON-ready (what the tuning file keeps)."""
        return {"weights": self.weights.tolist(), "bias": self.bias, "mean": self.mean.tolist(),
                "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> "Calibrator":
        """The calibrator :meth:`to_dict` described."""
        return cls(data["weights"], data["bias"], data["mean"], data["scale"])

    def state(self) -> dict[str, np.ndarray]:
        """The parameters as arrays, for the state folder."""
        return dict(zip(_STATE_KEYS, (self.weights, np.array(self.bias), self.mean, self.scale)))

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> "Calibrator":
        """The calibrator :meth:`state` stored."""
        weights, bias, mean, scale = (state[key] for key in _STATE_KEYS)
        return cls(weights, float(bias), mean, scale)


def import_solver() -> None:
    """Import what :meth:`Calibrator.fit` needs (scikit-learn: ~0.4 s in a fresh process), so that a build can do
    it on a core its fits leave idle rather than after them."""
    importlib.import_module("sklearn.linear_model")
