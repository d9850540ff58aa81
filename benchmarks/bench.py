"""bge_ref against its peers on this machine, side by side in one run.

    python benchmarks/bench.py                 # print the table
    python benchmarks/bench.py --write-readme  # and replace the performance region of docs/reports/performance.md with it

Peers, all on the same number of threads: transformers' BertModel (eager, its default attention),
sentence-transformers' encode (same batch size), ONNX Runtime (the BertModel exported to ONNX) if it
is installed. Models: a random checkpoint of bge-large-en-v1.5's exact shapes (built once with
bge_ref.testing.checkpoints.make_random_bert in the cache directory) and the real all-MiniLM-L6-v2.
Throughput peers are interleaved and repeated (best of --repeat); peak RSS and cold start are each
measured in a fresh subprocess. Timings on a shared machine are noisy: read the ratios.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bge_ref.testing.readme import machine, write_region

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2
WORKLOADS = [("8x128", 8, 128), ("1x512", 1, 512), ("32x32", 32, 32)]
CORPUS_TEXTS, CORPUS_BATCH = 1000, 32
SENTENCE = "A cold start embeds this one sentence."


def cache_dir() -> Path:
    d = Path(os.environ.get("BGE_REF_BENCH_DIR", Path.home() / ".cache" / "bge-ref-bench"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def models() -> dict[str, Path]:
    from bge_ref.testing.checkpoints import BGE_LARGE_CONFIG, make_random_bert, minilm_dir
    large = cache_dir() / "bge-large-random"
    if not (large / "model.safetensors").is_file():
        make_random_bert(large, BGE_LARGE_CONFIG, seed=0)
    return {"bge-large (random)": large, "all-MiniLM-L6-v2": minilm_dir()}


def corpus(n=CORPUS_TEXTS, seed=0) -> list[str]:
    """n texts of varied length (3 to ~250 words, log-uniform) from the vocabulary's whole words."""
    import numpy as np
    from bge_ref.testing.checkpoints import minilm_dir
    words = [w for w in (minilm_dir() / "vocab.txt").read_text().split() if w.isalpha() and len(w) > 1]
    rng = np.random.default_rng(seed)
    lengths = np.exp(rng.uniform(np.log(3), np.log(250), n)).astype(int)
    return [" ".join(rng.choice(words, k)) + "." for k in lengths]


def matmul_flops(cfg, B, S) -> float:
    """Multiply-adds x 2 of every matmul in the encoder (projections and attention)."""
    D, F, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    return 2.0 * L * (B * S * (4 * D * D + 2 * D * F) + 2 * B * S * S * D)


def machine_gflops() -> float:
    """This machine's float32 matmul rate through NumPy: best of 5 (4096 x 4096) @ (4096 x 4096)."""
    import numpy as np
    a = np.random.default_rng(0).standard_normal((4096, 4096), dtype=np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(5))
    return 2 * 4096 ** 3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# -- the peers ---------------------------------------------------------------------------------------

def make_peers(path: Path, onnx_path: Path | None):
    """{name: (forward(ids, mask, types), corpus_encode(texts) or None)} for one checkpoint."""
    import numpy as np
    import torch
    import bge_ref
    from sentence_transformers import SentenceTransformer
    from transformers import BertModel
    torch.set_num_threads(THREADS)
    ours = bge_ref.load(path)
    hf = BertModel.from_pretrained(path, add_pooling_layer=False).eval()
    st = SentenceTransformer(str(path), device="cpu")

    def hf_forward(ids, mask, types):
        with torch.inference_mode():
            return hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                      token_type_ids=torch.from_numpy(types)).last_hidden_state

    def st_forward(ids, mask, types):  # the transformer module of the sentence-transformers pipeline
        with torch.inference_mode():
            return st.forward({"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                               "token_type_ids": torch.from_numpy(types)})["sentence_embedding"]

    peers = {
        "bge_ref": (lambda ids, mask, types: ours.forward(ids, mask, types),
                    lambda texts: ours.encode(texts, batch_size=CORPUS_BATCH)),
        "transformers eager": (hf_forward, None),
        "sentence-transformers": (st_forward, lambda texts: st.encode(texts, batch_size=CORPUS_BATCH)),
    }
    if onnx_path is not None:
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = THREADS, 1
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        peers["onnxruntime"] = (lambda ids, mask, types: sess.run(
            None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0], None)
    return peers


def export_onnx(path: Path) -> Path | None:
    """The BertModel exported to ONNX once (cached), or None if onnxruntime / the export is unavailable."""
    try:
        import onnxruntime  # noqa: F401
        import torch
        from transformers import BertModel
    except ImportError:
        return None
    out = cache_dir() / (path.name + ".onnx")
    if out.is_file():
        return out
    try:
        model = BertModel.from_pretrained(path, add_pooling_layer=False).eval()
        model.config.return_dict = False
        ids = torch.ones((2, 16), dtype=torch.int64)
        class Positional(torch.nn.Module):  # the exporter passes inputs positionally
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]

        torch.onnx.export(Positional(model), (ids, ids, torch.zeros_like(ids)), str(out), dynamo=False,
                          opset_version=17,
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state"],
                          dynamic_axes={n: {0: "b", 1: "s"} for n in
                                        ("input_ids", "attention_mask", "token_type_ids", "last_hidden_state")})
        return out
    except Exception as e:  # noqa: BLE001 - a peer we cannot build is reported, not fatal
        print(f"ONNX export of {path.name} failed, skipping onnxruntime: {e!r}", file=sys.stderr)
        out.unlink(missing_ok=True)
        return None


def throughput(peers, cfg, repeat, with_corpus=True) -> dict:
    """{workload: {peer: best seconds}}, peers interleaved within every repetition."""
    import numpy as np
    rng = np.random.default_rng(0)
    res = {}
    for name, B, S in WORKLOADS:
        ids = rng.integers(1000, cfg["vocab_size"], (B, S)).astype(np.int64)
        ids[:, 0], ids[:, -1] = 101, 102
        mask, types = np.ones_like(ids), np.zeros_like(ids)
        for fwd, _ in peers.values():
            fwd(ids, mask, types)  # warm-up: page in the weights, allocate
        times = {p: [] for p in peers}
        for _ in range(repeat):
            for p, (fwd, _) in peers.items():
                times[p].append(_timed(lambda: fwd(ids, mask, types)))
        res[name] = {p: min(t) for p, t in times.items()}
        print(f"  {name}: " + ", ".join(f"{p} {t:.3f}s" for p, t in res[name].items()), file=sys.stderr)
    if not with_corpus:
        return res
    texts = corpus()
    enc = {p: e for p, (_, e) in peers.items() if e is not None}
    times = {p: [] for p in enc}
    for _ in range(max(1, repeat // 2)):
        for p, e in enc.items():
            times[p].append(_timed(lambda: e(texts)))
    res["corpus"] = {p: min(t) for p, t in times.items()}
    print("  corpus: " + ", ".join(f"{p} {t:.2f}s" for p, t in res["corpus"].items()), file=sys.stderr)
    return res


# -- fresh processes: peak RSS and cold start ---------------------------------------------------------

CHILD = {
    "bge_ref": "import bge_ref, numpy as np\nm = bge_ref.load(PATH)\n",
    "bge_ref float16": "import bge_ref, numpy as np\nm = bge_ref.load(PATH, weights_dtype='float16')\n",
    "transformers eager": ("import torch, numpy as np\ntorch.set_num_threads(2)\nfrom transformers import BertModel\n"
                           "h = BertModel.from_pretrained(PATH, add_pooling_layer=False).eval()\n"),
    "sentence-transformers": ("import torch\ntorch.set_num_threads(2)\nfrom sentence_transformers import "
                              "SentenceTransformer\nm = SentenceTransformer(PATH, device='cpu')\n"),
}
RUN_8x128 = {
    "bge_ref": "ids = np.full((8, 128), 2000); m.forward(ids, np.ones_like(ids), np.zeros_like(ids))\n",
    "transformers eager": ("ids = torch.full((8, 128), 2000)\nwith torch.inference_mode(): "
                           "h(input_ids=ids, attention_mask=torch.ones_like(ids))\n"),
}
RUN_8x128["bge_ref float16"] = RUN_8x128["bge_ref"]


def child(code: str, **env: str) -> tuple[float, str]:
    """Run code in a fresh interpreter on THREADS threads, with `env` added to its environment: (wall
    time from launch to exit, stdout)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(THREADS), OPENBLAS_NUM_THREADS=str(THREADS),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", **env)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode:
        raise RuntimeError(f"child failed:\n{code}\n{r.stderr[-2000:]}")
    return wall, r.stdout


def peak_rss(impl, path) -> float:
    """Peak resident set (bytes) of a fresh process that loads `impl` and runs one 8 x 128 forward."""
    code = f"PATH = {str(path)!r}\n" + CHILD[impl] + RUN_8x128[impl] + (
        # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the forking parent across exec
        "import re; print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) * 1024)\n")
    return float(child(code)[1].split()[-1])


def cold_start(impl, path, repeat=3) -> float:
    """Seconds from launching Python to the first embedding of one sentence (best of `repeat`)."""
    run = {"bge_ref": f"m.encode({SENTENCE!r})\n", "sentence-transformers": f"m.encode([{SENTENCE!r}])\n"}[impl]
    code = f"PATH = {str(path)!r}\n" + CHILD[impl] + run
    return min(child(code)[0] for _ in range(repeat))


def float16_cosine(path, n) -> float:
    """Smallest cosine between float16-weight and float32 embeddings of the corpus's first n texts."""
    import numpy as np
    import bge_ref
    texts = corpus()[:n]
    a = bge_ref.load(path).encode(texts, normalize=True)
    b = bge_ref.load(path, weights_dtype="float16").encode(texts, normalize=True)
    return float(np.min(np.sum(a * b, axis=1)))


# -- the report ---------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions per peer and workload (best kept)")
    ap.add_argument("--write-readme", action="store_true", help="replace the performance region of docs/reports/performance.md")
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--full", action="store_true",
                    help="also the corpus and onnxruntime on bge-large size (slow: ~10 min per peer on 2 cores)")
    args = ap.parse_args()
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            print(f"note: {var}={os.environ[var]} is set; it can slow a current OpenBLAS", file=sys.stderr)
    paths = models()
    started = datetime.datetime.now(datetime.timezone.utc)
    peak = machine_gflops()
    print(f"machine float32 matmul: {peak:.1f} GFLOP/s", file=sys.stderr)
    rows, measured = [], {}
    for mname, path in paths.items():
        cfg = json.loads((path / "config.json").read_text())
        print(f"{mname}:", file=sys.stderr)
        big = mname.startswith("bge-large")
        onnx = None if args.no_onnx or (big and not args.full) else export_onnx(path)
        res = throughput(make_peers(path, onnx), cfg, args.repeat, with_corpus=args.full or not big)
        for wname, B, S in WORKLOADS + [("corpus", None, None)]:
            if wname not in res:
                continue
            r = res[wname]
            ours = r["bge_ref"]
            if wname == "corpus":
                tokens = _corpus_tokens(path)
                flops = None
            else:
                tokens, flops = B * S, matmul_flops(cfg, B, S)
            ratios = "; ".join(f"{t / ours:.2f}x {p}" for p, t in r.items() if p != "bge_ref")
            gf = f"{flops / ours / 1e9:.0f} ({flops / ours / 1e9 / peak:.0%})" if flops else "-"
            peers = "; ".join(f"{p} {tokens / t:,.0f}" for p, t in r.items() if p != "bge_ref")
            rows.append((mname, wname, f"{tokens / ours:,.0f}", peers, ratios, gf))
            measured[(big, wname)] = {**{p: t / ours for p, t in r.items() if p != "bge_ref"},
                                      "gflops%": flops / ours / 1e9 / peak if flops else None}
        import gc
        gc.collect()
    large = paths["bge-large (random)"]
    weight_bytes = (large / "model.safetensors").stat().st_size
    print("peak RSS and cold start (fresh processes)...", file=sys.stderr)
    rss = {impl: peak_rss(impl, large) for impl in ("bge_ref", "bge_ref float16", "transformers eager")}
    cold = {impl: cold_start(impl, large) for impl in ("bge_ref", "sentence-transformers")}
    cos = float16_cosine(large, 32)
    cos_minilm = float16_cosine(paths["all-MiniLM-L6-v2"], 1000)
    cmd = "python benchmarks/bench.py" + (" --write-readme" if args.write_readme else "") + (
        f" --repeat {args.repeat}" if args.repeat != 3 else "") + (" --no-onnx" if args.no_onnx else "") + (
        " --full" if args.full else "")
    lines = [
        f"Measured {started:%Y-%m-%d %H:%M} UTC with `{cmd}` on: {machine('torch')}; {THREADS} threads used.",
        f"Machine float32 matmul (NumPy, 4096^3): **{peak:.0f} GFLOP/s**. Peers were interleaved, best of "
        f"{args.repeat} kept; on a shared machine absolute figures are noisy, and the ratios are the figures to read.",
        "",
        "| model | workload | bge_ref tokens/s | peers tokens/s | speed-up of bge_ref over | bge_ref GFLOP/s (% of machine) |",
        "| --- | --- | --- | --- | --- | --- |",
        *(f"| {' | '.join(r)} |" for r in rows),
        "",
        f"bge-large size, one 8 x 128 forward in a fresh process: peak RSS bge_ref **{rss['bge_ref'] / 2**30:.2f} GiB "
        f"= {rss['bge_ref'] / weight_bytes:.2f}x the {weight_bytes / 2**30:.2f} GiB of float32 weights**; "
        f"float16 weights {rss['bge_ref float16'] / 2**30:.2f} GiB = **{rss['bge_ref float16'] / rss['bge_ref']:.2f}x "
        f"float32 mode**; transformers eager {rss['transformers eager'] / 2**30:.2f} GiB.",
        f"float16 weights, float32 compute: smallest cosine to float32-mode embeddings of corpus texts "
        f"**{cos:.7f}** (bge-large random, 32 texts), **{cos_minilm:.7f}** (all-MiniLM-L6-v2, 1000 texts).",
        f"Cold start (fresh process: import, load, embed one sentence; best of 3, page cache warm): bge_ref "
        f"**{cold['bge_ref']:.2f} s**, sentence-transformers {cold['sentence-transformers']:.2f} s: "
        f"**{cold['bge_ref'] / cold['sentence-transformers']:.2f}x**.",
        "",
        f"Workloads: random token ids, no padding, B x S; corpus: {CORPUS_TEXTS} generated texts of 3 to 250 "
        f"words (seed 0), `encode(batch_size={CORPUS_BATCH})` against sentence-transformers' `encode` with the "
        "same batch size. GFLOP/s counts the matmuls only (projections and attention). Without `--full`, the "
        "corpus and onnxruntime run on all-MiniLM-L6-v2 only (on bge-large size they take ~10 min per peer).",
    ]
    lines += ["", *goal_table(measured, rss, weight_bytes, cold, cos)]
    table = "\n".join(lines)
    print(table)
    if args.write_readme:
        write_region("performance", table)


def goal_table(measured, rss, weight_bytes, cold, cos) -> list[str]:
    """The performance targets against this run's numbers, met or not."""
    def get(big, workload, key):
        return measured.get((big, workload), {}).get(key)
    corpus_big = get(True, "corpus", "sentence-transformers") is not None
    goals = [
        ("corpus: speed vs sentence-transformers" + ("" if corpus_big else " (all-MiniLM-L6-v2)"), ">= 0.9x",
         get(corpus_big, "corpus", "sentence-transformers"), 0.9, "x"),
        ("bge-large size 8x128: speed vs transformers eager", ">= 1.15x", get(True, "8x128", "transformers eager"), 1.15, "x"),
        ("corpus: speed vs sentence-transformers" + ("" if corpus_big else " (all-MiniLM-L6-v2)"), ">= 1.0x",
         get(corpus_big, "corpus", "sentence-transformers"), 1.0, "x"),
        ("bge-large size 8x128: matmul GFLOP/s, share of the machine's", ">= 85%", get(True, "8x128", "gflops%"), 0.85, "%"),
        ("cold start vs sentence-transformers", "<= 0.15x", cold["bge_ref"] / cold["sentence-transformers"], -0.15, "x"),
        ("peak RSS at 8x128 vs float32 weight bytes", "<= 1.25x", rss["bge_ref"] / weight_bytes, -1.25, "x"),
        ("float16 weights: peak RSS vs float32 mode", "<= 0.65x", rss["bge_ref float16"] / rss["bge_ref"], -0.65, "x"),
        ("float16 weights: cosine to float32 embeddings", ">= 0.9999", cos, 0.9999, ""),
    ]
    out = ["| measure | target | this run | met |", "| --- | --- | --- | --- |"]
    for name, target, value, bound, unit in goals:
        if value is None:
            out.append(f"| {name} | {target} | not measured | - |")
            continue
        met = value >= bound if bound > 0 else value <= -bound
        shown = f"{value:.0%}" if unit == "%" else f"{value:.7f}" if not unit else f"{value:.2f}x"
        out.append(f"| {name} | {target} | {shown} | {'yes' if met else '**no**'} |")
    return out


def _corpus_tokens(path) -> int:
    """Tokens the model sees for the corpus (each text cut at the checkpoint's max length)."""
    import bge_ref
    m = bge_ref.load(path)
    return sum(min(n, m.max_length) for n in m.count_tokens(corpus()))


if __name__ == "__main__":
    main()
