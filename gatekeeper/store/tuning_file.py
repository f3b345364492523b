"""The tuned thresholds and calibrator that ``gatekeeper tune`` saves next to a catalog, and the rows it used.

``route``, ``eval`` and ``serve`` read them back, so the same ``--catalog`` is
all they need. Beside catalog ``x.yaml`` (``tuning.json`` and friends inside a
catalog directory):

* ``x.tuning.json``: the thresholds, the calibrator, the policy, and the
  sha256 of the rows (plain JSON, meant to be reviewed and committed);
* ``x.tuning.data.jsonl``: the labelled rows tune picked them on (off-topic
  rows labelled ``oos``), so that after a catalog edit the thresholds can be
  re-derived with the same policy (:func:`gatekeeper.measure.tune.rederive`);
* ``x.tuning.prev.json`` and ``x.tuning.prev.data.jsonl``: the tuning in force
  before the last ``tune``. To go back, rename both over the current ones.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from gatekeeper.catalog.labelled_data import CONTEXT_FIELD, Row, read_labelled
from gatekeeper.catalog.schema import Catalog
from gatekeeper.core.router import Thresholds
from gatekeeper.errors import UserError


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
    #: The rows file beside the tuning file and how tune used it: ``sha256`` (of the file), ``rows``,
    #: ``per_intent`` (fit per-intent thresholds) and ``min_rows``. Empty: no rows stored, nothing to re-derive from.
    stored_rows: dict = field(default_factory=dict)


def tuning_path(catalog_path: str | Path) -> Path:
    """``x.tuning.json`` beside catalog file ``x.yaml``; ``tuning.json`` inside a catalog directory."""
    path = Path(catalog_path)
    return path / "tuning.json" if path.is_dir() else path.with_name(f"{path.stem}.tuning.json")


def rows_path(tuning_file: Path) -> Path:
    """The rows file of a tuning file: ``x.tuning.json`` -> ``x.tuning.data.jsonl``."""
    return tuning_file.with_name(f"{tuning_file.stem}.data.jsonl")


def previous_path(tuning_file: Path) -> Path:
    """Where the tuning in force before the last ``tune`` is kept: ``x.tuning.json`` -> ``x.tuning.prev.json``."""
    return tuning_file.with_name(f"{tuning_file.stem}.prev.json")


def tuning_version(tuning: Tuning) -> str:
    """A short hash identifying a tuning (thresholds, calibrator, policy, rows): what the decision log records."""
    return hashlib.sha256(json.dumps(asdict(tuning), sort_keys=True).encode()).hexdigest()[:12]


def load_tuning(catalog_path: str | Path) -> Tuning | None:
    """The saved tuning of a catalog, or None."""
    path = tuning_path(catalog_path)
    if not path.exists():
        return None
    try:
        return Tuning(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as error:
        raise UserError(f"{path}: unreadable tuning file ({error}); delete it or rerun 'gatekeeper tune'") from None


def save_tuning(catalog_path: str | Path, tuning: Tuning, rows: Sequence[Row]) -> list[Path]:
    """Write the tuning file and its rows file, keeping the previous pair as ``.prev``; return the paths written.

    ``rows`` are stored as JSON lines (``text``, ``label`` and, when there is
    one, ``context``); their sha256 goes into the tuning's ``stored_rows``.
    """
    path = tuning_path(catalog_path)
    data = "".join(json.dumps({"text": row[0], "label": row[1], **({CONTEXT_FIELD: list(row[2])} if row[2:] else {})},
                              ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    stored = replace(tuning, stored_rows={**tuning.stored_rows, "sha256": hashlib.sha256(data).hexdigest(),
                                          "rows": len(rows)})
    written: list[Path] = []
    try:
        for current, kept in ((path, previous_path(path)), (rows_path(path), rows_path(previous_path(path)))):
            if current.exists():
                shutil.copyfile(current, kept)
                written.append(kept)
        for target, content in ((rows_path(path), data),
                                (path, (json.dumps(asdict(stored), indent=2, ensure_ascii=False) + "\n").encode())):
            _write_atomically(target, content)
            written.append(target)
    except OSError as error:
        raise UserError(f"{path.parent}: cannot write the tuning files there ({error.strerror}); make the catalog's "
                        "folder writable") from None
    return written


def load_stored_rows(catalog_path: str | Path, tuning: Tuning) -> list[Row]:
    """The labelled rows ``tune`` stored beside the tuning file; :class:`UserError` if they are gone or changed."""
    path = tuning_path(catalog_path)
    data = rows_path(path)
    if not tuning.stored_rows.get("sha256"):
        raise UserError(f"{path} stores no labelled rows (it was written before tune kept them); rerun "
                        "'gatekeeper tune' with the labelled data")
    if not data.exists():
        raise UserError(f"{data}: the labelled rows tune stored are missing; put the file back beside {path.name} "
                        "or rerun 'gatekeeper tune'")
    if hashlib.sha256(data.read_bytes()).hexdigest() != tuning.stored_rows["sha256"]:
        raise UserError(f"{data}: the file changed since tune stored it (sha256 differs from {path.name}); restore "
                        "it or rerun 'gatekeeper tune'")
    return [row.as_row() for row in read_labelled(data, "jsonl").rows]


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


def _write_atomically(path: Path, content: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(content)
    tmp.replace(path)
