"""Latency of a call, as an application sees it: 1, 4 and 32 texts, short queries and
~128-token passages, bge_ref's encode() against its peers, interleaved in one process.

    python benchmarks/latency.py                                        # print the table
    python benchmarks/latency.py --write-docs docs/reports/latency.md  # the docs site's reports
    python benchmarks/latency.py --layouts                              # and the thread layout by rows
    OPENBLAS_CORETYPE=Haswell python benchmarks/latency.py \
        --write-docs docs/reports/latency-haswell.md                    # OpenBLAS's AVX2 kernel
    python benchmarks/latency.py --write-docs docs/reports/latency-epyc.md  # the same on an AMD EPYC
        (and latency-epyc-haswell.md): each report names its CPU, kernel and OPENBLAS_* settings

Peers, on the same number of threads (--threads, default 2):
- bge-large size (a seeded random 24 x 1024 checkpoint with bge-large-en-v1.5's exact config and
  trained-like weight scales, bge_ref.testing.checkpoints.make_bge_large_random, built once in the cache
  directory): `encode(texts)` (CLS pooling + L2) against transformers' tokenizer + BertModel +
  CLS + L2 normalize on the same texts in one batch; and one 8 x 128 forward against BertModel's.
  For every row with a goal, also the projections alone at the batch's token rows, NumPy's BLAS on
  all threads: bare (`x @ w`: the floor of a NumPy forward) and summed as the forward sums them
  (gemm.matmul, K in chunks: the float32 accuracy bound's price), so the report says how much time
  the goal leaves for everything else, against what it takes now. For one query, also where that
  everything else goes: LayerNorm, GELU and the attention core timed call by call inside encode()
  and warm in a loop (`query_profile`).
- all-MiniLM-L6-v2 (real weights): `encode(texts)` against sentence-transformers' `encode`, and the
  mixed-length 1000-text corpus of benchmarks/bench.py (batch size 32 both).
Every cell is the best of --repeat calls (more for quick calls: ROUND_SECONDS), the peers alternating; a ratio > 1 means bge_ref is faster.
A call quicker than SETTLE_BELOW is timed after an untimed call of its own: each library as an
application that calls only it sees it, not in the wake of the other's threads (`best`).
The load average before and after is printed: on a shared machine, read the ratios.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import time
from pathlib import Path

# The OpenBLAS settings this run was given (before bge_ref adds its own thread timeout): the report names them.
OPENBLAS_ENV = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("OPENBLAS_"))

import bge_ref  # noqa: E402  (before NumPy: OpenBLAS's idle-thread timeout as in the forward)
import numpy as np  # noqa: E402
from bge_ref import fast, gemm, threads  # noqa: E402
from bge_ref.batching import plan_batches  # noqa: E402
from bge_ref.testing.readme import cpu, numpy_blas  # noqa: E402

QUERY = "what is the boiling point of water at altitude"        # ~10 tokens with [CLS] and [SEP]
COUNTS = (1, 4, 32)
GOALS = {("bge-large", "query", 1): 0.8, ("bge-large", "query", 4): 0.8, ("bge-large", "passage", 1): 0.8,
         ("bge-large", "8x128 forward", 8): 0.8, ("MiniLM", "corpus", 1000): 0.8}
BARE_GOAL = 1.15  # one short query: at most this many times the bare BLAS time of its projections
INSTRUCTED = "query with instruction"  # one query with bge's instruction: the bare bound, no goal of its own
# A workload's rounds go on until they have taken about this long, up to MAX_ROUNDS: one bge-large
# query's round (bge_ref, its peer and the projections alone) takes about 0.5 s, a MiniLM query's 20 ms.
ROUND_SECONDS, MAX_ROUNDS = 5.0, 15
SETTLE_BELOW = 1.0  # calls quicker than this (seconds) are timed after an untimed call of their own (`best`)


def cache_dir() -> Path:
    d = Path(os.environ.get("BGE_REF_BENCH_DIR", Path.home() / ".cache" / "bge-ref-bench"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def bge_large_dir() -> Path:
    from bge_ref.testing.checkpoints import make_bge_large_random
    d = cache_dir() / "bge-large-scaled"
    if not (d / "model.safetensors").is_file():
        make_bge_large_random(d, seed=0)
    return d


def vocab_words() -> list[str]:
    """The vocabulary's whole words of three letters or more: one wordpiece each."""
    from bge_ref.testing.checkpoints import minilm_dir
    return [w for w in (minilm_dir() / "vocab.txt").read_text().split() if w.isalpha() and len(w) > 2]


def texts(kind, n, seed=0) -> list[str]:
    """n distinct short queries, or n passages of ~128 tokens, from the vocabulary's whole words."""
    words = vocab_words()
    rng = np.random.default_rng(seed)
    if kind == "query":
        return [QUERY if i == 0 else " ".join(rng.choice(words, 8)) + "?" for i in range(n)]
    return [" ".join(rng.choice(words, 125)) + "." for _ in range(n)]  # 128 tokens: one wordpiece a word


def transformers_cls(hf, tok, batch):
    """The peer's encode(): transformers' tokenizer and BertModel, [CLS], L2-normalized."""
    import torch
    with torch.inference_mode():
        enc = tok(batch, padding=True, truncation=True, return_tensors="pt")
        return torch.nn.functional.normalize(hf(**enc).last_hidden_state[:, 0], dim=-1)


def best(fns: dict, repeat: int) -> dict:
    """{name: best seconds}, every fn run once per round (after one warm-up round), rounds interleaved:
    `repeat` rounds, or more for quick calls (ROUND_SECONDS), whose best of 3 varies by 10-40% here.
    A quick call (under SETTLE_BELOW seconds) is timed after one untimed call of its own: right after
    the other library's call it can run slower, as no application that calls only one of them sees.
    One MiniLM query (AMD EPYC, 40 calls each) took bge_ref a median of 16.0 ms right after
    sentence-transformers' and 6.8 ms alone on OpenBLAS's Haswell kernel (11.1 and 6.7 on its SkylakeX
    kernel); sentence-transformers took 11.0 ms either way (9.2 and 9.1)."""
    started = time.perf_counter()
    quick = {}
    for k, fn in fns.items():
        t = time.perf_counter()
        fn()
        quick[k] = time.perf_counter() - t < SETTLE_BELOW
    warm = time.perf_counter() - started
    times = {k: [] for k in fns}
    for _ in range(max(repeat, min(MAX_ROUNDS, math.ceil(ROUND_SECONDS / max(warm, 1e-9))))):
        for k, fn in fns.items():
            if quick[k]:
                fn()                                      # settles what the previous call left behind
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: min(v) for k, v in times.items()}


def projections(model, N, chunked=False):
    """x @ w over every projection of the forward at N token rows (N: an int, or a list of them, one
    forward each), NumPy's BLAS on its own threads; with chunked, summed as the forward sums them
    (gemm.matmul: K in chunks, the accuracy bound's price)."""
    rng = np.random.default_rng(0)
    counts = [N] if isinstance(N, int) else list(N)
    D, F = model.config.hidden_size, model.config.intermediate_size
    xs = {K: rng.standard_normal((max(counts), K), np.float32) for K in (D, F)}  # each forward its first rows
    ws = _weights(model)
    product = gemm.matmul if chunked else np.matmul

    def run():
        for n in counts:
            for w in ws:
                product(xs[w.shape[0]][:n], w)
    return run


def floors(model, N) -> dict:
    """best()'s functions for the projections alone at N token rows: bare and chunked."""
    return {"bare": projections(model, N), "chunked": projections(model, N, chunked=True)}


def batch_rows(model, batch, batch_size=32) -> list[int]:
    """The token rows of each forward encode(batch, batch_size=...) runs: its batches (batching.py)."""
    lengths = [min(c, model.max_length) for c in model.count_tokens(batch)]
    return [sum(lengths[i] for i in b) for b in plan_batches(lengths, batch_size)]


def as_before(ours, fn):
    """fn run as bge_ref ran before the few-rows layout and cls_only: every core on its own rows (fast.FEW_ROWS 0), and the
    last layer computed for every row (no cls_only)."""
    def run():
        saved, forward = fast.FEW_ROWS, ours.forward
        fast.FEW_ROWS, ours.forward = 0, lambda *a, cls_only=False, **kw: forward(*a, **kw)
        try:
            return fn()
        finally:
            fast.FEW_ROWS = saved
            del ours.forward
    return run


def bge_large_rows(repeat, counts, baseline=False) -> list[dict]:
    import torch
    from transformers import AutoTokenizer, BertModel
    path = bge_large_dir()
    ours = bge_ref.load(path)
    hf = BertModel.from_pretrained(path, add_pooling_layer=False).eval()
    tok = AutoTokenizer.from_pretrained(path)

    def theirs(batch):
        return lambda: transformers_cls(hf, tok, batch)

    rows = []
    for kind in ("query", "passage"):
        for n in counts:
            batch = texts(kind, n)
            tokens = int(ours.tokenize(batch)["attention_mask"].sum())
            fns = {"bge_ref": lambda: ours.encode(batch, batch_size=32), "peer": theirs(batch)}
            if baseline:
                fns["before"] = as_before(ours, fns["bge_ref"])
            if ("bge-large", kind, n) in GOALS:
                fns.update(floors(ours, tokens))
            t = best(fns, repeat)
            rows.append(dict(model="bge-large", kind=kind, n=n, tokens=tokens, peer_name="transformers", **t))
            if (kind, n) == ("query", 1) and "bare" in t:
                rows[-1]["profile"] = query_profile(ours, batch, tokens, t, max(repeat, 5))
            _progress(rows[-1])
    batch = [bge_ref.QUERY_INSTRUCTION + QUERY]                # what encode_queries([QUERY]) embeds; the peer gets it too
    tokens = int(ours.tokenize(batch)["attention_mask"].sum())
    t = best({"bge_ref": lambda: ours.encode_queries([QUERY]), "peer": theirs(batch), **floors(ours, tokens)}, repeat)
    rows.append(dict(model="bge-large", kind=INSTRUCTED, n=1, tokens=tokens, peer_name="transformers", **t))
    _progress(rows[-1])
    ids = np.random.default_rng(0).integers(1000, 30000, (8, 128))
    ids[:, 0], ids[:, -1] = 101, 102
    mask, t_ids = np.ones_like(ids), torch.from_numpy(ids)

    def hf_forward():
        with torch.inference_mode():
            hf(input_ids=t_ids, attention_mask=torch.ones_like(t_ids))
    fns = {"bge_ref": lambda: ours.forward(ids, mask), "peer": hf_forward, **floors(ours, ids.size)}
    if baseline:
        fns["before"] = as_before(ours, fns["bge_ref"])
    t = best(fns, repeat)
    rows.append(dict(model="bge-large", kind="8x128 forward", n=8, tokens=ids.size, peer_name="transformers", **t))
    _progress(rows[-1])
    return rows


def minilm_rows(repeat, counts) -> list[dict]:
    from sentence_transformers import SentenceTransformer
    from bench import corpus
    from bge_ref.testing.checkpoints import minilm_dir
    ours = bge_ref.load(minilm_dir())
    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    rows = []
    for kind, n, batch in [*((k, n, texts(k, n)) for k in ("query", "passage") for n in counts),
                           ("corpus", 1000, corpus())]:
        fns = {"bge_ref": lambda: ours.encode(batch, batch_size=32), "peer": lambda: st.encode(batch, batch_size=32)}
        if ("MiniLM", kind, n) in GOALS:
            fns.update(floors(ours, batch_rows(ours, batch)))
        t = best(fns, max(1, repeat // 2) if kind == "corpus" else repeat)
        tokens = sum(min(c, ours.max_length) for c in ours.count_tokens(batch))
        rows.append(dict(model="MiniLM", kind=kind, n=n, tokens=tokens, peer_name="sentence-transformers", **t))
        _progress(rows[-1])
    return rows


def layouts(repeat, sizes=(8, 16, 32, 64, 128, 160, 192, 256, 320, 384)) -> list[str]:
    """bge-large size forward at N token rows (one sequence), in the few-rows layout (fast.FEW_ROWS
    above N: each projection left to gemm.py, its BLAS calls threaded by the BLAS) against each core
    on its own rows (FEW_ROWS 0)."""
    ours = bge_ref.load(bge_large_dir())
    saved, out = fast.FEW_ROWS, ["| token rows | few-rows layout (ms) | rows split (ms) | few-rows / rows |",
                                 "| ---: | ---: | ---: | ---: |"]
    try:
        for N in sizes:
            ids = np.full((1, N), 2000)
            ids[0, 0] = 101

            def with_few_rows(v):
                def run():
                    fast.FEW_ROWS = v
                    ours.forward(ids, np.ones_like(ids))
                return run
            t = best({"few": with_few_rows(1 << 30), "rows": with_few_rows(0)}, repeat)
            out.append(f"| {N} | {t['few'] * 1e3:.0f} | {t['rows'] * 1e3:.0f} | {t['few'] / t['rows']:.2f} |")
            print(out[-1], file=sys.stderr)
    finally:
        fast.FEW_ROWS = saved
    return out


def _progress(r):
    extra = f", bare BLAS {r['bare'] * 1e3:.0f} ms" if "bare" in r else ""
    extra += f", before #22 {r['before'] * 1e3:.0f} ms ({r['peer'] / r['before']:.2f}x)" if "before" in r else ""
    print(f"  {r['model']} {r['n']} x {r['kind']}: bge_ref {r['bge_ref'] * 1e3:.0f} ms, {r['peer_name']} "
          f"{r['peer'] * 1e3:.0f} ms ({r['peer'] / r['bge_ref']:.2f}x){extra}", file=sys.stderr)


def table(rows) -> list[str]:
    before = any("before" in r for r in rows)
    out = ["| model | workload | tokens | bge_ref ms | peer | peer ms | speed vs peer | goal | vs bare BLAS |"
           + (" before #22: speed vs peer |" if before else ""),
           "| --- | --- | ---: | ---: | --- | ---: | ---: | --- | ---: |" + (" ---: |" if before else "")]
    for r in rows:
        ratio = r["peer"] / r["bge_ref"]
        goal = GOALS.get((r["model"], r["kind"], r["n"]))
        goal_text = "-" if goal is None else f">= {goal}x: {'met' if ratio >= goal else '**not met**'}"
        bare = "-"
        if "bare" in r:
            b = r["bge_ref"] / r["bare"]
            bare = f"{b:.2f}x ({r['bare'] * 1e3:.0f} ms)" + (
                f", <= {BARE_GOAL}x: {'met' if b <= BARE_GOAL else '**not met**'}" if (r["kind"], r["n"]) in (("query", 1), (INSTRUCTED, 1)) else "")
        out.append(f"| {r['model']} | {_what(r)} | {r['tokens']:,} | {r['bge_ref'] * 1e3:,.0f} | {r['peer_name']} | "
                   f"{r['peer'] * 1e3:,.0f} | **{ratio:.2f}x** | {goal_text} | {bare} |"
                   + (f" {r['peer'] / r['before']:.2f}x |" if "before" in r else " - |" if before else ""))
    return out


def ceiling(rows) -> list[str]:
    """Where the time goes, for the rows with a goal: the projections alone (bare and chunked), the
    speed vs the peer bge_ref would reach if everything around them took no time, and the time the
    goal leaves for everything else (the goal's time less the chunked projections) against what it
    takes now (bge_ref's time less them)."""
    measured = [r for r in rows if "chunked" in r and (r["model"], r["kind"], r["n"]) in GOALS]
    if not measured:
        return []
    out = ["", "Where the time goes, for each row with a goal: its projections alone at the same token rows "
           "(NumPy's BLAS on all threads), bare (`x @ w`) and summed as the forward sums them (`gemm.matmul`: K "
           "in chunks, which keeps the float32 error within the peer's). 'Speed if only' is the speed vs the "
           "peer bge_ref would reach if everything else (GELU, LayerNorm, attention, residuals, Python) took "
           "no time. The goal leaves the goal's time (the peer's over the goal ratio) less the chunked "
           "projections for everything else; compare it with what everything else takes now (bge_ref's time "
           "less them). Where it leaves less than it takes, the goal needs that part made faster by the "
           "factor in the last column; 'impossible' where the chunked projections alone take longer than the "
           "goal allows.", "",
           "| model | workload | goal | bare BLAS ms | speed if only bare BLAS | chunked projections ms | "
           "speed if only them | the goal leaves ms | everything else now ms | needed speed-up of it |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in measured:
        goal = GOALS[(r["model"], r["kind"], r["n"])]
        left, now = r["peer"] / goal - r["chunked"], r["bge_ref"] - r["chunked"]
        need = "none" if left >= now else ("impossible" if left <= 0 else f"{now / left:.2f}x")
        out.append(f"| {r['model']} | {_what(r)} | {goal}x | {r['bare'] * 1e3:,.0f} | {r['peer'] / r['bare']:.2f}x | "
                   f"{r['chunked'] * 1e3:,.0f} | {r['peer'] / r['chunked']:.2f}x | {left * 1e3:,.0f} | "
                   f"{now * 1e3:,.0f} | {need} |")
    out += ["", "The bare projections here run on the BLAS's own threads, the chunked ones as `gemm.matmul` runs them "
            f"(below {gemm.SMALL_ROWS} rows of bge-large's weights on OpenBLAS's SkylakeX kernel, in column blocks for "
            "its small-matrix kernel on bge_ref's threads); in the forward, bge-large's few rows give each "
            "core its share of every weight, and 256 token rows or more each core its own sequences, both with "
            "BLAS single-threaded, which these times approximate. "
            "The 8x128 forward's profile, block by block, is in the [performance report](performance.md) "
            "(`benchmarks/breakdown.py`)."]
    return out


# The parts of one query's forward that query_profile() times: (name in the table, module, function)
PARTS = [("projections (`gemm.matmul`, K in chunks)", gemm, "matmul"), ("LayerNorm", fast, "layer_norm"),
         ("GELU", fast, "gelu_fast"), ("attention core (scores, softmax, @ V)", fast, "attention")]


def query_profile(ours, batch, tokens, floor, repeat) -> list[str]:
    """Where one query's encode() spends its time: each part's calls timed inside the forward (the
    fastest of `repeat` instrumented passes), against the same calls timed warm, each part's first call
    repeated in a loop. The gap is what the weights streaming through the caches costs the calls
    between the matmuls: every layer reads 50 MB of weights, which leaves none of the activations,
    LayerNorm's parameters or its float64 buffer in the cache for the next call. `tokens`: the
    batch's token rows; `floor`: the projections alone at those rows (latency.floors' best times, seconds)."""
    passes = []
    originals = {name: getattr(module, fn) for name, module, fn in PARTS}
    first = {}

    def timed(name, fn):
        def wrapper(*args, **kw):
            if name not in first:                         # its inputs, for the warm loop
                first[name] = ([a.copy() if isinstance(a, np.ndarray) else a for a in args],
                               {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in kw.items()})
            t = time.perf_counter()
            out = fn(*args, **kw)
            spent[name][0] += 1
            spent[name][1] += time.perf_counter() - t
            return out
        return wrapper

    try:
        for name, module, fn in PARTS:
            setattr(module, fn, timed(name, originals[name]))
        for _ in range(repeat):
            spent = {name: [0, 0.0] for name, *_ in PARTS}
            t = time.perf_counter()
            ours.encode(batch, batch_size=32)
            passes.append((time.perf_counter() - t, spent))
    finally:
        for name, module, fn in PARTS:
            setattr(module, fn, originals[name])
    total, spent = min(passes, key=lambda p: p[0])
    warm = {}
    for name, *_ in PARTS[1:]:                            # the projections stream their weights: never warm
        args, kw = first[name]
        fn, times = originals[name], []
        for _ in range(200):
            t = time.perf_counter()
            fn(*args, **kw)
            times.append(time.perf_counter() - t)
        warm[name] = float(np.median(times[20:]))
    rest = total - sum(s for _, s in spent.values())
    allowed = BARE_GOAL * floor["bare"]
    weights = _weights(ours)
    calls, blocked = blas_calls(weights, tokens)
    how = ", in column blocks for OpenBLAS's small-matrix kernel on bge_ref's threads" if blocked else ""
    out = ["", f"Where one bge-large query's time goes ({len(batch)} text, "
           f"{tokens} token rows): each part's calls timed inside "
           f"`encode()` (the fastest of {repeat} instrumented calls: {total * 1e3:.0f} ms, the timers included), "
           "and the same calls warm (each part's first call repeated in a loop, median). Inside the forward "
           "every layer streams 50 MB of weights through the caches, which leaves the next call's inputs, "
           "parameters and buffers cold.", "",
           "| part | calls | ms in encode() | us a call in encode() | us a call warm |",
           "| --- | ---: | ---: | ---: | ---: |"]
    for name, *_ in PARTS:
        n, s = spent[name]
        w = f"{warm[name] * 1e6:,.0f}" if name in warm else "-"
        out.append(f"| {name} | {n:,} | {s * 1e3:,.1f} | {s / max(n, 1) * 1e6:,.0f} | {w} |")
    out.append(f"| the rest: tokenizer, embeddings, pooling, Python between the calls | - | {rest * 1e3:,.1f} | - | - |")
    others = total - spent[PARTS[0][0]][1]
    at_warm = rest + sum(spent[name][0] * warm[name] for name in warm)
    out += ["", f"The bound of {BARE_GOAL}x the bare projections ({floor['bare'] * 1e3:.0f} ms) allows "
            f"{allowed * 1e3:.0f} ms. The projections summed in chunks take {floor['chunked'] * 1e3:.0f} ms alone "
            f"({floor['chunked'] / floor['bare']:.2f}x bare: the chunks that keep the float32 error within transformers' "
            f"make {calls:,} BLAS calls of {len(weights)}{how}) "
            f"and {spent[PARTS[0][0]][1] * 1e3:.0f} ms inside the forward, so everything else may take "
            f"{(allowed - floor['chunked']) * 1e3:.0f} ms; it takes {others * 1e3:.0f} ms here, and would take "
            f"{at_warm * 1e3:.0f} ms if every call ran as fast as warm."]
    return out


def blas_calls(weights, rows) -> tuple[int, bool]:
    """(the BLAS calls gemm.matmul makes for these weights at `rows` rows, True if it cuts any into
    column blocks): a call per chunk of K, per block where it takes small-kernel blocks (gemm.small_blocks)."""
    calls, blocked = 0, False
    for w in weights:
        chunk = gemm.chunk_length(rows, w.size)
        blocks = gemm.small_blocks(rows, w.shape[1], chunk, w.size)
        blocked |= bool(blocks)
        calls += -(-w.shape[0] // chunk) * (sum(map(len, blocks)) if blocks else 1)
    return calls, blocked


def _weights(model) -> list:
    """Every projection's weight of the forward, layer by layer."""
    return [w for p in model.params["layers"] for w in (p["attn"]["qkv"]["w"], p["attn_out"]["dense"]["w"],
                                                       p["inter"]["dense"]["w"], p["out"]["dense"]["w"])]


def _what(r) -> str:
    """A row's workload as the tables name it."""
    if r["kind"] in ("8x128 forward", "corpus"):
        return r["kind"]
    return f"{r['n']} {r['kind'] if r['n'] == 1 else {'query': 'queries', 'passage': 'passages'}[r['kind']]}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="timed calls per peer and workload (best kept)")
    ap.add_argument("--threads", type=int, default=2, help="threads for bge_ref and torch alike")
    ap.add_argument("--write-docs", metavar="PATH", help="write the markdown report to PATH")
    ap.add_argument("--layouts", action="store_true", help="also time the thread layouts by token rows")
    ap.add_argument("--only", choices=("bge-large", "MiniLM"), help="one model only")
    ap.add_argument("--counts", default=",".join(map(str, COUNTS)), help="texts per call, comma-separated")
    ap.add_argument("--baseline", action="store_true",
                    help="also time bge_ref as before the few-rows layout (rows split at any size, full last layer)")
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    import torch
    torch.set_num_threads(args.threads)
    threads.THREADS = args.threads
    started, load = datetime.datetime.now(datetime.timezone.utc), os.getloadavg()
    rows = []
    if args.only != "MiniLM":
        rows += bge_large_rows(args.repeat, counts, args.baseline)
    if args.only != "bge-large":
        rows += minilm_rows(args.repeat, counts)
    extra = layouts(args.repeat) if args.layouts else []
    after = os.getloadavg()
    cmd = "python benchmarks/latency.py" + "".join(
        f" {a}" for a in sys.argv[1:] if not a.startswith("--write-docs") and a != args.write_docs)
    lines = [
        "# Latency: bge_ref against transformers and sentence-transformers",
        "",
        f"Generated {started:%Y-%m-%d %H:%M} UTC by `{cmd}`{f' with {OPENBLAS_ENV}' if OPENBLAS_ENV else ''}.",
        "",
        f"- CPU: **{cpu()}**, {os.cpu_count()} cores visible",
        f"- NumPy {np.__version__} with {numpy_blas()}; torch {torch.__version__}",
        f"- threads: bge_ref {threads.THREADS}, torch {torch.get_num_threads()}",
        f"- load average (1 min) before {load[0]:.2f}, after {after[0]:.2f}; best of {args.repeat} calls "
        f"or more (quick calls are repeated for about {ROUND_SECONDS:.0f} s a workload, at most {MAX_ROUNDS} times), "
        f"peers alternating; a call under {SETTLE_BELOW:.0f} s is timed after an untimed call of its own",
        "",
        "Speed vs peer is the peer's time over bge_ref's (above 1: bge_ref is faster). bge-large size is a "
        "seeded random checkpoint of bge-large-en-v1.5's exact shape; `encode()` against transformers' "
        "tokenizer + BertModel + [CLS] + L2 normalize on the same batch. MiniLM is the real all-MiniLM-L6-v2, "
        "against sentence-transformers' `encode()`. Queries are ~10 tokens, passages ~128; a query with "
        "instruction is one query with bge's query instruction before it, as `encode_queries` and "
        "`bge-ref embed --query` send it (~20 tokens); the corpus is "
        "benchmarks/bench.py's 1000 texts of 3 to 250 words. 'vs bare BLAS' is bge_ref's time over the bare "
        "`x @ w` of every projection at the batch's token rows (each forward's, for the corpus), NumPy's BLAS "
        "on all threads.",
        "",
        *table(rows),
        *ceiling(rows),
        *(line for r in rows for line in r.get("profile", [])),
    ]
    if extra:
        lines += ["", "Thread layout by token rows (bge-large size forward of one sequence; "
                  f"`fast.FEW_ROWS` = {fast.FEW_ROWS} picks the few-rows layout below it):", "", *extra]
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        out = Path(args.write_docs)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
