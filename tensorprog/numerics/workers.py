"""Worker processes that live no longer than the process that started them.

A sweep's trials run in a spawned process pool. Two ways the pool outlived its driver:
``kill -9`` of the driver left the workers training (nothing tells them), and Ctrl-C left the
driver waiting in the pool's shutdown for every queued trial while each worker, interrupted
too, reported its KeyboardInterrupt as a trial's result and took the next one. So each worker
ignores SIGINT (the driver alone decides), dies with its parent (Linux: the kernel's
PR_SET_PDEATHSIG; elsewhere, and as a second guard, a thread watching the parent's pid), and
the driver, when interrupted or failing, cancels the queued trials and terminates the workers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCH_SECONDS = 0.5  # how often a worker looks for its parent (the fallback's latency)


def _die_with(parent: int) -> None:
    """Runs first in each worker: ignore Ctrl-C, and exit when ``parent`` is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no libc to ask: the watch below still holds
            pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)

    def watch() -> None:  # a parent that dies reparents its children: the ppid changes
        while os.getppid() == parent:
            time.sleep(WATCH_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="tensorprog-parent-watch", daemon=True).start()


@contextlib.contextmanager
def worker_pool(jobs: int) -> Iterator[ProcessPoolExecutor]:
    """A spawned pool of ``jobs`` workers (no forked torch state) that die with this process;
    on an exception (Ctrl-C included) the queued work is cancelled and the workers terminated
    at once, instead of the pool's shutdown waiting for every queued trial."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_die_with,
                               initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        ours = [p for p in multiprocessing.active_children() if p not in before]
        for p in ours:
            p.terminate()
        for p in ours:
            p.join(5)
        raise
    pool.shutdown(wait=True)
