"""encode() against sentence-transformers and transformers on the real all-MiniLM-L6-v2; run()'s schema."""
import numpy as np
import pytest
import torch

import bge_ref
from bge_ref import InputError

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
    batch = minilm.tokenize(MORE)
    h = torch.from_numpy(hf_forward(hf_minilm, batch)[-1])
    if pooling == "cls":
        ref = h[:, 0]
    else:
        m = torch.from_numpy(batch["attention_mask"])[..., None].float()
        ref = (h * m).sum(1) / m.sum(1)
    ours = minilm.encode(MORE, pooling=pooling, normalize=False)
    assert np.abs(ours - ref.numpy()).max() <= 1e-5


def test_defaults_come_from_sentence_transformers_files(minilm, tiny):
    assert (minilm.pooling, minilm.normalize, minilm.max_length) == ("mean", True, 256)
    plain = bge_ref.load(tiny[0])  # no modules.json: bge's official CLS + normalize
    assert (plain.pooling, plain.normalize) == ("cls", True)


def test_single_string_and_order(minilm):
    one = minilm.encode("hello world")
    assert one.shape == (384,)
    many = minilm.encode(MORE, batch_size=3)
    np.testing.assert_allclose(many[0], one, atol=1e-6)
    rev = minilm.encode(MORE[::-1], batch_size=3)[::-1]
    np.testing.assert_allclose(rev, many, atol=1e-6)
    assert np.allclose(np.linalg.norm(many, axis=1), 1, atol=1e-6)


def test_encode_queries_prepends_instruction(minilm):
    q = minilm.encode_queries(["what is bert"])
    np.testing.assert_array_equal(q, minilm.encode([bge_ref.QUERY_INSTRUCTION + "what is bert"]))


def test_float64_encode(minilm_path, minilm):
    m64 = bge_ref.load(minilm_path, dtype="float64")
    a, b = m64.encode(MORE), minilm.encode(MORE)
    assert a.dtype == np.float64
    assert np.abs(a - b).max() <= 1e-5


def test_run_matches_hosted_schema(minilm):
    out = minilm.run({"text": ["hello world", "second"]})
    assert out["shape"] == [2, 384] and out["pooling"] == "mean"
    np.testing.assert_allclose(np.array(out["data"]), minilm.encode(["hello world", "second"], pooling="mean"),
                               atol=1e-7)
    single = minilm.run({"text": "hello world", "pooling": "cls"})
    assert single["shape"] == [1, 384] and single["pooling"] == "cls"
    both = minilm.run({"requests": [{"text": "a"}, {"text": ["b", "c"], "pooling": "cls"}]})
    assert [r["shape"] for r in both["responses"]] == [[1, 384], [2, 384]]


@pytest.mark.parametrize("payload, field", [
    ({}, "'text' is required"),
    ({"text": ""}, "text[0]: empty string"),
    ({"text": ["ok", ""]}, "text[1]: empty string"),
    ({"text": ["x"] * 101}, "between 1 and 100"),
    ({"text": []}, "between 1 and 100"),
    ({"text": "x", "pooling": "max"}, "pooling"),
    ({"text": "x", "extra": 1}, "unknown field"),
    ({"text": 5}, "must be a str"),
    ({"requests": [{"text": "x"}, {"txt": "y"}]}, "requests[1]"),
    ([], "JSON object"),
])
def test_run_rejects_bad_payloads(minilm, payload, field):
    with pytest.raises(InputError, match=None) as err:
        minilm.run(payload)
    assert field in str(err.value)
    assert isinstance(err.value, ValueError)


def test_openai_embeddings(minilm):
    out = minilm.openai_embeddings({"input": ["hello world", "hi"], "model": "m"})
    assert out["object"] == "list" and [d["index"] for d in out["data"]] == [0, 1]
    # batched beside "hi", not alone: within the batch invariant (1e-6), not bit for bit (BLAS blocking
    # differs with the batch shape; 1.45e-7 measured on OpenBLAS's Haswell kernel)
    np.testing.assert_allclose(out["data"][0]["embedding"], minilm.encode("hello world"), atol=1e-6)
    assert out["usage"]["prompt_tokens"] == 4 + 3
