"""The calibrator: one object, fitted, applied, and kept as JSON (tuning file) or arrays (state folder)."""

from __future__ import annotations

import json

import numpy as np

from gatekeeper.core.calibrator import Calibrator


def _features(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three features where in-scope rows have a higher first feature and a lower third one."""
    rng = np.random.default_rng(seed)
    inside = rng.random(400) < 0.5
    features = rng.normal(size=(400, 3)) + np.where(inside[:, None], [2.0, 0.5, -1.0], [0.0, 0.0, 0.0])
    return features, inside


def test_a_fitted_calibrator_ranks_in_scope_rows_higher():
    features, inside = _features()
    probability = Calibrator.fit(features, inside).probability(features)
    assert probability.dtype == np.float32 and ((probability > 0) & (probability < 1)).all()
    assert probability[inside].mean() > 0.7 > 0.3 > probability[~inside].mean()


def test_json_and_array_forms_give_the_same_probabilities():
    features, inside = _features(1)
    calibrator = Calibrator.fit(features, inside)
    from_json = Calibrator.from_dict(json.loads(json.dumps(calibrator.to_dict())))
    from_arrays = Calibrator.from_state({key: np.asarray(value) for key, value in calibrator.state().items()})
    expected = calibrator.probability(features)
    assert np.array_equal(from_json.probability(features), expected)
    assert np.array_equal(from_arrays.probability(features), expected)


def test_without_negatives_the_score_follows_the_first_feature():
    features, _ = _features(2)
    probability = Calibrator.first_feature(features).probability(features)
    order = np.argsort(features[:, 0])
    assert (np.diff(probability[order]) >= 0).all()
    assert abs(float(np.median(probability)) - 0.5) < 0.05
