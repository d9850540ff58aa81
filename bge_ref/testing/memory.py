"""Peak memory of an embed-corpus job, in a fresh process: for tests/test_corpus.py (300,000 lines)
and benchmarks/corpus_bench.py (1,000,000)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np

from . import subprocess_env

WORDS = ("the quick brown fox jumps over a lazy dog while embeddings of passages fill "
         "an index for retrieval café naïve 東京 🙂").split()

MEMORY_CHILD = """
import sys
import bge_ref
from bge_ref.cli import main

def peak_mb():  # VmHWM: this process's own peak (ru_maxrss would carry the parent's over fork and exec)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024

bge_ref.load(sys.argv[1]).encode(["warm up"] * 1024, batch_size=1024)
base = peak_mb()
status = main(["embed-corpus", sys.argv[2], "-o", sys.argv[3], "--model", sys.argv[1], "--batch-size", "1024",
               "--quiet"])
print(base, peak_mb(), status)
"""


def corpus_job_rss(model_dir, n_lines, work) -> tuple[float, float]:
    """(MB of peak RSS with the model loaded and one batch run, MB of peak RSS at the end of an
    embed-corpus job over n_lines short lines), in a fresh process."""
    rng = np.random.default_rng(7)
    words = np.array(WORDS[:16])
    with open(work / "m.txt", "w") as f:
        for lo in range(0, n_lines, 10_000):
            picks = words[rng.integers(0, len(words), (min(10_000, n_lines - lo), 3))]
            f.write("".join(" ".join(p) + "\n" for p in picks))
    r = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(model_dir), str(work / "m.txt"), str(work / "m.npy")],
                       capture_output=True, text=True, timeout=3600, env=subprocess_env(BGE_REF_THREADS=1))
    assert r.returncode == 0, r.stderr
    base, peak, status = r.stdout.split()[-3:]
    assert status == "0" and np.load(work / "m.npy", mmap_mode="r").shape[0] == n_lines
    return float(base), float(peak)
