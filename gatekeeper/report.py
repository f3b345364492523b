"""The tuning report: ROC curve and score histograms (PNG), operating points and thresholds (Markdown + JSON)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from gatekeeper.thresholds import OperatingPoint, pick_max_false_reject
from gatekeeper.tune import TuneResult

#: Rows of the operating-points table: these false-reject rates, plus the chosen point.
TABLE_FALSE_REJECT_RATES = (0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.1, 0.15, 0.2)


def calls_saved_per_1000(point: OperatingPoint, oos_share: float) -> float:
    """LLM calls avoided per 1,000 messages at the observed off-topic share."""
    return 1000.0 * oos_share * point.oos_recall


def table_points(result: TuneResult) -> list[OperatingPoint]:
    """A readable subset of the ROC: the best point at each listed false-reject rate, and the chosen one."""
    chosen = [pick_max_false_reject(result.points, rate) for rate in TABLE_FALSE_REJECT_RATES]
    chosen.append(result.chosen)
    unique = {round(p.threshold, 6): p for p in chosen}
    return sorted(unique.values(), key=lambda p: p.false_reject_rate)


def write_report(folder: str | Path, result: TuneResult, catalog_name: str) -> list[Path]:
    """Write roc.png, scores.png, report.md and report.json into ``folder``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_in, n_oos = len(result.in_scope_scores), len(result.oos_scores)
    oos_share = n_oos / (n_in + n_oos)
    auroc = result.tuning.validation.get("auroc")

    fig, ax = plt.subplots(figsize=(5.5, 5))
    fpr = [1 - p.oos_recall for p in result.points]
    tpr = [1 - p.false_reject_rate for p in result.points]
    ax.plot(fpr, tpr, lw=2, label=f"gate score (AUC {auroc:.3f})" if auroc is not None else "gate score")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="chance")
    ax.scatter([1 - result.chosen.oos_recall], [1 - result.chosen.false_reject_rate], c="red", zorder=3, s=60,
               label=f"chosen: threshold {result.chosen.threshold:.3f}")
    ax.set_xlabel("off-topic messages let through (1 - OOS recall)")
    ax.set_ylabel("in-scope messages accepted (1 - false-reject rate)")
    ax.set_title(f"ROC of the gate on validation data: {catalog_name}")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    roc_path = folder / "roc.png"
    fig.savefig(roc_path, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(min(result.in_scope_scores.min(), result.oos_scores.min()),
                       max(result.in_scope_scores.max(), result.oos_scores.max()), 41)
    ax.hist(result.in_scope_scores, bins=bins, alpha=0.6, density=True, label=f"in scope (n={n_in})")
    ax.hist(result.oos_scores, bins=bins, alpha=0.6, density=True, label=f"off topic (n={n_oos})")
    ax.axvline(result.chosen.threshold, c="red", ls="--", label=f"threshold {result.chosen.threshold:.3f}")
    ax.set_xlabel("gate score")
    ax.set_ylabel("density")
    ax.set_title("Score distributions on validation data")
    ax.legend(loc="upper center")
    fig.tight_layout()
    hist_path = folder / "scores.png"
    fig.savefig(hist_path, dpi=110)
    plt.close(fig)

    rows = table_points(result)
    lines = [
        f"# Tuning report: {catalog_name}", "",
        f"Validation rows: {n_in} in scope, {n_oos} off topic (off-topic share {oos_share:.1%}).",
        f"Policy: `{result.tuning.policy['kind']}` {json.dumps(result.tuning.policy)}.", "",
        f"Chosen global threshold **{result.chosen.threshold:.4f}**: false-reject rate "
        f"{result.chosen.false_reject_rate:.1%}, OOS recall {result.chosen.oos_recall:.1%}, "
        f"{calls_saved_per_1000(result.chosen, oos_share):.0f} LLM calls saved per 1,000 messages.", "",
        "![ROC curve](roc.png)", "", "![Score histograms](scores.png)", "",
        "## Operating points", "",
        "| threshold | false-reject rate | OOS recall | LLM calls saved / 1,000 msgs | |",
        "|---:|---:|---:|---:|---|",
    ]
    lines += [f"| {p.threshold:.4f} | {p.false_reject_rate:.1%} | {p.oos_recall:.1%} | "
              f"{calls_saved_per_1000(p, oos_share):.0f} | {'**chosen**' if p == result.chosen else ''} |"
              for p in rows]
    lines += ["", "## Validation metrics at the saved thresholds", "", "| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
              for k, v in result.tuning.validation.items()]
    lines += ["", "## Per-intent thresholds", ""]
    if result.tuning.per_intent:
        lines += ["| intent | threshold |", "|---|---:|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in sorted(result.tuning.per_intent.items())]
    else:
        lines.append("None: every intent uses the global threshold (run with `--per-intent` to fit them).")
    md_path = folder / "report.md"
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    json_path = folder / "report.json"
    json_path.write_text(json.dumps({
        "catalog": catalog_name, "tuning": asdict(result.tuning), "chosen": asdict(result.chosen),
        "oos_share": oos_share,
        "operating_points": [dict(asdict(p), llm_calls_saved_per_1000=calls_saved_per_1000(p, oos_share))
                             for p in rows],
    }, indent=2, ensure_ascii=False), encoding="utf-8")
    return [roc_path, hist_path, md_path, json_path]
