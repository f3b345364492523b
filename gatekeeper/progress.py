"""Progress bars for long builds (shown on a terminal, and only past a few hundred texts)."""

from __future__ import annotations

import sys

from tqdm import tqdm

from typing import Callable

from gatekeeper.build import ProgressCallback

#: Embedding fewer texts than this shows no bar.
MIN_TEXTS_FOR_BAR = 300


def build_progress() -> tuple[ProgressCallback, Callable[[], None]]:
    """A progress callback for :func:`gatekeeper.build.load_or_build`, and a function closing its bar."""
    bars: dict[str, tqdm] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage == "embed" and total >= MIN_TEXTS_FOR_BAR:
            bar = bars.get(stage)
            if bar is None:
                bar = bars[stage] = tqdm(total=total, desc="embedding catalog", unit="text", file=sys.stderr,
                                         disable=None)
            bar.update(done - bar.n)
        elif stage == "fit" and "embed" in bars:
            bars.pop("embed").close()
            print("fitting scorer ...", file=sys.stderr, flush=True)

    def close() -> None:
        for bar in bars.values():
            bar.close()
        bars.clear()

    return update, close
