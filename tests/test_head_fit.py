"""The head's own solver: scikit-learn's optimum, the two input blocks kept apart, warm starts."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml
from scipy import sparse
from scipy.special import logsumexp
from sklearn.linear_model import LogisticRegression

from gatekeeper.catalog.loader import load_catalog
from gatekeeper.core.fit import build_artifacts
from gatekeeper.core.head_fitting import WARM_FULL_HEAD_TOL
from gatekeeper.core.head_solver import fit_multinomial
from gatekeeper.core.index import OUT_OF_SCOPE
from gatekeeper.core.lexical import CharNgrams
from gatekeeper.core.parallel import single_threaded
from gatekeeper.core.scoring import ABSENT_CLASS_BIAS, HEAD_C, HEAD_TOL, fit_head, head_inputs
from gatekeeper.gate import Gate
from tests.conftest import INTENTS

#: Tolerance both solvers are run to when their optima are compared.
TIGHT = 1e-7


@pytest.fixture(scope="module")
def telecom(use_embedder):
    """The bundled telecom catalog's rows: embeddings, n-gram features, labels (-1 out of scope), intents."""
    catalog = load_catalog(INTENTS / "telecom_zh.yaml")
    texts = [text for intent in catalog.intents for text in intent.examples] + list(catalog.out_of_scope)
    labels = np.array([i for i, intent in enumerate(catalog.intents) for _ in intent.examples]
                      + [OUT_OF_SCOPE] * len(catalog.out_of_scope), dtype=np.int32)
    _, rows = CharNgrams.fit_transform(texts)
    return use_embedder.encode(texts), rows, labels, len(catalog.intents)


def _scikit_learn_head(inputs: sparse.csr_matrix, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's head on the stacked inputs, as columns (d, k) and biases, two classes made symmetric."""
    model = LogisticRegression(C=HEAD_C, tol=TIGHT, max_iter=5000).fit(inputs, targets)
    if len(model.classes_) == 2:
        return np.stack([-model.coef_[0], model.coef_[0]], axis=1) / 2, np.array([-1, 1]) * model.intercept_[0] / 2
    return model.coef_.T, model.intercept_


def _objective(inputs: sparse.csr_matrix, targets: np.ndarray, head: tuple[np.ndarray, np.ndarray]) -> float:
    """scikit-learn's objective of a multinomial head: C * summed log-loss + ||W||^2 / 2."""
    logits = inputs @ head[0].astype(np.float64) + head[1]
    losses = logsumexp(logits, axis=1) - logits[np.arange(len(targets)), targets]
    return HEAD_C * float(losses.sum()) + 0.5 * float(np.sum(head[0].astype(np.float64) ** 2))


def test_fit_head_reaches_scikit_learns_optimum(telecom):
    vectors, rows, labels, n_intents = telecom
    targets = np.where(labels == OUT_OF_SCOPE, n_intents, labels)
    stacked = sparse.hstack([sparse.csr_matrix(vectors), rows], format="csr")
    theirs = _scikit_learn_head(stacked, targets)
    with single_threaded():
        ours = fit_head(head_inputs(vectors, rows), labels, n_intents, tol=TIGHT)
    assert ours[0].shape == (vectors.shape[1] + rows.shape[1], n_intents + 1)
    assert _objective(stacked, targets, ours) == pytest.approx(_objective(stacked, targets, theirs), rel=1e-5)
    np.testing.assert_allclose(ours[0], theirs[0], atol=5e-3 * np.abs(theirs[0]).max())
    # Biases are fixed up to a shared shift (only their differences matter): compare them centred.
    np.testing.assert_allclose(ours[1] - ours[1].mean(), theirs[1] - theirs[1].mean(),
                               atol=5e-3 * np.abs(theirs[1]).max())
    assert ((stacked @ ours[0] + ours[1]).argmax(axis=1) == (stacked @ theirs[0] + theirs[1]).argmax(axis=1)).all()


def test_two_classes_match_scikit_learns_binary_model(telecom):
    """scikit-learn fits two classes as one binary model; the head's symmetric columns give its optimum."""
    vectors, rows, labels, n_intents = telecom
    two = np.isin(labels, [0, 1])
    with single_threaded():
        ours = fit_head(head_inputs(vectors[two], rows[two]), labels[two], n_intents, tol=TIGHT)
    theirs = _scikit_learn_head(sparse.hstack([sparse.csr_matrix(vectors[two]), rows[two]], format="csr"), labels[two])
    np.testing.assert_allclose(ours[0][:, :2], theirs[0], atol=5e-3 * np.abs(theirs[0]).max())
    np.testing.assert_allclose(ours[1][:2] - ours[1][:2].mean(), theirs[1], atol=5e-3 * np.abs(theirs[1]).max())
    assert (ours[1][2:] == ABSENT_CLASS_BIAS).all() and not ours[0][:, 2:].any()  # intents without rows


def test_blocks_multiply_like_the_stacked_matrix(telecom):
    vectors, rows, labels, n_intents = telecom
    inputs = head_inputs(vectors, rows)
    assert inputs.shape == (len(labels), vectors.shape[1] + rows.shape[1]) and n_intents > 2
    weights = np.random.default_rng(0).normal(size=(inputs.shape[1], 4)).astype(np.float32)
    stacked = sparse.hstack([sparse.csr_matrix(vectors), rows], format="csr")
    np.testing.assert_allclose(inputs @ weights, stacked @ weights, rtol=1e-4, atol=1e-4)
    picked = labels == 2
    np.testing.assert_allclose(inputs[picked] @ weights, stacked[picked] @ weights, rtol=1e-4, atol=1e-4)
    assert inputs.shape == stacked.shape and head_inputs(vectors, None).shape == vectors.shape


def _two_examples_added(telecom) -> tuple:
    """The telecom catalog's in-scope head inputs and targets, its intent count, the rows of two examples of
    intent 0 that an edit adds, and the mask of the rows before that edit."""
    vectors, rows, labels, n_intents = telecom
    inside = labels != OUT_OF_SCOPE
    inputs, targets = head_inputs(vectors, rows)[inside], labels[inside]
    added = np.flatnonzero(targets == 0)[-2:]
    before = np.ones(len(targets), bool)
    before[added] = False
    return inputs, targets, n_intents, added, before


def test_warm_start_costs_what_changed(telecom):
    """From its own optimum a fit stops at once; after two examples are added it needs a few iterations."""
    inputs, targets, n_intents, added, before = _two_examples_added(telecom)

    def fit(rows: np.ndarray, init: tuple[np.ndarray, np.ndarray] | None = None):
        penalty = 1.0 / (HEAD_C * rows.sum())
        return fit_multinomial(inputs[rows], targets[rows], n_intents, penalty, WARM_FULL_HEAD_TOL, 500, init)

    with single_threaded():
        previous = fit(before)
        again = fit(before, (previous.weights, previous.bias))
        warm = fit(np.ones(len(targets), bool), (previous.weights, previous.bias))
        fresh = fit(np.ones(len(targets), bool))
    assert again.iterations == 0
    assert 0 < warm.iterations < fresh.iterations / 2
    logits = inputs @ warm.weights + warm.bias
    assert (logits.argmax(axis=1) == (inputs @ fresh.weights + fresh.bias).argmax(axis=1)).mean() >= 0.99
    assert (logits[added].argmax(axis=1) == 0).all()


def test_tilted_warm_start_learns_only_the_edit(telecom):
    """Tilted by the previous fit's last gradient, a warm fit spends its iterations on the edit alone: fewer
    than one that also shrinks the previous residual, the added rows learnt, the cold tolerance kept."""
    inputs, targets, n_intents, added, before = _two_examples_added(telecom)
    everything = np.ones(len(targets), bool)

    def fit(rows: np.ndarray, tol: float, init=None, tilt=None):
        penalty = 1.0 / (HEAD_C * rows.sum())
        return fit_multinomial(inputs[rows], targets[rows], n_intents, penalty, tol, 500, init, tilt)

    with single_threaded():
        previous = fit(before, HEAD_TOL)
        start = (previous.weights, previous.bias)
        untilted = fit(everything, WARM_FULL_HEAD_TOL, start)
        tilted = fit(everything, WARM_FULL_HEAD_TOL, start, previous.gradient)
        fresh = fit(everything, HEAD_TOL)
    assert 0 < tilted.iterations < untilted.iterations
    assert np.abs(tilted.gradient).max() <= HEAD_TOL + WARM_FULL_HEAD_TOL
    logits = inputs @ tilted.weights + tilted.bias
    assert (logits[added].argmax(axis=1) == 0).all()
    assert (logits.argmax(axis=1) == (inputs @ fresh.weights + fresh.bias).argmax(axis=1)).mean() >= 0.99


def test_warm_build_after_an_edit_scores_as_a_cold_build(tmp_path, use_embedder):
    """A rebuild after an edit (heads tilted from the last build, neighbour lists carried over) decides as a
    build from scratch, with the same scores to the solver's tolerance and the same auto threshold."""
    path = tmp_path / "warm_equals_cold.yaml"
    document = yaml.safe_load((INTENTS / "telecom_zh.yaml").read_text(encoding="utf-8"))
    path.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False), encoding="utf-8")
    Gate(embedder=use_embedder).fit(path)
    document["intents"][0]["examples"] = document["intents"][0]["examples"][1:] + ["这个月的账单能发我一份吗"]
    document["intents"][1]["examples"].append("帮我看看还剩多少流量")
    path.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False), encoding="utf-8")
    warm = Gate(embedder=use_embedder).fit(path)
    cold, _ = build_artifacts(warm.catalog_, use_embedder)
    probe = [text for intent in warm.catalog_.intents for text in intent.examples] + [
        "今天天气怎么样", "帮我写一首诗", "宽带断了怎么办", "这个月的账单能发我一份吗"]
    vectors = use_embedder.encode(probe, is_query=True)
    ours, fresh = warm.router_.scorer.score(vectors, probe), cold.scorer.score(vectors, probe)
    assert warm.rebuilt_ and warm.artifacts_.meta["embedded"] == 2
    assert (ours.intent_scores.argmax(axis=1) == fresh.intent_scores.argmax(axis=1)).mean() >= 0.99
    np.testing.assert_allclose(ours.score, fresh.score, atol=0.05)
    assert np.mean(np.abs(ours.score - fresh.score)) < 0.01
    assert warm.artifacts_.auto_threshold == pytest.approx(cold.auto_threshold, abs=0.02)


def test_warm_start_learns_a_class_the_previous_head_had_no_rows_of(telecom):
    """A fold without an intent's rows leaves it at ABSENT_CLASS_BIAS; starting from there, it is learnt."""
    vectors, rows, labels, n_intents = telecom
    inputs = head_inputs(vectors, rows)
    without = labels != 0
    with single_threaded():
        previous = fit_head(inputs[without], labels[without], n_intents)
        warm = fit_head(inputs, labels, n_intents, init=previous)
        cold = fit_head(inputs, labels, n_intents)
    assert previous[1][0] == ABSENT_CLASS_BIAS
    predicted = (inputs @ warm[0] + warm[1]).argmax(axis=1)
    assert (predicted[labels == 0] == 0).all()
    assert (predicted == (inputs @ cold[0] + cold[1]).argmax(axis=1)).mean() >= 0.99


def test_scoring_and_features_load_without_scikit_learn():
    """What loading and using a built catalog needs of these modules does not import scikit-learn."""
    code = ("import sys, gatekeeper.core.scoring, gatekeeper.core.lexical, gatekeeper.core.head_fitting; "
            "from gatekeeper.core.lexical import CharNgrams; CharNgrams.fit_transform(['ab', 'ab c']); "
            "assert 'sklearn' not in sys.modules, 'sklearn imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
