"""Where the MiniLM corpus's time goes, kind of work by kind, in bge_ref and in sentence-transformers.

    python benchmarks/peer_profile.py                 # print the table
    python benchmarks/peer_profile.py --write-readme  # and replace the peer-profile region of docs/reports/performance.md

Both embed benchmarks/bench.py's corpus (1000 texts of 3 to 250 words, batch_size 32) on ONE thread
(bge_ref's pool and BLAS, torch's intra-op threads), so every second below is CPU time, with no
thread waiting for another. bge_ref's leaf functions are timed (fast.linear: the projections with
their bias; erf.gelu_fast; fast.layer_norm; fast.attention: scores, softmax and @ V), torch's
operators by its profiler (self CPU time: addmm, gelu, native_layer_norm, the fused attention).
'Everything else' is the rest of each run: tokenization, embeddings lookup, residual adds, copies,
pooling, Python. The projections' rate counts each side's own multiply-adds: bge_ref computes the real
tokens only, sentence-transformers pads each batch to its longest text. Runs alternate, best kept.

Then both run on two threads, and /proc/stat says how the machine's cores spent each run: busy,
idle (no thread could use the core: a wait for the GIL, for the other thread, or serial work) or
stolen by the hypervisor (a shared host's other tenants).
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import bge_ref  # noqa: I001  (first: it sets OpenBLAS's idle-thread timeout before NumPy loads)
import bge_ref.fast as F
from bge_ref import threads
from bge_ref.testing.readme import machine, write_region
from bge_ref.testing.checkpoints import minilm_dir
from bench import corpus  # benchmarks/bench.py, beside this file

KINDS = ("projections", "GELU", "LayerNorm", "attention")
# torch operators (self CPU time) of each kind; 'attention' is SDPA's fused kernel on torch 2.x, or
# the eager path's matmuls and softmax where that is used.
TORCH_OPS = {"projections": ("aten::addmm", "aten::mm"), "GELU": ("aten::gelu",),
             "LayerNorm": ("aten::native_layer_norm",),
             "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_softmax", "aten::bmm",
                           "aten::_scaled_dot_product_attention_math")}


def ours(model, texts) -> tuple[float, dict, float]:
    """(seconds, {kind: seconds}, projection multiply-adds) of one encode(texts) on one thread."""
    spent, macs, running = defaultdict(float), [0], set()
    leaves = {"linear": "projections", "gelu_fast": "GELU", "layer_norm": "LayerNorm", "attention": "attention"}
    originals = {name: getattr(F, name) for name in leaves}

    def timed(name):
        def wrapper(*args, **kw):
            if name in running:                           # attention redoing itself with the max shift:
                return originals[name](*args, **kw)       # its time is already the outer call's
            running.add(name)
            t = time.perf_counter()
            try:
                out = originals[name](*args, **kw)
            finally:
                running.discard(name)
            spent[leaves[name]] += time.perf_counter() - t
            if name == "linear":
                x, w = args[0], args[1] if len(args) > 1 else kw["w"]
                macs[0] += x.size // x.shape[-1] * w.shape[0] * w.shape[1]
            return out
        return wrapper

    for name in leaves:
        setattr(F, name, timed(name))
    try:
        t = time.perf_counter()
        model.encode(texts, batch_size=32)
        return time.perf_counter() - t, dict(spent), macs[0]
    finally:
        for name, fn in originals.items():
            setattr(F, name, fn)


def theirs(st, texts) -> tuple[float, dict, float]:
    """(seconds, {kind: seconds}, projection multiply-adds) of one sentence-transformers encode(texts)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        t = time.perf_counter()
        st.encode(texts, batch_size=32)
        total = time.perf_counter() - t
    events = prof.key_averages()
    spent = {kind: sum(e.self_cpu_time_total for e in events if e.key in ops) / 1e6 for kind, ops in TORCH_OPS.items()}
    macs = sum(e.flops for e in events if e.key in TORCH_OPS["projections"]) / 2
    return total, spent, macs


def cpu_times() -> list[int] | None:
    """The machine's cumulative CPU time (/proc/stat's first line: user, nice, system, idle, iowait,
    irq, softirq, steal, in clock ticks), or None where there is none (not Linux)."""
    try:
        with open("/proc/stat") as f:
            return [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None


def shares(before, after) -> tuple[float, float, float] | None:
    """(busy, idle, stolen) shares of every core's time between two cpu_times(); stolen is the time
    the hypervisor ran something else on this machine's virtual cores."""
    if before is None or after is None:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (b - a for a, b in zip(before, after))
    total = max(1, user + nice + system + idle + iowait + irq + softirq + steal)
    return (user + nice + system + irq + softirq) / total, (idle + iowait) / total, steal / total


def timed(fn) -> tuple[float, tuple[float, float, float] | None]:
    """(seconds, (busy, idle, stolen) shares of the cores meanwhile, or None without /proc/stat) of fn()."""
    before, t = cpu_times(), time.perf_counter()
    fn()
    return time.perf_counter() - t, shares(before, cpu_times())


def two_threads(model, st, texts, repeat) -> dict:
    """On two threads each, alternating: {side: (seconds, (busy, idle, stolen) shares of the machine's
    cores during that run)} of each side's fastest run. Idle is time no thread of the process could
    run: waiting for the GIL, or for the other thread, or in serial work."""
    import torch
    torch.set_num_threads(2)
    threads.THREADS = 2
    best = {"bge_ref": (float("inf"), None), "peer": (float("inf"), None)}
    for _ in range(repeat):
        for side, fn in (("bge_ref", model.encode), ("peer", st.encode)):
            run = timed(lambda: fn(texts, batch_size=32))
            best[side] = min(best[side], run, key=lambda r: r[0])
    return best


def profile_corpus(repeat=2):
    import torch
    from sentence_transformers import SentenceTransformer
    torch.set_num_threads(1)
    threads.THREADS = 1                                   # bge_ref's pool, and (forward_threads) its BLAS
    path = minilm_dir()                                   # (bench.models() would build bge-large too)
    model, st = bge_ref.load(path), SentenceTransformer(str(path), device="cpu")
    texts = corpus()
    model.encode(texts[:64], batch_size=32), st.encode(texts[:64], batch_size=32)  # warm
    runs = {"bge_ref": [], "peer": []}
    for _ in range(repeat):                               # alternating, the fastest of each kept
        runs["bge_ref"].append(ours(model, texts))
        runs["peer"].append(theirs(st, texts))
    return (min(runs["bge_ref"], key=lambda r: r[0]), min(runs["peer"], key=lambda r: r[0]),
            two_threads(model, st, texts, repeat))


def render(a, b, two, repeat) -> str:
    (ta, sa, ma), (tb, sb, mb) = a, b
    (wa, use_a), (wb, use_b) = two["bge_ref"], two["peer"]

    def use(u):
        return "-" if u is None else f"{u[0]:.0%} / {u[1]:.0%} / {u[2]:.0%}"
    rows = []
    for kind in KINDS:
        x, y = sa.get(kind, 0.0), sb.get(kind, 0.0)
        rate = f" ({2 * ma / x / 1e9:.0f} vs {2 * mb / y / 1e9:.0f} GFLOP/s)" if kind == "projections" and x and y else ""
        rows.append(f"| {kind}{rate} | {x:.2f} | {y:.2f} | {x / y:.2f}x | {(x - y) / ta:+.0%} |" if y else
                    f"| {kind} | {x:.2f} | - | - | - |")
    ra, rb = ta - sum(sa.values()), tb - sum(sb.values())
    rows.append(f"| everything else | {ra:.2f} | {rb:.2f} | {ra / rb:.2f}x | {(ra - rb) / ta:+.0%} |")
    rows.append(f"| **whole corpus** | **{ta:.2f}** | **{tb:.2f}** | **{ta / tb:.2f}x** | {(ta - tb) / ta:+.0%} |")
    return "\n".join([
        f"`python benchmarks/peer_profile.py` on {machine('torch')}; one thread each, best of {repeat} alternating runs.",
        "",
        "The MiniLM corpus (1000 texts, batch_size 32), CPU seconds by kind of work: bge_ref against "
        "sentence-transformers. 'Share of the gap' is each kind's difference as a share of bge_ref's whole time.",
        "",
        "| kind of work | bge_ref s | sentence-transformers s | bge_ref's time over the peer's | share of the gap |",
        "| --- | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"bge_ref computes {2 * ma / 1e12:.2f} TFLOP of projections (real tokens only), sentence-transformers "
        f"{2 * mb / 1e12:.2f} (its batches padded to their longest text). The elementwise kinds are NumPy passes: "
        "each NumPy call reads and writes the whole array, where torch fuses a GELU or a LayerNorm into one pass. "
        "bge_ref's GELU is about twenty such passes (erf.gelu_fast), its LayerNorm eight, in float64 "
        "(fast.layer_norm: the float32 error contract).",
        "",
        f"On two threads each (best of {repeat}, alternating):",
        "",
        "| | bge_ref | sentence-transformers |",
        "| --- | ---: | ---: |",
        f"| one thread, s (above) | {ta:.2f} | {tb:.2f} |",
        f"| two threads, s | {wa:.2f} | {wb:.2f} |",
        f"| speed-up over one thread | {ta / wa:.2f}x | {tb / wb:.2f}x |",
        f"| speed vs the peer | **{wb / wa:.2f}x** (one thread: {tb / ta:.2f}x) | 1.00x |",
        f"| the machine's cores in that run: busy / idle / stolen | {use(use_a)} | {use(use_b)} |",
        "",
        "Idle is core time no thread used: a thread waiting for the GIL (each NumPy call drops it for its loop "
        "and must take it back, waiting while the other thread holds it; the elementwise kinds above are many "
        "short calls) or for the other thread, or one core left alone with serial work. Stolen is time a "
        "virtual core was ready to run and the hypervisor had not run it (/proc/stat's steal): other tenants' "
        "work, and on this kind of host also the wait for a core that went idle to be woken again. A thread "
        "that waits for the GIL sleeps, and is woken when it is free, so bge_ref's threads likely pay that "
        "wake-up far more often than torch's, which wait for no GIL; a single thread, which never waits, loses "
        "little to steal.",
    ])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    text = render(*profile_corpus(args.repeat), args.repeat)
    print(text)
    if args.write_readme:
        write_region("peer-profile", text)


if __name__ == "__main__":
    main()
