"""Run one function over many independent items (slides, scenes) in worker processes, results as they finish."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any


def worker_count(workers: int | str, n_jobs: int) -> int:
    """``auto``: half the cores; never more processes than jobs, never fewer than one."""
    if workers == "auto":
        workers = max(1, (os.cpu_count() or 1) // 2)
    return max(1, min(int(workers), n_jobs))


def run_jobs(fn: Callable[..., Any], items: Sequence[Any], args: tuple, workers: int, record: Callable[[Any], None]):
    """``record(fn(item, *args))`` for every item: in this process for ``workers <= 1``, else in ``workers`` spawned
    processes (``fn`` must be importable). ``fn`` should return failures rather than raise; if ``record`` raises,
    pending jobs are cancelled and the error propagates."""
    if workers <= 1:
        for item in items:
            record(fn(item, *args))
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(fn, item, *args) for item in items]
        try:
            for future in as_completed(futures):
                record(future.result())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
