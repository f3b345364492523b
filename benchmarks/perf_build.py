"""Section 5: catalog build time, cold (15k CLINC150 examples, empty embedding cache) and warm (one intent edited).

Both run the CLI as a user would (``gatekeeper import`` then ``gatekeeper build``).
The primary figure is the build itself as recorded in the index metadata
(embedding, indexing, fitting); the command's wall time adds interpreter
start-up and model loading.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.perf_common import DATA


def _cli(*args: str, env: dict) -> tuple[str, float]:
    started = time.perf_counter()
    output = subprocess.run([sys.executable, "-m", "gatekeeper", *args], env=env, capture_output=True, text=True,
                            check=True, timeout=900).stdout
    return output, time.perf_counter() - started


def _build(catalog: Path, env: dict) -> tuple[dict, float]:
    output, wall = _cli("build", "--catalog", str(catalog), "--json", env=env)
    return json.loads(output), wall


def _edit_one_intent(catalog: Path) -> None:
    """Add one example to the first intent, as an operator editing the catalog would."""
    document = yaml.safe_load(catalog.read_text(encoding="utf-8"))
    document["intents"][0]["examples"].append("one more way to ask for this, added for the warm build")
    catalog.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False, width=1000), encoding="utf-8")


def run(work: Path, quick: bool) -> dict:
    """Cold build of CLINC150 train, then a warm rebuild after one intent changes."""
    env = {**os.environ, "GATEKEEPER_STATE_DIR": str(work / "build-state")}
    catalog = work / "clinc150.yaml"
    _cli("import", str(DATA / "clinc150" / "train.jsonl"), "--out", str(catalog), "--force", env=env)
    cold, cold_wall = _build(catalog, env)
    _edit_one_intent(catalog)
    warm, warm_wall = _build(catalog, env)
    return {"build_examples": cold["examples"] + cold["out_of_scope"], "build_cold_s_15k": cold["build_seconds"],
            "build_cold_wall_s": cold_wall, "build_warm_s": warm["build_seconds"], "build_warm_wall_s": warm_wall,
            "build_warm_embedded": warm["embedded"]}
