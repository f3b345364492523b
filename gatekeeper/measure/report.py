"""The tuning report: ROC, score histograms and per-intent thresholds (PNG), operating points (Markdown + JSON)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from gatekeeper.core.thresholds import OperatingPoint, pick_max_false_reject
from gatekeeper.errors import UserError
from gatekeeper.measure.tune import TuneResult
from gatekeeper.store.files import check_writable

#: Rows of the operating-points table: these false-reject rates, plus the chosen point.
TABLE_FALSE_REJECT_RATES = (0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.1, 0.15, 0.2)
#: Half-width of the histogram's zoom around the threshold, as a share of the score range.
ZOOM_HALF_WIDTH = 0.08
DPI = 110
IN_COLOR, OOS_COLOR, THRESHOLD_COLOR = "tab:blue", "tab:orange", "red"


def calls_saved_per_1000(point: OperatingPoint, oos_share: float) -> float:
    """LLM calls avoided per 1,000 messages at the observed off-topic share."""
    return 1000.0 * oos_share * point.oos_recall


def table_points(result: TuneResult) -> list[OperatingPoint]:
    """A readable subset of the ROC: the best point at each listed false-reject rate, and the chosen one."""
    chosen = [pick_max_false_reject(result.points, rate) for rate in TABLE_FALSE_REJECT_RATES]
    chosen.append(result.chosen)
    unique = {round(p.threshold, 6): p for p in chosen}
    return sorted(unique.values(), key=lambda p: p.false_reject_rate)


def check_report_destination(folder: str | Path) -> None:
    """Raise :class:`UserError` if a report could not be written into ``folder``; nothing is created.

    Called before tuning, so a bad ``--report`` fails before the tuning file is written.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("--report needs matplotlib, which is not installed; reinstall gatekeeper with "
                        "pip install -e '.[report]' (or pip install 'matplotlib>=3.8')") from None
    try:
        check_writable(Path(folder), folder=True)
    except OSError as error:
        raise UserError(f"--report {folder}: cannot write a report there ({error}); "
                        "choose a writable folder") from None


def write_report(folder: str | Path, result: TuneResult, catalog_name: str) -> list[Path]:
    """Write roc.png, scores.png, intents.png (with per-intent thresholds), report.md and report.json into
    ``folder``; return their paths."""
    import matplotlib

    from gatekeeper.measure.fonts import cjk_font_settings

    matplotlib.use("Agg")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "roc.png", folder / "scores.png"]
    with matplotlib.rc_context(cjk_font_settings([catalog_name, *result.tuning.per_intent])):
        _plot_roc(paths[0], result, catalog_name)
        _plot_scores(paths[1], result)
        if result.tuning.per_intent:
            paths.append(folder / "intents.png")
            _plot_intents(paths[-1], result)
    paths += [folder / "report.md", folder / "report.json"]
    paths[-2].write_text(_markdown(result, catalog_name), encoding="utf-8")
    paths[-1].write_text(_json(result, catalog_name), encoding="utf-8")
    return paths


def _oos_share(result: TuneResult) -> float:
    """The share of off-topic rows in the validation data."""
    n_in, n_oos = len(result.in_scope_scores), len(result.oos_scores)
    return n_oos / (n_in + n_oos)


def _plot_roc(path: Path, result: TuneResult, catalog_name: str) -> None:
    """The ROC curve with the chosen operating point."""
    import matplotlib.pyplot as plt

    auroc = result.tuning.validation.get("auroc")
    fig, ax = plt.subplots(figsize=(5.5, 5))
    fpr = [1 - p.oos_recall for p in result.points]
    tpr = [1 - p.false_reject_rate for p in result.points]
    ax.plot(fpr, tpr, lw=2, label=f"gate score (AUC {auroc:.3f})" if auroc is not None else "gate score")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="chance")
    ax.scatter([1 - result.chosen.oos_recall], [1 - result.chosen.false_reject_rate], c=THRESHOLD_COLOR, zorder=3,
               s=60, label=f"chosen: threshold {result.chosen.threshold:.3f}")
    ax.set_xlabel("off-topic messages let through (1 - OOS recall)")
    ax.set_ylabel("in-scope messages accepted (1 - false-reject rate)")
    ax.set_title(f"ROC of the gate on validation data: {catalog_name}")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    _save(fig, path)


def _plot_scores(path: Path, result: TuneResult) -> None:
    """Score counts of both classes: all scores on a log scale, and a linear zoom around the threshold."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    threshold = result.chosen.threshold
    inside, outside = result.in_scope_scores, result.oos_scores
    low, high = min(inside.min(), outside.min()), max(inside.max(), outside.max())
    half = ZOOM_HALF_WIDTH * max(high - low, 1e-6)
    window = (max(low, threshold - half), min(high, threshold + half))
    fig, (full, zoom) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    _histograms(full, result, np.linspace(low, high, 51), log=True)
    full.axvspan(*window, color="grey", alpha=0.15, label="zoomed on the right")
    full.set_title("All validation scores (log scale)")
    full.legend(fontsize="small")
    _histograms(zoom, result, np.linspace(*window, 25), log=False)
    zoom.set_xlim(*window)
    zoom.yaxis.set_major_locator(MaxNLocator(integer=True))
    zoom.set_title("Around the threshold (rejected left, accepted right)")
    rejected_in, accepted_oos = int((inside < threshold).sum()), int((outside >= threshold).sum())
    zoom.text(0.02, 0.97, f"in scope rejected: {rejected_in} of {len(inside)}\n"
                          f"off topic accepted: {accepted_oos} of {len(outside)}",
              transform=zoom.transAxes, va="top", fontsize="small",
              bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "lightgrey"})
    _save(fig, path)


def _histograms(ax, result: TuneResult, bins: np.ndarray, log: bool) -> None:
    """Count histograms of both classes, side by side in each bin, with the threshold line on ``ax``."""
    inside, outside = result.in_scope_scores, result.oos_scores
    ax.hist([inside, outside], bins=bins, log=log, color=[IN_COLOR, OOS_COLOR], alpha=0.8,
            label=[f"in scope (n={len(inside)})", f"off topic (n={len(outside)})"])
    if log:
        ax.set_ylim(bottom=0.5)  # a single message still shows as a bar
    ax.axvline(result.chosen.threshold, c=THRESHOLD_COLOR, ls="--",
               label=f"threshold {result.chosen.threshold:.3f}")
    ax.set_xlabel("gate score")
    ax.set_ylabel("messages (count)")
    ax.grid(alpha=0.3)


def _plot_intents(path: Path, result: TuneResult) -> None:
    """Each tuned per-intent threshold beside the global one."""
    import matplotlib.pyplot as plt

    items = sorted(result.tuning.per_intent.items(), key=lambda item: item[1])
    fig, ax = plt.subplots(figsize=(7, 1.4 + 0.28 * len(items)))
    ax.scatter([value for _, value in items], range(len(items)), c=IN_COLOR, zorder=3)
    ax.set_yticks(range(len(items)), [name for name, _ in items])
    ax.axvline(result.tuning.global_threshold, c=THRESHOLD_COLOR, ls="--",
               label=f"global threshold {result.tuning.global_threshold:.3f}")
    ax.set_xlabel("threshold")
    ax.set_title("Per-intent thresholds")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3, axis="x")
    _save(fig, path)


def _save(fig, path: Path) -> None:
    """Write ``fig`` as a PNG and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _markdown(result: TuneResult, catalog_name: str) -> str:
    """The report as Markdown: the chosen point, the images, operating points, metrics, per-intent thresholds."""
    oos_share = _oos_share(result)
    chosen = result.chosen
    lines = [
        f"# Tuning report: {catalog_name}", "",
        f"Validation rows: {len(result.in_scope_scores)} in scope, {len(result.oos_scores)} off topic "
        f"(off-topic share {oos_share:.1%}).",
        f"Policy: `{result.tuning.policy['kind']}` {json.dumps(result.tuning.policy, ensure_ascii=False)}.", "",
        f"Chosen global threshold **{chosen.threshold:.4f}**: false-reject rate "
        f"{chosen.false_reject_rate:.1%}, OOS recall {chosen.oos_recall:.1%}, "
        f"{calls_saved_per_1000(chosen, oos_share):.0f} LLM calls saved per 1,000 messages.", "",
        "![ROC curve](roc.png)", "", "![Score histograms](scores.png)", "",
        "## Operating points", "",
        "| threshold | false-reject rate | OOS recall | LLM calls saved / 1,000 msgs | |",
        "|---:|---:|---:|---:|---|",
    ]
    lines += [f"| {p.threshold:.4f} | {p.false_reject_rate:.1%} | {p.oos_recall:.1%} | "
              f"{calls_saved_per_1000(p, oos_share):.0f} | {'**chosen**' if p == chosen else ''} |"
              for p in table_points(result)]
    lines += ["", "## Validation metrics at the saved thresholds", "", "| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
              for k, v in result.tuning.validation.items()]
    return "\n".join(lines + ["", "## Per-intent thresholds", "", *_per_intent_lines(result)]) + "\n"


def _per_intent_lines(result: TuneResult) -> list[str]:
    """The per-intent thresholds as a Markdown table with their shift from the global threshold."""
    if not result.tuning.per_intent:
        return ["None: every intent uses the global threshold (run with `--per-intent` to fit them)."]
    lines = ["![Per-intent thresholds](intents.png)", "", "| intent | threshold | vs global |", "|---|---:|---:|"]
    return lines + [f"| {name} | {value:.4f} | {value - result.tuning.global_threshold:+.4f} |"
                    for name, value in sorted(result.tuning.per_intent.items())]


def _json(result: TuneResult, catalog_name: str) -> str:
    """The report as JSON, with non-ASCII names kept readable."""
    oos_share = _oos_share(result)
    return json.dumps({
        "catalog": catalog_name, "tuning": asdict(result.tuning), "chosen": asdict(result.chosen),
        "oos_share": oos_share,
        "operating_points": [dict(asdict(p), llm_calls_saved_per_1000=calls_saved_per_1000(p, oos_share))
                             for p in table_points(result)],
    }, indent=2, ensure_ascii=False)
