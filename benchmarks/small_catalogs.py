"""How tiny hand-written catalogs gate messages written apart from them, with and without the packs.

    python benchmarks/small_catalogs.py [--json OUT]

The catalogs in ``tests/data/small_catalogs/`` are what a team writes on day
one: one intent, descriptions only, no out-of-scope examples, two examples per
intent. ``heldout.yaml`` beside them has, for each, in-scope paraphrases and
off-topic messages written separately (none of them in a catalog or in the
out-of-scope pack). Each catalog is built with its ``auto`` threshold under
both settings of ``out_of_scope_pack``, and the table gives the share of
in-scope messages accepted and of off-topic messages rejected.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gatekeeper.gate import Gate  # noqa: E402

CATALOGS = Path(__file__).resolve().parent.parent / "tests" / "data" / "small_catalogs"


def measure(path: Path, embedder, heldout: dict) -> dict:
    """Accepted share of the in-scope messages and rejected share of the off-topic ones."""
    gate = Gate(embedder=embedder).fit(path)
    accepted_in = [d.accepted for d in gate.decide_many(heldout["in_scope"])]
    rejected_off = [not d.accepted for d in gate.decide_many(heldout["off_topic"])]
    return {"scorer": gate.artifacts_.meta["scorer"], "threshold": round(gate.router_.thresholds.global_threshold, 3),
            "in_scope_accepted": round(sum(accepted_in) / len(accepted_in), 3),
            "off_topic_rejected": round(sum(rejected_off) / len(rejected_off), 3)}


def main() -> None:
    """Print the table and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="benchmarks/results/small_catalogs.json")
    args = parser.parse_args()
    from gatekeeper.embedders.use_multilingual import UseMultilingualEmbedder

    heldout = yaml.safe_load((CATALOGS / "heldout.yaml").read_text(encoding="utf-8"))
    embedder = UseMultilingualEmbedder(threads=2)
    rows = []
    print(f"{'catalog':<18} {'pack':<8} {'scorer':<8} {'threshold':>9} {'in-scope accepted':>18} "
          f"{'off-topic rejected':>19}")
    with tempfile.TemporaryDirectory(prefix="gatekeeper-small-") as work:
        os.environ["GATEKEEPER_STATE_DIR"] = str(Path(work) / "state")
        for stem, messages in heldout.items():
            document = yaml.safe_load((CATALOGS / f"{stem}.yaml").read_text(encoding="utf-8"))
            for pack in ("default", "none"):
                path = Path(work) / f"{stem}-{pack}.yaml"
                path.write_text(yaml.safe_dump({**document, "out_of_scope_pack": pack}, allow_unicode=True),
                                encoding="utf-8")
                try:
                    row = {"catalog": stem, "pack": pack, **measure(path, embedder, messages)}
                except Exception as error:  # a catalog the gate refuses (e.g. one intent, no negatives)
                    row = {"catalog": stem, "pack": pack, "error": str(error).splitlines()[0]}
                rows.append(row)
                if "error" in row:
                    print(f"{stem:<18} {pack:<8} refused: {row['error']}")
                else:
                    print(f"{stem:<18} {pack:<8} {row['scorer']:<8} {row['threshold']:>9.3f} "
                          f"{row['in_scope_accepted']:>18.3f} {row['off_topic_rejected']:>19.3f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows}, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
