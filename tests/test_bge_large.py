"""Full bge-large-en-v1.5 size without its weights: a seeded random BertModel with the exact config
(24 x 1024, 16 heads, FFN 4096, 512 positions, vocab 30522), weights scaled to behave like a trained
model (bge_ref/testing/checkpoints.py, BGE_LARGE_SCALES), against transformers at float32 and float64 on a padded
batch holding one 512-token text. Built once per session; the 1.34 GB checkpoint and the 2.7 GB
float64 copies are freed before the tests run on the stored reports (about 3 minutes in all).
"""
import numpy as np
import pytest

from bge_ref.testing.checkpoints import BGE_LARGE_CONFIG

from .conftest import beyond_torch

pytestmark = pytest.mark.blas  # tolerances set by BLAS rounding: CI reruns these on a second kernel


def test_exact_bge_large_config_and_perturbed_layer_norms(bge_large):
    config = bge_large["config"]
    for key, value in BGE_LARGE_CONFIG.items():
        assert config[key] == value, key
    assert len(bge_large["ln"]) == 2 * (1 + 2 * 24)  # embeddings + 2 per layer, weight and bias each
    for name, p in bge_large["ln"].items():
        ref = 1.0 if name.endswith("weight") else 0.0
        assert p.shape == (1024,) and np.abs(p - ref).mean() > 0.1, name


def test_batch_is_padded_with_a_512_token_text(bge_large):
    mask = bge_large["batch"]["attention_mask"]
    assert mask.shape == (2, 512) and mask[0].all() and 2 < mask[1].sum() < 512


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_parity_with_transformers(bge_large, dtype):
    report = bge_large["reports"][dtype]
    print(report.table())
    assert len(report.rows) == 25 + 1 + 3  # hidden_states.0-24, last_hidden_state, pooled.cls/mean, embedding
    assert report.ok, report.table()
    if dtype == "float64":
        assert report.worst("hidden") <= 1e-10


def test_float32_error_no_larger_than_torch(bge_large):
    """bge_ref float32 against the float64 oracle: within 1.2x transformers' own error, max and rms,
    every stage (tests/conftest.py, ACCURACY_FACTOR; on MiniLM, and its teeth: tests/test_fast.py)."""
    over = beyond_torch(bge_large["reports"]["ours32"], bge_large["reports"]["torch32"])
    assert not over, over


def test_float32_error_no_larger_than_torch_for_one_passage(bge_large):
    """One passage of 140 tokens: fewer rows than the few-rows layout's bound (fast.FEW_ROWS), so
    the BLAS threads each projection, summed in gemm.SHORT_CHUNK-long chunks on bge-large's large
    weight matrices (gemm.chunk_length): within 1.2x transformers' error too, max and rms, every stage."""
    from bge_ref import fast, gemm
    rows = int(bge_large["passage"]["attention_mask"].sum())
    assert gemm.SHORT_CHUNK_ROWS <= rows < min(gemm.LARGE_W_ROWS, fast.FEW_ROWS)
    assert gemm.chunk_length(rows, 1024 * 1024) == gemm.SHORT_CHUNK
    reports = bge_large["reports"]["passage"]
    assert reports["float32"].ok, reports["float32"].table()
    over = beyond_torch(reports["ours32"], reports["torch32"])
    assert not over, over


def test_float32_error_no_larger_than_torch_for_one_query(bge_large):
    """One query with bge's instruction: below gemm.SMALL_ROWS rows, each large projection in column
    blocks for OpenBLAS's small-matrix kernel on bge_ref's threads (forced for this run on any
    kernel: on the SkylakeX kernel it is the forward's own path), summed in gemm.SHORT_CHUNK-long chunks:
    within 1.2x transformers' error, max and rms, every stage."""
    from bge_ref import fast, gemm
    rows = int(bge_large["query"]["attention_mask"].sum())
    assert rows < min(gemm.SMALL_ROWS, fast.BY_HEADS_ROWS) and gemm.chunk_length(rows, gemm.LARGE_W) == gemm.SHORT_CHUNK
    reports = bge_large["reports"]["query"]
    assert reports["float32"].ok, reports["float32"].table()
    over = beyond_torch(reports["ours32"], reports["torch32"])
    assert not over, over
