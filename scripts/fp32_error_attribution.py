"""Which operation makes bge_ref's float32 error differ from PyTorch's? Measured, not guessed.

    python scripts/fp32_error_attribution.py [--layers 6]

1. Each op alone, in float32, bge_ref's NumPy version and torch's, on the same float32 inputs, against
   the same op in float64 on those inputs: LayerNorm, attention (softmax(q k^T / 8) v), GELU (erf), and the four projections'
   matmuls with a bge-large-size layer's weights. rms and max abs error.
2. End to end, a bge-large-size random model cut to --layers layers: rms error of every hidden state
   against the float64 oracle for bge_ref, transformers, bge_ref with only its matmuls done by
   torch.matmul, and bge_ref with exact matmuls (float64, rounded to float32 once). If swapping the
   matmuls alone closes the gap, the matmul accumulation (BLAS) is what differs.
"""
from __future__ import annotations

import argparse
import sys
import tempfile

import numpy as np

import bge_ref
from bge_ref.erf import gelu
from bge_ref.fast import attention, layer_norm  # the ops as the default forward computes them
from bge_ref.testing.checkpoints import BGE_LARGE_CONFIG, BGE_LARGE_SCALES, BGE_LARGE_TEXTS, make_random_bert
from bge_ref.verify import run_ours, run_transformers, states


def err(y, ref):
    d = np.abs(np.asarray(y, np.float64) - ref)
    return np.sqrt(np.mean(d * d)), d.max()


def op_table(params) -> list[str]:
    import torch
    F, T = torch.nn.functional, torch.from_numpy
    rng = np.random.default_rng(0)
    f32, f64 = np.float32, np.float64
    x = (rng.normal(0, 1, (1024, 1024)) * rng.uniform(0.5, 3, 1024) + rng.normal(0, 1, 1024)).astype(f32)  # residual sums
    g, b = (1 + 0.2 * rng.normal(size=1024)).astype(f32), (0.2 * rng.normal(size=1024)).astype(f32)
    q, k, v = (rng.normal(0, 1, (8, 16, 128, 64)).astype(f32) for _ in range(3))
    q *= 3                                                        # sharp attention (logits ~ N(0, 3^2))
    h = rng.normal(0, 1, (1024, 4096)).astype(f32)               # pre-GELU
    xn = layer_norm(x, g, b, 1e-12)
    cases = [("LayerNorm", layer_norm(x, g, b, 1e-12), F.layer_norm(T(x), (1024,), T(g), T(b), 1e-12).numpy(),
              layer_norm(x.astype(f64), g.astype(f64), b.astype(f64), 1e-12)),
             ("attention", attention(q, k, v, None), (torch.softmax(T(q) @ T(k).transpose(-1, -2) * 0.125, -1) @ T(v)).numpy(),
              attention(*(a.astype(f64) for a in (q, k, v)), None)),
             ("GELU (erf)", gelu(h), F.gelu(T(h)).numpy(), gelu(h.astype(f64)))]
    weight = lambda block, name: np.ascontiguousarray(params[block][name]["w"])
    gh = gelu(xn @ weight("inter", "dense"))
    for (block, name), inp in [(("attn", "qkv"), xn), (("attn_out", "dense"), xn), (("inter", "dense"), xn),
                               (("out", "dense"), gh)]:
        w = weight(block, name)
        cases.append((f"matmul {block}.{name} (K={w.shape[0]})", inp @ w, (T(inp) @ T(w)).numpy(), inp.astype(f64) @ w.astype(f64)))
    lines = ["| op | bge_ref rms | torch rms | ratio | bge_ref max | torch max |", "| --- |" + " ---: |" * 5]
    for name, ours, theirs, ref in cases:
        (a, am), (t, tm) = err(ours, ref), err(theirs, ref)
        lines.append(f"| {name} | {a:.3e} | {t:.3e} | {a / t:.3f} | {am:.2e} | {tm:.2e} |")
    return lines


def matmul_swapped(embedder, batch, how):
    """run_ours with every `@` done by torch.matmul ("torch") or exactly ("exact"), via an ndarray subclass."""
    import torch

    class M(np.ndarray):
        def __array_ufunc__(self, ufunc, method, *inputs, **kw):
            inputs = [i.view(np.ndarray) if isinstance(i, M) else i for i in inputs]
            out = kw.pop("out", None)
            out = tuple(o.view(np.ndarray) if isinstance(o, M) else o for o in out) if out else None
            if ufunc is np.matmul and method == "__call__":
                a, b = (np.ascontiguousarray(i) for i in inputs)
                r = (torch.matmul(torch.from_numpy(a), torch.from_numpy(b)).numpy() if how == "torch"
                     else (a.astype(np.float64) @ b.astype(np.float64)).astype(a.dtype))
                if out:
                    out[0][...] = r
                    r = out[0]
            else:
                r = getattr(ufunc, method)(*inputs, **kw, **({"out": out} if out else {}))
            return r.view(M) if isinstance(r, np.ndarray) else r

    wrap = lambda p: ({k: wrap(v) for k, v in p.items()} if isinstance(p, dict) else [wrap(v) for v in p]
                      if isinstance(p, list) else np.ascontiguousarray(p).view(M))
    saved, embedder.params = embedder.params, wrap(embedder.params)
    try:
        return [np.asarray(s).view(np.ndarray) for s in states(run_ours(embedder, batch))]
    finally:
        embedder.params = saved


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=6)
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as d:
        _, hf = make_random_bert(d, dict(BGE_LARGE_CONFIG, num_hidden_layers=args.layers), weight_scale=BGE_LARGE_SCALES)
        e32 = bge_ref.load(d)
        print("\n".join(op_table(e32.params["layers"][0])), "\n")
        batch = e32.tokenize(BGE_LARGE_TEXTS)
        real = batch["attention_mask"].astype(bool)
        oracle = states(run_ours(bge_ref.load(d, dtype="float64"), batch))
        runs = {"bge_ref": states(run_ours(e32, batch)), "transformers": states(run_transformers(hf, batch)),
                "bge_ref, torch matmul": matmul_swapped(e32, batch, "torch"),
                "bge_ref, exact matmul": matmul_swapped(e32, batch, "exact")}
    rms = lambda s, i: np.sqrt(np.mean((s[i][real].astype(np.float64) - oracle[i][real]) ** 2))
    print("| hidden state | " + " | ".join(f"{k} rms" for k in runs) + " |\n| --- |" + " ---: |" * len(runs))
    for i in range(len(oracle)):
        print(f"| {i} | " + " | ".join(f"{rms(s, i):.3e}" for s in runs.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
