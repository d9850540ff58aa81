"""`x @ w` in float32 with at most the rounding error of torch's matmul: K summed in short chunks.

Why: a float32 matmul's error is the rounding of its sums over K. Each BLAS kernel sums a run of
products in a register, then adds the run to C. OpenBLAS's sgemm sums longer runs (at bge-large's
projection shapes its rms error is 1.4x torch's (MKL) with its SkylakeX kernel, 1.2x with its
Haswell kernel), and that alone made bge_ref's float32 forward 1.36x transformers' error
(scripts/fp32_error_attribution.py). torch's MKL on the AMD EPYC sums runs of 192 (this module
with CHUNK = 192 and one group gives its results bit for bit).

How: one BLAS call per chunk of CHUNK columns of x (rows of w), each adding its product into C
(beta = 1: the kernel adds its sums into C as it stores them, no extra pass over the output). A run
then holds at most CHUNK products whatever the kernel, so the error no longer depends on which
kernel OpenBLAS picked for the CPU. For long K the sequential sum of many chunk results grows an
error of its own (it shows in the max error at K = 4096), so chunks are summed GROUP at a time into
separate partial sums, added at the end (one extra pass over the output per GROUP * CHUNK of K).

Measured (benchmarks/gemm_bench.py; N = 1024, bge-large's and MiniLM's projections, both OpenBLAS
kernels): rms error 0.81-0.85x torch's, max error 0.65-0.84x; 1.02-1.18x the CPU time of `x @ w`.
Below SHORT_CHUNK_ROWS rows (a query or a few) the chunks are SHORT_CHUNK long: there torch's kernel
sums more accurately than at many rows, and with 128 one query's worst stage reached 1.19x
transformers' max error (bge-large size), with 64 0.95x. Weight matrices of LARGE_W elements or more
(bge-large's, 4 MB and up, which stream from memory) take the short chunks up to LARGE_W_ROWS rows,
for speed: there OpenBLAS runs 64-long chunks faster than 128-long ones, and than one whole call
(`benchmarks/gemm_bench.py --by-rows`, Intel Xeon, SkylakeX kernel, ms per layer at 64 / 128, two runs:
0.70 at 64 rows, 0.84-0.85 at 128, 0.90-0.91 at 192, 0.94 at 256 on one thread, as each core's rows run;
on the BLAS's threads 0.77-0.86 at 64 rows, 0.91-1.00 at 128 and 192, 1.00-1.04 at 256, hence the bound).
MiniLM's small matrices (in cache) on the BLAS's threads run 1.11-1.23x slower in 64s from 64 rows (one
run), so they keep 128.

Threads: each chunk's call is threaded by the BLAS, which splits the output between its threads, so
with a few rows each core reads its own part of w (one query: 1.2 GB of them, and 9 GFLOP), not all
of it. OpenBLAS's threads meet at a barrier after every call, which costs next to nothing while they
busy-wait between calls (bge_ref sets OPENBLAS_THREAD_TIMEOUT, bge_ref/__init__.py). Inside
fast.py's row split (threads.split) the BLAS is single-threaded, one call per core.

A few rows on OpenBLAS's SkylakeX kernel (`small_blocks`; the AVX-512 kernel NumPy's wheels carry,
which Intel Xeons from Skylake on and AMD's Zen 4 and 5 run): there sgemm hands a call of at most
SMALL_MNK products to its small-matrix kernel, which reads A and B in place (no packing) and runs
on the calling thread alone, whatever the BLAS's thread count. One query's 64-long chunks fall on
both sides of that line (11 rows x 64 x 1024 columns is under it, x 3072 over), so 5/12 of its
weights were multiplied on one core. Below SMALL_ROWS rows of a large weight matrix, gemm cuts the
columns into blocks the small kernel takes and shares them between bge_ref's threads (threads.run):
each core streams its own columns, every call unpacked. The same sums in the same order: equal bit
for bit to the whole product there. Measured (alternating A/B of encode(), bge-large size,
AMD EPYC Zen 5, OpenBLAS's SkylakeX kernel, medians of 16-20 rounds): one query (11 rows) 0.84-0.86x
the time, with bge's query instruction (20 rows) 0.95x.

The BLAS is NumPy's own OpenBLAS, called through ctypes: found through NumPy's compiled core (whose
symbol table includes the BLAS it links) or the wheel's bundled library directory; the integer width
(LP64 or ILP64) is read from openblas_get_config. When that fails (a NumPy built on MKL, Accelerate,
or a BLAS without the symbols), the same chunked sum runs through np.matmul plus one add per chunk:
the same accuracy, one more pass over the output per chunk.
"""
from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np

from . import threads

CHUNK = 128  # products summed in a register per BLAS call
GROUP = 8    # chunks per partial sum: K up to 1024 in one, longer K in several added at the end
SHORT_CHUNK_ROWS = 80  # fewer rows than this are summed in chunks of SHORT_CHUNK
SHORT_CHUNK = 64
LARGE_W = 1 << 20      # weight matrices this large (elements) take SHORT_CHUNK below LARGE_W_ROWS rows
LARGE_W_ROWS = 256
# OpenBLAS cores (openblas_get_corename) that take a call of at most SMALL_MNK = M x N x K products
# to their small-matrix kernel (kernel/x86_64/sgemm_small_kernel_permit_skylakex.c). NumPy's wheels
# build Prescott, Nehalem, SandyBridge, Haswell and SkylakeX; Haswell's permit refuses every call.
SMALL_KERNEL_CORES = ("skylakex",)
SMALL_MNK = 100 ** 3
# Below this many rows a large weight matrix is multiplied in small-kernel blocks (`small_blocks`).
# Measured on one thread (bge-large's weights streaming, SkylakeX kernel, AMD EPYC), blocks / whole:
# 0.80 at 6 rows, 0.88 at 11 and 16, 0.93 at 24, 1.06 at 32, 1.19 at 44.
SMALL_ROWS = 28

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # CBLAS enums
# (sgemm, get_config) symbol names, newest NumPy wheels first: NumPy >= 2.0 (scipy-openblas, ILP64
# and 32-bit builds), NumPy 1.2x (openblas64_), a NumPy linked to a system OpenBLAS.
SYMBOLS = [("scipy_cblas_sgemm64_", "scipy_openblas_get_config64_"), ("scipy_cblas_sgemm", "scipy_openblas_get_config"),
           ("cblas_sgemm64_", "openblas_get_config64_"), ("cblas_sgemm", "openblas_get_config")]


def matmul(x, w, out=None, accumulate=False, whole=None):
    """x @ w (np.matmul(x, w, out=out)), for 2-D float32 operands summed over K in chunks of CHUNK
    (SHORT_CHUNK for a few rows: `chunk_length`);
    with accumulate=True, out += x @ w (out then holds, say, a bias: BLAS adds the products to it as
    it stores them, as torch's addmm does, so no pass of its own is needed for it). `whole`: the
    elements of the weight matrix w is a part of (fast.layer_by_heads gives each core a part), for
    chunk_length's rule; w.size if None. A few rows of a large w on OpenBLAS's SkylakeX kernel are
    multiplied in column blocks shared by bge_ref's threads (`small_blocks`).

    Anything else (float64, float16 @ float16, stacks of matrices, vectors, subclasses, K <= CHUNK,
    empty shapes, shape errors) is np.matmul itself. Operands with rows or columns of unit stride
    (row-major, or transposed views such as checkpoint.py's weights) are read in place, others are
    copied to float32 first; an `out` that BLAS cannot write directly (other dtype, columns not of
    unit stride, overlapping an input) receives a copy of the result.
    """
    if accumulate and out is None:
        raise ValueError("accumulate=True adds into out, which is missing")
    if not _eligible(x, w, out):
        if accumulate:
            out += np.matmul(x, w)
            return out
        return np.matmul(x, w, out=out)
    (x, lx), (w, lw) = _operand(x), _operand(w)          # (N, K), (K, M) float32, rows or columns of unit stride
    N, M = x.shape[0], w.shape[1]
    y = out if out is not None and _writable_by_blas(out, x, w) else np.empty((N, M), np.float32)  # (N, M) row-major
    if accumulate and y is not out:
        np.copyto(y, out, casting="same_kind")
    sgemm = blas()
    fits = sgemm is not None and _dims_fit(sgemm, (*x.shape, lx[1], *w.shape, lw[1], *y.shape, y.strides[0] // 4))
    whole = w.size if whole is None else whole
    chunk = chunk_length(N, whole)
    blocks = small_blocks(N, M, chunk, whole) if fits else None
    if blocks:                                            # [[column slices] per thread]

        def part(columns):
            for c in columns:
                wc = w[:, c]                              # (K, block) a view, w's layout
                chunked(x, wc, y[:, c], _blas_product(sgemm, x, wc, (lx, lw)), accumulate, chunk)
        threads.run(part, [(b,) for b in blocks])
    else:
        product = _blas_product(sgemm, x, w, (lx, lw)) if fits else _numpy_product(x, w)
        chunked(x, w, y, product, accumulate, chunk)
    if out is None or out is y:
        return y
    np.copyto(out, y, casting="same_kind")
    return out


def small_blocks(rows, cols, chunk, weights):
    """The column blocks of a product of `rows` rows, in chunks of `chunk` products, against a weight
    matrix of `weights` elements, as [[column slices] per thread], each block narrow enough for
    OpenBLAS's small-matrix kernel; or None where the whole product is better: a BLAS without that
    kernel, SMALL_ROWS rows or more, a small weight matrix (below LARGE_W: in cache, and too quick
    for the threads to meet over), or a product the kernel takes whole on this thread already."""
    if rows >= SMALL_ROWS or weights < LARGE_W or not small_kernel():
        return None
    inside = threads.in_part()                            # this thread's BLAS is single-threaded already
    if inside and rows * chunk * cols <= SMALL_MNK:
        return None
    width = max(16, SMALL_MNK // (rows * chunk) // 16 * 16)  # the widest block the kernel takes
    parts = 1 if inside else max(1, min(threads.THREADS, cols // 16))
    share = _lines(-(-cols // parts))                     # columns per thread
    step = _lines(-(-share // -(-share // width)))        # its blocks, near-equal, at most width
    return [[slice(c, min(c + step, s0 + share, cols)) for c in range(s0, min(s0 + share, cols), step)]
            for s0 in range(0, cols, share)]


def _lines(columns):
    """columns rounded up to whole 64-byte cache lines of float32: blocks start on a line, and no
    two threads write one line of the output."""
    return -(-columns // 16) * 16


def small_kernel() -> bool:
    """True if NumPy's OpenBLAS runs on a core with the small-matrix kernel (SMALL_KERNEL_CORES),
    read from openblas_get_corename once."""
    global _small_kernel
    if _small_kernel is None:
        corename = _beside_sgemm("openblas_get_corename", lambda i: [], "cblas_sgemm", ctypes.c_char_p)
        name = (corename() or b"") if corename else b""
        _small_kernel = name.decode("ascii", "replace").lower() in SMALL_KERNEL_CORES
    return _small_kernel


_small_kernel = None  # not looked up yet


def chunk_length(rows, weights):
    """Products per BLAS call for `rows` rows of x against a weight matrix of `weights` elements:
    SHORT_CHUNK below SHORT_CHUNK_ROWS rows, or below LARGE_W_ROWS for LARGE_W elements or more."""
    if rows < SHORT_CHUNK_ROWS or (rows < LARGE_W_ROWS and weights >= LARGE_W):
        return SHORT_CHUNK
    return CHUNK


def chunked(x, w, y, product, accumulate=False, chunk=CHUNK):
    """y = x @ w (y += x @ w if accumulate) summed over K `chunk` columns at a time: product(acc,
    spans, first) sets (first) or adds x[:, k0:k1] @ w[k0:k1] into acc for each (k0, k1) of spans in
    turn, acc being the partial sum of the spans' group; the groups' partial sums are added last."""
    part = None
    for g, (g0, g1) in enumerate(groups(x.shape[1])):
        if g and part is None:
            part = np.empty(y.shape, np.float32)          # (N, M) the later groups' partial sum
        spans = [(k0, min(k0 + chunk, g1)) for k0 in range(g0, g1, chunk)]  # (N, k) @ (k, M) each
        product(y if g == 0 else part, spans, not (accumulate and g == 0))  # the first group adds to out's own values
        if g:
            y += part                                     # (N, M)


def groups(K):
    """[(start, stop)] of the partial sums over K: GROUP * CHUNK columns each, the last shorter."""
    n = GROUP * CHUNK
    return [(k, min(k + n, K)) for k in range(0, K, n)]


def _blas_product(sgemm, x, w, layouts=None):
    """chunked()'s product through cblas_sgemm, one call per chunk: beta = 1 adds inside the kernel.
    Layouts, addresses and the arguments' ctypes objects are made once per matmul, not per chunk:
    NumPy's `.ctypes.data` takes about 1 us and converting 14 Python numbers another 0.6, and a
    query's forward makes 2,688 calls (bge-large size). `layouts`: _blas_layout of x and of w, if known."""
    (N, _), M = x.shape, w.shape[1]
    (ta, lda), (tb, ldb) = layouts or (_blas_layout(x), _blas_layout(w))
    xa, wa = x.ctypes.data, w.ctypes.data
    x_col = 4 if ta == NO_TRANS else 4 * lda              # bytes from one column of x to the next
    w_row = 4 * ldb if tb == NO_TRANS else 4              # bytes from one row of w to the next
    i, p, f = sgemm.argtypes[3], ctypes.c_void_p, ctypes.c_float
    head = (_ROW_MAJOR, _ENUMS[ta], _ENUMS[tb], i(N), i(M))
    lda, ldb, one = i(lda), i(ldb), f(1.0)
    lengths = {}                                          # chunk length -> its ctypes int

    def into(acc, spans, first):
        ca, ldc = p(acc.ctypes.data), i(acc.strides[0] // 4)
        for k0, k1 in spans:
            k = lengths.get(k1 - k0) or lengths.setdefault(k1 - k0, i(k1 - k0))
            sgemm(*head, k, one, p(xa + x_col * k0), lda, p(wa + w_row * k0), ldb, f(0.0) if first else one, ca, ldc)
            first = False
    return into


_ROW_MAJOR = ctypes.c_int(ROW_MAJOR)
_ENUMS = {NO_TRANS: ctypes.c_int(NO_TRANS), TRANS: ctypes.c_int(TRANS)}


def _numpy_product(x, w):
    """The same through np.matmul: each chunk's product into a scratch buffer, then an add."""
    scratch = []

    def into(acc, spans, first):
        for k0, k1 in spans:
            if first:
                np.matmul(x[:, k0:k1], w[k0:k1], out=acc)
                first = False
                continue
            if not scratch:
                scratch.append(np.empty(acc.shape, np.float32))  # (N, M) one chunk's product
            np.add(acc, np.matmul(x[:, k0:k1], w[k0:k1], out=scratch[0]), out=acc)
    return into


# -- checks that keep the ctypes call inside the arrays' memory --

def _eligible(x, w, out):
    """True if x @ w is a 2-D float32 product with K > CHUNK that this module computes itself."""
    if type(x) is not np.ndarray or type(w) is not np.ndarray or x.ndim != 2 or w.ndim != 2:
        return False
    if x.dtype.kind != "f" or w.dtype.kind != "f" or np.result_type(x.dtype, w.dtype) != np.float32:
        return False
    if x.shape[1] != w.shape[0] or x.shape[1] <= CHUNK or x.shape[0] == 0 or w.shape[1] == 0:
        return False                                      # np.matmul raises, or has nothing to sum
    if out is not None and (type(out) is not np.ndarray or out.shape != (x.shape[0], w.shape[1])
                            or not out.flags.writeable or not np.can_cast(np.float32, out.dtype, "same_kind")):
        return False                                      # np.matmul raises its own error
    return True


def _blas_layout(a):
    """(NO_TRANS, ld) if BLAS can address the 2-D float32 a as a row-major matrix with leading
    dimension ld, (TRANS, ld) if as the transpose of one, None if neither: native byte order,
    aligned, one axis of unit stride, the other a whole number of floats >= the extent of the first."""
    if a.dtype != np.float32 or not a.dtype.isnative or not a.flags.aligned:
        return None
    for trans, (rows, cols) in [(NO_TRANS, (0, 1)), (TRANS, (1, 0))]:
        if a.strides[cols] == 4 and a.strides[rows] % 4 == 0 and a.strides[rows] >= 4 * max(1, a.shape[cols]):
            return trans, a.strides[rows] // 4
    return None


def _operand(a):
    """(a itself if BLAS can read it in place, else a contiguous float32 copy; its _blas_layout)."""
    layout = _blas_layout(a)
    if layout:
        return a, layout
    a = np.ascontiguousarray(a, np.float32)
    return a, _blas_layout(a)


def _writable_by_blas(out, x, w):
    """True if sgemm may write out in place: row-major for BLAS, not overlapping an input."""
    return (_blas_layout(out) or (None,))[0] == NO_TRANS and not np.may_share_memory(out, x) and not np.may_share_memory(out, w)


def _fits(sgemm, *arrays):
    """True if every dimension and row stride fits the BLAS's integer type."""
    return _dims_fit(sgemm, [d for a in arrays for d in (*a.shape, _blas_layout(a)[1])])


def _dims_fit(sgemm, dims):
    """True if every one of dims (dimensions, leading dimensions) fits the BLAS's integer type."""
    limit = 2**63 - 1 if sgemm.argtypes[3] is ctypes.c_int64 else 2**31 - 1  # (np.iinfo takes 4 us a call)
    return max(dims) <= limit


# -- finding NumPy's OpenBLAS --

_blas = False  # not looked up yet


def blas():
    """NumPy's OpenBLAS cblas_sgemm as a ctypes function, or None if it cannot be found safely."""
    global _blas
    if _blas is False:
        found = find_sgemm()
        _blas = found and found[0]
    return _blas


def _beside_sgemm(name, argtypes, replacing="sgemm", restype=None):
    """The function of the library NumPy's cblas_sgemm came from, named as it is with `replacing`
    replaced by `name` (the same prefix and integer suffix), typed with argtypes(its integer type)
    and restype; or None."""
    found = _find_openblas()
    fn = found and getattr(found[2], found[3].replace(replacing, name), None)
    if not fn:
        return None
    fn.argtypes, fn.restype = argtypes(found[0].argtypes[3]), restype
    return fn


def transpose_into(a, out) -> bool:
    """out[...] = a.T through OpenBLAS's cblas_somatcopy (float32, a C-contiguous, out with unit column
    stride): 4x NumPy's tiled copy (checkpoint.py's load). False, out untouched, if it does not apply."""
    global _omatcopy
    if _omatcopy is False:
        _omatcopy = _beside_sgemm("somatcopy", lambda i: [ctypes.c_int, ctypes.c_int, i, i, ctypes.c_float,
                                                          ctypes.c_void_p, i, ctypes.c_void_p, i])
    layout, sgemm = _blas_layout(out), blas()
    if (not _omatcopy or sgemm is None or a.dtype != np.float32 or out.dtype != np.float32 or not a.flags.c_contiguous
            or a.ndim != 2 or out.shape != a.shape[::-1] or layout is None or layout[0] != NO_TRANS
            or not _fits(sgemm, a, out)):
        return False
    _omatcopy(ROW_MAJOR, TRANS, a.shape[0], a.shape[1], 1.0, a.ctypes.data, a.shape[1], out.ctypes.data, layout[1])
    return True


_omatcopy = False  # not looked up yet


def find_sgemm():
    """(cblas_sgemm, OpenBLAS's config text) from the first library that has both, or None."""
    found = _find_openblas()
    return found and found[:2]


def _find_openblas():
    """(cblas_sgemm, config text, library, sgemm's symbol name) of the first library with both, or None."""
    for lib in _candidate_libraries():
        for sgemm_name, config_name in SYMBOLS:
            sgemm, config = getattr(lib, sgemm_name, None), getattr(lib, config_name, None)
            if sgemm is None or config is None:
                continue
            config.restype, config.argtypes = ctypes.c_char_p, []
            text = (config() or b"").decode("ascii", "replace")
            if "OpenBLAS" not in text:
                continue
            i = ctypes.c_int64 if "USE64BITINT" in text.split() else ctypes.c_int32  # ILP64 or LP64
            e, f, p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
            sgemm.argtypes = [e, e, e, i, i, i, f, p, i, p, i, f, p, i]
            sgemm.restype = None
            return sgemm, text, lib, sgemm_name
    return None


def _candidate_libraries():
    """ctypes handles, most specific first: NumPy's compiled core (dlsym also searches the libraries
    it links, which is the BLAS NumPy itself calls), then the wheel's bundled library directories."""
    core = sys.modules.get("numpy._core._multiarray_umath") or sys.modules.get("numpy.core._multiarray_umath")
    paths = [core.__file__] if core is not None and getattr(core, "__file__", None) else []
    root = Path(np.__file__).resolve().parent
    for d in (root.parent / "numpy.libs", root / ".dylibs"):  # manylinux/Windows wheels, macOS wheels
        if d.is_dir():
            names = sorted(p.name for p in d.iterdir())
            paths += [str(d / n) for n in names if "openblas" in n.lower() and (n.endswith((".so", ".dylib", ".dll")) or ".so." in n)]
    for path in paths:
        try:
            yield ctypes.CDLL(path)
        except OSError:
            continue
