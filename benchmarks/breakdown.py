"""Where the fast forward's time goes in one 8 x 128 forward of each benchmark model, against the bare
BLAS time of its own projections (the target: the forward at most 1.2x that).

    python benchmarks/breakdown.py                 # print the tables
    python benchmarks/breakdown.py --write-readme  # and replace the profile region of docs/reports/performance.md with them

Each block function of bge_ref.fast (the default forward) is timed, inclusive, over all layers. Every
block after the embeddings runs on every core at once, each core on its own sequences, so their
thread-seconds are divided by the number of threads: a block's seconds are its share of the wall clock. Each
projection is also timed alone, as a bare NumPy matmul at the same shape on all threads; what a
block takes beyond that is its non-matmul work (bias, residual, GELU, LayerNorm, and the attention
core, which has no projection). transformers' forward and its Linear layers alone are timed the same
way, for comparison. Every timing is the best of --repeat, the candidates interleaved.

Last, how the forward's two kinds of work scale over two cores (`scaling`): a GELU and a matmul of one
core's share, on one thread, on two threads, and in two processes, which share no GIL; and the whole
forward on one thread (BGE_REF_THREADS=1) against two.
"""
from __future__ import annotations

import argparse
import multiprocessing
import threading
import time
from collections import defaultdict
from contextlib import nullcontext

import bge_ref  # noqa: I001  (first: it sets OpenBLAS's idle-thread timeout before NumPy loads)
import bge_ref.fast as F
from bge_ref import gemm, threads
from bge_ref.erf import gelu_fast
from bge_ref.testing.readme import machine, write_region
import numpy as np
from bench import THREADS, child, models  # benchmarks/bench.py, beside this file

# (function of bge_ref.fast, what it is, the projection it contains, whether it runs on the pool)
BLOCKS = [("embeddings", "embeddings (gather + LayerNorm)", None, False),
          ("self_attention", "self_attention (QKV projection + attention core)", "qkv", True),
          ("attention", "  of which attention core (scores, mask, softmax, @ V)", None, True),
          ("attention_output", "attention_output (projection + residual + LayerNorm)", "attn_out", True),
          ("intermediate", "intermediate (projection + GELU)", "inter", True),
          ("gelu_fast", "  of which GELU", None, True),
          ("output", "output (projection + residual + LayerNorm)", "out", True),
          ("layer_norm", "LayerNorm, all calls", None, True)]


def bare_projections(layers, N, rng, repeat) -> dict:
    """Seconds of each projection as a bare matmul over N rows on all threads, summed over layers."""
    D, Fw = layers[0]["inter"]["dense"]["w"].shape
    x, h = rng.standard_normal((N, D), np.float32), rng.standard_normal((N, Fw), np.float32)
    inputs = {"qkv": (x, ("attn", "qkv")), "attn_out": (x, ("attn_out", "dense")), "inter": (x, ("inter", "dense")),
              "out": (h, ("out", "dense"))}
    times = defaultdict(list)
    for _ in range(repeat + 1):                           # the first round warms up
        for name, (a, (block, lin)) in inputs.items():
            w = layers[0][block][lin]["w"]
            t = time.perf_counter()
            a @ w
            times[name].append(time.perf_counter() - t)
    return {name: len(layers) * min(t[1:]) for name, t in times.items()}


def instrumented(run, repeat) -> tuple[float, dict]:
    """(forward seconds, {block: seconds}) of the fastest of `repeat` instrumented passes."""
    spent, lock = defaultdict(float), threading.Lock()
    originals = {name: getattr(F, name) for name, *_ in BLOCKS}

    def timed(name, parallel):
        def wrapper(*args, **kw):
            t = time.perf_counter()
            out = originals[name](*args, **kw)
            with lock:
                spent[name] += (time.perf_counter() - t) / (THREADS if parallel else 1)
            return out
        return wrapper

    passes = []
    for name, _, _, parallel in BLOCKS:
        setattr(F, name, timed(name, parallel))
    try:
        for _ in range(repeat):
            spent.clear()
            t = time.perf_counter()
            run()
            passes.append((time.perf_counter() - t, dict(spent)))
    finally:
        for name, fn in originals.items():
            setattr(F, name, fn)
    return min(passes, key=lambda p: p[0])


def profile(path, B=8, S=128, repeat=5):
    import torch
    from transformers import BertModel
    torch.set_num_threads(THREADS)
    model = bge_ref.load(path)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, (B, S))
    ids[:, 0] = 101
    mask = np.ones_like(ids)
    hf = BertModel.from_pretrained(path, add_pooling_layer=False).eval()
    t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)

    def ours():
        model.forward(ids, mask)

    def theirs():
        with torch.inference_mode():
            hf(input_ids=t_ids, attention_mask=t_mask)

    L = model.params["layers"]
    xs = {D: rng.standard_normal((B * S, D), np.float32) for D in (model.config.hidden_size, model.config.intermediate_size)}

    weights = [w for p in L for w in (p["attn"]["qkv"]["w"], p["attn_out"]["dense"]["w"], p["inter"]["dense"]["w"],
                                      p["out"]["dense"]["w"])]  # every projection of the forward

    def blas():                                           # bare
        for w in weights:
            xs[w.shape[0]] @ w

    def accurate():                                       # as the forward sums them (gemm.py)
        for w in weights:
            gemm.matmul(xs[w.shape[0]], w)

    ours(), theirs(), blas(), accurate()
    plain = {"ours": [], "theirs": [], "blas": [], "accurate": []}
    for _ in range(repeat):                               # interleaved, best kept
        for name, fn in (("ours", ours), ("theirs", theirs), ("blas", blas), ("accurate", accurate)):
            t = time.perf_counter()
            fn()
            plain[name].append(time.perf_counter() - t)
    total, spent = instrumented(ours, repeat)
    bare = bare_projections(model.params["layers"], B * S, rng, repeat)
    N, D = B * S, model.config.hidden_size
    x = torch.from_numpy(rng.standard_normal((N, D), np.float32))
    h = torch.from_numpy(rng.standard_normal((N, model.config.intermediate_size), np.float32))
    lay = hf.encoder.layer[0]
    with torch.inference_mode():
        torch_mm = len(model.params["layers"]) * sum(min(_timed(lambda: f(a)) for _ in range(repeat)) for f, a in (
            (lay.attention.self.query, x), (lay.attention.self.key, x), (lay.attention.self.value, x),
            (lay.attention.output.dense, x), (lay.intermediate.dense, x), (lay.output.dense, h)))
    return dict(layers=len(model.params["layers"]), plain=min(plain["ours"]), torch_total=min(plain["theirs"]),
                blas=min(plain["blas"]), accurate=min(plain["accurate"]), total=total, spent=spent, bare=bare, torch_mm=torch_mm)


# -- two cores, one GIL: how the forward's two kinds of work scale over threads ---------------------

def _halves(seed=0, rows=512, D=1024, F=4096):
    """Two cores' shares of one 8 x 128 bge-large FFN: each (rows x F) GELU input, (rows x D) input, (D x F) weight."""
    rng = np.random.default_rng(seed)
    return ([rng.standard_normal((rows, F), np.float32) for _ in range(2)],
            [rng.standard_normal((rows, D), np.float32) for _ in range(2)], rng.standard_normal((D, F), np.float32))


def _kinds(hs, xs, w, reps):
    """{kind: fn(i) doing core i's share `reps` times}: the GELU, and the FFN's first matmul on one BLAS thread."""
    outs = [np.empty_like(h) for h in hs]
    ys = [np.empty((len(x), w.shape[1]), np.float32) for x in xs]

    def gelu(i):
        for _ in range(reps):
            gelu_fast(hs[i], out=outs[i])

    def matmul(i):
        for _ in range(reps):
            np.matmul(xs[i], w, out=ys[i])
    return {"GELU": gelu, "matmul": matmul}


def _in_process(kind, i, reps, start, results):
    """One process's share, started with the other's (a barrier), its seconds put in results."""
    with threads.blas_single_threaded() or nullcontext():
        fn = _kinds(*_halves(), reps)[kind]
        fn(i)                                             # warm
        start.wait()
        t = time.perf_counter()
        fn(i)
        results.put(time.perf_counter() - t)


def scaling(reps=20, repeat=3) -> dict:
    """{kind: (one thread doing both shares, two threads one each, two processes one each)} in seconds, best of repeat."""
    fns = _kinds(*_halves(), reps)
    ctx = multiprocessing.get_context("spawn")            # fresh interpreters: no GIL shared, no state forked
    out = {}
    with threads.blas_single_threaded() or nullcontext():
        for kind, fn in fns.items():
            fn(0), fn(1)
            one = min(_timed(lambda: (fn(0), fn(1))) for _ in range(repeat))
            two = min(_timed(lambda: threads.run(fn, [(0,), (1,)])) for _ in range(repeat))
            procs = []
            for _ in range(repeat):
                start, results = ctx.Barrier(3), ctx.Queue()
                ps = [ctx.Process(target=_in_process, args=(kind, i, reps, start, results)) for i in range(2)]
                for p in ps:
                    p.start()
                start.wait()
                procs.append(max(results.get(timeout=600) for _ in ps))
                for p in ps:
                    p.join()
            out[kind] = (one, two, min(procs))
    return out


def one_thread_forward(path, B=8, S=128, repeat=3) -> float:
    """Seconds of the same forward with BGE_REF_THREADS=1 (the BLAS on one thread too), in a fresh process."""
    code = (f"import time, numpy as np, bge_ref; m = bge_ref.load({str(path)!r}); r = np.random.default_rng(0); "
            f"ids = r.integers(1000, 30000, ({B}, {S})); ids[:, 0] = 101; f = lambda: m.forward(ids, np.ones_like(ids)); f(); "
            f"ts = [];\nfor _ in range({repeat}):\n    t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)\n"
            "print(min(ts))")
    return float(child(code, BGE_REF_THREADS="1")[1])


def scaling_text(big_path, big_plain, reps=20, repeat=3) -> str:
    """The markdown of the thread-scaling section."""
    s = scaling(reps, repeat)
    one = one_thread_forward(big_path)
    rows = [f"| {kind} | {a:.3f} | {b:.3f} ({a / b:.2f}x) | {c:.3f} ({a / c:.2f}x) |" for kind, (a, b, c) in s.items()]
    g, mm = s["GELU"], s["matmul"]
    return "\n".join([
        f"**Two cores, one GIL.** Each core's share of one bge-large 8 x 128 FFN, {reps} times: a 512 x 4096 float32 "
        f"GELU (`erf.gelu_fast`) and the 512 x 1024 @ 1024 x 4096 matmul on one BLAS thread. Seconds, best of {repeat}, "
        "and the speed-up over one thread doing both shares:",
        "",
        "| work | one thread, both shares | two threads, one share each | two processes, one share each |",
        "| --- | ---: | ---: | ---: |",
        *rows,
        "",
        f"The matmul scales {mm[0] / mm[1]:.2f}x over two threads: BLAS drops the GIL for a whole call. The GELU, "
        f"{g[0] / g[1]:.2f}x: it is a run of short NumPy calls, and at the end of each, a thread must take the GIL "
        f"back, waiting whenever the other thread holds it. In two processes, which share no GIL, it scales "
        f"{g[0] / g[2]:.2f}x. The whole bge-large forward takes {one:.3f} s on one thread (`BGE_REF_THREADS=1`) and "
        f"{big_plain:.3f} s on two: {one / big_plain:.2f}x.",
    ])


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def report(name, path, B=8, S=128, repeat=5) -> tuple[str, float, float]:
    """The markdown for one model, its forward / bare BLAS ratio, and the forward's seconds."""
    p = profile(path, B, S, repeat)
    spent, bare, total = p["spent"], p["bare"], p["total"]
    rows = []
    for fn, what, proj, _ in BLOCKS:
        sec = spent.get(fn, 0.0)
        mm = bare.get(proj, 0.0) if proj else 0.0
        share = f"{max(sec - mm, 0.0) / sec:.0%}" if sec else "-"
        rows.append(f"| {what} | {sec:.3f} | {sec / total:.0%} | {mm:.3f} | {share} |" if proj else
                    f"| {what} | {sec:.3f} | {sec / total:.0%} | - | {share} |")
    blas, plain, torch_total, torch_mm = p["blas"], p["plain"], p["torch_total"], p["torch_mm"]
    ratio = plain / blas
    text = "\n".join([
        f"**{name}**, one {B} x {S} forward, best of {repeat}:",
        "",
        f"| block ({p['layers']} layers) | seconds | share of the forward | bare matmul at its shape | non-matmul share |",
        "| --- | ---: | ---: | ---: | ---: |",
        *rows,
        f"| **whole forward, instrumented** | **{total:.3f}** | 100% | {sum(bare.values()):.3f} | "
        f"{max(total - sum(bare.values()), 0) / total:.0%} |",
        "",
        f"Uninstrumented, the forward takes {plain:.3f} s: **{ratio:.2f}x the bare BLAS time of its own projections** "
        f"({blas:.3f} s, timed interleaved with it; the target is at most 1.20x). transformers' forward takes {torch_total:.3f} s, its Linear "
        f"layers alone {torch_mm:.3f} s ({torch_total / torch_mm:.2f}x). bge_ref runs at "
        f"**{torch_total / plain:.2f}x** transformers' speed; with every non-matmul operation free it would run at "
        f"{torch_total / blas:.2f}x.",
        "",
        f"The same projections summed as the forward sums them (`gemm.matmul`: K in chunks of {gemm.CHUNK}, which keeps "
        f"the float32 error within transformers') take {p['accurate']:.3f} s, {p['accurate'] / blas:.2f}x the bare BLAS "
        f"time: that much of the ratio is the price of accuracy. The forward takes {plain / p['accurate']:.2f}x them: "
        "the rest is everything around the matmuls.",
    ])
    return text, ratio, plain


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    reports = {name: report(name, path, repeat=args.repeat) for name, path in models().items()}
    big = next(name for name in reports if "bge-large" in name)
    text = "\n\n".join([f"`python benchmarks/breakdown.py` on {machine('torch')}; {THREADS} threads used.",
                         *(text for text, _, _ in reports.values()), scaling_text(models()[big], reports[big][2])])
    print(text)
    if args.write_readme:
        write_region("profile", text)


if __name__ == "__main__":
    main()
