"""gemm.matmul against plain `x @ w` and torch.matmul at every projection of bge-large and MiniLM.

    python benchmarks/gemm_bench.py                      # this machine's OpenBLAS kernel
    python benchmarks/gemm_bench.py --haswell            # and again under OPENBLAS_CORETYPE=Haswell
    python benchmarks/gemm_bench.py --chunk 96 --group 8 # another chunking (gemm.CHUNK, gemm.GROUP)
    python benchmarks/gemm_bench.py --by-rows            # chunk length by token rows (gemm.SHORT_CHUNK_ROWS)
    python benchmarks/gemm_bench.py --orientation        # w stored (K, M) against (M, K), by projection and rows

Per shape (N = 1024 tokens): the rms and max error against the float64 product, as ratios to
torch.matmul's (2 threads); and the cost as a ratio to plain `x @ w`, measured two ways, each
interleaved and best of --repeat: wall time (both on the BLAS's threads), and CPU time of one thread
with BLAS single-threaded (the work itself, much less disturbed by other processes on a shared
machine). The spread column is median / best of the plain wall times: how noisy the machine was.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import bge_ref  # noqa: F401,I001  (before NumPy: OpenBLAS's thread timeout as in the forward)
import numpy as np

from bge_ref import gemm
from bge_ref.testing.projections import PROJECTIONS, errors, projection_inputs

ROOT = Path(__file__).resolve().parents[1]


def timings(fns: dict, repeat: int, clock) -> dict:
    """{name: [seconds]}: each fn once per round, the rounds interleaved."""
    out = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = clock()
            fn()
            out[k].append(clock() - t)
    return out


def rows(repeat: int) -> list[str]:
    import torch
    from threadpoolctl import threadpool_limits
    torch.set_num_threads(2)
    lines = []
    for name, K, M, kind in PROJECTIONS:
        x, w = projection_inputs(1024, K, M, kind)
        exact = x.astype(np.float64) @ w.astype(np.float64)  # (N, M)
        (pr, pm), (gr, gm), (tr, tm) = (errors(y, exact) for y in (x @ w, gemm.matmul(x, w), (torch.from_numpy(x) @ torch.from_numpy(w)).numpy()))
        y = np.empty((1024, M), np.float32)
        fns = {"plain": lambda: np.matmul(x, w, out=y), "gemm": lambda: gemm.matmul(x, w, out=y)}
        wall = timings(fns, repeat, time.perf_counter)
        with threadpool_limits(1, user_api="blas"):          # one thread: the work itself
            cpu = timings(fns, max(3, repeat // 2), time.thread_time)
        best = {k: min(v) for k, v in wall.items()}
        lines.append(f"| {name} | {K} x {M} | {pr / tr:.2f} / {pm / tm:.2f} | {gr / tr:.2f} / {gm / tm:.2f} "
                     f"| {best['plain'] * 1e3:.1f} | {best['gemm'] / best['plain']:.2f} "
                     f"| {min(cpu['gemm']) / min(cpu['plain']):.2f} | {np.median(wall['plain']) / best['plain']:.2f} |")
    return lines


def table(repeat: int) -> str:
    from threadpoolctl import threadpool_info
    kernel = next(i.get("architecture") for i in threadpool_info() if i["internal_api"] == "openblas")
    path = "ctypes sgemm" if gemm.blas() is not None else "NumPy-only fallback"
    head = [f"OpenBLAS kernel {kernel}; gemm.matmul: CHUNK {gemm.CHUNK}, GROUP {gemm.GROUP}, {path}; N = 1024; "
            f"errors vs float64 as ratios to torch.matmul's (rms / max); times best of {repeat}.", "",
            "| projection | K x M | plain error / torch | gemm error / torch | plain ms (wall) | gemm / plain wall "
            "| gemm / plain CPU (1 thread) | plain wall median / best |", "| --- | --- |" + " ---: |" * 6]
    return "\n".join(head + rows(repeat))


def by_rows(repeat: int, counts=(16, 64, 128, 192, 256, 384, 512)) -> str:
    """One layer's four projections at each row count, summed in chunks of gemm.SHORT_CHUNK and of
    gemm.CHUNK: ms per layer, and the ratio (below 1: the short chunks are faster). Each layer's
    weights are distinct matrices, as in a forward, enough of them to outgrow the L3 cache for
    bge-large (4 layers, 192 MB), the whole model for MiniLM (6 layers); BLAS on its own threads
    (the few-rows layout, fast.FEW_ROWS) and on one (each core's rows in the rows split)."""
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(0)
    lines = [f"Chunk length by token rows: ms per layer (4 projections), summed in chunks of {gemm.SHORT_CHUNK} "
             f"and of {gemm.CHUNK}, best of {repeat}, interleaved; gemm.SHORT_CHUNK_ROWS = {gemm.SHORT_CHUNK_ROWS}.", "",
             "| model | BLAS threads | rows | " + " | ".join(f"chunk {c} ms" for c in (gemm.SHORT_CHUNK, gemm.CHUNK))
             + f" | {gemm.SHORT_CHUNK} / {gemm.CHUNK} |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for model, layers in (("bge-large", 4), ("MiniLM", 6)):
        shapes = [(K, M) for name, K, M, _ in PROJECTIONS if name.startswith(model)]
        ws = [rng.standard_normal((K, M), np.float32) * 0.03 for _ in range(layers) for K, M in shapes]
        for threads in (None, 1):
            for n in counts:
                xs = {K: rng.standard_normal((n, K), np.float32) for K, _ in shapes}
                ys = [np.empty((n, w.shape[1]), np.float32) for w in ws]

                def run(chunk):
                    def go():
                        for w, y in zip(ws, ys):
                            gemm.chunked(xs[w.shape[0]], w, y, gemm._blas_product(gemm.blas(), xs[w.shape[0]], w),
                                         chunk=chunk)
                    return go
                with threadpool_limits(threads, user_api="blas"):
                    t = {c: min(v) / layers for c, v in timings({c: run(c) for c in (gemm.SHORT_CHUNK, gemm.CHUNK)},
                                                                  repeat, time.perf_counter).items()}
                short, long = t[gemm.SHORT_CHUNK], t[gemm.CHUNK]
                lines.append(f"| {model} | {threads or 'all'} | {n} | {short * 1e3:.2f} | {long * 1e3:.2f} | {short / long:.2f} |")
                print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


def transposed_product(sgemm, x, w_t):
    """gemm.chunked()'s product for w stored as torch does, w_t (M, K) row-major: each chunk's
    w_t @ x.T into acc, the transposed (M, N) output (the weights as BLAS's second operand)."""
    (N, K), M = x.shape, w_t.shape[0]
    xa, wa = x.ctypes.data, w_t.ctypes.data

    def into(acc, spans, first):
        ca = acc.ctypes.data
        for k0, k1 in spans:
            sgemm(gemm.ROW_MAJOR, gemm.NO_TRANS, gemm.TRANS, M, N, k1 - k0, 1.0, wa + 4 * k0, K, xa + 4 * k0, K,
                  0.0 if first else 1.0, ca, N)
            first = False
    return into


def orientation(repeat: int, counts=((11, None), (44, None), (128, None), (512, 1))) -> str:
    """Each bge-large projection, w stored as the forward stores it ((K, M) row-major, y = x @ w in
    chunks of gemm.chunk_length) against stored as torch does ((M, K) row-major: y.T = w_t @ x.T in
    chunks of gemm.CHUNK, the only length that is not slower from that layout, then y transposed back
    by OpenBLAS's somatcopy). Median ms per projection and the median of the per-round ratios, rounds
    interleaved; distinct weights per layer (8 layers, past the L3 cache); BLAS on its own threads
    (the few-rows layout) or on one (each core's rows in the rows split)."""
    from threadpoolctl import threadpool_limits
    sgemm, rng, layers = gemm.blas(), np.random.default_rng(0), 8
    lines = ["w stored (K, M), as the forward does, against (M, K): ms per projection (median), and the median "
             f"ratio (M, K) / (K, M) over {repeat} interleaved rounds.", "",
             "| projection | K x M | rows | BLAS threads | (K, M) ms | (M, K) ms | (M, K) / (K, M) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, K, M, _ in PROJECTIONS[:4]:
        ws = [rng.standard_normal((K, M), np.float32) * 0.03 for _ in range(layers)]
        wts = [np.ascontiguousarray(w.T) for w in ws]                           # (M, K)
        for n, threads in counts:
            x = rng.standard_normal((n, K), np.float32)
            y, yt = np.empty((n, M), np.float32), np.empty((M, n), np.float32)

            def stored_k_m():
                for w in ws:
                    gemm.chunked(x, w, y, gemm._blas_product(sgemm, x, w), chunk=gemm.chunk_length(n, w.size))

            def stored_m_k():
                for wt in wts:                                                  # yt = wt @ x.T, as gemm sums
                    gemm.chunked(x, wt.T, yt, transposed_product(sgemm, x, wt), chunk=gemm.CHUNK)
                    gemm.transpose_into(yt, y)
            with threadpool_limits(threads, user_api="blas"):
                t = timings({"km": stored_k_m, "mk": stored_m_k}, repeat, time.perf_counter)
            a, b = np.array(t["km"]) / layers, np.array(t["mk"]) / layers
            lines.append(f"| {name} | {K} x {M} | {n} | {threads or 'all'} | {np.median(a) * 1e3:.2f} "
                         f"| {np.median(b) * 1e3:.2f} | {np.median(b / a):.2f} |")
            print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=9)
    p.add_argument("--chunk", type=int, default=gemm.CHUNK)
    p.add_argument("--group", type=int, default=gemm.GROUP)
    p.add_argument("--numpy-only", action="store_true", help="time the NumPy-only fallback instead of the ctypes path")
    p.add_argument("--haswell", action="store_true", help="then rerun under OPENBLAS_CORETYPE=Haswell")
    p.add_argument("--by-rows", action="store_true", help="time the chunk lengths by token rows instead")
    p.add_argument("--orientation", action="store_true", help="time w stored (K, M) against (M, K) instead")
    args = p.parse_args(argv)
    gemm.CHUNK, gemm.GROUP = args.chunk, args.group
    if args.numpy_only:
        gemm._blas = None
    print(orientation(args.repeat) if args.orientation else by_rows(args.repeat) if args.by_rows else table(args.repeat),
          flush=True)
    if args.haswell:
        rest = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--haswell"]
        print()
        subprocess.run([sys.executable, __file__, *rest], env=dict(os.environ, OPENBLAS_CORETYPE="Haswell"), check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
