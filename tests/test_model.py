"""The reference forward pass (model.py) against transformers' BertModel on a random checkpoint, every
hidden state; the fast path (the default) too. The fast path's own machinery: tests/test_fast.py."""
import numpy as np
import pytest

import bge_ref
from bge_ref import fast
from bge_ref import model as M

from .conftest import TEXTS, hf_forward

pytestmark = pytest.mark.blas  # tolerances set by BLAS rounding: CI reruns these on a second kernel

# Measured on this machine, max abs diff over all hidden states and tokens of a 7-text padded batch:
# float64 2.7e-15, float32 1.9e-6 (tests print them with -s). The bounds leave a small margin.
TOL = {"float64": 1e-13, "float32": 5e-6}


@pytest.mark.parametrize("forward", ["reference", "fast"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_hidden_states_match_transformers(tiny, dtype, forward):
    import torch
    directory, hf = tiny
    model = bge_ref.load(directory, dtype=dtype, forward=forward)
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


@pytest.mark.parametrize("layer_norm", [M.layer_norm, fast.layer_norm], ids=["reference", "fast"])
def test_layer_norm_and_softmax_against_torch(layer_norm):
    import torch
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (4, 7, 32))
    g, b = rng.normal(1, 0.1, 32), rng.normal(0, 0.1, 32)
    ref = torch.nn.functional.layer_norm(torch.from_numpy(x), (32,), torch.from_numpy(g), torch.from_numpy(b), 1e-12)
    x_before = x.copy()
    assert np.abs(layer_norm(x, g, b, 1e-12) - ref.numpy()).max() <= 1e-13
    np.testing.assert_array_equal(x, x_before)            # the input is left as it was
    s = M.softmax(x * 30)
    np.testing.assert_allclose(s, torch.softmax(torch.from_numpy(x * 30), -1).numpy(), rtol=1e-12, atol=1e-300)
    assert np.allclose(s.sum(-1), 1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_attention_heads_against_torch_eager(dtype):
    """split_heads, attention (with the padding mask) and merge_heads against HF's eager attention."""
    import torch
    rng = np.random.default_rng(1)
    B, S, H, Dh = 3, 9, 4, 16
    q, k, v = (rng.standard_normal((B, S, H * Dh)).astype(dtype) for _ in range(3))
    mask = np.ones((B, S), int)
    mask[1, 5:] = 0                                       # one padded sequence
    bias = M.attention_mask_bias(mask, np.dtype(dtype))
    out = M.merge_heads(M.attention(*(M.split_heads(t, H) for t in (q, k, v)), bias))
    tq, tk, tv = (torch.from_numpy(t).view(B, S, H, Dh).transpose(1, 2) for t in (q, k, v))
    ref = torch.softmax(tq @ tk.transpose(-1, -2) * 0.25 + torch.from_numpy(bias), -1) @ tv
    ref = ref.transpose(1, 2).reshape(B, S, H * Dh).numpy()
    assert out.shape == (B, S, H * Dh) and out.dtype == np.dtype(dtype)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-14 if dtype == "float64" else 1e-6)


@pytest.mark.quick  # needs no torch
def test_reads_sizes_from_config(tiny):
    model = bge_ref.load(tiny[0])
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (64, 2, 4, 128)
    p = model.params["layers"][0]
    assert p["attn"]["qkv"]["w"].shape == (64, 192) and p["attn"]["qkv"]["b"].shape == (192,)
    assert p["inter"]["dense"]["w"].shape == (64, 128) and p["out"]["dense"]["w"].shape == (128, 64)
    assert p["attn_out"]["ln"]["g"].shape == p["out"]["ln"]["b"].shape == (64,)


@pytest.mark.quick  # needs no torch
@pytest.mark.parametrize("forward", ["reference", "fast"])
def test_float16_weights_keep_float32_compute_and_cosine(minilm_path, forward):
    from .conftest import cosine_rows
    m32 = bge_ref.load(minilm_path)
    m16 = bge_ref.load(minilm_path, weights_dtype="float16", forward=forward)
    assert m16.params["layers"][0]["inter"]["dense"]["w"].dtype == np.float16
    assert m16.params["layers"][0]["inter"]["dense"]["b"].dtype == np.float32
    e32, e16 = m32.encode(TEXTS), m16.encode(TEXTS)
    assert e16.dtype == np.float32
    cos = cosine_rows(e32, e16)
    print(f"float16 weights: min cosine to float32 {cos.min():.7f}")
    assert cos.min() >= 0.9999
