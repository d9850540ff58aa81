"""`bge-ref serve` under load against offline encode() of the same texts.

    python benchmarks/serve_bench.py                 # print the table
    python benchmarks/serve_bench.py --write-readme  # and replace the serve region of docs/reports/serve.md with it

For each model (the real all-MiniLM-L6-v2, and a seeded random checkpoint of bge-large-en-v1.5's exact
shapes, built once with bge_ref.testing.checkpoints.make_bge_large_random in the benchmark cache directory),
the corpus texts of benchmarks/bench.py are cut into requests of --texts-per-request texts. 1, 8 and
32 client threads (in this process) send them to a server process on a free loopback port through
/v1/embeddings with base64 vectors (what the official openai client asks for), each taking the next
request until none is left. Throughput counts tokens embedded ([CLS]/[SEP] included, after
truncation) per second of wall time; latency is per request. Offline is `encode(texts)` (batch_size
32) of the same texts in a fresh process, run before and after each round of served runs (--repeat
rounds); the fastest run of each mode is kept. Timings on a shared machine are noisy.

    python benchmarks/serve_bench.py --against b97fb2e   # and 1 client: this code's server against that revision's
    python benchmarks/serve_bench.py --queries 64 --models "bge-large (random)" --against b12c3f8
        # one short query a request (an application's questions) instead of corpus texts

--against REV also serves the 1-client run from bge_ref/ as it was at git revision REV (extracted with
`git archive` into a temporary directory, and imported from there: checked), alternating with this
code's server, --repeat rounds each, the first to run swapped every round: one run on one machine
shows whether a change made a single client faster, whatever the machine's speed that hour.
"""
from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import cache_dir, corpus  # benchmarks/bench.py, beside this file
from bge_ref.testing.readme import machine, write_region

ROOT = Path(__file__).resolve().parents[1]

CLIENTS = (1, 8, 32)
GOAL = 0.9  # served throughput at 32 clients, as a share of offline encode()'s
TEXTS = {"all-MiniLM-L6-v2": 512, "bge-large (random)": 128}


def model_path(name: str) -> Path:
    """The checkpoint of a benchmarked model; the random bge-large is built (1.34 GB) only when asked for."""
    from bge_ref.testing.checkpoints import make_bge_large_random, minilm_dir
    if name == "all-MiniLM-L6-v2":
        return minilm_dir()
    large = cache_dir() / "bge-large-random"
    if not (large / "model.safetensors").is_file():
        make_bge_large_random(large)
    return large


def offline(path: Path, texts: list[str]) -> tuple[float, int]:
    """(seconds, tokens) of encode(texts) after one warm-up batch, in a fresh process (the load
    varies on a shared machine: main() runs it before and after the served runs and keeps the best)."""
    code = ("import json, sys, time, bge_ref; texts = json.load(sys.stdin); m = bge_ref.load(sys.argv[1]); "
            "m.encode(texts[:32]); t = time.perf_counter(); m.encode(texts); s = time.perf_counter() - t; "
            "print(json.dumps([s, sum(min(n, m.max_length) for n in m.count_tokens(texts))]))")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code, str(path)], input=json.dumps(texts).encode(),
                         capture_output=True, check=True, env=env, timeout=3600)
    seconds, tokens = json.loads(out.stdout)
    return seconds, tokens


class Server:
    def __init__(self, path: Path, port: int, extra=(), root: Path = ROOT):
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(root))
        self.base = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "bge_ref", "serve", "--model", str(path),
                                      "--port", str(port), *extra], env=env, cwd=root,
                                     stderr=subprocess.DEVNULL)  # cwd: python -m puts it first on sys.path
        import requests
        for _ in range(600):  # 120 s at most
            try:
                if requests.get(self.base + "/health", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.2)
        self.stop()
        raise SystemExit("server did not start")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def served(base: str, reqs: list[list[str]], clients: int, dim: int) -> tuple[float, int, list[float]]:
    """(wall seconds, tokens, per-request latencies) of `clients` threads sending every request once."""
    import numpy as np
    import requests
    todo, lock = list(range(len(reqs))), threading.Lock()
    latencies, tokens, errors = [], [0], []

    def client():
        session = requests.Session()
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            t = time.perf_counter()
            r = session.post(base + "/v1/embeddings", json={"input": reqs[i], "encoding_format": "base64"}, timeout=600)
            body = r.json()
            vectors = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in body.get("data", [])]
            with lock:
                latencies.append(time.perf_counter() - t)
                if r.status_code != 200 or len(vectors) != len(reqs[i]) or vectors[0].shape != (dim,):
                    errors.append(f"{r.status_code}: {str(body)[:200]}")
                else:
                    tokens[0] += body["usage"]["total_tokens"]

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join(900)
    wall = time.perf_counter() - t
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, first: {errors[0]}")
    return wall, tokens[0], latencies


def percentile(values, q) -> float:
    import numpy as np
    return float(np.percentile(values, q))


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workload(name: str, path: Path, per_request: int, queries: int = 0) -> tuple[list[str], list[list[str]], int]:
    """The model's texts (the corpus, or `queries` short queries: benchmarks/latency.py's), the
    requests they are cut into, and the vectors' width."""
    from bge_ref import BertConfig
    if queries:
        from latency import texts as latency_texts  # benchmarks/latency.py, beside this file
        texts = latency_texts("query", queries)
    else:
        texts = corpus(TEXTS[name])
    reqs = [texts[i:i + per_request] for i in range(0, len(texts), per_request)]
    return texts, reqs, BertConfig.from_json(path / "config.json").hidden_size


def bench_model(name: str, path: Path, per_request: int, repeat: int, queries: int = 0) -> tuple[list[str], float]:
    texts, reqs, dim = workload(name, path, per_request, queries)
    runs = [offline(path, texts)]
    print(f"{name}: offline {runs[0][1] / runs[0][0]:,.0f} tokens/s", file=sys.stderr)
    best = {}  # clients -> (wall, tokens, latencies) of the fastest run
    for _ in range(repeat):  # offline runs before and after each round of served runs
        server = Server(path, free_port())
        try:
            served(server.base, reqs[:2], 2, dim)  # warm-up
            for c in CLIENTS:
                run = served(server.base, reqs, c, dim)
                print(f"{name}: {c} clients {run[1] / run[0]:,.0f} tokens/s", file=sys.stderr)
                if c not in best or run[0] < best[c][0]:
                    best[c] = run
        finally:
            server.stop()
        runs.append(offline(path, texts))
        print(f"{name}: offline {runs[-1][1] / runs[-1][0]:,.0f} tokens/s", file=sys.stderr)
    results = [(c, *best[c]) for c in CLIENTS]
    seconds, tokens = min(runs)
    base_rate = tokens / seconds
    rows = [f"| {name} | offline `encode()` | - | {len(texts) / seconds:,.1f} | {base_rate:,.0f} | 1.00x | - | - |"]
    ratio32 = 0.0
    for c, wall, served_tokens, lat in results:
        rate = served_tokens / wall
        ratio32 = rate / base_rate if c == 32 else ratio32
        rows.append(f"| {name} | {c} client{'s' if c > 1 else ''} | {len(reqs)} x {per_request} texts | "
                    f"{len(texts) / wall:,.1f} | {rate:,.0f} | {rate / base_rate:.2f}x | "
                    f"{percentile(lat, 50) * 1e3:,.0f} | {percentile(lat, 99) * 1e3:,.0f} |")
    return rows, ratio32


def checkout(rev: str, into: Path) -> Path:
    """bge_ref/ as it was at git revision `rev`, extracted into `into`, whose python then imports it."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "bge_ref"], capture_output=True)
    if archive.returncode:
        raise SystemExit(f"--against {rev}: git archive failed: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    env = dict(os.environ, PYTHONPATH=str(into))
    where = subprocess.run([sys.executable, "-c", "import bge_ref; print(bge_ref.__file__)"], env=env, cwd=into,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(into.resolve()):  # an installed bge_ref would shadow it
        raise SystemExit(f"--against {rev}: python imports bge_ref from {where}, not from {into}")
    return into


def against(name: str, path: Path, per_request: int, rev: str, rev_root: Path, repeat: int,
            queries: int = 0) -> list[str]:
    """1 client, this code's server and rev's alternating (`repeat` rounds, who goes first swapped
    each round): a row per server (its fastest round) and the median of the rounds' ratios."""
    _, reqs, dim = workload(name, path, per_request, queries)
    servers = [("this code", ROOT), (rev, rev_root)]
    runs = {label: [] for label, _ in servers}
    for r in range(repeat):
        for label, root in servers[::-1] if r % 2 else servers:
            server = Server(path, free_port(), root=root)
            try:
                served(server.base, reqs[:2], 2, dim)  # warm-up
                runs[label].append(served(server.base, reqs, 1, dim))
            finally:
                server.stop()
            print(f"{name}: 1 client, {label}: {runs[label][-1][1] / runs[label][-1][0]:,.0f} tokens/s", file=sys.stderr)
    import numpy as np
    ratios = [b[0] / a[0] for a, b in zip(runs["this code"], runs[rev])]  # rev's wall over this code's
    rows = []
    for label, _ in servers:
        wall, tokens, lat = min(runs[label])
        rows.append(f"| {name} | {label} | {len(reqs)} x {per_request} texts | {tokens / wall:,.0f} | "
                    f"{percentile(lat, 50) * 1e3:,.0f} | {percentile(lat, 99) * 1e3:,.0f} | "
                    + (f"**{np.median(ratios):.2f}x** ({', '.join(f'{x:.2f}' for x in ratios)}) |"
                       if label == "this code" else "1.00x |"))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--write-readme", action="store_true")
    p.add_argument("--texts-per-request", type=int, default=4)
    p.add_argument("--repeat", type=int, default=1, help="rounds of served runs, each followed by an offline run; "
                                                         "the fastest of each kept")
    p.add_argument("--models", nargs="*", default=list(TEXTS), choices=list(TEXTS))
    p.add_argument("--against", metavar="REV", help="also serve 1 client from bge_ref/ at this git revision, alternating")
    p.add_argument("--queries", type=int, default=0, metavar="N",
                   help="N short queries, one a request, instead of the corpus (the report region is not written)")
    args = p.parse_args()
    if args.queries and args.write_readme:
        p.error("--queries measures another workload than the report's: it prints its table only")
    per_request = 1 if args.queries else args.texts_per_request
    rows, goals, compared = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        rev_root = checkout(args.against, Path(tmp)) if args.against else None
        for name in args.models:
            path = model_path(name)
            r, ratio = bench_model(name, path, per_request, args.repeat, args.queries)
            rows += r
            goals.append(f"| {name}: served throughput at 32 clients vs offline encode() | >= {GOAL}x | {ratio:.2f}x | "
                         f"{'yes' if ratio >= GOAL else '**no**'} |")
            if rev_root:
                compared += against(name, path, per_request, args.against, rev_root, args.repeat, args.queries)
    table = render(rows, goals, per_request, args.repeat, compared, args.against, args.queries)
    print(table)
    if args.write_readme:
        write_region("serve", table)


def render(rows, goals, per_request, repeat, compared=(), rev=None, queries=0) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    what = (f"{queries} short queries (benchmarks/latency.py's, about 10 tokens), one per request"
            if queries else f"the corpus of benchmarks/bench.py (3 to 250 words), {per_request} per request")
    return "\n".join([
        f"Measured {when} with `python benchmarks/serve_bench.py {' '.join(sys.argv[1:])}` on: {machine()}. "
        "Server and clients share the machine; on a shared machine absolute figures are noisy.",
        "",
        f"Texts: {what}, sent to "
        "`/v1/embeddings` (base64, as the openai client asks) by 1, 8 or 32 client threads over keep-alive "
        "connections; tokens count [CLS]/[SEP] after truncation. Offline: `encode()` of the same texts "
        f"(batch_size 32) in a fresh process, before and after each of {repeat} round(s) of served runs; "
        "the fastest run of each mode is kept.",
        "",
        "| model | mode | requests | texts/s | tokens/s | vs offline | p50 ms | p99 ms |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        "| measure | target | this run | met |",
        "| --- | --- | --- | --- |",
        *goals,
        *([] if not compared else [
            "",
            f"One client against the server of revision `{rev}` (its bge_ref/, from `git archive`), the same "
            f"requests, {repeat} round(s) each, alternating: tokens/s and latency of each server's fastest round, "
            f"and this code's speed over {rev}'s (its wall time over this code's), the median of the rounds' ratios "
            "and each round's.",
            "",
            f"| model | server | requests | tokens/s | p50 ms | p99 ms | speed vs `{rev}` |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: |",
            *compared]),
    ])


if __name__ == "__main__":
    main()
