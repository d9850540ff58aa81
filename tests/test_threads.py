"""The small thread pool: results in order, errors in order, nothing lost when split."""
import os
import re
import threading
import time

import numpy as np
import pytest

from bge_ref import threads
from bge_ref.errors import InputError

pytestmark = pytest.mark.quick  # needs no torch


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_run_keeps_order_and_uses_the_pool(n_threads, monkeypatch):
    monkeypatch.setattr(threads, "THREADS", n_threads)
    names = set()

    def part(i, j):
        names.add(threading.current_thread().name)
        time.sleep(0.002)                                # long enough for every thread to take a part
        return i * j
    out = threads.run(part, [(i, 2) for i in range(50)])
    assert out == [2 * i for i in range(50)]
    assert len(names) == n_threads                       # this thread and THREADS - 1 of the pool's
    assert sum(n.startswith("bge_ref") for n in names) == n_threads - 1


def test_pool_threads_take_parts_after_polling_and_after_blocking(monkeypatch):
    """A pool thread polls the queue for SPIN_SECONDS after its part, then blocks: a run right after
    another and one long after both get their parts taken by it."""
    monkeypatch.setattr(threads, "THREADS", 2)

    def names():
        seen = set()
        threads.run(lambda i: seen.add(threading.current_thread().name) or time.sleep(0.002), [(i,) for i in range(8)])
        return seen
    assert len(names()) == 2 and len(names()) == 2       # the helper still polling
    time.sleep(5 * threads.SPIN_SECONDS)
    assert len(names()) == 2                             # the helper woken from its blocking wait


def test_pool_is_made_again_in_a_forked_child(monkeypatch):
    """Threads do not survive fork: a child process (multiprocessing's fork start method, Ray's
    workers) gets a pool of its own instead of queueing parts for threads that are not there."""
    import multiprocessing
    monkeypatch.setattr(threads, "THREADS", 2)
    threads.run(lambda i: i, [(0,), (1,)])               # the parent's pool exists
    child = multiprocessing.get_context("fork").Process(target=_run_and_exit)
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0


def _run_and_exit():
    os._exit(0 if threads.run(lambda i: i * 2, [(i,) for i in range(4)]) == [0, 2, 4, 6] else 1)


def test_run_raises_the_first_error_in_argument_order(monkeypatch):
    monkeypatch.setattr(threads, "THREADS", 2)

    def fail_on(i):
        if i in (3, 7):
            raise ValueError(f"item {i}")
        return i
    with pytest.raises(ValueError, match="item 3"):
        threads.run(fail_on, [(i,) for i in range(10)])


def test_no_part_is_taken_after_one_has_failed(monkeypatch):
    """A Ctrl-C (or any error) in a long list of parts (embed_rows runs a whole encode() chunk as one)
    stops it after the parts already under way, not at its end."""
    monkeypatch.setattr(threads, "THREADS", 2)
    ran = []

    def part(i):
        ran.append(i)
        if i == 2:
            raise KeyboardInterrupt
        time.sleep(0.01)
    with pytest.raises(KeyboardInterrupt):
        threads.run(part, [(i,) for i in range(50)])
    assert 2 in ran and len(ran) <= 4


@pytest.mark.parametrize("n, parts", [(0, 2), (1, 2), (2, 2), (7, 2), (10, 3), (5, 8)])
def test_chunks_cover_the_range_once(n, parts):
    slices = threads.chunks(n, parts)
    assert len(slices) == min(n, parts)
    covered = np.concatenate([np.arange(n)[s] for s in slices]) if slices else np.array([], int)
    np.testing.assert_array_equal(covered, np.arange(n))
    sizes = [s.stop - s.start for s in slices]
    assert not sizes or max(sizes) - min(sizes) <= 1


def numpy_blas_threads() -> list[int]:
    """Thread counts of NumPy's own BLAS: the one bge_ref limits (a BLAS another package loads later,
    say torch's or onnxruntime's, is not bge_ref's to limit)."""
    import threadpoolctl  # the optional `fast` extra, which CI installs
    return [p["num_threads"] for p in threadpoolctl.threadpool_info()
            if p["user_api"] == "blas" and "numpy" in p["filepath"]]


def test_blas_limit_restores_the_thread_count():
    before = numpy_blas_threads()
    assert before
    with threads.blas_single_threaded():
        assert numpy_blas_threads() == [1] * len(before)
    assert numpy_blas_threads() == before


@pytest.mark.parametrize("value, expected", [("3", 3), (" 1 ", 1), ("", None)])
def test_threads_from_env(value, expected, monkeypatch):
    monkeypatch.setenv("BGE_REF_THREADS", value)
    assert threads.threads_from_env() == (expected or len(os.sched_getaffinity(0)))


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_threads_env_is_a_clear_error(value, monkeypatch):
    monkeypatch.setenv("BGE_REF_THREADS", value)
    with pytest.raises(InputError, match=f"BGE_REF_THREADS must be a positive integer.*{re.escape(repr(value))}"):
        threads.threads_from_env()


def test_split_limits_blas_and_is_reentrant(monkeypatch):
    monkeypatch.setattr(threads, "THREADS", 2)
    blas = numpy_blas_threads
    before = blas()
    with threads.split() as parts:
        assert parts == 2 and all(n == 1 for n in blas())
        with threads.split() as inner:                    # a split block inside another (same thread)
            assert inner == 2
        assert all(n == 1 for n in blas())
    assert blas() == before
    monkeypatch.setattr(threads, "_blas_controller", False)  # no threadpoolctl: BLAS keeps its threads
    with threads.split() as parts:
        assert parts == 1 and blas() == before


def test_run_in_the_calling_thread_when_not_parallel(monkeypatch):
    monkeypatch.setattr(threads, "THREADS", 2)
    names = set()
    threads.run(lambda i: names.add(threading.current_thread().name), [(i,) for i in range(6)], parallel=False)
    assert names == {threading.current_thread().name}


@pytest.mark.parametrize("n_threads", [1, 2])
def test_one_thread_makes_the_blas_single_threaded_too(n_threads, monkeypatch):
    """BGE_REF_THREADS=1: the BLAS on one thread inside a forward, its count restored after;
    otherwise the BLAS keeps its own threads."""
    monkeypatch.setattr(threads, "THREADS", n_threads)
    before = numpy_blas_threads()
    with threads.forward_threads():
        assert numpy_blas_threads() == ([1] * len(before) if n_threads == 1 else before)
    assert numpy_blas_threads() == before


def test_run_inside_a_part_runs_in_that_thread(monkeypatch):
    """A part that calls run() again (every pool thread busy with the outer parts) takes all of its
    own parts in its thread instead of queueing helpers behind itself: no deadlock, results in order."""
    monkeypatch.setattr(threads, "THREADS", 2)
    names, out = set(), []

    def inner(i, j):
        names.add((i, threading.current_thread().name))
        return i * 10 + j

    def outer(i):
        return threads.run(lambda j: inner(i, j), [(j,) for j in range(4)])
    worker = threading.Thread(target=lambda: out.extend(threads.run(outer, [(i,) for i in range(4)])))
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "deadlock"
    assert out == [[i * 10 + j for j in range(4)] for i in range(4)]
    by_part = {}
    for i, name in names:
        by_part.setdefault(i, set()).add(name)
    assert all(len(v) == 1 for v in by_part.values())     # each outer part's inner parts on one thread


def test_split_inside_a_part_is_one_part(monkeypatch):
    """A split block inside a part of another (fast.encoder's cores each running whole layers) keeps
    the outer limit and runs in its thread: it must not wait for the lock the outer split holds."""
    monkeypatch.setattr(threads, "THREADS", 2)
    seen = []

    def part(i):
        with threads.split() as inner:
            seen.append((inner, tuple(numpy_blas_threads())))

    worker = threading.Thread(target=lambda: _outer_split(part))
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "deadlock"
    assert len(seen) == 2 and all(inner == 1 and all(n == 1 for n in blas) for inner, blas in seen)


def _outer_split(part):
    with threads.split() as parts:
        threads.run(part, [(0,), (1,)], parts > 1)
