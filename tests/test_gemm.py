"""gemm.matmul: the semantics of `x @ w`, both paths (ctypes BLAS and NumPy-only), and its accuracy
claim: rms and max error at most torch.matmul's at the projections of bge-large and MiniLM, on this
machine's OpenBLAS kernel and under the Haswell kernel when the machine's own is a higher one."""
import ctypes
import json
import subprocess
import sys
import threading
import types

import numpy as np
import pytest
import torch

from bge_ref import gemm, threads
from bge_ref.testing.projections import PROJECTIONS, errors, projection_inputs
from tests.conftest import subprocess_env


def numpy_only(x, w):
    """gemm.matmul's NumPy-only fallback, called directly."""
    y = np.empty((x.shape[0], w.shape[1]), np.float32)
    gemm.chunked(x, w, y, gemm._numpy_product(x, w))
    return y


def accuracy_ratios(seed=0, paths=("blas", "numpy"), rows=1024):
    """{path: {projection: (rms ratio, max ratio)}}: gemm.matmul's error over torch.matmul's at
    N = rows, through NumPy's OpenBLAS ("blas") and through the NumPy-only fallback ("numpy", always
    in chunks of CHUNK)."""
    torch.set_num_threads(2)
    out = {p: {} for p in paths}
    for name, K, M, kind in PROJECTIONS:
        x, w = projection_inputs(rows, K, M, kind, seed)
        exact = x.astype(np.float64) @ w.astype(np.float64)  # (N, M)
        tr, tm = errors((torch.from_numpy(x) @ torch.from_numpy(w)).numpy(), exact)
        for path in paths:
            r, m = errors(gemm.matmul(x, w) if path == "blas" else numpy_only(x, w), exact)
            out[path][name] = (r / tr, m / tm)
    return out


def above_torch(ratios):
    """The (path, projection)s of accuracy_ratios() whose rms or max error exceeds torch's."""
    return {f"{path} {name}": (round(r, 3), round(m, 3)) for path, d in ratios.items() for name, (r, m) in d.items() if max(r, m) > 1}


AVX512_KERNELS = ("SkylakeX", "Cooperlake", "SapphireRapids")  # OpenBLAS kernels above Haswell


def blas_kernel():
    """The kernel NumPy's OpenBLAS runs (SkylakeX, Haswell, Zen...), as threadpoolctl reads it."""
    from threadpoolctl import threadpool_info
    return next(i.get("architecture") for i in threadpool_info() if i["internal_api"] == "openblas")


# -- semantics --

@pytest.fixture(params=["blas", "numpy"])
def path(request, monkeypatch):
    """Run a test through the ctypes BLAS path and through the NumPy-only fallback."""
    if request.param == "blas":
        assert gemm.blas() is not None, "NumPy's OpenBLAS cblas_sgemm was not found"
    else:
        monkeypatch.setattr(gemm, "_blas", None)
        monkeypatch.setattr(gemm, "_blas_product", None)  # a call to it would fail loudly
    return request.param


def close_to_matmul(y, x, w):
    """y equals x @ w up to float32 rounding of the sums: within 4 eps * sum |x| |w| per element."""
    ref = x.astype(np.float64) @ w.astype(np.float64)
    bound = 4 * np.finfo(np.float32).eps * (np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)))
    np.testing.assert_array_less(np.abs(y - ref), bound + 1e-30)


@pytest.mark.parametrize("N, K, M", [(1, 1024, 3072), (3, 129, 5), (17, 1000, 33), (64, 2100, 40), (5, 4096, 1), (2, 8, 3)])
def test_same_as_matmul(path, N, K, M):
    rng = np.random.default_rng(N + K + M)
    x, w = rng.normal(size=(N, K)).astype(np.float32), rng.normal(size=(K, M)).astype(np.float32)
    y = gemm.matmul(x, w)
    assert type(y) is np.ndarray and y.dtype == np.float32 and y.shape == (N, M) and y.flags.c_contiguous
    close_to_matmul(y, x, w)
    if K <= gemm.CHUNK:                                   # nothing to chunk: x @ w itself
        np.testing.assert_array_equal(y, x @ w)


@pytest.mark.parametrize("group", [gemm.GROUP, 2])
def test_every_chunk_and_group_counted_once(path, group, monkeypatch):
    """Small integers sum exactly in float32 in any order, so the result must be exact: each row
    of x selects different chunks of w (a chunk dropped or added twice would show)."""
    monkeypatch.setattr(gemm, "GROUP", group)
    K = 5 * gemm.CHUNK + 7                                # 6 chunks, the last one short; 3 groups of 2
    x = (np.arange(4 * K).reshape(4, K) % (2 + np.arange(4))[:, None] == 0).astype(np.float32)
    w = (np.arange(K * 3).reshape(K, 3) % 7).astype(np.float32)
    np.testing.assert_array_equal(gemm.matmul(x, w), x.astype(np.float64) @ w)


@pytest.mark.parametrize("group", [gemm.GROUP, 2])
@pytest.mark.parametrize("dtype", ["float32", "float64"])  # float64: np.matmul's own path
def test_accumulate_adds_every_chunk_to_out_once(path, group, dtype, monkeypatch):
    """accumulate=True: out += x @ w, out's own values counted once (exact with small integers),
    in place, also through a copy when BLAS cannot write out directly (every other column)."""
    monkeypatch.setattr(gemm, "GROUP", group)
    K = 5 * gemm.CHUNK + 7
    x = (np.arange(4 * K).reshape(4, K) % (2 + np.arange(4))[:, None] == 0).astype(dtype)
    w = (np.arange(K * 3).reshape(K, 3) % 7).astype(dtype)
    c = np.arange(12, dtype=dtype).reshape(4, 3) - 100
    want = c.astype(np.float64) + x.astype(np.float64) @ w
    out = c.copy()
    assert gemm.matmul(x, w, out=out, accumulate=True) is out
    np.testing.assert_array_equal(out, want)
    strided = np.zeros((4, 6), dtype)[:, ::2]
    strided[...] = c
    gemm.matmul(x, w, out=strided, accumulate=True)
    np.testing.assert_array_equal(strided, want)
    with pytest.raises(ValueError, match="accumulate=True adds into out"):
        gemm.matmul(x, w, accumulate=True)


def test_views_and_copies(path):
    rng = np.random.default_rng(1)
    big = rng.normal(size=(40, 700)).astype(np.float32)
    x, w = projection_inputs(40, 600, 90, "ln")          # w a transposed view, as checkpoint.py's weights
    in_place = [big[3:20, 50:650],                       # row stride wider than the rows
                big[::2, :600],                          # every other row
                np.asfortranarray(big[:, :600]),         # column-major: BLAS reads its transpose
                w, w[:, 7:50], w[100:300], w[:, ::3]]    # transposed views and their slices
    for a in in_place:
        assert gemm._operand(a)[0] is a                  # no copy
    copied = [w[::2], big[:, ::2],                       # no axis of unit stride
              big[:, :600].astype(">f4"),                # big-endian
              np.broadcast_to(big[:1, :600], (9, 600)),  # row stride 0
              w.astype(np.float16)]                      # float32 @ float16 is float32: widened
    for a in copied:
        assert gemm._operand(a)[0] is not a and gemm._operand(a)[0].flags.c_contiguous
    cases = [(big[3:20, 50:650], w), (big[::2, :600], w[:, 7:50]), (np.asfortranarray(big[:, :600]), w),
             (x[:, ::2], w[::2]), (x, w[:, ::3]), (big[:, :600].astype(">f4"), w), (np.broadcast_to(big[:1, :600], (9, 600)), w),
             (x[:5], w.astype(np.float16)), (x[:, 100:300], w[100:300]), (x[:1], w)]
    for x, w in cases:
        y = gemm.matmul(x, w)
        assert y.dtype == (x @ w).dtype == np.float32 and y.shape == (x @ w).shape
        close_to_matmul(y, np.asarray(x, np.float32), np.asarray(w, np.float32))


def test_out(path):
    rng = np.random.default_rng(2)
    x, w = rng.normal(size=(6, 300)).astype(np.float32), rng.normal(size=(300, 7)).astype(np.float32)
    out = np.full((6, 7), np.nan, np.float32)             # beta = 0 must overwrite NaN, not scale it
    assert gemm.matmul(x, w, out=out) is out
    close_to_matmul(out, x, w)
    wide = np.full((6, 20), np.nan, np.float32)
    assert gemm.matmul(x, w, out=wide[:, 5:12]) is not None  # a strided view, written in place
    close_to_matmul(wide[:, 5:12], x, w)
    assert np.isnan(wide[:, :5]).all() and np.isnan(wide[:, 12:]).all()  # nothing written outside the view
    out64 = np.zeros((6, 7))
    assert gemm.matmul(x, w, out=out64) is out64 and out64.dtype == np.float64
    close_to_matmul(out64, x, w)
    colmajor = np.zeros((6, 7), np.float32, order="F")
    gemm.matmul(x, w, out=colmajor)
    close_to_matmul(colmajor, x, w)
    with pytest.raises(ValueError):
        gemm.matmul(x, w, out=np.zeros((6, 8), np.float32))
    with pytest.raises(TypeError):
        gemm.matmul(x, w, out=np.zeros((6, 7), np.int32))


def test_out_overlapping_an_input(path):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(300, 300)).astype(np.float32)
    b = a.copy()
    assert gemm.matmul(a, a, out=a) is a                  # written only after the product is complete
    np.testing.assert_array_equal(a, gemm.matmul(b, b))


def test_everything_else_is_np_matmul():
    rng = np.random.default_rng(4)
    x64, w64 = rng.normal(size=(5, 300)), rng.normal(size=(300, 4))
    np.testing.assert_array_equal(gemm.matmul(x64, w64), x64 @ w64)  # float64: the oracle's path, untouched
    x16, w16 = x64.astype(np.float16), w64.astype(np.float16)
    assert gemm.matmul(x16, w16).dtype == np.float16
    stack = rng.normal(size=(2, 5, 300)).astype(np.float32)
    np.testing.assert_array_equal(gemm.matmul(stack, w64.astype(np.float32)), stack @ w64.astype(np.float32))
    v = x64[0].astype(np.float32)
    np.testing.assert_array_equal(gemm.matmul(v, w64.astype(np.float32)), v @ w64.astype(np.float32))
    np.testing.assert_array_equal(gemm.matmul(np.zeros((0, 300), np.float32), w64.astype(np.float32)), np.zeros((0, 4)))
    with pytest.raises(ValueError):
        gemm.matmul(x64.astype(np.float32), w64[:299].astype(np.float32))


# -- chunks and threads --

class RecordingSgemm:
    """Stands for cblas_sgemm: records each call's k, then calls the real one."""
    def __init__(self, sgemm):
        self.sgemm, self.argtypes, self.ks = sgemm, sgemm.argtypes, []

    def __call__(self, *args):
        self.ks.append(getattr(args[5], "value", args[5]))  # a Python int or a ctypes one
        return self.sgemm(*args)


@pytest.mark.parametrize("N, chunk", [(1, gemm.SHORT_CHUNK), (gemm.SHORT_CHUNK_ROWS - 1, gemm.SHORT_CHUNK),
                                      (gemm.SHORT_CHUNK_ROWS, gemm.CHUNK), (300, gemm.CHUNK)])
def test_chunks_shorter_below_query_rows(N, chunk, monkeypatch):
    """Every call sums at most `chunk` products, every chunk once: SHORT_CHUNK below SHORT_CHUNK_ROWS rows."""
    rec = RecordingSgemm(gemm.blas())
    monkeypatch.setattr(gemm, "_blas", rec)
    x, w = projection_inputs(N, 1000, 70, "ln")
    close_to_matmul(gemm.matmul(x, w), x, w)
    assert sum(rec.ks) == 1000 and max(rec.ks) == chunk and len(rec.ks) == -(-1000 // chunk)


@pytest.mark.parametrize("N, chunk", [(gemm.SHORT_CHUNK_ROWS, gemm.SHORT_CHUNK), (gemm.LARGE_W_ROWS - 1, gemm.SHORT_CHUNK),
                                      (gemm.LARGE_W_ROWS, gemm.CHUNK)])
def test_large_weights_take_short_chunks_up_to_more_rows(N, chunk, monkeypatch):
    """A weight matrix of LARGE_W elements (bge-large's attention output, 1024 x 1024) is summed in
    SHORT_CHUNK below LARGE_W_ROWS rows; one row of w fewer (1024 elements) keeps CHUNK from SHORT_CHUNK_ROWS."""
    rec = RecordingSgemm(gemm.blas())
    monkeypatch.setattr(gemm, "_blas", rec)
    x, w = projection_inputs(N, 1024, gemm.LARGE_W // 1024, "ln")
    close_to_matmul(gemm.matmul(x, w), x, w)
    assert sum(rec.ks) == 1024 and max(rec.ks) == chunk
    rec.ks.clear()
    gemm.matmul(x[:, :1023], w[:1023])                        # LARGE_W - 1024 elements: below the bound
    assert max(rec.ks) == gemm.CHUNK
    rec.ks.clear()
    part = gemm.matmul(x[:, :1023], w[:1023], whole=gemm.LARGE_W)  # a part of a LARGE_W matrix (fast.layer_by_heads)
    assert max(rec.ks) == chunk
    close_to_matmul(part, x[:, :1023], w[:1023])


def test_blas_threads_or_one_thread_same_product():
    """Each call threaded by the BLAS, or single-threaded inside a split (fast.py's rows layout):
    the same product up to rounding, at a few rows and at many."""
    for N in (3, 200):
        x, w = projection_inputs(N, 1024, 700, "ln")
        threaded = gemm.matmul(x, w)
        with threads.split():
            single = gemm.matmul(x, w)
        close_to_matmul(threaded, x, w)
        close_to_matmul(single, x, w)


def test_called_from_the_pool_itself(monkeypatch):
    """gemm.matmul inside bge_ref's pool workers, several at once: no deadlock, right products."""
    monkeypatch.setattr(threads, "THREADS", 2)
    x, w = projection_inputs(600, 300, 50, "ln")
    results = []
    worker = threading.Thread(target=lambda: results.extend(threads.run(lambda i: gemm.matmul(x[i:], w), [(i,) for i in range(4)])))
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "deadlock"
    for i, y in enumerate(results):
        close_to_matmul(y, x[i:], w)
    assert len(results) == 4


def test_transpose_into_a_column_block():
    """checkpoint.py's fast transposed copy: a.T into columns of a wider array, nothing else touched;
    False (out untouched) where OpenBLAS's somatcopy does not apply."""
    a = np.arange(7 * 300, dtype=np.float32).reshape(7, 300)
    out = np.full((300, 20), -1.0, np.float32)
    assert gemm.transpose_into(a, out[:, 5:12])
    np.testing.assert_array_equal(out[:, 5:12], a.T)
    assert (out[:, :5] == -1).all() and (out[:, 12:] == -1).all()
    for bad_a, bad_out in [(a.astype(np.float64), np.empty((300, 7))), (a[:, ::2], np.empty((150, 7), np.float32)),
                           (a, np.empty((300, 7), np.float32)[::-1])]:
        before = bad_out.copy()
        assert not gemm.transpose_into(bad_a, bad_out)
        np.testing.assert_array_equal(bad_out, before)


# -- a few rows on OpenBLAS's SkylakeX kernel: column blocks for its small-matrix kernel --

def flat(blocks):
    return [c for part in blocks for c in part]


@pytest.mark.parametrize("parts", [1, 2, 3])
def test_small_blocks_cover_every_column_once_within_the_kernels_bound(parts, monkeypatch):
    """Each thread's list of blocks: together every column once, in order; each block within
    SMALL_MNK products a call and starting on a 64-byte line; no more lists than threads."""
    monkeypatch.setattr(gemm, "_small_kernel", True)
    monkeypatch.setattr(threads, "THREADS", parts)
    for rows in (1, 11, 20, gemm.SMALL_ROWS - 1):
        for cols in (384, 1000, 1024, 3072, 4096):
            blocks = gemm.small_blocks(rows, cols, gemm.SHORT_CHUNK, gemm.LARGE_W)
            c = flat(blocks)
            assert len(blocks) <= parts and all(blocks), (rows, cols)
            assert c[0].start == 0 and c[-1].stop == cols and all(a.stop == b.start for a, b in zip(c, c[1:]))
            assert all(b.start % 16 == 0 and 0 < rows * gemm.SHORT_CHUNK * (b.stop - b.start) <= gemm.SMALL_MNK for b in c)
            if parts == 2 and cols >= 1024:               # the threads' shares are even
                assert abs((blocks[0][-1].stop - blocks[0][0].start) - (cols - blocks[1][0].start)) <= 16


def test_small_blocks_only_where_the_kernel_helps(monkeypatch):
    """None (the whole product, as before) without the kernel, from SMALL_ROWS rows, for weights
    below LARGE_W, and inside a part of a split where the kernel takes the product whole already."""
    monkeypatch.setattr(threads, "THREADS", 2)
    monkeypatch.setattr(gemm, "_small_kernel", False)
    assert gemm.small_blocks(11, 3072, 64, gemm.LARGE_W) is None
    monkeypatch.setattr(gemm, "_small_kernel", True)
    assert gemm.small_blocks(gemm.SMALL_ROWS, 3072, 64, gemm.LARGE_W) is None
    assert gemm.small_blocks(11, 1536, 64, gemm.LARGE_W - 1) is None  # MiniLM's: in cache, too quick to share
    assert len(gemm.small_blocks(11, 1024, 64, gemm.LARGE_W)) == 2    # taken whole, but on one core: shared
    monkeypatch.setattr(threads, "in_part", lambda: True)
    assert gemm.small_blocks(11, 1024, 64, gemm.LARGE_W) is None      # whole, on this part's own core
    assert len(gemm.small_blocks(11, 3072, 64, gemm.LARGE_W)) == 1    # one list: this thread's


@pytest.mark.parametrize("accumulate", [False, True])
def test_small_blocks_give_the_whole_product(accumulate, monkeypatch):
    """One query's rows against a bge-large-sized weight, in small-kernel blocks on bge_ref's threads:
    every column written, the same product as the whole matmul (bit for bit on the SkylakeX kernel, whose
    small-matrix kernel sums in the same order; to rounding elsewhere), out's values added."""
    x, w = projection_inputs(11, 1024, 3072, "ln")
    bias = np.random.default_rng(0).normal(size=(11, 3072)).astype(np.float32)
    monkeypatch.setattr(gemm, "_small_kernel", False)
    whole = gemm.matmul(x, w, out=bias.copy(), accumulate=accumulate)
    monkeypatch.setattr(gemm, "_small_kernel", True)
    monkeypatch.setattr(threads, "THREADS", 2)
    out = bias.copy() if accumulate else np.full((11, 3072), np.nan, np.float32)
    blocked = gemm.matmul(x, w, out=out, accumulate=accumulate)
    assert blocked is out and np.isfinite(blocked).all()
    close_to_matmul(blocked - (bias if accumulate else 0), x, w)
    if blas_kernel().lower() in gemm.SMALL_KERNEL_CORES:
        np.testing.assert_array_equal(blocked, whole)
    else:
        np.testing.assert_allclose(blocked, whole, rtol=1e-5, atol=1e-5)


def test_small_kernel_read_from_the_blas_core():
    """small_kernel() says whether NumPy's OpenBLAS runs a core with the small-matrix kernel, as
    threadpoolctl names the core; on an AVX-512 CPU, a child under the SkylakeX kernel (whatever
    OPENBLAS_CORETYPE this environment sets) takes one query's real path: blocks on the pool's
    threads, equal bit for bit to the whole product on the BLAS's threads."""
    assert gemm.small_kernel() == (blas_kernel().lower() in gemm.SMALL_KERNEL_CORES)
    flags = open("/proc/cpuinfo").read().split() if sys.platform == "linux" else []
    if "avx512f" not in flags:
        assert not gemm.small_kernel() and gemm.small_blocks(11, 3072, 64, gemm.LARGE_W) is None  # Haswell or lower
        return
    code = """if True:
        import json, numpy as np
        from bge_ref import gemm
        from tests.test_gemm import blas_kernel, projection_inputs
        x, w = projection_inputs(11, 1024, 3072, "ln")
        takes_blocks = gemm.small_blocks(11, 3072, gemm.chunk_length(11, w.size), w.size) is not None
        blocked = gemm.matmul(x, w)
        gemm._small_kernel = False
        print(json.dumps([blas_kernel(), takes_blocks, bool(np.array_equal(blocked, gemm.matmul(x, w)))]))"""
    run = subprocess.run([sys.executable, "-c", code], env=subprocess_env(OPENBLAS_CORETYPE="SkylakeX"),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == ["SkylakeX", True, True]


# -- finding the BLAS --

def test_finds_numpys_openblas_with_its_integer_width():
    from threadpoolctl import threadpool_info
    sgemm, config = gemm.find_sgemm()
    # NumPy's own OpenBLAS (in numpy.libs), not another package's loaded by an earlier test
    numpys = next(i for i in threadpool_info() if i["internal_api"] == "openblas" and "numpy" in i["filepath"])
    assert numpys["version"] in config and numpys["architecture"] in config  # the OpenBLAS NumPy calls
    assert (sgemm.argtypes[3] is ctypes.c_int64) == ("USE64BITINT" in config.split())


class FakeSymbol:
    """Stands for a ctypes function of a library: callable, takes restype and argtypes."""
    def __init__(self, result=None):
        self.result = result

    def __call__(self, *args):
        return self.result


@pytest.mark.parametrize("symbols, found", [
    ({}, None),                                                              # no BLAS symbols at all
    ({"cblas_sgemm": FakeSymbol()}, None),                                   # a CBLAS without OpenBLAS's config (MKL, Accelerate)
    ({"cblas_sgemm": FakeSymbol(), "openblas_get_config": FakeSymbol(b"MKL")}, None),
    ({"cblas_sgemm": FakeSymbol(), "openblas_get_config": FakeSymbol(b"OpenBLAS 0.3.20 DYNAMIC_ARCH Haswell")}, ctypes.c_int32),
    ({"cblas_sgemm64_": FakeSymbol(), "openblas_get_config64_": FakeSymbol(b"OpenBLAS 0.3.23 USE64BITINT Zen")}, ctypes.c_int64),
    ({"scipy_cblas_sgemm": FakeSymbol(), "openblas_get_config64_": FakeSymbol(b"OpenBLAS USE64BITINT")}, None),  # not a pair
])
def test_finds_sgemm_only_with_openblas_config_and_its_width(symbols, found, monkeypatch):
    monkeypatch.setattr(gemm, "_candidate_libraries", lambda: [types.SimpleNamespace(**symbols)])
    result = gemm.find_sgemm()
    if found is None:
        assert result is None
    else:
        sgemm, config = result
        assert sgemm.argtypes[3] is sgemm.argtypes[8] is sgemm.argtypes[10] is sgemm.argtypes[13] is found
        assert config.startswith("OpenBLAS")


def test_without_blas_matmul_uses_the_numpy_path(monkeypatch):
    monkeypatch.setattr(gemm, "_candidate_libraries", lambda: [])
    monkeypatch.setattr(gemm, "_blas", False)             # looked up again
    monkeypatch.setattr(gemm, "_blas_product", None)      # a call to it would fail loudly
    x, w = projection_inputs(8, 1024, 16, "ln")
    close_to_matmul(gemm.matmul(x, w), x, w)
    assert gemm.blas() is None


# -- the accuracy claim --

def test_error_no_larger_than_torch():
    """Both paths at every projection: rms and max error at most torch.matmul's (this machine's kernel)."""
    assert gemm.blas() is not None
    worse = above_torch(accuracy_ratios())
    assert not worse, f"{blas_kernel()} kernel: (rms, max) error / torch's above 1 at {worse}"


def test_few_rows_error_no_larger_than_the_chunked_loop():
    """12 rows: the shorter chunks (SHORT_CHUNK) keep the error at most that of CHUNK's (the
    NumPy-only loop here; torch's own kernel for a few rows sums more accurately still:
    tests/test_fast.py holds the whole one-query forward within 1.2x transformers' error)."""
    assert gemm.blas() is not None and 12 < gemm.SHORT_CHUNK_ROWS
    ratios = accuracy_ratios(rows=12)
    worse = {}
    for name, (rms, most) in ratios["blas"].items():
        loop_rms, loop_most = ratios["numpy"][name]
        if rms > loop_rms or most > loop_most:
            worse[name] = ((rms, most), (loop_rms, loop_most))
    assert not worse, f"{blas_kernel()} kernel: SHORT_CHUNK's (rms, max) ratios to torch above CHUNK's at {worse}"


def test_error_no_larger_than_torch_under_the_haswell_kernel():
    """OpenBLAS's Haswell kernel (AVX2 machines), forced in a child process when this machine's
    kernel is an AVX-512 one; elsewhere this repeats the test above on the machine's own kernel."""
    if blas_kernel() not in AVX512_KERNELS:           # Haswell or lower: forcing Haswell could not run
        ratios = accuracy_ratios(paths=["blas"])
    else:
        code = "import json; from tests.test_gemm import accuracy_ratios, blas_kernel; print(json.dumps([blas_kernel(), accuracy_ratios(paths=['blas'])]))"
        run = subprocess.run([sys.executable, "-c", code], env=subprocess_env(OPENBLAS_CORETYPE="Haswell"),
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        kernel, ratios = json.loads(run.stdout.strip().splitlines()[-1])
        assert kernel == "Haswell"
    worse = above_torch(ratios)
    assert not worse, f"Haswell kernel: (rms, max) error / torch's above 1 at {worse}"
