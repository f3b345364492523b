"""The tuned thresholds and calibrator that ``gatekeeper tune`` saves next to a catalog.

``route``, ``eval`` and ``serve`` read them back, so the same ``--catalog`` is
all they need. The file is plain JSON, meant to be reviewed and committed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from gatekeeper.catalog_schema import Catalog
from gatekeeper.errors import UserError
from gatekeeper.router import Thresholds


@dataclass
class Tuning:
    """Result of ``gatekeeper tune``."""

    fingerprint: str
    global_threshold: float
    per_intent: dict[str, float] = field(default_factory=dict)
    #: When True, ``per_intent`` wins over thresholds written in the catalog.
    override: bool = False
    #: Calibrator refitted on the validation data (HeadScorer parameters), if any.
    calibrator: dict[str, list[float] | float] | None = None
    policy: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)


def tuning_path(catalog_path: str | Path) -> Path:
    """``x.tuning.json`` beside catalog file ``x.yaml``; ``tuning.json`` inside a catalog directory."""
    path = Path(catalog_path)
    return path / "tuning.json" if path.is_dir() else path.with_name(f"{path.stem}.tuning.json")


def load_tuning(catalog_path: str | Path) -> Tuning | None:
    """The saved tuning of a catalog, or None."""
    path = tuning_path(catalog_path)
    if not path.exists():
        return None
    try:
        return Tuning(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as error:
        raise UserError(f"{path}: unreadable tuning file ({error}); delete it or rerun 'gatekeeper tune'") from None


def save_tuning(catalog_path: str | Path, tuning: Tuning) -> Path:
    """Write (overwrite) the tuning file and return its path."""
    path = tuning_path(catalog_path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(tuning), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def resolve_thresholds(catalog: Catalog, auto_threshold: float, tuning: Tuning | None) -> Thresholds:
    """Each intent's threshold, by precedence.

    1. a tuned per-intent threshold saved with ``--override``;
    2. a threshold written on the intent (or its file's numeric default) in the catalog;
    3. a tuned per-intent threshold;
    4. the global threshold: tuned, else the catalog's numeric default, else ``auto``.
    """
    if tuning is not None:
        global_threshold, source = tuning.global_threshold, "tuned"
    elif catalog.defaults.threshold != "auto":
        global_threshold, source = float(catalog.defaults.threshold), "catalog"
    else:
        global_threshold, source = auto_threshold, "auto"
    tuned = tuning.per_intent if tuning else {}
    values = []
    for intent in catalog.intents:
        if tuning is not None and tuning.override and intent.name in tuned:
            values.append(tuned[intent.name])
        elif intent.threshold is not None:
            values.append(float(intent.threshold))
        else:
            values.append(tuned.get(intent.name, global_threshold))
    return Thresholds(global_threshold=float(global_threshold), per_intent=np.asarray(values, dtype=np.float64),
                      source=source)
