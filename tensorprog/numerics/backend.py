"""Where trials run: in this process, in the local pool of worker processes, or on a Ray cluster.

A sweep (``transfer``) and a study (``tune``) both hand one picklable trial function and its
jobs (plain dicts) to a :class:`Backend` and take each result as it completes, so the trial
function and the result cache are the same wherever the trials run. The local pool
(``workers.py``) is the default; ``ray_address`` runs every trial as a Ray task on an existing
cluster (``"auto"``: the one ``ray start`` made on this machine; ``"local"``: a Ray instance
started for this process alone, what the tests and the overhead benchmark use).

Interrupting the driver leaves no running trial behind on either backend: the pool's workers die
with it (``workers.py``); on Ray, Ctrl-C (or any exception) cancels every pending task with
``force=True`` (its worker process is killed), and a driver killed outright (SIGTERM, SIGKILL)
ends its Ray job, whose tasks the cluster then kills (Ray's ownership: a task dies with the
process that submitted it); a local instance started by ``ray.init`` dies with its driver.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED
from concurrent.futures import wait as wait_futures

from ..errors import UsageError
from .workers import worker_pool

Trial = Callable[[dict], dict]


class Backend:
    """Submit jobs (``submit``), then take ``(tag, result)`` pairs as each completes
    (``next_done``); ``pending`` counts the jobs submitted and not yet taken."""

    name = "this process"

    def __init__(self, fn: Trial):
        self.fn = fn
        self._queue: list[tuple[object, dict]] = []

    @property
    def pending(self) -> int:
        return len(self._queue)

    def submit(self, tag: object, job: dict) -> None:
        self._queue.append((tag, job))

    def next_done(self) -> tuple[object, dict]:
        tag, job = self._queue.pop(0)
        return tag, self.fn(job)


class _Pool(Backend):
    name = "local worker processes"

    def __init__(self, fn: Trial, pool):
        super().__init__(fn)
        self.pool = pool
        self.futures: dict = {}

    @property
    def pending(self) -> int:
        return len(self.futures)

    def submit(self, tag: object, job: dict) -> None:
        self.futures[self.pool.submit(self.fn, job)] = tag

    def next_done(self) -> tuple[object, dict]:
        done, _ = wait_futures(list(self.futures), return_when=FIRST_COMPLETED)
        future = next(iter(done))
        return self.futures.pop(future), future.result()


class _Ray(Backend):
    def __init__(self, fn: Trial, ray, address: str):
        super().__init__(fn)
        self.ray = ray
        self.name = f"Ray at {address}"
        self.remote = ray.remote(num_cpus=1, max_retries=0)(fn)
        self.refs: dict = {}

    @property
    def pending(self) -> int:
        return len(self.refs)

    def submit(self, tag: object, job: dict) -> None:
        self.refs[self.remote.remote(job)] = tag

    def next_done(self) -> tuple[object, dict]:
        (ref,), _ = self.ray.wait(list(self.refs), num_returns=1)
        return self.refs.pop(ref), self.ray.get(ref)

    def cancel(self) -> None:
        for ref in self.refs:
            with contextlib.suppress(Exception):  # finished meanwhile: nothing to cancel
                self.ray.cancel(ref, force=True)
        self.refs.clear()


def import_ray():
    """The ray module, or a UsageError saying how to install it (an optional extra)."""
    try:
        import ray
    except ImportError:
        raise UsageError("--ray-address: Ray is not installed",
                         help="pip install 'tensorprog[ray]' (or drop --ray-address to run "
                              "the trials in local worker processes)") from None
    return ray


def connect_ray(address: str):
    """The ray module, connected to ``address`` ("local" starts an instance for this process);
    an instance this process already started (``ray.init`` in a notebook or a test) is used as
    it is."""
    ray = import_ray()
    if not ray.is_initialized():
        kw = {"include_dashboard": False, "log_to_driver": False}
        try:
            if address == "local":
                ray.init(**kw)
            else:
                ray.init(address=address, **kw)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise UsageError(f"--ray-address {address}: cannot connect ({err})",
                             help="give the address `ray start --head` printed (host:6379), "
                                  "'auto' for the cluster on this machine, or 'local'") from None
    return ray


@contextlib.contextmanager
def backend(fn: Trial, jobs: int, ray_address: str | None = None) -> Iterator[Backend]:
    """A backend that runs ``fn``: on Ray at ``ray_address``, else in ``jobs`` worker processes
    (in this process for one job). On an exception, Ctrl-C included, no trial is left running."""
    if ray_address:
        ray = connect_ray(ray_address)
        runner = _Ray(fn, ray, ray_address)
        try:
            yield runner
        except BaseException:
            runner.cancel()
            raise
    elif jobs == 1:
        with _threads_kept():
            yield Backend(fn)
    else:
        with worker_pool(jobs) as pool:
            yield _Pool(fn, pool)


@contextlib.contextmanager
def _threads_kept() -> Iterator[None]:
    """Each trial gives torch the threads its worker may use; run in this process, that would
    leave the caller's own setting (a notebook's, a test run's) changed after the sweep, and a
    caller on fewer threads than cores paying for spinning workers in everything it runs next.
    A caller that had not imported torch had no setting to keep."""
    torch = sys.modules.get("torch")
    before = None if torch is None else torch.get_num_threads()
    try:
        yield
    finally:
        if before is not None:
            torch.set_num_threads(before)
