"""The NumPy forward pass against transformers' BertModel on a random checkpoint, every hidden state."""
import numpy as np
import pytest
import torch

import bge_ref
from bge_ref import model as M
from bge_ref.model import layer_norm, softmax

from .conftest import TEXTS, hf_forward

pytestmark = pytest.mark.blas  # tolerances set by BLAS rounding: CI reruns these on a second kernel

# Measured on this machine, max abs diff over all hidden states and tokens of a 7-text padded batch:
# float64 2.7e-15, float32 1.9e-6 (tests print them with -s). The bounds leave a small margin.
TOL = {"float64": 1e-13, "float32": 5e-6}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_hidden_states_match_transformers(tiny, dtype):
    directory, hf = tiny
    model = bge_ref.load(directory, dtype=dtype)
    batch = model.tokenize(TEXTS)
    batch["token_type_ids"][1::2, 3:] = 1  # second segments, as in sentence pairs
    assert (batch["attention_mask"] == 0).any()  # the batch really is padded
    last, states = model.forward(**batch, output_hidden_states=True)
    ref = hf_forward(hf, batch, torch.float64 if dtype == "float64" else torch.float32)
    assert len(states) == len(ref) == model.config.num_hidden_layers + 1
    assert last.dtype == np.dtype(dtype) and all(s.dtype == np.dtype(dtype) for s in states)
    np.testing.assert_array_equal(last, states[-1])
    real = batch["attention_mask"].astype(bool)
    for i, (a, b) in enumerate(zip(states, ref)):
        diff = np.abs(a - b)[real].max()
        print(f"{dtype} hidden state {i}: max abs diff {diff:.2e}")
        assert diff <= TOL[dtype], f"hidden state {i}: {diff}"


def test_unpadded_batch_skips_mask_and_matches(tiny):
    directory, hf = tiny
    model = bge_ref.load(directory, dtype="float64")
    batch = model.tokenize(["same length text", "same length text"])
    assert batch["attention_mask"].all()
    ref = hf_forward(hf, batch, torch.float64)[-1]
    assert np.abs(model.forward(**batch) - ref).max() <= TOL["float64"]


def test_layer_norm_and_softmax_against_torch():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (4, 7, 32))
    g, b = rng.normal(1, 0.1, 32), rng.normal(0, 0.1, 32)
    ref = torch.nn.functional.layer_norm(torch.from_numpy(x), (32,), torch.from_numpy(g), torch.from_numpy(b), 1e-12)
    assert np.abs(layer_norm(x, g, b, 1e-12) - ref.numpy()).max() <= 1e-13
    s = softmax(x * 30)
    np.testing.assert_allclose(s, torch.softmax(torch.from_numpy(x * 30), -1).numpy(), rtol=1e-12, atol=1e-300)
    assert np.allclose(s.sum(-1), 1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("logit_scale", [1.0, 40.0])  # 40: scores far beyond exp's range
@pytest.mark.filterwarnings("error")                    # and no overflow warning escapes
def test_attention_against_torch_eager(dtype, logit_scale, monkeypatch):
    """attention() normalizes after @ V, and skips the max shift only while exp stays in range."""
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((3, 4, 9, 16)).astype(dtype) for _ in range(3))
    q *= logit_scale
    mask = np.ones((3, 9), int)
    mask[1, 5:] = 0                                       # one padded sequence
    bias = M.attention_mask_bias(mask, np.dtype(dtype))
    tq, tk, tv, tb = (torch.from_numpy(a) for a in (q, k, v, bias))
    ref = (torch.softmax(tq @ tk.transpose(-1, -2) * 0.25 + tb, -1) @ tv).numpy()  # HF's eager attention
    calls, plain = [], M.attention
    monkeypatch.setattr(M, "attention", lambda *a, **kw: calls.append(kw.get("shift", False)) or plain(*a, **kw))
    out = M.attention(q, k, v, bias)
    assert calls == ([False] if logit_scale == 1 else [False, True])  # the guard fired only when needed
    assert np.isfinite(out).all()
    rel = np.abs(out - ref).max() / np.abs(ref).max()
    print(f"{dtype} logits x{logit_scale}: max rel diff to torch {rel:.1e}")
    assert rel <= (1e-14 if dtype == "float64" else 1e-6)


def test_reads_sizes_from_config(tiny):
    model = bge_ref.load(tiny[0])
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (64, 2, 4, 128)
    assert model.params["layers"][0]["qkv_w"].shape == (64, 192)
    assert model.params["layers"][0]["inter_w"].shape == (64, 128)


def test_float16_weights_keep_float32_compute_and_cosine(minilm_path):
    from .conftest import cosine_rows
    m32 = bge_ref.load(minilm_path)
    m16 = bge_ref.load(minilm_path, weights_dtype="float16")
    assert m16.params["layers"][0]["inter_w"].dtype == np.float16
    assert m16.params["layers"][0]["inter_b"].dtype == np.float32
    e32, e16 = m32.encode(TEXTS), m16.encode(TEXTS)
    assert e16.dtype == np.float32
    cos = cosine_rows(e32, e16)
    print(f"float16 weights: min cosine to float32 {cos.min():.7f}")
    assert cos.min() >= 0.9999


def test_threaded_forward_matches_single_threaded(tiny, monkeypatch):
    """The thread pool only splits independent rows and heads: results are bit-identical."""
    from bge_ref import threads
    model = bge_ref.load(tiny[0])
    batch = model.tokenize(TEXTS)
    threaded = model.forward(**batch)
    monkeypatch.setattr(threads, "THREADS", 1)
    np.testing.assert_array_equal(threaded, model.forward(**batch))


def test_without_threadpoolctl_attention_blocks_run_in_the_calling_thread(tiny, monkeypatch):
    """threadpoolctl is optional at runtime: without it BLAS keeps its threads, so the attention
    blocks run one after the other in the caller's thread, never concurrently on the pool."""
    import threading

    from bge_ref import threads
    model = bge_ref.load(tiny[0])
    batch = model.tokenize(TEXTS)
    with_ctl = model.forward(**batch)
    monkeypatch.setattr(threads, "_blas_controller", False)  # what blas_single_threaded caches on ImportError
    assert threads.blas_single_threaded() is None
    monkeypatch.setattr(M, "SCORES_BLOCK_BYTES", 1)      # one sequence per block: several blocks
    ran_in, plain = set(), M.attention
    monkeypatch.setattr(M, "attention", lambda *a, **kw: ran_in.add(threading.current_thread()) or plain(*a, **kw))
    np.testing.assert_allclose(model.forward(**batch), with_ctl, rtol=0, atol=1e-6)
    assert ran_in == {threading.current_thread()}
