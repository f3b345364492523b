"""What the head's choice of intent is expected to get right, before any traffic.

Every build already scores each example of the catalog with the head of the
fold that left it out (3-fold cross-fitting, for the ``auto`` calibrator).
The intent those held-out logits pick is how the gate would route a message
like that example, so the build can tell a team how often it picks the
right intent, which intents it gets wrong most, and which pairs of intents
its examples blur, on day one and from the catalog alone. docs/quality.md
("Which intent, before any traffic") compares it with test sets: the
overall rate is within a few points of in-scope accuracy on test; one
intent's rate, from its 10-20 examples, is a pointer, not a measurement.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from gatekeeper.core.thresholds import rate_with_interval

#: Pairs of intents shown by :func:`describe_intent_estimate` (JSON has every pair).
CONFUSED_SHOWN = 5


def intent_estimate(labels: np.ndarray, predicted: np.ndarray, texts: Sequence[str], own_intents: Sequence[int],
                    names: Sequence[str], basis: str) -> dict | None:
    """How often held-out predictions pick each example's own intent (None if the catalog has no examples).

    ``labels``, ``predicted`` and ``texts`` are each row's intent id, the
    intent its held-out logits pick and its text; only rows of
    ``own_intents`` (the catalog's, not a pack's) are counted. ``names`` are
    the intents' names, ``basis`` how the predictions were held out. Returns
    ``accuracy`` (with its Wilson 95% interval), ``per_intent`` ({name:
    {"right", "n"}}, catalog order) and ``confused``: each (intent, picked
    instead) pair with its count and the examples it picked wrongly (the
    catalog's own texts, to fix or move), most first.
    """
    rows = np.isin(labels, np.asarray(own_intents, dtype=labels.dtype))
    if not rows.any():
        return None
    truth, picked = labels[rows], predicted[rows]
    right = truth == picked
    per_intent = {names[intent]: {"right": int(right[truth == intent].sum()), "n": int((truth == intent).sum())}
                  for intent in own_intents}
    wrong: dict[tuple[int, int], list[str]] = {}
    for row, intent, other in zip(np.flatnonzero(rows)[~right].tolist(), truth[~right].tolist(),
                                  picked[~right].tolist()):
        wrong.setdefault((intent, other), []).append(texts[row])
    confused = [{"intent": names[intent], "picked": names[other], "examples": len(examples),
                 "of": per_intent[names[intent]]["n"], "texts": examples}
                for (intent, other), examples in sorted(wrong.items(), key=lambda item: (-len(item[1]), item[0]))]
    return {"basis": basis, "accuracy": rate_with_interval(right), "per_intent": per_intent, "confused": confused}


def describe_intent_estimate(estimate: dict | None) -> str:
    """One line for people: the expected share of right intents and the pairs of intents most confused."""
    if not estimate:
        return "not estimated (nearest-prototype scoring: too few examples per intent for the head)"
    accuracy = estimate["accuracy"]
    line = (f"right intent for {accuracy['rate']:.1%} of held-out examples "
            f"(95% {accuracy['low']:.1%}-{accuracy['high']:.1%} of {accuracy['n']}) [{estimate['basis']}]")
    shown = estimate["confused"][:CONFUSED_SHOWN]
    if shown:
        line += "; most confused: " + ", ".join(
            f"{pair['intent']} -> {pair['picked']} ({pair['examples']} of {pair['of']})" for pair in shown)
    return line
