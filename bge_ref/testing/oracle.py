"""The float64 oracle study behind the README's Verification report (scripts/verification_report.py)
and the accuracy tests (tests/test_bge_large.py): bge_ref and transformers, each in float32 and
float64, on one batch, and the float32 error of each against bge_ref's float64 run. Needs torch."""
from __future__ import annotations

from ..verify import TOLERANCES, Report, compare_stages, load_transformers, run_ours, run_transformers


def oracle_study(runs: dict) -> dict[str, Report]:
    """Parity in both dtypes, then the float64 oracle study: the float32 error of each implementation
    against bge_ref float64 (which agrees with transformers float64 to ~1e-14), stage by stage.
    `runs` holds runs keyed ("ours" | "torch", "float32" | "float64") on one batch (four_runs); each
    carries its attention_mask."""
    oracle = runs["ours", "float64"]
    parity = {dt: compare_stages(runs["torch", dt], runs["ours", dt], TOLERANCES[dt], title=f"bge_ref vs transformers, {dt}")
              for dt in ("float32", "float64")}
    return {
        "float32": parity["float32"], "float64": parity["float64"],
        "ours32": compare_stages(oracle, runs["ours", "float32"], title="bge_ref float32 vs float64 oracle"),
        "torch32": compare_stages(oracle, runs["torch", "float32"], title="transformers float32 vs float64 oracle"),
    }


def four_runs(directory, batch) -> dict:
    """bge_ref and transformers, float32 and float64, on one batch, keyed as oracle_study wants.
    One model is in memory at a time: a bge-large float64 copy is 2.7 GB."""
    import gc

    from ..embedder import load
    pooling = load(directory).pooling
    hf = load_transformers(directory)
    runs = {("torch", "float32"): run_transformers(hf, batch, "float32", pooling),
            ("torch", "float64"): run_transformers(hf, batch, "float64", pooling)}  # model.double(), in place
    del hf
    gc.collect()
    for dtype in ("float32", "float64"):
        runs["ours", dtype] = run_ours(load(directory, dtype=dtype), batch)
        gc.collect()
    return runs
