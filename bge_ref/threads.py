"""All cores for the NumPy work that BLAS does not spread over them itself.

NumPy releases the GIL inside its loops (and BLAS inside its calls), so plain threads really run
in parallel on large arrays. model.py splits attention heads and GELU rows with `run`; checkpoint.py
checks and fuses several layers at once. $BGE_REF_THREADS sets the pool's size.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

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
_pool = None


def run(fn, args_list):
    """[fn(*args) for args in args_list], on THREADS threads (in this one when there is nothing to split)."""
    global _pool
    if THREADS == 1 or len(args_list) <= 1:
        return [fn(*args) for args in args_list]
    if _pool is None:
        _pool = ThreadPoolExecutor(THREADS, thread_name_prefix="bge_ref")
    return list(_pool.map(lambda args: fn(*args), args_list))


def chunks(n, parts):
    """Split range(n) into at most `parts` contiguous slices of near-equal size."""
    bounds = np.linspace(0, n, min(parts, n) + 1).round().astype(int)
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def blas_single_threaded():
    """A context with BLAS on one thread (threadpoolctl), or None if that cannot be controlled."""
    global _blas_controller
    if _blas_controller is None:
        try:
            from threadpoolctl import ThreadpoolController
            _blas_controller = ThreadpoolController()
        except ImportError:
            _blas_controller = False
    return _blas_controller.limit(limits=1, user_api="blas") if _blas_controller else None


_blas_controller = None
# threadpoolctl's limit is process-wide: callers in other threads must not interleave their
# set/restore pairs (BLAS could be left on one thread), so hold this around every limited block.
blas_limit_lock = threading.Lock()
