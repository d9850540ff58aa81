"""encode() against sentence-transformers and transformers on the real all-MiniLM-L6-v2 (run() and
openai_embeddings() are tested in test_api.py)."""
import numpy as np
import pytest

import bge_ref

from .conftest import TEXTS, cosine_rows, hf_forward

pytestmark = pytest.mark.blas  # tolerances set by BLAS rounding: CI reruns these on a second kernel

MORE = TEXTS + ["Embedding models truncate long inputs. " * 200, "x" * 3, "Numbers 3.14159 and 2,718 too."]


def test_encode_matches_sentence_transformers(minilm, st_minilm):
    ours = minilm.encode(MORE, batch_size=4)
    ref = st_minilm.encode(MORE, batch_size=4, convert_to_numpy=True)
    assert ours.shape == ref.shape == (len(MORE), 384) and ours.dtype == np.float32
    cos, diff = cosine_rows(ours, ref).min(), np.abs(ours - ref).max()
    print(f"MiniLM vs sentence-transformers: worst cosine {cos:.9f}, max abs diff {diff:.2e}")
    assert cos >= 0.999999 and diff <= 1e-5


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pooling_matches_transformers(minilm, hf_minilm, pooling):
    import torch
    batch = minilm.tokenize(MORE)
    h = torch.from_numpy(hf_forward(hf_minilm, batch)[-1])
    if pooling == "cls":
        ref = h[:, 0]
    else:
        m = torch.from_numpy(batch["attention_mask"])[..., None].float()
        ref = (h * m).sum(1) / m.sum(1)
    ours = minilm.encode(MORE, pooling=pooling, normalize=False)
    assert np.abs(ours - ref.numpy()).max() <= 1e-5


@pytest.mark.quick  # needs no torch
def test_defaults_come_from_sentence_transformers_files(minilm, tiny):
    assert (minilm.pooling, minilm.normalize, minilm.max_length) == ("mean", True, 256)
    plain = bge_ref.load(tiny[0])  # no modules.json: bge's official CLS + normalize
    assert (plain.pooling, plain.normalize) == ("cls", True)


@pytest.mark.quick  # needs no torch
def test_single_string_and_order(minilm):
    one = minilm.encode("hello world")
    assert one.shape == (384,)
    many = minilm.encode(MORE, batch_size=3)
    np.testing.assert_allclose(many[0], one, atol=1e-6)
    rev = minilm.encode(MORE[::-1], batch_size=3)[::-1]
    np.testing.assert_allclose(rev, many, atol=1e-6)
    assert np.allclose(np.linalg.norm(many, axis=1), 1, atol=1e-6)


@pytest.mark.quick  # needs no torch
def test_encode_queries_prepends_instruction(minilm):
    q = minilm.encode_queries(["what is bert"])
    np.testing.assert_array_equal(q, minilm.encode([bge_ref.QUERY_INSTRUCTION + "what is bert"]))


@pytest.mark.quick  # needs no torch
def test_float64_encode(minilm_path, minilm):
    m64 = bge_ref.load(minilm_path, dtype="float64")
    a, b = m64.encode(MORE), minilm.encode(MORE)
    assert a.dtype == np.float64
    assert np.abs(a - b).max() <= 1e-5
