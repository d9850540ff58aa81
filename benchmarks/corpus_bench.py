"""embed-corpus against encode() on the same texts, and on a local Ray cluster (issue #15).

    python benchmarks/corpus_bench.py                 # print the table
    python benchmarks/corpus_bench.py --write-readme  # and replace README's corpus region with it

On all-MiniLM-L6-v2, one generated corpus (seeded): encode() on the list in this process, then
`embed-corpus` on the same texts as a .txt file (its whole job: hashing, the scan, reading, chunks
committed to disk, assembly of the .npy), both with 2 BLAS threads, interleaved, best of --repeat.
Then `embed-corpus --ray` on a local Ray cluster with 1 actor and with 2 actors of one BLAS thread
each (the cluster gets one more logical CPU, which Ray Data's read tasks need), in windows of
--ray-window texts (a window is an actor's unit of work; 2,000 texts make one default window), each timed once
from the job's start (actor start-up and checkpoint loading included) with the cluster already up.
Last, the peak RSS of a job over --memory-lines short lines (default 1,000,000) on a tiny random
model, in a fresh process. On a shared machine absolute figures are noisy: read the ratios.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]  # this checkout's bge_ref, whatever is pip-installed
from readme_regions import machine, write_region  # noqa: E402
THREADS = 2


def corpus(n, seed=0):
    """n texts of 3 to 60 words drawn from a small vocabulary, as a passage corpus has mixed lengths."""
    import numpy as np
    rng = np.random.default_rng(seed)
    words = ("the model reads each passage once and writes one vector per text so that a search index can "
             "find similar meaning across millions of documents quickly on commodity machines").split()
    return [" ".join(rng.choice(words, rng.integers(3, 61))) for _ in range(n)]


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def run(args):
    from threadpoolctl import threadpool_limits

    import bge_ref
    from bge_ref.corpus import embed_corpus
    from tests.checkpoints import minilm_dir
    model_dir = minilm_dir()
    texts = corpus(args.texts)
    work = Path(tempfile.mkdtemp(prefix="corpus-bench-"))
    src = work / "corpus.txt"
    src.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    model = bge_ref.load(model_dir)
    tokens = sum(min(n, model.max_length) for n in model.count_tokens(texts))
    rows = []
    with threadpool_limits(THREADS, user_api="blas"):
        model.encode(texts[:64])  # warm up
        # Interleaved, best of repeat: encode() on the list, then the whole job on the file.
        t_encode, t_job = [], []
        for _ in range(args.repeat):
            t_encode.append(best(lambda: model.encode(texts, batch_size=args.batch_size), 1))
            t_job.append(best(lambda: embed_corpus(src, work / "local.npy", model=model_dir, overwrite=True,
                                                   batch_size=args.batch_size, quiet=True), 1))
        t_encode, t_job = min(t_encode), min(t_job)
    rows.append(("`encode()` on the list, 2 BLAS threads", t_encode))
    rows.append(("`embed-corpus`, this machine, 2 BLAS threads", t_job))
    if not args.no_ray:
        import ray
        for actors in (1, 2):
            ray.init(address="local", num_cpus=actors + 1, include_dashboard=False, log_to_driver=False,
                     _node_ip_address="127.0.0.1")
            try:
                t = best(lambda: embed_corpus(src, work / f"ray{actors}.npy", model=model_dir, ray=True, actors=actors,
                                              window=args.ray_window, overwrite=True, batch_size=args.batch_size, quiet=True), 1)
            finally:
                ray.shutdown()
            rows.append((f"`embed-corpus --ray`, local cluster, {actors} actor{'s' * (actors > 1)} x 1 BLAS thread", t))
    memory = None
    if args.memory_lines:
        from tests.checkpoints import TINY_CONFIG, make_random_bert
        from tests.test_corpus_job import corpus_job_rss
        tiny, _ = make_random_bert(work / "tiny", TINY_CONFIG, seed=0)
        memory = corpus_job_rss(tiny, args.memory_lines, work)
    return texts, tokens, rows, memory


def table(texts, tokens, rows, memory, args) -> str:
    cmd = "python benchmarks/corpus_bench.py" + (" --write-readme" if args.write_readme else "")
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t_encode, t_job = rows[0][1], rows[1][1]
    out = [f"Measured {when} with `{cmd}` on: {machine('ray')}. all-MiniLM-L6-v2, {len(texts):,} generated texts "
           f"of 3 to 60 words ({tokens:,} tokens), batch size {args.batch_size}. encode() and the local job "
           f"interleaved, best of {args.repeat}; Ray runs timed once with the cluster up (actor start-up and "
           f"checkpoint loading included), windows of {args.ray_window} texts so that each actor has several.", "",
           "| run | seconds | tokens/s | vs `encode()` |", "| --- | ---: | ---: | ---: |"]
    for name, t in rows:
        out.append(f"| {name} | {t:.1f} | {tokens / t:,.0f} | {t_encode / t:.2f}x |")
    overhead = t_job / t_encode - 1
    out += ["", f"Machinery of the local job (hash, scan, reading twice, tokenizing for the sort, chunks on disk, "
            f"assembly) against `encode()`: **{overhead:+.1%}** (goal: at most +5%: "
            f"{'met' if overhead <= 0.05 else '**not met**'})."]
    if memory:
        base, peak = memory
        out += ["", f"Memory: `embed-corpus` over {args.memory_lines:,} short lines (3 words; the tiny random "
                f"model of the tests, so that the job's machinery, not the forward, is measured), batch size 1024, "
                f"in a fresh process: peak RSS {peak:.0f} MB, **{peak - base:.0f} MB above** the {base:.0f} MB "
                f"with the model loaded and one batch run (goal: at most 300 MB)."]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray runs")
    ap.add_argument("--ray-window", type=int, default=256,
                    help="texts per window on Ray (a window is an actor's unit of work: 2 actors need 2 or more)")
    ap.add_argument("--memory-lines", type=int, default=1_000_000, help="lines of the memory run (0: skip it)")
    ap.add_argument("--write-readme", action="store_true", help="replace README.md's corpus region")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    text = table(*run(args), args)
    print(text)
    if args.write_readme:
        write_region("corpus", text)


if __name__ == "__main__":
    main()
