"""Run independent CPU-bound jobs on several cores, each with single-threaded BLAS.

Two workers with one BLAS thread each beat one worker with two BLAS threads
for the gate's work (encoder batches, head fits): the matrices are small, and
on a busy machine multi-threaded BLAS spins waiting for a core another
process holds (measured in docs/performance.md).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, TypeVar

from threadpoolctl import threadpool_limits

Item = TypeVar("Item")
Result = TypeVar("Result")


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def single_threaded() -> threadpool_limits:
    """BLAS and OpenMP limited to one thread while the block runs.

    The limit is process-wide: enter it from one thread around a whole
    parallel section (as :func:`single_threaded_pool` does), never from
    several threads at once, or their exits restore each other's settings.
    Measured here: a head fit on SMP2017 took 1.5 s with one thread and 28 s
    with two while the other core was busy (thread oversubscription).
    """
    return threadpool_limits(limits=1)


@contextmanager
def single_threaded_pool(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A pool of ``workers`` threads; while the block runs, BLAS and OpenMP are single-threaded."""
    with single_threaded(), ThreadPoolExecutor(
            max_workers=max(1, workers), thread_name_prefix="gatekeeper-worker") as pool:
        yield pool


def map_parallel(function: Callable[[Item], Result], items: Sequence[Item], workers: int) -> list[Result]:
    """``[function(item) for item in items]``, run by up to ``workers`` threads, each single-threaded.

    NumPy releases the GIL inside BLAS and most array loops, so threads run
    in parallel. With one worker (or one item) it runs inline.
    """
    workers = max(1, min(workers, len(items)))
    if workers == 1:
        with single_threaded():
            return [function(item) for item in items]
    with single_threaded_pool(workers) as pool:
        return list(pool.map(function, items))
