"""The projections of bge-large and MiniLM as gemm.matmul sees them, for tests/test_gemm.py and
benchmarks/gemm_bench.py: their shapes, realistic inputs, and the error of a float32 product."""
from __future__ import annotations

import numpy as np

# (name, K, M, input kind) of every projection, N = 1024 tokens: bge-large (D 1024, F 4096), MiniLM (D 384, F 1536)
PROJECTIONS = [("bge-large qkv", 1024, 3072, "ln"), ("bge-large attn_out", 1024, 1024, "ln"),
               ("bge-large inter", 1024, 4096, "ln"), ("bge-large out", 4096, 1024, "gelu"),
               ("MiniLM qkv", 384, 1152, "ln"), ("MiniLM attn_out", 384, 384, "ln"),
               ("MiniLM inter", 384, 1536, "ln"), ("MiniLM out", 1536, 384, "gelu")]


def projection_inputs(N, K, M, kind, seed=0):
    """x (N, K), w (K, M) float32 as a projection sees them: x a LayerNorm output (per-feature gain
    and shift) or a GELU output (non-negative mean, long right tail); w at BERT's init scale and,
    as checkpoint.py gives it, the transposed view of a row-major (M, K) matrix."""
    rng = np.random.default_rng(seed)
    if kind == "gelu":
        h = rng.normal(0, 1, (N, K))
        x = h / (1 + np.exp(-1.702 * h))                  # (N, K) GELU's sigmoid form, close enough for rounding
    else:
        x = rng.normal(0, 1, (N, K)) * (1 + 0.2 * rng.normal(size=K)) + 0.2 * rng.normal(size=K)
    w = rng.normal(0, 0.03, (M, K)).astype(np.float32).T
    return x.astype(np.float32), w


def errors(y, exact):
    """rms and max abs error of the float32 product y against the float64 product `exact`."""
    d = np.abs(y - exact)
    return float(np.sqrt(np.mean(d * d))), float(d.max())
