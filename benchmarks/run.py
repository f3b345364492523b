"""Performance benchmark of gatekeeper (issue #7): one command, a table and a JSON file.

    python benchmarks/run.py [--quick] [--json OUT] [--only SECTION ...]

Sections: ``latency`` (in-process decision vs raw encoder), ``http`` (sidecar
under wrk load at 32/128 clients, micro-batching on/off, serving RSS),
``proxy`` (forwarded chat completion vs direct upstream), ``build`` (CLINC150
cold and warm build), ``index`` (flat vs HNSW at 1k..1M prototypes),
``memory`` (RSS with the sentence-transformers backend), ``cli`` (``gatekeeper
--help`` and a one-message ``route`` in a fresh process) and ``peer``
(semantic-router side by side, skipped by ``--quick``). Every server and load
generator runs on loopback and stops by itself. ``--quick`` takes under three
minutes on two cores; the full run about 30.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import (peer_semantic_router, perf_build, perf_cli, perf_http, perf_index,  # noqa: E402
                        perf_latency, perf_memory, perf_proxy)
from benchmarks.perf_common import machine  # noqa: E402

SECTIONS: dict[str, Callable[[Path, bool], dict]] = {
    "latency": perf_latency.run, "http": perf_http.run, "proxy": perf_proxy.run, "build": perf_build.run,
    "memory": perf_memory.run, "index": perf_index.run, "peer": peer_semantic_router.run, "cli": perf_cli.run,
}
QUICK_SKIPS = {"peer"}

#: key -> (comparison, target); a callable target is computed from the other results.
TARGETS: dict[str, tuple[str, float | Callable[[dict], float]]] = {
    "gate_over_encoder_p50": ("<=", 1.15),
    "conversation_over_single_p50": ("<=", 1.3),
    "http_gate_rps_c32": (">=", 1000.0),
    "http_gate_p99_ms_c32": ("<=", 50.0),
    "batching_speedup": (">=", 2.0),
    "proxy_overhead_p50_ms": ("<=", lambda r: r["gate_p50_ms"] + 2.0),
    "build_cold_s_15k": ("<=", 15.0),
    "build_warm_s": ("<=", 2.0),
    "serve_rss_mb": ("<=", 400.0),
    "cli_help_s": ("<=", 0.3),
    "cli_route_cold_s": ("<=", 2.5),
}


def check_targets(results: dict, targets: dict | None = None) -> dict:
    """Per target key of ``targets`` (default :data:`TARGETS`): value, target and whether it is met (keys whose
    section did not run are left out)."""
    checked = {}
    for key, (op, target) in (TARGETS if targets is None else targets).items():
        try:
            bound = target(results) if callable(target) else target
            value = results[key]
        except KeyError:
            continue
        met = value <= bound if op == "<=" else value >= bound
        checked[key] = {"value": value, "target": f"{op} {bound:.3g}", "met": bool(met)}
    return checked


def format_table(results: dict, checked: dict) -> str:
    """Every figure as ``key  value  [target, met]`` lines."""
    lines = [f"{'key':<40} {'value':>14}  target"]
    for key, value in results.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        target = f"  {checked[key]['target']}  {'met' if checked[key]['met'] else 'MISSED'}" if key in checked else ""
        lines.append(f"{key:<40} {shown:>14}{target}")
    return "\n".join(lines)


def main() -> int:
    """Run the sections, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and shorter loads (under 3 minutes)")
    parser.add_argument("--json", default="benchmarks/results/perf.json", help="where to write the results")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run only these sections")
    args = parser.parse_args()
    chosen = args.only or [name for name in SECTIONS if not (args.quick and name in QUICK_SKIPS)]
    results: dict = {}
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="gatekeeper-perf-") as work:
        for name in chosen:
            started = time.perf_counter()
            print(f"[{name}] running", file=sys.stderr, flush=True)
            folder = Path(work) / name
            folder.mkdir()
            results.update(SECTIONS[name](folder, args.quick))
            timings[name] = round(time.perf_counter() - started, 1)
            print(f"[{name}] done in {timings[name]} s", file=sys.stderr, flush=True)
    checked = check_targets(results)
    print(format_table(results, checked))
    document = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "command": "python benchmarks/run.py " + " ".join(sys.argv[1:]), "machine": machine(),
                "section_seconds": timings, "targets": checked, "results": results}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
