"""Section 5: catalog build time, cold (15k CLINC150 examples, empty embedding cache) and warm (one intent edited).

The cold build runs the CLI as a user would (``gatekeeper import`` then
``gatekeeper build``); its figure is the build itself as recorded in the index
metadata (embedding, indexing, fitting, and loading the model's weights on
first use); the command's wall time adds interpreter start-up. The warm build
is what a running sidecar does on a reload after an operator edited one
intent: the same process, model already loaded (``build_warm_s``); the same
edit through the CLI (a fresh process) is ``build_warm_cli_s``.
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


def _edit_one_intent(catalog: Path, intent: int, text: str) -> None:
    """Add one example to an intent, as an operator editing the catalog would."""
    document = yaml.safe_load(catalog.read_text(encoding="utf-8"))
    document["intents"][intent]["examples"].append(text)
    catalog.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False, width=1000), encoding="utf-8")


def run(work: Path, quick: bool) -> dict:
    """Cold build of CLINC150 train, then warm rebuilds after one intent changes (in-process and CLI)."""
    from gatekeeper.gate import Gate

    env = {**os.environ, "GATEKEEPER_STATE_DIR": str(work / "build-state")}
    catalog = work / "clinc150.yaml"
    _cli("import", str(DATA / "clinc150" / "train.jsonl"), "--out", str(catalog), "--force", env=env)
    cold, cold_wall = _build(catalog, env)
    os.environ["GATEKEEPER_STATE_DIR"] = env["GATEKEEPER_STATE_DIR"]
    gate = Gate(threads=2).fit(catalog)  # fresh: loads what the CLI built
    gate.embed(["load the model's weights"])
    _edit_one_intent(catalog, 0, "one more way to ask for this, added for the warm build")
    warm = Gate(embedder=gate.embedder_, threads=2).fit(catalog)
    _edit_one_intent(catalog, 1, "and another one, added for the warm build from the command line")
    warm_cli, warm_cli_wall = _build(catalog, env)
    return {"build_examples": cold["examples"] + cold["out_of_scope"], "build_cold_s_15k": cold["build_seconds"],
            "build_cold_wall_s": cold_wall, "build_warm_s": warm.artifacts_.meta["build_seconds"],
            "build_warm_embedded": warm.artifacts_.meta["embedded"], "build_warm_cli_s": warm_cli["build_seconds"],
            "build_warm_cli_wall_s": warm_cli_wall}
