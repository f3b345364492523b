"""Progress bars for long builds (shown on a terminal, and only for catalogs of a few hundred texts or more)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Callable

from tqdm import tqdm

if TYPE_CHECKING:
    from gatekeeper.core.fit import ProgressCallback

#: A catalog of fewer texts than this builds without bars.
MIN_TEXTS_FOR_BAR = 300


def build_progress() -> tuple[ProgressCallback, Callable[[], None]]:
    """A progress callback for :func:`gatekeeper.store.artifacts.load_or_build`, and a function closing its bars."""
    bars: dict[str, tqdm] = {}
    catalog_texts = 0

    def update(stage: str, done: int, total: int) -> None:
        nonlocal catalog_texts
        if stage == "embed":
            catalog_texts = total
        if catalog_texts < MIN_TEXTS_FOR_BAR or (stage == "embed" and done == 0):
            return
        if stage == "fit" and "embed" in bars:
            bars.pop("embed").close()
        bar = bars.get(stage)
        if bar is None:
            description, unit = ("embedding catalog", "text") if stage == "embed" else ("fitting scorer", "head")
            bar = bars[stage] = tqdm(total=total, desc=description, unit=unit, file=sys.stderr, disable=None)
        bar.update(max(0, done - bar.n))  # fits finish on worker threads, possibly out of order

    def close() -> None:
        for bar in bars.values():
            bar.close()
        bars.clear()

    return update, close
