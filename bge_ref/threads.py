"""All cores for the NumPy work that BLAS does not spread over them itself.

NumPy releases the GIL inside its loops (and BLAS inside its calls), so plain threads really run
in parallel on large arrays. fast.py gives each thread its own sequences (every layer) or rows (or
attention heads) with BLAS single-threaded inside (`split`), from fast.FEW_ROWS token rows (with
fewer, its share of the heads and FFN columns; for small weights or a single query the BLAS's
threads share each matmul instead, or on OpenBLAS's SkylakeX kernel these threads share gemm.py's
small-kernel column blocks); checkpoint.py checks and copies several layers at once. The
calling thread takes a part too, and waits for the others by polling, as the pool's threads wait
for the next part (SPIN_SECONDS). Not in parallel: the GIL. Each NumPy call takes it back when its
loop ends, and waits while another thread holds it, so work made of many short calls (the GELU,
LayerNorm) gains less from a second thread than a matmul does (benchmarks/breakdown.py).
$BGE_REF_THREADS sets the pool's size.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from contextlib import contextmanager, nullcontext

import numpy as np

from .errors import InputError


def threads_from_env() -> int:
    """$BGE_REF_THREADS if set, else the cores this process may run on."""
    raw = os.environ.get("BGE_REF_THREADS", "").strip()
    if not raw:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if not raw.isdigit() or int(raw) < 1:
        raise InputError(f"BGE_REF_THREADS must be a positive integer (threads for bge_ref's own pool), got {raw!r}")
    return int(raw)


THREADS = threads_from_env()
# Seconds a pool thread, and run()'s caller, keep polling (time.sleep(0): the GIL released, the core
# kept) before they block. A thread that blocks lets its core go idle, and on a virtual machine an idle
# core is one the hypervisor may hand to another guest: waking it can take milliseconds. OpenBLAS's
# threads poll between calls for the same reason. A/B of encode() against a blocking pool (Intel Xeon,
# 2-core VM, alternating rounds, medians): where the hypervisor was stealing time, 0.93x the time for
# 250 texts of the MiniLM corpus (stolen 4.8% of the time against 9.5%) and 0.95x for one bge-large
# passage (1.2% against 4.8%); where it was not, 0.99x and 1.01x (noise).
SPIN_SECONDS = 0.005
_pool = None
_local = threading.local()


class _Pool:
    """Helper threads taking parts from one queue; each polls it for SPIN_SECONDS before blocking."""

    def __init__(self):
        self.tasks, self.size, self.pid = queue.SimpleQueue(), 0, os.getpid()

    def grow(self, size):
        for i in range(self.size, size):
            threading.Thread(target=self._loop, name=f"bge_ref_{i}", daemon=True).start()
        self.size = max(self.size, size)

    def _loop(self):
        while True:
            _polled(lambda: not self.tasks.empty())       # then get() blocks, if nothing came
            self.tasks.get()()


def _polled(ready):
    """Poll ready() for SPIN_SECONDS, the GIL released between calls: True once it is."""
    deadline = time.perf_counter() + SPIN_SECONDS
    while not ready():
        if time.perf_counter() > deadline:
            return False
        time.sleep(0)
    return True


def pool(size):
    """The helper threads, at least `size` of them (a new pool in a forked child: threads do not fork)."""
    global _pool
    if _pool is None or _pool.pid != os.getpid():
        _pool = _Pool()
    _pool.grow(size)
    return _pool


def run(fn, args_list, parallel=True):
    """[fn(*args) for args in args_list], on THREADS threads (in this one when there is nothing to
    split, parallel is False, or this is itself a part of a run: the pool's threads are busy with
    the other parts, and one waiting for a helper it queued behind itself would never return). This
    thread takes parts too, rather than only waiting: one wake-up fewer per split (a forward of many
    rows splits three times a layer). Every part has run when it returns; once one has raised, no
    thread takes another (a Ctrl-C stops a long list after the parts under way), and the first error
    in argument order is raised when those have ended."""
    if THREADS == 1 or len(args_list) <= 1 or not parallel or in_part():
        return [fn(*args) for args in args_list]
    results, errors = [None] * len(args_list), {}
    todo, lock = iter(range(len(args_list))), threading.Lock()
    helpers = min(THREADS, len(args_list)) - 1
    left, done = [helpers], threading.Event()

    def work():                                          # take the next part until none is left
        while True:
            with lock:
                i = None if errors else next(todo, None)
            if i is None:
                return
            _local.in_part = True
            try:
                results[i] = fn(*args_list[i])
            except BaseException as e:                   # kept, raised once every part has run
                errors[i] = e
            finally:
                _local.in_part = False

    def helper():
        work()
        with lock:
            left[0] -= 1
            if not left[0]:
                done.set()

    tasks = pool(THREADS - 1).tasks
    for _ in range(helpers):
        tasks.put(helper)
    work()
    if not _polled(done.is_set):
        done.wait()
    if errors:
        raise errors[min(errors)]
    return results


def in_part() -> bool:
    """True in a thread running a part of run(): work it does there stays on that thread."""
    return getattr(_local, "in_part", False)


def chunks(n, parts):
    """Split range(n) into at most `parts` contiguous slices of near-equal size."""
    bounds = np.linspace(0, n, min(parts, n) + 1).round().astype(int)
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def blas_single_threaded():
    """A context with BLAS on one thread (threadpoolctl), or None if that cannot be controlled."""
    controller = _controller()
    return controller.limit(limits=1, user_api="blas") if controller else None


def _controller():
    """threadpoolctl's controller of this process's thread pools, or False without threadpoolctl."""
    global _blas_controller
    if _blas_controller is None:
        try:
            from threadpoolctl import ThreadpoolController
            _blas_controller = ThreadpoolController()
        except ImportError:
            _blas_controller = False
    return _blas_controller


def can_split() -> bool:
    """True if split() here would give THREADS > 1 parts: more than one thread, BLAS limitable to one
    thread (threadpoolctl), and not inside a part already."""
    return THREADS > 1 and not in_part() and bool(_controller())


@contextmanager
def split():
    """Work that this pool's threads split among themselves, each calling BLAS on one thread.

    Yields the number of parts to split into: THREADS, or 1 where BLAS cannot be limited (no
    threadpoolctl) or there is one thread; then BLAS threads each matmul itself and the parts must
    run one after the other in the calling thread (`run(..., parallel=False)`).
    """
    if in_part():                                        # a part of run(): its own parts run here, BLAS as
        yield 1                                          # the outer block set it (fast.encoder's split), and
        return                                           # the lock may be held by the thread waiting for it
    limit = blas_single_threaded() if THREADS > 1 else None
    with blas_limit_lock, limit or nullcontext():
        yield THREADS if limit is not None else 1


def run_split(fn, args_list):
    """run(fn, args_list) inside split(): each part on its own thread with BLAS single-threaded."""
    with split() as parts:
        return run(fn, args_list, parts > 1)


@contextmanager
def forward_threads():
    """The block of one forward: with THREADS 1 ($BGE_REF_THREADS=1) the BLAS on one thread too
    (threadpoolctl), so that one setting makes the whole forward single-threaded; a few rows'
    projections of small weights are otherwise shared by the BLAS's own threads. That is the
    setting for a machine whose cores are busy with other processes: OpenBLAS splits each call
    evenly between its threads, which meet after it, so every call waits for the thread another
    process preempted: a query can take several times as long as on one thread."""
    limit = blas_single_threaded() if THREADS == 1 else None
    if limit is None:
        yield
        return
    with blas_limit_lock, limit:
        yield


_blas_controller = None
# threadpoolctl's limit is process-wide: callers in other threads must not interleave their
# set/restore pairs (BLAS could be left on one thread), so hold this around every limited block.
# Reentrant: a split block may call a function that opens its own.
blas_limit_lock = threading.RLock()
