"""A/B of the few-rows layouts at bge-large size: fast.layer_by_heads against gemm's BLAS threads.

    python benchmarks/layout_ab.py --rows 11,32,128 --rounds 16
    OPENBLAS_CORETYPE=Haswell python benchmarks/layout_ab.py --queries 4

For each workload, `encode()` runs in both layouts and transformers runs once per round, alternating,
who goes first rotating, in one process. Each call's share of the cores' time that the hypervisor
stole (/proc/stat's steal column, Linux) is logged beside it: on a shared virtual machine that share
moves the ratio more than the code does, so the report gives the median of per-round ratios over all
rounds and over the quiet ones (neither layout lost more than --quiet of its time). fast.py's
BY_HEADS_ROWS figures came from this script's scratch predecessors (the same method); rerun it on the
CPU in question rather than trust them elsewhere.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bge_ref  # noqa: E402  (first: bge_ref sets OpenBLAS's thread timeout before NumPy loads it)
import numpy as np  # noqa: E402
from bge_ref import fast  # noqa: E402
from latency import bge_large_dir, texts, transformers_cls, vocab_words  # noqa: E402
from peer_profile import timed as peer_timed  # noqa: E402


def timed(fn) -> tuple[float, float]:
    """(seconds, share of the cores' time stolen meanwhile: 0 where /proc/stat is missing) of one call."""
    dt, split = peer_timed(fn)
    return dt, split[2] if split else 0.0


def layout(name):
    """Force one layout for any row count below fast.FEW_ROWS."""
    heads = name == "layer_by_heads"
    fast.BY_HEADS_WEIGHTS, fast.BY_HEADS_ROWS = (0, 0) if heads else (1 << 62, 0)


def batch_of(kind, n):
    """n texts: `rows` gives one text of n token rows (one wordpiece a word), else latency.py's workloads."""
    if kind == "rows":
        return [" ".join(np.random.default_rng(1).choice(vocab_words(), n - 2))]
    return texts(kind, n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="", help="token rows of one text each, comma-separated")
    ap.add_argument("--queries", default="", help="query counts, comma-separated (latency.py's queries)")
    ap.add_argument("--passages", default="", help="passage counts, comma-separated (~128 tokens each)")
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--quiet", type=float, default=0.05, help="stolen share below which a round counts as quiet")
    ap.add_argument("--threads", type=int, default=2, help="torch's threads (bge_ref's: $BGE_REF_THREADS)")
    args = ap.parse_args()
    import torch
    from transformers import AutoTokenizer, BertModel

    torch.set_num_threads(args.threads)
    path = bge_large_dir()
    ours = bge_ref.load(path)
    hf = BertModel.from_pretrained(path, add_pooling_layer=False).eval()
    tok = AutoTokenizer.from_pretrained(path)
    work = [(kind, int(n)) for kind, given in (("rows", args.rows), ("query", args.queries), ("passage", args.passages))
            for n in given.split(",") if n.strip()] or [("query", 1), ("query", 4), ("passage", 1)]
    saved = fast.BY_HEADS_WEIGHTS, fast.BY_HEADS_ROWS
    found = bge_ref.gemm.find_sgemm()
    print(f"{found[1].strip() if found else 'BLAS: not OpenBLAS'}; bge_ref threads {bge_ref.threads.THREADS}, torch {args.threads}")
    try:
        for kind, n in work:
            batch = batch_of(kind, n)

            def ours_in(name):
                layout(name)
                return ours.encode(batch, batch_size=32)
            calls = {"layer_by_heads": lambda: ours_in("layer_by_heads"), "gemm": lambda: ours_in("gemm"),
                     "transformers": lambda: transformers_cls(hf, tok, batch)}
            assert np.abs(calls["layer_by_heads"]() - calls["gemm"]()).max() < 1e-5  # and a warm-up
            calls["transformers"]()
            names, res = list(calls), {k: [] for k in calls}
            for r in range(args.rounds):
                for k in names[r % 3:] + names[:r % 3]:
                    res[k].append(timed(calls[k]))
            ratios = [(h[0] / g[0], max(h[1], g[1])) for h, g in zip(res["layer_by_heads"], res["gemm"])]
            quiet = [q for q, s in ratios if s < args.quiet]
            rows = sum(ours.count_tokens(batch))
            print(f"\n{kind} x{n} ({rows} token rows)")
            for k, v in res.items():
                print(f"  {k:15s} min {min(t for t, _ in v) * 1e3:8.1f} ms  median {statistics.median(t for t, _ in v) * 1e3:8.1f} ms"
                      f"  stolen median {statistics.median(s for _, s in v):.1%}")
            print(f"  layer_by_heads / gemm, median of per-round ratios: {statistics.median(q for q, _ in ratios):.3f} all,"
                  f" {statistics.median(quiet):.3f} over {len(quiet)} quiet rounds" if quiet else
                  f"  layer_by_heads / gemm, median of per-round ratios: {statistics.median(q for q, _ in ratios):.3f} (no quiet round)")
            best = {k: min(t for t, _ in v) for k, v in res.items()}
            print(f"  speed vs transformers (best calls): layer_by_heads {best['transformers'] / best['layer_by_heads']:.2f}x,"
                  f" gemm {best['transformers'] / best['gemm']:.2f}x")
    finally:
        fast.BY_HEADS_WEIGHTS, fast.BY_HEADS_ROWS = saved


if __name__ == "__main__":
    main()
