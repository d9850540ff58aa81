"""Measure the `bge-ref compare --tolerance` presets; write the compare-tolerances region of docs/reports/verification.md.

    HF_HUB_OFFLINE=1 python scripts/compare_tolerances.py [--no-large] [--no-write]

For each model (the real all-MiniLM-L6-v2 on verify's 7 mixed texts; the bge-large-size random model
on a padded batch holding a 512-token text, unless --no-large), bge_ref's float64 reference is
written with `bge_ref.verify.write_reference`, then every implementation below writes its own dump
of that batch in a fresh process (so the kernel-selecting environment variables take effect), and
`compare_stages` measures each dump against the reference, exactly as `bge-ref compare` does:

    float32  transformers (torch's default kernels, and forced to AVX2: ATEN_CPU_CAPABILITY=avx2,
             MKL_ENABLE_INSTRUCTIONS=AVX2), bge_ref float32 (OpenBLAS forced to its Haswell and, where
             the CPU has AVX-512, SkylakeX kernels), ONNX Runtime float32 (the exported BertModel)
    float16  transformers after model.half()
    int8     ONNX Runtime, the same export after onnxruntime.quantization.quantize_dynamic (int8 weights)

Each preset must cover the worst stage of its implementations on both models with a margin (MARGIN);
the script prints the measured table, says which preset lacks that margin and exits 1 if one does.
Also writes the compare-example region: `bge-ref compare` on a MiniLM dump from transformers run with
the tanh GELU (hidden_act="gelu_new"), a typical bug. Replaces only the text between the
compare-tolerances and compare-example markers, on the pages bge_ref.testing.readme.PAGES names
(docs/reports/verification.md, docs/tutorials/verifier.md). About 8 minutes, 6 GB.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import bge_ref
from bge_ref.dump import read_dump
from bge_ref.testing.checkpoints import BGE_LARGE_TEXTS, make_bge_large_random, minilm_dir
from bge_ref.testing.readme import machine, write_region
from bge_ref.verify import DEFAULT_TEXTS, TOLERANCES, compare_stages, write_reference

ROOT = Path(__file__).resolve().parents[1]

COMMAND = "HF_HUB_OFFLINE=1 python scripts/compare_tolerances.py"
MARGIN = 2.0       # a preset is at least this many times the worst stage measured for it
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def implementations() -> dict:
    """{name: (preset, how the child runs it, extra environment)}."""
    impls = {
        "transformers float32": ("float32", "transformers-float32", {}),
        "transformers float32, AVX2 kernels": ("float32", "transformers-float32", AVX2),
        "bge_ref float32, OpenBLAS Haswell": ("float32", "bge_ref-float32", {"OPENBLAS_CORETYPE": "Haswell"}),
    }
    if "avx512f" in Path("/proc/cpuinfo").read_text():
        impls["bge_ref float32, OpenBLAS SkylakeX"] = ("float32", "bge_ref-float32", {"OPENBLAS_CORETYPE": "SkylakeX"})
    impls.update({
        "onnxruntime float32": ("float32", "onnxruntime", {}),
        "transformers float16": ("float16", "transformers-float16", {}),
        "onnxruntime int8 (dynamic quantization)": ("int8", "onnxruntime-int8", {}),
    })
    return impls


# -- the child: one implementation writes its dump of the reference's batch ------------------------
def child(how, model, ref_path, out, onnx_dir):
    """Run one implementation on the reference's batch and save its run as .npz, as its user would."""
    import torch
    torch.set_num_threads(2)
    from bge_ref.testing import dumps
    ref, meta = read_dump(ref_path)
    batch = {k: np.array(ref[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
    pooling = meta["pooling"]
    if how == "transformers-gelu_new":
        run = dumps.transformers_run(model, batch, "float32", pooling, hidden_act="gelu_new")
    elif how.startswith("transformers-"):
        run = dumps.transformers_run(model, batch, how.split("-")[1], pooling)
    elif how == "bge_ref-float32":
        from bge_ref.verify import run_ours
        run = run_ours(bge_ref.load(model), batch, pooling)
    else:
        run = dumps.onnx_run(Path(onnx_dir) / ("int8.onnx" if how.endswith("int8") else "model.onnx"), batch, pooling)
    np.savez(out, **run)


# -- the parent ---------------------------------------------------------------------------------------
def measure(name, model, texts, tmp: Path) -> tuple[dict, float]:
    """({implementation: Report}, largest |hidden value|) for one model, each dump against bge_ref's
    float64 reference."""
    from bge_ref.testing import dumps
    ref_path = tmp / f"{name}.ref.safetensors"
    ref, _ = write_reference(ref_path, model, texts)
    batch = {k: ref[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    onnx = dumps.export_onnx(model, tmp / "model.onnx", batch)
    dumps.quantize_int8(onnx, tmp / "int8.onnx")
    reports = {}
    for impl, (_, how, env) in implementations().items():
        out = tmp / f"{name}.dump.npz"
        t = time.time()
        subprocess.run([sys.executable, __file__, "--child", how, "--model", str(model), "--ref", str(ref_path),
                        "--out", str(out), "--onnx-dir", str(tmp)], check=True, env=dict(os.environ, **env))
        theirs, _ = read_dump(out)
        reports[impl] = compare_stages(ref, theirs, title=f"{impl} vs float64 reference, {name}")
        print(f"{name}: {impl}: hidden {reports[impl].worst('hidden'):.2e}, embedding "
              f"{reports[impl].worst('embedding'):.2e} ({time.time() - t:.0f} s)", flush=True)
        out.unlink()
    for f in ("model.onnx", "int8.onnx"):
        (tmp / f).unlink()
    real = ref["attention_mask"].astype(bool)
    return reports, max(float(np.abs(v[real]).max()) for k, v in ref.items() if k.startswith("hidden_states."))


def worst_row(report, kind):
    return max((r for r in report.rows if (r.stage == "embedding") == (kind == "embedding")), key=lambda r: r.max_abs)


def render(results, shapes, peaks, seconds, machine) -> tuple[str, list[str]]:
    impls = implementations()
    lines = [
        f"Generated by `{COMMAND}` ({seconds / 60:.0f} min) on {machine}. Each implementation wrote its own dump "
        "of the reference's batch in a fresh process, and `compare` measured it against bge_ref's float64 reference "
        "(`bge-ref reference`); max abs diff over real tokens, worst stage of each kind. " + "; ".join(
            f"{name}: {B} texts padded to {S} tokens" for name, (B, S) in shapes.items()) + ".",
        "",
        "| implementation | preset | model | worst hidden stage | max abs | embedding max abs | worst cos (embedding) |",
        "| --- | --- | --- | --- | ---: | ---: | ---: |",
    ]
    for impl, (preset, _, env) in impls.items():
        for model, reports in results.items():
            r = reports[impl]
            h, e = worst_row(r, "hidden"), worst_row(r, "embedding")
            lines.append(f"| {impl} | {preset} | {model} | {h.stage} | {h.max_abs:.2e} | {e.max_abs:.2e} | "
                         f"1-{e.one_minus_cos:.1e} |")
    lines += ["", f"The presets (`bge_ref.verify.TOLERANCES`, shared with `bge-ref verify`): each must be at least {MARGIN:g}x the worst stage measured "
              "for it, over every implementation of its precision on both models.", "",
              "| preset | stages | tolerance (max abs diff) | worst measured | by | margin |",
              "| --- | --- | ---: | ---: | --- | ---: |"]
    short = []
    measured = {p for p, _, _ in impls.values()}
    for preset, tols in ((p, t) for p, t in TOLERANCES.items() if p in measured):
        for kind, tol in tols.items():
            worst, impl, model = max((worst_row(reports[i], kind).max_abs, i, m) for m, reports in results.items()
                                     for i, (p, _, _) in impls.items() if p == preset)
            lines.append(f"| {preset} | {'hidden states, pooled' if kind == 'hidden' else 'embedding'} | {tol:.0e} | "
                         f"{worst:.2e} | {impl}, {model} | {tol / worst:.1f}x |")
            if tol < MARGIN * worst:
                short.append(f"{preset} {kind}: {tol:.0e} < {MARGIN:g} x {worst:.2e} ({impl}, {model})")
    lines += ["", "The kernels differ by machine (OpenBLAS picks Haswell or SkylakeX kernels by CPU; torch its AVX2 or "
              "AVX-512 code and MKL's), so the float32 preset covers both kernel families of each library. The int8 "
              "figures are for ONNX Runtime's dynamic quantization of every MatMul (and the embedding Gather): other "
              "int8 schemes can be better or worse. Max abs diffs scale with the activations, so these presets fit "
              "BERT checkpoints whose hidden states are of the size measured here (largest |value| on a real token: "
              + ", ".join(f"{m} {v:.1f}" for m, v in peaks.items()) + "); for another model, measure with this "
              "script or pass `--tolerance ABS`."]
    return "\n".join(lines), short


def example(tmp: Path) -> str:
    """`bge-ref compare` as a user runs it, on MiniLM's reference and a tanh-GELU transformers dump."""
    d = tmp / "example"
    d.mkdir()
    (tmp / "MiniLM.ref.safetensors").rename(d / "ref.safetensors")
    subprocess.run([sys.executable, __file__, "--child", "transformers-gelu_new", "--model", str(minilm_dir()),
                    "--ref", str(d / "ref.safetensors"), "--out", str(d / "mine.npz")], check=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    r = subprocess.run([sys.executable, "-m", "bge_ref", "compare", "ref.safetensors", "mine.npz"], cwd=d, env=env,
                       capture_output=True, text=True)
    if r.returncode != 1:
        raise SystemExit(f"the gelu_new example should fail with status 1, got {r.returncode}: {r.stderr}")
    return f"```text\n$ bge-ref compare ref.safetensors mine.npz\n{r.stdout.rstrip()}\n```"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    p.add_argument("--no-write", action="store_true", help="print the regions instead of writing them to their docs pages")
    p.add_argument("--no-large", action="store_true", help="MiniLM only (the bge-large-size model takes ~4 min)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--ref", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--onnx-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.model, args.ref, args.out, args.onnx_dir)
        return 0
    start = time.time()
    results, shapes, peaks = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="compare_tol_") as tmp:
        tmp = Path(tmp)
        models = [("MiniLM", lambda: minilm_dir(), DEFAULT_TEXTS)]
        if not args.no_large:
            models.append(("bge-large size", lambda: make_bge_large_random(tmp / "bge_large", seed=0)[0], BGE_LARGE_TEXTS))
        for name, make, texts in models:
            results[name], peaks[name] = measure(name, make(), texts, tmp)
            shapes[name] = next(iter(results[name].values())).shape
        shown = example(tmp)
    text, short = render(results, shapes, peaks, time.time() - start, machine("torch", "onnxruntime"))
    print(shown, text, sep="\n\n")
    if not args.no_write:
        for name, body in {"compare-tolerances": text, "compare-example": shown}.items():
            write_region(name, body, Path(args.readme))
        print(f"wrote the compare-tolerances and compare-example regions of {args.readme}")
    for s in short:
        print(f"PRESET WITHOUT ITS MARGIN: {s}", file=sys.stderr)
    return 1 if short else 0


if __name__ == "__main__":
    sys.exit(main())
