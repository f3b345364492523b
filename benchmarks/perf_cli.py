"""Section: command-line start-up. ``gatekeeper --help``, and ``route`` of one message once the index is built.

Both run the CLI in a fresh process as a user would, so the figures include
interpreter start-up; each is the median of several runs.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.perf_common import ROOT

HELP_RUNS = 7
ROUTE_RUNS = 3


def _wall(*args: str, env: dict) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gatekeeper", *args], env=env, capture_output=True, check=True, timeout=600)
    return time.perf_counter() - started


def run(work: Path, quick: bool) -> dict:
    """``cli_help_s`` and ``cli_route_cold_s`` (the bundled telecom catalog, built beforehand)."""
    env = {**os.environ, "GATEKEEPER_STATE_DIR": str(work / "cli-state")}
    catalog = str(ROOT / "intents" / "telecom_zh.yaml")
    help_s = statistics.median(_wall("--help", env=env) for _ in range(HELP_RUNS))
    _wall("build", "--catalog", catalog, env=env)
    route_s = statistics.median(_wall("route", "--catalog", catalog, "我这个月话费怎么扣了这么多", env=env)
                                for _ in range(ROUTE_RUNS))
    return {"cli_help_s": round(help_s, 3), "cli_route_cold_s": round(route_s, 3)}
