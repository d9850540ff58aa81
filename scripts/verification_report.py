"""Measure bge_ref against transformers and write the tables into README.md's verification region.

    python scripts/verification_report.py [--readme README.md] [--no-write]

Runs bge_ref and transformers' BertModel, float32 and float64, on (1) the real all-MiniLM-L6-v2 and
(2) a bge-large-size random model (24 x 1024, scaled weights) with a padded batch holding a 512-token
text; then the float64 oracle study (each float32 implementation against bge_ref float64). Replaces
only the text between the `<!-- BEGIN verification` and `<!-- END verification -->` markers, with a
read-modify-write right at the end (others write other regions of README.md). About 4 minutes, 6 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))      # this checkout's bge_ref
sys.path.insert(0, str(ROOT / "scripts"))

import bge_ref  # noqa: E402
from tests.checkpoints import BGE_LARGE_TEXTS, make_bge_large_random, minilm_dir  # noqa: E402
from bge_ref.verify import DEFAULT_TEXTS, TOLERANCES, format_table, four_runs, oracle_study  # noqa: E402

COMMAND = "HF_HUB_OFFLINE=1 python scripts/verification_report.py"
MARKERS = re.compile(r"(<!-- BEGIN verification[^\n]*-->\n)(.*?)(<!-- END verification -->)", re.S)


def study(directory, texts) -> tuple[dict, tuple]:
    batch = bge_ref.load(directory).tokenize(texts)
    return oracle_study(four_runs(directory, batch)), batch["input_ids"].shape


def oracle_table(reports) -> str:
    """Per stage: each float32 implementation's error against the float64 oracle, side by side."""
    lines = ["| stage | bge_ref f32 max abs | torch f32 max abs | bge_ref f32 rms | torch f32 rms | rms ratio | "
             "bge_ref worst cos | torch worst cos |", "| --- |" + " ---: |" * 7]
    for a, b in zip(reports["ours32"].rows, reports["torch32"].rows):
        lines.append(f"| {a.stage} | {a.max_abs:.2e} | {b.max_abs:.2e} | {a.rms:.2e} | {b.rms:.2e} | "
                     f"{a.rms / b.rms:.3f} | 1-{a.one_minus_cos:.1e} | 1-{b.one_minus_cos:.1e} |")
    return "\n".join(lines)


def ratio_range(reports) -> str:
    r = [a.rms / b.rms for a, b in zip(reports["ours32"].rows, reports["torch32"].rows)]
    return f"{min(r):.2f}-{max(r):.2f}"


def worst_ratios(reports) -> dict:
    """bge_ref's float32 error over transformers', worst stage, by max abs and by rms."""
    pairs = list(zip(reports["ours32"].rows, reports["torch32"].rows))
    return {"max": max(a.max_abs / b.max_abs for a, b in pairs), "rms": max(a.rms / b.rms for a, b in pairs)}


def blas_kernel() -> tuple[str, str]:
    """NumPy's OpenBLAS kernel (threadpoolctl), and the CPU."""
    import numpy  # noqa: F401  (loads the BLAS threadpoolctl reports)
    from threadpoolctl import threadpool_info
    kernel = next((i.get("architecture", "?") for i in threadpool_info()
                   if i["user_api"] == "blas" and any(k in i["filepath"] for k in ("numpy", "scipy_openblas"))), "?")
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "unknown CPU")
    return kernel, cpu


LOWER_KERNELS = {"SkylakeX": "Haswell", "Cooperlake": "Haswell", "SapphireRapids": "Haswell"}


def kernel_rows(res, kernel, cpu, forced=None) -> list[str]:
    """One line per model: the worst ratios on this kernel; `forced` when run with OPENBLAS_CORETYPE."""
    how = f"{kernel} (forced with OPENBLAS_CORETYPE)" if forced else f"{kernel} (this CPU's own)"
    return [f"| {cpu} | {how} | {name} | {r['max']:.2f} | {r['rms']:.2f} |" for name, r in res.items()]


def summary_rows(name, reports) -> list[str]:
    rows = []
    for label, r in [("bge_ref vs transformers, float64", reports["float64"]),
                     ("bge_ref vs transformers, float32", reports["float32"]),
                     ("bge_ref float32 vs float64 oracle", reports["ours32"]),
                     ("transformers float32 vs float64 oracle", reports["torch32"])]:
        rows.append(f"| {name} | {label} | {r.worst('hidden'):.2e} | {r.worst('embedding'):.2e} | "
                    f"{max(x.max_rel for x in r.rows):.2e} | 1-{max(x.one_minus_cos for x in r.rows):.1e} |")
    return rows


def tolerance_table(all_reports) -> str:
    lines = ["| dtype | stages | tolerance (max abs diff) | worst measured | on | margin |", "| --- | --- | ---: | ---: | --- | ---: |"]
    for dtype, tols in TOLERANCES.items():
        for kind, tol in tols.items():
            worst, on = max((r[dtype].worst(kind), name) for name, r in all_reports.items())
            lines.append(f"| {dtype} | {'hidden states, pooled' if kind == 'hidden' else 'embedding (normalized)'} | "
                         f"{tol:.0e} | {worst:.2e} | {on} | {tol / worst:.1f}x |")
    return "\n".join(lines)


def details(summary, body) -> str:
    return f"<details><summary>{summary}</summary>\n\n{body}\n\n</details>"


def render(res, stats, seconds, kernels) -> str:
    (mini, mini_shape), (large, large_shape) = res["MiniLM"], res["bge-large size"]
    kernel, cpu = blas_kernel()
    out = [
        f"Generated by `{COMMAND}` ({seconds / 60:.0f} min on 2 shared cores) on {cpu}, NumPy's OpenBLAS with its "
        f"{kernel} kernel (the tables); the kernel table below adds a run under the AVX2 kernel that machines "
        "without AVX-512 get. Every stage is compared on real "
        "(non-padding) tokens only. `bge-ref verify --model DIR [--dtype float64] [--json]` prints the same "
        "per-stage table for any checkpoint and exits 1 when a stage exceeds its tolerance.",
        "",
        f"- **MiniLM**: the real all-MiniLM-L6-v2 (6 x 384), {mini_shape[0]} mixed texts padded to {mini_shape[1]} tokens.",
        f"- **bge-large size**: `scripts/make_bge_large_random.py`, bge-large-en-v1.5's exact config (24 x 1024, 16 heads, "
        f"FFN 4096, 512 positions, vocab 30522) with seeded random weights, every LayerNorm perturbed, a batch of "
        f"{large_shape[0]} texts padded to {large_shape[1]} tokens (one is 512 tokens long). The real weights are unreachable here.",
        "",
        "Columns: max abs diff; max rel diff (the worst token's |a-b|/|b|, L2 over the hidden dim); "
        "rms diff; worst cosine between matching vectors.",
        "",
        "| model | comparison | max abs, hidden states | max abs, embedding | max rel | worst cos |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        *summary_rows("MiniLM", mini), *summary_rows("bge-large size", large),
        "",
        "### The float64 oracle",
        "",
        "bge_ref in float64 agrees with transformers after `model.double()` to the max abs diffs above (goal: 1e-10), "
        "so either is an oracle for the exact function of the checkpoint. Against it, the float32 error of bge_ref "
        "and of transformers, per stage, bge-large size:",
        "",
        oracle_table(large),
        "",
        details("the same on MiniLM", oracle_table(mini)),
        "",
        f"rms ratio bge_ref / transformers over the stages: MiniLM {ratio_range(mini)}, bge-large size "
        f"{ratio_range(large)}. The accepted bound is 1.2 for both the max and the rms error at every stage "
        "(`tests/test_bge_large.py`, `tests/test_fast.py`, run by CI on both kernels). Two things keep the fast "
        "path under it. OpenBLAS's sgemm sums runs of 256 products in a register (1.2x torch's MKL error with the "
        "Haswell kernel, 1.4x with SkylakeX), so `bge_ref/gemm.py` sums each projection over K in chunks of 128 "
        "(0.8x). And a float32 LayerNorm rounds four times, up to ~3 ulp at BERT's outlier dimensions, where a "
        "layer's largest errors sit, so the fast path normalizes in float64 and rounds once "
        "(`scripts/fp32_error_attribution.py` measures each operation alone).",
        "",
        "bge_ref's float32 error over transformers', worst stage, on each OpenBLAS kernel measured:",
        "",
        "| CPU | OpenBLAS kernel | model | max abs ratio | rms ratio |",
        "| --- | --- | --- | ---: | ---: |",
        *kernels,
        "",
        "### Tolerances",
        "",
        "`bge_ref.verify.TOLERANCES`, used by `bge-ref verify` and the tests: a small margin over the worst stage measured.",
        "",
        tolerance_table({"MiniLM": mini, "bge-large size": large}),
        "",
        "### Random weights that behave like trained ones",
        "",
        "The 0.02-std init gives uniform attention. `BGE_LARGE_SCALES` (Q, K x4: sharper attention; V and attention "
        "output x0.5: a residual-dominated stream, so tokens stay distinct; FFN x1.5: GELU's working range) brings the "
        "statistics near the trained MiniLM's (4 texts, real tokens):",
        "",
        stats,
        "",
        "### Per-stage tables",
        "",
    ]
    for name, (reports, _) in res.items():
        for key in ("float32", "float64"):
            r = reports[key]
            out += [details(f"{name}: {r.title}", format_table(r.rows, markdown=True)), ""]
    return "\n".join(out)


def write_region(readme: Path, text: str):
    """Replace only the verification region; read and write back to back, as others edit README too."""
    old = readme.read_text(encoding="utf-8")
    if not MARKERS.search(old):
        raise SystemExit(f"{readme}: verification markers not found")
    readme.write_text(MARKERS.sub(lambda m: m.group(1) + text + "\n" + m.group(3), old, count=1), encoding="utf-8")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    p.add_argument("--no-write", action="store_true", help="print the region instead of writing README")
    p.add_argument("--ratios-json", help=argparse.SUPPRESS)  # child run on a forced kernel: write the ratios only
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(2)
    from make_bge_large_random import compare_stats
    start = time.time()
    res = {"MiniLM": study(minilm_dir(), DEFAULT_TEXTS)}
    with tempfile.TemporaryDirectory(prefix="bge_large_") as tmp:
        _, model = make_bge_large_random(tmp, seed=0)
        stats = compare_stats(model) if not args.ratios_json else None
        del model
        res["bge-large size"] = study(tmp, BGE_LARGE_TEXTS)
    ratios = {name: worst_ratios(reports) for name, (reports, _) in res.items()}
    kernel, cpu = blas_kernel()
    if args.ratios_json:
        Path(args.ratios_json).write_text(json.dumps({"kernel": kernel, "cpu": cpu, "ratios": ratios}))
        return 0
    kernels = kernel_rows(ratios, kernel, cpu)
    if kernel in LOWER_KERNELS and not os.environ.get("OPENBLAS_CORETYPE"):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "ratios.json"
            subprocess.run([sys.executable, __file__, "--ratios-json", str(out)], check=True,
                           env=dict(os.environ, OPENBLAS_CORETYPE=LOWER_KERNELS[kernel]))
            child = json.loads(out.read_text())
        kernels += kernel_rows(child["ratios"], child["kernel"], child["cpu"], forced=True)
    text = render(res, stats, time.time() - start, kernels)
    for name, (reports, _) in res.items():
        for r in reports.values():
            print(f"{name}: {r.title}\n{r.table()}\n")
    if args.no_write:
        print(text)
    else:
        write_region(Path(args.readme), text)
        print(f"wrote the verification region of {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
